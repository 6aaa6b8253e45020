"""IoU-family box regression losses on aligned boxes: ``1 - score``.

Each takes two broadcastable ``Tensor[..., 4]`` box sets in ``box_format`` (default
``xyxy``) and compares them element-wise: ``[...]`` values before reduction, averaged by
the default ``reduction="mean"`` (``"none"`` keeps them, as torchvision's ops return
them). Denominators are clamped at 1e-7 (torchvision's eps), which changes nothing for
boxes of ordinary size and keeps degenerate ones finite. Ranges: IoU loss [0, 1], GIoU
and DIoU losses [0, 2], CIoU loss [0, 3). With ``validate`` (None, the default, means on
the CPU only) NaN or inf coordinates are a ValueError naming ``boxes1`` or ``boxes2`` (one
host synchronisation).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .._checks import check_finite, should_validate
from ..boxes import (
    aligned_box_iou,
    aligned_complete_box_iou,
    aligned_distance_box_iou,
    aligned_generalized_box_iou,
)
from ._module import FunctionLoss
from ._reduction import reduce_loss

__all__ = [
    "CIoULoss",
    "DIoULoss",
    "GIoULoss",
    "IoULoss",
    "ciou_loss",
    "diou_loss",
    "giou_loss",
    "iou_loss",
]


def _one_minus(
    score: Callable[[Tensor, Tensor, str], Tensor],
    boxes1: Tensor,
    boxes2: Tensor,
    reduction: str,
    box_format: str,
    validate: bool | None,
) -> Tensor:
    """``1 - score(boxes1, boxes2)`` reduced: the body of every loss of this module."""
    if should_validate(validate, boxes1):
        check_finite(("boxes1", boxes1), ("boxes2", boxes2))
    return reduce_loss(1 - score(boxes1, boxes2, box_format), reduction)


def iou_loss(
    boxes1: Tensor,
    boxes2: Tensor,
    reduction: str = "mean",
    box_format: str = "xyxy",
    *,
    validate: bool | None = None,
) -> Tensor:
    """``1 - IoU`` of aligned boxes.

    Args:
        boxes1: ``Tensor[..., 4]`` boxes in ``box_format``.
        boxes2: ``Tensor[..., 4]``, broadcastable with ``boxes1``.
        reduction: ``"mean"`` (default) averages the pairs, ``"sum"`` adds them,
            ``"none"`` returns one value per pair.
        box_format: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``.
        validate: scan the boxes for NaN and inf (None: on the CPU only).

    Shape:
        - boxes1, boxes2: ``[..., 4]``, broadcastable.
        - output: ``[]``, or the broadcast ``[...]`` with ``reduction="none"``.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
        >>> b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
        >>> iou_loss(a, b, reduction="none")
        tensor([0.6667, 0.0000])
        >>> iou_loss(a, b)
        tensor(0.3333)
    """
    return _one_minus(aligned_box_iou, boxes1, boxes2, reduction, box_format, validate)


def giou_loss(
    boxes1: Tensor,
    boxes2: Tensor,
    reduction: str = "mean",
    box_format: str = "xyxy",
    *,
    validate: bool | None = None,
) -> Tensor:
    """``1 - GIoU`` of aligned boxes (torchvision's ``generalized_box_iou_loss``).

    Args: as :func:`iou_loss`.

    Shape: as :func:`iou_loss`.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> b = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
        >>> giou_loss(a, b, reduction="none")  # disjoint: 1 + (3 - 2) / 3
        tensor([1.3333])
    """
    return _one_minus(aligned_generalized_box_iou, boxes1, boxes2, reduction, box_format, validate)


def diou_loss(
    boxes1: Tensor,
    boxes2: Tensor,
    reduction: str = "mean",
    box_format: str = "xyxy",
    *,
    validate: bool | None = None,
) -> Tensor:
    """``1 - DIoU`` of aligned boxes (torchvision's ``distance_box_iou_loss``).

    Args: as :func:`iou_loss`.

    Shape: as :func:`iou_loss`.

    Example:
        >>> # 1 - IoU 0 + the centres' squared distance 4 over the squared diagonal 10
        >>> diou_loss(
        ...     torch.tensor([[0.0, 0.0, 1.0, 1.0]]),
        ...     torch.tensor([[2.0, 0.0, 3.0, 1.0]]),
        ...     reduction="none",
        ... )
        tensor([1.4000])
    """
    return _one_minus(aligned_distance_box_iou, boxes1, boxes2, reduction, box_format, validate)


def ciou_loss(
    boxes1: Tensor,
    boxes2: Tensor,
    reduction: str = "mean",
    box_format: str = "xyxy",
    *,
    validate: bool | None = None,
) -> Tensor:
    """``1 - CIoU`` of aligned boxes (torchvision's ``complete_box_iou_loss``).

    Args: as :func:`iou_loss`.

    Shape: as :func:`iou_loss`.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> b = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
        >>> ciou_loss(a, b, reduction="none")  # same aspect ratio: the DIoU loss
        tensor([1.4000])
    """
    return _one_minus(aligned_complete_box_iou, boxes1, boxes2, reduction, box_format, validate)


_ARGS = ("boxes1", "boxes2")
_MODULE_DOC = """Module form of :func:`{name}`: stores ``reduction``, ``box_format`` and
    ``validate``; ``forward(boxes1, boxes2)``.

    Shape: as :func:`iou_loss`.

    Example:
        >>> loss = {cls}(reduction="sum")
        >>> loss(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[0.0, 0.0, 2.0, 2.0]]))
        tensor(0.)
    """


class IoULoss(FunctionLoss, function=iou_loss, call_args=_ARGS):
    __doc__ = _MODULE_DOC.format(name="iou_loss", cls="IoULoss")


class GIoULoss(FunctionLoss, function=giou_loss, call_args=_ARGS):
    __doc__ = _MODULE_DOC.format(name="giou_loss", cls="GIoULoss")


class DIoULoss(FunctionLoss, function=diou_loss, call_args=_ARGS):
    __doc__ = _MODULE_DOC.format(name="diou_loss", cls="DIoULoss")


class CIoULoss(FunctionLoss, function=ciou_loss, call_args=_ARGS):
    __doc__ = _MODULE_DOC.format(name="ciou_loss", cls="CIoULoss")
