"""IoU-family box regression losses on aligned boxes: ``1 - score``.

Each takes two broadcastable ``Tensor[..., 4]`` box sets in ``box_format`` (default
``xyxy``) and returns ``[...]`` before reduction. Denominators are clamped at 1e-7
(torchvision's eps), which changes nothing for boxes of ordinary size and keeps
degenerate ones finite. Ranges: IoU loss [0, 1], GIoU and DIoU losses [0, 2], CIoU loss
[0, 3). With ``validate`` (None, the default, means on the CPU only) NaN or inf
coordinates are a ValueError naming ``boxes1`` or ``boxes2`` (one host synchronisation).
"""

from __future__ import annotations

from torch import Tensor

from .._checks import check_finite, should_validate
from ..boxes import (
    aligned_box_iou,
    aligned_complete_box_iou,
    aligned_distance_box_iou,
    aligned_generalized_box_iou,
)
from ._reduction import reduce_loss

__all__ = ["ciou_loss", "diou_loss", "giou_loss", "iou_loss"]


def _check_boxes(boxes1: Tensor, boxes2: Tensor, validate: bool | None) -> None:
    if should_validate(validate, boxes1):
        check_finite(("boxes1", boxes1), ("boxes2", boxes2))


def iou_loss(
    boxes1: Tensor,
    boxes2: Tensor,
    reduction: str = "none",
    box_format: str = "xyxy",
    *,
    validate: bool | None = None,
) -> Tensor:
    """``1 - IoU`` of aligned boxes."""
    _check_boxes(boxes1, boxes2, validate)
    return reduce_loss(1 - aligned_box_iou(boxes1, boxes2, box_format), reduction)


def giou_loss(
    boxes1: Tensor,
    boxes2: Tensor,
    reduction: str = "none",
    box_format: str = "xyxy",
    *,
    validate: bool | None = None,
) -> Tensor:
    """``1 - GIoU`` of aligned boxes (torchvision's ``generalized_box_iou_loss``)."""
    _check_boxes(boxes1, boxes2, validate)
    return reduce_loss(1 - aligned_generalized_box_iou(boxes1, boxes2, box_format), reduction)


def diou_loss(
    boxes1: Tensor,
    boxes2: Tensor,
    reduction: str = "none",
    box_format: str = "xyxy",
    *,
    validate: bool | None = None,
) -> Tensor:
    """``1 - DIoU`` of aligned boxes (torchvision's ``distance_box_iou_loss``)."""
    _check_boxes(boxes1, boxes2, validate)
    return reduce_loss(1 - aligned_distance_box_iou(boxes1, boxes2, box_format), reduction)


def ciou_loss(
    boxes1: Tensor,
    boxes2: Tensor,
    reduction: str = "none",
    box_format: str = "xyxy",
    *,
    validate: bool | None = None,
) -> Tensor:
    """``1 - CIoU`` of aligned boxes (torchvision's ``complete_box_iou_loss``)."""
    _check_boxes(boxes1, boxes2, validate)
    return reduce_loss(1 - aligned_complete_box_iou(boxes1, boxes2, box_format), reduction)
