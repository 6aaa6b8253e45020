"""Soft nearest-neighbour matchings (a softmin of the cost along one side) and convex
combinations of matchings."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._api import keyword_only_masks
from .._checks import (
    check_choice,
    check_finite,
    check_tensor,
    compute_dtype,
    shape_str,
    should_validate,
)
from ._common import prepare_cost
from .matching import Matching
from .sinkhorn import background_column, plan_to_assignment

__all__ = ["combine", "softmin"]

SOURCES = ("prediction", "target")


@keyword_only_masks(4, ("target_mask", "pred_mask"))
def softmin(
    cost: Tensor,
    reg: float = 1.0,
    source: str = "prediction",
    background_cost: float | Tensor = 1.0,
    *,
    target_mask: Tensor | None = None,
    pred_mask: Tensor | None = None,
    validate: bool | None = None,
) -> Matching:
    """Soft matching by a softmax of ``-cost / reg`` along one side of the cost.

    Args:
        cost: ``Tensor[B, M, N]`` (or ``[M, N]``), predictions by targets. Integer and half
            precision costs are computed in float32.
        reg: temperature, ``> 0``. As ``reg -> 0`` the plan tends to
            :func:`closest_target` (``source="prediction"``) or to the target columns of
            :func:`closest_prediction` (``source="target"``).
        source: ``"prediction"``: each prediction spreads a unit of mass over the real
            targets and the background (each real row sums to 1); ``"target"``: each real
            target spreads a unit of mass over the real predictions (each real target
            column sums to 1) and the background column spreads ``m - n`` (floored at 0)
            over them with the weights ``softmax(-background_cost / reg)``, so the total is
            ``m`` as in a balanced plan (``m``, ``n``: the image's real predictions and
            targets).
        background_cost: a float or a tensor broadcastable to ``[B, M]``.
        target_mask: ``bool[B, N]``, real targets (any pattern); padded ones get no mass.
        pred_mask: ``bool[B, M]``, real predictions; padded ones get no mass and come back
            ignored (``-2``).
        validate: check that the real entries of ``cost`` and ``background_cost`` are
            finite or ``+inf`` (a pair that gets no mass); NaN or ``-inf`` is a ValueError
            (one host synchronisation). None (default) checks on the CPU only.

    Returns:
        A :class:`Matching` with ``plan [B, M, N + 1]`` (last column = background, in the
        cost's floating dtype) and ``pred_to_target`` = each row's argmax (``-1`` for the
        background).

    Shape:
        - cost: ``[B, M, N]`` or ``[M, N]``; target_mask: ``[B, N]``; pred_mask:
          ``[B, M]``; background_cost: broadcastable to ``[B, M]``
        - output: ``plan [B, M, N + 1]``, ``pred_to_target [B, M]``

    Example:
        >>> cost = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]])
        >>> match = softmin(cost, reg=0.1, background_cost=0.5)
        >>> match.pred_to_target
        tensor([[ 0,  1, -1]])
        >>> match.plan.sum(dim=2)  # source="prediction": each real row sums to 1
        tensor([[1., 1., 1.]])
    """
    if isinstance(reg, bool) or not isinstance(reg, (int, float)):
        raise TypeError(f"reg must be a float, got {type(reg).__name__}")
    if not reg > 0 or math.isinf(reg):
        raise ValueError(f"reg: expected a finite number > 0, got {reg}")
    check_choice(source, "source", SOURCES)
    cost, target_mask, pred_mask, _ = prepare_cost(cost, target_mask, pred_mask)
    b, m, n = cost.shape
    dtype = compute_dtype(cost)
    out_dtype = cost.dtype if cost.is_floating_point() else torch.float32
    background = background_column(background_cost, b, m, dtype, cost.device)
    if should_validate(validate, cost):
        pairs = pred_mask[:, :, None] & target_mask[:, None, :]
        named = (("cost", cost, pairs), ("background_cost", background, pred_mask))
        check_finite(*named, allow_posinf=True)

    with torch.no_grad():
        logits = torch.cat([cost.to(dtype), background.unsqueeze(2)], dim=2) / -reg
        col_valid = torch.cat([target_mask, target_mask.new_ones((b, 1))], dim=1)
        pair_valid = pred_mask[:, :, None] & col_valid[:, None, :]
        logits = logits.masked_fill(~pair_valid, -torch.inf)
        dim = 2 if source == "prediction" else 1
        # A row (column) whose every entry is forbidden (+inf cost) has no softmax: 0/0.
        # It receives no mass, as a slot with nothing to share over.
        reachable = (logits > -torch.inf).any(dim=dim, keepdim=True)
        plan = torch.where(reachable, logits.softmax(dim=dim), 0.0)
        if source == "target":
            surplus = (pred_mask.sum(dim=1) - target_mask.sum(dim=1)).clamp(min=0)
            plan[:, :, n] *= surplus.to(dtype)[:, None]
        # A softmax over nothing (no real prediction / target) is 0/0: no mass there.
        plan = torch.where(pair_valid, plan, 0.0)
        p2t = plan_to_assignment(plan, pred_mask)
    return Matching(p2t, target_mask, plan=plan.to(out_dtype))


def combine(
    matchings: Sequence[Matching], weights: Sequence[float] | Tensor | None = None
) -> Matching:
    """A convex combination of the plans of several matchings of the same problem.

    Args:
        matchings: matchings with the same ``[B, M]`` predictions and ``[B, N]`` target
            slots. Soft plans are used as they are; hard matchings contribute their 0/1
            :meth:`Matching.hard_plan` (their ignored rows are all zero).
        weights: one non-negative, finite weight per matching, not all zero; they are
            normalised to sum to 1 (so ``[1, 1]`` and ``[0.5, 0.5]`` are the same).
            None gives equal weights.

    Returns:
        A :class:`Matching` with the combined ``plan`` (the soft plans' dtype, float32 if
        every matching is hard) and ``pred_to_target`` = each row's argmax; rows with no
        mass in any plan (ignored everywhere) stay ignored (``-2``). The target mask is the
        first matching's.

    Shape:
        - matchings: each with ``pred_to_target [B, M]`` and ``target_mask [B, N]``
        - output: ``plan [B, M, N + 1]``, ``pred_to_target [B, M]``

    Example:
        >>> cost = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]])
        >>> soft = softmin(cost, reg=0.1, background_cost=0.5)
        >>> hard = softmin(cost, reg=1e-3, background_cost=0.5)
        >>> mixed = combine([soft, hard], weights=[1.0, 3.0])
        >>> mixed.pred_to_target
        tensor([[ 0,  1, -1]])
        >>> mixed.plan.shape
        torch.Size([1, 3, 3])
    """
    if isinstance(matchings, Matching) or not isinstance(matchings, Sequence):
        raise TypeError(f"matchings must be a sequence of Matching, got {type(matchings).__name__}")
    if len(matchings) == 0:
        raise ValueError("matchings: expected at least one Matching, got an empty sequence")
    for i, item in enumerate(matchings):
        if not isinstance(item, Matching):
            raise TypeError(f"matchings[{i}] must be a Matching, got {type(item).__name__}")
    # No device synchronisation to spare here otherwise: a plan is checked on the CPU only.
    check_finite(
        *(
            (f"matchings[{i}].plan", item.plan)
            for i, item in enumerate(matchings)
            if item.plan is not None and should_validate(None, item.plan)
        )
    )
    first = matchings[0]
    for i, item in enumerate(matchings[1:], start=1):
        if (
            item.pred_to_target.shape != first.pred_to_target.shape
            or item.target_mask.shape != first.target_mask.shape
        ):
            raise ValueError(
                f"matchings[{i}]: expected [B, M] = {shape_str(first.pred_to_target.shape)} "
                f"and [B, N] = {shape_str(first.target_mask.shape)} like matchings[0], got "
                f"{shape_str(item.pred_to_target.shape)} and {shape_str(item.target_mask.shape)}"
            )

    if weights is None:
        values = [1.0] * len(matchings)
    else:
        if isinstance(weights, Tensor):
            check_tensor(weights, "weights")
            if weights.ndim != 1:
                raise ValueError(
                    f"weights: expected shape [{len(matchings)}], got {shape_str(weights.shape)}"
                )
            values = [float(w) for w in weights.tolist()]
        elif isinstance(weights, Sequence) and not isinstance(weights, str):
            for w in weights:
                if isinstance(w, bool) or not isinstance(w, (int, float)):
                    raise TypeError(f"weights must be numbers, got {type(w).__name__}")
            values = [float(w) for w in weights]
        else:
            raise TypeError(f"weights must be a sequence of floats, got {type(weights).__name__}")
        if len(values) != len(matchings):
            raise ValueError(
                f"weights: expected {len(matchings)} values (one per matching), got {len(values)}"
            )
        if any(not math.isfinite(w) or w < 0 for w in values):
            raise ValueError(f"weights: expected finite values >= 0, got {values}")
        if sum(values) <= 0:
            raise ValueError(f"weights: expected a positive sum, got {values}")

    soft = [item.plan.dtype for item in matchings if item.plan is not None]
    dtype = soft[0] if soft else torch.float32
    for d in soft[1:]:
        dtype = torch.promote_types(dtype, d)
    total = sum(values)
    with torch.no_grad():
        terms = [
            item.dense_plan(dtype) * (w / total)
            for item, w in zip(matchings, values, strict=True)
            if w > 0
        ]
        plan = terms[0]
        for term in terms[1:]:
            plan = plan + term
        row_valid = plan.sum(dim=2) > 0
        p2t = plan_to_assignment(plan, row_valid)
    return Matching(p2t, first.target_mask, plan=plan)
