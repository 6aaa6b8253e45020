"""The generic matched detection loss (DETR's set criterion, uotod's DetectionLoss).

A matching of ``M`` predictions to ``N`` targets per image weights two kinds of terms:

* classification, over every prediction that is not ignored: a matched prediction is
  trained towards its target's class, an unmatched one towards the background (the
  background logit, or all-zero sigmoid targets with ``background="none"``);
* localisation, over the matched pairs only: each named box loss between the predicted
  box and its target box.

A soft transport plan ``[B, M, N + 1]`` weights the same terms by its entries, so a hard
matching and its 0/1 plan give the same value. See ``docs/detection_loss.md`` for the
normalisation rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .._checks import (
    check_box_values,
    check_choice,
    check_finite,
    check_reduction,
    check_shape,
    compute_dtype,
    named_entries,
    shape_str,
    should_validate,
)
from ..boxes import BOX_FORMATS, box_convert
from ..distributed import normalizer, world_size
from ..match.matching import BACKGROUND, Matching
from ..match.targets import box_targets
from ._mining import hard_negative_weights, hard_negatives
from .focal import sigmoid_focal_loss
from .iou import ciou_loss, diou_loss, giou_loss, iou_loss

__all__ = [
    "CLS_LOSSES",
    "DEFAULT_LOC_LOSSES",
    "LOC_LOSSES",
    "DetectionLoss",
    "detection_loss",
]

#: Built-in classification losses (a callable is accepted too, see :func:`detection_loss`).
CLS_LOSSES = ("ce", "focal", "bce", "negative_prob")
#: Localisation losses that ``loc_losses`` may name.
LOC_LOSSES = ("l1", "smooth_l1", "iou", "giou", "diou", "ciou")
#: ``loc_losses`` when None is given: DETR's weights.
DEFAULT_LOC_LOSSES: Mapping[str, float] = MappingProxyType({"l1": 5.0, "giou": 2.0})
BACKGROUNDS = ("last", "first", "none")
#: What ``reduction="mean"`` divides the localisation sums by: the matched predictions
#: (plan mass on real targets), or the real target boxes (DETR's ``num_boxes``).
LOC_NORMALIZERS = ("matched", "targets")

ClassLoss = str | Callable[[Tensor, Tensor], Tensor]

_IOU_LOSSES = {"iou": iou_loss, "giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}
# Guards a classification normaliser that is exactly zero (every prediction ignored or of
# weight zero, so the numerator is zero too) without changing any positive value.
_TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class _Options:
    cls_loss: ClassLoss
    loc_losses: dict[str, float]
    background: str
    no_object_weight: float
    hard_negative_ratio: float | None
    reduction: str
    box_format: str
    l1_format: str
    distributed: bool
    cls_weight: float
    focal_alpha: float | None
    focal_gamma: float
    smooth_l1_beta: float
    loc_normalizer: str = "matched"


def _check_weight(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def _options(
    cls_loss: ClassLoss,
    loc_losses: Mapping[str, float] | None,
    background: str,
    no_object_weight: float,
    hard_negative_ratio: float | None,
    reduction: str,
    box_format: str,
    l1_format: str | None,
    distributed: bool,
    cls_weight: float,
    focal_alpha: float | None,
    focal_gamma: float,
    smooth_l1_beta: float,
    loc_normalizer: str = "matched",
) -> _Options:
    """Validate the settings shared by :func:`detection_loss` and :class:`DetectionLoss`."""
    check_choice(background, "background", BACKGROUNDS)
    if isinstance(cls_loss, str):
        check_choice(cls_loss, "cls_loss", CLS_LOSSES)
    elif not callable(cls_loss):
        raise TypeError(
            f"cls_loss must be one of {CLS_LOSSES} or a callable, got {type(cls_loss).__name__}"
        )
    softmax_like = not isinstance(cls_loss, str) or cls_loss in ("ce", "negative_prob")
    if softmax_like and background == "none":
        shown = repr(cls_loss) if isinstance(cls_loss, str) else "a callable"
        raise ValueError(
            f"background: cls_loss={shown} trains unmatched predictions on a background "
            "logit, so background must be 'first' or 'last', got 'none'"
        )
    if loc_losses is None:
        loc_losses = DEFAULT_LOC_LOSSES
    if not isinstance(loc_losses, Mapping):
        raise TypeError(
            f"loc_losses must be a dict of name -> weight, got {type(loc_losses).__name__}"
        )
    checked: dict[str, float] = {}
    for name, weight in loc_losses.items():
        check_choice(name, "loc_losses key", LOC_LOSSES)
        checked[name] = _check_weight(weight, f"loc_losses[{name!r}]")
    no_object_weight = _check_weight(no_object_weight, "no_object_weight")
    cls_weight = _check_weight(cls_weight, "cls_weight")
    if hard_negative_ratio is not None:
        ratio = _check_weight(hard_negative_ratio, "hard_negative_ratio")
        if ratio == 0:
            raise ValueError(
                f"hard_negative_ratio must be > 0 (or None to disable mining), got {ratio}"
            )
        hard_negative_ratio = ratio
    check_reduction(reduction)
    check_choice(box_format, "box_format", BOX_FORMATS)
    if l1_format is None:
        l1_format = box_format
    check_choice(l1_format, "l1_format", BOX_FORMATS)
    if focal_alpha is not None and not 0 <= focal_alpha <= 1:
        raise ValueError(f"focal_alpha must be in [0, 1] or None, got {focal_alpha}")
    focal_gamma = _check_weight(focal_gamma, "focal_gamma")
    smooth_l1_beta = _check_weight(smooth_l1_beta, "smooth_l1_beta")
    check_choice(loc_normalizer, "loc_normalizer", LOC_NORMALIZERS)
    return _Options(
        cls_loss=cls_loss,
        loc_losses=checked,
        background=background,
        no_object_weight=no_object_weight,
        hard_negative_ratio=hard_negative_ratio,
        reduction=reduction,
        box_format=box_format,
        l1_format=l1_format,
        distributed=bool(distributed),
        cls_weight=cls_weight,
        focal_alpha=focal_alpha,
        focal_gamma=focal_gamma,
        smooth_l1_beta=smooth_l1_beta,
        loc_normalizer=loc_normalizer,
    )


def _read_outputs(outputs: object, name: str) -> tuple[Tensor, Tensor]:
    if not isinstance(outputs, Mapping):
        raise TypeError(
            f"{name} must be a dict with 'pred_logits' and 'pred_boxes', "
            f"got {type(outputs).__name__}"
        )
    missing = [k for k in ("pred_logits", "pred_boxes") if k not in outputs]
    if missing:
        raise ValueError(f"{name}: missing keys {missing}; got {sorted(outputs)}")
    logits = check_shape(
        outputs["pred_logits"], f"{name}['pred_logits']", ndim=3, expected="[B, M, C]"
    )
    boxes = check_shape(
        outputs["pred_boxes"], f"{name}['pred_boxes']", ndim=3, last=4, expected="[B, M, 4]"
    )
    if logits.shape[:2] != boxes.shape[:2]:
        raise ValueError(
            f"{name}['pred_boxes']: expected shape [{logits.shape[0]}, {logits.shape[1]}, 4] "
            f"(pred_logits' [B, M]), got {shape_str(boxes.shape)}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"{name}['pred_logits'] must be a floating tensor, got {logits.dtype}")
    return logits, boxes


def _padded_targets(targets: object, batch_size: int, device: torch.device) -> dict[str, Tensor]:
    """``boxes [B, N, 4]``, ``labels [B, N]``, ``mask [B, N]`` from either target form.

    Per-image dicts may carry other keys (``image_id``, ``orig_size`` ...); only the boxes
    and labels are padded, so those need not share the objects' first dimension.
    """
    if isinstance(targets, Sequence) and not isinstance(targets, (str, Tensor)):
        targets = [
            {k: t[k] for k in ("boxes", "labels") if k in t} if isinstance(t, Mapping) else t
            for t in targets
        ]
    padded = box_targets(targets, batch_size, device)  # type: ignore[arg-type]
    mask = padded["mask"]
    if padded["labels"].shape != mask.shape:
        raise ValueError(
            f"targets['labels']: expected shape {shape_str(mask.shape)} ([B, N]), "
            f"got {shape_str(padded['labels'].shape)}"
        )
    # Padded slots may hold anything (NaN boxes, label -1): zero them so that gathers
    # and plan-weighted sums, which multiply them by 0, stay finite.
    return {
        "boxes": torch.where(mask.unsqueeze(-1), padded["boxes"], 0),
        "labels": torch.where(mask, padded["labels"], 0),
        "mask": mask,
    }


def _num_classes(logits: Tensor, background: str) -> int:
    k = logits.shape[-1]
    if background == "none":
        if k < 1:
            raise ValueError(
                f"outputs['pred_logits']: expected at least 1 class logit, got shape "
                f"{shape_str(logits.shape)}"
            )
        return k
    if k < 2:
        raise ValueError(
            f"outputs['pred_logits']: expected C + 1 >= 2 logits (classes and the background, "
            f"background={background!r}), got shape {shape_str(logits.shape)}"
        )
    return k - 1


def _class_weight_vector(
    class_weights: Tensor | Sequence[float] | None, num_classes: int, like: Tensor, validate: bool
) -> Tensor | None:
    if class_weights is None:
        return None
    w = torch.as_tensor(class_weights)
    if w.ndim != 1 or w.shape[0] != num_classes:
        raise ValueError(
            f"class_weights: expected shape [{num_classes}] (one weight per foreground class, "
            f"the background's is no_object_weight), got {shape_str(w.shape)}"
        )
    w = w.to(device=like.device, dtype=like.dtype)
    if validate:
        _check_class_weight_values(w)
    return w


def _check_class_weight_values(w: Tensor) -> None:
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise ValueError(f"class_weights: expected finite weights >= 0, got {w.tolist()}")


def _check_matching(matching: object, b: int, m: int, n: int, name: str) -> Matching:
    if not isinstance(matching, Matching):
        raise TypeError(f"{name} must be a Matching, got {type(matching).__name__}")
    if tuple(matching.pred_to_target.shape) != (b, m):
        raise ValueError(
            f"{name}.pred_to_target: expected shape [{b}, {m}] (the predictions' [B, M]), "
            f"got {shape_str(matching.pred_to_target.shape)}"
        )
    if tuple(matching.target_mask.shape) != (b, n):
        raise ValueError(
            f"{name}.target_mask: expected shape [{b}, {n}] (the padded targets' [B, N]), "
            f"got {shape_str(matching.target_mask.shape)}"
        )
    return matching


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


def _sigmoid_elementwise(x: Tensor, target: Tensor, opts: _Options) -> Tensor:
    if opts.cls_loss == "focal":
        return sigmoid_focal_loss(x, target, opts.focal_alpha, opts.focal_gamma, validate=False)
    return F.binary_cross_entropy_with_logits(x, target, reduction="none")


def _class_rows(x: Tensor, class_index: Tensor, num_classes: int, opts: _Options) -> Tensor:
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


def _class_table(x: Tensor, num_classes: int, opts: _Options) -> Tensor:
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


def _loc_values(name: str, pred: Tensor, target: Tensor, opts: _Options) -> Tensor:
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
    opts: _Options,
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
    opts: _Options,
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
    opts: _Options,
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


def _validate(
    padded: dict[str, Tensor], matching: Matching, num_classes: int, box_format: str
) -> None:
    labels, mask = padded["labels"], padded["mask"]
    # Inverted boxes are data the losses take (finite values); a warning says they are
    # probably boxes of another format.
    check_box_values(padded["boxes"], "targets['boxes']", box_format, mask, inverted="warn")
    bad = mask & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(
            f"targets['labels']: expected class indices in [0, {num_classes - 1}] "
            f"(C = {num_classes} foreground classes), got {labels[bad].tolist()}"
        )
    plan = matching.plan
    if plan is not None and not bool(((plan >= 0) & torch.isfinite(plan)).all()):
        raise ValueError("matching.plan: expected finite entries >= 0, got negative or non-finite")


def _layer_terms(
    outputs: Mapping[str, Tensor],
    padded: dict[str, Tensor],
    matching: Matching,
    class_weights: Tensor | Sequence[float] | None,
    opts: _Options,
    validate: bool | None,
    name: str,
    suffix: str,
) -> dict[str, Tensor]:
    logits, pred_boxes = _read_outputs(outputs, name)
    b, m, _ = logits.shape
    num_classes = _num_classes(logits, opts.background)
    _check_matching(matching, b, m, padded["mask"].shape[1], "matching" + suffix)
    validate = should_validate(validate, logits)
    if validate:
        _validate(padded, matching, num_classes, opts.box_format)
    dtype = compute_dtype(logits, pred_boxes)
    x = logits.to(dtype)
    weights = _class_weight_vector(class_weights, num_classes, x, validate)
    pred_boxes = pred_boxes.to(dtype)
    if matching.plan is None:
        sums = _hard_sums(x, pred_boxes, padded, matching, num_classes, weights, opts)
    else:
        sums = _soft_sums(x, pred_boxes, padded, matching.plan, num_classes, weights, opts)

    terms: dict[str, Tensor] = {}
    if opts.reduction == "none":
        terms["cls" + suffix] = opts.cls_weight * sums.cls
        for key, w in opts.loc_losses.items():
            terms[key + suffix] = w * sums.loc[key]
        return terms
    cls, loc = sums.cls.sum(), {k: v.sum() for k, v in sums.loc.items()}
    if opts.reduction == "mean":
        # One all-reduce for both counts; the clamps follow the normalisation rules.
        loc_count = (
            sums.matched.sum()
            if opts.loc_normalizer == "matched"
            else padded["mask"].sum().to(sums.matched.dtype)
        )
        norms = normalizer(
            torch.stack((sums.cls_norm.sum(), loc_count)), opts.distributed, minimum=0.0
        ).to(dtype)
        counts_only_positives = opts.background == "none" or opts.hard_negative_ratio is not None
        # norms are global counts / W: clamping them at minimum / W clamps the global
        # counts at minimum, which keeps the ranks' mean equal to the whole-batch loss.
        world = world_size() if opts.distributed else 1
        cls_min = 1.0 if counts_only_positives else _TINY
        cls = cls / norms[0].clamp(min=cls_min / world)
        loc = {k: v / norms[1].clamp(min=1.0 / world) for k, v in loc.items()}
    terms["cls" + suffix] = opts.cls_weight * cls
    for key, w in opts.loc_losses.items():
        terms[key + suffix] = w * loc[key]
    return terms


def detection_loss(
    outputs: Mapping[str, Tensor],
    targets: Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor],
    matching: Matching,
    *,
    cls_loss: ClassLoss = "ce",
    loc_losses: Mapping[str, float] | None = None,
    background: str = "last",
    no_object_weight: float = 0.1,
    class_weights: Tensor | Sequence[float] | None = None,
    hard_negative_ratio: float | None = None,
    reduction: str = "mean",
    box_format: str = "xyxy",
    l1_format: str | None = None,
    distributed: bool = True,
    cls_weight: float = 1.0,
    focal_alpha: float | None = 0.25,
    focal_gamma: float = 2.0,
    smooth_l1_beta: float = 1.0,
    loc_normalizer: str = "matched",
    aux_matchings: Sequence[Matching] | None = None,
    return_terms: bool = False,
    validate: bool | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Classification and localisation losses weighted by a precomputed matching.

    Args:
        outputs: ``{"pred_logits": Tensor[B, M, K], "pred_boxes": Tensor[B, M, 4]}``, and
            optionally ``"aux_outputs"``: a list of such dicts (decoder layers). ``K`` is
            ``C + 1`` with ``background="first"`` or ``"last"`` and ``C`` with ``"none"``.
        targets: a list of ``{"boxes": [n_i, 4], "labels": int64[n_i]}`` dicts (other keys
            are ignored) or the padded form ``{"boxes": [B, N, 4], "labels": [B, N],
            "mask": bool[B, N]}``. Labels are ``0..C-1`` whatever the background position.
        matching: the :class:`~detloss.match.Matching` of ``outputs`` to ``targets``.
            Without a plan, ``pred_to_target`` decides: ``>= 0`` matched, ``-1``
            background, ``-2`` in no term. With a ``plan [B, M, N + 1]`` the plan alone
            weights the terms (``pred_to_target`` is not read).
        cls_loss: ``"ce"`` softmax cross-entropy; ``"negative_prob"`` minus the softmax
            probability of the class; ``"focal"`` sigmoid focal loss and ``"bce"`` sigmoid
            binary cross-entropy, both summed over the ``K`` logits of a prediction with a
            one-hot target (all zeros for the background when ``background="none"``; a
            background logit, if any, is trained as one more sigmoid class); or a callable
            ``f(logits [P, K], index int64[P]) -> [P]`` giving each row's loss for the
            logit column ``index`` (e.g. ``partial(F.cross_entropy, reduction="none")``).
            Softmax losses and callables need a background logit.
        loc_losses: ``{name: weight}`` over ``"l1"``, ``"smooth_l1"`` (both summed over
            the 4 coordinates, compared in ``l1_format``), ``"iou"``, ``"giou"``,
            ``"diou"``, ``"ciou"`` (``1 - score``, in ``box_format``). None means
            ``{"l1": 5.0, "giou": 2.0}`` (DETR); ``{}`` keeps only the classification.
        background: the background logit's position: ``"last"`` (index C, DETR),
            ``"first"`` (index 0, SSD) or ``"none"`` (no background logit).
        no_object_weight: weight of the classification term of a background prediction
            (DETR's ``eos_coef``; 1.0 for SSD, RetinaNet and Deformable DETR).
        class_weights: ``[C]`` weights of the foreground classes (default all 1).
        hard_negative_ratio: when set, only the ``ceil(ratio * P)`` hardest background
            predictions of each image (highest classification loss; ``P`` the image's
            matched count) enter the classification term; see the notes.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-image sums, ``Tensor[B]``).
        box_format: format of ``pred_boxes`` and the target boxes.
        l1_format: format in which ``"l1"`` and ``"smooth_l1"`` compare boxes (default
            ``box_format``; DETR regresses normalised ``cxcywh``).
        distributed: normalise by counts summed over ranks (divided by the world size)
            when a process group is initialised.
        cls_weight: weight of the classification term.
        focal_alpha, focal_gamma: the focal loss's alpha (None: no weighting) and gamma.
        smooth_l1_beta: the Smooth-L1 transition point (0 gives L1).
        loc_normalizer: with ``reduction="mean"``, divide the localisation sums by the
            ``"matched"`` predictions (default) or by the real ``"targets"`` boxes (DETR's
            ``num_boxes``; the two differ when an image has more objects than queries).
        aux_matchings: matchings of ``outputs["aux_outputs"]``, one per layer; their terms
            are added with the suffix ``_aux{i}``. Without them the auxiliary outputs are
            not read.
        return_terms: also return ``{name: weighted term}`` (``"cls"``, each loc name),
            whose sum is the total.
        validate: check label ranges, the plan's entries and that the predictions and
            the real target boxes hold no NaN or inf, and warn once about inverted target
            boxes (``x2 < x1`` in ``xyxy``, negative sizes otherwise: boxes of another
            format?); one device synchronisation each;
            None checks on the CPU only.

    Returns:
        The weighted total, a scalar (``Tensor[B]`` with ``reduction="none"``), in float64
        when the logits or boxes are float64 and in float32 otherwise (half inputs
        included); with ``return_terms`` the pair ``(total, terms)``.

    Notes:
        With ``reduction="mean"`` the classification sum is divided by the summed class
        weight of the predictions it covers, as torch's weighted cross-entropy: matched
        predictions count their class weight, background ones ``no_object_weight``,
        ignored ones nothing. With ``background="none"`` or hard negative mining only the
        matched predictions count, and the divisor is clamped at 1. Each localisation sum
        is divided by the number of matched predictions (plan mass on real targets),
        clamped at 1 (``loc_normalizer="targets"``: by the number of real target boxes,
        clamped at 1). ``"sum"`` divides by nothing.

    Anchors only serve the matcher: ``pred_boxes`` are absolute boxes, not offsets.
    """
    opts = _options(
        cls_loss,
        loc_losses,
        background,
        no_object_weight,
        hard_negative_ratio,
        reduction,
        box_format,
        l1_format,
        distributed,
        cls_weight,
        focal_alpha,
        focal_gamma,
        smooth_l1_beta,
        loc_normalizer,
    )
    logits, _ = _read_outputs(outputs, "outputs")
    padded = _padded_targets(targets, logits.shape[0], logits.device)
    if should_validate(validate, logits):
        keys = ("pred_logits", "pred_boxes")
        layers = [(outputs, "outputs")]
        if aux_matchings is not None:
            aux = _aux_outputs(outputs)
            layers += [(a, f"outputs['aux_outputs'][{i}]") for i, a in enumerate(aux)]
        check_finite(
            *(e for layer, name in layers for e in named_entries(layer, keys, name)),
            ("targets['boxes']", padded["boxes"], padded["mask"]),
        )
    terms = _layer_terms(outputs, padded, matching, class_weights, opts, validate, "outputs", "")
    if aux_matchings is not None:
        aux = _aux_outputs(outputs)
        if isinstance(aux_matchings, Matching) or len(aux_matchings) != len(aux):
            got = "a Matching" if isinstance(aux_matchings, Matching) else len(aux_matchings)
            raise ValueError(
                f"aux_matchings: expected a list of {len(aux)} matchings (one per "
                f"outputs['aux_outputs'] entry), got {got}"
            )
        for i, (layer, layer_matching) in enumerate(zip(aux, aux_matchings, strict=True)):
            terms.update(
                _layer_terms(
                    layer,
                    padded,
                    layer_matching,
                    class_weights,
                    opts,
                    validate,
                    f"outputs['aux_outputs'][{i}]",
                    f"_aux{i}",
                )
            )
    total = torch.stack(list(terms.values())).sum(0)
    return (total, terms) if return_terms else total


