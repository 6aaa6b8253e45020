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

#: Lanes of one step of the target loops' vector code (16 float32 in a register), and
#: the target count from which the loops run over the targets alone.
_VECTOR = 16
_PAD_BELOW = 64


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
def _l1_distance(
    p0: float, p1: float, p2: float, p3: float, q0: float, q1: float, q2: float, q3: float
) -> float:
    """``torch.cdist(p=1)``'s sum of the four coordinate differences, in its order."""
    distance = abs(p0 - q0) + abs(p1 - q1)
    distance = distance + abs(p2 - q2)
    return distance + abs(p3 - q3)


@jit
def _giou_cost(pred: tuple, target: tuple, zero: float, eps: float) -> float:
    """``-GIoU`` of two boxes as :mod:`detloss.boxes` computes it: ``pred`` is ``(x0, y0,
    x1, y1, area, right, bottom)`` (width and height clamped at zero), ``target`` is
    ``(x0, y0, x1, y1, width, height, area)``."""
    a0, a1, a2, a3, area_a, right_a, bottom_a = pred
    t0, t1, t2, t3, tw, th, tarea = target
    iw = _clamp_min(_minimum(a2, t2) - _maximum(a0, t0), zero)
    ih = _clamp_min(_minimum(a3, t3) - _maximum(a1, t1), zero)
    inter = iw * ih
    union = (area_a + tarea) - inter
    iou = inter / _clamp_min(union, eps)
    width = _maximum(right_a, t0 + tw) - _minimum(a0, t0)
    height = _maximum(bottom_a, t1 + th) - _minimum(a1, t1)
    enclosing = width * height
    gap = (enclosing - union) / _clamp_min(enclosing, eps)
    return gap - iou


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
    # With few targets the target loops run over a whole number of vector steps into
    # two term rows, added to the cost row after (with 30 targets, 14 of a row's lanes
    # ran one by one after the vector loop); the lanes past the last target compute on
    # zeros (no division can trap) and are never written out. With many, the extra
    # pass costs more than the short remainder: the loops write the cost row directly.
    padded = n < _PAD_BELOW
    span = -(-n // _VECTOR) * _VECTOR if padded else n
    columns = np.zeros((13, span), dtype=total.dtype)
    l0, l1_, l2, l3 = columns[0], columns[1], columns[2], columns[3]
    t0, t1, t2, t3 = columns[4], columns[5], columns[6], columns[7]
    tw, th, tarea = columns[8], columns[9], columns[10]
    l1_terms, giou_terms = columns[11], columns[12]
    add_giou = accumulate or use_l1
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
            p0, p1 = pred_l1[b, i, 0], pred_l1[b, i, 1]
            p2, p3 = pred_l1[b, i, 2], pred_l1[b, i, 3]
            a0, a1 = pred_xyxy[b, i, 0], pred_xyxy[b, i, 1]
            a2, a3 = pred_xyxy[b, i, 2], pred_xyxy[b, i, 3]
            wa = _clamp_min(a2 - a0, zero)
            ha = _clamp_min(a3 - a1, zero)
            pred = (a0, a1, a2, a3, wa * ha, a0 + wa, a1 + ha)
            if padded:
                if use_l1:
                    for j in range(span):
                        distance = _l1_distance(p0, p1, p2, p3, l0[j], l1_[j], l2[j], l3[j])
                        l1_terms[j] = w_bbox * distance
                if use_giou:
                    for j in range(span):
                        target = (t0[j], t1[j], t2[j], t3[j], tw[j], th[j], tarea[j])
                        giou_terms[j] = w_giou * _giou_cost(pred, target, zero, eps)
                # The sums in the torch path's order: (total + L1) + GIoU.
                for j in range(n):
                    if use_l1:
                        value = row[j] + l1_terms[j] if accumulate else l1_terms[j]
                        row[j] = value + giou_terms[j] if use_giou else value
                    else:
                        row[j] = row[j] + giou_terms[j] if accumulate else giou_terms[j]
                continue
            if use_l1:
                for j in range(n):
                    term = w_bbox * _l1_distance(p0, p1, p2, p3, l0[j], l1_[j], l2[j], l3[j])
                    row[j] = row[j] + term if accumulate else term
            if use_giou:
                for j in range(n):
                    target = (t0[j], t1[j], t2[j], t3[j], tw[j], th[j], tarea[j])
                    term = w_giou * _giou_cost(pred, target, zero, eps)
                    row[j] = row[j] + term if add_giou else term
