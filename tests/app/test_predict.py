"""detloss predict and the Python predict API: COCO results JSON that pycocotools reads,
points JSON, pictures, image reading through the hardened loader."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detloss.app.cli import main
from detloss.app.data import AnnotationError
from detloss.app.training.checkpoints import load_checkpoint, save_checkpoint
from detloss.app.training.config import TrainConfig
from detloss.app.training.evaluation import list_images, predict
from detloss.app.training.tasks import build_task


def _checkpoint(path: Path, task: str, categories=None, category_ids=None) -> Path:
    """An untrained model saved as train() saves it (predict needs no training)."""
    torch.manual_seed(0)
    cfg = TrainConfig(task=task, score_threshold=0.05)
    num_classes = len(categories) if categories else 1
    t = build_task(cfg, num_classes)
    kwargs = t.model_kwargs()
    model = t.build_model(kwargs)
    save_checkpoint(
        {
            "model": model.state_dict(),
            "model_kwargs": kwargs,
            "num_classes": num_classes,
            "categories": categories or ["person"],
            "category_ids": category_ids or list(range(num_classes)),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from detloss.app.data.synthetic import CrowdSpec, ShapeSpec, make_crowds, make_shapes

    root = tmp_path_factory.mktemp("predict")
    make_crowds(root / "crowds", 3, CrowdSpec(image_size=32, count_range=(2, 6), min_distance=4.0))
    make_shapes(root / "shapes", 3, ShapeSpec(image_size=48, size_range=(8.0, 14.0)), seed=1)
    instances = json.loads((root / "shapes" / "instances.json").read_text())
    names = [c["name"] for c in sorted(instances["categories"], key=lambda c: c["id"])]
    ids = sorted(c["id"] for c in instances["categories"])
    _checkpoint(root / "boxes.pt", "boxes", names, ids)
    _checkpoint(root / "points.pt", "points")
    return root


def test_coco_results_load_in_pycocotools(sets, tmp_path, capsys):
    out = tmp_path / "res.json"
    instances = sets / "shapes" / "instances.json"
    argv = ["predict", "--checkpoint", str(sets / "boxes.pt"), "--images",
            str(sets / "shapes" / "images"), "--out", str(out), "--coco-annotations",
            str(instances), "--draw", str(tmp_path / "draw")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[predict] 3 images" in printed and "3 pictures" in printed
    results = json.loads(out.read_text())
    gt = json.loads(instances.read_text())
    image_ids = {img["file_name"]: img["id"] for img in gt["images"]}
    category_ids = {c["id"] for c in gt["categories"]}
    assert isinstance(results, list) and results
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score", "file_name"}
        assert r["image_id"] == image_ids[r["file_name"]]
        assert r["category_id"] in category_ids
        x, y, w, h = r["bbox"]
        assert w >= 0 and h >= 0 and 0 <= x <= 48 and 0 <= y <= 48
        assert x + w <= 48 + 1e-6 and y + h <= 48 + 1e-6
        assert 0 < r["score"] <= 1
    assert sorted(p.name for p in (tmp_path / "draw").iterdir()) == sorted(
        Path(n).with_suffix(".png").name for n in image_ids
    )
    pycocotools = pytest.importorskip("pycocotools.coco")
    coco = pycocotools.COCO(str(instances))
    loaded = coco.loadRes(str(out))
    assert len(loaded.getAnnIds()) == len(results)


def test_box_score_threshold_and_default_ids(sets, tmp_path):
    out = tmp_path / "res.json"
    files = sorted((sets / "shapes" / "images").iterdir())
    argv = ["predict", "--checkpoint", str(sets / "boxes.pt"), "--images", str(files[1]),
            str(files[0]), "--out", str(out), "--score-threshold", "0.09"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert all(r["score"] >= 0.09 for r in results)
    # Without --coco-annotations the ids are 1, 2, ... in the order given.
    names = {r["image_id"]: r["file_name"] for r in results}
    assert set(names) <= {1, 2}
    assert all(names[k] == [files[1].name, files[0].name][k - 1] for k in names)


def test_points_json(sets, tmp_path):
    out = tmp_path / "points.json"
    argv = ["predict", "--checkpoint", str(sets / "points.pt"), "--images",
            str(sets / "crowds" / "images"), "--out", str(out), "--score-threshold", "0.05"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["task"] == "points"
    names = [img["file_name"] for img in data["images"]]
    assert names == sorted(p.name for p in (sets / "crowds" / "images").iterdir())
    for img in data["images"]:
        assert img["count"] == len(img["points"]) == len(img["scores"])
        assert all(s > 0.05 for s in img["scores"])
        assert all(0 <= x <= 32 and 0 <= y <= 32 for x, y in img["points"])
    # A stricter threshold keeps a subset.
    assert main([*argv[:-1], "0.5"]) == 0
    strict = json.loads(out.read_text())
    for a, b in zip(strict["images"], data["images"], strict=True):
        assert a["count"] <= b["count"]


def test_python_api_files_tensors_and_sizes(sets):
    model, task, _ = load_checkpoint(sets / "points.pt")
    files = list_images(sets / "crowds" / "images")
    from_files = predict(model, task, files, score_threshold=0.05)
    tensors = [
        torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255
        for f in files
    ]
    from_tensors = predict(model, task, torch.stack(tensors), score_threshold=0.05)
    for a, b in zip(from_files, from_tensors, strict=True):
        torch.testing.assert_close(a["points"], b["points"])
        torch.testing.assert_close(a["scores"], b["scores"])
    # Images of different sizes share a batch (zero-padded): nothing is reported in the
    # padding of the smaller one.
    small = tensors[0][:, :16, :24]
    preds = predict(model, task, [small, tensors[1]], score_threshold=0.01)
    assert ((preds[0]["points"][:, 0] <= 24) & (preds[0]["points"][:, 1] <= 16)).all()
    # The box model: labels index the checkpoint's categories; boxes never inverted.
    bmodel, btask, bckpt = load_checkpoint(sets / "boxes.pt")
    boxes = predict(bmodel, btask, sets / "shapes" / "images")
    for p in boxes:
        assert (p["boxes"][:, 2:] >= p["boxes"][:, :2]).all()
        assert (p["labels"] < len(bckpt["categories"])).all()


def test_images_are_read_through_the_hardened_loader(sets, tmp_path, capsys):
    model, task, _ = load_checkpoint(sets / "points.pt")
    files = list_images(sets / "crowds" / "images")
    with pytest.raises(AnnotationError, match="pixel budget"):
        predict(model, task, files[:1], max_pixels=100)
    not_an_image = tmp_path / "fake.png"
    not_an_image.write_text("text")
    code = main(["predict", "--checkpoint", str(sets / "points.pt"), "--images",
                 str(not_an_image), "--out", str(tmp_path / "o.json")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "fake.png" in err and "unreadable image" in err
    code = main(["predict", "--checkpoint", str(sets / "points.pt"), "--images",
                 str(tmp_path / "missing"), "--out", str(tmp_path / "o.json")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "no such file or folder" in err and "missing" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["predict", "--checkpoint", str(sets / "points.pt"), "--images", str(empty),
                 "--out", str(tmp_path / "o.json")])  # fmt: skip
    assert code == 2 and "no image file" in capsys.readouterr().err
