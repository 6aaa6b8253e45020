"""The IoU-threshold rule of SSD, Faster R-CNN and RetinaNet."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_finite, should_validate
from ._common import prepare_cost
from .matching import BACKGROUND, IGNORED, Matching

__all__ = ["max_iou"]


def _claim_round(
    best_value: Tensor, best_pred: Tensor, unresolved: Tensor, m: int
) -> tuple[Tensor, Tensor, Tensor]:
    """One round of claims from each target's best free prediction ``[B, N]``.

    Returns ``(winner int64[B, M]`` (``N`` where nobody won), ``won bool[B, M]``, ``still
    unresolved bool[B, N])``.
    """
    b, n = best_value.shape
    neg_inf = torch.finfo(best_value.dtype).min
    target_ids = torch.arange(n, device=best_value.device).expand(b, n)
    claiming = unresolved & (best_value > neg_inf)
    score = best_value.masked_fill(~claiming, neg_inf)
    top = best_value.new_full((b, m), neg_inf).scatter_reduce_(1, best_pred, score, "amax")
    is_top = claiming & (score == top.gather(1, best_pred))
    candidate = torch.where(is_top, target_ids, n)
    winner = best_pred.new_full((b, m), n).scatter_reduce_(1, best_pred, candidate, "amin")
    gained = claiming & (winner.gather(1, best_pred) == target_ids)
    # A target with no free prediction left stops claiming.
    return winner, winner < n, claiming & ~gained


def _force_best(iou: Tensor, target_mask: Tensor, pred_mask: Tensor | None) -> Tensor:
    """Give every real target a prediction of its own; ``int64[B, M]``, -1 where none is forced.

    Rule: each unresolved target claims its best still-free prediction. When several claim
    the same prediction, the target with the highest IoU for it wins (ties: the lower
    target index); the losers claim their next best free prediction in the next round.
    No target is lost while free predictions remain (SSD's reference loop instead lets a
    later target silently overwrite an earlier one).

    ``pred_mask`` None means every prediction is real. The first round needs only each
    target's best prediction; it settles every image whose targets have distinct best
    predictions, so the per-round ``[M, N]`` bookkeeping is only built for the images left
    with a conflict.
    """
    b, m, n = iou.shape
    forced = torch.full((b, m), -1, dtype=torch.int64, device=iou.device)
    if m == 0 or n == 0:
        return forced
    neg_inf = torch.finfo(iou.dtype).min
    # Padded targets never claim (they start resolved), so only padded predictions need
    # hiding; the matrix is copied only when some exist.
    free = iou if pred_mask is None else iou.masked_fill(~pred_mask[:, :, None], neg_inf)
    best_value, best_pred = free.max(dim=1)  # [B, N]
    winner, won, unresolved = _claim_round(best_value, best_pred, target_mask, m)
    forced = torch.where(won, winner, forced)
    if min(m, n) == 1 or not bool(unresolved.any()):
        return forced
    # Later rounds, on the images that still have a conflict (the rule is per image).
    images = unresolved.any(dim=1).nonzero().squeeze(1)
    free = free.index_select(0, images).masked_fill_(
        won.index_select(0, images)[:, :, None], neg_inf
    )
    sub_forced = forced.index_select(0, images)
    unresolved = unresolved.index_select(0, images)
    for _ in range(min(m, n) - 1):
        best_value, best_pred = free.max(dim=1)
        winner, won, unresolved = _claim_round(best_value, best_pred, unresolved, m)
        sub_forced = torch.where(won, winner, sub_forced)
        free.masked_fill_(won[:, :, None], neg_inf)
        if not bool(unresolved.any()):
            break
    return forced.index_copy_(0, images, sub_forced)


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
