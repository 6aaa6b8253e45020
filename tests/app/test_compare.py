"""The four SSD objectives and the ``detloss compare`` driver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detloss.app.cli import main
from detloss.app.compare import CompareSettings, run_compare
from detloss.app.models import SSD
from detloss.app.training.objectives import (
    OBJECTIVES,
    build_objective,
    check_choices,
    match_priors,
)

pytest.importorskip("PIL")


def _tiny_batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Four 64-pixel images, each a bright square on a dark ground, boxes normalised."""
    images = torch.zeros(4, 3, 64, 64)
    targets = []
    for k, (x, y, s) in enumerate(((8, 8, 20), (30, 12, 24), (16, 30, 28), (36, 36, 18))):
        images[k, k % 3, y : y + s, x : x + s] = 1.0
        box = torch.tensor([[x, y, x + s, y + s]], dtype=torch.float32) / 64
        targets.append({"boxes": box, "labels": torch.tensor([k % 3])})
    return images, targets


@pytest.mark.parametrize("name", OBJECTIVES)
def test_each_objective_trains(name: str) -> None:
    torch.manual_seed(0)
    images, targets = _tiny_batch()
    model = SSD(3, image_size=64)
    objective = build_objective(name, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = objective(model(images), model.priors, targets)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_matchings_on_one_image() -> None:
    priors = SSD(1, image_size=64).priors
    padded = {
        "boxes": torch.tensor([[[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]]]),
        "labels": torch.tensor([[0, 0]]),
        "mask": torch.tensor([[True, True]]),
    }
    hard = match_priors("hungarian", priors, padded)
    # Exactly one prior per object.
    assert (hard.pred_to_target == 0).sum() == 1
    assert (hard.pred_to_target == 1).sum() == 1
    iou_rule = match_priors("max_iou", priors, padded)
    assert (iou_rule.pred_to_target >= 0).sum() >= 2
    plan = match_priors("sinkhorn", priors, padded).dense_plan()[0]
    torch.testing.assert_close(plan.sum(dim=1), torch.ones(priors.shape[0]), atol=1e-3, rtol=0)
    # Each object receives mass, spread over several priors.
    assert bool((plan[:, :2].sum(dim=0) > 0.5).all())
    assert int((plan[:, 0] > 0.05).sum()) >= 2


def test_check_choices_one_line_errors() -> None:
    assert check_choices(["sinkhorn"]) == ("sinkhorn",)
    with pytest.raises(ValueError) as err:
        check_choices(["focal"])
    message = str(err.value)
    assert "\n" not in message and "'focal'" in message
    assert all(name in message for name in OBJECTIVES)
    with pytest.raises(ValueError, match="--detector: unknown detector 'yolo'; choose from ssd"):
        check_choices(OBJECTIVES, "yolo")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detloss.app.data.synthetic import ShapeSpec, make_shapes

    root = tmp_path_factory.mktemp("shapes")
    spec = ShapeSpec(image_size=64, size_range=(10.0, 24.0), count_range=(1, 3))
    make_shapes(root / "train", 8, spec, seed=1)
    make_shapes(root / "test", 4, spec, seed=2)
    return root


def test_compare_writes_files_and_keys(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"box_ap50": 0.5, "goals": {}}))
    settings = CompareSettings(epochs=1, batch_size=4, image_size=64)
    lines: list[str] = []
    results = run_compare(shapes, out, settings=settings, threads=None, log=lines.append)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["box_ap50"] == 0.5 and "goals" in metrics  # existing keys kept
    assert list(metrics["compare"]) == list(OBJECTIVES)
    for name in OBJECTIVES:
        entry = metrics["compare"][name]
        assert set(entry) == {"box_ap50", "box_ap", "train_seconds", "objective_ms_per_step"}
        assert 0 <= entry["box_ap50"] <= 1 and 0 <= entry["box_ap"] <= entry["box_ap50"]
        assert entry["train_seconds"] >= 0 and entry["objective_ms_per_step"] > 0
    assert results == metrics["compare"]
    assert (out / "compare.png").stat().st_size > 0
    assert (out / "matchings.png").stat().st_size > 0
    table = "\n".join(lines)
    # A one-epoch run on 8 images reaches no goal: every miss is shown.
    assert table.count("MISSED") == len(OBJECTIVES) + 1


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--objective" in text and "--detector" in text and "sinkhorn" in text


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--objective", "focal"], "--objective: unknown objective 'focal'"),
        (["--objective", "multibox,nope"], "--objective: unknown objective 'nope'"),
        (["--detector", "yolo"], "--detector: unknown detector 'yolo'; choose from ssd"),
    ],
)
def test_cli_bad_choices(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["compare", "--data", str(tmp_path), "--out", str(tmp_path), *argv])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert expected in err
    if "objective" in expected:
        assert all(name in err for name in OBJECTIVES)


def test_labels_beyond_the_detector_classes(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    annotations = json.loads((shapes / "train" / "instances.json").read_text())
    top = max(
        annotations["categories"].index(c)
        for c in annotations["categories"]
        if any(a["category_id"] == c["id"] for a in annotations["annotations"])
    )
    code = main(
        ["compare", "--data", str(shapes), "--out", str(tmp_path), "--num-classes", str(top)]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "instances.json" in err and "exceeds the detector's" in err
    assert f"label {top}" in err or "label " in err


@pytest.mark.parametrize("moves", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)])
def test_augment_moves_boxes_with_pixels(moves: tuple[int, int, int]) -> None:
    from detloss.app.compare import mirror_batch

    image = torch.zeros(1, 3, 32, 32)
    image[0, :, 4:10, 20:30] = 1.0  # rows 4..9, columns 20..29
    box = torch.tensor([[20, 4, 30, 10]], dtype=torch.float32) / 32
    out = mirror_batch(image, [{"boxes": box, "labels": torch.tensor([0])}], torch.tensor([moves]))
    rows, cols = image[0, 0].nonzero(as_tuple=True)
    expected = torch.stack([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float() / 32
    torch.testing.assert_close(out[0]["boxes"][0], expected)


def _yolo_folder(root: Path) -> Path:
    """A YOLO folder with train and test splits: two classes, 64 x 64 images."""
    from PIL import Image

    (root / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(
        "path: .\ntrain: images/train\ntest: images/test\nnames:\n  0: cat\n  1: dog\n"
    )
    for split, n in (("train", 4), ("test", 2)):
        for k in range(n):
            image = root / "images" / split / f"im{k}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), (40 * k, 90, 160)).save(image)
            label = root / "labels" / split / f"im{k}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(f"{k % 2} 0.5 0.5 0.4 0.3\n1 0.25 0.25 0.2 0.2\n")
    return root


def test_compare_reads_other_box_formats(tmp_path: Path) -> None:
    data = _yolo_folder(tmp_path / "yolo")
    settings = CompareSettings(epochs=1, batch_size=4, image_size=64)
    lines: list[str] = []
    results = run_compare(
        data, tmp_path / "run", settings=settings, objectives=["multibox"], threads=None,
        plots=False, log=lines.append,
    )  # fmt: skip
    assert list(results) == ["multibox"]
    assert "4 training and 2 test images, 2 classes" in lines[0]
    with pytest.raises(ValueError, match="holds point annotations"):
        run_compare(data, tmp_path / "r2", settings=settings, data_format="points-json")
