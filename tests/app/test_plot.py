"""detloss.app.plot: which marks are hits, false positives and misses; labels that do not
overlap; outlines that contrast with the image; matplotlib imported only when drawing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from detloss.app.plot import classify_boxes, classify_points

pytest.importorskip("matplotlib")


def test_import_does_not_load_matplotlib():
    code = "import sys, detloss.app.plot; print('matplotlib' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_classify_points_hand_worked():
    pred = torch.tensor([[0.0, 0.0], [10.0, 0.0], [50.0, 50.0]])
    target = torch.tensor([[1.0, 0.0], [10.5, 0.0], [100.0, 100.0]])
    pred_hit, target_hit = classify_points(pred, target, threshold=2.0)
    assert pred_hit.tolist() == [True, True, False]
    assert target_hit.tolist() == [True, True, False]
    # Greedy nearest-first would pair prediction 0 with target 0 (distance 0.5) and leave
    # prediction 1, whose only candidate is target 0, alone; the maximum matching pairs
    # prediction 0 with target 1 instead: two hits.
    pred = torch.tensor([[0.0, 0.0], [-1.5, 0.0]])
    target = torch.tensor([[-0.5, 0.0], [1.5, 0.0]])
    pred_hit, target_hit = classify_points(pred, target, threshold=1.6)
    assert pred_hit.all() and target_hit.all()
    # Empty sides.
    assert classify_points(torch.zeros(0, 2), target, 2.0)[1].tolist() == [False, False]
    assert classify_points(pred, torch.zeros(0, 2), 2.0)[0].tolist() == [False, False]


def test_classify_boxes_coco_rule():
    truth = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    truth_labels = torch.tensor([0, 1])
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 9.0],  # IoU 0.9 with truth 0, class 0, score 0.5
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 with truth 0, class 0, higher score 0.9
            [20.0, 20.0, 30.0, 30.0],  # exact box of truth 1 but class 0: false
            [60.0, 60.0, 70.0, 70.0],  # nowhere
        ]
    )
    scores = torch.tensor([0.5, 0.9, 0.8, 0.7])
    labels = torch.tensor([0, 0, 0, 1])
    pred_hit, target_hit = classify_boxes(boxes, scores, labels, truth, truth_labels)
    # The higher-scoring duplicate takes truth 0; the other is a false positive.
    assert pred_hit.tolist() == [False, True, False, False]
    assert target_hit.tolist() == [True, False]


def _extents_overlap(extents) -> bool:
    return any(a.overlaps(b) for i, a in enumerate(extents) for b in extents[i + 1 :])


def test_labels_do_not_overlap():
    from detloss.app.plot import LabelPlacer, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.set_xlim(0, 64)
    ax.set_ylim(64, 0)
    placer = LabelPlacer(fig)
    # Twelve labels anchored at nearly the same place: each must find its own room.
    for k in range(12):
        x = 20.0 + 0.5 * k
        placer.add(ax, [(x, 30.0, "bottom"), (x, 30.0, "top")], f"label {k} 0.{k}",
                   fontsize=7, bbox={"pad": 1})  # fmt: skip
    extents = placer.place()
    plt.close(fig)
    assert len(extents) == 12
    assert not _extents_overlap(extents)


def test_outline_contrasts_with_the_image():
    from detloss.app.plot import outline_effect

    dark = torch.zeros(3, 8, 8)
    light = torch.ones(3, 8, 8)
    assert outline_effect(dark)[0]._gc["foreground"] == "white"
    assert outline_effect(light)[0]._gc["foreground"] == "black"


def _boxes_sample():
    image = torch.full((3, 48, 64), 0.9)
    target = {
        "boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0], [30.0, 10.0, 60.0, 40.0]]),
        "labels": torch.tensor([0, 1]),
    }
    pred = {
        "boxes": torch.tensor([[5.0, 4.0, 20.0, 21.0], [2.0, 30.0, 12.0, 44.0]]),
        "scores": torch.tensor([0.9, 0.6]),
        "labels": torch.tensor([0, 1]),
    }
    return image, target, pred


def test_plot_boxes_and_points_write_pictures(tmp_path):
    from detloss.app.figures import plot_losses
    from detloss.app.plot import draw_predictions, plot_boxes, plot_points

    image, target, pred = _boxes_sample()
    out = plot_boxes([(image, target)], [pred], ["cat", "dog"], tmp_path / "b.png", title="t")
    assert out.read_bytes()[:4] == b"\x89PNG"
    points_target = {"points": torch.tensor([[5.0, 5.0], [30.0, 30.0]])}
    points_pred = {"points": torch.tensor([[5.5, 5.0], [50.0, 10.0]]), "scores": torch.ones(2)}
    dark = torch.zeros(3, 48, 64)
    assert plot_points([(dark, points_target)], [points_pred], tmp_path / "p.png").is_file()
    # Predictions alone (no ground truth): bare images.
    assert plot_points([dark], [points_pred], tmp_path / "p2.png").is_file()
    written = draw_predictions([image, dark], [pred, points_pred], tmp_path / "draw",
                               categories=["cat", "dog"])  # fmt: skip
    assert [p.name for p in written] == ["image_0.png", "image_1.png"]
    history = [
        {"epoch": 1, "step_loss": [3.0, 2.5], "val": {"box_ap50": float("nan")}},
        {"epoch": 2, "step_loss": [2.0, 1.5], "val": {"box_ap50": 0.25}},
        {"epoch": 3, "step_loss": [1.2, 1.0]},
    ]
    assert plot_losses([history], tmp_path / "l.png", titles=["run"]).is_file()
    with pytest.raises(ValueError, match="histories"):
        plot_losses([], tmp_path / "none.png")


def test_palette_moves_away_from_the_image_colour():
    from detloss.app.plot import COLORS, palette

    grey = torch.full((3, 8, 8), 0.5)
    assert palette([grey])["hit"][0] == COLORS["hit"]
    green = torch.zeros(3, 8, 8)
    green[1] = 0.9
    chosen = palette([green])
    assert chosen["hit"][1] != "green"
    assert len({c for c, _ in chosen.values()}) == len(chosen)  # no two roles alike