def _matcher_box_format(matcher: object, box_format: str | None) -> str:
    """The loss's box format: ``box_format``, else the matcher's, else ``"xyxy"``."""
    matcher_format = getattr(matcher, "box_format", None)
    if box_format is None:
        return matcher_format if isinstance(matcher_format, str) else "xyxy"
    check_choice(box_format, "box_format", BOX_FORMATS)
    if isinstance(matcher_format, str) and matcher_format != box_format:
        raise ValueError(
            f"box_format: the loss reads boxes as {box_format!r} but its matcher "
            f"({type(matcher).__name__}) reads them as {matcher_format!r}; give both the "
            "same box_format, or leave the loss's unset to inherit the matcher's"
        )
    return box_format


def _aux_outputs(outputs: Mapping[str, object]) -> list[Mapping[str, Tensor]]:
    aux = outputs.get("aux_outputs")
    if aux is None:
        return []
    if isinstance(aux, Mapping) or not isinstance(aux, Sequence):
        raise TypeError(f"outputs['aux_outputs'] must be a list of dicts, got {type(aux).__name__}")
    return list(aux)


class DetectionLoss(nn.Module):
    """Match, then :func:`detection_loss`: DETR's set criterion and uotod's DetectionLoss.

    Args:
        matcher: any callable ``matcher(outputs, targets, anchors=None) -> Matching``
            (:class:`~detloss.match.HungarianMatcher`, :class:`~detloss.match.MaxIoUMatcher`,
            a Sinkhorn matcher ...). It receives the padded targets ``{"boxes", "labels",
            "mask"}`` and, only when given, ``anchors``.
        The other arguments are those of :func:`detection_loss`; ``loc_losses=None``
        means ``{"l1": 5.0, "giou": 2.0}``.

    ``box_format`` defaults to the matcher's own ``box_format`` (``"xyxy"`` for a matcher
    without one); one that disagrees with the matcher's is a ``ValueError``, since both
    read the same target boxes.

    Called as ``loss(outputs, targets, anchors=None, return_terms=False)``. Each entry of
    ``outputs["aux_outputs"]`` is matched again and its terms added under ``{name}_aux{i}``.
    ``anchors`` (``[M, 4]`` or ``[B, M, 4]``) are passed to the matcher only.
    """

    def __init__(
        self,
        matcher: Callable[..., Matching],
        cls_loss: ClassLoss = "ce",
        loc_losses: Mapping[str, float] | None = None,
        background: str = "last",
        no_object_weight: float = 0.1,
        class_weights: Tensor | Sequence[float] | None = None,
        hard_negative_ratio: float | None = None,
        reduction: str = "mean",
        box_format: str | None = None,
        l1_format: str | None = None,
        distributed: bool = True,
        *,
        cls_weight: float = 1.0,
        focal_alpha: float | None = 0.25,
        focal_gamma: float = 2.0,
        smooth_l1_beta: float = 1.0,
        loc_normalizer: str = "matched",
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        if not callable(matcher):
            raise TypeError(f"matcher must be callable, got {type(matcher).__name__}")
        box_format = _matcher_box_format(matcher, box_format)
        opts = _options(
            cls_loss,
            loc_losses,
            background,
            no_object_weight,
            hard_negative_ratio,
            reduction,
            box_format,
            l1_format,
            distributed,
            cls_weight,
            focal_alpha,
            focal_gamma,
            smooth_l1_beta,
            loc_normalizer,
        )
        self.matcher = matcher
        self.cls_loss = cls_loss
        self.loc_losses = dict(opts.loc_losses)
        self.background = background
        self.no_object_weight = opts.no_object_weight
        self.hard_negative_ratio = opts.hard_negative_ratio
        self.reduction = reduction
        self.box_format = box_format
        self.l1_format = l1_format
        self.distributed = opts.distributed
        self.cls_weight = opts.cls_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = opts.focal_gamma
        self.smooth_l1_beta = opts.smooth_l1_beta
        self.loc_normalizer = loc_normalizer
        self.validate = validate
        weights = None
        if class_weights is not None:
            weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if weights.ndim != 1:
                raise ValueError(
                    f"class_weights: expected shape [C], got {shape_str(weights.shape)}"
                )
            _check_class_weight_values(weights)
        # A buffer follows the module's .to(device) and is saved in its state dict.
        self.register_buffer("class_weights", weights)

    def match(
        self,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        anchors: Tensor | None = None,
    ) -> Matching:
        """Call the matcher (without gradient) and check that it returned a Matching."""
        with torch.no_grad():
            if anchors is None:
                matching = self.matcher(outputs, targets)
            else:
                matching = self.matcher(outputs, targets, anchors=anchors)
        if not isinstance(matching, Matching):
            raise TypeError(f"matcher must return a Matching, got {type(matching).__name__}")
        return matching

    def forward(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor],
        anchors: Tensor | None = None,
        return_terms: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        logits, _ = _read_outputs(outputs, "outputs")
        padded = _padded_targets(targets, logits.shape[0], logits.device)
        matching = self.match(outputs, padded, anchors)
        aux = _aux_outputs(outputs)
        aux_matchings = [self.match(layer, padded, anchors) for layer in aux] if aux else None
        return detection_loss(
            outputs,
            padded,
            matching,
            cls_loss=self.cls_loss,
            loc_losses=self.loc_losses,
            background=self.background,
            no_object_weight=self.no_object_weight,
            class_weights=self.class_weights,
            hard_negative_ratio=self.hard_negative_ratio,
            reduction=self.reduction,
            box_format=self.box_format,
            l1_format=self.l1_format,
            distributed=self.distributed,
            cls_weight=self.cls_weight,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
            smooth_l1_beta=self.smooth_l1_beta,
            loc_normalizer=self.loc_normalizer,
            aux_matchings=aux_matchings,
            return_terms=return_terms,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        cls = self.cls_loss if isinstance(self.cls_loss, str) else "<callable>"
        return (
            f"cls_loss={cls!r}, loc_losses={self.loc_losses}, background={self.background!r}, "
            f"no_object_weight={self.no_object_weight}, "
            f"hard_negative_ratio={self.hard_negative_ratio}, reduction={self.reduction!r}, "
            f"box_format={self.box_format!r}"
        )
