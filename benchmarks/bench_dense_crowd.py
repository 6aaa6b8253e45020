"""Exact P2PNet matching of a dense crowd: sparse + certificate against the dense solve.

One 768 x 1024 image at stride 8 with 2 x 2 reference points per cell (49,152 proposals =
reference points + small random offsets; scores high near heads, as a trained model gives)
and 3,000 heads, spread over the image, clustered in a quarter of it, or packed into a
sixteenth of it (about one proposal per head there: the densest case).

- baseline: the float64 cost ``tau * ||p - t|| - s`` built with ``torch.cdist`` in the
  orientation scipy solves fastest (targets as rows), then
  ``scipy.optimize.linear_sum_assignment``;
- detloss: ``detloss.match.crowd.crowd_assignment`` (never builds the dense cost).

Both must reach the same optimal total (relative difference <= 1e-9; tied assignments may
differ). Peak memory of each side is measured in a fresh subprocess (the rise of the peak
resident set size during one solve, after a small warm-up solve). The baseline takes
seconds per image, so it is timed at most twice, without a warm-up. The note of each row
also counts, over several images, how often the certificate needed more than one
candidate solve or fell back to the dense solve.

``run(..., layouts=("packed",), threads=1)`` times a subset of the layouts with the given
torch intra-op threads (default 2; the baseline's ``cdist`` is the only part that uses
them).

Both solvers run on the host (scipy, and a sparse solve with a host certificate), so on
``--device cuda`` this script times nothing and returns a note row: GPU figures for a host
algorithm would only measure the copies.

Run: ``python benchmarks/bench_dense_crowd.py [--quick] [--repeats R] [--no-memory]
[--threads T]`` (``--quick``: a 192 x 256 image with 200 heads, no memory probes).
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from _timing import print_rows, time_calls
from detloss.match.crowd import crowd_assignment, solve_crowd_assignment
from detloss.points import anchor_points

TAU = 0.05
FULL = {"height": 768, "width": 1024, "heads": 3000}
QUICK = {"height": 192, "width": 256, "heads": 200}
LAYOUTS = ("uniform", "quarter", "packed")
# Images per layout for the count of extra rounds and fallbacks.
STAT_IMAGES = 5


def make_image(
    height: int, width: int, heads: int, layout: str, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Proposals ``[M, 2]``, scores ``[M]`` and heads ``[N, 2]`` of one synthetic image."""
    g = np.random.default_rng(seed)
    reference = anchor_points(height, width, stride=8, rows=2, cols=2, dtype=torch.float64)
    pred = reference.numpy() + g.normal(0.0, 2.0, reference.shape)
    span = np.array([width, height], dtype=np.float64)
    if layout == "quarter":
        span = span / 2
    elif layout == "packed":
        # A sixteenth of the image (a quarter of each side): about one proposal per head
        # there, so nearly every proposal near the cluster must be matched.
        span = span / 4
    target = g.uniform(0.0, 1.0, (heads, 2)) * span
    near, _ = cKDTree(target).query(pred)
    scores = np.clip(0.3 * g.random(len(pred)) + 0.7 * np.exp(-(near**2) / 32.0), 0.0, 1.0)
    return torch.from_numpy(pred), torch.from_numpy(scores), torch.from_numpy(target)


def dense_assignment(
    pred: torch.Tensor, scores: torch.Tensor, target: torch.Tensor, tau: float = TAU
) -> tuple[np.ndarray, np.ndarray, float]:
    """The baseline: dense float64 cost (targets as rows, scipy's fast orientation) + scipy."""
    cost = torch.cdist(
        target.double()[None], pred.double()[None], compute_mode="donot_use_mm_for_euclid_dist"
    )[0]
    cost.mul_(tau).sub_(scores.double()[None, :])
    rows, cols = linear_sum_assignment(cost.numpy())
    return cols, rows, float(cost.numpy()[rows, cols].sum())


