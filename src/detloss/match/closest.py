"""Nearest-neighbour matchings: each prediction to its cheapest target, or each target
to its cheapest prediction. They are the limits of unbalanced optimal transport."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_finite, should_validate
from ._common import broadcast_value, prepare_cost
from .matching import BACKGROUND, IGNORED, Matching

__all__ = ["closest_prediction", "closest_target"]


def closest_target(
    cost: Tensor,
    background_cost: float | Tensor,
    target_mask: Tensor | None = None,
    pred_mask: Tensor | None = None,
    *,
    validate: bool | None = None,
) -> Matching:
    """Match each prediction to its cheapest real target, or to the background when the
    background is not more expensive.

    Args:
        cost: ``Tensor[B, M, N]`` (or ``[M, N]``).
        background_cost: cost of assigning a prediction to the background; a float or a
            tensor broadcastable to ``[B, M]``. A prediction is matched when its cheapest
            target costs strictly less (ties go to the background).
        target_mask, pred_mask: real entries; padded predictions are ignored (``-2``).
        validate: check that the real entries of ``cost`` and ``background_cost`` are
            finite or ``+inf`` (NaN or ``-inf`` is a ValueError; one host
            synchronisation); None (default) checks on the CPU only.

    Several predictions may share a target. The returned matching carries its 0/1 plan.
    """
    cost, target_mask, pred_mask, _ = prepare_cost(cost, target_mask, pred_mask)
    if not cost.is_floating_point():
        cost = cost.float()
    b, m, n = cost.shape
    bg = broadcast_value(
        background_cost, (b, m), cost.dtype, cost.device, "background_cost", "[B, M]"
    )
    if should_validate(validate, cost):
        pairs = pred_mask[:, :, None] & target_mask[:, None, :]
        named = (("cost", cost, pairs), ("background_cost", bg, pred_mask))
        check_finite(*named, allow_posinf=True)
    if n == 0:
        p2t = torch.full((b, m), BACKGROUND, dtype=torch.int64, device=cost.device)
    else:
        masked = cost.masked_fill(~target_mask[:, None, :], torch.inf)
        best_cost, best_target = masked.min(dim=2)
        p2t = torch.where(best_cost < bg, best_target, BACKGROUND)
    p2t = p2t.masked_fill(~pred_mask, IGNORED)
    matching = Matching(p2t, target_mask)
    return Matching(p2t, target_mask, plan=matching.hard_plan(cost.dtype))


def closest_prediction(
    cost: Tensor,
    threshold: float | Tensor,
    target_mask: Tensor | None = None,
    pred_mask: Tensor | None = None,
    *,
    validate: bool | None = None,
) -> Matching:
    """Match each real target to its cheapest prediction when that cost is below
    ``threshold``; every other prediction is background.

    Args:
        cost: ``Tensor[B, M, N]`` (or ``[M, N]``).
        threshold: a target is matched only if its cheapest prediction costs strictly less;
            a float or a tensor broadcastable to ``[B, N]``.
        target_mask, pred_mask: real entries; padded predictions are ignored (``-2``).
        validate: as for :func:`closest_target`, with ``threshold`` for the background
            cost.

    The plan holds every target's choice, so a prediction chosen by several targets has
    several ones in its row; ``pred_to_target`` keeps the cheapest of them (ties: lower
    target index).
    """
    cost, target_mask, pred_mask, _ = prepare_cost(cost, target_mask, pred_mask)
    if not cost.is_floating_point():
        cost = cost.float()
    b, m, n = cost.shape
    plan = cost.new_zeros((b, m, n + 1))
    p2t = torch.full((b, m), BACKGROUND, dtype=torch.int64, device=cost.device)
    if m > 0 and n > 0:
        thr = broadcast_value(threshold, (b, n), cost.dtype, cost.device, "threshold", "[B, N]")
        if should_validate(validate, cost):
            pairs = pred_mask[:, :, None] & target_mask[:, None, :]
            named = (("cost", cost, pairs), ("threshold", thr, target_mask))
            check_finite(*named, allow_posinf=True)
        masked = cost.masked_fill(~pred_mask[:, :, None], torch.inf)
        best_cost, best_pred = masked.min(dim=1)  # [B, N]
        chosen = target_mask & (best_cost < thr)
        plan[:, :, :n].scatter_(1, best_pred.unsqueeze(1), chosen.unsqueeze(1).to(cost.dtype))
        # For each prediction, the cheapest target that chose it.
        choice_cost = torch.where(plan[:, :, :n] > 0, cost, torch.inf)
        cheapest, target = choice_cost.min(dim=2)
        p2t = torch.where(cheapest < torch.inf, target, BACKGROUND)
    background = (p2t == BACKGROUND) & pred_mask
    plan[:, :, n] = background.to(cost.dtype)
    p2t = p2t.masked_fill(~pred_mask, IGNORED)
    return Matching(p2t, target_mask, plan=plan)
