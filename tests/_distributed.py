"""Run a function on W CPU processes joined by a gloo process group (test helper)."""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn: Callable, args: tuple, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        with open(Path(out_dir) / f"{rank}.pkl", "wb") as f:
            pickle.dump(result, f)
    finally:
        dist.destroy_process_group()


def _start_method() -> str:
    """fork where it is safe: the children need not re-import torch (seconds on a loaded
    machine). With a CUDA device, the first backward pass starts autograd's device threads,
    after which a forked child cannot run backward at all: spawn there."""
    forced = os.environ.get("DETLOSS_TEST_START_METHOD")
    if forced:
        return forced
    return "spawn" if torch.cuda.is_available() else "fork"


def run_distributed(fn: Callable, *args: object, world: int = 2, timeout: float = 120) -> list:
    """Call ``fn(rank, world, *args)`` on ``world`` processes; return their results in rank
    order. ``fn`` must be a module-level function; results must be picklable. Workers still
    running after ``timeout`` seconds are killed and the test fails (a rank that raised
    before a collective would otherwise leave the others waiting forever)."""
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.start_processes(
            _worker,
            args=(world, _free_port(), fn, args, out_dir),
            nprocs=world,
            join=False,
            start_method=_start_method(),
        )
        deadline = time.monotonic() + timeout
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail(f"distributed workers did not finish within {timeout} s")
        results = []
        for rank in range(world):
            with open(Path(out_dir) / f"{rank}.pkl", "rb") as f:
                results.append(pickle.load(f))
    return results
