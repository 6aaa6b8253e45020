"""Shared timing helpers for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> str:
    return f"{min(times) * 1e3:9.2f} {statistics.median(times) * 1e3:9.2f} {max(times) * 1e3:9.2f}"


def print_rows(rows: list[dict]) -> None:
    print(f"{'benchmark':40s} {'side':9s} {'min ms':>9s} {'median':>9s} {'max':>9s}")
    for row in rows:
        print(f"{row['name']:40s} {'baseline':9s} {summary(row['baseline_s'])}")
        print(f"{'':40s} {'detloss':9s} {summary(row['ours_s'])}")
        ratio = statistics.median(row["baseline_s"]) / statistics.median(row["ours_s"])
        print(f"{'':40s} {'speed-up':9s} {ratio:9.2f}x  {row.get('note', '')}")
