"""The command line: help texts, the bench hand-off, train + eval, and a quick demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from detloss.app.cli import build_parser, main


@pytest.mark.parametrize("command", [[], ["demo"], ["train"], ["eval"], ["predict"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: detloss" in out
    if command == ["train"]:
        for option in ("--task", "--data", "--resume", "--device", "--seed", "--epochs"):
            assert option in out
    if not command:
        for sub in ("demo", "train", "eval", "predict", "bench"):
            assert sub in out


def test_help_as_a_program():
    # The console entry point runs the same parser.
    proc = subprocess.run(
        [sys.executable, "-m", "detloss.app.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "demo" in proc.stdout


def test_bench_is_handed_to_the_runner(monkeypatch):
    import detloss.app.benchrunner

    seen = []
    monkeypatch.setattr(detloss.app.benchrunner, "main", lambda argv: seen.append(argv) or 0)
    assert main(["bench", "--quick", "--only", "bench_x"]) == 0
    assert seen == [["--quick", "--only", "bench_x"]]


def test_bench_runs_each_script_in_its_own_process(tmp_path):
    # Two toy scripts: each sees a fresh interpreter (the module-level counter starts over),
    # a broken one is reported without stopping the other, and the notes survive.
    from detloss.app import benchrunner

    script = (
        "import os\n"
        "COUNT = [0]\n"
        "def run(repeats, quick=False):\n"
        "    COUNT[0] += 1\n"
        "    return [{'name': f'pid {os.getpid()} call {COUNT[0]} quick {quick}',\n"
        "             'baseline_s': [2.0] * repeats, 'ours_s': [1.0] * repeats, 'note': 'n'}]\n"
    )
    (tmp_path / "bench_a.py").write_text(script)
    (tmp_path / "bench_b.py").write_text(script)
    (tmp_path / "bench_c.py").write_text("def run(repeats):\n    raise RuntimeError('no')\n")
    out = tmp_path / "RESULTS.md"
    out.write_text("old\n<!-- notes -->\nkept notes\n")
    argv = ["--dir", str(tmp_path), "--repeats", "3", "--quick", "--threads", "1"]
    assert benchrunner.main(argv) == 1
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| bench_")]
    assert len(rows) == 3 and "failed" in rows[2]
    assert all("call 1 quick True" in row and "2.00 / 2.00 / 2.00" in row for row in rows[:2])
    assert rows[0].split("pid ")[1].split()[0] != str(os.getpid())
    assert "\n## CPU\n" in text and "## CUDA" not in text
    assert text.endswith("<!-- notes -->\nkept notes\n")


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--task", "masks", "--data", "x"])
    assert exc.value.code == 2
    assert "invalid choice: 'masks'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert build_parser().prog == "detloss"


def test_quick_demo_then_eval(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "runs"
    assert main(["demo", "--quick", "--no-progress", "--data", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "point F1 @ 4 px" in printed and "box AP50 (COCO)" in printed
    assert "not meant to meet the goals" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("point_f1@4px", "count_mae", "count_rmse", "mean_count", "box_ap50", "box_ap"):
        assert isinstance(metrics[key], float)
    assert set(metrics["goals"]) == {"point_f1@4px", "count_relative_mae", "box_ap50"}
    for png in (
        "points_predictions.png",
        "boxes_predictions.png",
        "loss_curves.png",
        "matching.png",
    ):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # The data is generated once: a second run finds it (same settings stamp).
    stamp = (data / "crowds" / "settings.json").stat().st_mtime_ns

    # eval on the checkpoint the demo wrote.
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(out / "points" / "last.pt"),
                "--data",
                str(data / "crowds"),
                "--split",
                "test",
            ]
        )
        == 0
    )
    evaluated = json.loads(capsys.readouterr().out)
    assert set(evaluated) >= {"point_f1@4px", "count_mae", "count_rmse"}
    assert (data / "crowds" / "settings.json").stat().st_mtime_ns == stamp


def test_train_command(tmp_path, capsys):
    from detloss.app.data.synthetic import ShapeSpec, make_shapes

    spec = ShapeSpec(image_size=32, size_range=(8.0, 14.0), count_range=(1, 2))
    make_shapes(tmp_path / "d" / "train", 8, spec, seed=0)
    make_shapes(tmp_path / "d" / "val", 4, spec, seed=1)
    code = main([
        "train", "--task", "boxes", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"),
        "--epochs", "1", "--batch-size", "4", "--no-progress", "--threads", "2",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "[boxes] epoch 1/1" in printed
    assert (tmp_path / "o" / "last.pt").is_file()


# ----------------------------------------------------------------------------- one line


def _subparsers(parser, prefix=""):
    """Every (sub)command's parser by its full name, nested ones (``data check``) included."""
    import argparse

    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if name != "bench":
                    found[prefix + name] = sub
                    found.update(_subparsers(sub, prefix + name + " "))
    return found


