"""Distributed data parallel set-up and the naming of a rank that stops answering.

A job launched by ``torchrun`` (``WORLD_SIZE > 1``) runs one process per rank: gloo on
the CPU, nccl on CUDA. A collective that waits longer than ``dist_timeout`` for another
rank ends the job with :class:`PeerTimeoutError`, naming the ranks that went silent where
:class:`PeerWatch` can tell.
"""

from __future__ import annotations

import datetime
import os
import threading
import time

import torch
import torch.distributed as dist

from .config import DEFAULT_DIST_TIMEOUT

__all__ = ["PeerTimeoutError", "PeerWatch", "is_peer_failure", "setup_distributed"]


class PeerTimeoutError(RuntimeError):
    """Under DDP, a collective operation waited longer than ``dist_timeout`` for another
    rank (stopped, hung or dead). The message names the rank(s) that stopped answering
    where it can tell."""


def setup_distributed(
    device: str, timeout: float = DEFAULT_DIST_TIMEOUT
) -> tuple[int, int, torch.device]:
    """``(rank, world size, device)``: an existing process group is used as it is;
    otherwise one is initialised from torchrun's environment when ``WORLD_SIZE > 1``
    (nccl for CUDA, gloo for the CPU) with ``timeout`` seconds for every collective."""
    dev = torch.device(device)
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 0, 1, dev
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout),
        )
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    return dist.get_rank(), dist.get_world_size(), dev


class PeerWatch:
    """Tells which rank stopped answering when a collective times out.

    Under DDP a daemon thread of every rank writes a heartbeat (a counter and the rank's
    epoch and step) to the process group's key-value store twice a second. A stopped or
    dead process stops beating; a rank blocked in a collective keeps beating (the wait
    releases the GIL). The rank that sees the timeout reads the beats twice, a moment
    apart, and names the ranks whose beat did not move. The training loop only updates
    two integers: no store traffic, no synchronisation per step.
    """

    interval = 0.5

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.epoch, self.step = 0, -1
        self.store = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if world > 1:
            try:
                self.store = dist.distributed_c10d._get_default_store()
            except Exception:  # a private helper; without it the ranks go unnamed
                self.store = None

    def mark(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step

    def start(self) -> None:
        if self.store is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._beat, name="detloss-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        count = 0
        while not self._stop.is_set():
            count += 1
            try:
                self.store.set(  # type: ignore[union-attr]
                    f"detloss/beat/{self.rank}", f"{count} {self.epoch} {self.step}"
                )
            except Exception:  # the store's host (rank 0) is gone: nothing left to tell
                return
            self._stop.wait(self.interval)

    def _read(self) -> dict[int, tuple[int, int, int]]:
        beats: dict[int, tuple[int, int, int]] = {}
        for r in range(self.world):
            key = f"detloss/beat/{r}"
            if self.store.check([key]):  # type: ignore[union-attr]
                count, epoch, step = self.store.get(key).decode().split()  # type: ignore[union-attr]
                beats[r] = (int(count), int(epoch), int(step))
        return beats

    def describe(self, timeout: float) -> str:
        """One line naming the ranks that stopped answering, where it can tell."""
        prefix = (
            f"rank {self.rank}: no answer from another rank within the "
            f"{timeout:g} s process-group timeout (--dist-timeout)"
        )
        if self.store is None:
            return f"{prefix}; a rank stalled or died"
        try:
            self.store.set_timeout(datetime.timedelta(seconds=min(timeout, 5.0)))
            before = self._read()
            time.sleep(3 * self.interval)
            after = self._read()
        except Exception:  # rank 0 hosts the store: no answer from it names it
            if self.rank != 0:
                return f"{prefix}; rank 0 stalled or died (its key-value store does not answer)"
            return f"{prefix}; a rank stalled or died"
        silent = [
            r
            for r in range(self.world)
            if r != self.rank and (r not in after or before.get(r) == after.get(r))
        ]
        if not silent:
            return f"{prefix}; a rank stalled or died"
        where = ", ".join(
            f"rank {r} (last seen at epoch {after[r][1] + 1} step {after[r][2] + 1})"
            if r in after
            else f"rank {r} (never seen)"
            for r in silent
        )
        return f"{prefix}; stalled or died: {where}"


def is_peer_failure(exc: BaseException) -> bool:
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return any(
        word in text
        for word in (
            "timed out",
            "timeout",
            "connection reset",
            "connection closed",
            "pair closure",
        )
    )
