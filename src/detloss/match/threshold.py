"""The IoU-threshold rule of SSD, Faster R-CNN and RetinaNet."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_finite, should_validate
from ._common import prepare_cost
from .matching import BACKGROUND, IGNORED, Matching

__all__ = ["max_iou"]


#: Candidates kept per contested target: its best free predictions, in order. A target
#: recomputes its column only when all of them have been taken by others.
_WINDOW = 32
#: Elements of the ``[targets, M]`` columns computed at once when contested targets
#: refresh their candidates (about 16 MB of float32): bounds the memory of the forcing.
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


def _candidates(
    column: ColumnFn, image: Tensor, target: Tensor, closed: Tensor, m: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Each target's best ``_WINDOW`` open predictions, in its order of preference (value
    descending, then prediction index): ``(pred int64[R, W]`` flat ids, ``value [R, W]``,
    entries that cannot be claimed at the lowest float or below) and ``flat bool[R]``:
    all its open predictions have the same value, so it always wants the lowest open
    index."""
    preds, values, flats = [], [], []
    width = min(_WINDOW, m)
    per_block = max(1, _COLUMN_BLOCK // m)
    for start in range(0, image.shape[0], per_block):
        img, tgt = image[start : start + per_block], target[start : start + per_block]
        col = column(img, tgt)
        neg_inf = torch.finfo(col.dtype).min
        col.masked_fill_(closed.view(-1, m).index_select(0, img), neg_inf)
        # One more than the window tells whether equal values straddle its end; topk does
        # not say which of those it kept, so those rows take the exact, slower selection.
        top, index = col.topk(min(width + 1, m), dim=1)
        straddle = (top[:, width - 1] == top[:, width]).nonzero().squeeze(1) if width < m else None
        top, index = top[:, :width], index[:, :width]
        if straddle is not None and straddle.numel():
            part = col.index_select(0, straddle)
            cut = top[straddle, width - 1 :]
            above = part > cut
            tied = part == cut
            room = width - above.sum(dim=1, keepdim=True)
            keep = above | (tied & (tied.cumsum(dim=1) <= room))
            index[straddle] = keep.nonzero()[:, 1].view(-1, width)
        # Equal values in preference order: the lower index first.
        index = index.sort(dim=1).values
        value, order = col.gather(1, index).sort(dim=1, descending=True, stable=True)
        index = index.gather(1, order)
        flat = (value[:, 0] == value[:, -1]) & (value[:, 0] > neg_inf)
        if width < m and bool(flat.any()):
            rows = flat.nonzero().squeeze(1)
            part = col.index_select(0, rows)
            lowest = part.masked_fill_(part <= neg_inf, float("inf")).amin(dim=1)
            flat[rows] = value[rows, 0] == lowest
        preds.append(index + img[:, None] * m)
        values.append(value)
        flats.append(flat)
    return torch.cat(preds), torch.cat(values), torch.cat(flats)


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
    returns those targets' values ``[R, M]`` as a new tensor. It is only asked for the targets that lose
    a round, in blocks of bounded size.

    Cost: the first round is one scatter over ``[B, N]`` and settles every image whose
    targets have distinct best predictions. After it, each contested target keeps a short
    window of its best free predictions and recomputes its column only when all of them
    have gone, so a round costs the number of contested targets, not ``M x N``. A target
    whose free predictions all have one value (far from all of them) always wants the
    lowest free index: such targets are kept apart, only the best of them per image
    enters a round, and once an image has no other contested target they receive the
    free predictions in one step, in the order the rounds would give them.
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
    image, target = where // n, where % n
    window, value, is_flat = _candidates(column, image, target, closed, m)
    flat_image = flat_target = image[:0]
    flat_value = value[:0, 0]
    while True:
        # Targets whose whole column is one value join the flat group; targets with no
        # open prediction left stop claiming.
        if bool(is_flat.any()):
            flat_image = torch.cat((flat_image, image[is_flat]))
            flat_target = torch.cat((flat_target, target[is_flat]))
            flat_value = torch.cat((flat_value, value[is_flat, 0]))
        alive = ~is_flat & (value[:, 0] > neg_inf)
        image, target, window, value = _subset(alive, image, target, window, value)
        # Each contested target's claim: the first open entry of its window.
        usable = ~closed[window] & (value > neg_inf)
        empty = ~usable.any(dim=1)
        if bool(empty.any()):
            # Its whole window went: recompute its column against the open predictions.
            refresh = empty.nonzero().squeeze(1)
            new_window, new_value, new_flat = _candidates(
                column, image[refresh], target[refresh], closed, m
            )
            window[refresh], value[refresh] = new_window, new_value
            is_flat = torch.zeros_like(empty)
            is_flat[refresh] = new_flat
            if bool(new_flat.any()) or bool((new_value[:, 0] <= neg_inf).any()):
                continue  # regroup before claiming
            usable = ~closed[window] & (value > neg_inf)
        first = usable.to(torch.uint8).argmax(dim=1, keepdim=True)
        claim_pred = window.gather(1, first).squeeze(1)
        claim_value = value.gather(1, first).squeeze(1)
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
        stay = ~resolved[image * n + target]
        image, target, window, value = _subset(stay, image, target, window, value)
        if flat_image.numel():
            stay = ~resolved[flat_image * n + flat_target]
            flat_image, flat_target, flat_value = _subset(stay, flat_image, flat_target, flat_value)
        is_flat = torch.zeros(image.shape[0], dtype=torch.bool, device=device)
        if image.numel() == 0 and flat_image.numel() == 0:
            break
    return forced[:size].view(b, m)


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


def max_iou(
    iou: Tensor,
    pos_threshold: float = 0.5,
    neg_threshold: float | None = None,
    force_best: bool = True,
    allow_low_quality: bool = False,
    target_mask: Tensor | None = None,
    pred_mask: Tensor | None = None,
    *,
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
        allow_low_quality: detectron2's rule: every prediction that attains a target's
            highest IoU (ties included, IoU > 0) becomes positive, matched to its own
            best target.
        target_mask, pred_mask: ``bool[B, N]`` / ``bool[B, M]`` real entries. Padded
            predictions are ignored (``-2``).
        validate: a NaN or inf IoU between a real prediction and a real target is a
            ValueError (one host synchronisation); None (default) checks on the CPU only.

    Returns:
        A :class:`Matching` (several predictions may share a target).
    """
    if neg_threshold is None:
        neg_threshold = pos_threshold
    if not 0.0 <= neg_threshold <= pos_threshold:
        raise ValueError(
            "neg_threshold: expected 0 <= neg_threshold <= pos_threshold "
            f"(pos_threshold={pos_threshold}), got {neg_threshold}"
        )
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
    best_iou, best_target = masked.max(dim=2)  # [B, M]
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
