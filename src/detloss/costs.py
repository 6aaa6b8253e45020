"""Matching cost terms and their weighted sum.

Every term maps a batch of predictions ``[B, M, ...]`` and padded targets ``[B, N, ...]``
to a cost ``[B, M, N]`` (predictions by targets), computed per image block, never as
DETR's cross-image ``[B * M, sum n]`` matrix. Costs are lower-is-better.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._checks import check_choice, check_shape, compute_dtype, shape_str
from ._kernels import fast_path
from .boxes import BOX_FORMATS, EPS, _to_xyxy, box_convert, generalized_box_iou
from .points import pairwise_distance

# BACKGROUNDS and DetectionCostOptions are public for the box-cost matchers, not part of
# the top-level API.
__all__ = [
    "CLASS_COSTS",
    "box_l1_cost",
    "class_cost",
    "detection_cost",
    "giou_cost",
    "p2p_cost",
    "point_distance_cost",
    "weighted_cost",
]

#: The values of ``class_cost_kind`` (:func:`class_cost`'s ``kind``).
CLASS_COSTS = ("softmax", "sigmoid", "focal")
#: Where a softmax head keeps its background logit.
BACKGROUNDS = ("last", "first", "none")


@dataclasses.dataclass(frozen=True)
class DetectionCostOptions:
    """The keyword options of :func:`detection_cost`, with its names and defaults, checked
    once when built (the weights ``>= 0``, the formats and kinds among the known ones: a
    ValueError naming the first bad one). :func:`detection_cost` builds one from its
    arguments; a box-cost matcher builds one in its constructor and stores its values.

    Shape:
        - no tensors: a frozen record of Python values

    Example:
        >>> DetectionCostOptions(class_cost_kind="focal").kwargs()["cost_bbox"]
        5.0
        >>> DetectionCostOptions(cost_bbox=-5)
        Traceback (most recent call last):
        ...
        ValueError: cost_bbox must be >= 0, got -5
    """

    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    box_format: str = "xyxy"
    l1_format: str | None = None
    class_cost_kind: str = "softmax"
    background: str = "last"
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> DetectionCostOptions:
        """The options among a function's ``arguments`` (e.g. its ``locals()``)."""
        return cls(**{name: arguments[name] for name in _COST_OPTION_NAMES})

    def __post_init__(self) -> None:
        for name in ("cost_class", "cost_bbox", "cost_giou"):
            weight = getattr(self, name)
            if weight < 0:
                raise ValueError(f"{name} must be >= 0, got {weight}")
        check_choice(self.box_format, "box_format", BOX_FORMATS)
        if self.l1_format is not None:
            check_choice(self.l1_format, "l1_format", BOX_FORMATS)
        check_choice(self.class_cost_kind, "class_cost_kind", CLASS_COSTS)
        check_choice(self.background, "background", BACKGROUNDS)

    def kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of :func:`detection_cost`."""
        return {name: getattr(self, name) for name in _COST_OPTION_NAMES}


_COST_OPTION_NAMES = tuple(field.name for field in dataclasses.fields(DetectionCostOptions))


def _check_logits_labels(logits: Tensor, labels: Tensor) -> None:
    check_shape(logits, "pred_logits", ndim=3, expected="[B, M, C]")
    check_shape(labels, "labels", ndim=2, expected="[B, N]")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels: expected batch size {logits.shape[0]} (pred_logits'), "
            f"got shape {shape_str(labels.shape)}"
        )
    if labels.is_floating_point():
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")


def class_cost(
    logits: Tensor,
    labels: Tensor,
    kind: str = "softmax",
    background: str = "last",
    *,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> Tensor:
    """Classification cost ``[B, M, N]`` of predicting each target's label.

    Args:
        logits: ``Tensor[B, M, C]`` raw scores.
        labels: ``int64[B, N]`` in ``0..K-1`` (padded slots may hold anything valid).
        kind: ``"softmax"``: ``-softmax(logits)[label]`` (DETR); ``"sigmoid"``:
            ``-sigmoid(logit[label])``; ``"focal"``: the Deformable-DETR focal cost
            ``alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))``.
        background: where a softmax head keeps its background logit: ``"last"`` (labels
            index the logits directly), ``"first"`` (label ``k`` is logit ``k + 1``) or
            ``"none"``.
        focal_alpha, focal_gamma: the focal cost's weights.

    Shape:
        - logits: ``[B, M, C]``; labels: ``[B, N]``; output: ``[B, M, N]``

    Example:
        >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
        >>> class_cost(logits, torch.tensor([[1]]), "sigmoid")
        tensor([[[-0.5000],
                 [-0.8808]]])
    """
    _check_logits_labels(logits, labels)
    check_choice(kind, "kind", CLASS_COSTS)
    check_choice(background, "background", BACKGROUNDS)
    b, m, c = logits.shape
    index = labels.long() + (1 if background == "first" else 0)
    index = index.clamp(0, max(c - 1, 0))
    index = index[:, None, :].expand(b, m, labels.shape[1])
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if c == 0:
        return x.new_zeros((b, m, labels.shape[1]))
    if kind == "softmax":
        return -x.softmax(dim=-1).gather(2, index)
    gathered = x.gather(2, index)
    if kind == "sigmoid":
        return -gathered.sigmoid()
    p = gathered.sigmoid()
    # log-sigmoid forms keep the focal cost finite at saturated logits.
    pos = focal_alpha * (1 - p) ** focal_gamma * -torch.nn.functional.logsigmoid(gathered)
    neg = (1 - focal_alpha) * p**focal_gamma * -torch.nn.functional.logsigmoid(-gathered)
    return pos - neg


def box_l1_cost(pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """L1 distance summed over the 4 coordinates, ``[B, M, 4] x [B, N, 4] -> [B, M, N]``.

    The coordinates are compared as given: convert both to the format the L1 term should
    see (DETR uses normalised cxcywh) before calling.

    Shape:
        - pred_boxes: ``[B, M, 4]``; target_boxes: ``[B, N, 4]``; output: ``[B, M, N]``

    Example:
        >>> box_l1_cost(torch.tensor([[[0.0, 0, 1, 1]]]), torch.tensor([[[0.5, 0, 1, 2]]]))
        tensor([[[1.5000]]])
    """
    check_shape(pred_boxes, "pred_boxes", ndim=3, last=4, expected="[B, M, 4]")
    check_shape(target_boxes, "target_boxes", ndim=3, last=4, expected="[B, N, 4]")
    dtype = torch.promote_types(pred_boxes.dtype, target_boxes.dtype)
    if dtype in (torch.float16, torch.bfloat16) or not dtype.is_floating_point:
        dtype = torch.float32
    return torch.cdist(pred_boxes.to(dtype), target_boxes.to(dtype), p=1)


def giou_cost(pred_boxes: Tensor, target_boxes: Tensor, box_format: str = "xyxy") -> Tensor:
    """Negative generalized IoU of every prediction with every target, in ``[-1, 1]``.

    Shape:
        - pred_boxes: ``[B, M, 4]``; target_boxes: ``[B, N, 4]``; output: ``[B, M, N]``

    Example:
        >>> giou_cost(torch.tensor([[[0.0, 0, 2, 2]]]), torch.tensor([[[1.0, 0, 3, 2]]]))
        tensor([[[-0.3333]]])
    """
    return -generalized_box_iou(pred_boxes, target_boxes, box_format=box_format)


def point_distance_cost(pred_points: Tensor, target_points: Tensor) -> Tensor:
    """Euclidean distance of every predicted point to every target point.

    Shape:
        - pred_points: ``[B, M, 2]``; target_points: ``[B, N, 2]``; output: ``[B, M, N]``

    Example:
        >>> point_distance_cost(torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[3.0, 4.0]]]))
        tensor([[[5.]]])
    """
    return pairwise_distance(pred_points, target_points)


def p2p_cost(
    pred_points: Tensor, pred_logits: Tensor, target_points: Tensor, tau: float = 0.05
) -> Tensor:
    """The P2PNet matching cost ``tau * ||p - t|| - sigmoid(logit)``, ``[B, M, N]``.

    ``pred_logits`` is ``[B, M]`` (one logit per proposal) or ``[B, M, 2]`` (a 2-way
    softmax head, whose person probability is then used).

    Shape:
        - pred_points: ``[B, M, 2]``; pred_logits: ``[B, M]`` or ``[B, M, 2]``
        - target_points: ``[B, N, 2]``; output: ``[B, M, N]``

    Example:
        >>> p2p_cost(torch.tensor([[[0.0, 0.0]]]), torch.tensor([[0.0]]),
        ...          torch.tensor([[[3.0, 4.0]]]), tau=0.1)
        tensor([[[0.]]])
    """
    check_shape(pred_points, "pred_points", ndim=3, last=2, expected="[B, M, 2]")
    check_shape(pred_logits, "pred_logits", ndim=(2, 3), expected="[B, M] or [B, M, 2]")
    if tuple(pred_logits.shape[:2]) != tuple(pred_points.shape[:2]) or (
        pred_logits.ndim == 3 and pred_logits.shape[2] != 2
    ):
        raise ValueError(
            f"pred_logits: expected shape [{pred_points.shape[0]}, {pred_points.shape[1]}] "
            f"or [{pred_points.shape[0]}, {pred_points.shape[1]}, 2], "
            f"got {shape_str(pred_logits.shape)}"
        )
    dist = pairwise_distance(pred_points, target_points)
    logits = pred_logits.to(dist.dtype)
    prob = logits.softmax(-1)[..., 1] if logits.ndim == 3 else logits.sigmoid()
    return tau * dist - prob.unsqueeze(-1)


def weighted_cost(terms: Mapping[str, tuple[float, Tensor]]) -> Tensor:
    """``sum(weight * cost)`` over named ``(weight, cost)`` terms of one shape; zero weights
    are skipped (their cost may then be anything, even NaN).

    Shape:
        - every cost: one shape, e.g. ``[B, M, N]``; output: that shape

    Example:
        >>> weighted_cost({"a": (2.0, torch.ones(1, 2)), "b": (0.0, torch.full((1, 2), torch.nan))})
        tensor([[2., 2.]])
    """
    total: Tensor | None = None
    for name, (weight, cost) in terms.items():
        if weight == 0:
            continue
        if total is not None and cost.shape != total.shape:
            raise ValueError(
                f"terms[{name!r}]: expected shape {shape_str(total.shape)}, "
                f"got {shape_str(cost.shape)}"
            )
        term = weight * cost
        total = term if total is None else total + term
    if total is None:
        raise ValueError("terms: expected at least one term with a non-zero weight")
    return total


def detection_cost(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    target_labels: Tensor,
    target_boxes: Tensor,
    *,
    cost_class: float = 1.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    box_format: str = "xyxy",
    l1_format: str | None = None,
    class_cost_kind: str = "softmax",
    background: str = "last",
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> Tensor:
    """The DETR matching cost ``cost_class * class + cost_bbox * L1 + cost_giou * (-GIoU)``.

    Boxes are in ``box_format``; the L1 term compares them in ``l1_format`` (default: the
    same format; DETR's is ``cxcywh``). Returns ``[B, M, N]`` without gradient concerns
    (callers match under ``torch.no_grad()``). ``class_cost_kind``, ``background``,
    ``focal_alpha`` and ``focal_gamma`` are :func:`class_cost`'s ``kind`` and options.

    Shape:
        - pred_logits: ``[B, M, C]``; pred_boxes: ``[B, M, 4]``
        - target_labels: ``[B, N]``; target_boxes: ``[B, N, 4]``; output: ``[B, M, N]``

    Example:
        >>> detection_cost(torch.zeros(1, 1, 2), torch.tensor([[[0.0, 0, 2, 2]]]),
        ...                torch.tensor([[0]]), torch.tensor([[[1.0, 0, 3, 2]]]))
        tensor([[[8.8333]]])
    """
    DetectionCostOptions.from_arguments(locals())  # checks them
    l1_format = box_format if l1_format is None else l1_format
    check_shape(pred_boxes, "pred_boxes", ndim=3, last=4, expected="[B, M, 4]")
    check_shape(target_boxes, "target boxes", ndim=3, last=4, expected="[B, N, 4]")
    dtype = compute_dtype(pred_logits, pred_boxes, target_boxes)
    pred_logits, pred_boxes, target_boxes = (
        t.to(dtype) for t in (pred_logits, pred_boxes, target_boxes)
    )
    b, m, n = pred_boxes.shape[0], pred_boxes.shape[1], target_boxes.shape[1]
    # One [B, M, N] buffer: each term is scaled in place and added to it, in the order
    # and with the rounding of weighted_cost({"class", "bbox", "giou"}).
    total: Tensor | None = None
    if cost_class:
        total = class_cost(
            pred_logits,
            target_labels,
            class_cost_kind,
            background,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
        ).mul_(cost_class)
    kernel = _compiled_kernel(pred_boxes, pred_logits, target_boxes)
    if kernel is not None and (cost_bbox or cost_giou):
        return _add_box_terms_compiled(
            kernel, total, pred_boxes, target_boxes, box_format, l1_format, cost_bbox, cost_giou
        )
    if cost_bbox:
        # Not in place: cdist's backward reads its output.
        l1 = cost_bbox * box_l1_cost(
            box_convert(pred_boxes, box_format, l1_format),
            box_convert(target_boxes, box_format, l1_format),
        )
        total = l1 if total is None else total.add_(l1)
    if cost_giou:
        giou = _negative_giou(pred_boxes, target_boxes, box_format).mul_(cost_giou)
        total = giou if total is None else total.add_(giou)
    if total is None:
        return pred_boxes.new_zeros((b, m, n))
    return total


def _compiled_kernel(boxes: Tensor, *others: Tensor) -> ModuleType | None:
    """The compiled box terms for float32 / float64 CPU inputs outside autograd, or None."""
    if boxes.dtype not in (torch.float32, torch.float64):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in (boxes, *others)):
        return None
    return fast_path("detection_cost", boxes.device)


def _add_box_terms_compiled(
    kernel: ModuleType,
    total: Tensor | None,
    pred_boxes: Tensor,
    target_boxes: Tensor,
    box_format: str,
    l1_format: str,
    cost_bbox: float,
    cost_giou: float,
) -> Tensor:
    """``total + cost_bbox * L1 + cost_giou * (-GIoU)`` in one compiled pass over
    ``[B, M, N]`` (``total`` None: the box terms alone), the numbers of the torch path."""
    b, m, n = pred_boxes.shape[0], pred_boxes.shape[1], target_boxes.shape[1]
    out = pred_boxes.new_empty((b, m, n)) if total is None else total.contiguous()
    pred_l1 = _host(box_convert(pred_boxes, box_format, l1_format))
    target_l1 = _host(box_convert(target_boxes, box_format, l1_format))
    # In the cost's dtype, as torch rounds a Python scalar to the tensor's dtype.
    numpy_dtype = np.float32 if out.dtype == torch.float32 else np.float64
    constants = np.array([0.0, EPS, cost_bbox, cost_giou], dtype=numpy_dtype)
    kernel.add_box_terms(
        out.numpy(),
        pred_l1,
        target_l1,
        _host(_to_xyxy(pred_boxes, box_format)),
        _host(_to_xyxy(target_boxes, box_format)),
        constants,
        bool(cost_bbox),
        bool(cost_giou),
        total is not None,
    )
    return out


def _host(tensor: Tensor) -> np.ndarray:
    return tensor.contiguous().numpy()


def _negative_giou(pred_boxes: Tensor, target_boxes: Tensor, box_format: str) -> Tensor:
    """``-generalized_box_iou(pred_boxes, target_boxes)`` ``[B, M, N]`` for boxes of one
    float dtype, with the same operations (so the same numbers), but each coordinate and
    side length taken once as a contiguous ``[B, M, 1]`` or ``[B, 1, N]`` column instead
    of a strided slice of the broadcast ``[B, M, N, 4]`` pair, and the pair terms
    combined in place."""
    a0, a1, a2, a3 = (c.unsqueeze(-1) for c in _to_xyxy(pred_boxes, box_format).unbind(-1))
    b0, b1, b2, b3 = (c.unsqueeze(-2) for c in _to_xyxy(target_boxes, box_format).unbind(-1))
    wa, ha = (a2 - a0).clamp(min=0), (a3 - a1).clamp(min=0)
    wb, hb = (b2 - b0).clamp(min=0), (b3 - b1).clamp(min=0)
    inter = torch.minimum(a2, b2).sub_(torch.maximum(a0, b0)).clamp_(min=0)
    inter.mul_(torch.minimum(a3, b3).sub_(torch.maximum(a1, b1)).clamp_(min=0))
    union = (wa * ha + wb * hb).sub_(inter)
    iou = inter.div_(union.clamp(min=EPS))
    # The enclosing box, from the clamped extents as generalized_box_iou builds it.
    enclosing = torch.maximum(a0 + wa, b0 + wb).sub_(torch.minimum(a0, b0))
    enclosing.mul_(torch.maximum(a1 + ha, b1 + hb).sub_(torch.minimum(a1, b1)))
    gap = (enclosing - union).div_(enclosing.clamp_(min=EPS))
    return gap.sub_(iou)