def test_every_option_has_help_showing_its_default():
    import argparse

    for name, sub in _subparsers(build_parser()).items():
        assert issubclass(sub.formatter_class, argparse.ArgumentDefaultsHelpFormatter), name
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
        text = " ".join(sub.format_help().split())
        optional = [a for a in sub._actions if a.option_strings and not a.required]
        assert text.count("(default: ") >= len(optional) - 1, name  # -1: --help
    train_help = " ".join(_subparsers(build_parser())["train"].format_help().split())
    assert "(default: 20)" in train_help and "(default: 600.0)" in train_help
    assert "what to train (default" not in train_help  # required: no default to show


def test_train_option_defaults_are_the_config_defaults():
    from dataclasses import fields

    from detloss.app.training.config import TrainConfig

    args = build_parser().parse_args(["train", "--task", "points", "--data", "d"])
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for name, value in vars(args).items():
        if name in defaults and name not in ("task", "data"):
            assert value == defaults[name], name
    flags = (("no_amp", "amp"), ("no_flip", "flip"), ("no_progress", "progress"),
             ("no_plots", "plots"))  # fmt: skip
    for flag, field in flags:
        assert getattr(args, flag) is not defaults[field]


def _one_line_error(capsys, argv, *needles):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"detloss {argv[0]}: error: ")
    for needle in needles:
        assert needle in captured.err, (needle, captured.err)
    return captured.err


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--task", "masks", "--data", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'masks'" in err
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--checkpoint", "c.pt", "--data", "d", "--batch-size", "many"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "invalid int value: 'many'" in err


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    from detloss.app.data.synthetic import CrowdSpec, ShapeSpec, make_crowds, make_shapes

    root = tmp_path_factory.mktemp("cli_sets")
    crowd = CrowdSpec(image_size=32, count_range=(2, 6), min_distance=4.0)
    shape = ShapeSpec(image_size=32, size_range=(8.0, 14.0), count_range=(1, 2))
    for split, n, seed in (("train", 4, 0), ("val", 2, 1), ("test", 2, 2)):
        make_crowds(root / "crowds" / split, n, crowd, seed=seed)
        make_shapes(root / "shapes" / split, n, shape, seed=seed)
    (root / "empty" / "train" / "images").mkdir(parents=True)
    (root / "empty" / "train" / "points.json").write_text("{}")
    return root


def test_user_errors_are_one_line_with_status_2(tiny_sets, tmp_path, capsys):
    train = ["train", "--task", "points", "--epochs", "1", "--threads", "1"]
    _one_line_error(
        capsys, [*train, "--data", str(tmp_path / "nowhere")], "no such folder", "nowhere"
    )
    _one_line_error(
        capsys,
        [*train, "--data", str(tiny_sets / "empty"), "--out", str(tmp_path / "o")],
        "the 'train' split is empty",
        "points.json",
    )
    _one_line_error(
        capsys,
        ["train", "--task", "boxes", "--data", str(tiny_sets / "crowds")],
        "--task boxes trains on box annotations",
        "holds point annotations (format points-json)",
        "other task",
    )
    _one_line_error(
        capsys, ["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", "."], "none.pt"
    )
    # A checkpoint of the other task.
    assert main([*train, "--data", str(tiny_sets / "crowds"), "--out", str(tmp_path / "p"),
                 "--batch-size", "2"]) == 0  # fmt: skip
    capsys.readouterr()
    _one_line_error(
        capsys,
        [
            "eval",
            "--checkpoint",
            str(tmp_path / "p" / "best.pt"),
            "--data",
            str(tiny_sets / "shapes"),
        ],
        "is a points model",
        "box annotations (format coco)",
    )
    _one_line_error(
        capsys,
        [
            "train",
            "--task",
            "boxes",
            "--data",
            str(tiny_sets / "shapes"),
            "--out",
            str(tmp_path / "p"),
            "--resume",
            "--epochs",
            "1",
        ],
        "is a points model, not a boxes one",
    )
    # --debug: the traceback instead.
    with pytest.raises(FileNotFoundError):
        main([*train, "--data", str(tmp_path / "nowhere"), "--debug"])


