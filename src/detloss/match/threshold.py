"""The IoU-threshold rule of SSD, Faster R-CNN and RetinaNet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._api import keyword_only_masks
from .._checks import check_finite, should_validate
from .._kernels import fast_path_enabled
from ._common import prepare_cost
from .matching import BACKGROUND, IGNORED, Matching

__all__ = ["max_iou"]


#: Entries of a contested target's preference list read at once when it looks for its
#: best open prediction (a target skips the entries others have taken in the meantime).
_WINDOW = 32
#: Elements of the ``[targets, M]`` columns computed at once when the preference lists
#: of contested targets are built (about 16 MB of float32): bounds the memory of the
#: forcing.
_COLUMN_BLOCK = 1 << 22

ColumnFn = Callable[[Tensor, Tensor], Tensor]


def _subset(keep: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The rows of ``tensors`` where ``keep``."""
    return tuple(tensor[keep] for tensor in tensors)


def _contest(pred: Tensor, value: Tensor, target: Tensor, size: int) -> Tensor:
    """``bool[K]``: which of ``K`` claims (on flat prediction ids ``pred < size``) win: the
    highest ``value`` per prediction, then the lowest ``target``."""
    top = value.new_full((size,), float("-inf")).scatter_reduce_(0, pred, value, "amax")
    is_top = value == top[pred]
    beyond = torch.iinfo(torch.int64).max
    candidate = torch.where(is_top, target, beyond)
    winner = target.new_full((size,), beyond).scatter_reduce_(0, pred, candidate, "amin")
    return is_top & (winner[pred] == target)


@dataclass
class _Preferences:
    """The preference lists of ``R`` contested targets, built once.

    A target's list holds, in its order of preference (value descending, then
    prediction index), the open predictions it values above its *floor*: the lowest
    value among its open predictions when the list was built. Predictions only close
    afterwards, so once a target has walked past its whole list, every prediction still
    open for it is worth exactly its floor: it is *flat* and wants the lowest open index.

    ``pred [L]`` (flat ids ``image * M + prediction``, int32 when they fit: the lists
    are the forcing's largest memory), ``value [L]``: the lists,
    one after the other; ``start / end int64[R]``: each target's segment; ``floor [R]``
    (the lowest float or below: no open prediction at all).
    """

    pred: Tensor
    value: Tensor
    start: Tensor
    end: Tensor
    floor: Tensor


