"""The published formats, each on a small folder written here in its authors' layout:
coordinates as stored (with the documented MATLAB and VOC shifts), images without
annotations, and one malformed file of each kind."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from detloss.app.data import (
    AnnotatedImages,
    AnnotationError,
    RandomHorizontalFlip,
    available_splits,
    detect_format,
    open_split,
    split_dataset,
)
from detloss.app.data.voc import VOC_CLASSES, parse_voc_xml
from detloss.app.data.yolo import parse_simple_yaml, yolo_class_names
from detloss.batching import pad_targets

H, W = 20, 30


def image(path: Path, h: int = H, w: int = W, exif_orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.full((h, w, 3), 90, dtype=np.uint8))
    if exif_orientation is None:
        img.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(path, exif=exif)
    return path


def text(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def sht_mat(path: Path, points: list[list[float]]) -> None:
    struct = np.zeros((1, 1), dtype=[("location", object), ("number", object)])
    struct[0, 0]["location"] = np.array(points, dtype=np.float64).reshape(-1, 2)
    struct[0, 0]["number"] = np.array([[len(points)]])
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = struct
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"image_info": cell})


def points_of(ds: AnnotatedImages, i: int) -> list[list[float]]:
    return ds[i][1]["points"].tolist()


# ----------------------------------------------------------------------------- ShanghaiTech


@pytest.fixture
def shanghaitech(tmp_path) -> Path:
    root = tmp_path / "part_A"
    for split, n in (("train_data", 2), ("test_data", 1)):
        for k in range(1, n + 1):
            image(root / split / "images" / f"IMG_{k}.jpg")
    sht_mat(root / "train_data/ground-truth/GT_IMG_1.mat", [[1.0, 1.0], [30.0, 20.0], [12.25, 7.5]])
    sht_mat(root / "train_data/ground-truth/GT_IMG_2.mat", [])  # an image without heads
    sht_mat(root / "test_data/ground-truth/GT_IMG_1.mat", [[5.5, 6.5]])
    return root


def test_shanghaitech_one_based_shift(shanghaitech):
    assert detect_format(shanghaitech) == "shanghaitech"
    assert available_splits(shanghaitech) == ["train", "test"]
    ds = open_split(shanghaitech, "train")
    assert ds.format == "shanghaitech" and ds.kind == "points" and len(ds) == 2
    assert ds.names == ["IMG_1.jpg", "IMG_2.jpg"]
    # MATLAB's pixel (1, 1) has its centre at (1, 1); detloss's at (0.5, 0.5).
    assert points_of(ds, 0) == [[0.5, 0.5], [29.5, 19.5], [11.75, 7.0]]
    assert points_of(ds, 1) == [] and ds[1][1]["labels"].shape == (0,)
    raw = open_split(shanghaitech, "train", one_based=False)
    assert points_of(raw, 0) == [[1.0, 1.0], [30.0, 20.0], [12.25, 7.5]]
    assert points_of(open_split(shanghaitech, "test", "shanghaitech"), 0) == [[5.0, 6.0]]
    assert ds.num_annotations().tolist() == [3, 0]


def test_shanghaitech_outside_points_clipped_or_dropped(shanghaitech):
    sht_mat(
        shanghaitech / "train_data/ground-truth/GT_IMG_2.mat",
        [[31.0, 5.0], [45.0, 5.0], [3, 3], [3, 3]],
    )
    with pytest.warns(
        UserWarning,
        match=r"train_data: dropped 1 points outside their image, 1 repeated points",
    ):
        ds = open_split(shanghaitech, "train")
    assert points_of(ds, 1) == [[30.0, 4.5], [2.5, 2.5]]  # 30.5 clipped to the border


def test_shanghaitech_malformed(shanghaitech):
    bad = shanghaitech / "train_data/ground-truth/GT_IMG_2.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file, broken")
    with pytest.raises(AnnotationError, match=r"GT_IMG_2\.mat: not a MATLAB file scipy reads"):
        open_split(shanghaitech, "train")
    savemat(bad, {"other": np.zeros(2)})
    with pytest.raises(
        AnnotationError,
        match=r"GT_IMG_2\.mat: expected image_info\[0, 0\]\[0, 0\]\[0\] holding an N x 2",
    ):
        open_split(shanghaitech, "train")
    sht_mat(bad, [[1.0, np.nan]])
    with pytest.raises(
        AnnotationError,
        match=r"GT_IMG_2\.mat: image_info\[0, 0\]\[0, 0\]\[0\], point 0: not finite",
    ):
        open_split(shanghaitech, "train")
    with pytest.raises(FileNotFoundError, match=r"split 'val' not found for shanghaitech"):
        open_split(shanghaitech, "val")


# ----------------------------------------------------------------------------- UCF-QNRF


def test_ucf_qnrf(tmp_path):
    root = tmp_path / "UCF-QNRF_ECCV18"
    image(root / "Train/img_0001.jpg")
    savemat(root / "Train/img_0001_ann.mat", {"annPoints": np.array([[1.0, 2.0], [10.5, 3.0]])})
    image(root / "Train/img_0002.jpg")
    savemat(root / "Train/img_0002_ann.mat", {"annPoints": np.zeros((0, 2))})
    image(root / "Test/img_0001.jpg")
    savemat(root / "Test/img_0001_ann.mat", {"annPoints": np.array([[4.0, 4.0]])})
    assert detect_format(root) == "ucf-qnrf" and available_splits(root) == ["train", "test"]
    ds = open_split(root, "train")
    assert points_of(ds, 0) == [[0.5, 1.5], [10.0, 2.5]] and points_of(ds, 1) == []
    savemat(root / "Train/img_0002_ann.mat", {"annPoints": np.zeros((2, 3))})
    with pytest.raises(
        AnnotationError,
        match=r"img_0002_ann\.mat: 'annPoints': expected an N x 2 array of \(x, y\), got shape \[2, 3\]",
    ):
        open_split(root, "train")
    (root / "Train/img_0002_ann.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"img_0002_ann\.mat: annotation file not found"):
        open_split(root, "train")


# ----------------------------------------------------------------------------- JHU-Crowd++


def test_jhu_crowd(tmp_path):
    root = tmp_path / "jhu_crowd_v2.0"
    image(root / "train/images/0001.jpg")
    text(root / "train/gt/0001.txt", "10 5 4 4 0 1\n12.5 7 3 3 1 0\n")
    image(root / "train/images/0002.jpg")
    text(root / "train/gt/0002.txt", "")
    image(root / "val/images/0003.jpg")
    text(root / "val/gt/0003.txt", "1 1 2 2 0 0\n")
    assert detect_format(root) == "jhu-crowd" and available_splits(root) == ["train", "val"]
    ds = open_split(root, "train")
    assert points_of(ds, 0) == [[10.0, 5.0], [12.5, 7.0]] and points_of(ds, 1) == []
    text(root / "train/gt/0002.txt", "1 2 3\n")
    with pytest.raises(
        AnnotationError,
        match=r"gt/0002\.txt: line 1: expected 6 numbers 'x y w h o b', got '1 2 3'",
    ):
        open_split(root, "train")


def test_jhu_crowd_head_boxes_occlusion_and_blur(tmp_path):
    root = tmp_path / "jhu"
    image(root / "train/images/0001.jpg")
    # x y w h o b; a head without a box (w = h = 0), one just outside the image (clipped,
    # its size kept), one far outside (dropped with its values) and one repeated (dropped)
    text(
        root / "train/gt/0001.txt",
        "10 5 4 6 1 0\n2 3 0 0 3 1\n30.5 8 5 7 2 0\n80 8 9 9 1 1\n10 5 8 8 2 1\n",
    )
    image(root / "train/images/0002.jpg")
    text(root / "train/gt/0002.txt", "\n")
    with pytest.warns(
        UserWarning, match=r"gt: dropped 1 points outside their image, 1 repeated points"
    ):
        ds = open_split(root, "train")
    _, t = ds[0]
    assert sorted(t) == ["blur", "labels", "occlusion", "points", "sizes"]
    assert t["points"].tolist() == [[10.0, 5.0], [2.0, 3.0], [30.0, 8.0]]
    assert t["sizes"].dtype == torch.float32
    assert t["sizes"].tolist() == [[4.0, 6.0], [0.0, 0.0], [5.0, 7.0]]
    assert t["occlusion"].dtype == torch.int64 and t["occlusion"].tolist() == [1, 3, 2]
    assert t["blur"].dtype == torch.bool and t["blur"].tolist() == [False, True, False]
    assert t["labels"].tolist() == [0, 0, 0]
    _, empty = ds[1]
    assert empty["sizes"].shape == (0, 2) and empty["occlusion"].shape == (0,)
    assert empty["blur"].shape == (0,) and empty["points"].shape == (0, 2)
    # kept repeats keep their own values
    with pytest.warns(UserWarning, match=r"kept 1 repeated points"):
        kept = open_split(root, "train", keep_duplicates=True)
    assert kept[0][1]["sizes"].tolist()[-1] == [8.0, 8.0]
    # a flip moves the points and leaves the per-head values as they are
    flipped = RandomHorizontalFlip(p=1.0)(*ds[0])[1]
    assert flipped["points"][:, 0].tolist() == [20.0, 28.0, 0.0]
    assert torch.equal(flipped["sizes"], t["sizes"])
    # points-only consumers: the batch pads every key alike
    batch = pad_targets([ds[0][1], ds[1][1]])
    assert batch["points"].shape == (2, 3, 2) and batch["sizes"].shape == (2, 3, 2)
    assert batch["mask"].sum().item() == 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1 2 3 4 1", r"expected 6 numbers 'x y w h o b', got '1 2 3 4 1'"),
        ("1 2 a 4 1 0", r"expected 6 numbers 'x y w h o b', got '1 2 a 4 1 0'"),
        ("1 2 nan 4 1 0", r"expected 6 numbers 'x y w h o b'"),
        ("1 2 -3 4 1 0", r"negative head box width or height, got '1 2 -3 4 1 0'"),
        ("1 2 3 4 1.5 0", r"expected a whole occlusion level o >= 0 and a blur flag b"),
        ("1 2 3 4 1 2", r"expected a whole occlusion level o >= 0 and a blur flag b"),
    ],
)
def test_jhu_crowd_malformed_line(tmp_path, line, message):
    root = tmp_path / "jhu"
    image(root / "val/images/7.jpg")
    text(root / "val/gt/7.txt", "1 1 2 2 1 0\n\n" + line + "\n")
    with pytest.raises(AnnotationError, match=r"gt/7\.txt: line 3: " + message) as err:
        open_split(root, "val")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- NWPU-Crowd


def test_nwpu_crowd(tmp_path):
    root = tmp_path / "NWPU-Crowd"
    for ident, pts in (("0001", [[3.5, 4.5], [20, 10]]), ("0002", []), ("0003", [[1, 1]])):
        image(root / "images" / f"{ident}.jpg")
        text(
            root / "jsons" / f"{ident}.json",
            json.dumps({"img_id": f"{ident}.jpg", "human_num": len(pts), "points": pts}),
        )
    text(root / "train.txt", "0001 1 1\n0002 0 1\n")
    text(root / "val.txt", "0003 2 1\n")
    assert detect_format(root) == "nwpu-crowd" and available_splits(root) == ["train", "val"]
    ds = open_split(root, "train")
    assert ds.names == ["0001.jpg", "0002.jpg"]
    assert points_of(ds, 0) == [[3.5, 4.5], [20.0, 10.0]] and points_of(ds, 1) == []
    text(root / "jsons/0002.json", '{"points": [[1]]}')
    with pytest.raises(
        AnnotationError,
        match=r"0002\.json: 'points', point 0: expected \[x, y\] with finite numbers, got \[1\]",
    ):
        open_split(root, "train")
    text(root / "jsons/0002.json", '{"points": [], "points": []}')
    with pytest.raises(
        AnnotationError, match=r"0002\.json: not valid JSON: key 'points' appears twice"
    ):
        open_split(root, "train")
    text(root / "train.txt", "../x 1 1\n")
    with pytest.raises(
        AnnotationError, match=r"train\.txt: line 1: expected an image id, got '\.\./x'"
    ):
        open_split(root, "train")


# ----------------------------------------------------------------------------- YOLO


def test_simple_yaml(tmp_path):
    path = text(
        tmp_path / "data.yaml",
        "# a comment\npath: .  # root\ntrain: images/train\nval: 'images/val'\nnc: 3\n"
        "names:\n  0: person\n  1: 'traffic light'  # quoted\n  2: \"a # b\"\nflow: [a, 'b, c', 3]\n",
    )
    assert parse_simple_yaml(path) == {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "nc": 3,
        "names": {0: "person", 1: "traffic light", 2: "a # b"},
        "flow": ["a", "b, c", 3],
    }
    text(tmp_path / "data.yaml", "names:\n  - cat\n  - dog\n")
    assert yolo_class_names(tmp_path) == ["cat", "dog"]
    text(tmp_path / "data.yaml", "names: {0: cat, 2: dog}\n")
    with pytest.raises(
        AnnotationError, match=r"data\.yaml: 'names': expected the indices 0\.\.1, got \[0, 2\]"
    ):
        yolo_class_names(tmp_path)
    text(tmp_path / "data.yaml", "names:\n  - cat\n  0: dog\n")
    with pytest.raises(AnnotationError, match=r"data\.yaml: line 3: a mapping item inside a list"):
        parse_simple_yaml(tmp_path / "data.yaml")
    text(tmp_path / "data.yaml", "a: 1\na: 2\n")
    with pytest.raises(AnnotationError, match=r"data\.yaml: line 2: key 'a' appears twice"):
        parse_simple_yaml(tmp_path / "data.yaml")


@pytest.fixture
def yolo(tmp_path) -> Path:
    root = tmp_path / "coco8"
    text(
        root / "data.yaml",
        "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n",
    )
    image(root / "images/train/a.jpg")
    text(root / "labels/train/a.txt", "0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.3 0.1 0.3 0.2 0.1 0.2\n")
    image(root / "images/train/b.jpg")  # no label file: a background image
    image(root / "images/train/c.png")
    text(root / "labels/train/c.txt", "")
    image(root / "images/val/d.jpg")
    text(root / "labels/val/d.txt", "1 0.5 0.5 1 1\n")
    return root


def test_yolo_boxes(yolo):
    assert detect_format(yolo) == "yolo" and available_splits(yolo) == ["train", "val"]
    ds = open_split(yolo, "train")
    assert ds.categories == ["cat", "dog"] and ds.names == ["a.jpg", "b.jpg", "c.png"]
    _, t = ds[0]
    torch.testing.assert_close(
        t["boxes"], torch.tensor([[12.0, 6.0, 18.0, 14.0], [3.0, 2.0, 9.0, 4.0]])
    )
    assert t["labels"].tolist() == [0, 1]
    assert ds[1][1]["boxes"].shape == (0, 4) and ds[2][1]["labels"].shape == (0,)
    torch.testing.assert_close(
        open_split(yolo, "val")[0][1]["boxes"], torch.tensor([[0.0, 0.0, 30.0, 20.0]])
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "2 0.5 0.5 0.1 0.1",
            r"a\.txt: line 1: class '2' is not an index in 0\.\.1 \(2 class names\)",
        ),
        ("0 1.5 0.5 0.1 0.1", r"a\.txt: line 1: coordinates outside \[0, 1\]"),
        ("0 0.5 0.5", r"a\.txt: line 1: expected 'class cx cy w h' \(5 values\)"),
        ("0 0.5 x 0.1 0.1", r"a\.txt: line 1: expected numbers 'class cx cy w h'"),
        ("0 0.5 0.5 -0.1 0.1", r"a\.txt: line 1: negative width or height"),
    ],
)
def test_yolo_malformed_lines(yolo, line, message):
    text(yolo / "labels/train/a.txt", "0 0.5 0.5 0.2 0.4\n\n" + line + "\n")
    with pytest.raises(AnnotationError, match=message.replace("line 1", "line 3")):
        open_split(yolo, "train")


def test_yolo_roboflow_layout_and_exif(tmp_path):
    root = tmp_path / "export"
    text(
        root / "data.yaml", "train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['box']\n"
    )
    # stored 20 x 30, viewed (EXIF orientation 6) as 30 x 20: YOLO labels use the viewed frame
    image(root / "train/images/r.jpg", exif_orientation=6)
    text(root / "train/labels/r.txt", "0 0.5 0.5 1 1\n0 0.5 0.5 1 1\n")
    image(root / "valid/images/v.jpg")
    assert detect_format(root) == "yolo" and available_splits(root) == ["train", "val"]
    with pytest.warns(UserWarning, match=r"labels: dropped 1 repeated label lines"):
        ds = open_split(root, "train")
    img, t = ds[0]
    assert img.shape == (3, 30, 20) and t["boxes"].tolist() == [[0.0, 0.0, 20.0, 30.0]]
    with warnings.catch_warnings(record=True):
        stored = open_split(root, "train", exif=False)
    assert stored[0][0].shape == (3, 20, 30) and stored[0][1]["boxes"].tolist() == [
        [0.0, 0.0, 30.0, 20.0]
    ]
    (root / "data.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=r"no class names for the YOLO layout"):
        open_split(root, "train", "yolo")
    text(root / "classes.txt", "box\n")
    assert len(open_split(root, "val", "yolo")) == 1


# ----------------------------------------------------------------------------- VOC


def voc_xml(
    objects: list[tuple[str, int, tuple[int, int, int, int]]], w: int = W, h: int = H
) -> str:
    body = "".join(
        f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, d, b in objects
    )
    return (
        f"<annotation><folder>VOC2007</folder><filename>x.jpg</filename><size><width>{w}</width>"
        f"<height>{h}</height><depth>3</depth></size>{body}</annotation>"
    )


@pytest.fixture
def voc(tmp_path) -> Path:
    root = tmp_path / "VOC2007"
    text(
        root / "Annotations/000001.xml",
        voc_xml([("dog", 0, (1, 1, 30, 20)), ("cat", 1, (5, 6, 10, 12))]),
    )
    text(root / "Annotations/000002.xml", voc_xml([]))
    text(root / "Annotations/000003.xml", voc_xml([("person", 0, (2, 2, 4, 4))]))
    for ident in ("000001", "000002", "000003"):
        image(root / "JPEGImages" / f"{ident}.jpg")
    text(root / "ImageSets/Main/train.txt", "000001\n000002\n")
    text(root / "ImageSets/Main/val.txt", "000003\n")
    return root


def test_voc_boxes_and_difficult(voc):
    assert detect_format(voc) == "voc" and available_splits(voc) == ["train", "val"]
    ds = open_split(voc, "train")
    assert ds.categories == list(VOC_CLASSES)
    _, t = ds[0]
    # 1-based inclusive pixel indices: (1, 1, 30, 20) covers the whole 30 x 20 image
    assert t["boxes"].tolist() == [[0.0, 0.0, 30.0, 20.0], [4.0, 5.0, 10.0, 12.0]]
    assert t["labels"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("cat")]
    assert t["ignore"].tolist() == [False, True]
    assert ds[1][1]["boxes"].shape == (0, 4) and ds[1][1]["ignore"].dtype == torch.bool


def test_voc_custom_classes_same_labels_in_every_split(voc):
    text(voc / "Annotations/000003.xml", voc_xml([("widget", 0, (2, 2, 4, 4))]))
    train, val = open_split(voc, "train"), open_split(voc, "val")
    assert train.categories == val.categories == ["cat", "dog", "widget"]
    assert val[0][1]["labels"].tolist() == [2]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><annotation>&x;</annotation>',
            r"000002\.xml: XML with a DOCTYPE or an entity declaration is refused",
        ),
        ("<annotation><object>", r"000002\.xml: not valid XML"),
        ("<root/>", r"000002\.xml: expected an <annotation> root element, got <root>"),
        (
            "<annotation><object><name>dog</name></object></annotation>",
            r"000002\.xml: object 0 \('dog'\): missing <bndbox>",
        ),
        (
            voc_xml([("dog", 0, (1, 1, 30, 20))]).replace("<xmax>30", "<xmax>abc"),
            r"000002\.xml: object 0 \('dog'\): expected a number in <xmax>, got 'abc'",
        ),
        (
            voc_xml([("dog", 0, (1, 1, 40, 20))]),
            r"000002\.xml: object 0 \('dog'\): <bndbox> \[1\.0, 1\.0, 40\.0, 20\.0\] lies outside",
        ),
        (voc_xml([("dog", 2, (1, 1, 3, 3))]), r"expected <difficult> 0 or 1, got '2'"),
    ],
)
def test_voc_malformed(voc, content, message):
    text(voc / "Annotations/000002.xml", content)
    with pytest.raises(AnnotationError, match=message):
        open_split(voc, "train")


def test_voc_bad_listing(voc):
    text(voc / "ImageSets/Main/train.txt", "000001\n../../etc/x\n")
    with pytest.raises(
        AnnotationError, match=r"train\.txt: line 2: expected an image id, got '\.\./\.\./etc/x'"
    ):
        open_split(voc, "train")
    with pytest.raises(FileNotFoundError, match=r"000009\.xml: annotation file not found"):
        text(voc / "ImageSets/Main/train.txt", "000009\n")
        open_split(voc, "train")


def test_voc_parse_keeps_values_as_written(voc):
    parsed = parse_voc_xml(voc / "Annotations/000001.xml")
    assert parsed["width"] == W and parsed["objects"][1] == {
        "name": "cat",
        "difficult": True,
        "box": [5.0, 6.0, 10.0, 12.0],
    }


# ----------------------------------------------------------------------------- entry points


def test_detect_format_ours_and_unknown(tmp_path):
    image(tmp_path / "p/train/images/a.png")
    text(tmp_path / "p/train/points.json", '{"a.png": [[1, 2]]}')
    assert detect_format(tmp_path / "p") == "points-json"
    assert open_split(tmp_path / "p", "train").format == "points-json"
    image(tmp_path / "c/val/images/a.png")
    text(
        tmp_path / "c/val/instances.json",
        json.dumps({"images": [], "annotations": [], "categories": []}),
    )
    assert detect_format(tmp_path / "c") == "coco" and available_splits(tmp_path / "c") == ["val"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError, match=r"empty: no known data layout \(looked for: <split>/points\.json"
    ):
        detect_format(tmp_path / "empty")
    with pytest.raises(
        ValueError, match=r"format: expected one of \[.*'voc', 'yolo'\], got 'kitti'"
    ):
        open_split(tmp_path / "p", "train", "kitti")


def test_split_dataset_is_deterministic_and_complete():
    data = list(range(10))
    train, val = split_dataset(data, 0.3, seed=4)
    assert len(val) == 3 and len(train) == 7
    assert sorted(train.indices + val.indices) == data
    assert train.indices == sorted(train.indices) and val.indices == sorted(val.indices)
    again = split_dataset(data, 0.3, seed=4)
    assert again[1].indices == val.indices
    assert split_dataset(data, 0.3, seed=5)[1].indices != val.indices
    assert len(split_dataset([1, 2], 0.01)[1]) == 1
    with pytest.raises(ValueError, match=r"fraction: expected a number in \(0, 1\), got 1"):
        split_dataset(data, 1)
    with pytest.raises(
        ValueError, match=r"dataset: expected at least 2 items to carve a split, got 1"
    ):
        split_dataset([0], 0.5)


def test_open_train_val(shanghaitech):
    from detloss.app.data import format_kind, open_train_val
    from detloss.app.data.collate import RandomHorizontalFlip

    for k in (3, 4, 5):
        image(shanghaitech / "train_data/images" / f"IMG_{k}.jpg")
        sht_mat(shanghaitech / "train_data/ground-truth" / f"GT_IMG_{k}.mat", [[k, k]])
    with pytest.raises(
        FileNotFoundError,
        match=r"this folder has the splits \['train', 'test'\]: pass a validation fraction",
    ):
        open_train_val(shanghaitech)
    flip = RandomHorizontalFlip(p=1.0)
    train, val, base = open_train_val(shanghaitech, val_fraction=0.4, seed=1, train_transform=flip)
    assert base.format == "shanghaitech" and format_kind(base.format) == "points"
    assert len(train) == 3 and len(val) == 2
    assert sorted(train.indices + val.indices) == list(range(5))
    for j, i in enumerate(val.indices):  # the validation part is not flipped
        assert val[j][1]["points"].tolist() == points_of(open_split(shanghaitech, "train"), i)
    i = train.indices[0]
    expected = [[W - x, y] for x, y in points_of(open_split(shanghaitech, "train"), i)]
    assert train[0][1]["points"].tolist() == expected
    t, v, _ = open_train_val(shanghaitech, train_split="train", val_split="test")
    assert len(t) == 5 and len(v) == 1


def test_yolo_splits_listed_in_txt_files(yolo):
    # Ultralytics' coco.yaml names each split by a .txt file of image paths (relative to
    # the data folder); the labels are found by the images -> labels rule.
    text(yolo / "data.yaml", "path: .\ntrain: train.txt\nval: images/val\nnames: [cat, dog]\n")
    text(yolo / "train.txt", "./images/train/c.png\n./images/train/a.jpg\n\n")
    assert available_splits(yolo) == ["train", "val"]
    ds = open_split(yolo, "train")
    assert ds.names == ["images/train/c.png", "images/train/a.jpg"]  # listed order
    assert ds[0][1]["boxes"].shape == (0, 4)
    torch.testing.assert_close(
        ds[1][1]["boxes"], torch.tensor([[12.0, 6.0, 18.0, 14.0], [3.0, 2.0, 9.0, 4.0]])
    )
    text(yolo / "train.txt", "../outside.jpg\n")
    with pytest.raises(AnnotationError, match=r"train.txt: line 1: .*leaves the data folder"):
        open_split(yolo, "train")
    text(yolo / "data.yaml", "train: ../train.txt\nnames: [cat, dog]\n")
    with pytest.raises(AnnotationError, match="outside the data folder"):
        open_split(yolo, "train")


def test_yolo_splits_given_as_a_yaml_list(yolo):
    # Ultralytics' data.yaml may give a split as a list of folders or .txt files, read in
    # order and concatenated; names are then relative to the data folder.
    image(yolo / "extra/images/e.jpg")
    text(yolo / "extra/labels/e.txt", "1 0.5 0.5 1 1\n")
    text(yolo / "more.txt", "images/val/d.jpg\n")
    text(
        yolo / "data.yaml",
        "train: [extra/images, images/train, more.txt]\nval:\n  - images/val\nnames: [cat, dog]\n",
    )
    assert available_splits(yolo) == ["train", "val"]
    ds = open_split(yolo, "train")
    assert ds.names == [
        "extra/images/e.jpg",
        "images/train/a.jpg",
        "images/train/b.jpg",
        "images/train/c.png",
        "images/val/d.jpg",
    ]
    assert ds.source.name == "data.yaml"
    assert [len(ds[i][1]["boxes"]) for i in range(len(ds))] == [1, 2, 0, 0, 1]
    torch.testing.assert_close(ds[0][1]["boxes"], torch.tensor([[0.0, 0.0, 30.0, 20.0]]))
    torch.testing.assert_close(
        ds[1][1]["boxes"], torch.tensor([[12.0, 6.0, 18.0, 14.0], [3.0, 2.0, 9.0, 4.0]])
    )
    assert open_split(yolo, "val").names == ["images/val/d.jpg"]  # a block list of one


@pytest.mark.parametrize(
    ("entries", "error", "message"),
    [
        (
            "[images/train, ../outside]",
            AnnotationError,
            r"'train' item 1: '\.\./outside' is outside the data folder",
        ),
        ("[images/train, /etc]", AnnotationError, r"'train' item 1: '/etc' is absolute"),
        (
            "[../list.txt]",
            AnnotationError,
            r"'train' item 0: '\.\./list\.txt' is outside the data folder",
        ),
        (
            "[images/train, images/nope]",
            FileNotFoundError,
            r"'train' item 1: folder 'images/nope' not found",
        ),
        (
            "[images/train, 3]",
            AnnotationError,
            r"'train' item 1: expected a folder or a \.txt file",
        ),
        ("[images/train, images/train]", AnnotationError, r"names the same image file"),
    ],
)
def test_yolo_list_split_errors(yolo, entries, error, message):
    outside = yolo.parent / "outside"
    image(outside / "x.jpg")
    text(yolo.parent / "list.txt", "outside/x.jpg\n")
    text(yolo / "data.yaml", f"train: {entries}\nnames: [cat, dog]\n")
    with pytest.raises(
        error, match=r"data\.yaml: " + message if "same" not in message else message
    ):
        open_split(yolo, "train")


def test_yolo_list_split_symlink_leaving_the_folder(yolo):
    outside = yolo.parent / "elsewhere"
    image(outside / "x.jpg")
    (yolo / "linked").symlink_to(outside, target_is_directory=True)
    text(yolo / "data.yaml", "train: [images/train, linked]\nnames: [cat, dog]\n")
    with pytest.raises(
        AnnotationError, match=r"data\.yaml: 'train' item 1: 'linked' is outside the data folder"
    ):
        open_split(yolo, "train")
