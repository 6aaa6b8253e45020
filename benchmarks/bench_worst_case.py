"""Worst-case growth of SSD matching: ``MultiBoxLoss`` on one image with 1,000 to 100,000
ground truths (SSD300's 8,732 priors), where most ground truths share their best prior
with others, so the forcing rule of ``max_iou`` runs many contested rounds.

- baseline (at 1,000 targets; beyond, its time grows about as N^1.8): the previous
  formulation, transcribed here: the full ``[P, N]`` IoU (``box_iou``), the threshold
  rule, and the forcing rule run in rounds over the whole matrix (each round a max over
  every prediction of every target);
- detloss: ``detloss.match.threshold_boxes.max_iou_boxes`` (the matching
  ``MultiBoxLoss`` runs), which never stores the ``[P, N]`` IoU and computes each
  contested target's column once.

Both give the same assignment (asserted). At 10,000 and 100,000 targets only detloss runs
(the baseline's rounds take minutes there, and at 100,000 its matrix alone is 3.5 GB).
Each row also times the whole ``multibox_loss`` forward (``repeats`` calls: min / median
/ max) and its growth from the previous size (ratio of medians), with the given number of
torch threads. 10^6 targets are not run: the contested targets' preference lists (a few
hundred entries each) would take about 10 GB.

Run: ``python benchmarks/bench_worst_case.py [--quick] [--repeats R] [--threads 1 2]``
(``--quick``: 300, 1,000 and 3,000 targets).
"""

from __future__ import annotations

import itertools
import statistics
import time

import torch
from torch import Tensor

from _timing import bench_main, time_pair
from detloss.anchors import ssd_priors
from detloss.boxes import box_convert, box_iou
from detloss.losses.ssd import multibox_loss
from detloss.match.threshold_boxes import max_iou_boxes

SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (300, 1_000, 3_000)
#: Sizes up to which the baseline runs.
BASELINE_MAX = 1_000


def make_targets(n: int, seed: int = 0) -> Tensor:
    """``[n, 4]`` normalised ``xyxy`` boxes, 2 to 32 % of the image side."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * 0.8 + 0.1
    size = torch.rand(n, 2, generator=g) * 0.3 + 0.02
    return torch.cat((centre - size / 2, centre + size / 2), dim=1).clamp(0, 1)


def baseline_match(prior_xyxy: Tensor, boxes: Tensor, threshold: float = 0.5) -> Tensor:
    """The previous matching: full IoU, threshold, forcing in rounds over the matrix."""
    iou = box_iou(prior_xyxy, boxes)  # [P, N]
    m, n = iou.shape
    best_iou, best_target = iou.max(dim=1)
    p2t = torch.where(best_iou >= threshold, best_target, -1)
    neg_inf = torch.finfo(iou.dtype).min
    forced = torch.full((m,), -1, dtype=torch.int64)
    free = iou.clone()
    unresolved = torch.ones(n, dtype=torch.bool)
    targets = torch.arange(n)
    for _ in range(min(m, n)):
        best_value, best_pred = free.max(dim=0)
        claiming = unresolved & (best_value > neg_inf)
        score = best_value.masked_fill(~claiming, neg_inf)
        top = torch.full((m,), neg_inf).scatter_reduce_(0, best_pred, score, "amax")
        is_top = claiming & (score == top[best_pred])
        candidate = torch.where(is_top, targets, n)
        winner = torch.full((m,), n).scatter_reduce_(0, best_pred, candidate, "amin")
        won = winner < n
        gained = claiming & (winner[best_pred] == targets)
        forced = torch.where(won, winner, forced)
        free[won] = neg_inf
        unresolved = claiming & ~gained
        if not bool(unresolved.any()):
            break
    return torch.where(forced >= 0, forced, p2t)


def _spread(times: list[float]) -> str:
    return "/".join(f"{t:.3f}" for t in (min(times), statistics.median(times), max(times)))


def run(repeats: int = 3, quick: bool = False, device: str = "cpu", threads: int = 1) -> list[dict]:
    if torch.device(device).type != "cpu":
        return [{"name": f"not run on {device}", "note": "CPU figures only"}]
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(repeats, quick, threads)
    finally:
        torch.set_num_threads(saved_threads)


def _run(repeats: int, quick: bool, threads: int) -> list[dict]:
    priors = ssd_priors()
    prior_xyxy = box_convert(priors, "cxcywh", "xyxy")
    rows, previous = [], None
    for n in QUICK_SIZES if quick else SIZES:
        boxes = make_targets(n)

        def ours(boxes: Tensor = boxes) -> Tensor:
            return max_iou_boxes(prior_xyxy, boxes, validate=False).pred_to_target[0]

        loc = torch.zeros(1, priors.shape[0], 4)
        conf = torch.zeros(1, priors.shape[0], 21)
        target = [{"boxes": boxes, "labels": torch.zeros(n, dtype=torch.int64)}]
        if n <= BASELINE_MAX:  # warm up (allocator, thread pool) where it costs little
            multibox_loss(loc, conf, priors, target)
        loss_times = []
        for _ in range(repeats):
            start = time.perf_counter()
            multibox_loss(loc, conf, priors, target)
            loss_times.append(time.perf_counter() - start)
        loss_s = statistics.median(loss_times)
        growth = ""
        if previous is not None:
            growth = f", x{loss_s / previous[1]:.1f} for x{n / previous[0]:.0f} targets"
        previous = (n, loss_s)
        note = f"{threads} thread(s); multibox_loss forward min/med/max {_spread(loss_times)} s{growth}"
        if n <= (QUICK_SIZES[-1] if quick else BASELINE_MAX):
            expected = baseline_match(prior_xyxy, boxes)
            assert torch.equal(ours(), expected), n
            base_s, ours_s = time_pair(
                lambda boxes=boxes: baseline_match(prior_xyxy, boxes), ours, repeats
            )
            rows.append(
                {
                    "name": f"SSD matching, N={n} targets, P={priors.shape[0]}",
                    "baseline_s": base_s,
                    "ours_s": ours_s,
                    "note": f"same assignment; {note}",
                }
            )
        else:
            times = [time.perf_counter()]
            for _ in range(max(1, repeats - 1)):
                ours()
                times.append(time.perf_counter())
            spans = [b - a for a, b in itertools.pairwise(times)]
            rows.append(
                {
                    "name": f"SSD matching, N={n} targets, P={priors.shape[0]} (ours only)",
                    "note": f"matching median {statistics.median(spans):.2f} s; {note}",
                }
            )
    return rows


if __name__ == "__main__":
    bench_main(run, __doc__)
