"""IoU-family box regression losses on aligned boxes: ``1 - score``.

Each takes two broadcastable ``Tensor[..., 4]`` box sets in ``box_format`` (default
``xyxy``) and compares them element-wise: ``[...]`` values before reduction, averaged by
the default ``reduction="mean"`` (``"none"`` keeps them, as torchvision's ops return
them). Denominators are clamped at 1e-7 (torchvision's eps), which changes nothing for
boxes of ordinary size and keeps degenerate ones finite. Ranges: IoU loss [0, 1], GIoU
and DIoU losses [0, 2], CIoU loss [0, 3). With ``validate`` (None, the default, means on
the CPU only) NaN or inf coordinates are a ValueError naming ``boxes1`` or ``boxes2`` (one
host synchronisation).

The four losses are one body, :func:`_one_minus_loss`, parameterised by the overlap score.
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

Score = Callable[[Tensor, Tensor, str], Tensor]


def _one_minus_loss(score: Score, name: str, doc: str) -> Callable[..., Tensor]:
    """The loss ``1 - score(boxes1, boxes2)``, reduced, as a public function ``name``."""

    def loss(
        boxes1: Tensor,
        boxes2: Tensor,
        reduction: str = "mean",
        box_format: str = "xyxy",
        *,
        validate: bool | None = None,
    ) -> Tensor:
        if should_validate(validate, boxes1):
            check_finite(("boxes1", boxes1), ("boxes2", boxes2))
        return reduce_loss(1 - score(boxes1, boxes2, box_format), reduction)

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = doc
    return loss


iou_loss = _one_minus_loss(
    aligned_box_iou,
    "iou_loss",
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
    """,
)

# The variants document their value on one pair of disjoint unit boxes.
_DISJOINT_PAIR = """
        >>> a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> b = torch.tensor([[2.0, 0.0, 3.0, 1.0]])"""


def _variant_doc(summary: str, call: str, value: str) -> str:
    """The docstring of a variant of :func:`iou_loss`: its ``summary`` and its example
    ``call`` on the disjoint pair, which prints ``value``."""
    return f"""{summary}

    Args: as :func:`iou_loss`.

    Shape: as :func:`iou_loss`.

    Example:{_DISJOINT_PAIR}
        >>> {call}
        {value}
    """


giou_loss = _one_minus_loss(
    aligned_generalized_box_iou,
    "giou_loss",
    _variant_doc(
        "``1 - GIoU`` of aligned boxes (torchvision's ``generalized_box_iou_loss``).",
        'giou_loss(a, b, reduction="none")  # disjoint: 1 + (3 - 2) / 3',
        "tensor([1.3333])",
    ),
)
diou_loss = _one_minus_loss(
    aligned_distance_box_iou,
    "diou_loss",
    _variant_doc(
        "``1 - DIoU`` of aligned boxes (torchvision's ``distance_box_iou_loss``).",
        'diou_loss(a, b, reduction="none")  # 1 - IoU 0 + squared centre distance 4 / squared diagonal 10',
        "tensor([1.4000])",
    ),
)
ciou_loss = _one_minus_loss(
    aligned_complete_box_iou,
    "ciou_loss",
    _variant_doc(
        "``1 - CIoU`` of aligned boxes (torchvision's ``complete_box_iou_loss``).",
        'ciou_loss(a, b, reduction="none")  # same aspect ratio: the DIoU loss',
        "tensor([1.4000])",
    ),
)


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