def test_non_zero_ranks_print_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert main(["train", "--task", "points", "--data", str(tmp_path / "nowhere")]) == 2
    with pytest.raises(SystemExit):
        main(["train", "--task", "masks", "--data", "x"])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_train_speaks_a_banner_a_line_per_epoch_and_the_best(tiny_sets, tmp_path, capsys):
    # Progress bars are on by default but stderr is not a terminal here: lines instead.
    out = tmp_path / "run"
    argv = ["train", "--task", "points", "--data", str(tiny_sets / "crowds"), "--out", str(out),
            "--epochs", "2", "--batch-size", "2", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0] == (
        f"[points] format points-json, train 4 images, val 2 images, 1 class, device cpu, out {out}"
    )
    assert lines[1].startswith("[points] epoch 1/2  loss ")
    assert lines[2].startswith("[points] epoch 2/2  loss ")
    # No proposal clears p > 0.5 this early: precision is undefined, not 1.
    assert "point_precision@4px n/a" in lines[1]
    assert lines[3].startswith(f"[points] best: {out / 'best.pt'} (epoch ")
    assert "point_f1@4px" in lines[3]
    printed = json.loads("\n".join(lines[4:]))
    assert printed["point_precision@4px"] is None
    # --resume --epochs 3 extends the finished run.
    assert main([*argv[:-4], "--epochs", "3", "--batch-size", "2", "--resume"]) == 0
    captured = capsys.readouterr()
    assert "resumed from" in captured.out and "[points] epoch 3/3" in captured.out
    assert "epoch 1/3" not in captured.out


def test_point_precision_without_predictions_is_nan():
    import math

    import torch

    from detloss.app.training.config import TrainConfig
    from detloss.app.training.formatting import format_value
    from detloss.app.training.tasks import PointTask

    task = PointTask(TrainConfig(task="points"))
    metrics = task.metrics(
        [{"points": torch.zeros(0, 2)}], [{"points": torch.tensor([[1.0, 2.0]])}]
    )
    assert math.isnan(metrics["point_precision@4px"]) and metrics["point_recall@4px"] == 0.0
    assert format_value(metrics["point_precision@4px"]) == "n/a"


def test_demo_reruns_into_its_folder(tmp_path, capsys):
    from detloss.app.data.synthetic import CrowdSpec, ShapeSpec
    from detloss.app.demo import DemoSettings, run_demo

    settings = DemoSettings(
        crowd_spec=CrowdSpec(image_size=32, count_range=(2, 6), min_distance=4.0),
        shape_spec=ShapeSpec(image_size=32, size_range=(8.0, 14.0), count_range=(1, 2)),
        crowd_images=(4, 2, 2), shape_images=(4, 2, 2), point_epochs=1, box_epochs=1,
        point_batch=2, box_batch=2,
    )  # fmt: skip
    for _ in range(2):
        run_demo(tmp_path / "d", tmp_path / "o", settings=settings, progress=False, plots=False)
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["goals"]
    capsys.readouterr()


# ----------------------------------------------------------------------------- formats


def test_format_names_are_the_readers():
    from detloss.app.cli import FORMAT_NAMES
    from detloss.app.data import FORMATS

    assert sorted(FORMAT_NAMES) == sorted(FORMATS)


def test_detector_and_objective_names_are_the_trainers():
    from detloss.app.cli import BOX_DETECTORS, OBJECTIVE_NAMES
    from detloss.app.training.config import BOX_DETECTORS as CONFIG_DETECTORS
    from detloss.app.training.objectives import OBJECTIVES

    assert OBJECTIVE_NAMES == OBJECTIVES
    assert BOX_DETECTORS == CONFIG_DETECTORS


