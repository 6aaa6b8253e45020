"""Slow, obviously-correct references shared by several test modules."""

from __future__ import annotations

import itertools
import math

import numpy as np

IOU_KINDS = ("iou", "giou", "diou", "ciou")


def box_scores(a, b) -> tuple[float, float, float, float]:
    """IoU, GIoU, DIoU and CIoU of two ``xyxy`` boxes from the definitions, in Python
    floats (widths and heights clamped at 0; CIoU's trade-off term is 0 when ``v = 0``)."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    wa, ha = max(ax2 - ax1, 0.0), max(ay2 - ay1, 0.0)
    wb, hb = max(bx2 - bx1, 0.0), max(by2 - by1, 0.0)
    iw = max(min(ax2, bx2) - max(ax1, bx1), 0.0)
    ih = max(min(ay2, by2) - max(ay1, by1), 0.0)
    inter = iw * ih
    union = wa * ha + wb * hb - inter
    iou = inter / union
    ew = max(ax2, bx2) - min(ax1, bx1)
    eh = max(ay2, by2) - min(ay1, by1)
    giou = iou - (ew * eh - union) / (ew * eh)
    rho2 = ((ax1 + ax2) / 2 - (bx1 + bx2) / 2) ** 2 + ((ay1 + ay2) / 2 - (by1 + by2) / 2) ** 2
    diou = iou - rho2 / (ew**2 + eh**2)
    v = 4 / math.pi**2 * (math.atan(wb / hb) - math.atan(wa / ha)) ** 2
    alpha = v / (1 - iou + v) if v > 0 else 0.0
    return iou, giou, diou, diou - alpha * v


def iou_family_reference(a, b, kind: str) -> float:
    """One of :func:`box_scores`, by name (``"iou"``, ``"giou"``, ``"diou"``, ``"ciou"``)."""
    return box_scores(a, b)[IOU_KINDS.index(kind)]


def forced_reference(iou: np.ndarray, tmask: np.ndarray, pmask: np.ndarray) -> np.ndarray:
    """The documented forcing rule, one claim at a time: each round, every unresolved real
    target claims its best free real prediction (first index on equal IoU); a contested
    prediction goes to the highest IoU, then the lower target index."""
    m, n = iou.shape
    forced = np.full(m, -1)
    free = pmask.copy()
    unresolved = [j for j in range(n) if tmask[j]]
    for _ in range(min(m, n)):
        claims: dict[int, list[int]] = {}
        for j in unresolved:
            options = [i for i in range(m) if free[i]]
            if options:
                best = max(options, key=lambda i: (iou[i, j], -i))
                claims.setdefault(best, []).append(j)
        if not claims:
            break
        for i, claimants in claims.items():
            forced[i] = max(claimants, key=lambda j: (iou[i, j], -j))
            free[i] = False
        unresolved = [j for js in claims.values() for j in js if j not in forced]
        if not unresolved:
            break
    return forced


def brute_force_assignment(cost) -> float:
    """Minimum total of a ``[m, n]`` cost over every one-to-one map of the smaller side into
    the larger (0 when a side is empty): the exact assignment by enumeration."""
    m, n = cost.shape
    if m <= n:
        maps = itertools.permutations(range(n), m)
        return float(min(sum(cost[i, c] for i, c in enumerate(cols)) for cols in maps))
    maps = itertools.permutations(range(m), n)
    return float(min(sum(cost[r, j] for j, r in enumerate(rows)) for rows in maps))
