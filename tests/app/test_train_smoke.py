"""Smoke training: the loss falls and the metrics improve; checkpoints resume exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detloss.app.data.synthetic import CrowdSpec, ShapeSpec, make_crowds, make_shapes
from detloss.app.training.checkpoints import CheckpointError, load_checkpoint, read_checkpoint
from detloss.app.training.config import TrainConfig
from detloss.app.training.loop import train

CROWDS = CrowdSpec(image_size=64, count_range=(10, 40), min_distance=6.0)
SHAPES = ShapeSpec(image_size=64, size_range=(14.0, 26.0), count_range=(1, 3))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("smoke")
    make_crowds(root / "crowds" / "train", 64, CROWDS, seed=1)
    make_crowds(root / "crowds" / "val", 8, CROWDS, seed=2)
    make_shapes(root / "shapes" / "train", 64, SHAPES, seed=1)
    make_shapes(root / "shapes" / "val", 8, SHAPES, seed=2)
    return root


def _quiet(_: str) -> None:
    pass


def _cfg(data: Path, tmp: Path, task: str, **kw) -> TrainConfig:
    folder = "crowds" if task == "points" else "shapes"
    base = TrainConfig(
        task=task,
        data=str(data / folder),
        out=str(tmp / task),
        epochs=6,
        batch_size=8,
        lr=3e-3,
        threads=2,
        progress=False,
        seed=0,
    )
    return replace(base, **kw)


def test_points_training_learns(data, tmp_path):
    # About 130 steps: P2PNet needs on the order of a hundred before its first
    # proposals clear p > 0.5.
    result = train(_cfg(data, tmp_path, "points", epochs=16), log=_quiet)
    history = result["history"]
    first, last = history[0], history[-1]
    assert last["train"]["loss"] < 0.6 * first["train"]["loss"]
    assert last["train"]["cls"] < first["train"]["cls"]
    # After one epoch no proposal clears p > 0.5 yet (prior 0.1): F1 0, MAE = mean count.
    assert first["val"]["point_f1@4px"] < 0.2 < 0.5 < last["val"]["point_f1@4px"]
    assert last["val"]["count_mae"] < 0.5 * first["val"]["count_mae"]
    out = tmp_path / "points"
    written = {p.name for p in out.iterdir()}
    assert {"last.pt", "best.pt", "history.json", "metrics.json", "metrics.csv"} <= written
    assert {"loss_curves.png", "val_predictions.png"} <= written
    # metrics.csv: a header and one row per epoch, the same numbers as the history.
    import csv

    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 17))
    assert float(rows[-1]["train_loss"]) == pytest.approx(last["train"]["loss"])
    assert float(rows[-1]["val_point_f1@4px"]) == pytest.approx(last["val"]["point_f1@4px"])
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(last["val"])
    model, task, ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 16 and task.name == "points"
    assert set(model.state_dict()) == set(result["model"].state_dict())


def test_boxes_training_learns(data, tmp_path):
    result = train(_cfg(data, tmp_path, "boxes", epochs=12, batch_size=8), log=_quiet)
    history = result["history"]
    assert history[-1]["train"]["loss"] < 0.5 * history[0]["train"]["loss"]
    assert set(history[-1]["train"]) == {"loss", "heatmap", "size", "offset"}
    assert history[-1]["val"]["box_ap50"] > max(history[0]["val"]["box_ap50"], 0.05)
    assert set(history[-1]["val"]) == {"box_ap", "box_ap50", "box_ap75", "box_voc_ap50"}


def test_resume_reproduces_uninterrupted_run(data, tmp_path):
    cfg = _cfg(data, tmp_path, "points", epochs=3, max_train_images=16)
    straight = train(replace(cfg, out=str(tmp_path / "a")), log=_quiet)

    class Stop(Exception):
        pass

    def stop_at_epoch_2(line: str) -> None:
        if "epoch 2/3" in line:
            raise Stop

    with pytest.raises(Stop):
        train(replace(cfg, out=str(tmp_path / "b")), log=stop_at_epoch_2)
    assert read_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = train(replace(cfg, out=str(tmp_path / "b"), resume="auto"), log=_quiet)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    for (k, a), b in zip(
        straight["model"].state_dict().items(), resumed["model"].state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=k)
    # A finished run resumed with more epochs is extended; with fewer it is an error.
    with pytest.raises(CheckpointError, match=r"has trained 3 epochs already, more than epochs=2"):
        train(replace(cfg, out=str(tmp_path / "b"), resume="auto", epochs=2), log=_quiet)
    extended = train(replace(cfg, out=str(tmp_path / "b"), resume="auto", epochs=4), log=_quiet)
    assert [h["epoch"] for h in extended["history"]] == [1, 2, 3, 4]


def test_config_errors(tmp_path):
    with pytest.raises(
        ValueError, match="task must be one of \\('points', 'boxes'\\), got 'masks'"
    ):
        TrainConfig(task="masks")
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="model must be 'tiny' or 'full', got 'huge'"):
        TrainConfig(model="huge")
    with pytest.raises(FileNotFoundError, match="checkpoint: no such file"):
        load_checkpoint(tmp_path / "none.pt")


def _ddp_worker(rank: int, world: int, data: str, out: str) -> dict:
    cfg = TrainConfig(
        task="points", data=data, out=out, epochs=1, batch_size=4, max_train_images=16,
        max_val_images=4, progress=False, seed=0,
    )  # fmt: skip
    result = train(cfg, log=_quiet)
    return {k: v.detach().clone() for k, v in result["model"].named_parameters()}


def test_ddp_on_two_cpu_processes(data, tmp_path):
    from _distributed import run_distributed

    states = run_distributed(_ddp_worker, str(data / "crowds"), str(tmp_path / "ddp"), world=2)
    # DDP keeps the replicas' parameters identical; only rank 0 writes. (Batch-norm
    # statistics are per rank on the CPU: rank 0's are broadcast at each forward.)
    for k, v in states[0].items():
        torch.testing.assert_close(states[1][k], v, msg=k)
    ckpt = read_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["epoch"] == 1 and "val" in ckpt["history"][0]


def test_point_task_regression_head_learning_rate():
    from detloss.app.training.tasks import build_task

    task = build_task(TrainConfig(task="points", lr=1e-3, reg_lr_scale=0.1))
    model = task.build_model(task.model_kwargs())
    groups = task.param_groups(model)
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3), pytest.approx(1e-4)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.reg_head.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


# ----------------------------------------------------------------------------- SSD objectives


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory) -> Path:
    """16 training and 4 validation images of 48 pixels, one or two shapes each."""
    root = tmp_path_factory.mktemp("ssd")
    spec = ShapeSpec(image_size=48, size_range=(10.0, 20.0), count_range=(1, 2))
    make_shapes(root / "train", 16, spec, seed=0)
    make_shapes(root / "val", 4, spec, seed=1)
    return root


@pytest.mark.parametrize("objective", ["multibox", "hungarian", "sinkhorn", "ap_loss"])
def test_ssd_objective_trains_through_the_cli(small_shapes, tmp_path, capsys, objective):
    from detloss.app.cli import main

    out = tmp_path / objective
    argv = ["train", "--task", "boxes", "--detector", "ssd", "--objective", objective,
            "--data", str(small_shapes), "--out", str(out), "--epochs", "2",
            "--batch-size", "4", "--image-size", "32", "--lr", "3e-3", "--threads", "1",
            "--no-plots", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"[boxes] ssd detector ({objective} objective, 32 px input)")
    history = json.loads((out / "history.json").read_text())
    losses = [rec["train"]["loss"] for rec in history]
    assert losses[1] < losses[0], losses
    made = read_checkpoint(out / "last.pt")["config"]
    assert (made["detector"], made["objective"], made["image_size"]) == ("ssd", objective, 32)

    # eval and predict read the detector, objective and input size from the checkpoint.
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(small_shapes),
                 "--split", "val"]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"box_ap", "box_ap50", "box_ap75", "box_voc_ap50"}
    assert metrics["box_ap50"] == pytest.approx(history[-1]["val"]["box_ap50"])
    predictions = out / "predictions.json"
    assert main(["predict", "--checkpoint", str(out / "last.pt"), "--images",
                 str(small_shapes / "val" / "images"), "--out", str(predictions)]) == 0  # fmt: skip
    results = json.loads(predictions.read_text())
    assert results and all(0 <= r["bbox"][0] <= 48 and 0 <= r["bbox"][1] <= 48 for r in results)


def test_ssd_predictions_are_scaled_back_to_each_image():
    from detloss.app.training.evaluation import predict
    from detloss.app.training.tasks import build_task

    torch.manual_seed(0)
    cfg = TrainConfig(task="boxes", detector="ssd", objective="hungarian", image_size=32)
    task = build_task(cfg, num_classes=2)
    model = task.build_model(task.model_kwargs()).eval()
    square = torch.rand(3, 32, 32)
    # Twice as wide, each column repeated: a bilinear resize to 32 x 32 gives ``square``
    # back exactly, so the boxes must be the square image's, x coordinates doubled.
    wide = square.repeat_interleave(2, dim=-1)
    on_square, on_wide = predict(model, task, [square, wide], score_threshold=0.0)
    assert len(on_square["boxes"]) > 0
    expected = on_square["boxes"] * torch.tensor([2.0, 1.0, 2.0, 1.0])
    torch.testing.assert_close(on_wide["boxes"], expected)
    torch.testing.assert_close(on_wide["scores"], on_square["scores"])


def test_ssd_options_in_the_wrong_place_are_one_line_errors(small_shapes, tmp_path, capsys):
    from detloss.app.cli import main

    base = ["train", "--data", str(small_shapes), "--out", str(tmp_path / "x")]
    cases = [
        (["--task", "boxes", "--objective", "sinkhorn"], "needs --task boxes --detector ssd"),
        (["--task", "points", "--detector", "ssd"], "--detector ssd detects boxes"),
        (["--task", "boxes", "--detector", "ssd", "--model", "full"], "SSD detector has one"),
        (["--task", "boxes", "--detector", "ssd", "--image-size", "8"], "image_size"),
    ]
    for extra, needle in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "x").exists()


def test_compare_runs_are_the_trainers_task():
    from detloss.app.compare import CompareSettings, ssd_task
    from detloss.app.training.tasks import SsdTask

    task = ssd_task("sinkhorn", 3, CompareSettings(image_size=64))
    assert isinstance(task, SsdTask)
    assert (task.objective.name, task.input_size, task.num_classes) == ("sinkhorn", 64, 3)
