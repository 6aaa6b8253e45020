"""The readers' guarantees on untrusted folders: paths stay inside the image folder, only
regular files are opened, a pixel budget is checked before decoding, every JSON failure is
one error naming the file, duplicates are counted, 16-bit and EXIF images are read in a
documented frame."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detloss.app.data._common import DEFAULT_MAX_PIXELS, AnnotationError, load_image, read_json
from detloss.app.data.coco import CocoDetection
from detloss.app.data.points import PointDataset


def _png(path: Path, h: int = 20, w: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, dtype=np.uint8)).save(path)
    return path


def _json(path: Path, data: object) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _coco(file_names: list[str], anns: list[dict] | None = None) -> dict:
    return {
        "images": [
            {"id": i + 1, "file_name": f, "width": 30, "height": 20}
            for i, f in enumerate(file_names)
        ],
        "annotations": anns or [],
        "categories": [{"id": 1, "name": "a"}],
    }


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose header declares ``w x h`` but whose pixel data is a few bytes: any
    attempt to decode it fails, so an error about its size proves it was not decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    data += chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../outside/x.png", r"image path '\.\./outside/x\.png' leaves the image folder"),
        ("a/../../x.png", r"image path 'a/\.\./\.\./x\.png' leaves the image folder"),
        ("/etc/passwd", r"image path '/etc/passwd' is absolute"),
        ("C:\\data\\x.png", r"is absolute"),
        ("", r"expected a non-empty image path"),
    ],
)
def test_point_names_must_stay_inside(tmp_path, name, message):
    ann = _json(tmp_path / "p.json", {name: []})
    with pytest.raises(AnnotationError, match=r"p\.json: image .*" + message):
        PointDataset(tmp_path, ann)


@pytest.mark.parametrize("name", ["../outside/x.png", "/tmp/x.png", "a/../../x.png"])
def test_coco_names_must_stay_inside(tmp_path, name):
    ann = _json(tmp_path / "c.json", _coco([name]))
    with pytest.raises(
        AnnotationError, match=r"c\.json: images\[0\] \(id 1\): 'file_name'.*image path"
    ):
        CocoDetection(tmp_path, ann)


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    outside = _png(tmp_path / "outside" / "secret.png")
    images = tmp_path / "images"
    _png(images / "real.png")
    (images / "link.png").symlink_to(outside)
    (images / "inner.png").symlink_to(images / "real.png")
    ann = _json(tmp_path / "p.json", {"link.png": [], "inner.png": []})
    ds = PointDataset(images, ann)
    with pytest.raises(
        AnnotationError,
        match=r"link\.png: resolves to .*outside/secret\.png, outside the image folder .*images "
        r"\(image 'link\.png' of .*p\.json\)",
    ):
        ds[0]
    assert ds[1][0].shape == (3, 20, 30)  # a link that stays inside is fine
    assert len(ds.problems()) == 1


def test_fifo_is_refused_without_blocking(tmp_path):
    _png(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "pipe.png")
    ds = PointDataset(tmp_path, _json(tmp_path / "p.json", {"pipe.png": [], "ok.png": []}))
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            ds[0]
            outcome.append(None)
        except BaseException as err:  # handed to the test thread
            outcome.append(err)

    start = time.perf_counter()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5.0)
    if reader.is_alive():  # unblock the thread before failing
        with open(tmp_path / "pipe.png", "wb"):
            pass
        pytest.fail("reading a FIFO listed as an image blocked")
    assert time.perf_counter() - start < 5.0
    assert isinstance(outcome[0], AnnotationError)
    assert "pipe.png: image is a FIFO, not a regular file (image 'pipe.png'" in str(outcome[0])
    # an annotation file that is a FIFO is refused from its stat, before any open
    os.mkfifo(tmp_path / "ann.json")
    with pytest.raises(AnnotationError, match=r"ann\.json: annotation file is not a regular file"):
        PointDataset(tmp_path, tmp_path / "ann.json")


def test_folder_listed_as_image(tmp_path):
    (tmp_path / "sub.png").mkdir()
    ds = PointDataset(tmp_path, _json(tmp_path / "p.json", {"sub.png": []}))
    with pytest.raises(AnnotationError, match=r"sub\.png: image is a folder, not a regular file"):
        ds[0]


# ----------------------------------------------------------------------------- pixel budget


def test_pixel_budget_checked_from_the_header(tmp_path):
    assert DEFAULT_MAX_PIXELS == 8192 * 8192
    big = _png_header_only(tmp_path / "big.png", 9000, 9000)  # 81 Mpx: over 64, under Pillow's
    ds = PointDataset(tmp_path, _json(tmp_path / "p.json", {"big.png": []}))
    start = time.perf_counter()
    with pytest.raises(
        AnnotationError,
        match=r"big\.png: image of width 9000 and height 9000 \(81,000,000 pixels\) is above the "
        r"pixel budget max_pixels=67,108,864 \(image 'big\.png' of .*\); pass a larger max_pixels",
    ):
        ds[0]
    assert time.perf_counter() - start < 2.0
    # a larger budget lets it through to decoding, which fails on the fake pixel data
    with pytest.raises(AnnotationError, match=r"big\.png: unreadable image"):
        load_image(big, "test", max_pixels=10**8)
    small = _png(tmp_path / "small.png", 20, 30)
    with pytest.raises(
        AnnotationError, match=r"600 pixels\) is above the pixel budget max_pixels=599"
    ):
        load_image(small, "test", max_pixels=599)
    assert load_image(small, "test", max_pixels=600).shape == (3, 20, 30)
    with pytest.raises(ValueError, match=r"max_pixels: expected a positive int or None, got 0"):
        PointDataset(tmp_path, tmp_path / "p.json", max_pixels=0)


def test_decompression_bomb_is_wrapped(tmp_path):
    _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    ds = PointDataset(tmp_path, _json(tmp_path / "p.json", {"bomb.png": []}), max_pixels=None)
    with pytest.raises(
        AnnotationError, match=r"bomb\.png: image too large \(image 'bomb\.png' .*Pillow refuses"
    ):
        ds[0]


# ----------------------------------------------------------------------------- JSON


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "[" * 100_000 + "]" * 100_000,
            r"p\.json: not valid JSON: nested deeper than the parser's limit",
        ),
        (
            '{"a.png": [[' + "7" * 5000 + ", 2]]}",
            r"p\.json: not valid JSON \(Exceeds the limit .* digits",
        ),
        (
            '{"a.png": [], "a.png": [[1, 2]]}',
            r"p\.json: not valid JSON: key 'a\.png' appears twice in one object",
        ),
        ('{"a.png": [[NaN, 2]]}', r"p\.json: not valid JSON: non-standard constant NaN"),
        ('{"a.png": [[Infinity, 2]]}', r"p\.json: not valid JSON: non-standard constant Infinity"),
        ('{"a.png": [[1, 2]]', r"p\.json: not valid JSON \(Expecting"),
        (b'{"\xff.png": []}', r"p\.json: not UTF-8 text"),
        (
            {"a.png": {"x": 1}},
            r"p\.json: image 'a\.png': expected a list of \[x, y\] points, got dict",
        ),
        (
            {"a.png": [[True, 2]]},
            r"p\.json: image 'a\.png', point 0: expected \[x, y\] with finite numbers",
        ),
    ],
)
def test_every_json_failure_is_one_error(tmp_path, content, message):
    path = tmp_path / "p.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        _json(path, content)
    with pytest.raises(AnnotationError, match=message) as info:
        PointDataset(tmp_path, path)
    assert "\n" not in str(info.value)


def test_coco_duplicate_key_and_wrong_types(tmp_path):
    path = _json(
        tmp_path / "c.json", '{"images": [], "images": [], "annotations": [], "categories": []}'
    )
    with pytest.raises(
        AnnotationError, match=r"c\.json: not valid JSON: key 'images' appears twice"
    ):
        CocoDetection(tmp_path, path)
    _json(path, _coco(["a.png"], [{"id": 3, "image_id": 1, "category_id": 1, "bbox": "1 2 3 4"}]))
    with pytest.raises(AnnotationError, match=r"annotations\[0\] \(id 3\): expected 'bbox'"):
        CocoDetection(tmp_path, path)
    ann = {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": "0"}
    _json(path, _coco(["a.png"], [ann]))
    with pytest.raises(
        AnnotationError, match=r"annotations\[0\] \(id 3\): expected 'iscrowd' 0 or 1, got '0'"
    ):
        CocoDetection(tmp_path, path)
    _json(path, _coco(["a.png"], [dict(ann, iscrowd=0, ignore=2)]))
    with pytest.raises(AnnotationError, match=r"expected 'ignore' 0 or 1, got 2"):
        CocoDetection(tmp_path, path)


def test_read_json_accepts_plain_files(tmp_path):
    assert read_json(_json(tmp_path / "x.json", {"a": [1, 2.5, None]})) == {"a": [1, 2.5, None]}


# ----------------------------------------------------------------------------- duplicates


def test_same_image_twice_is_an_error(tmp_path):
    _png(tmp_path / "a.png")
    with pytest.raises(
        AnnotationError,
        match=r"c\.json: image id 2 \('a\.png'\) names the same image file as image id 1 "
        r"\('a\.png'\) \('a\.png'\); expected each image once",
    ):
        CocoDetection(tmp_path, _json(tmp_path / "c.json", _coco(["a.png", "./a.png"])))
    with pytest.raises(
        AnnotationError,
        match=r"image 'sub/\.\./a\.png' names the same image file as image 'a\.png'",
    ):
        PointDataset(tmp_path, _json(tmp_path / "p.json", {"a.png": [], "sub/../a.png": []}))


def test_repeated_annotations_are_counted(tmp_path):
    _png(tmp_path / "a.png")
    box = {"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}
    anns = [dict(box, id=1), dict(box, id=2), dict(box, id=3, bbox=[1, 2, 3, 5]), dict(box, id=4)]
    path = _json(tmp_path / "c.json", _coco(["a.png"], anns))
    with pytest.warns(
        UserWarning,
        match=r"c\.json: dropped 2 repeated annotations \(same image, category and bbox\)",
    ):
        ds = CocoDetection(tmp_path, path)
    assert ds[0][1]["boxes"].tolist() == [[1, 2, 4, 6], [1, 2, 4, 7]]
    with pytest.warns(UserWarning, match=r"c\.json: 2 repeated annotations .* kept"):
        kept = CocoDetection(tmp_path, path, keep_duplicates=True)
    assert len(kept[0][1]["boxes"]) == 4
    pts = _json(tmp_path / "p.json", {"a.png": [[1, 2], [3, 4], [1, 2]]})
    with pytest.warns(
        UserWarning, match=r"p\.json: 1 repeated points \(same image, same coordinates\) dropped"
    ):
        ds = PointDataset(tmp_path, pts)
    assert ds[0][1]["points"].tolist() == [[1, 2], [3, 4]]
    assert ds.counts().tolist() == [2]
    with warnings.catch_warnings(record=True):
        assert PointDataset(tmp_path, pts, keep_duplicates=True).counts().tolist() == [3]


# ----------------------------------------------------------------------------- pixel values


def test_16bit_grayscale_is_scaled_by_65535(tmp_path):
    values = np.array([[0, 65535, 32768], [1000, 255, 40000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    image = load_image(tmp_path / "g16.png", "test")
    expected = torch.from_numpy(values.astype(np.float64) / 65535.0).float()
    assert image.shape == (3, 2, 3)
    for c in range(3):
        torch.testing.assert_close(image[c], expected, rtol=0, atol=1e-7)
    Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8)).save(tmp_path / "g8.png")
    torch.testing.assert_close(
        load_image(tmp_path / "g8.png", "test")[0], torch.tensor([[0.0, 128 / 255, 1.0]])
    )


def _exif_jpeg(path: Path, h: int, w: int, orientation: int) -> np.ndarray:
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    pixels[: h // 2, : w // 3] = 255  # a bright top-left block shows where the top-left went
    img = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=95, exif=exif)
    return pixels


def test_exif_orientation_frame(tmp_path):
    # Stored 20 x 30 (h x w); orientation 6 means viewers rotate it to 30 x 20.
    _exif_jpeg(tmp_path / "r.jpg", 20, 30, 6)
    ann = _json(tmp_path / "p.json", {"r.jpg": [[25.0, 5.0]]})  # inside the stored frame only
    ds = PointDataset(tmp_path, ann, check_images=True)
    image, target = ds[0]
    assert image.shape == (3, 20, 30)  # stored pixels, as COCO tools and MATLAB read them
    assert float(image[0, :10, :10].mean()) > 0.9 and float(image[0, :10, 10:].mean()) < 0.1
    assert target["points"].tolist() == [[25.0, 5.0]]
    rotated = PointDataset(tmp_path, ann, exif=True)
    with pytest.raises(
        AnnotationError,
        match=r"point 0: outside the image, got \[25\.0, 5\.0\] for an image of width 20 and height 30",
    ):
        rotated[0]
    upright = load_image(tmp_path / "r.jpg", "test", exif=True)
    assert upright.shape == (3, 30, 20)
    # orientation 6 = rotate 90 degrees clockwise to view: the stored top-left is now top-right
    torch.testing.assert_close(upright, torch.rot90(image, k=-1, dims=(1, 2)))
