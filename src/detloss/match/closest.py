"""Nearest-neighbour matchings: each prediction to its cheapest target, or each target
to its cheapest prediction. They are the limits of unbalanced optimal transport."""

from __future__ import annotations

import torch
from torch import Tensor

from .._api import keyword_only_masks, renamed
from .._checks import check_finite, should_validate
from ._common import broadcast_value, prepare_cost
from .matching import BACKGROUND, IGNORED, Matching

__all__ = ["closest_prediction", "closest_target"]


def _float_cost(
    cost: Tensor, target_mask: Tensor | None, pred_mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``[B, M, N]`` cost of :func:`prepare_cost` (an integer one as float32) and its
    target and prediction masks."""
    cost, target_mask, pred_mask, _ = prepare_cost(cost, target_mask, pred_mask)
    return (cost if cost.is_floating_point() else cost.float()), target_mask, pred_mask


def _checked_limit(
    value: float | Tensor,
    name: str,
    cost: Tensor,
    target_mask: Tensor,
    pred_mask: Tensor,
    validate: bool | None,
    *,
    per_target: bool = False,
) -> Tensor:
    """The cost ``value`` that a match must beat (a float or a tensor), broadcast to one
    per prediction ``[B, M]`` or, ``per_target``, one per target ``[B, N]``; when
    validating, the real entries of ``cost`` and of it must be finite or ``+inf``."""
    b, m, n = cost.shape
    shape, dims, real = (
        ((b, n), "[B, N]", target_mask) if per_target else ((b, m), "[B, M]", pred_mask)
    )
    limit = broadcast_value(value, shape, cost.dtype, cost.device, name, dims)
    if should_validate(validate, cost):
        pairs = pred_mask[:, :, None] & target_mask[:, None, :]
        check_finite(("cost", cost, pairs), (name, limit, real), allow_posinf=True)
    return limit


@keyword_only_masks(2, ("target_mask", "pred_mask"))
def closest_target(
    cost: Tensor,
    background_cost: float | Tensor,
    *,
    target_mask: Tensor | None = None,
    pred_mask: Tensor | None = None,
    validate: bool | None = None,
) -> Matching:
    """Match each prediction to its cheapest real target, or to the background when the
    background is not more expensive.

    Args:
        cost: ``Tensor[B, M, N]`` (or ``[M, N]``).
        background_cost: cost of assigning a prediction to the background; a float or a
            tensor broadcastable to ``[B, M]``. A prediction is matched when its cheapest
            target costs strictly less (ties go to the background).
        target_mask: ``bool[B, N]`` real targets; pred_mask: ``bool[B, M]`` real
            predictions (padded ones are ignored, ``-2``). Keyword-only (by position they
            still work, with a FutureWarning, for one release).
        validate: check that the real entries of ``cost`` and ``background_cost`` are
            finite or ``+inf`` (NaN or ``-inf`` is a ValueError; one host
            synchronisation); None (default) checks on the CPU only.

    Several predictions may share a target. The returned matching carries its 0/1 plan.

    Shape:
        - cost: ``[B, M, N]`` or ``[M, N]``; background_cost: broadcastable to ``[B, M]``
        - result: a :class:`Matching` with ``pred_to_target [B, M]`` and ``plan
          [B, M, N + 1]``

    Example:
        >>> cost = torch.tensor([[0.2, 0.9], [0.7, 0.8], [0.1, 0.3]])
        >>> closest_target(cost, 0.5).pred_to_target
        tensor([[ 0, -1,  0]])
    """
    cost, target_mask, pred_mask = _float_cost(cost, target_mask, pred_mask)
    b, m, n = cost.shape
    bg = _checked_limit(background_cost, "background_cost", cost, target_mask, pred_mask, validate)
    if n == 0:
        p2t = torch.full((b, m), BACKGROUND, dtype=torch.int64, device=cost.device)
    else:
        masked = cost.masked_fill(~target_mask[:, None, :], torch.inf)
        best_cost, best_target = masked.min(dim=2)
        p2t = torch.where(best_cost < bg, best_target, BACKGROUND)
    p2t = p2t.masked_fill(~pred_mask, IGNORED)
    matching = Matching(p2t, target_mask)
    return Matching(p2t, target_mask, plan=matching.hard_plan(cost.dtype))


@keyword_only_masks(2, ("target_mask", "pred_mask"))
@renamed(threshold="cost_threshold")
def closest_prediction(
    cost: Tensor,
    cost_threshold: float | Tensor,
    *,
    target_mask: Tensor | None = None,
    pred_mask: Tensor | None = None,
    validate: bool | None = None,
) -> Matching:
    """Match each real target to its cheapest prediction when that cost is below
    ``cost_threshold``; every other prediction is background.

    Args:
        cost: ``Tensor[B, M, N]`` (or ``[M, N]``).
        cost_threshold: a target is matched only if its cheapest prediction costs strictly
            less; a float or a tensor broadcastable to ``[B, N]`` (was ``threshold``: the
            old name raises a TypeError naming the new one).
        target_mask, pred_mask: keyword-only, as for :func:`closest_target`.
        validate: as for :func:`closest_target`, with ``cost_threshold`` for the
            background cost.

    The plan holds every target's choice, so a prediction chosen by several targets has
    several ones in its row; ``pred_to_target`` keeps the cheapest of them (ties: lower
    target index).

    Shape:
        - cost: ``[B, M, N]`` or ``[M, N]``; cost_threshold: broadcastable to ``[B, N]``
        - result: a :class:`Matching` with ``pred_to_target [B, M]`` and ``plan
          [B, M, N + 1]``

    Example:
        >>> cost = torch.tensor([[0.2, 0.9], [0.7, 0.8], [0.1, 0.3]])
        >>> closest_prediction(cost, 0.5).pred_to_target
        tensor([[-1, -1,  0]])
    """
    cost, target_mask, pred_mask = _float_cost(cost, target_mask, pred_mask)
    b, m, n = cost.shape
    plan = cost.new_zeros((b, m, n + 1))
    p2t = torch.full((b, m), BACKGROUND, dtype=torch.int64, device=cost.device)
    if m > 0 and n > 0:
        thr = _checked_limit(
            cost_threshold,
            "cost_threshold",
            cost,
            target_mask,
            pred_mask,
            validate,
            per_target=True,
        )
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
