"""Box formats, areas and the IoU family (IoU, GIoU, DIoU, CIoU).

Coordinate rules: boxes are ``Tensor[..., 4]``. ``xyxy`` is (x1, y1, x2, y2) with
x1 <= x2 and y1 <= y2; ``xywh`` is (x1, y1, width, height); ``cxcywh`` is
(centre x, centre y, width, height). A box with x2 < x1 (or y2 < y1) is treated as
having zero extent along that axis: it has zero area and overlaps nothing, and every
function returns finite values and finite gradients for it.

Integer, float16 and bfloat16 inputs are computed in float32; results come back in the
floating input dtype (float32 for integer inputs).

Every pairwise function maps ``[..., N, 4] x [..., M, 4] -> [..., N, M]`` with
broadcast leading dimensions; every ``aligned_*`` function maps two broadcastable
``[..., 4]`` tensors to ``[...]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_broadcastable, check_choice, check_shape, compute_dtype, output_dtype

__all__ = [
    "BOX_FORMATS",
    "aligned_box_iou",
    "aligned_complete_box_iou",
    "aligned_distance_box_iou",
    "aligned_generalized_box_iou",
    "box_area",
    "box_convert",
    "box_iou",
    "complete_box_iou",
    "distance_box_iou",
    "generalized_box_iou",
]

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")

#: Smallest denominator used by the IoU family. Only degenerate boxes (union, enclosing
#: area or diagonal below it) are affected, so ordinary values are exact.
EPS = 1e-7


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    if fmt == "xyxy":
        return boxes
    a, b, c, d = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((a, b, a + c, b + d), dim=-1)
    return torch.stack((a - c / 2, b - d / 2, a + c / 2, b + d / 2), dim=-1)


def _from_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    if fmt == "xyxy":
        return boxes
    x1, y1, x2, y2 = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert ``Tensor[..., 4]`` boxes between ``xyxy``, ``xywh`` and ``cxcywh``.

    Integer boxes are converted in float32 (a centre is not an integer).

    Args:
        boxes: ``Tensor[..., 4]`` in ``in_fmt``.
        in_fmt, out_fmt: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``.

    Shape:
        - boxes: ``[..., 4]``.
        - output: ``[..., 4]``.

    Example:
        >>> box_convert(torch.tensor([[1.0, 2.0, 5.0, 4.0]]), "xyxy", "cxcywh")
        tensor([[3., 3., 4., 2.]])
    """
    check_shape(boxes, "boxes", last=4, expected="[..., 4]")
    check_choice(in_fmt, "in_fmt", BOX_FORMATS)
    check_choice(out_fmt, "out_fmt", BOX_FORMATS)
    if in_fmt == out_fmt:
        return boxes.clone()
    if not boxes.is_floating_point():
        boxes = boxes.float()
    return _from_xyxy(_to_xyxy(boxes, in_fmt), out_fmt)


def box_area(boxes: Tensor, box_format: str = "xyxy") -> Tensor:
    """Area of ``Tensor[..., 4]`` boxes -> ``Tensor[...]``; inverted boxes have area 0.

    Args:
        boxes: ``Tensor[..., 4]`` in ``box_format``.
        box_format: ``"xyxy"`` (default), ``"xywh"`` or ``"cxcywh"``.

    Shape:
        - boxes: ``[..., 4]``.
        - output: ``[...]``.

    Example:
        >>> box_area(torch.tensor([[0.0, 0.0, 2.0, 3.0], [2.0, 0.0, 1.0, 1.0]]))
        tensor([6., 0.])
    """
    check_shape(boxes, "boxes", last=4, expected="[..., 4]")
    check_choice(box_format, "box_format", BOX_FORMATS)
    out = output_dtype(boxes)
    b = _to_xyxy(boxes.to(compute_dtype(boxes)), box_format)
    area = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    return area.to(out)


