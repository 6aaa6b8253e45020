"""Synthetic data, the COCO and point readers, collation, and their error messages."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detloss.app.data._common import AnnotationError
from detloss.app.data.coco import CocoDetection
from detloss.app.data.collate import RandomHorizontalFlip, collate_detection, pad_images
from detloss.app.data.points import PointDataset
from detloss.app.data.synthetic import (
    SHAPE_CLASSES,
    CrowdSpec,
    ShapeSpec,
    make_crowds,
    make_shapes,
    render_crowd,
)

SMALL_CROWDS = CrowdSpec(image_size=(48, 64), count_range=(0, 40))
SMALL_SHAPES = ShapeSpec(image_size=64, size_range=(10.0, 20.0), count_range=(0, 4))


@pytest.fixture(scope="module")
def crowds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crowds")
    make_crowds(root, 6, SMALL_CROWDS, seed=3)
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, 6, SMALL_SHAPES, seed=3)
    return root


# ----------------------------------------------------------------------------- synthetic


def test_crowds_round_trip(crowds):
    raw = json.loads((crowds / "points.json").read_text())
    ds = PointDataset(crowds / "images", crowds / "points.json", check_images=True)
    assert len(ds) == 6
    for i, name in enumerate(ds.names):
        image, target = ds[i]
        assert image.shape == (3, 48, 64) and image.dtype == torch.float32
        assert 0 <= float(image.min()) and float(image.max()) <= 1
        expected = torch.tensor(raw[name], dtype=torch.float32).reshape(-1, 2)
        torch.testing.assert_close(target["points"], expected)
        assert target["labels"].dtype == torch.int64 and len(target["labels"]) == len(expected)
        pts = target["points"]
        assert ((pts >= 0) & (pts <= torch.tensor([64.0, 48.0]))).all()
    assert ds.counts().tolist() == [len(raw[n]) for n in ds.names]


def test_crowds_min_distance_and_counts():
    spec = CrowdSpec(image_size=96, count_range=(120, 120), min_distance=5.0)
    _, pts = render_crowd(np.random.default_rng(0), spec)
    assert 100 <= len(pts) <= 120
    d = np.hypot(*(pts[:, None] - pts[None]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 5.0


def test_crowds_heads_are_visible_blobs():
    # Each head is a local extremum-like blob: the pixel under a head differs from the
    # image median more than a typical background pixel does.
    spec = CrowdSpec(image_size=64, count_range=(20, 20), texture=0.0)
    pixels, pts = render_crowd(np.random.default_rng(1), spec)
    gray = pixels.astype(float).mean(axis=2)
    med = np.median(gray)
    at_heads = np.abs(gray[pts[:, 1].astype(int), pts[:, 0].astype(int)] - med)
    assert np.median(at_heads) > 20


def test_synthetic_is_deterministic(tmp_path):
    a = make_crowds(tmp_path / "a", 3, SMALL_CROWDS, seed=7)
    b = make_crowds(tmp_path / "b", 4, SMALL_CROWDS, seed=7)
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    for name in ja:  # a larger set with the same seed starts with the same images
        assert ja[name] == jb[name]
        assert (tmp_path / "a/images" / name).read_bytes() == (
            tmp_path / "b/images" / name
        ).read_bytes()
    c = make_crowds(tmp_path / "c", 3, SMALL_CROWDS, seed=8)
    assert json.loads(c.read_text()) != ja


def test_parallel_generation_is_identical(tmp_path):
    a = make_shapes(tmp_path / "a", 5, SMALL_SHAPES, seed=4, workers=1)
    b = make_shapes(tmp_path / "b", 5, SMALL_SHAPES, seed=4, workers=2)
    assert a.read_text() == b.read_text()
    for k in range(5):
        name = f"images/shapes_{k:05d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    c = make_crowds(tmp_path / "c", 3, SMALL_CROWDS, seed=4, workers=2)
    assert c.read_text() == make_crowds(tmp_path / "d", 3, SMALL_CROWDS, seed=4).read_text()
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        make_crowds(tmp_path / "e", 2, SMALL_CROWDS, workers=0)


def test_shapes_round_trip(shapes):
    coco = json.loads((shapes / "instances.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)
    ds = CocoDetection(shapes / "images", shapes / "instances.json", check_images=True)
    assert len(ds) == 6 and ds.num_classes == 4 and ds.categories == list(SHAPE_CLASSES)
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 64, 64)
        anns = by_image.get(ds.image_ids[i], [])
        expected = torch.tensor(
            [
                [
                    a["bbox"][0],
                    a["bbox"][1],
                    a["bbox"][0] + a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3],
                ]
                for a in anns
            ],
            dtype=torch.float32,
        ).reshape(-1, 4)
        torch.testing.assert_close(target["boxes"], expected)
        assert target["labels"].tolist() == [a["category_id"] - 1 for a in anns]
        b = target["boxes"]
        assert (b[:, 2:] > b[:, :2]).all() and (b >= 0).all() and (b <= 64).all()


def test_generator_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="num_images must be a non-negative int, got -1"):
        make_crowds(tmp_path, -1)
    with pytest.raises(ValueError, match=r"count_range: expected 0 <= min <= max, got \(5, 2\)"):
        make_crowds(tmp_path, 1, CrowdSpec(count_range=(5, 2)))
    with pytest.raises(
        ValueError, match=r"image_size: expected an int or \(height, width\) >= 16, got 8"
    ):
        make_shapes(tmp_path, 1, ShapeSpec(image_size=8))


# ----------------------------------------------------------------------------- points reader


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _png(path: Path, h: int = 20, w: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"points\.json: not valid JSON"),
        (
            [1, 2],
            r"points\.json: expected an object mapping image file -> \[\[x, y\], \.\.\.\], got list",
        ),
        (
            {"a.png": 3},
            r"points\.json: image 'a\.png': expected a list of \[x, y\] points, got int",
        ),
        (
            {"a.png": [[1, 2], [3]]},
            r"points\.json: image 'a\.png', point 1: expected \[x, y\] with finite numbers, got \[3\]",
        ),
        ({"a.png": [["1", 2]]}, r"image 'a\.png', point 0: expected \[x, y\] with finite numbers"),
        ({"a.png": [[-1, 2]]}, r"image 'a\.png', point 0: outside the image, got \[-1, 2\]"),
    ],
)
def test_point_file_errors(tmp_path, content, message):
    ann = _write(tmp_path / "points.json", content)
    with pytest.raises(AnnotationError, match=message):
        PointDataset(tmp_path, ann)


def test_point_reader_image_errors(tmp_path):
    _png(tmp_path / "img" / "a.png", h=20, w=30)
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    ann = _write(tmp_path / "p.json", {"a.png": [[31, 5]], "bad.png": [], "gone.png": []})
    ds = PointDataset(tmp_path / "img", ann)
    with pytest.raises(
        AnnotationError,
        match=r"p\.json: image 'a\.png', point 0: outside the image, got \[31\.0, 5\.0\] for an image of width 30 and height 20",
    ):
        ds[0]
    with pytest.raises(
        AnnotationError, match=r"bad\.png: unreadable image \(image 'bad\.png' of .*p\.json\)"
    ):
        ds[1]
    with pytest.raises(FileNotFoundError, match=r"gone\.png: image not found"):
        ds[2]
    with pytest.raises(AnnotationError, match=r"point 0: outside the image"):
        PointDataset(tmp_path / "img", ann, check_images=True)
    with pytest.raises(FileNotFoundError, match=r"missing\.json: annotation file not found"):
        PointDataset(tmp_path / "img", tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match=r"nowhere: image directory not found"):
        PointDataset(tmp_path / "nowhere", ann)


def test_point_reader_empty_image(tmp_path):
    _png(tmp_path / "a.png")
    ds = PointDataset(tmp_path, _write(tmp_path / "p.json", {"a.png": []}))
    _, target = ds[0]
    assert target["points"].shape == (0, 2) and target["labels"].shape == (0,)


# ----------------------------------------------------------------------------- COCO reader


def _coco(**changes) -> dict:
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 5, "bbox": [1, 2, 10, 5], "iscrowd": 0}
        ],
        "categories": [{"id": 5, "name": "b"}, {"id": 2, "name": "a"}],
    }
    data.update(changes)
    return data


def _ann(**changes) -> list[dict]:
    ann = {"id": 10, "image_id": 1, "category_id": 5, "bbox": [1, 2, 10, 5], "iscrowd": 0}
    ann.update(changes)
    return [ann]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], r"c\.json: top level: expected an object, got list"),
        ({"images": []}, r"c\.json: top level: missing keys \['annotations', 'categories'\]"),
        (_coco(images={}), r"c\.json: 'images': expected a list, got dict"),
        (
            _coco(images=[{"id": 1, "file_name": "a.png"}]),
            r"images\[0\]: missing keys \['width', 'height'\]",
        ),
        (
            _coco(images=[{"id": 1, "file_name": "a.png", "width": 0, "height": 20}]),
            r"images\[0\] \(id 1\): expected a positive integer 'width', got 0",
        ),
        (
            _coco(annotations=[{"image_id": 1, "bbox": [0, 0, 1, 1]}]),
            r"annotations\[0\]: missing keys \['category_id'\]",
        ),
        (
            _coco(annotations=_ann(image_id=9)),
            r"annotations\[0\] \(id 10\): 'image_id' 9 is not in 'images'",
        ),
        (
            _coco(annotations=_ann(category_id=3)),
            r"annotations\[0\] \(id 10\): 'category_id' 3 is not in 'categories'",
        ),
        (
            _coco(annotations=_ann(bbox=[1, 2, 3])),
            r"annotations\[0\] \(id 10\): expected 'bbox' \[x, y, width, height\] of finite numbers, got \[1, 2, 3\]",
        ),
        (
            _coco(annotations=_ann(bbox=[1, 2, -3, 4])),
            r"annotations\[0\] \(id 10\): 'bbox' has a negative size, got \[1, 2, -3, 4\]",
        ),
        (
            _coco(annotations=_ann(bbox=[25, 2, 10, 5])),
            r"annotations\[0\] \(id 10\): 'bbox' \[25, 2, 10, 5\] lies outside image 1 \('a\.png', width 30, height 20\)",
        ),
        (
            _coco(categories=[{"id": 5}, {"id": 5}]),
            r"categories\[1\]: expected a unique integer 'id', got 5",
        ),
    ],
)
def test_coco_file_errors(tmp_path, data, message):
    ann = _write(tmp_path / "c.json", data)
    with pytest.raises(AnnotationError, match=message):
        CocoDetection(tmp_path, ann)


def test_coco_labels_drops_and_clipping(tmp_path):
    _png(tmp_path / "a.png", h=20, w=30)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 2, 10, 5]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [-0.5, 0, 30.5, 20]},  # clipped
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [3, 3, 0, 4]},  # zero width
        {"id": 4, "image_id": 1, "category_id": 5, "bbox": [3, 3, 4, 4], "iscrowd": 1},
    ]
    ann = _write(tmp_path / "c.json", _coco(annotations=anns))
    with pytest.warns(
        UserWarning,
        match=r"c\.json: dropped 1 crowd regions \(iscrowd=1\), 1 boxes of zero width or height",
    ):
        ds = CocoDetection(tmp_path, ann)
    assert ds.categories == ["a", "b"]  # ascending category id: 2 -> label 0, 5 -> label 1
    _, target = ds[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[1.0, 2, 11, 7], [0, 0, 30, 20]]))
    assert target["labels"].tolist() == [1, 0]


def test_coco_no_warning_when_nothing_dropped(tmp_path):
    _png(tmp_path / "a.png", h=20, w=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = CocoDetection(tmp_path, _write(tmp_path / "c.json", _coco()))
    assert len(ds) == 1


def test_coco_image_errors(tmp_path):
    _png(tmp_path / "a.png", h=21, w=30)
    ann = _write(tmp_path / "c.json", _coco())
    ds = CocoDetection(tmp_path, ann)
    with pytest.raises(
        AnnotationError,
        match=r"c\.json: image id 1 \('a\.png'\): record says width 30 and height 20, the file has width 30 and height 21",
    ):
        ds[0]
    (tmp_path / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(
        AnnotationError, match=r"a\.png: unreadable image \(image id 1 \('a\.png'\) of .*c\.json\)"
    ):
        CocoDetection(tmp_path, ann, check_images=True)


# ----------------------------------------------------------------------------- collate


def test_collate_pads_and_keeps_targets():
    a = torch.ones(3, 4, 5)
    b = torch.full((3, 6, 3), 2.0)
    ta = {"points": torch.tensor([[1.0, 2.0]])}
    tb = {"points": torch.zeros(0, 2)}
    images, targets = collate_detection([(a, ta), (b, tb)])
    assert images.shape == (2, 3, 6, 5)
    assert images[0, :, :4, :5].eq(1).all() and images[0, :, 4:].eq(0).all()
    assert images[1, :, :, :3].eq(2).all() and images[1, :, :, 3:].eq(0).all()
    assert targets[0]["points"].tolist() == [[1.0, 2.0]] and len(targets[1]["points"]) == 0
    assert pad_images([a], divisor=8).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"images\[0\]: expected shape \[C, H, W\], got \[4, 5\]"):
        pad_images([torch.ones(4, 5)])
    with pytest.raises(ValueError, match="images: expected at least one image, got an empty list"):
        pad_images([])


def test_flip_points_and_boxes():
    image = torch.arange(12.0).reshape(1, 3, 4).expand(3, 3, 4)
    target = {"points": torch.tensor([[0.5, 1.0]]), "boxes": torch.tensor([[0.0, 0.0, 1.0, 2.0]])}
    flipped, t = RandomHorizontalFlip(p=1.0)(image, target)
    assert torch.equal(flipped, image.flip(-1))
    assert t["points"].tolist() == [[3.5, 1.0]]
    assert t["boxes"].tolist() == [[3.0, 0.0, 4.0, 2.0]]
    assert target["points"].tolist() == [[0.5, 1.0]]  # input untouched
    same, t0 = RandomHorizontalFlip(p=0.0)(image, target)
    assert same is image and t0 is target
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 2"):
        RandomHorizontalFlip(p=2)


# ----------------------------------------------------------------------------- examples


def _public_objects():
    """``(name, object)`` for the functions and classes that the public modules of
    detloss.app.data list in ``__all__`` (exceptions aside)."""
    import importlib
    import inspect
    import pkgutil

    import detloss.app.data as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name in module.__all__:
            obj = getattr(module, name)
            if getattr(obj, "__module__", None) != module.__name__:
                continue  # documented where it is defined
            if inspect.isclass(obj) and issubclass(obj, Exception):
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{module.__name__}.{name}", obj


def test_every_public_reader_and_function_has_a_running_example(tmp_path, monkeypatch):
    """Every public function and class of detloss.app.data documents its shapes with an
    ``Example:`` section whose doctest lines run (on folders they make with tempfile),
    as do the helpers of the private modules that have one."""
    import doctest
    import importlib
    import inspect
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the examples' folders
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    missing, tests = [], []
    for name, obj in _public_objects():
        found = [
            t for t in finder.find(obj, name, globs=vars(inspect.getmodule(obj))) if t.examples
        ]
        if not found or "Example:" not in (obj.__doc__ or ""):
            missing.append(name)
        tests += found
    for private in ("_common", "_reader", "_yaml"):
        module = importlib.import_module(f"detloss.app.data.{private}")
        tests += [t for t in finder.find(module) if t.examples]
    for test in {t.name: t for t in tests}.values():
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} doctest failures (see the output above)"
    assert missing == []
