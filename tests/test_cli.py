"""The command line: help texts, the bench hand-off, train + eval, and a quick demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from detloss.cli import build_parser, main


@pytest.mark.parametrize("command", [[], ["demo"], ["train"], ["eval"]])
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
        for sub in ("demo", "train", "eval", "bench"):
            assert sub in out


def test_help_as_a_program():
    # The console entry point runs the same parser.
    proc = subprocess.run(
        [sys.executable, "-m", "detloss.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "demo" in proc.stdout


def test_bench_is_handed_to_the_runner(monkeypatch):
    import detloss.benchrunner

    seen = []
    monkeypatch.setattr(detloss.benchrunner, "main", lambda argv: seen.append(argv) or 0)
    assert main(["bench", "--quick", "--only", "bench_x"]) == 0
    assert seen == [["--quick", "--only", "bench_x"]]


def test_bench_runs_each_script_in_its_own_process(tmp_path):
    # Two toy scripts: each sees a fresh interpreter (the module-level counter starts over),
    # a broken one is reported without stopping the other, and the notes survive.
    from detloss import benchrunner

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
    assert benchrunner.main(["--dir", str(tmp_path), "--repeats", "3", "--quick"]) == 1
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
    from detloss.data.synthetic import ShapeSpec, make_shapes

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
