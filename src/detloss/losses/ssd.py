"""The SSD MultiBox loss: Smooth-L1 on matched offsets plus softmax cross-entropy with
hard negative mining, both divided by the number of positive priors.

Conventions: ``loc [B, P, 4]`` are offsets (see :mod:`detloss.anchors`), ``conf
[B, P, C]`` are logits whose index 0 is the background, priors are ``[P, 4]`` normalised
``cxcywh`` and target boxes normalised ``xyxy`` with labels ``0..C-2`` (label ``l`` is
logit ``l + 1``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .._checks import (
    check_finite,
    check_shape,
    compute_dtype,
    output_dtype,
    shape_str,
    should_validate,
)
from .._kernels import fast_path_enabled
from ..anchors import _check_ssd_inputs, _check_variances, encode_boxes
from ..boxes import box_convert
from ..distributed import normalizer
from ..match.matching import BACKGROUND
from ..match.targets import box_targets
from ..match.threshold import _COLUMN_BLOCK, _force_claims
from ._mining import hard_negatives
from .regression import smooth_l1_loss

__all__ = ["MultiBoxLoss", "multibox_loss"]

Targets = Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor]


def _check_settings(
    overlap_threshold: float,
    neg_pos_ratio: float,
    loc_weight: float,
    min_negatives: int,
) -> None:
    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not number(overlap_threshold) or not 0 <= overlap_threshold <= 1:
        raise ValueError(f"overlap_threshold must be in [0, 1], got {overlap_threshold!r}")
    if not number(neg_pos_ratio) or not 0 <= neg_pos_ratio < math.inf:
        raise ValueError(f"neg_pos_ratio must be a finite number >= 0, got {neg_pos_ratio!r}")
    if not number(loc_weight) or not loc_weight >= 0:
        raise ValueError(f"loc_weight must be a number >= 0, got {loc_weight!r}")
    if isinstance(min_negatives, bool) or not isinstance(min_negatives, int) or min_negatives < 0:
        raise ValueError(f"min_negatives must be an int >= 0, got {min_negatives!r}")


def _intervals(lo: Tensor, hi: Tensor, compress: bool) -> tuple[Tensor, Tensor]:
    """The intervals ``[lo, hi]`` (``Tensor[U, 2]``) and each prior's index into them
    (``int64[P]``). With ``compress`` only the distinct ones, found by 1-D uniques (much
    faster than ``unique(dim=0)``); otherwise every prior keeps its own, since a unique's
    data-dependent size would synchronise an accelerator with the host."""
    if not compress:
        return torch.stack((lo, hi), dim=1), torch.arange(lo.shape[0], device=lo.device)
    lo_values, lo_of = torch.unique(lo, return_inverse=True)
    hi_values, hi_of = torch.unique(hi, return_inverse=True)
    pair, pair_of = torch.unique(lo_of * hi_values.shape[0] + hi_of, return_inverse=True)
    ends = torch.stack(
        (lo_values[pair // hi_values.shape[0]], hi_values[pair % hi_values.shape[0]]), dim=1
    )
    return ends, pair_of


#: The distinct prior intervals of the last prior set seen on the CPU path, with a copy of
#: those priors: a model passes the same priors at every step, and comparing them costs far
#: less than the sorts that find their distinct intervals.
_interval_cache: tuple[Tensor, tuple[Tensor, ...]] | None = None


def _prior_intervals(priors: Tensor) -> tuple[Tensor, ...]:
    """``(x_ends, x_of, y_ends, y_of)`` of the distinct x- and y-intervals of ``priors``
    (``xyxy``, on the CPU)."""
    global _interval_cache
    cached = _interval_cache
    if cached is not None:
        seen, intervals = cached
        if seen.dtype == priors.dtype and seen.shape == priors.shape and torch.equal(seen, priors):
            return intervals
    intervals = (
        *_intervals(priors[:, 0], priors[:, 2], True),
        *_intervals(priors[:, 1], priors[:, 3], True),
    )
    _interval_cache = (priors.clone(), intervals)
    return intervals


def _overlap(ends: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Overlap lengths ``[U, T]`` of ``ends [U, 2]`` with the ``[lo, hi]`` of ``T``
    targets, clamped at 0."""
    return torch.minimum(ends[:, 1:], hi).sub_(torch.maximum(ends[:, :1], lo)).clamp_(min=0)