def _iou_family(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """IoU-family score of two broadcastable xyxy tensors in a float dtype."""
    wa = (a[..., 2] - a[..., 0]).clamp(min=0)
    ha = (a[..., 3] - a[..., 1]).clamp(min=0)
    wb = (b[..., 2] - b[..., 0]).clamp(min=0)
    hb = (b[..., 3] - b[..., 1]).clamp(min=0)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    union = wa * ha + wb * hb - inter
    iou = inter / union.clamp(min=EPS)
    if kind == "iou":
        return iou
    # Enclosing box; built from the clamped extents so inverted boxes stay consistent.
    ex1 = torch.minimum(a[..., 0], b[..., 0])
    ey1 = torch.minimum(a[..., 1], b[..., 1])
    ex2 = torch.maximum(a[..., 0] + wa, b[..., 0] + wb)
    ey2 = torch.maximum(a[..., 1] + ha, b[..., 1] + hb)
    if kind == "giou":
        enclosing = (ex2 - ex1) * (ey2 - ey1)
        return iou - (enclosing - union) / enclosing.clamp(min=EPS)
    diagonal = (ex2 - ex1) ** 2 + (ey2 - ey1) ** 2
    dx = (a[..., 0] + a[..., 0] + wa - b[..., 0] - b[..., 0] - wb) / 2
    dy = (a[..., 1] + a[..., 1] + ha - b[..., 1] - b[..., 1] - hb) / 2
    diou = iou - (dx**2 + dy**2) / diagonal.clamp(min=EPS)
    if kind == "diou":
        return diou
    # atan2 equals atan(w / h) for h > 0; clamping h keeps flat and point boxes finite and
    # differentiable without changing any box taller than EPS.
    v = (4 / math.pi**2) * (
        torch.atan2(wb, hb.clamp(min=EPS)) - torch.atan2(wa, ha.clamp(min=EPS))
    ) ** 2
    with torch.no_grad():  # the trade-off factor is a constant, as in the CIoU paper
        alpha = v / (1 - iou + v).clamp(min=EPS)
    return diou - alpha * v


def _prepare(boxes1: Tensor, boxes2: Tensor, box_format: str) -> tuple[Tensor, Tensor, torch.dtype]:
    check_shape(boxes1, "boxes1", last=4, expected="[..., 4]")
    check_shape(boxes2, "boxes2", last=4, expected="[..., 4]")
    check_choice(box_format, "box_format", BOX_FORMATS)
    dtype = compute_dtype(boxes1, boxes2)
    out = output_dtype(boxes1, boxes2)
    a = _to_xyxy(boxes1.to(dtype), box_format)
    b = _to_xyxy(boxes2.to(dtype), box_format)
    return a, b, out


def _pairwise(boxes1: Tensor, boxes2: Tensor, kind: str, box_format: str) -> Tensor:
    a, b, out = _prepare(boxes1, boxes2, box_format)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(
            f"boxes1 and boxes2: expected shapes [..., N, 4] and [..., M, 4], "
            f"got {list(boxes1.shape)} and {list(boxes2.shape)}"
        )
    return _iou_family(a.unsqueeze(-2), b.unsqueeze(-3), kind).to(out)


def _aligned(boxes1: Tensor, boxes2: Tensor, kind: str, box_format: str) -> Tensor:
    a, b, out = _prepare(boxes1, boxes2, box_format)
    check_broadcastable(boxes1, boxes2, "boxes1 and boxes2", "[..., 4]")
    return _iou_family(a, b, kind).to(out)


def box_iou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    """Pairwise intersection over union, ``[..., N, 4] x [..., M, 4] -> [..., N, M]`` in [0, 1].

    Args:
        boxes1: ``Tensor[..., N, 4]`` boxes in ``box_format``.
        boxes2: ``Tensor[..., M, 4]``, leading dimensions broadcastable with ``boxes1``'s.
        box_format: ``"xyxy"`` (default), ``"xywh"`` or ``"cxcywh"``.

    Shape:
        - boxes1: ``[..., N, 4]``; boxes2: ``[..., M, 4]``.
        - output: ``[..., N, M]``.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [4.0, 0.0, 5.0, 1.0]])
        >>> box_iou(a, b)
        tensor([[0.3333, 0.0000]])
    """
    return _pairwise(boxes1, boxes2, "iou", box_format)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019), in [-1, 1].

    Args: as :func:`box_iou`.

    Shape: as :func:`box_iou`.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [4.0, 0.0, 5.0, 1.0]])
        >>> generalized_box_iou(a, b)
        tensor([[ 0.3333, -0.5000]])
    """
    return _pairwise(boxes1, boxes2, "giou", box_format)


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    """Pairwise distance IoU (Zheng et al. 2020): IoU minus squared centre distance over the
    squared diagonal of the enclosing box, in [-1, 1].

    Args: as :func:`box_iou`.

    Shape: as :func:`box_iou`.

    Example:
        >>> b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [4.0, 0.0, 5.0, 1.0]])
        >>> distance_box_iou(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), b)
        tensor([[ 0.2564, -0.4310]])
    """
    return _pairwise(boxes1, boxes2, "diou", box_format)


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    """Pairwise complete IoU: distance IoU minus the aspect-ratio term ``alpha * v``.

    ``alpha`` is treated as a constant (no gradient), as in the paper and torchvision.

    Args: as :func:`box_iou`.

    Shape: as :func:`box_iou`.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [4.0, 0.0, 5.0, 1.0]])
        >>> complete_box_iou(a, b)
        tensor([[ 0.2564, -0.4310]])
    """
    return _pairwise(boxes1, boxes2, "ciou", box_format)


def aligned_box_iou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    """Element-wise IoU of broadcastable ``[..., 4]`` boxes -> ``[...]``.

    Args:
        boxes1: ``Tensor[..., 4]`` boxes in ``box_format``.
        boxes2: ``Tensor[..., 4]``, broadcastable with ``boxes1``.
        box_format: ``"xyxy"`` (default), ``"xywh"`` or ``"cxcywh"``.

    Shape:
        - boxes1, boxes2: ``[..., 4]``, broadcastable.
        - output: the broadcast ``[...]``.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
        >>> b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [4.0, 0.0, 5.0, 1.0]])
        >>> aligned_box_iou(a, b)
        tensor([0.3333, 0.0000])
    """
    return _aligned(boxes1, boxes2, "iou", box_format)


def aligned_generalized_box_iou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    """Element-wise generalized IoU of broadcastable ``[..., 4]`` boxes -> ``[...]``.

    Args: as :func:`aligned_box_iou`.

    Shape: as :func:`aligned_box_iou`.

    Example:
        >>> aligned_generalized_box_iou(
        ...     torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]]),
        ...     torch.tensor([[1.0, 0.0, 3.0, 2.0], [4.0, 0.0, 5.0, 1.0]]),
        ... )
        tensor([ 0.3333, -0.6000])
    """
    return _aligned(boxes1, boxes2, "giou", box_format)


def aligned_distance_box_iou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    """Element-wise distance IoU of broadcastable ``[..., 4]`` boxes -> ``[...]``.

    Args: as :func:`aligned_box_iou`.

    Shape: as :func:`aligned_box_iou`.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
        >>> b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [4.0, 0.0, 5.0, 1.0]])
        >>> aligned_distance_box_iou(a, b)
        tensor([ 0.2564, -0.6154])
    """
    return _aligned(boxes1, boxes2, "diou", box_format)


def aligned_complete_box_iou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    """Element-wise complete IoU of broadcastable ``[..., 4]`` boxes -> ``[...]``.

    Args: as :func:`aligned_box_iou`.

    Shape: as :func:`aligned_box_iou`.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
        >>> aligned_complete_box_iou(a, a + 1.0)  # same shapes: the distance IoU
        tensor([ 0.0317, -0.2500])
    """
    return _aligned(boxes1, boxes2, "ciou", box_format)