def _jpg(path, seed: int, size: int = 32):
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def published_sets(tmp_path_factory):
    """A ShanghaiTech-style folder (no validation split) and a YOLO folder, as their
    authors lay them out."""
    import numpy as np
    from scipy.io import savemat

    root = tmp_path_factory.mktemp("published")
    sht = root / "part_B"
    for split, n in (("train_data", 4), ("test_data", 2)):
        for k in range(1, n + 1):
            _jpg(sht / split / "images" / f"IMG_{k}.jpg", k)
            struct = np.zeros((1, 1), dtype=[("location", object), ("number", object)])
            points = np.array([[4.0 + k, 6.0], [20.0, 10.0 + k], [12.0, 25.0]])
            struct[0, 0]["location"] = points
            struct[0, 0]["number"] = np.array([[len(points)]])
            cell = np.empty((1, 1), dtype=object)
            cell[0, 0] = struct
            (sht / split / "ground-truth").mkdir(parents=True, exist_ok=True)
            savemat(sht / split / "ground-truth" / f"GT_IMG_{k}.mat", {"image_info": cell})
    yolo = root / "yolo"
    (yolo / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (yolo / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n"
    )
    for split, n in (("train", 4), ("val", 2)):
        for k in range(n):
            _jpg(yolo / "images" / split / f"im{k}.jpg", 10 + k)
            label = yolo / "labels" / split / f"im{k}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(f"{k % 2} 0.5 0.5 0.4 0.3\n1 0.25 0.25 0.2 0.2\n")
    return root


def test_train_on_shanghaitech_with_a_val_fraction(published_sets, tmp_path, capsys):
    data = str(published_sets / "part_B")
    base = ["train", "--task", "points", "--data", data, "--epochs", "1", "--batch-size", "2",
            "--threads", "1", "--no-plots"]  # fmt: skip
    # No validation split: the error lists the splits and suggests --val-fraction.
    _one_line_error(capsys, [*base, "--out", str(tmp_path / "a")], "['train', 'test']",
                    "--val-fraction")  # fmt: skip
    _one_line_error(capsys, [*base[:2], "boxes", *base[3:], "--out", str(tmp_path / "b")],
                    "holds point annotations (format shanghaitech)")  # fmt: skip
    out = tmp_path / "run"
    assert main([*base, "--out", str(out), "--val-fraction", "0.25"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        f"[points] format shanghaitech, train 3 images, val 1 images (0.25 of train), "
        f"1 class, device cpu, out {out}"
    )
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("epoch,lr,") and rows[1].startswith("1,")
    assert "val_point_f1@4px" in rows[0].split(",")
    # eval reads the published test split.
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", data,
                 "--format", "shanghaitech", "--split", "test"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "point_f1@4px" in json.loads(captured.out)
    assert "[eval] format shanghaitech, test 2 images" in captured.err


def test_train_on_yolo(published_sets, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--task", "boxes", "--data", str(published_sets / "yolo"), "--out",
            str(out), "--epochs", "1", "--batch-size", "2", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        f"[boxes] format yolo, train 4 images, val 2 images, 2 classes, device cpu, out {out}"
    )
    assert {"last.pt", "best.pt", "metrics.csv", "loss_curves.png", "val_predictions.png"} <= {
        p.name for p in out.iterdir()
    }
    from detloss.app.training.checkpoints import read_checkpoint

    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["categories"] == ["cat", "dog"] and ckpt["category_ids"] == [0, 1]
    assert ckpt["data_format"] == "yolo" and ckpt["config"]["format"] is None
    # --format names it explicitly; a wrong one is refused by argparse.
    with pytest.raises(SystemExit):
        main([*argv, "--format", "yaml"])
    capsys.readouterr()


def test_tensorboard(tiny_sets, tmp_path, capsys, monkeypatch):
    argv = ["train", "--task", "points", "--data", str(tiny_sets / "crowds"), "--epochs", "1",
            "--batch-size", "2", "--threads", "1", "--no-plots", "--tensorboard"]  # fmt: skip
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        _one_line_error(capsys, [*argv, "--out", str(tmp_path / "a")], "pip install tensorboard")
        return
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert list((tmp_path / "a" / "tensorboard").glob("events.out.tfevents.*"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    _one_line_error(capsys, [*argv, "--out", str(tmp_path / "b")], "pip install tensorboard")
    assert not (tmp_path / "b").exists()
