"""``nms`` and ``batched_nms`` on the CPU against torchvision's CPU kernel.

torchvision's compiled ops do not load beside a CPU-only torch of this version, so the
baseline is its published CPU kernel (``torchvision/csrc/ops/cpu/nms_kernel.cpp``)
transcribed line by line: the same torch preparation (coordinate columns made contiguous,
areas, a stable descending ``scores.sort``) and the same suppression loop, compiled by
Numba instead of a C++ compiler, which is the fairest stand-in for the C++ loop. Its
``batched_nms`` is torchvision's too: the coordinate-offset trick up to 4,000 coordinates
on the CPU, else one ``nms`` call per class. Both sides must return the same indices
(coordinates on a 1/8 pixel grid, so that the offset trick shifts them exactly; equal
scores may come in another order from torchvision's per-class path, whose final sort is
not stable).

The boxes are detector-like (jittered copies around objects of an 80-class scene, many
suppressed) or sparse (placed uniformly, most kept: the greedy rule's worst case).

Run: ``python benchmarks/bench_nms.py [--quick] [--repeats R] [--threads T]``.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from _timing import bench_main, time_pair
from detloss.postprocess.nms import batched_nms, nms


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _torchvision_loop(x1, y1, x2, y2, areas, order, threshold, suppressed, keep):
    """The suppression loop of torchvision's ``nms_kernel_impl``, statement by statement
    (C division semantics: ``error_model="numpy"``)."""
    zero = np.float32(0.0)
    num_to_keep = 0
    ndets = order.size
    for _i in range(ndets):
        i = order[_i]
        if suppressed[i] == 1:
            continue
        keep[num_to_keep] = i
        num_to_keep += 1
        ix1, iy1, ix2, iy2, iarea = x1[i], y1[i], x2[i], y2[i], areas[i]
        for _j in range(_i + 1, ndets):
            j = order[_j]
            if suppressed[j] == 1:
                continue
            xx1 = x1[j] if ix1 < x1[j] else ix1  # std::max(ix1, x1[j])
            yy1 = y1[j] if iy1 < y1[j] else iy1
            xx2 = x2[j] if x2[j] < ix2 else ix2  # std::min(ix2, x2[j])
            yy2 = y2[j] if y2[j] < iy2 else iy2
            w = xx2 - xx1 if zero < xx2 - xx1 else zero  # std::max(0, xx2 - xx1)
            h = yy2 - yy1 if zero < yy2 - yy1 else zero
            inter = w * h
            ovr = inter / (iarea + areas[j] - inter)
            if ovr > threshold:
                suppressed[j] = 1
    return num_to_keep


def torchvision_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """torchvision's ``nms_kernel_impl`` (CPU)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    x1, y1, x2, y2 = (boxes.select(1, k).contiguous() for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = scores.sort(stable=True, dim=0, descending=True).indices
    n = boxes.shape[0]
    suppressed = torch.zeros(n, dtype=torch.uint8)
    keep = torch.zeros(n, dtype=torch.int64)
    arrays = (t.numpy() for t in (x1, y1, x2, y2, areas, order))
    count = _torchvision_loop(*arrays, threshold, suppressed.numpy(), keep.numpy())
    return keep.narrow(0, 0, count)


def torchvision_batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float
) -> torch.Tensor:
    """torchvision's ``batched_nms``: the offset trick up to 4,000 coordinates on the
    CPU, else one ``nms`` per class (its vanilla path)."""
    if boxes.numel() > 4000:
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for class_id in torch.unique(idxs):
            curr = torch.where(idxs == class_id)[0]
            keep_mask[curr[torchvision_nms(boxes[curr], scores[curr], threshold)]] = True
        keep = torch.where(keep_mask)[0]
        return keep[scores[keep].sort(descending=True)[1]]
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return torchvision_nms(boxes + offsets[:, None], scores, threshold)


