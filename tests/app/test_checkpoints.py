"""Checkpoints: atomic writes, safe loading, resume fallback, the overwrite rule, and the
non-finite loss policy."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detloss.app.cli import main
from detloss.app.data.synthetic import CrowdSpec, make_crowds
from detloss.app.training.checkpoints import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from detloss.app.training.config import TrainConfig
from detloss.app.training.formatting import json_safe
from detloss.app.training.loop import NonFiniteLossError, train
from detloss.app.training.tasks import PointTask

SPEC = CrowdSpec(image_size=48, count_range=(4, 12), min_distance=6.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt_data")
    make_crowds(root / "train", 8, SPEC, seed=1)
    make_crowds(root / "val", 2, SPEC, seed=2)
    return root


def _quiet(_: str) -> None:
    pass


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = TrainConfig(
        task="points", data=str(data), out=str(out), epochs=2, batch_size=4, threads=1,
        progress=False, seed=0,
    )  # fmt: skip
    return replace(base, **kw)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A finished 2-epoch run (last.pt at epoch 2, best.pt at epoch 1 or 2)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(_cfg(data, out), log=_quiet)
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ----------------------------------------------------------------------------- atomic


# The writer runs in a fresh interpreter: a forked child of a process that has already
# started thread pools (torch, Numba, earlier tests) can deadlock before it writes.
_WRITER = """
import sys
import torch
from detloss.app.training.checkpoints import save_checkpoint
big = torch.arange(2_000_000, dtype=torch.float32)
for n in range(1000):
    print(n, flush=True)
    save_checkpoint({"n": n, "big": big + n}, sys.argv[1])
"""


@pytest.mark.timeout(180)
def test_sigkill_during_checkpoint_write_leaves_an_intact_file(tmp_path):
    # A child writes checkpoints in a loop; SIGKILL arrives during its third write.
    path = tmp_path / "last.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if int(line) == 2:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["n"] in (1, 2)
    assert torch.equal(ckpt["big"], torch.arange(2_000_000, dtype=torch.float32) + ckpt["n"])
    # Only the temporary file of the interrupted write may be left, never a torn last.pt.
    left = {p.name for p in tmp_path.iterdir()} - {"last.pt"}
    assert all(name.startswith(".last.pt.") and name.endswith(".tmp") for name in left)


def test_save_checkpoint_replaces_atomically(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"a": torch.ones(2)}, path)
    save_checkpoint({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


# ----------------------------------------------------------------------------- untrusted


class _Payload:
    """Unpickling calls open(marker, "w"): a file appears if the payload runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(path: Path, marker: Path) -> Path:
    torch.save({"model": _Payload(marker), "config": {}, "model_kwargs": {}}, path)
    return path


