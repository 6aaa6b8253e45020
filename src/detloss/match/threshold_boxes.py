"""Max-IoU matching from boxes: :func:`~detloss.match.max_iou`'s rule for a set of priors
(anchors) shared by every image, without storing the ``[B, P, N]`` IoU matrix."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_finite, check_shape, should_validate
from .._kernels import fast_path_enabled
from ._common import _mask
from .matching import BACKGROUND, IGNORED, Matching
from .threshold import _COLUMN_BLOCK, _check_thresholds, _force_claims

__all__ = ["max_iou_boxes"]


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


def _assign(
    priors: Tensor,
    boxes: Tensor,
    mask: Tensor,
    pos_threshold: float,
    neg_threshold: float,
    force_best: bool,
    sparse: bool,
) -> Tensor:
    """``int64[B, P]``: the :func:`~detloss.match.max_iou` assignment of ``priors [P, 4]``
    (``xyxy``, positive areas) to ``boxes [B, N, 4]`` (``xyxy``, real where ``mask
    [B, N]``).

    The intersection is separable: its width depends only on a prior's x-interval and its
    height on its y-interval. The IoU is built as whole rows of a ``[P, N * B]`` matrix,
    in blocks of priors (cache-sized on the CPU) that reduce to each prior's best IoU and
    each target's best prior without storing the whole matrix.

    ``sparse`` selects the strategies that suit the CPU, where a host synchronisation
    costs nothing: priors share few distinct intervals (372 of each for SSD300), so the
    overlaps are computed per distinct interval and gathered; and which target attains a
    prior's best IoU is only worked out for the priors at or above ``pos_threshold`` (an
    index-free maximum is much cheaper).

    Forcing each target onto its best prior is :func:`max_iou`'s rule, run by the same
    engine: its first round is one scatter of each target's best prior (no ``N x N``
    comparison); only targets that lose a shared best prior have their IoU column
    computed, once, in bounded blocks, so the whole IoU matrix is never stored.
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
    x_ends, x_of = _intervals(priors[:, 0], priors[:, 2], sparse)
    y_ends, y_of = _intervals(priors[:, 1], priors[:, 3], sparse)
    widths = _overlap(x_ends, x1, x2)  # [Ux, N * B]
    heights = _overlap(y_ends, y1, y2)  # [Uy, N * B]
    area_p = ((priors[:, 2] - priors[:, 0]) * (priors[:, 3] - priors[:, 1]))[:, None]
    area_g = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    total = batch * num_targets
    # An IoU of 0 would count a padded slot at a threshold of 0: give them -1 then.
    padded = ~mask.t().reshape(1, -1) if neg_threshold <= 0 else None

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
        # Which target attains a prior's best IoU, for the priors at or above pos_threshold, in
        # blocks of priors so that the [priors, N] entries stay within _COLUMN_BLOCK.
        prior, image = (best_iou >= pos_threshold).nonzero(as_tuple=True)
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
        assigned = torch.where(best_iou >= pos_threshold, best_target, BACKGROUND).t()  # [B, P]

    if neg_threshold < pos_threshold:
        band = (best_iou >= neg_threshold) & (best_iou < pos_threshold)
        assigned = assigned.masked_fill(band.t(), IGNORED)
    if not force_best:
        return assigned

    # Every real target is forced onto its best prior (max_iou's rule for targets that
    # share one); only the targets that lose a claim have their IoU column computed.
    # Target-major copies of the tables, made on first use: a column's overlaps are then
    # contiguous rows, whatever the number of targets (gathering columns of a table wider
    # than the caches costs a cache miss per entry).
    by_target: list[Tensor] = []

    def column(image: Tensor, slot: Tensor) -> Tensor:
        """``[R, P]``: whole IoU columns, by the operations of ``iou_block``."""
        if not by_target:
            by_target.extend((widths.t().contiguous(), heights.t().contiguous()))
        columns = slot * batch + image
        inter = by_target[0].index_select(0, columns).index_select(1, x_of)
        inter.mul_(by_target[1].index_select(0, columns).index_select(1, y_of))
        iou = inter.div_((area_p.t() + area_g.t().index_select(0, columns)) - inter)
        if padded is not None:
            iou.masked_fill_(padded.t().index_select(0, columns), -1.0)
        return iou

    forced = _force_claims(
        prior_value.view(num_targets, batch).t(),
        prior_index.view(num_targets, batch).t(),
        mask,
        None,
        num_priors,
        column,
    )
    return torch.where(forced >= 0, forced, assigned)