def sparse_total(pred, scores, target, pred_idx, target_idx, tau: float = TAU) -> float:
    diff = pred.double()[pred_idx] - target.double()[target_idx]
    return float((tau * diff.norm(dim=1) - scores.double()[pred_idx]).sum())


def _peak_rss_kib() -> int:
    """Peak resident memory of this process in KiB.

    Linux's VmHWM belongs to the current program image; ``ru_maxrss`` would do elsewhere,
    but on Linux a child inherits its parent's value across fork + exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _probe(side: str, size: dict, layout: str) -> None:
    """Subprocess body: print the rise of the peak resident memory (MB) over one solve.

    A small image is solved first, so that one-time costs (importing and loading the
    compiled kernels, about 100 MB with Numba) are not counted as the solve's."""
    warm = make_image(**QUICK, layout=layout)
    if side == "dense":
        dense_assignment(*warm)
    else:
        crowd_assignment(*warm, TAU)
    pred, scores, target = make_image(**size, layout=layout)
    before = _peak_rss_kib()
    if side == "dense":
        dense_assignment(pred, scores, target)
    else:
        crowd_assignment(pred, scores, target, TAU)
    print(json.dumps({"peak_mb": (_peak_rss_kib() - before) / 1024}))


def peak_memory_mb(side: str, quick: bool, layout: str) -> float:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--probe", side, layout]
        + (["--quick"] if quick else []),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def run(
    repeats: int = 5,
    quick: bool = False,
    memory: bool = True,
    device: str = "cpu",
    layouts: tuple[str, ...] = LAYOUTS,
    threads: int | None = None,
) -> list[dict]:
    if torch.device(device).type != "cpu":
        note = "host algorithm (scipy baseline, sparse solve + certificate on the host): CPU only"
        return [{"name": f"not run on {device}", "note": note}]
    torch.set_num_threads(2 if threads is None else threads)
    size = QUICK if quick else FULL
    rows = []
    for layout in layouts:
        pred, scores, target = make_image(**size, layout=layout)
        _, _, best = dense_assignment(pred, scores, target)
        pred_idx, target_idx = crowd_assignment(pred, scores, target, TAU)
        ours_total = sparse_total(pred, scores, target, pred_idx, target_idx)
        rel = abs(ours_total - best) / max(1.0, abs(best))
        assert rel <= 1e-9, (layout, ours_total, best)
        assert torch.unique(pred_idx).numel() == target.shape[0]

        image = (pred, scores, target)
        baseline = time_calls(lambda image=image: dense_assignment(*image), min(repeats, 2), 0)
        ours = time_calls(lambda image=image: crowd_assignment(*image, TAU), repeats)

        outcomes = collections.Counter()
        for seed in range(STAT_IMAGES):
            solution = solve_crowd_assignment(*make_image(**size, layout=layout, seed=seed), TAU)
            key = "fallback" if solution.method == "fallback" else f"{solution.rounds} round"
            outcomes[key] += 1
        counts = ", ".join(f"{n}x {key}" for key, n in sorted(outcomes.items()))
        note = f"same optimum (rel diff {rel:.1e}); {STAT_IMAGES} images: {counts}"
        if memory:
            dense_mb = peak_memory_mb("dense", quick, layout)
            ours_mb = peak_memory_mb("crowd", quick, layout)
            note += f"; peak RSS rise dense {dense_mb:.0f} MB, ours {ours_mb:.0f} MB"
        m, n = pred.shape[0], target.shape[0]
        rows.append(
            {
                "name": f"P2P match N={n} M={m} heads {layout}",
                "baseline_s": baseline,
                "ours_s": ours,
                "note": note,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 192 x 256 image, 200 heads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    parser.add_argument("--probe", nargs=2, metavar=("SIDE", "LAYOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        _probe(args.probe[0], QUICK if args.quick else FULL, args.probe[1])
        return
    # At the quick size neither side raises the peak above what the imports left.
    memory = not (args.no_memory or args.quick)
    print_rows(run(args.repeats, args.quick, memory=memory, threads=args.threads))


if __name__ == "__main__":
    main()
