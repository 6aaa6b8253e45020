"""DDP on 2 gloo processes: resume equals an uninterrupted run bit for bit (every rank
restores its own random states), and a stalled rank ends the job within --dist-timeout
with a message naming it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

import detloss.app.training.loop as loop_module
from _distributed import run_distributed
from detloss.app.cli import main
from detloss.app.data.synthetic import CrowdSpec, make_crowds
from detloss.app.training.checkpoints import read_checkpoint
from detloss.app.training.config import TrainConfig
from detloss.app.training.loop import train

SPEC = CrowdSpec(image_size=48, count_range=(4, 12), min_distance=6.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # DistributedDataParallel imports torch._dynamo on first use (seconds on a busy
    # machine): once, here, rather than in every forked rank of every test.
    import torch._dynamo  # noqa: F401

    root = tmp_path_factory.mktemp("ddp_data")
    make_crowds(root / "train", 16, SPEC, seed=1)
    make_crowds(root / "val", 2, SPEC, seed=2)
    return root


class _Stop(Exception):
    pass


def _worker(rank: int, world: int, data: str, out: str, resume: bool, stop_at: int) -> dict:
    if stop_at >= 0:
        # Stop every rank at the start of an epoch, after the previous one was saved:
        # what a kill between epochs leaves.
        original = loop_module.train_epoch

        def stopping(run, epoch):
            if epoch == stop_at:
                raise _Stop
            return original(run, epoch)

        loop_module.train_epoch = stopping
    # Random flips on: each rank draws its own, from its own generator state.
    cfg = TrainConfig(
        task="points", data=data, out=out, epochs=3, batch_size=2, max_val_images=2,
        progress=False, seed=0, resume="auto" if resume else None, flip=True,
    )  # fmt: skip
    try:
        result = train(cfg, log=lambda _: None)
    except _Stop:
        return {}
    return {k: v.detach().clone() for k, v in result["model"].state_dict().items()}


def test_ddp_resume_equals_an_uninterrupted_run(data, tmp_path):
    straight = run_distributed(_worker, str(data), str(tmp_path / "a"), False, -1)
    run_distributed(_worker, str(data), str(tmp_path / "b"), False, 1)
    ckpt = read_checkpoint(tmp_path / "b" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["world_size"] == 2
    # One random state per rank, and they differ (seeded seed + rank).
    rng = ckpt["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    resumed = run_distributed(_worker, str(data), str(tmp_path / "b"), True, -1)
    for rank in range(2):
        assert straight[rank].keys() == resumed[rank].keys()
        for k, v in straight[rank].items():
            assert torch.equal(v, resumed[rank][k]), (rank, k)
    assert read_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_rank(rank: int, port: int, argv: list[str], log_dir: str) -> None:
    """One rank as torchrun starts it: environment variables, then ``detloss ...``;
    stdout and stderr go to files."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    for fd, name in ((1, "out"), (2, "err")):
        with open(Path(log_dir) / f"{name}{rank}", "w") as f:
            os.dup2(f.fileno(), fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # line by line, as on a terminal
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP")
def test_a_stalled_rank_ends_the_job_within_the_timeout(data, tmp_path):
    # Two forked ranks (torch already imported); rank 1 is stopped (SIGSTOP) once training
    # has begun, and rank 0 must end within the 3 s timeout, naming rank 1.
    argv = [
        "train", "--task", "points", "--data", str(data), "--out", str(tmp_path / "o"),
        "--epochs", "50", "--batch-size", "2", "--threads", "1", "--dist-timeout", "3",
    ]  # fmt: skip
    context = multiprocessing.get_context("fork")
    port = _free_port()
    procs = [
        context.Process(target=_cli_rank, args=(r, port, argv, str(tmp_path))) for r in range(2)
    ]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 60
        banner = tmp_path / "out0"
        while not (banner.is_file() and "[points] format" in banner.read_text()):
            assert time.monotonic() < deadline and procs[0].is_alive(), "training did not start"
            time.sleep(0.05)
        os.kill(procs[1].pid, signal.SIGSTOP)
        stopped = time.monotonic()
        procs[0].join(timeout=60)
        waited = time.monotonic() - stopped
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(timeout=30)
    assert procs[0].exitcode == 1
    lines = (tmp_path / "err0").read_text().strip().splitlines()
    assert len(lines) == 1, lines
    assert "no answer from another rank within the 3 s process-group timeout" in lines[0]
    assert "stalled or died: rank 1" in lines[0]
    assert waited < 3 + 10
    # Rank 1 printed nothing: non-zero ranks are silent.
    assert (tmp_path / "out1").read_text() == ""
