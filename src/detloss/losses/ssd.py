"""The SSD MultiBox loss: Smooth-L1 on matched offsets plus softmax cross-entropy with
hard negative mining, both divided by the number of positive priors.

Conventions: ``loc [B, P, 4]`` are offsets (see :mod:`detloss.anchors`), ``conf
[B, P, C]`` are logits whose index 0 is the background, priors are ``[P, 4]`` normalised
``cxcywh`` and target boxes normalised ``xyxy`` with labels ``0..C-2`` (label ``l`` is
logit ``l + 1``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .._api import renamed
from .._checks import (
    check_finite,
    check_reduction,
    check_shape,
    compute_dtype,
    output_dtype,
    shape_str,
    should_validate,
)
from .._kernels import fast_path_enabled
from ..anchors import check_ssd_inputs, check_variances, encode_boxes
from ..boxes import box_convert
from ..distributed import normalizer
from ..match.matching import BACKGROUND
from ..match.targets import box_targets
from ..match.threshold_boxes import max_iou_boxes
from ._mining import hard_negatives
from ._module import FunctionLoss
from .regression import smooth_l1_loss

__all__ = ["MultiBoxLoss", "multibox_loss"]

Targets = Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor]


def _check_settings(
    pos_threshold: float,
    hard_negative_ratio: float,
    loc_weight: float,
    min_negatives: int,
    reduction: str,
) -> None:
    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not number(pos_threshold) or not 0 <= pos_threshold <= 1:
        raise ValueError(f"pos_threshold must be in [0, 1], got {pos_threshold!r}")
    if not number(hard_negative_ratio) or not 0 <= hard_negative_ratio < math.inf:
        raise ValueError(
            f"hard_negative_ratio must be a finite number >= 0, got {hard_negative_ratio!r}"
        )
    if not number(loc_weight) or not loc_weight >= 0:
        raise ValueError(f"loc_weight must be a number >= 0, got {loc_weight!r}")
    if isinstance(min_negatives, bool) or not isinstance(min_negatives, int) or min_negatives < 0:
        raise ValueError(f"min_negatives must be an int >= 0, got {min_negatives!r}")
    check_reduction(reduction)


#: Elements of ``conf`` exponentiated at once by :func:`_background_loss` on the CPU:
#: about 512 KB of float32, so the chunk stays in cache.
_CPU_BLOCK = 1 << 17


class _Matched(NamedTuple):
    """A batch after matching: what both ways of computing the summed terms read."""

    loc: Tensor  # [B, P, 4] predicted offsets
    conf: Tensor  # [B, P, C] logits
    priors: Tensor  # [P, 4] cxcywh, in the compute dtype
    gt: Tensor  # [B, N, 4] target boxes, in the compute dtype
    labels: Tensor  # [B, N]
    assigned: Tensor  # int64 [B, P]: each prior's target, or BACKGROUND / ignored
    variances: tuple[float, float]
    hard_negative_ratio: float
    min_negatives: int
    per_image: bool  # one sum per image (reduction="none") instead of one in all


def _dense_terms(x: _Matched) -> tuple[Tensor, Tensor]:
    """Summed ``(L_loc, L_conf)`` computed over every prior and masked: scalars, or
    ``Tensor[B]`` sums per image with ``per_image``."""
    dtype = x.priors.dtype
    batch, num_priors = x.assigned.shape
    positive = x.assigned >= 0
    with torch.no_grad():
        index = x.assigned.clamp(min=0)
        if x.gt.shape[1] > 0:
            matched = x.gt.gather(1, index[..., None].expand(-1, -1, 4))
            target_class = x.labels.to(torch.int64).gather(1, index) + 1
        else:  # no target slot at all: nothing is matched
            matched = x.gt.new_zeros((batch, num_priors, 4))
            target_class = torch.zeros_like(index)
        target_class = target_class.masked_fill(~positive, 0)
        loc_target = encode_boxes(matched, x.priors, x.variances)
    per_prior = smooth_l1_loss(
        x.loc.to(dtype), loc_target, beta=1.0, reduction="none", validate=False
    ).sum(dim=-1)
    loc_sum = _total(torch.where(positive, per_prior, 0.0), x.per_image)
    log_prob = x.conf.to(dtype).log_softmax(dim=-1)
    ce = -log_prob.gather(-1, target_class[..., None]).squeeze(-1)
    with torch.no_grad():
        negative = hard_negatives(
            -log_prob[..., 0].detach(),
            x.assigned == BACKGROUND,
            positive.sum(dim=1),
            x.hard_negative_ratio,
            x.min_negatives,
        )
    conf_sum = _total(torch.where(positive | negative, ce, 0.0), x.per_image)
    return loc_sum, conf_sum


def _total(values: Tensor, per_image: bool) -> Tensor:
    """The sum of ``values [B, P]``: a scalar, or one per image."""
    return values.sum(dim=1) if per_image else values.sum()


def _background_loss(conf: Tensor) -> Tensor:
    """``logsumexp(conf, -1) - conf[..., 0]``, each prior's cross-entropy as background,
    the key that ranks negatives.

    Computed as ``log(sum(exp(conf))) - conf[..., 0]``: an exponential and a short sum
    instead of a log-softmax, whose full-size output (every class of every prior) costs
    twice as much. Rows where the unshifted sum overflows or loses precision to underflow
    (logits beyond about +-80 in float32) are redone with the log-softmax.
    """
    rows = conf.reshape(-1, conf.shape[-1])
    total = rows.new_empty(rows.shape[0])
    # In cache-sized chunks through one buffer: a full-size exponential would be a fresh
    # allocation of every logit's size, whose page faults cost more than the arithmetic.
    step = max(1, _CPU_BLOCK // rows.shape[1])
    buffer = rows.new_empty((min(step, rows.shape[0]), rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        chunk = rows[start : start + step]
        exp = torch.exp(chunk, out=buffer[: chunk.shape[0]])
        torch.sum(exp, dim=1, out=total[start : start + step])
    total = total.view(conf.shape[:-1])
    key = total.log().sub_(conf[..., 0])
    finfo = torch.finfo(conf.dtype)
    unsafe = ~((total > finfo.tiny / finfo.eps) & (total <= finfo.max))
    if bool(unsafe.any()):  # the CPU path: a host read costs nothing here
        key[unsafe] = -conf[unsafe].log_softmax(dim=-1)[:, 0]
    return key


def _sparse_terms(x: _Matched) -> tuple[Tensor, Tensor]:
    """Summed ``(L_loc, L_conf)`` computed on the positive and mined priors only:
    scalars, or ``Tensor[B]`` sums per image with ``per_image``."""
    dtype = x.priors.dtype
    positive = x.assigned >= 0
    with torch.no_grad():
        negative = hard_negatives(
            _background_loss(x.conf.detach().to(dtype)),
            x.assigned == BACKGROUND,
            positive.sum(dim=1),
            x.hard_negative_ratio,
            x.min_negatives,
            host_selection=True,
        )
        image, prior = positive.nonzero(as_tuple=True)
        target = x.assigned[image, prior]
        loc_target = encode_boxes(x.gt[image, target], x.priors[prior], x.variances)
        chosen_image, chosen_prior = (positive | negative).nonzero(as_tuple=True)
        chosen_target = x.assigned[chosen_image, chosen_prior]
        if x.labels.shape[1] > 0:
            target_class = torch.where(
                chosen_target >= 0,
                x.labels.to(torch.int64)[chosen_image, chosen_target.clamp(min=0)] + 1,
                0,
            )
        else:  # no target slot at all: every chosen prior is a negative
            target_class = torch.zeros_like(chosen_target)
    # Flat index_select: its backward is an index_add, much cheaper than the accumulating
    # index_put that advanced indexing differentiates to.
    num_priors = x.loc.shape[1]
    loc_rows = x.loc.reshape(-1, 4).index_select(0, image * num_priors + prior)
    loc_terms = smooth_l1_loss(
        loc_rows.to(dtype), loc_target, beta=1.0, reduction="none", validate=False
    )
    conf_rows = x.conf.reshape(-1, x.conf.shape[-1]).index_select(
        0, chosen_image * num_priors + chosen_prior
    )
    log_prob = conf_rows.to(dtype).log_softmax(dim=-1)  # [S, C]
    conf_terms = -log_prob.gather(1, target_class[:, None]).squeeze(1)
    if not x.per_image:
        return loc_terms.sum(), conf_terms.sum()
    batch = x.loc.shape[0]
    loc_sum = loc_terms.new_zeros(batch).index_add(0, image, loc_terms.sum(dim=1))
    return loc_sum, conf_terms.new_zeros(batch).index_add(0, chosen_image, conf_terms)


def _check_target_scale(boxes: Tensor, prior_boxes: Tensor) -> None:
    """Warn when the real target boxes ``[K, 4]`` reach far beyond the priors' range
    (``xyxy`` ``[P, 4]``): pixel boxes given with normalised priors. A warning, not an
    error: any finite box is data the loss takes."""
    if boxes.numel() == 0 or prior_boxes.numel() == 0:
        return
    low, high = prior_boxes.min(), prior_boxes.max()
    span = high - low
    if bool((boxes < low - span).any()) or bool((boxes > high + span).any()):
        warnings.warn(
            f"targets['boxes']: coordinates span [{float(boxes.min()):g}, "
            f"{float(boxes.max()):g}], far outside the priors' [{float(low):g}, "
            f"{float(high):g}]; target boxes must be in the priors' units (normalised "
            "xyxy for ssd_priors): divide pixel boxes by the image width and height",
            UserWarning,
            stacklevel=4,
        )


@renamed(overlap_threshold="pos_threshold", neg_pos_ratio="hard_negative_ratio")
def multibox_loss(
    loc: Tensor,
    conf: Tensor,
    priors: Tensor,
    targets: Targets,
    *,
    pos_threshold: float = 0.5,
    hard_negative_ratio: float = 3,
    variances: Sequence[float] = (0.1, 0.2),
    distributed: bool = True,
    loc_weight: float = 1.0,
    min_negatives: int = 0,
    reduction: str = "mean",
    validate: bool | None = None,
    return_terms: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """SSD's MultiBox loss ``(L_conf + loc_weight * L_loc) / N``.

    Matching is :func:`detloss.match.threshold_boxes.max_iou_boxes` (the rule of
    :func:`detloss.match.max_iou` on the IoU of every prior, as ``xyxy``, with every
    ground truth of its image, without storing that matrix): a prior is positive when
    its best IoU is ``>= pos_threshold``, and every ground truth is also forced onto its
    best prior. When two ground truths share the same best prior, the one with the
    higher IoU keeps it and the other takes its best free prior (the original SSD loop
    silently drops one).

    Terms, summed over the batch:

    - ``L_loc``: Smooth-L1 (beta 1) between ``loc`` and the encoded offsets of the matched
      ground truth, over positive priors and the 4 coordinates.
    - ``L_conf``: softmax cross-entropy over positives (target ``label + 1``) and mined
      negatives (target 0). Per image with ``P`` positives, the negatives are the
      ``k = min(ceil(hard_negative_ratio * P), non-positive priors)`` non-positive priors
      with the largest background loss ``logsumexp(conf) - conf[..., 0]`` (equal losses
      in prior order), ``k`` raised to ``min_negatives`` when that is larger. The
      rounding is up, the rule :class:`~detloss.losses.DetectionLoss` mines with too:
      ratio 1.5 with one positive keeps 2 negatives.

    ``N`` is the number of positives in the batch (over all ranks divided by the world size
    when ``distributed`` and a process group is initialised), clamped at 1. Hence an image
    without objects contributes nothing by default (no positives, so no negatives), and a
    batch without any object gives a loss of exactly 0 that stays in the autograd graph,
    with zero gradients. Set ``min_negatives`` to keep learning the background from such
    images. A degenerate ground truth (zero width or height) overlaps nothing but is still
    forced onto a prior; its offsets stay finite (see :func:`detloss.anchors.encode_boxes`).
    Priors must have a positive width and height.

    Args:
        loc: ``Tensor[B, P, 4]`` predicted offsets.
        conf: ``Tensor[B, P, C]`` logits, index 0 = background, ``C >= 2``.
        priors: ``Tensor[P, 4]`` normalised ``cxcywh`` (:func:`detloss.anchors.ssd_priors`).
        targets: a list of ``B`` dicts ``{"boxes": [n_i, 4] xyxy, "labels": int[n_i]}``
            with labels in ``0..C-2``, in the priors' units (normalised), or the padded
            form (``[B, N, ...]`` plus ``mask: bool[B, N]``).
        pos_threshold: IoU at or above which a prior is positive (was
            ``overlap_threshold``).
        hard_negative_ratio: negatives mined per positive, per image (was
            ``neg_pos_ratio``).
        variances: ``(v_xy, v_wh)`` of the offset encoding.
        distributed: normalise by the global positive count (see
            :func:`detloss.distributed.normalizer`).
        loc_weight: weight of ``L_loc`` in the total (the paper's alpha).
        min_negatives: negatives mined per image at least (0 = SSD).
        reduction: ``"mean"`` (default): the sums divided by ``N``; ``"sum"``: the sums;
            ``"none"``: one sum per image, ``Tensor[B]``.
        validate: check the label range and that ``loc``, ``conf``, ``priors`` and the real
            target boxes hold no NaN or inf, and warn when the target boxes reach far
            beyond the priors' range (pixel boxes with normalised priors); one host
            synchronisation. None (default) validates when the inputs are on the CPU.
        return_terms: also return ``{"loc": L_loc / N, "conf": L_conf / N}`` (unweighted,
            reduced like the total).

    Returns:
        The total (a scalar; ``Tensor[B]`` with ``reduction="none"``), or ``(total,
        terms)``. Half-precision inputs are computed in float32 and the results returned
        in their dtype.

    Shape:
        - loc: ``[B, P, 4]``; conf: ``[B, P, C]``; priors: ``[P, 4]``
        - targets: ``B`` dicts of ``boxes [n_i, 4]`` and ``labels [n_i]``
        - output: ``[]`` (``[B]`` with ``reduction="none"``)

    Example:
        >>> from detloss.anchors import ssd_priors
        >>> priors = ssd_priors(64, (4,), (16,), (16,), (32,), ((2,),))  # 64 priors
        >>> loc, conf = torch.zeros(2, 64, 4), torch.zeros(2, 64, 3)
        >>> targets = [
        ...     {"boxes": torch.tensor([[0.1, 0.1, 0.4, 0.5]]), "labels": torch.tensor([1])},
        ...     {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        ... ]
        >>> loss = multibox_loss(loc, conf, priors, targets)
        >>> loss.shape, multibox_loss(loc, conf, priors, targets, reduction="none").shape
        (torch.Size([]), torch.Size([2]))
    """
    check_ssd_inputs(loc, conf, priors)
    _check_settings(pos_threshold, hard_negative_ratio, loc_weight, min_negatives, reduction)
    variances = check_variances(variances)
    batch, _, num_classes = conf.shape
    padded = box_targets(targets, batch, loc.device)
    gt_boxes, labels, mask = padded["boxes"], padded["labels"], padded["mask"]
    dtype = compute_dtype(loc, conf, priors)
    with torch.no_grad():
        prior_boxes = priors.detach().to(dtype)
        prior_xyxy = box_convert(prior_boxes, "cxcywh", "xyxy")
    if should_validate(validate, loc):
        check_finite(
            ("loc", loc), ("conf", conf), ("priors", priors), ("targets['boxes']", gt_boxes, mask)
        )
        real = labels[mask]
        if real.numel() and (bool(real.min() < 0) or bool(real.max() > num_classes - 2)):
            raise ValueError(
                f"targets['labels']: expected values in 0..{num_classes - 2} (C - 2 with "
                f"C = {num_classes} logits, logit 0 the background), "
                f"got values in {int(real.min())}..{int(real.max())}"
            )
        _check_target_scale(gt_boxes[mask].detach(), prior_xyxy)

    with torch.no_grad():
        gt = gt_boxes.detach().to(dtype)
        assigned = max_iou_boxes(
            prior_xyxy, gt, pos_threshold=pos_threshold, target_mask=mask, validate=False
        ).pred_to_target
        num_pos = (assigned >= 0).sum(dim=1)
    # The host-friendly strategies (a linear-time mining and loss terms on the selected
    # priors gathered with ``nonzero``) synchronise, which costs nothing on the CPU;
    # elsewhere everything is dense and masked, in the same arithmetic.
    terms = _sparse_terms if fast_path_enabled("max_iou_sparse", loc.device) else _dense_terms
    loc_sum, conf_sum = terms(
        _Matched(
            loc,
            conf,
            prior_boxes,
            gt,
            labels,
            assigned,
            variances,
            hard_negative_ratio,
            min_negatives,
            per_image=reduction == "none",
        )
    )
    if reduction == "mean":
        n = normalizer(num_pos.sum(), distributed).to(device=loc.device, dtype=dtype)
        loc_sum, conf_sum = loc_sum / n, conf_sum / n
    out = output_dtype(loc, conf)
    total = (conf_sum + loc_weight * loc_sum).to(out)
    return (total, {"loc": loc_sum.to(out), "conf": conf_sum.to(out)}) if return_terms else total


class MultiBoxLoss(
    FunctionLoss,
    function=multibox_loss,
    call_args=("loc", "conf", "priors", "targets", "return_terms"),
    positional=5,
):
    """Module form of :func:`multibox_loss`: the same options, names and defaults, stored
    as attributes of those names (checked here, once); it also checks ``num_classes``.

    Args:
        num_classes: ``C``, the number of logits including the background (VOC: 21).
        pos_threshold, hard_negative_ratio, variances, distributed, loc_weight,
        min_negatives, reduction, validate: see :func:`multibox_loss`.

    Shape:
        - forward: ``loss(loc [B, P, 4], conf [B, P, C], priors [P, 4], targets,
          return_terms=False)``, as :func:`multibox_loss`
        - output: ``[]`` (``[B]`` with ``reduction="none"``)

    Example:
        >>> from detloss.anchors import ssd_priors
        >>> priors = ssd_priors(64, (4,), (16,), (16,), (32,), ((2,),))
        >>> criterion = MultiBoxLoss(3, hard_negative_ratio=3)
        >>> targets = [{"boxes": torch.tensor([[0.1, 0.1, 0.4, 0.5]]), "labels": torch.tensor([1])}]
        >>> criterion(torch.zeros(1, 64, 4), torch.zeros(1, 64, 3), priors, targets).shape
        torch.Size([])
    """

    @renamed(overlap_threshold="pos_threshold", neg_pos_ratio="hard_negative_ratio")
    def __init__(self, num_classes: int, *args: Any, **kwargs: Any) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"num_classes must be an int >= 2 (background + classes), got {num_classes!r}"
            )
        super().__init__(*args, **kwargs)
        _check_settings(
            self.pos_threshold,
            self.hard_negative_ratio,
            self.loc_weight,
            self.min_negatives,
            self.reduction,
        )
        self.num_classes = num_classes
        self.variances = check_variances(self.variances)

    def forward(
        self,
        loc: Tensor,
        conf: Tensor,
        priors: Tensor,
        targets: Targets,
        return_terms: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        check_shape(conf, "conf", ndim=3, expected=f"[B, P, {self.num_classes}]")
        if conf.shape[-1] != self.num_classes:
            raise ValueError(
                f"conf: expected shape [B, P, {self.num_classes}] "
                f"(num_classes={self.num_classes}), got {shape_str(conf.shape)}"
            )
        return super().forward(loc, conf, priors, targets, return_terms)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, {super().extra_repr()}"