def test_the_crafted_payload_would_run_with_full_unpickling(tmp_path):
    # The control: the file really carries a payload.
    marker = tmp_path / "control_marker"
    torch.load(_crafted(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("legacy_pickle", [False, True])
def test_crafted_checkpoint_is_refused_without_running_it(tmp_path, capsys, legacy_pickle):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    if legacy_pickle:
        evil.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    else:
        _crafted(evil, marker)
    with pytest.raises(CheckpointError, match="refused") as exc:
        load_checkpoint(evil)
    assert "\n" not in str(exc.value) and str(evil) in str(exc.value)
    # The command line: one line, status 2, for eval and for resume.
    assert main(["eval", "--checkpoint", str(evil), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err and str(evil) in err
    assert not marker.exists()


def test_resume_refuses_a_crafted_checkpoint(data, tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = _crafted(tmp_path / "evil.pt", marker)
    code = main([
        "train", "--task", "points", "--data", str(data), "--out", str(tmp_path / "o"),
        "--resume", str(evil), "--epochs", "1", "--threads", "1",
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("detloss train: error: resume: no intact checkpoint") and "refused" in err
    assert err.strip().splitlines()[-1].startswith("detloss train: error")
    assert not marker.exists()


def test_corrupt_files_are_one_line_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"model": {}, "config": {}, "model_kwargs": {}, "x": torch.ones(1000)}, good)
    data = good.read_bytes()
    for name, content, reason in (
        ("empty.pt", b"", "empty or cut short"),
        ("half.pt", data[: len(data) // 2], "truncated or corrupt"),
        ("junk.pt", b"hello world", "truncated or corrupt"),
    ):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as exc:
            read_checkpoint(tmp_path / name)
        assert reason in str(exc.value) and name in str(exc.value)
        assert "\n" not in str(exc.value)
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a detloss training checkpoint"):
        read_checkpoint(tmp_path / "other.pt")


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(finished, tmp_path, capsys, damage):
    out = _copy_run(finished, tmp_path / "run")
    last = out / "last.pt"
    best = read_checkpoint(out / "best.pt")
    last.write_bytes(b"" if damage == "empty" else last.read_bytes()[:1000])
    # Extended to 3 epochs, the run continues from best.pt's epoch.
    cfg = replace(read_cfg(out / "best.pt"), out=str(out), resume="auto", epochs=3)
    result = train(cfg, log=_quiet)
    err = capsys.readouterr().err
    assert "warning: resume:" in err and "last.pt" in err and "using" in err and "best.pt" in err
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    kept = [h["train"] for h in result["history"][: best["epoch"]]]
    assert kept == [h["train"] for h in best["history"]]
    assert read_checkpoint(last)["epoch"] == 3


def read_cfg(path: Path) -> TrainConfig:
    return TrainConfig.from_dict(read_checkpoint(path)["config"])


def test_resume_with_no_intact_checkpoint_is_one_error(finished, tmp_path):
    out = _copy_run(finished, tmp_path / "run")
    (out / "last.pt").write_bytes(b"")
    (out / "best.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="resume: no intact checkpoint") as exc:
        train(replace(read_cfg(finished / "last.pt"), out=str(out), resume="auto"), log=_quiet)
    assert "\n" not in str(exc.value)


def test_resume_of_a_finished_run_keeps_its_metrics_and_can_extend_it(finished, tmp_path):
    out = _copy_run(finished, tmp_path / "run")
    before = (out / "metrics.json").read_text()
    cfg = replace(read_cfg(finished / "last.pt"), out=str(out), resume="auto")
    lines: list[str] = []
    result = train(cfg, log=lines.append)
    assert (out / "metrics.json").read_text() == before
    assert json.loads(before) == json.loads(json.dumps(json_safe(result["metrics"])))
    assert any("finished its 2 epochs" in line for line in lines)
    assert any("best:" in line and "best.pt" in line for line in lines)
    # --epochs 3 extends it by one epoch.
    extended = train(replace(cfg, epochs=3), log=_quiet)
    assert [h["epoch"] for h in extended["history"]] == [1, 2, 3]
    assert read_checkpoint(out / "last.pt")["epoch"] == 3
    with pytest.raises(CheckpointError, match="has trained 3 epochs already, more than epochs=2"):
        train(replace(cfg, epochs=2), log=_quiet)


def test_resume_with_a_checkpoint_of_another_task(finished, tmp_path):
    from detloss.app.data.synthetic import ShapeSpec, make_shapes

    spec = ShapeSpec(image_size=32, size_range=(8.0, 14.0), count_range=(1, 2))
    make_shapes(tmp_path / "s" / "train", 4, spec, seed=0)
    make_shapes(tmp_path / "s" / "val", 2, spec, seed=1)
    cfg = TrainConfig(task="boxes", data=str(tmp_path / "s"), out=str(tmp_path / "o"),
                      resume=str(finished / "last.pt"), epochs=2, progress=False)  # fmt: skip
    with pytest.raises(CheckpointError, match="is a points model, not a boxes one"):
        train(cfg, log=_quiet)


# ----------------------------------------------------------------------------- overwrite


def test_a_new_run_never_replaces_another_runs_best(finished, data, tmp_path, capsys):
    out = _copy_run(finished, tmp_path / "run")
    best = (out / "best.pt").read_bytes()
    with pytest.raises(FileExistsError, match=r"not empty .* --resume.* --overwrite"):
        train(_cfg(data, out, epochs=1), log=_quiet)
    code = main([
        "train", "--task", "points", "--data", str(data), "--out", str(out), "--epochs", "1",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err
    assert (out / "best.pt").read_bytes() == best
    # Resuming another folder's checkpoint into it is a new run there too.
    with pytest.raises(FileExistsError, match="not empty"):
        train(_cfg(data, out, epochs=3, resume=str(finished / "last.pt")), log=_quiet)
    assert (out / "best.pt").read_bytes() == best
    # A mistyped --data with --overwrite fails before anything is removed.
    with pytest.raises(FileNotFoundError, match="no such folder"):
        train(_cfg(tmp_path / "nowhere", out, overwrite=True), log=_quiet)
    assert (out / "best.pt").read_bytes() == best
    # --overwrite replaces the run: a 1-epoch run's files.
    (out / "notes.txt").write_text("mine")
    train(_cfg(data, out, epochs=1, overwrite=True), log=_quiet)
    assert read_checkpoint(out / "best.pt")["epoch"] == 1
    assert read_checkpoint(out / "best.pt")["config"]["epochs"] == 1
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files go


# ----------------------------------------------------------------------------- non-finite


def _nan_at(monkeypatch, calls: set[int]) -> None:
    """PointTask.loss returns NaN at the given (0-based) training calls."""
    original = PointTask.loss
    count = [0]

    def loss(self, outputs, targets):
        total, terms = original(self, outputs, targets)
        if torch.is_grad_enabled():
            if count[0] in calls:
                total = total * float("nan")
                terms = {**terms, "cls": terms["cls"] * float("nan")}
            count[0] += 1
        return total, terms

    monkeypatch.setattr(PointTask, "loss", loss)


def test_nonfinite_loss_stops_before_a_weight_changes(data, tmp_path, monkeypatch, capsys):
    _nan_at(monkeypatch, {2})  # 2 steps per epoch: epoch 2, step 1
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as exc:
        train(_cfg(data, out, epochs=3), log=_quiet)
    message = str(exc.value)
    assert "non-finite loss" in message and "at epoch 2, step 1 of 2" in message
    assert "cls" in message and "\n" not in message
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 1 and _all_finite(ckpt["model"])
    assert _all_finite(read_checkpoint(out / "best.pt")["model"])
    # The command line: status 2, one line.
    _nan_at(monkeypatch, {1})
    code = main([
        "train", "--task", "points", "--data", str(data), "--out", str(tmp_path / "cli"),
        "--epochs", "2", "--batch-size", "4", "--threads", "1",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "epoch 1, step 2 of 2" in err


def test_skip_nonfinite_counts_the_skipped_steps(data, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {1, 2})
    lines: list[str] = []
    result = train(_cfg(data, tmp_path / "run", epochs=2, skip_nonfinite=True), log=lines.append)
    assert result["skipped_steps"] == 2
    assert [h.get("skipped_steps", 0) for h in result["history"]] == [1, 1]
    assert [len(h["step_loss"]) for h in result["history"]] == [1, 1]
    assert any("skipped 2 non-finite step(s)" in line for line in lines)
    ckpt = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["skipped_steps"] == 2 and _all_finite(ckpt["model"])
