"""The terms of :func:`~detloss.losses.detection_loss` for one decoder layer: each
prediction's classification loss (for its class, or for every class), the localisation
losses of box pairs, and their per-image sums weighted by a hard matching or by a soft
transport plan."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .._checks import shape_str
from ..boxes import box_convert
from ..match.matching import BACKGROUND, Matching
from ._mining import hard_negative_weights, hard_negatives
from .detection_options import DetectionOptions
from .focal import sigmoid_focal_loss
from .iou import ciou_loss, diou_loss, giou_loss, iou_loss

__all__: list[str] = []

_IOU_LOSSES = {"iou": iou_loss, "giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}


def _to_table_order(values: Tensor, background: str) -> Tensor:
    """Reorder a ``[..., C + 1]`` logit-indexed tensor to classes ``0..C-1`` then background."""
    if background == "first":
        return torch.cat((values[..., 1:], values[..., :1]), dim=-1)
    return values


def _logit_index(class_index: Tensor, num_classes: int, background: str) -> Tensor:
    """Map class indices (``C`` = background) to logit columns."""
    if background == "first":
        return torch.where(class_index == num_classes, 0, class_index + 1)
    return class_index


def _sigmoid_elementwise(x: Tensor, target: Tensor, opts: DetectionOptions) -> Tensor:
    if opts.cls_loss == "focal":
        return sigmoid_focal_loss(
            x, target, opts.focal_alpha, opts.focal_gamma, reduction="none", validate=False
        )
    return F.binary_cross_entropy_with_logits(x, target, reduction="none")


def _class_rows(x: Tensor, class_index: Tensor, num_classes: int, opts: DetectionOptions) -> Tensor:
    """``[B, M]``: each prediction's classification loss for its class (``C`` = background)."""
    b, m, k = x.shape
    index = _logit_index(class_index, num_classes, opts.background)
    kind = opts.cls_loss
    if kind == "ce":
        return -x.log_softmax(-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    if kind == "negative_prob":
        return -x.softmax(-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    if kind in ("focal", "bce"):
        # With background "none" the background index C is one past the logits: its
        # one-hot row is cut off, leaving the all-zero target.
        onehot = F.one_hot(index, num_classes + 1)[..., :k].to(x.dtype)
        return _sigmoid_elementwise(x, onehot, opts).sum(-1)
    out = kind(x.reshape(b * m, k), index.reshape(b * m))  # type: ignore[operator]
    return _callable_result(out, (b * m,)).reshape(b, m).to(x.dtype)


def _class_table(x: Tensor, num_classes: int, opts: DetectionOptions) -> Tensor:
    """``[B, M, C + 1]``: each prediction's classification loss for every class (last
    column: background), used to weight by a soft plan."""
    b, m, k = x.shape
    kind = opts.cls_loss
    if kind == "ce":
        return _to_table_order(-x.log_softmax(-1), opts.background)
    if kind == "negative_prob":
        return _to_table_order(-x.softmax(-1), opts.background)
    if kind in ("focal", "bce"):
        # One-hot target on column c: sum of the all-zero losses, with column c swapped
        # from its negative to its positive loss.
        pos = _sigmoid_elementwise(x, torch.ones_like(x), opts)
        neg = _sigmoid_elementwise(x, torch.zeros_like(x), opts)
        all_neg = neg.sum(-1, keepdim=True)
        per_logit = all_neg + (pos - neg)
        if opts.background == "none":
            return torch.cat((per_logit, all_neg), dim=-1)
        return _to_table_order(per_logit, opts.background)
    # A callable only scores one class per row: score every (prediction, class) pair.
    rows = x.unsqueeze(2).expand(b, m, k, k).reshape(b * m * k, k)
    classes = torch.arange(k, device=x.device).repeat(b * m)
    out = _callable_result(kind(rows, classes), (b * m * k,))  # type: ignore[operator]
    return _to_table_order(out.reshape(b, m, k).to(x.dtype), opts.background)


def _callable_result(out: object, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(out, Tensor) or tuple(out.shape) != shape:
        got = shape_str(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"cls_loss: a callable must return one loss per row, shape {shape_str(shape)}, "
            f"got {got}"
        )
    return out


def _loc_values(name: str, pred: Tensor, target: Tensor, opts: DetectionOptions) -> Tensor:
    """Loss of broadcastable ``[..., 4]`` box pairs -> ``[...]``, summed over coordinates."""
    if name in ("l1", "smooth_l1"):
        if opts.l1_format != opts.box_format:
            pred = box_convert(pred, opts.box_format, opts.l1_format)
            target = box_convert(target, opts.box_format, opts.l1_format)
        if name == "l1":
            return (pred - target).abs().sum(-1)
        pred, target = torch.broadcast_tensors(pred, target)
        return F.smooth_l1_loss(pred, target, reduction="none", beta=opts.smooth_l1_beta).sum(-1)
    return _IOU_LOSSES[name](pred, target, "none", opts.box_format, validate=False)


@dataclass
class _Sums:
    """Per-image numerators and normalisers of one decoder layer, all ``[B]``."""

    cls: Tensor
    cls_norm: Tensor
    loc: dict[str, Tensor]
    matched: Tensor


def _hard_sums(
    x: Tensor,
    pred_boxes: Tensor,
    padded: dict[str, Tensor],
    matching: Matching,
    num_classes: int,
    weights: Tensor | None,
    opts: DetectionOptions,
) -> _Sums:
    b, m, _ = x.shape
    labels, boxes = padded["labels"].long(), padded["boxes"].to(x.dtype)
    if labels.shape[1] == 0:
        # Keep the gathers valid; every prediction is background or ignored anyway.
        labels = labels.new_zeros((b, 1))
        boxes = boxes.new_zeros((b, 1, 4))
    p2t = matching.pred_to_target.to(x.device)
    pos = p2t >= 0
    neg = p2t == BACKGROUND
    index = p2t.clamp(min=0)
    target_labels = labels.gather(1, index)
    class_index = torch.where(pos, target_labels, num_classes)
    rows = _class_rows(x, class_index, num_classes, opts)

    pos_mass = pos.to(x.dtype)
    bg_mass = neg.to(x.dtype)
    pos_weight = pos_mass if weights is None else pos_mass * weights[target_labels]
    bg_weight = opts.no_object_weight * bg_mass
    cls_norm = pos_weight.sum(1)
    if opts.hard_negative_ratio is not None:
        bg_weight = bg_weight * hard_negatives(
            rows.detach(), neg, pos.sum(1), opts.hard_negative_ratio
        ).to(x.dtype)
    elif opts.background != "none":
        cls_norm = cls_norm + opts.no_object_weight * bg_mass.sum(1)
    cls = ((pos_weight + bg_weight) * rows).sum(1)

    loc: dict[str, Tensor] = {}
    if opts.loc_losses:
        matched_boxes = boxes.gather(1, index.unsqueeze(-1).expand(b, m, 4))
        for name in opts.loc_losses:
            loc[name] = (pos_mass * _loc_values(name, pred_boxes, matched_boxes, opts)).sum(1)
    return _Sums(cls, cls_norm, loc, pos_mass.sum(1))


#: Elements of one ``[B, M, n]`` block of the soft (plan) terms: about 16 MB of float32
#: per temporary. Larger problems are cut along the targets and each block is recomputed
#: in the backward pass, so memory stays at one block's temporaries whatever ``N``.
_PAIR_BLOCK = 1 << 22


def _soft_block(
    table: Tensor,
    pred_boxes: Tensor,
    pos_plan: Tensor,
    labels: Tensor,
    boxes: Tensor,
    weights: Tensor | None,
    opts: DetectionOptions,
) -> Tensor:
    """``[B, 3 + L]``: for the targets of one block (``pos_plan [B, M, n]``), the sums of
    the positive weight, of the weighted classification loss, of the positive mass and
    of each localisation loss."""
    b, m, n = pos_plan.shape
    target_loss = table.gather(2, labels.unsqueeze(1).expand(b, m, n))
    pos_weighted = pos_plan if weights is None else pos_plan * weights[labels].unsqueeze(1)
    sums = [
        pos_weighted.sum((1, 2)),
        (pos_weighted * target_loss).sum((1, 2)),
        pos_plan.sum((1, 2)),
    ]
    pairs_pred, pairs_target = pred_boxes.unsqueeze(2), boxes.unsqueeze(1)
    for name in opts.loc_losses:
        sums.append((pos_plan * _loc_values(name, pairs_pred, pairs_target, opts)).sum((1, 2)))
    return torch.stack(sums, dim=1)


def _soft_sums(
    x: Tensor,
    pred_boxes: Tensor,
    padded: dict[str, Tensor],
    plan: Tensor,
    num_classes: int,
    weights: Tensor | None,
    opts: DetectionOptions,
) -> _Sums:
    b, m, _ = x.shape
    n = padded["mask"].shape[1]
    mask = padded["mask"]
    labels, boxes = padded["labels"].long(), padded["boxes"].to(x.dtype)
    plan = plan.detach().to(device=x.device, dtype=x.dtype)
    pos_plan = plan[..., :n] * mask.unsqueeze(1)  # mass on padded slots counts nowhere
    bg_mass = plan[..., n]

    table = _class_table(x, num_classes, opts)
    bg_loss = table[..., num_classes]
    # The [B, M, N] terms by blocks of targets; one block (no recomputation) when small.
    step = max(1, _PAIR_BLOCK // max(1, b * m * 4))
    if n <= step:
        totals = _soft_block(table, pred_boxes, pos_plan, labels, boxes, weights, opts)
    else:
        totals = sum(
            checkpoint(
                _soft_block,
                table,
                pred_boxes,
                pos_plan[..., start : start + step],
                labels[:, start : start + step],
                boxes[:, start : start + step],
                weights,
                opts,
                use_reentrant=False,
            )
            for start in range(0, n, step)
        )
    cls_norm, cls, matched = totals[:, 0], totals[:, 1], totals[:, 2]
    bg_terms = bg_mass * bg_loss
    if opts.hard_negative_ratio is not None:
        budget = opts.hard_negative_ratio * matched
        bg_terms = bg_terms * hard_negative_weights(bg_terms.detach(), bg_mass, budget)
    elif opts.background != "none":
        cls_norm = cls_norm + opts.no_object_weight * bg_mass.sum(1)
    cls = cls + opts.no_object_weight * bg_terms.sum(1)
    loc = {name: totals[:, 3 + i] for i, name in enumerate(opts.loc_losses)}
    return _Sums(cls, cls_norm, loc, matched)
