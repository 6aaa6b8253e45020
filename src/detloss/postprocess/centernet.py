"""CenterNet decoding: heatmap peaks -> per-image boxes, scores and labels.

A peak is a cell whose score equals the maximum of its ``kernel x kernel`` neighbourhood
(CenterNet's max-pool "NMS"). The ``k`` best peaks over all classes of an image become
boxes ``xyxy`` in input pixels:

    centre = (x + offset_x, y + offset_y) * stride
    box    = centre -+ (w, h) * stride / 2

with ``(x, y)`` the peak's cell and ``(w, h)``, ``(offset_x, offset_y)`` read from the size
and offset maps at that cell, i.e. the conventions of :func:`detloss.heatmap.centernet_targets`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import (
    check_finite,
    check_shape,
    compute_dtype,
    output_dtype,
    shape_str,
    should_validate,
)

__all__ = ["centernet_decode"]


def centernet_decode(
    heatmap: Tensor,
    size: Tensor,
    offset: Tensor | None = None,
    k: int = 100,
    stride: float = 4,
    *,
    logits: bool = True,
    kernel: int = 3,
    score_threshold: float = 0.0,
    validate: bool | None = None,
) -> list[dict[str, Tensor]]:
    """Decode CenterNet head outputs into the top ``k`` detections of each image.

    Args:
        heatmap: ``Tensor[B, C, H, W]``: logits when ``logits=True`` (default; scores are
            their sigmoid), otherwise probabilities used as they are.
        size: ``Tensor[B, 2, H, W]`` box ``(w, h)`` in output cells; negative sizes
            count as 0, so a box is never inverted.
        offset: ``Tensor[B, 2, H, W]`` sub-cell centre offset ``(dx, dy)``, or None for none.
        k: detections per image (> 0); at most ``C * H * W`` are returned.
        stride: input pixels per output cell.
        logits: whether ``heatmap`` holds logits.
        kernel: odd window of the max-pool peak test (CenterNet: 3).
        score_threshold: keep the detections whose score is strictly greater, in
            ``[0, 1)``; the default 0 drops only the cells that are not peaks.
        validate: scan the inputs for NaN and inf first (a ValueError naming the argument;
            one host synchronisation); None (default) scans on the CPU only.

    Returns:
        One dict per image, as every decoder: ``{"boxes": [K, 4]`` (xyxy, input pixels),
        ``"scores": [K]`` sorted in decreasing order, ``"labels": int64[K]}``: the best
        ``min(k, C * H * W)`` cells of the image that are peaks with a score above
        ``score_threshold``. Boxes and scores come back in the floating input dtype
        (float16/bfloat16 are computed in float32). One host synchronisation (the
        per-image counts).

    Shape:
        - heatmap: ``[B, C, H, W]``; size, offset: ``[B, 2, H, W]``.
        - output: ``B`` dicts of ``boxes [K, 4]``, ``scores [K]``, ``labels [K]``.

    Example:
        >>> heatmap = torch.zeros(1, 1, 3, 3)
        >>> heatmap[0, 0, 1, 2] = 0.9
        >>> size = torch.full((1, 2, 3, 3), 2.0)
        >>> out = centernet_decode(heatmap, size, k=5, stride=4, logits=False)
        >>> out[0]["boxes"], out[0]["scores"], out[0]["labels"]
        (tensor([[ 4.,  0., 12.,  8.]]), tensor([0.9000]), tensor([0]))
    """
    if should_validate(validate, heatmap):
        check_finite(("heatmap", heatmap), ("size", size), ("offset", offset))
    check_shape(heatmap, "heatmap", ndim=4, expected="[B, C, H, W]")
    batch, classes, height, width = heatmap.shape
    reg_shape = (batch, 2, height, width)
    check_shape(size, "size", ndim=4, expected=shape_str(reg_shape))
    if size.shape != reg_shape:
        raise ValueError(
            f"size: expected shape {shape_str(reg_shape)}, got {shape_str(size.shape)}"
        )
    if offset is not None:
        check_shape(offset, "offset", ndim=4, expected=shape_str(reg_shape))
        if offset.shape != reg_shape:
            raise ValueError(
                f"offset: expected shape {shape_str(reg_shape)}, got {shape_str(offset.shape)}"
            )
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    if isinstance(kernel, bool) or not isinstance(kernel, int):
        raise TypeError(f"kernel must be an int, got {type(kernel).__name__}")
    if kernel <= 0 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd int, got {kernel}")
    if isinstance(stride, bool) or not isinstance(stride, (int, float)):
        raise TypeError(f"stride must be a number, got {type(stride).__name__}")
    if not (stride > 0 and math.isfinite(stride)):
        raise ValueError(f"stride must be a finite number > 0, got {stride}")
    if (
        isinstance(score_threshold, bool)
        or not isinstance(score_threshold, (int, float))
        or not 0 <= score_threshold < 1
    ):
        raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold!r}")

    tensors = [heatmap, size] + ([offset] if offset is not None else [])
    dtype = compute_dtype(*tensors)
    out = output_dtype(*tensors)
    hw = height * width
    top = min(k, classes * hw)
    if top == 0:
        device = heatmap.device
        return [
            {
                "boxes": torch.zeros(0, 4, dtype=out, device=device),
                "scores": torch.zeros(0, dtype=out, device=device),
                "labels": torch.zeros(0, dtype=torch.long, device=device),
            }
            for _ in range(batch)
        ]

    heat = heatmap.to(dtype)
    # The peak test runs on the input itself: sigmoid is monotonic, and logits keep apart
    # values that saturate to the same probability.
    pooled = F.max_pool2d(heat, kernel, stride=1, padding=kernel // 2)
    scores = torch.sigmoid(heat) if logits else heat
    scores = torch.where(pooled == heat, scores, 0)
    best, flat = scores.reshape(batch, classes * hw).topk(top, dim=1)
    labels = flat // hw
    cell = flat % hw
    ys = (cell // width).to(dtype)
    xs = (cell % width).to(dtype)
    pick = cell[:, None, :].expand(batch, 2, top)
    # A size head can predict negative sizes (nothing bounds a regression); clamped at 0 a
    # box is degenerate (a point) rather than inverted (x2 < x1).
    wh = size.to(dtype).reshape(batch, 2, hw).gather(2, pick).clamp(min=0)
    if offset is not None:
        off = offset.to(dtype).reshape(batch, 2, hw).gather(2, pick)
        xs = xs + off[:, 0]
        ys = ys + off[:, 1]
    half_w = wh[:, 0] / 2
    half_h = wh[:, 1] / 2
    boxes = torch.stack((xs - half_w, ys - half_h, xs + half_w, ys + half_h), dim=-1) * stride
    # Cells that are not peaks score 0: with the threshold they drop out of the tail of
    # the top k, which is sorted, so each image keeps a prefix of its row.
    keep = best > score_threshold
    counts = keep.sum(dim=1).tolist()
    return [
        {"boxes": b, "scores": s, "labels": c}
        for b, s, c in zip(
            boxes.to(out)[keep].split(counts),
            best.to(out)[keep].split(counts),
            labels[keep].split(counts),
            strict=True,
        )
    ]
