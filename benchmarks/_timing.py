"""Shared timing helpers for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from collections.abc import Callable

import torch


def device_sync(device: torch.device | str) -> Callable[[], None]:
    """The ``sync`` to pass to the timers for ``device``: ``torch.cuda.synchronize`` on a
    CUDA device, since a CUDA call returns once its kernels are queued and without the
    wait a timed region would measure the launches, not the work; nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(
    fn: Callable[[], object],
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], object] = lambda: None,
) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` untimed calls. ``sync``
    runs after the warm-up (so that the first timed region does not inherit its queued
    work) and inside each timed region."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def time_pair(
    baseline: Callable[[], object],
    ours: Callable[[], object],
    repeats: int,
    sync: Callable[[], object] = lambda: None,
) -> tuple[list[float], list[float]]:
    """Wall-clock seconds of ``repeats`` calls of each, alternated (baseline, ours,
    baseline, ...), so that each repeat's ratio compares two neighbouring measurements: on
    a shared machine the speed drifts over seconds, and timing all of one side first would
    put the drift into the ratio. Each timed call directly follows an untimed call of the
    same function, so both are measured warm (caches, allocator, thread pool), as when
    timed in a row. ``sync`` runs inside each timed region (e.g. ``torch.cuda.synchronize``).
    """
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((baseline, times[0]), (ours, times[1])):
            fn()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> str:
    return f"{min(times) * 1e3:9.2f} {statistics.median(times) * 1e3:9.2f} {max(times) * 1e3:9.2f}"


def print_rows(rows: list[dict]) -> None:
    print(f"{'benchmark':40s} {'side':9s} {'min ms':>9s} {'median':>9s} {'max':>9s}")
    for row in rows:
        if not row.get("ours_s"):  # a note row: nothing was timed
            print(f"{row['name']:40s} {row.get('note', '')}")
            continue
        print(f"{row['name']:40s} {'baseline':9s} {summary(row['baseline_s'])}")
        print(f"{'':40s} {'detloss':9s} {summary(row['ours_s'])}")
        ratios = sorted(b / o for b, o in zip(row["baseline_s"], row["ours_s"]))
        spread = f"{ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f}"
        print(f"{'':40s} {'speed-up':9s} {spread}x (paired min / median / max)")
        print(f"{'':40s} {row.get('note', '')}")


def bench_main(run: Callable[..., list[dict]], doc: str | None) -> None:
    """The command line every benchmark script shares: ``--quick``, ``--repeats`` (default:
    ``run``'s), ``--device`` and ``--threads`` (torch intra-op threads, set before ``run``),
    then ``run`` called with the options its signature takes and its rows printed with
    min / median / max and the median ratio."""
    parameters = inspect.signature(run).parameters
    default_repeats = parameters["repeats"].default if "repeats" in parameters else 5
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="a small problem, a few seconds")
    parser.add_argument("--repeats", type=int, default=default_repeats)
    parser.add_argument("--device", default="cpu", help="e.g. cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}")
    options = {"quick": args.quick, "device": args.device, "threads": args.threads}
    print_rows(run(args.repeats, **{k: v for k, v in options.items() if k in parameters}))