def max_iou_boxes(
    priors: Tensor,
    boxes: Tensor,
    *,
    pos_threshold: float = 0.5,
    neg_threshold: float | None = None,
    force_best: bool = True,
    target_mask: Tensor | None = None,
    validate: bool | None = None,
) -> Matching:
    """:func:`~detloss.match.max_iou` of the IoU between ``priors`` and each image's
    ``boxes``, without storing that matrix: the matching of ``max_iou(box_iou(priors,
    boxes), ...)`` (up to the IoU's last bit of rounding) in far less time and memory.

    The intersection of two axis-aligned boxes is separable (its width depends on their
    x-intervals, its height on their y-intervals), so the IoU is computed in cache-sized
    blocks of priors that reduce at once to each prior's best IoU and each target's best
    prior. On the CPU (the fast path ``"max_iou_sparse"``, which
    :func:`detloss._kernels.reference_path` turns off) the overlaps are computed once
    per distinct prior interval (SSD300's 8,732 priors have 372 of each) and a prior's
    best target is only identified for the priors at or above ``pos_threshold``. Every
    target is then forced onto a prior of its own by :func:`max_iou`'s engine.

    Args:
        priors: ``Tensor[P, 4]`` ``xyxy`` predictions (priors, anchors) shared by every
            image, with positive width and height.
        boxes: ``Tensor[B, N, 4]`` (or ``[N, 4]``) ``xyxy`` target boxes.
        pos_threshold, neg_threshold, force_best: as in :func:`~detloss.match.max_iou`.
        target_mask: ``bool[B, N]`` real targets (keyword only).
        validate: a NaN or inf coordinate among the priors or the real boxes is a
            ValueError (one host synchronisation); None (default) checks on the CPU only.

    Returns:
        A :class:`~detloss.match.Matching`: ``pred_to_target`` is ``-1`` (background),
        ``-2`` (between the thresholds) or the prior's target.

    Shape:
        - priors: ``[P, 4]``; boxes: ``[B, N, 4]``; target_mask: ``[B, N]``
        - output: ``pred_to_target [B, P]``

    Example:
        >>> priors = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
        >>> boxes = torch.tensor([[[0.0, 0.0, 0.4, 0.5], [0.9, 0.9, 1.0, 1.0]]])
        >>> max_iou_boxes(priors, boxes).pred_to_target
        tensor([[0, 1]])
    """
    check_shape(priors, "priors", ndim=2, last=4, expected="[P, 4]")
    check_shape(boxes, "boxes", ndim=(2, 3), last=4, expected="[B, N, 4] or [N, 4]")
    if boxes.ndim == 2:
        boxes = boxes.unsqueeze(0)
        target_mask = None if target_mask is None else target_mask.reshape(1, -1)
    batch, num_targets = boxes.shape[:2]
    target_mask = _mask(target_mask, "target_mask", (batch, num_targets), boxes.device)
    neg_threshold = _check_thresholds(pos_threshold, neg_threshold)
    if should_validate(validate, boxes):
        check_finite(("priors", priors), ("boxes", boxes, target_mask))
    dtype = torch.promote_types(priors.dtype, boxes.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    with torch.no_grad():
        assigned = _assign(
            priors.detach().to(device=boxes.device, dtype=dtype),
            boxes.detach().to(dtype),
            target_mask,
            pos_threshold,
            neg_threshold,
            force_best,
            fast_path_enabled("max_iou_sparse", boxes.device),
        )
    return Matching(assigned, target_mask)