#: Elements of the ``[priors, targets]`` IoU block processed at once on the CPU: about
#: 512 KB of float32, so the block's passes stay in cache. Other devices take one block.
_CPU_BLOCK = 1 << 17
#: Consecutive priors whose best IoU per target is kept on the CPU path (the index of a
#: target's best prior is then recovered from one group).
_GROUP = 16


def _match(priors: Tensor, boxes: Tensor, mask: Tensor, threshold: float, sparse: bool) -> Tensor:
    """``int64[B, P]``: the :func:`~detloss.match.max_iou` assignment (``-1`` background)
    of ``priors [P, 4]`` (``xyxy``, positive areas) to ``boxes [B, N, 4]`` (``xyxy``,
    real where ``mask [B, N]``).

    The intersection is separable: its width depends only on a prior's x-interval and its
    height on its y-interval. The IoU is built as whole rows of a ``[P, N * B]`` matrix,
    in blocks of priors (cache-sized on the CPU) that reduce to each prior's best IoU and
    each target's best prior without storing the whole matrix.

    ``sparse`` selects the strategies that suit the CPU, where a host synchronisation
    costs nothing: SSD priors share few distinct intervals (372 of each for SSD300), so
    the overlaps are computed per distinct interval and gathered; and which target attains
    a prior's best IoU is only worked out for the priors above the threshold (an
    index-free maximum is much cheaper).

    Forcing each target onto its best prior is :func:`max_iou`'s rule, run by the same
    engine: its first round is one scatter of each target's best prior (no ``N x N``
    comparison); only targets that lose a shared best prior have their IoU column
    recomputed, in bounded blocks, so the whole IoU matrix is never stored.
    """
    batch, num_targets = mask.shape
    num_priors = priors.shape[0]
    device = mask.device
    if num_targets == 0 or num_priors == 0:
        return torch.full((batch, num_priors), BACKGROUND, dtype=torch.int64, device=device)
    # Columns are ordered (slot, image) so a prior's targets reduce over a middle axis.
    # Padded slots may hold anything: make them empty boxes, whose IoU is 0 everywhere.
    boxes = torch.where(mask[..., None], boxes, 0.0).transpose(0, 1).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.t()[:, None, :]  # [1, N * B] each
    if sparse:
        x_ends, x_of, y_ends, y_of = _prior_intervals(priors)
    else:
        x_ends, x_of = _intervals(priors[:, 0], priors[:, 2], False)
        y_ends, y_of = _intervals(priors[:, 1], priors[:, 3], False)
    widths = _overlap(x_ends, x1, x2)  # [Ux, N * B]
    heights = _overlap(y_ends, y1, y2)  # [Uy, N * B]
    area_p = ((priors[:, 2] - priors[:, 0]) * (priors[:, 3] - priors[:, 1]))[:, None]
    area_g = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    total = batch * num_targets
    # An IoU of 0 would let a padded slot be matched at threshold 0: give them -1 then.
    padded = ~mask.t().reshape(1, -1) if threshold <= 0 else None

    def iou_block(start: int, stop: int, buffers: Tensor | None = None) -> Tensor:
        """Rows ``start:stop`` of the IoU, written into ``buffers [3, >= rows, T]`` when
        given (reusing memory keeps the CPU blocks in cache and avoids page faults)."""
        if buffers is None:
            buffers = widths.new_empty((3, stop - start, total))
        inter, height, union = buffers[:, : stop - start]
        torch.index_select(widths, 0, x_of[start:stop], out=inter)
        inter.mul_(torch.index_select(heights, 0, y_of[start:stop], out=height))
        torch.add(area_p[start:stop], area_g, out=union).sub_(inter)
        iou = inter.div_(union)
        return iou if padded is None else iou.masked_fill_(padded, -1.0)

    def iou_at(rows: Tensor, columns: Tensor) -> Tensor:
        """Entries at broadcastable ``rows`` and ``columns``, by the same operations as
        ``iou_block``, hence the same values."""

        # Flat index_select: much faster than two-dimensional advanced indexing on a CPU.
        def at(table: Tensor, index: Tensor) -> Tensor:
            return table.reshape(-1).index_select(0, index.reshape(-1)).view(index.shape)

        inter = at(widths, at(x_of, rows) * total + columns)
        inter = inter * at(heights, at(y_of, rows) * total + columns)
        iou = inter / ((at(area_p, rows) + at(area_g, columns)) - inter)
        return iou if padded is None else iou.masked_fill(at(padded, columns), -1.0)

    if device.type == "cpu":
        step = max(_GROUP, _CPU_BLOCK // total // _GROUP * _GROUP)
    else:
        step = num_priors
    buffers = widths.new_empty((3, min(step, num_priors), total))
    best_iou = torch.empty((num_priors, batch), dtype=priors.dtype, device=device)
    if sparse:
        # The best IoU of each target over each group of _GROUP consecutive priors.
        group_best = torch.empty(
            (-(-num_priors // _GROUP), total), dtype=priors.dtype, device=device
        )
    else:
        best_target = torch.empty((num_priors, batch), dtype=torch.int64, device=device)
        prior_value = torch.full((total,), -2.0, dtype=priors.dtype, device=device)
        prior_index = torch.zeros(total, dtype=torch.int64, device=device)
    for start in range(0, num_priors, step):
        stop = min(start + step, num_priors)
        iou = iou_block(start, stop, buffers)
        per_prior = iou.view(-1, num_targets, batch)
        if sparse:
            torch.amax(per_prior, 1, out=best_iou[start:stop])
            whole = (stop - start) // _GROUP * _GROUP
            group = start // _GROUP
            if whole:
                grouped = iou[:whole].view(-1, _GROUP, total)
                torch.amax(grouped, 1, out=group_best[group : group + whole // _GROUP])
            if whole < stop - start:  # the last, partial group
                torch.amax(iou[whole:], 0, out=group_best[group + whole // _GROUP])
        else:
            torch.max(per_prior, 1, out=(best_iou[start:stop], best_target[start:stop]))
            # Each target's first best prior; a later block must be strictly better.
            value, index = iou.max(dim=0)
            better = value > prior_value
            prior_value = torch.where(better, value, prior_value)
            prior_index = torch.where(better, index + start, prior_index)

    if sparse:
        # Index-free maxima above; now the indices, from a few recomputed entries. Each
        # target's best prior lies in the first group that attains its maximum.
        target_best = group_best.amax(dim=0)
        first = (group_best == target_best).to(torch.uint8).argmax(dim=0)
        rows = first[:, None] * _GROUP + torch.arange(_GROUP, device=device)  # [T, _GROUP]
        columns = torch.arange(total, device=device)[:, None]
        values = iou_at(rows.clamp(max=num_priors - 1), columns)
        values = values.masked_fill(rows >= num_priors, -3.0)  # past the last prior
        prior_index = first * _GROUP + values.argmax(dim=1)
        prior_value = target_best
        # Which target attains a prior's best IoU, for the priors above the threshold, in
        # blocks of priors so that the [priors, N] entries stay within _COLUMN_BLOCK.
        prior, image = (best_iou >= threshold).nonzero(as_tuple=True)
        assigned = torch.full((batch, num_priors), BACKGROUND, dtype=torch.int64, device=device)
        # Whole rows by the operations of iou_block (gathers of the separable tables,
        # no [K, N] index arithmetic), then each prior's own image.
        rows_at_once = max(1, _COLUMN_BLOCK // total)
        for start in range(0, prior.shape[0], rows_at_once):
            some_prior = prior[start : start + rows_at_once]
            some_image = image[start : start + rows_at_once]
            inter = widths.index_select(0, x_of[some_prior])
            inter.mul_(heights.index_select(0, y_of[some_prior]))
            iou = inter.div_((area_p[some_prior] + area_g) - inter)
            if padded is not None:
                iou.masked_fill_(padded, -1.0)
            per_image = iou.view(-1, num_targets, batch)
            which = some_image[:, None, None].expand(-1, num_targets, 1)
            best = per_image.gather(2, which).squeeze(2).argmax(dim=1)
            assigned[some_image, some_prior] = best
    else:
        assigned = torch.where(best_iou >= threshold, best_target, BACKGROUND).t()  # [B, P]

    # Every real target is forced onto its best prior (max_iou's rule for targets that
    # share one); only the targets that lose a claim have their IoU column recomputed.
    def column(image: Tensor, slot: Tensor) -> Tensor:
        """``[R, P]``: whole IoU columns, by the operations of ``iou_block``."""
        columns = slot * batch + image
        inter = widths.index_select(1, columns).index_select(0, x_of)
        inter.mul_(heights.index_select(1, columns).index_select(0, y_of))
        iou = inter.div_((area_p + area_g.index_select(1, columns)) - inter)
        if padded is not None:
            iou.masked_fill_(padded.index_select(1, columns), -1.0)
        return iou.t().contiguous()

    forced = _force_claims(
        prior_value.view(num_targets, batch).t(),
        prior_index.view(num_targets, batch).t(),
        mask,
        None,
        num_priors,
        column,
    )
    return torch.where(forced >= 0, forced, assigned)


def _dense_terms(
    loc: Tensor,
    conf: Tensor,
    priors: Tensor,
    gt: Tensor,
    labels: Tensor,
    assigned: Tensor,
    variances: tuple[float, float],
    neg_pos_ratio: float,
    min_negatives: int,
) -> tuple[Tensor, Tensor]:
    """Summed ``(L_loc, L_conf)`` computed over every prior and masked."""
    dtype = priors.dtype
    batch, num_priors = assigned.shape
    positive = assigned >= 0
    with torch.no_grad():
        index = assigned.clamp(min=0)
        if gt.shape[1] > 0:
            matched = gt.gather(1, index[..., None].expand(-1, -1, 4))
            target_class = labels.to(torch.int64).gather(1, index) + 1
        else:  # no target slot at all: nothing is matched
            matched = gt.new_zeros((batch, num_priors, 4))
            target_class = torch.zeros_like(index)
        target_class = target_class.masked_fill(~positive, 0)
        loc_target = encode_boxes(matched, priors, variances)
    per_prior = smooth_l1_loss(loc.to(dtype), loc_target, beta=1.0, validate=False).sum(dim=-1)
    loc_sum = torch.where(positive, per_prior, 0.0).sum()
    log_prob = conf.to(dtype).log_softmax(dim=-1)
    ce = -log_prob.gather(-1, target_class[..., None]).squeeze(-1)
    with torch.no_grad():
        negative = hard_negatives(
            -log_prob[..., 0].detach(),
            assigned == BACKGROUND,
            positive.sum(dim=1),
            neg_pos_ratio,
            min_negatives,
        )
    conf_sum = torch.where(positive | negative, ce, 0.0).sum()
    return loc_sum, conf_sum


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


def _sparse_terms(
    loc: Tensor,
    conf: Tensor,
    priors: Tensor,
    gt: Tensor,
    labels: Tensor,
    assigned: Tensor,
    variances: tuple[float, float],
    neg_pos_ratio: float,
    min_negatives: int,
) -> tuple[Tensor, Tensor]:
    """Summed ``(L_loc, L_conf)`` computed on the positive and mined priors only."""
    dtype = priors.dtype
    positive = assigned >= 0
    with torch.no_grad():
        negative = hard_negatives(
            _background_loss(conf.detach().to(dtype)),
            assigned == BACKGROUND,
            positive.sum(dim=1),
            neg_pos_ratio,
            min_negatives,
            host_selection=True,
        )
        image, prior = positive.nonzero(as_tuple=True)
        target = assigned[image, prior]
        loc_target = encode_boxes(gt[image, target], priors[prior], variances)
        chosen_image, chosen_prior = (positive | negative).nonzero(as_tuple=True)
        chosen_target = assigned[chosen_image, chosen_prior]
        if labels.shape[1] > 0:
            target_class = torch.where(
                chosen_target >= 0,
                labels.to(torch.int64)[chosen_image, chosen_target.clamp(min=0)] + 1,
                0,
            )
        else:  # no target slot at all: every chosen prior is a negative
            target_class = torch.zeros_like(chosen_target)
    # Flat index_select: its backward is an index_add, much cheaper than the accumulating
    # index_put that advanced indexing differentiates to.
    num_priors = loc.shape[1]
    loc_rows = loc.reshape(-1, 4).index_select(0, image * num_priors + prior)
    loc_sum = smooth_l1_loss(loc_rows.to(dtype), loc_target, beta=1.0, validate=False).sum()
    conf_rows = conf.reshape(-1, conf.shape[-1]).index_select(
        0, chosen_image * num_priors + chosen_prior
    )
    log_prob = conf_rows.to(dtype).log_softmax(dim=-1)  # [S, C]
    return loc_sum, -log_prob.gather(1, target_class[:, None]).sum()


def multibox_loss(
    loc: Tensor,
    conf: Tensor,
    priors: Tensor,
    targets: Targets,
    *,
    overlap_threshold: float = 0.5,
    neg_pos_ratio: float = 3,
    variances: Sequence[float] = (0.1, 0.2),
    loc_weight: float = 1.0,
    min_negatives: int = 0,
    distributed: bool = True,
    validate: bool | None = None,
    return_terms: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """SSD's MultiBox loss ``(L_conf + loc_weight * L_loc) / N``.

    Matching: the IoU of every prior (as ``xyxy``) with every ground truth of its image
    goes through :func:`detloss.match.max_iou`: a prior is positive when its best IoU is
    ``>= overlap_threshold``, and every ground truth is also forced onto its best prior.
    When two ground truths share the same best prior, the one with the higher IoU keeps it
    and the other takes its best free prior (the original SSD loop silently drops one).

    Terms, summed over the batch:

    - ``L_loc``: Smooth-L1 (beta 1) between ``loc`` and the encoded offsets of the matched
      ground truth, over positive priors and the 4 coordinates.
    - ``L_conf``: softmax cross-entropy over positives (target ``label + 1``) and mined
      negatives (target 0). Per image, the negatives are the
      ``k = min(ceil(neg_pos_ratio * num_pos), num_priors - num_pos)`` non-positive priors with
      the largest background loss ``logsumexp(conf) - conf[..., 0]`` (raised to
      ``min_negatives`` when that is larger, still capped by the non-positive count).

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
            with labels in ``0..C-2``, or the padded form (``[B, N, ...]`` plus
            ``mask: bool[B, N]``).
        overlap_threshold: IoU at or above which a prior is positive.
        neg_pos_ratio: negatives mined per positive, per image.
        variances: ``(v_xy, v_wh)`` of the offset encoding.
        loc_weight: weight of ``L_loc`` in the total (the paper's alpha).
        min_negatives: negatives mined per image at least (0 = SSD).
        distributed: normalise by the global positive count (see
            :func:`detloss.distributed.normalizer`).
        validate: check the label range and that ``loc``, ``conf``, ``priors`` and the real
            target boxes hold no NaN or inf (one host synchronisation). None (default)
            validates when the inputs are on the CPU.
        return_terms: also return ``{"loc": L_loc / N, "conf": L_conf / N}`` (unweighted).

    Returns:
        The scalar total, or ``(total, terms)``. Half-precision inputs are computed in
        float32 and the results returned in their dtype.
    """
    _check_ssd_inputs(loc, conf, priors)
    _check_settings(overlap_threshold, neg_pos_ratio, loc_weight, min_negatives)
    variances = _check_variances(variances)
    batch, _, num_classes = conf.shape
    padded = box_targets(targets, batch, loc.device)
    gt_boxes, labels, mask = padded["boxes"], padded["labels"], padded["mask"]
    if should_validate(validate, loc):
        check_finite(("loc", loc), ("conf", conf), ("priors", priors))
        real = labels[mask]
        if real.numel() and (bool(real.min() < 0) or bool(real.max() > num_classes - 2)):
            raise ValueError(
                f"targets['labels']: expected values in 0..{num_classes - 2} (C - 2 with "
                f"C = {num_classes} logits, logit 0 the background), "
                f"got values in {int(real.min())}..{int(real.max())}"
            )
        if not bool(torch.isfinite(gt_boxes[mask]).all()):
            raise ValueError("targets['boxes']: expected finite coordinates, got NaN or inf")

    dtype = compute_dtype(loc, conf, priors)
    with torch.no_grad():
        prior_boxes = priors.detach().to(dtype)
        gt = gt_boxes.detach().to(dtype)
        # The host-friendly strategies (distinct prior intervals, an index-free maximum,
        # a top-k mining and loss terms on the selected priors gathered with ``nonzero``)
        # each synchronise, which costs nothing on the CPU; elsewhere everything is dense
        # and masked, in the same arithmetic.
        sparse = fast_path_enabled("max_iou_sparse", loc.device)
        assigned = _match(
            box_convert(prior_boxes, "cxcywh", "xyxy"), gt, mask, overlap_threshold, sparse
        )
        positive = assigned >= 0
        num_pos = positive.sum(dim=1)
    if sparse:
        loc_sum, conf_sum = _sparse_terms(
            loc, conf, prior_boxes, gt, labels, assigned, variances, neg_pos_ratio, min_negatives
        )
    else:
        loc_sum, conf_sum = _dense_terms(
            loc, conf, prior_boxes, gt, labels, assigned, variances, neg_pos_ratio, min_negatives
        )

    n = normalizer(num_pos.sum(), distributed).to(device=loc.device, dtype=dtype)
    loss_loc = loc_sum / n
    loss_conf = conf_sum / n
    out = output_dtype(loc, conf)
    total = (loss_conf + loc_weight * loss_loc).to(out)
    if return_terms:
        return total, {"loc": loss_loc.to(out), "conf": loss_conf.to(out)}
    return total


class MultiBoxLoss(nn.Module):
    """Module form of :func:`multibox_loss`; stores the settings and checks ``num_classes``.

    Called as ``loss(loc [B, P, 4], conf [B, P, C], priors [P, 4], targets,
    return_terms=False)``.

    Args:
        num_classes: ``C``, the number of logits including the background (VOC: 21).
        overlap_threshold, neg_pos_ratio, variances, distributed, loc_weight,
        min_negatives, validate: see :func:`multibox_loss`.
    """

    def __init__(
        self,
        num_classes: int,
        overlap_threshold: float = 0.5,
        neg_pos_ratio: float = 3,
        variances: Sequence[float] = (0.1, 0.2),
        distributed: bool = True,
        loc_weight: float = 1.0,
        *,
        min_negatives: int = 0,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"num_classes must be an int >= 2 (background + classes), got {num_classes!r}"
            )
        _check_settings(overlap_threshold, neg_pos_ratio, loc_weight, min_negatives)
        self.num_classes = num_classes
        self.overlap_threshold = overlap_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.variances = _check_variances(variances)
        self.distributed = distributed
        self.loc_weight = loc_weight
        self.min_negatives = min_negatives
        self.validate = validate

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
        return multibox_loss(
            loc,
            conf,
            priors,
            targets,
            overlap_threshold=self.overlap_threshold,
            neg_pos_ratio=self.neg_pos_ratio,
            variances=self.variances,
            loc_weight=self.loc_weight,
            min_negatives=self.min_negatives,
            distributed=self.distributed,
            validate=self.validate,
            return_terms=return_terms,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, overlap_threshold={self.overlap_threshold}, "
            f"neg_pos_ratio={self.neg_pos_ratio}, variances={self.variances}, "
            f"loc_weight={self.loc_weight}, min_negatives={self.min_negatives}"
        )
