"""Rank & Sort Loss (Oksuz et al., "Rank & Sort Loss for Object Detection and Instance
Segmentation", ICCV 2021): a ranking error (negatives above each positive) and a sorting
error (positives with lower targets above each positive), each with the paper's
error-driven update.

For positive i with continuous target ``t_i`` (its IoU; notation of :mod:`.ap`, and
here a positive keeps ``H(0) = 1/2`` for itself):

- ``rank_pos_i = sum_k H(x_k - x_i)``, ``FP_i = sum_j H(y_j - x_i)``;
- ranking error ``FP_i / (rank_pos_i + FP_i)``, handed to the negatives above it in
  proportion to ``H`` (unless ``FP_i <= 1e-10``);
- sorting error: the mean ``1 - t`` over the positives above i (weighted by ``H``) minus
  the same mean over those above i with ``t_k >= t_i``; handed to the positives above i
  with a lower target, in proportion to ``H`` (unless their weight is ``<= 1e-10``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..._checks import compute_dtype, output_dtype, should_validate
from ._common import (
    RankingLossModule,
    check_delta,
    check_finite,
    check_pair,
    check_reduction,
    kernel_for,
    kernel_weights,
    label_array,
    reduce_positives,
)
from ._engine import Ranking

__all__ = ["RankSortLoss", "rank_sort_loss"]

#: The published threshold below which a positive's false-positive count (or its weight
#: of mis-sorted positives) is treated as none: it keeps its error to itself.
RS_EPS = 1e-10


def _sorting_terms(
    x: Tensor, t: Tensor, current: Tensor, delta: float, weight: Tensor | float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Rank & Sort's sorting terms by comparing every pair of positives, by score and by
    target: dense, a block of rows at a time (O(P^2) time, O(P) memory per row).

    Args:
        x: ``Tensor[P]`` the positives' scores, ascending.
        t: ``Tensor[P]`` their targets.
        current: ``Tensor[P]``, the mean ``1 - t`` over the positives above each.
        weight: a factor per positive on the update it hands out.

    Returns:
        ``(error, own, received)``: each positive's sorting error, the update it keeps
        (``-weight * error`` when it has mis-sorted positives above ``RS_EPS``, else 0)
        and the update it receives from the positives it is mis-sorted against.
    """
    p = t.numel()
    weight = torch.as_tensor(weight, dtype=t.dtype).expand(p)
    sorting_error = torch.empty_like(t)
    received = torch.zeros_like(t)
    own = torch.empty_like(t)
    block = max(1, (1 << 20) // max(p, 1))
    for start in range(0, p, block):
        rows = slice(start, start + block)
        step = torch.clamp((x - x[rows, None]) / (2 * delta) + 0.5, 0, 1)
        in_order = t >= t[rows, None]
        sorted_step = step * in_order
        target = (sorted_step * (1 - t)).sum(1) / sorted_step.sum(1)
        error = current[rows] - target
        missorted = step * ~in_order
        denom = missorted.sum(1)
        has = denom > RS_EPS
        handed = weight[rows] * error
        sorting_error[rows] = error
        own[rows] = torch.where(has, -handed, 0)
        received += (
            missorted * (torch.where(has, handed, 0) / torch.where(has, denom, 1))[:, None]
        ).sum(0)
    return sorting_error, own, received


def _rank_sort_terms(
    x: Tensor,
    targets: Tensor,
    delta: float,
    reduction: str = "mean",
    weights: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rank & Sort losses of flat scores and their two updates.

    Args:
        x: ``Tensor[n]`` scores (float32 or float64).
        targets: ``Tensor[n]``; > 0 positive with that continuous target (IoU), 0
            negative, < 0 ignored.
        reduction: as in :func:`rank_sort_loss`; "mean" divides the updates by P.
        weights: ``(ranking, sorting)`` weights per element on each positive's update
            (the incoming gradients of ``reduction="none"``); None: 1.

    Returns:
        ``(ranking, sorting, ranking update Tensor[n], sorting update Tensor[n])``; the
        values as ``reduction`` says.
    """
    kernel = kernel_for(x, None)
    if kernel is not None:
        rank_w, sort_w = (None, None) if weights is None else weights
        ranking, sorting, where, rank_update, sort_update = kernel.rank_sort_loss(
            x.numpy(),
            label_array(targets),
            delta,
            RS_EPS,
            kernel_weights(rank_w),
            kernel_weights(sort_w),
            reduction == "mean",
        )
        ranking, sorting = (
            reduce_positives(e, where, x.numel(), reduction, x.dtype) for e in (ranking, sorting)
        )
        return ranking, sorting, torch.from_numpy(rank_update), torch.from_numpy(sort_update)

    # The pairwise part needs the positives without padding: compact.
    r = Ranking(x, targets > 0, targets == 0, delta, compact=True)
    t = r.gather(targets)
    norm = r.norm if reduction == "mean" else 1.0
    rank_w, sort_w = (1.0, 1.0) if weights is None else (r.gather(w) for w in weights)

    rank_pos = r.positives_above()
    false_pos = r.negatives_above()
    ranking = false_pos / (rank_pos + false_pos)
    spread = false_pos > RS_EPS
    rank_update = torch.where(spread, -(rank_w * ranking), 0) / norm
    neg_update = r.spread(
        torch.where(spread, rank_w * ranking / torch.where(spread, false_pos, 1), 0) / norm
    )
    current = r.positives_above(1 - t) / rank_pos
    sorting, own, received = _sorting_terms(r.x, t, current, delta, sort_w)
    sort_update = (own + received) / norm
    return (
        r.reduce(ranking, reduction),
        r.reduce(sorting, reduction),
        r.scatter(rank_update, neg_update),
        r.scatter(sort_update),
    )


class _RankSortFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, targets: Tensor, delta: float, reduction: str
    ) -> tuple[Tensor, Tensor]:
        x = logits.detach().reshape(-1).to(compute_dtype(logits))
        flat_targets = targets.detach().reshape(-1)
        ranking, sorting, rank_update, sort_update = _rank_sort_terms(
            x, flat_targets, delta, reduction
        )
        ctx.delta, ctx.reduction = delta, reduction
        ctx.shape, ctx.grad_dtype = logits.shape, logits.dtype
        if reduction == "none":  # the updates depend on the incoming gradients
            ctx.save_for_backward(x, flat_targets)
            ranking, sorting = ranking.view(logits.shape), sorting.view(logits.shape)
        else:
            ctx.save_for_backward(rank_update.view(logits.shape), sort_update.view(logits.shape))
        out = output_dtype(logits)
        return ranking.to(out), sorting.to(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rank: Tensor, grad_sort: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if ctx.reduction == "none":
            x, targets = ctx.saved_tensors
            weights = (grad_rank.reshape(-1), grad_sort.reshape(-1))
            _, _, rank_update, sort_update = _rank_sort_terms(
                x, targets, ctx.delta, "none", weights
            )
            grad = (rank_update + sort_update).view(ctx.shape)
        else:
            rank_update, sort_update = ctx.saved_tensors
            grad = rank_update * grad_rank.to(rank_update.dtype)
            grad += sort_update * grad_sort.to(sort_update.dtype)
        return grad.to(ctx.grad_dtype), None, None, None


def rank_sort_loss(
    logits: Tensor,
    targets: Tensor,
    delta: float = 0.5,
    reduction: str = "mean",
    *,
    validate: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Rank & Sort Loss: the ranking error (false positives above each positive) and the
    sorting error (positives with lower targets above each positive), each with the
    paper's error-driven update.

    Args:
        logits: ``Tensor[*]`` scores of any shape, ranked together as in :func:`ap_loss`.
        targets: ``Tensor[*]``, the logits' shape, float: a positive's continuous target
            in (0, 1] (its IoU), 0 for a negative, -1 ignored.
        delta: half-width of the soft step's linear zone (the reference's 0.5).
        reduction: each positive has a ranking error ``FP_i / (rank_pos_i + FP_i)`` and a
            sorting error. ``"mean"`` (default): the means over the P positives, the
            paper's losses; ``"sum"``: the sums; ``"none"``: each of the logits' shape
            with a positive's error at its place and 0 elsewhere.
        validate: check targets in {-1} or [0, 1] and finite logits (a device sync);
            default True on CPU.

    Returns:
        ``(ranking, sorting)``: ``Tensor[]`` each (the logits' shape for "none"). Backward
        gives each its own update times its incoming gradient, so
        ``(ranking + sorting).backward()`` applies the reference's combined update. A
        positive whose false-positive count (or mis-sorted positive count) is at most
        1e-10 keeps its error to itself, as in the reference. Without a positive both
        are 0.

    Shape:
        - logits: ``(*)``, any shape.
        - targets: ``(*)``, the same.
        - output: two ``()`` tensors; two ``(*)`` tensors for ``reduction="none"``.

    The positive-positive comparisons take O(P log P) on the CPU with Numba (Fenwick
    trees), else O(P^2) time in blocks of rows with O(P) memory per block, and need the
    positives gathered (one device sync on a GPU). Not distributed.

    Example:
        >>> logits = torch.tensor([0.0, 1.0], requires_grad=True)
        >>> ranking, sorting = rank_sort_loss(logits, torch.tensor([0.9, 0.5]))
        >>> ranking.item(), round(sorting.item(), 4)
        (0.0, 0.1333)
        >>> (ranking + sorting).backward()
        >>> logits.grad
        tensor([-0.1333,  0.1333])
    """
    check_pair(logits, targets, "targets")
    delta = check_delta(delta)
    check_reduction(reduction)
    if should_validate(validate, logits):
        check_finite(logits, "logits")
        ok = (targets == -1) | ((targets >= 0) & (targets <= 1))
        if not bool(ok.all()):
            bad = targets[~ok].reshape(-1)[0].item()
            raise ValueError(f"targets: expected -1 or values in [0, 1], got {bad}")
    return _RankSortFunction.apply(logits, targets, delta, reduction)


class RankSortLoss(RankingLossModule):
    """Module form of :func:`rank_sort_loss`: ``ranking + sorting``, with the function's
    options and defaults.

    Shape:
        - logits: ``(*)``, any shape.
        - targets: ``(*)``, the same.
        - output: ``()``; ``(*)`` for ``reduction="none"``.

    Example:
        >>> criterion = RankSortLoss()
        >>> total, terms = criterion(
        ...     torch.tensor([0.0, 1.0]), torch.tensor([0.9, 0.5]), return_terms=True
        ... )
        >>> round(total.item(), 4), sorted(terms)
        (0.1333, ['rank', 'sort'])
    """

    option_names = ("delta", "reduction", "validate")

    def __init__(
        self, delta: float = 0.5, reduction: str = "mean", *, validate: bool | None = None
    ) -> None:
        super().__init__(delta, reduction, validate)

    def forward(
        self, logits: Tensor, targets: Tensor, return_terms: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        ranking, sorting = rank_sort_loss(logits, targets, **self.options())
        total = ranking + sorting
        return (total, {"rank": ranking, "sort": sorting}) if return_terms else total