def make_boxes(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` jittered copies of ``n / 10`` objects in a 1000-pixel scene, xyxy on a 1/8
    pixel grid; scores uniform; labels the objects' classes (80)."""
    g = torch.Generator().manual_seed(seed)
    objects = max(1, n // 10)
    centre = torch.rand(objects, 2, generator=g) * 1000
    size = 10 + torch.rand(objects, 2, generator=g) * 190
    label = torch.randint(0, 80, (objects,), generator=g)
    which = torch.randint(0, objects, (n,), generator=g)
    c = centre[which] + torch.randn(n, 2, generator=g) * 0.1 * size[which]
    s = size[which] * (1 + 0.15 * torch.randn(n, 2, generator=g)).clamp(min=0.3)
    boxes = torch.cat([c - s / 2, c + s / 2], dim=1)
    boxes = (boxes * 8).round() / 8
    return boxes, torch.rand(n, generator=g), label[which]


def make_sparse_boxes(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` boxes of 5 to 105 pixels placed uniformly in a 1000-pixel scene (few
    overlaps: most boxes are kept, the worst case of the greedy rule), 1/8 pixel grid."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 1000
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 100], dim=1)
    boxes = (boxes * 8).round() / 8
    return boxes, torch.rand(n, generator=g), torch.randint(0, 80, (n,), generator=g)


def run(repeats: int = 5, quick: bool = False, threads: int | None = None) -> list[dict]:
    """Rows for 1k clustered boxes at IoU 0.5 and 10k clustered and sparse boxes at IoU
    0.7, ``nms`` and ``batched_nms``, with 1 and 2 torch threads (or ``threads`` only)."""
    before = torch.get_num_threads()
    cases = [(1_000, 0.5, "clustered"), (10_000, 0.7, "clustered"), (10_000, 0.7, "sparse")]
    if quick:
        cases = [(1_000, 0.5, "clustered"), (3_000, 0.7, "clustered"), (3_000, 0.7, "sparse")]
    rows = []
    try:
        for t in (1, 2) if threads is None else (threads,):
            torch.set_num_threads(t)
            for n, iou, layout in cases:
                make = make_boxes if layout == "clustered" else make_sparse_boxes
                boxes, scores, labels = make(n)
                ours = nms(boxes, scores, iou)
                assert torch.equal(ours, torchvision_nms(boxes, scores, iou)), "nms differs"
                base, mine = time_pair(
                    lambda b=boxes, s=scores, i=iou: torchvision_nms(b, s, i),
                    lambda b=boxes, s=scores, i=iou: nms(b, s, i),
                    repeats,
                )
                rows.append(
                    {
                        "name": f"nms {n:,} {layout} boxes IoU {iou} t={t}",
                        "baseline_s": base,
                        "ours_s": mine,
                        "note": f"kept {len(ours)}; torchvision CPU kernel (transcribed)",
                    }
                )
                ours = batched_nms(boxes, scores, labels, iou)
                expected = torchvision_batched_nms(boxes, scores, labels, iou)
                # torchvision's per-class path orders equal scores by an unstable sort.
                same = torch.equal(ours.sort().values, expected.sort().values)
                assert same and torch.equal(scores[ours], scores[expected]), "batched_nms differs"
                base, mine = time_pair(
                    lambda b=boxes, s=scores, c=labels, i=iou: torchvision_batched_nms(b, s, c, i),
                    lambda b=boxes, s=scores, c=labels, i=iou: batched_nms(b, s, c, i),
                    repeats,
                )
                path = "offset trick" if boxes.numel() <= 4000 else "per class"
                rows.append(
                    {
                        "name": f"batched_nms {n:,} {layout} 80 classes IoU {iou} t={t}",
                        "baseline_s": base,
                        "ours_s": mine,
                        "note": f"kept {len(ours)}; torchvision batched_nms ({path}, transcribed)",
                    }
                )
    finally:
        torch.set_num_threads(before)
    return rows


if __name__ == "__main__":
    bench_main(run, __doc__)