def _preferences(
    column: ColumnFn, image: Tensor, target: Tensor, closed: Tensor, m: int
) -> _Preferences:
    """Build the preference lists of the targets ``(image, target)``, computing each
    one's column once, in blocks of ``_COLUMN_BLOCK`` elements. Only the entries above
    the floor are sorted (:func:`_list_order`), not whole columns: a box overlaps a few
    hundred of SSD's 8,732 priors."""
    preds, values, counts, floors = [], [], [], []
    ids = torch.int32 if closed.numel() < 2**31 else torch.int64
    per_block = max(1, _COLUMN_BLOCK // max(m, 1))
    for first in range(0, image.shape[0], per_block):
        img, tgt = image[first : first + per_block], target[first : first + per_block]
        col = column(img, tgt)
        neg_inf = torch.finfo(col.dtype).min
        is_open = ~closed.view(-1, m).index_select(0, img)
        floor = col.masked_fill(~is_open, float("inf")).amin(dim=1)
        # No open prediction at all: the floor says there is nothing to claim.
        floor = torch.where(is_open.any(dim=1), floor, neg_inf)
        keep = is_open & (col > floor[:, None]) & (col > neg_inf)
        row, pred = keep.nonzero(as_tuple=True)  # row-major: predictions ascending
        value = col[row, pred]
        order = _list_order(row, value)
        preds.append((pred[order] + img[row[order]] * m).to(ids))
        values.append(value[order])
        counts.append(torch.bincount(row, minlength=img.shape[0]))
        floors.append(floor)
    count = torch.cat(counts)
    end = count.cumsum(0)
    return _Preferences(torch.cat(preds), torch.cat(values), end - count, end, torch.cat(floors))


def _list_order(row: Tensor, value: Tensor) -> Tensor:
    """The permutation sorting entries (given by row, then prediction) by row, then
    value descending, equal values keeping their order (the lower prediction first).

    For float32 values one stable sort of an int64 key does it: the row in the high 32
    bits, in the low 32 the value's bits reversed into a descending order (the bits of
    an IEEE float, negatives' magnitude bits flipped, order like the floats); other
    dtypes take two stable sorts.
    """
    if value.dtype != torch.float32:
        order = value.argsort(descending=True, stable=True)
        return order[row[order].argsort(stable=True)]
    bits = (value + 0.0).view(torch.int32).to(torch.int64)  # + 0.0: -0.0 sorts as 0.0
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # now ordered like the floats
    key = (row << 32) | ((1 << 31) - 1 - bits)
    return key.argsort(stable=True)


def _fill_in_order(
    forced: Tensor, image: Tensor, target: Tensor, value: Tensor, open_preds: Tensor, m: int
) -> Tensor:
    """The rounds of images whose only contested targets are flat, in one step: each
    round the best remaining of them (highest value, then lowest index) takes the lowest
    open prediction, so the k-th best takes the k-th open prediction."""
    order = target.argsort(stable=True)
    order = order[(-value[order]).argsort(stable=True)]
    order = order[image[order].argsort(stable=True)]
    image, target = image[order], target[order]
    count = torch.bincount(image, minlength=open_preds.shape[0])
    rank = torch.arange(image.shape[0], device=image.device) - (count.cumsum(0) - count)[image]
    open_count = open_preds.sum(dim=1)
    open_start = open_count.cumsum(0) - open_count
    open_index = open_preds.nonzero()[:, 1]
    gets = rank < open_count[image]
    image, target, rank = image[gets], target[gets], rank[gets]
    pred = image * m + open_index[open_start[image] + rank]
    return forced.index_put_((pred,), target)


def _force_claims(
    best_value: Tensor,
    best_pred: Tensor,
    target_mask: Tensor,
    pred_mask: Tensor | None,
    m: int,
    column: ColumnFn,
) -> Tensor:
    """Give every real target a prediction of its own; ``int64[B, M]``, -1 where none is
    forced.

    Rule: each unresolved target claims its best still-free prediction (the first index
    on equal values). When several claim the same prediction, the target with the highest
    value for it wins (ties: the lower target index); the losers claim their next best
    free prediction in the next round. Values at or below the lowest float are never
    claimed.

    ``best_value [B, N]`` / ``best_pred int64[B, N]`` are each target's best real
    prediction (the first round's claims); ``column(images int64[R], targets int64[R])``
    returns those targets' values ``[R, M]`` as a new tensor. It is asked once for each
    target that loses the first round, in blocks of bounded size.

    Cost: the first round is one scatter over ``[B, N]`` and settles every image whose
    targets have distinct best predictions. Each target that loses it gets its column
    once, kept as a sorted preference list of the open predictions above its lowest
    value (:class:`_Preferences`); a round reads each contested target's next open entry,
    so all rounds together cost the lists' total length plus a few operations per
    contested target and round, never ``M x N``. A target past its list values all its
    open predictions alike and always wants the lowest free index: such targets are kept
    apart, only the best of them per image enters a round, and once an image has no other
    contested target they receive the free predictions in one step, in the order the
    rounds would give them.
    """
    b, n = best_value.shape
    device = best_value.device
    size = b * m
    # One extra slot at the end absorbs the writes of claims that did not win.
    forced = torch.full((size + 1,), -1, dtype=torch.int64, device=device)
    if m == 0 or n == 0:
        return forced[:size].view(b, m)
    neg_inf = torch.finfo(best_value.dtype).min
    # Round one on [B, N]: no host synchronisation before the conflict check.
    claiming = target_mask & (best_value > neg_inf)
    image_ids = torch.arange(b, device=device)
    pred = (best_pred + image_ids[:, None] * m).reshape(-1)
    slots = torch.arange(n, device=device).repeat(b)
    score = best_value.masked_fill(~claiming, float("-inf")).reshape(-1)
    won = _contest(pred, score, slots, size) & claiming.reshape(-1)
    forced.scatter_(0, torch.where(won, pred, size), slots)
    lost = claiming.reshape(-1) & ~won
    if not bool(lost.any()):
        return forced[:size].view(b, m)

    # closed: taken by a winner, or padded (never claimable).
    closed = forced[:size] >= 0
    if pred_mask is not None:
        closed |= ~pred_mask.reshape(-1)
    where = lost.nonzero().squeeze(1)
    images, targets = where // n, where % n
    prefs = _preferences(column, images, targets, closed, m)
    position = prefs.start.clone()  # each contested target's next entry
    row = torch.arange(images.shape[0], device=device)  # the contested, non-flat targets
    flat_image = flat_target = images[:0]
    flat_value = prefs.floor[:0]
    while True:
        found = _advance(prefs, row, position, closed)
        # Past its list, a target is flat (or out, with no open prediction left).
        if not bool(found.all()):
            past = row[~found]
            flat = prefs.floor[past] > neg_inf
            flat_image = torch.cat((flat_image, images[past[flat]]))
            flat_target = torch.cat((flat_target, targets[past[flat]]))
            flat_value = torch.cat((flat_value, prefs.floor[past[flat]]))
            row = row[found]
        image, target = images[row], targets[row]
        claim_pred = prefs.pred[position[row]].long()
        claim_value = prefs.value[position[row]]
        claim_image, claim_target = image, target

        if flat_image.numel():
            open_per_image = (~closed).view(b, m)
            has_open = open_per_image.any(dim=1)
            keep = has_open[flat_image]  # no open prediction left: they stop claiming
            flat_image, flat_target, flat_value = _subset(keep, flat_image, flat_target, flat_value)
            contested = torch.zeros(b, dtype=torch.bool, device=device)
            contested[image] = True
            alone = ~contested[flat_image]
            if bool(alone.any()):
                group = _subset(alone, flat_image, flat_target, flat_value)
                forced = _fill_in_order(forced, *group, open_per_image, m)
                closed = closed | (forced[:size] >= 0)
                flat_image, flat_target, flat_value = _subset(
                    ~alone, flat_image, flat_target, flat_value
                )
            if flat_image.numel():
                # Per image, the best flat target claims the lowest open prediction.
                lowest_open = open_per_image.to(torch.uint8).argmax(dim=1)
                best = _contest(flat_image, flat_value, flat_target, b)
                head_image, head_target, head_value = _subset(
                    best, flat_image, flat_target, flat_value
                )
                claim_pred = torch.cat((claim_pred, head_image * m + lowest_open[head_image]))
                claim_value = torch.cat((claim_value, head_value))
                claim_image = torch.cat((claim_image, head_image))
                claim_target = torch.cat((claim_target, head_target))
        if claim_pred.numel() == 0:
            break
        won = _contest(claim_pred, claim_value, claim_target, size)
        forced[claim_pred[won]] = claim_target[won]
        closed[claim_pred[won]] = True
        # Remove the winners from both groups.
        resolved = torch.zeros(b * n, dtype=torch.bool, device=device)
        resolved[claim_image[won] * n + claim_target[won]] = True
        row = row[~resolved[image * n + target]]
        if flat_image.numel():
            stay = ~resolved[flat_image * n + flat_target]
            flat_image, flat_target, flat_value = _subset(stay, flat_image, flat_target, flat_value)
        if row.numel() == 0 and flat_image.numel() == 0:
            break
    return forced[:size].view(b, m)


def _advance(prefs: _Preferences, row: Tensor, position: Tensor, closed: Tensor) -> Tensor:
    """Move each target of ``row`` (indices into ``prefs``) to the first entry of its list
    at or after ``position[row]`` whose prediction is open, updating ``position`` in
    place; ``bool[len(row)]``: whether it found one (else it is past its list).

    Entries are read ``_WINDOW`` at a time, so a target skips each taken entry of its list
    once over all rounds: the forcing costs the lists' total length, not a column per
    lost claim.
    """
    found = torch.zeros(row.shape[0], dtype=torch.bool, device=row.device)
    if prefs.pred.numel() == 0:
        return found
    offsets = torch.arange(_WINDOW, device=row.device)
    pending = torch.arange(row.shape[0], device=row.device)
    while pending.numel():
        rows = row[pending]
        at, end = position[rows], prefs.end[rows]
        index = at[:, None] + offsets
        entry = prefs.pred[index.clamp(max=prefs.pred.shape[0] - 1)]
        usable = (index < end[:, None]) & ~closed[entry]
        has = usable.any(dim=1)
        first = usable.to(torch.uint8).argmax(dim=1)
        position[rows] = torch.where(has, at + first, torch.minimum(at + _WINDOW, end))
        found[pending] = has
        pending = pending[~has & (at + _WINDOW < end)]
    return found


def _force_best(iou: Tensor, target_mask: Tensor, pred_mask: Tensor | None) -> Tensor:
    """Give every real target of ``iou [B, M, N]`` a prediction of its own; ``int64[B, M]``,
    -1 where none is forced. The rule and its cost: :func:`_force_claims`.

    ``pred_mask`` None means every prediction is real.
    """
    b, m, n = iou.shape
    if m == 0 or n == 0:
        return torch.full((b, m), -1, dtype=torch.int64, device=iou.device)
    # Padded targets never claim, so only padded predictions need hiding; the matrix is
    # copied only when some exist.
    neg_inf = torch.finfo(iou.dtype).min
    free = iou if pred_mask is None else iou.masked_fill(~pred_mask[:, :, None], neg_inf)
    best_value, best_pred = free.max(dim=1)  # [B, N]

    def column(image: Tensor, target: Tensor) -> Tensor:
        return free[image, :, target]

    return _force_claims(best_value, best_pred, target_mask, pred_mask, m, column)


def _check_thresholds(pos_threshold: float, neg_threshold: float | None) -> float:
    """``neg_threshold`` resolved (None: ``pos_threshold``) after checking the band."""
    if neg_threshold is None:
        neg_threshold = pos_threshold
    if not 0.0 <= neg_threshold <= pos_threshold:
        raise ValueError(
            "neg_threshold: expected 0 <= neg_threshold <= pos_threshold "
            f"(pos_threshold={pos_threshold}), got {neg_threshold}"
        )
    return neg_threshold


@keyword_only_masks(4, ("target_mask",))
def max_iou(
    iou: Tensor,
    pos_threshold: float = 0.5,
    neg_threshold: float | None = None,
    force_best: bool = True,
    *,
    target_mask: Tensor | None = None,
    pred_mask: Tensor | None = None,
    allow_low_quality: bool = False,
    validate: bool | None = None,
) -> Matching:
    """Match each prediction (anchor, prior) to its highest-IoU target by thresholds.

    Args:
        iou: ``Tensor[B, M, N]`` (or ``[M, N]``) IoU of predictions by targets.
        pos_threshold: a prediction whose best IoU is ``>= pos_threshold`` is positive.
        neg_threshold: a prediction whose best IoU is ``< neg_threshold`` is background;
            in between it is ignored (``-2``). Defaults to ``pos_threshold`` (no band).
        force_best: every real target also gets the prediction of its highest IoU, as in
            SSD, whatever that IoU. When two targets share the same best prediction the
            higher-IoU target keeps it and the other takes its best free prediction, so
            no target is lost while ``M >= N``.
        target_mask, pred_mask: ``bool[B, N]`` / ``bool[B, M]`` real entries (keyword
            only; ``target_mask`` given by position, as the first signature allowed,
            still works for one release with a FutureWarning). Padded predictions are
            ignored (``-2``).
        allow_low_quality: detectron2's rule: every prediction that attains a target's
            highest IoU (ties included, IoU > 0) becomes positive, matched to its own
            best target.
        validate: a NaN or inf IoU between a real prediction and a real target is a
            ValueError (one host synchronisation); None (default) checks on the CPU only.

    Returns:
        A :class:`Matching` (several predictions may share a target).

    With boxes rather than an IoU matrix and priors shared by every image (SSD,
    RetinaNet), :func:`~detloss.match.threshold_boxes.max_iou_boxes` gives the same
    matching without building the matrix.

    Shape:
        - iou: ``[B, M, N]`` or ``[M, N]``; target_mask: ``[B, N]``; pred_mask: ``[B, M]``
        - output: ``pred_to_target [B, M]``

    Example:
        >>> iou = torch.tensor([[0.7, 0.1], [0.6, 0.2], [0.1, 0.3]])
        >>> max_iou(iou, pos_threshold=0.5).pred_to_target
        tensor([[0, 0, 1]])
        >>> max_iou(iou, pos_threshold=0.5, neg_threshold=0.3, force_best=False).pred_to_target
        tensor([[ 0,  0, -2]])
    """
    neg_threshold = _check_thresholds(pos_threshold, neg_threshold)
    all_preds = pred_mask is None
    iou, target_mask, pred_mask, _ = prepare_cost(iou, target_mask, pred_mask, name="iou")
    if should_validate(validate, iou):
        check_finite(("iou", iou, pred_mask[:, :, None] & target_mask[:, None, :]))
    if not iou.is_floating_point():
        iou = iou.float()
    b, m, n = iou.shape
    if n == 0:
        p2t = torch.full((b, m), BACKGROUND, dtype=torch.int64, device=iou.device)
        return Matching(p2t.masked_fill(~pred_mask, IGNORED), target_mask)
    masked = iou.masked_fill(~target_mask[:, None, :], -1.0)
    if allow_low_quality or not fast_path_enabled("max_iou_sparse", iou.device):
        best_iou, best_target = masked.max(dim=2)  # [B, M]
    else:
        # An index-free maximum, then the best target of the positive predictions only
        # (a host synchronisation, free on the CPU): much cheaper than max with indices.
        best_iou = masked.amax(dim=2)
        image, pred = (best_iou >= pos_threshold).nonzero(as_tuple=True)
        best_target = torch.zeros_like(best_iou, dtype=torch.int64)
        best_target[image, pred] = masked[image, pred].argmax(dim=1)
    p2t = torch.where(best_iou >= pos_threshold, best_target, IGNORED)
    p2t = torch.where(best_iou < neg_threshold, BACKGROUND, p2t)
    if allow_low_quality:
        per_target = masked.masked_fill(~pred_mask[:, :, None], -1.0).amax(dim=1, keepdim=True)
        attains = (masked == per_target) & (per_target > 0) & target_mask[:, None, :]
        p2t = torch.where(attains.any(dim=2), best_target, p2t)
    if force_best:
        forced = _force_best(iou, target_mask, None if all_preds else pred_mask)
        p2t = torch.where(forced >= 0, forced, p2t)
    return Matching(p2t.masked_fill(~pred_mask, IGNORED), target_mask)
