"""Greedy non-maximum suppression, plain and class-aware.

Coordinate rules: boxes are ``Tensor[N, 4]`` in ``xyxy`` (any units). A box with
``x2 < x1`` (or ``y2 < y1``) has no overlap with anything, so degenerate boxes never
suppress anything and are never suppressed.

Rule and arithmetic (torchvision's): boxes are visited by decreasing score; a box is kept
unless a kept box of the same group has ``inter / (area_i + area_j - inter)`` strictly
greater than ``iou_threshold``, with ``area = (x2 - x1) * (y2 - y1)`` and the quotient
computed in the boxes' floating type (float64 boxes in float64, every other type in
float32) and compared with the threshold in float64. So at exact ties the result is
torchvision's: integer boxes with IoU 1/10 are suppressed at threshold 0.1 in float32
(the float32 quotient rounds above 0.1) and kept in float64. Equal scores are visited in
index order (a stable sort), so the result is deterministic.

Implementation: on the CPU, where Numba is installed, one compiled loop
(``detloss._kernels.nms_cpu``): scores ordered once by a radix sort, each kept box tested against the
boxes behind it in a vectorised loop from which suppressed boxes are dropped as they
accumulate, groups one after another. Elsewhere (accelerators, or Numba missing)
candidates are sorted by (group, score) and laid out as a padded ``[groups, K]`` table;
the overlap tests are computed on the boxes' device in bounded blocks (at most ``2**24``
booleans at a time, their float intermediates in cache-sized slices on the CPU), and the
sequential part of the greedy rule, a scan over the ``K`` columns vectorised over all
groups, runs on the host in numpy, reached once per block, not once per box.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._checks import check_finite, check_shape, check_tensor, shape_str, should_validate
from .._kernels import fast_path

__all__ = ["batched_nms", "nms"]

#: Most box pairs whose overlap test is held at once, as booleans (16 MB).
_SCAN_PAIRS = 1 << 24
#: Most box pairs whose float intermediates are computed at once: cache-sized slices on
#: the CPU, large launches on accelerators.
_CPU_PAIRS = 1 << 18
_DEVICE_PAIRS = 1 << 24


def _host_arrays(boxes: Tensor, scores: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """CPU boxes and scores as contiguous NumPy arrays the compiled loop takes: boxes in
    float64 when they are float64, else float32 (the type of the IoU arithmetic);
    scores in float64 or float32 (exact widenings of any other type)."""
    box_dtype = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    narrow_float = scores.is_floating_point() and scores.dtype != torch.float64
    score_dtype = torch.float32 if narrow_float else torch.float64
    return (
        boxes.detach().to(box_dtype).contiguous().numpy(),
        scores.detach().to("cpu", score_dtype).contiguous().numpy(),
    )


def _bound(threshold: float, dtype: np.dtype) -> np.floating:
    """The smallest ``dtype`` value (float32 or float64) strictly above ``threshold``: a
    ``dtype`` quotient exceeds the float64 threshold, as torchvision's C++ compares them,
    exactly when it is at least this bound, a test that stays in ``dtype``."""
    t = dtype.type(threshold)
    return t if float(t) > threshold else np.nextafter(t, dtype.type(np.inf))


def _overlaps(a: Tensor, b: Tensor, threshold: float) -> Tensor:
    """``bool[G, S, T]``: IoU of ``a [G, S, 4]`` and ``b [G, T, 4]`` above ``threshold``,
    by torchvision's arithmetic (see the module docstring); false when the union is empty.
    """
    g_total, s_total, t_total = a.shape[0], a.shape[1], b.shape[1]
    out = torch.empty((g_total, s_total, t_total), dtype=torch.bool, device=a.device)
    if out.numel() == 0:
        return out
    budget = _CPU_PAIRS if a.device.type == "cpu" else _DEVICE_PAIRS
    # Coordinate planes, so every broadcast below runs over contiguous memory.
    pa = a.permute(2, 0, 1).unsqueeze(-1)  # [4, G, S, 1]
    pb = b.permute(2, 0, 1).unsqueeze(-2).contiguous()  # [4, G, 1, T]
    float_type = np.dtype("float64" if a.dtype == torch.float64 else "float32")
    bound = float(_bound(threshold, float_type))
    area_a = (pa[2] - pa[0]) * (pa[3] - pa[1])
    area_b = (pb[2] - pb[0]) * (pb[3] - pb[1])
    rows = max(1, min(s_total, budget // t_total))
    groups = max(1, budget // (rows * t_total))
    for g0 in range(0, g_total, groups):
        g = slice(g0, g0 + groups)
        for r0 in range(0, s_total, rows):
            r = slice(r0, r0 + rows)
            qa, qb = pa[:, g, r], pb[:, g]
            iw = torch.minimum(qa[2], qb[2]).sub_(torch.maximum(qa[0], qb[0])).clamp_(min=0)
            ih = torch.minimum(qa[3], qb[3]).sub_(torch.maximum(qa[1], qb[1])).clamp_(min=0)
            inter = iw.mul_(ih)
            union = (area_a[g, r] + area_b[g]).sub_(inter)
            torch.ge(inter.div_(union), bound, out=out[g, r])
    return out


def _greedy(boxes: Tensor, valid: Tensor, threshold: float) -> np.ndarray:
    """Keep mask ``bool[G, K]`` of the greedy rule applied to each row independently.

    ``boxes [G, K, 4]`` are sorted by decreasing score along ``K``; ``valid [G, K]``
    marks real entries (padding is never kept).
    """
    g_total, k_total = valid.shape
    keep = np.zeros((g_total, k_total), dtype=bool)
    alive_all = valid.cpu().numpy().copy()
    if k_total * k_total <= _SCAN_PAIRS:
        width, groups = k_total, max(1, _SCAN_PAIRS // (k_total * k_total))
    else:
        width, groups = max(1, _SCAN_PAIRS // k_total), 1
    for g0 in range(0, g_total, groups):
        g1 = min(g0 + groups, g_total)
        chunk = boxes[g0:g1]
        for s in range(0, k_total, width):
            e = min(s + width, k_total)
            alive = alive_all[g0:g1, s:e]
            if not alive.any():
                continue
            block = chunk[:, s:e]
            if s > 0:
                # Only kept boxes suppress: compare the block with the columns kept so far.
                kept_before = torch.from_numpy(keep[g0:g1, :s]).to(boxes.device)
                hit = _overlaps(block, chunk[:, :s], threshold) & kept_before[:, None, :]
                alive &= ~hit.any(dim=2).cpu().numpy()
            over = _overlaps(block, block, threshold).cpu().numpy()
            for i in range(e - s):
                now = alive[:, i]
                if not now.any():
                    continue
                keep[g0:g1, s + i] = now
                alive[:, i + 1 :] &= ~(over[:, i, i + 1 :] & now[:, None])
    return keep


def _check_threshold(iou_threshold: object) -> float:
    if (
        isinstance(iou_threshold, bool)
        or not isinstance(iou_threshold, (int, float))
        or not iou_threshold >= 0
    ):
        raise ValueError(f"iou_threshold must be a number >= 0, got {iou_threshold!r}")
    return float(iou_threshold)


def _check_inputs(boxes: Tensor, scores: Tensor) -> None:
    check_shape(boxes, "boxes", ndim=2, last=4, expected="[N, 4]")
    check_shape(scores, "scores", ndim=1, expected="[N]")
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"scores: expected shape [{boxes.shape[0]}] (one per box), got {shape_str(scores.shape)}"
        )


@torch.no_grad()
def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    iou_threshold: float,
    *,
    validate: bool | None = None,
) -> Tensor:
    """Class-aware NMS: boxes suppress only boxes with the same ``idxs`` value.

    Args:
        boxes: ``Tensor[N, 4]`` in ``xyxy``.
        scores: ``Tensor[N]``, not NaN.
        idxs: ``int[N]`` group (class, or image * classes + class) of each box.
        iou_threshold: a box is dropped when its IoU with a kept, higher-ranked box of
            its group is ``> iou_threshold``.
        validate: NaN or inf in ``boxes`` or ``scores`` is a ValueError naming them (one
            host synchronisation); None (default) checks on the CPU only.

    Returns:
        ``int64[K]`` indices of the kept boxes, by decreasing score (equal scores in
        index order), on the boxes' device.

    Groups are handled exactly by comparing only boxes of the same group, rather than by
    torchvision's trick of shifting each group's coordinates apart: the result is the
    same, without the precision lost by large coordinate offsets.

    Shape:
        - boxes: ``[N, 4]``; scores, idxs: ``[N]``.
        - output: ``[K]``.

    Example:
        >>> boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.1], [0.0, 0.0, 2.0, 2.0]])
        >>> scores = torch.tensor([0.9, 0.8, 0.7])
        >>> batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5)  # box 1 is suppressed
        tensor([0, 2])
    """
    _check_inputs(boxes, scores)
    if should_validate(validate, boxes):  # a NaN score would rank first, silently
        check_finite(("boxes", boxes), ("scores", scores))
    check_tensor(idxs, "idxs")
    if idxs.shape != scores.shape:
        raise ValueError(
            f"idxs: expected shape [{boxes.shape[0]}] (one per box), got {shape_str(idxs.shape)}"
        )
    if idxs.is_floating_point() or idxs.is_complex():
        raise TypeError(f"idxs must be an integer tensor, got {idxs.dtype}")
    threshold = _check_threshold(iou_threshold)
    n = boxes.shape[0]
    device = boxes.device
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    kernel = fast_path("nms", boxes.device)
    if kernel is not None:
        host_boxes, host_scores = _host_arrays(boxes, scores)
        groups = idxs.detach().to("cpu", torch.int64).contiguous().numpy()
        bound = _bound(threshold, host_boxes.dtype)
        return torch.from_numpy(kernel.batched_nms(host_boxes, host_scores, groups, bound))
    dtype = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    by_score = torch.sort(scores, descending=True, stable=True).indices
    groups, by_group = torch.sort(idxs.to(device)[by_score], stable=True)
    order = by_score[by_group]  # by group, then by decreasing score
    _, counts = torch.unique_consecutive(groups, return_counts=True)
    width = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    row = torch.repeat_interleave(torch.arange(counts.shape[0], device=device), counts)
    slot = row * width + torch.arange(n, device=device) - starts[row]
    table = boxes.new_zeros((counts.shape[0] * width, 4), dtype=dtype)
    table[slot] = boxes[order].to(dtype)
    valid = torch.zeros(counts.shape[0] * width, dtype=torch.bool, device=device)
    valid[slot] = True
    keep_table = _greedy(table.view(-1, width, 4), valid.view(-1, width), threshold).reshape(-1)
    kept = torch.zeros(n, dtype=torch.bool, device=device)
    kept[order] = torch.from_numpy(keep_table).to(device)[slot]
    return by_score[kept[by_score]]


def nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float, *, validate: bool | None = None
) -> Tensor:
    """Greedy NMS over all boxes; ``int64[K]`` kept indices by decreasing score.

    Args:
        boxes: ``Tensor[N, 4]`` in ``xyxy``.
        scores: ``Tensor[N]``, not NaN.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box is
            ``> iou_threshold``.
        validate: as for :func:`batched_nms`.

    Shape:
        - boxes: ``[N, 4]``; scores: ``[N]``.
        - output: ``[K]``.

    Example:
        >>> boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [4.0, 4.0, 5.0, 5.0], [0.0, 0.0, 2.0, 2.1]])
        >>> nms(boxes, torch.tensor([0.5, 0.6, 0.9]), iou_threshold=0.5)
        tensor([2, 1])
    """
    _check_inputs(boxes, scores)
    if should_validate(validate, boxes):  # a NaN score would rank first, silently
        check_finite(("boxes", boxes), ("scores", scores))
    kernel = fast_path("nms", boxes.device)
    if kernel is not None:
        threshold = _check_threshold(iou_threshold)
        host_boxes, host_scores = _host_arrays(boxes, scores)
        bound = _bound(threshold, host_boxes.dtype)
        return torch.from_numpy(kernel.nms(host_boxes, host_scores, bound))
    return batched_nms(
        boxes,
        scores,
        torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device),
        iou_threshold,
        validate=False,
    )
