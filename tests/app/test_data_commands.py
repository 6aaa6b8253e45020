"""Round trips through the converters (annotations bit for bit) and the ``detloss data``
subcommands."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_formats import image, sht_mat, text, voc_xml

from detloss.app.cli import main
from detloss.app.data import CocoDetection, PointDataset, open_split
from detloss.app.data.convert import write_coco, write_points_json


def _same_items(a, b) -> None:
    assert len(a) == len(b) and a.names == b.names and a.categories == b.categories
    for i in range(len(a)):
        (ia, ta), (ib, tb) = a[i], b[i]
        assert torch.equal(ia, ib)
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), (i, key)


@pytest.fixture
def crowd(tmp_path) -> Path:
    root = tmp_path / "part_B"
    rng = np.random.default_rng(0)
    for k in (1, 2, 3):
        image(root / "train_data/images" / f"IMG_{k}.jpg")
        pts = (rng.random((k - 1, 2)) * [29, 19] + 1).tolist()  # IMG_1 has no heads
        sht_mat(root / "train_data/ground-truth" / f"GT_IMG_{k}.mat", pts)
    image(root / "test_data/images/IMG_1.jpg")
    sht_mat(root / "test_data/ground-truth/GT_IMG_1.mat", [[1.3333333, 2.7182818]])
    return root


@pytest.fixture
def voc(tmp_path) -> Path:
    root = tmp_path / "VOC2012"
    text(
        root / "Annotations/a.xml",
        voc_xml([("dog", 0, (1, 1, 30, 20)), ("cat", 1, (5, 6, 10, 12))]),
    )
    text(root / "Annotations/b.xml", voc_xml([]))
    image(root / "JPEGImages/a.jpg")
    image(root / "JPEGImages/b.jpg")
    text(root / "ImageSets/Main/train.txt", "a\nb\n")
    return root


def test_points_round_trip(crowd, tmp_path):
    source = open_split(crowd, "train")
    path = write_points_json(source, tmp_path / "out/train")
    back = PointDataset(tmp_path / "out/train/images", path)
    assert back.categories == ["point"]
    back.categories = source.categories
    _same_items(source, back)
    for name in source.names:
        assert (crowd / "train_data/images" / name).read_bytes() == (
            tmp_path / "out/train/images" / name
        ).read_bytes()
    # float32 values survive JSON exactly, including ones with long decimal expansions
    test = open_split(crowd, "test")
    back = PointDataset(tmp_path / "t/images", write_points_json(test, tmp_path / "t"))
    assert torch.equal(back[0][1]["points"], test[0][1]["points"])
    with pytest.raises(
        ValueError,
        match=r"coco holds boxes; the shanghaitech dataset has points \(convert it to points-json\)",
    ):
        write_coco(source, tmp_path / "bad")


def test_boxes_round_trip_keeps_ignore(voc, tmp_path):
    source = open_split(voc, "train")
    path = write_coco(source, tmp_path / "out/train")
    data = json.loads(path.read_text())
    assert [a["ignore"] for a in data["annotations"]] == [0, 1]
    assert data["annotations"][0]["bbox"] == [0.0, 0.0, 30.0, 20.0]
    back = CocoDetection(tmp_path / "out/train/images", path, check_images=True)
    _same_items(source, back)
    with pytest.raises(ValueError, match=r"points-json holds points; the voc dataset has boxes"):
        write_points_json(source, tmp_path / "bad")


def test_yolo_rotated_image_round_trip(tmp_path):
    root = tmp_path / "y"
    text(root / "classes.txt", "a\nb\n")
    image(root / "images/train/r.jpg", exif_orientation=6)
    text(root / "labels/train/r.txt", "1 0.25 0.5 0.3 0.2\n0 0.123457 0.654321 0.1 0.05\n")
    source = open_split(root, "train")
    path = write_coco(source, tmp_path / "out")
    written = Image.open(tmp_path / "out/images/r.jpg")
    assert written.size == (20, 30) and written.getexif().get(0x0112, 1) == 1
    back = CocoDetection(tmp_path / "out/images", path)
    assert back.categories == ["a", "b"]
    assert torch.equal(back[0][1]["boxes"], source[0][1]["boxes"])
    assert back[0][0].shape == source[0][0].shape == (3, 30, 20)


def test_cli_check(crowd, tmp_path, capsys):
    out = tmp_path / "check"
    assert main(["data", "check", "--data", str(crowd), "--out", str(out), "--samples", "2"]) == 0
    printed = capsys.readouterr().out
    assert "format shanghaitech (detected)" in printed
    assert "[train] 3 images (1 without annotations), 3 points; classes: person 3" in printed
    assert "[test] 0 problems" in printed
    report = json.loads((out / "check.json").read_text())
    train = report["splits"]["train"]
    assert train["images"] == 3 and train["annotations"] == 3 and train["problems"] == []
    sheet = Image.open(out / "check_train.png")
    assert sheet.size == (2 * 256, 256)
    # a split that does not open is a problem of that split: exit status 1
    (crowd / "train_data/images/IMG_2.jpg").unlink()
    (crowd / "train_data/images/IMG_2.png").write_bytes(b"")
    assert (
        main(
            [
                "data",
                "check",
                "--data",
                str(crowd),
                "--out",
                str(out),
                "--split",
                "test",
                "--split",
                "train",
            ]
        )
        == 1
    )
    printed = capsys.readouterr().out
    assert "[test] 0 problems" in printed and "[train] 1 problems" in printed
    assert (
        "IMG_2.png: unreadable image (image 'IMG_2.png' of " in printed
        and "not an image format Pillow reads" in printed
    )
    assert main(["data", "check", "--data", str(tmp_path / "nowhere")]) == 2
    assert "detloss data: error: " in capsys.readouterr().err


def test_cli_check_lists_problems(voc, tmp_path, capsys):
    (voc / "JPEGImages/b.jpg").unlink()
    text(
        voc / "Annotations/a.xml", voc_xml([("dog", 0, (1, 1, 30, 20)), ("dog", 0, (1, 1, 30, 20))])
    )
    assert (
        main(["data", "check", "--data", str(voc), "--format", "voc", "--out", str(tmp_path / "c")])
        == 1
    )
    printed = capsys.readouterr().out
    assert "format voc\n" in printed
    assert "[train] 2 problems" in printed
    assert "warning: " in printed and "dropped 1 repeated objects" in printed
    assert "b.jpg: image not found (image 'b' (b.xml) of" in printed


def test_cli_check_notes_exif_not_applied(tmp_path, capsys):
    image(tmp_path / "d/train/images/r.jpg", exif_orientation=8)
    text(tmp_path / "d/train/points.json", '{"r.jpg": [[1, 1]]}')
    assert main(["data", "check", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "c")]) == 0
    assert (
        "[train] note: 1 images carry an EXIF rotation that is not applied"
        in capsys.readouterr().out
    )


def test_cli_convert_then_train_layout(crowd, voc, tmp_path, capsys):
    out = tmp_path / "converted"
    assert (
        main(["data", "convert", "--data", str(crowd), "--to", "points-json", "--out", str(out)])
        == 0
    )
    assert "[train] 3 images, 3 points ->" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["test", "train"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _same_items_points = open_split(out, "train")
    assert _same_items_points.format == "points-json"
    assert torch.equal(
        _same_items_points[2][1]["points"], open_split(crowd, "train")[2][1]["points"]
    )
    assert (
        main(
            [
                "data",
                "convert",
                "--data",
                str(voc),
                "--to",
                "coco",
                "--out",
                str(tmp_path / "v"),
                "--no-images",
            ]
        )
        == 0
    )
    assert not (tmp_path / "v/train/images").exists()
    assert json.loads((tmp_path / "v/train/instances.json").read_text())["categories"][11] == {
        "id": 12,
        "name": "dog",
    }
    assert (
        main(
            ["data", "convert", "--data", str(crowd), "--to", "coco", "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert (
        "detloss data: error: coco holds boxes; the shanghaitech dataset has points"
        in capsys.readouterr().err
    )


def test_random_boxes_and_points_round_trip_bit_for_bit(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "y"
    text(root / "classes.txt", "a\nb\nc\n")
    lines = []
    for _ in range(200):
        cx, cy = rng.uniform(0.05, 0.95, 2)
        w, h = rng.uniform(0.001, 0.1, 2)
        lines.append(f"{rng.integers(3)} {float(cx)!r} {float(cy)!r} {float(w)!r} {float(h)!r}")
    image(root / "images/train/a.png", 37, 53)
    text(root / "labels/train/a.txt", "\n".join(lines) + "\n")
    boxes = open_split(root, "train")
    back = CocoDetection(tmp_path / "coco/images", write_coco(boxes, tmp_path / "coco"))
    assert (
        torch.equal(back[0][1]["boxes"], boxes[0][1]["boxes"]) and len(back[0][1]["boxes"]) == 200
    )
    assert torch.equal(back[0][1]["labels"], boxes[0][1]["labels"])

    pts = (rng.random((300, 2)) * [52, 36] + 1).tolist()
    image(tmp_path / "sht/train_data/images/IMG_1.jpg", 37, 53)
    sht_mat(tmp_path / "sht/train_data/ground-truth/GT_IMG_1.mat", pts)
    points = open_split(tmp_path / "sht", "train")
    expected = torch.tensor(pts, dtype=torch.float64).sub(0.5).float()
    assert torch.equal(points[0][1]["points"], expected)
    back = PointDataset(tmp_path / "pj/images", write_points_json(points, tmp_path / "pj"))
    assert torch.equal(back[0][1]["points"], expected)


def test_jhu_convert_to_points_json_drops_head_values_with_a_count(tmp_path):
    root = tmp_path / "jhu"
    image(root / "train/images/0001.jpg")
    text(root / "train/gt/0001.txt", "10 5 4 6 1 0\n2 3 0 0 3 1\n")
    image(root / "train/images/0002.jpg")
    text(root / "train/gt/0002.txt", "1 1 2 2 2 0\n")
    ds = open_split(root, "train")
    with pytest.warns(
        UserWarning,
        match=r"points\.json: dropped the per-point 'sizes', 'occlusion', 'blur' of 3 points "
        r"\(points JSON holds \[x, y\] only\)",
    ):
        path = write_points_json(ds, tmp_path / "out")
    back = PointDataset(tmp_path / "out/images", path)
    assert back.names == ds.names
    for i in range(len(ds)):
        assert torch.equal(back[i][0], ds[i][0])
        assert torch.equal(back[i][1]["points"], ds[i][1]["points"])
    with pytest.warns(UserWarning, match=r"dropped the per-point 'sizes'.* of 3 points"):
        assert main(["data", "convert", "--data", str(root), "--to", "points-json",
                     "--out", str(tmp_path / "cli")]) == 0  # fmt: skip
