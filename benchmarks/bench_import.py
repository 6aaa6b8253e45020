"""Start-up cost: ``import detloss`` and ``detloss --help`` against ``import torch``.

Each command runs in a fresh interpreter (``python -c "import torch"``,
``python -c "import detloss"``, ``python -m detloss.app.cli --help``, the console script's
code path), the three alternated in every repeat after one untimed round that warms the
file cache, so that each repeat compares neighbouring measurements. The baseline is
``import torch``: detloss needs it anyway, so the difference is what detloss adds. The goal
is at most 0.5 s over torch; the note quotes the median added time and its range.

``OMP_NUM_THREADS`` is set to 1 and to 2 in the children (it changes nothing at import,
but is measured as every benchmark is). Both sides must exit with status 0, and ``--help``
must print the usage line.

Run: ``python benchmarks/bench_import.py [--quick] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _timing import print_rows

_SRC = Path(__file__).resolve().parent.parent / "src"

COMMANDS = {
    "torch": ["-c", "import torch"],
    "detloss": ["-c", "import detloss"],
    "help": ["-m", "detloss.app.cli", "--help"],
}


def _environment(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    # The checkout's sources first, as the tests import them.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_SRC), env.get("PYTHONPATH")) if p)
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time_command(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall-clock and CPU seconds (user + system) of one fresh interpreter, and its output.
    On a loaded machine the CPU time is the steadier of the two."""
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    cpu = _children_cpu() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"{args} exited with {done.returncode}: {done.stderr[-2000:]}")
    return elapsed, cpu, done.stdout


def measure(repeats: int, threads: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU seconds of each command over ``repeats`` alternating rounds
    (after one untimed round)."""
    env = _environment(threads)
    wall: dict[str, list[float]] = {name: [] for name in COMMANDS}
    cpu: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for round_ in range(repeats + 1):
        for name, args in COMMANDS.items():
            elapsed, used, stdout = _time_command(args, env)
            if name == "help" and not stdout.startswith("usage: detloss"):
                raise RuntimeError(f"detloss --help printed {stdout[:200]!r}")
            if round_:  # round 0 only warms the file cache
                wall[name].append(elapsed)
                cpu[name].append(used)
    return wall, cpu


def _added(baseline: list[float], ours: list[float]) -> str:
    added = sorted(o - b for b, o in zip(baseline, ours, strict=True))
    return f"median {statistics.median(added):+.3f} s (min {added[0]:+.3f}, max {added[-1]:+.3f})"


def _overhead_note(
    wall: dict[str, list[float]], cpu: dict[str, list[float]], name: str, threads: int
) -> str:
    return (
        f"{threads} thread(s); added over import torch: wall {_added(wall['torch'], wall[name])}, "
        f"CPU {_added(cpu['torch'], cpu[name])}; goal <= 0.5 s"
    )


def run(repeats: int = 5, quick: bool = False, device: str = "cpu") -> list[dict]:
    if device != "cpu":  # start-up cost does not depend on the device
        return [{"name": "import cost", "note": "host only: see the CPU section"}]
    repeats = min(repeats, 3) if quick else repeats
    rows = []
    for threads in (2,) if quick else (1, 2):
        wall, cpu = measure(repeats, threads)
        for name, label in (("detloss", "import detloss"), ("help", "detloss --help")):
            rows.append(
                {
                    "name": f"{label} vs import torch, {threads} thread(s)",
                    "baseline_s": wall["torch"],
                    "ours_s": wall[name],
                    "note": _overhead_note(wall, cpu, name, threads),
                }
            )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_rows(run(args.repeats, quick=args.quick))
