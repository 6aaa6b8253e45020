"""Compiled box terms of the DETR matching cost on the CPU (Numba; optional).

:func:`detloss.costs.detection_cost` adds its L1 and GIoU terms through
:func:`add_box_terms` when Numba is installed, the cost is a float32 / float64 CPU
tensor and no gradient is asked for: one pass over ``[B, M, N]`` instead of about thirty
tensor operations with their temporaries. Every value is computed by the same IEEE
operations, in the same order and dtype, as the torch expressions it replaces
(``torch.cdist(p=1)`` sums the four coordinate differences in order; the GIoU is that of
``detloss.boxes``), so the numbers are identical; NaN propagates as torch's ``minimum``,
``maximum`` and ``clamp`` propagate it.
"""

from __future__ import annotations

import functools

import numpy as np

from ._numba import jit as _jit

# Divisors here are clamped to EPS > 0: no division can raise, and without the check the
# loops over targets run on vector registers.
jit = functools.partial(_jit, ieee_division=True)

__all__ = ["add_box_terms"]


@jit
def _minimum(a: float, b: float) -> float:
    return a if (a < b) | (a != a) else b


@jit
def _maximum(a: float, b: float) -> float:
    return a if (a > b) | (a != a) else b


@jit
def _clamp_min(x: float, low: float) -> float:
    return low if x < low else x


@jit
def add_box_terms(
    total: np.ndarray,
    pred_l1: np.ndarray,
    target_l1: np.ndarray,
    pred_xyxy: np.ndarray,
    target_xyxy: np.ndarray,
    constants: np.ndarray,
    use_l1: bool,
    use_giou: bool,
    accumulate: bool,
) -> None:
    """``total [B, M, N] (+)= w_bbox * L1 + w_giou * (-GIoU)``, in ``total``'s dtype.

    ``pred_l1 [B, M, 4]`` / ``target_l1 [B, N, 4]`` are the boxes in the L1 term's format,
    ``pred_xyxy`` / ``target_xyxy`` the same boxes as xyxy; ``constants`` is ``[0, EPS,
    w_bbox, w_giou]`` in the cost's dtype. Without ``accumulate`` the first term is
    written, not added. Each image's targets are first laid out one array per quantity,
    so that the loops over targets are branch-free and run on vector registers."""
    b_count, m, n = total.shape
    zero, eps, w_bbox, w_giou = constants[0], constants[1], constants[2], constants[3]
    columns = np.empty((11, n), dtype=total.dtype)
    l0, l1_, l2, l3 = columns[0], columns[1], columns[2], columns[3]
    t0, t1, t2, t3 = columns[4], columns[5], columns[6], columns[7]
    tw, th, tarea = columns[8], columns[9], columns[10]
    for b in range(b_count):
        for j in range(n):
            l0[j], l1_[j] = target_l1[b, j, 0], target_l1[b, j, 1]
            l2[j], l3[j] = target_l1[b, j, 2], target_l1[b, j, 3]
            t0[j], t1[j] = target_xyxy[b, j, 0], target_xyxy[b, j, 1]
            t2[j], t3[j] = target_xyxy[b, j, 2], target_xyxy[b, j, 3]
            tw[j] = _clamp_min(t2[j] - t0[j], zero)
            th[j] = _clamp_min(t3[j] - t1[j], zero)
            tarea[j] = tw[j] * th[j]
        for i in range(m):
            row = total[b, i]
            if use_l1:
                p0, p1 = pred_l1[b, i, 0], pred_l1[b, i, 1]
                p2, p3 = pred_l1[b, i, 2], pred_l1[b, i, 3]
                if accumulate:
                    for j in range(n):
                        distance = abs(p0 - l0[j]) + abs(p1 - l1_[j])
                        distance = distance + abs(p2 - l2[j])
                        distance = distance + abs(p3 - l3[j])
                        row[j] = row[j] + w_bbox * distance
                else:
                    for j in range(n):
                        distance = abs(p0 - l0[j]) + abs(p1 - l1_[j])
                        distance = distance + abs(p2 - l2[j])
                        distance = distance + abs(p3 - l3[j])
                        row[j] = w_bbox * distance
            if use_giou:
                a0, a1 = pred_xyxy[b, i, 0], pred_xyxy[b, i, 1]
                a2, a3 = pred_xyxy[b, i, 2], pred_xyxy[b, i, 3]
                wa = _clamp_min(a2 - a0, zero)
                ha = _clamp_min(a3 - a1, zero)
                area_a = wa * ha
                right_a, bottom_a = a0 + wa, a1 + ha
                add = accumulate or use_l1
                for j in range(n):
                    iw = _clamp_min(_minimum(a2, t2[j]) - _maximum(a0, t0[j]), zero)
                    ih = _clamp_min(_minimum(a3, t3[j]) - _maximum(a1, t1[j]), zero)
                    inter = iw * ih
                    union = (area_a + tarea[j]) - inter
                    iou = inter / _clamp_min(union, eps)
                    width = _maximum(right_a, t0[j] + tw[j]) - _minimum(a0, t0[j])
                    height = _maximum(bottom_a, t1[j] + th[j]) - _minimum(a1, t1[j])
                    enclosing = width * height
                    gap = (enclosing - union) / _clamp_min(enclosing, eps)
                    term = w_giou * (gap - iou)
                    row[j] = row[j] + term if add else term
