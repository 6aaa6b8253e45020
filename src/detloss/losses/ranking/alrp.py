"""aLRP Loss (Oksuz et al., "A Ranking-based, Balanced Loss Function Unifying
Classification and Localisation in Object Detection", NeurIPS 2020): the average
Localisation-Recall-Precision error split into a classification and a localisation
component, trained with the paper's error-driven update.

For positive i (notation of :mod:`.ap`; ``l_k`` the positives' localisation losses):

- ``rank_i = 1 + sum_{k != i} H(x_k - x_i) + FP_i`` with ``FP_i = sum_j H(y_j - x_i)``;
- classification error ``1 - (rank_i - FP_i) / rank_i`` (precision, not interpolated);
  positive i receives ``-(sum_{k != i} H(x_k - x_i) l_k + FP_i) / rank_i`` and hands the
  opposite to the negatives above it in proportion to ``H``, unless ``FP_i <= 1e-5``;
- localisation: with the positives in descending order of score (ties in element order),
  the losses of the positives at or above i, summed, over ``rank_i``; an ordinary
  function of ``l`` with the ranks held constant, differentiated as such.

See the end of ``docs/ap_loss.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..._checks import check_tensor, compute_dtype, output_dtype, shape_str, should_validate
from ._common import (
    RankingLossModule,
    check_finite,
    check_inputs,
    default_compact,
    kernel_for,
    kernel_weights,
    label_array,
    reduce_positives,
)
from ._engine import Ranking

__all__ = ["ALRPLoss", "alrp_loss"]

#: The published threshold below which a positive's false-positive count is treated as
#: none: it neither receives nor hands out an update.
ALRP_EPS = 1e-5


def _alrp_terms(
    x: Tensor,
    labels: Tensor,
    reg: Tensor,
    delta: float,
    reduction: str = "mean",
    weights: tuple[Tensor, Tensor] | None = None,
    compact: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """aLRP's classification and localisation components of flat scores.

    Args:
        x: ``Tensor[n]`` scores (float32 or float64); labels as for AP-Loss.
        reg: ``Tensor[P]`` localisation losses of the positives in element order.
        reduction: as in :func:`alrp_loss`; "mean" divides the updates by P.
        weights: ``(classification, localisation)`` weights per element on each
            positive's update (the incoming gradients of ``reduction="none"``); None: 1.
        compact: as for AP-Loss.

    Returns:
        ``(classification, localisation, update Tensor[n], d localisation / d reg
        Tensor[P])``; the values as ``reduction`` says.
    """
    kernel = kernel_for(x, compact)
    if kernel is not None:
        cls_w, loc_w = (None, None) if weights is None else weights
        p, cls, loc, where, update, grad = kernel.alrp_loss(
            x.numpy(),
            label_array(labels),
            reg.detach().to(torch.float64).numpy(),
            delta,
            ALRP_EPS,
            kernel_weights(cls_w),
            kernel_weights(loc_w),
            reduction == "mean",
        )
        if p == reg.numel():  # else (unvalidated) the torch path's handling
            return (
                reduce_positives(cls, where, x.numel(), reduction, x.dtype),
                reduce_positives(loc, where, x.numel(), reduction, torch.float64),
                torch.from_numpy(update),
                torch.from_numpy(grad),
            )

    pos = labels == 1
    r = Ranking(x, pos, labels == 0, delta, default_compact(x, compact))
    acc = r.x.dtype
    # Which entry of reg belongs to each sorted positive (padding: any, masked).
    slot = (pos.cumsum(0) - 1).index_select(0, r.index_p).clamp(min=0)
    if reg.numel() == 0:
        loc = r.x.new_zeros(r.x.shape)
    else:
        loc = r.mask(reg.detach().to(acc).index_select(0, slot.clamp(max=reg.numel() - 1)))
    norm = r.norm if reduction == "mean" else 1.0
    cls_w, loc_w = (1.0, 1.0) if weights is None else (r.gather(w) for w in weights)

    # The reference drops i itself from its positive relations and adds 1 instead:
    # sum_{k != i} H(x_k - x_i) = positives_above - 1/2, and likewise for the losses.
    rank_pos = r.positives_above() + 0.5
    false_pos = r.negatives_above()
    rank = rank_pos + false_pos
    classification = r.mask(1 - rank_pos / rank)
    spread = false_pos > ALRP_EPS
    error = torch.where(spread, (r.positives_above(loc) - 0.5 * loc + false_pos) / rank, 0)
    neg_update = r.spread(cls_w * error / (torch.where(spread, false_pos, 1) * norm))
    update = r.scatter(-(cls_w * error) / norm, neg_update)

    # Localisation: positives by descending score, each with the sum of the losses of
    # those ranked at or above it (hard order, ties in element order) over its soft rank.
    localisation = r.mask(loc.flip(0).cumsum(0).flip(0) / rank)
    # d localisation / d loss of sorted positive k: sum over r <= k of w_r / rank_r.
    grad_sorted = r.mask(r.mask(loc_w / rank).cumsum(0) / norm)
    grad_reg = torch.zeros(reg.numel() + 1, dtype=acc, device=x.device)
    # Padding goes to a spare last slot, dropped after the scatter.
    target = torch.where(r.valid_p, slot, reg.numel()) if r.valid_p is not None else slot
    grad_reg.scatter_(0, target, grad_sorted)
    cls_value = r.reduce(classification, reduction)
    return cls_value, r.reduce(localisation, reduction, acc), update, grad_reg[:-1]


class _ALRPLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, labels: Tensor, regression_losses: Tensor, delta: float, reduction: str
    ) -> tuple[Tensor, Tensor]:
        x = logits.detach().reshape(-1).to(compute_dtype(logits))
        flat_labels = labels.detach().reshape(-1)
        reg = regression_losses.detach()
        cls, loc, update, grad_reg = _alrp_terms(x, flat_labels, reg, delta, reduction)
        ctx.delta, ctx.reduction = delta, reduction
        ctx.shape, ctx.dtypes = logits.shape, (logits.dtype, regression_losses.dtype)
        if reduction == "none":  # the updates depend on the incoming gradients
            ctx.save_for_backward(x, flat_labels, reg)
            cls, loc = cls.view(logits.shape), loc.view(logits.shape)
        else:
            ctx.save_for_backward(update.view(logits.shape), grad_reg)
        return cls.to(output_dtype(logits)), loc.to(output_dtype(regression_losses))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_cls: Tensor, grad_loc: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if ctx.reduction == "none":
            x, labels, reg = ctx.saved_tensors
            weights = (grad_cls.reshape(-1), grad_loc.reshape(-1))
            _, _, update, grad_reg = _alrp_terms(x, labels, reg, ctx.delta, "none", weights)
            grad_logits, grad_losses = update.view(ctx.shape), grad_reg
        else:
            update, grad_reg = ctx.saved_tensors
            grad_logits = update * grad_cls.to(update.dtype)
            grad_losses = grad_reg * grad_loc.to(grad_reg.dtype)
        return grad_logits.to(ctx.dtypes[0]), None, grad_losses.to(ctx.dtypes[1]), None, None


def alrp_loss(
    logits: Tensor,
    labels: Tensor,
    regression_losses: Tensor,
    delta: float = 1.0,
    reduction: str = "mean",
    *,
    validate: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """aLRP Loss: the classification and localisation components of the average
    Localisation-Recall-Precision error, with the paper's error-driven update.

    Args:
        logits: ``Tensor[*]`` scores of any shape, ranked together as in :func:`ap_loss`.
        labels: ``Tensor[*]``, the logits' shape; 1 positive, 0 negative, -1 ignored.
        regression_losses: ``Tensor[P]``, one localisation loss per positive (e.g. GIoU
            loss / 2, in [0, 1]) in the order of the positives in ``labels.reshape(-1)``.
        delta: half-width of the soft step's linear zone.
        reduction: each positive has a classification error ``1 - precision_i`` and a
            localisation value (the losses of the positives ranked at or above it over
            its soft rank). ``"mean"`` (default): the means over the P positives, the
            paper's components; ``"sum"``: the sums; ``"none"``: each of the logits'
            shape with a positive's value at its place and 0 elsewhere.
        validate: as for :func:`ap_loss`; also checks the length of ``regression_losses``
            and that it is finite.

    Returns:
        ``(classification, localisation)``: ``Tensor[]`` each (the logits' shape for
        "none"), in the dtypes of the logits and of ``regression_losses``. The backward
        of classification is the error-driven update: positive i receives
        ``-(sum_{k != i} H(x_k - x_i) l_k + FP_i) / rank_i / P`` and spreads it over the
        negatives above it in proportion to ``H``, unless its soft false-positive count
        ``FP_i`` is at most 1e-5. Localisation is differentiable in ``regression_losses``
        (the ranks are constants); its backward is that derivative. The reference
        weights it by a self-balancing factor (50 at the start, then (mean classification
        + mean localisation) / mean localisation over each epoch): see :class:`ALRPLoss`.
        Without a positive both are 0.

    Shape:
        - logits: ``(*)``, any shape.
        - labels: ``(*)``, the same.
        - regression_losses: ``(P)``, P the number of positive labels.
        - output: two ``()`` tensors; two ``(*)`` tensors for ``reduction="none"``.

    Not distributed: the ranking is over this process's elements. On the CPU with Numba
    installed, compiled loops compute the same numbers.

    Example:
        >>> logits = torch.tensor([0.0, -0.5], requires_grad=True)
        >>> losses = torch.tensor([0.3], requires_grad=True)
        >>> cls, loc = alrp_loss(logits, torch.tensor([1, 0]), losses)
        >>> round(cls.item(), 4), round(loc.item(), 4)
        (0.2, 0.24)
        >>> (cls + loc).backward()
        >>> logits.grad, losses.grad
        (tensor([-0.2000,  0.2000]), tensor([0.8000]))
    """
    delta = check_inputs(logits, labels, delta, reduction, validate)
    check_tensor(regression_losses, "regression_losses")
    if regression_losses.ndim != 1:
        raise ValueError(
            f"regression_losses: expected shape [P], got {shape_str(regression_losses.shape)}"
        )
    if regression_losses.device != logits.device:
        raise ValueError(
            f"regression_losses: expected device {logits.device} (the logits'), "
            f"got {regression_losses.device}"
        )
    if should_validate(validate, logits):
        num_pos = int((labels == 1).sum())
        if regression_losses.numel() != num_pos:
            raise ValueError(
                f"regression_losses: expected shape [{num_pos}] (one per positive label), "
                f"got {shape_str(regression_losses.shape)}"
            )
        check_finite(regression_losses, "regression_losses")
    if not regression_losses.is_floating_point():
        regression_losses = regression_losses.float()
    return _ALRPLossFunction.apply(logits, labels, regression_losses, delta, reduction)


class ALRPLoss(RankingLossModule):
    """Module form of :func:`alrp_loss`: ``classification + loc_weight * localisation``,
    with the function's options and defaults.

    ``loc_weight`` is the reference's self-balancing weight (initially 50); update it
    between epochs, e.g. to ``(mean classification + mean localisation) / mean
    localisation`` over the last epoch, as the reference does.

    Shape:
        - logits: ``(*)``, any shape.
        - labels: ``(*)``, the same.
        - regression_losses: ``(P)``.
        - output: ``()``; ``(*)`` for ``reduction="none"``.

    Example:
        >>> criterion = ALRPLoss(loc_weight=10.0)
        >>> total, terms = criterion(
        ...     torch.tensor([0.0, -0.5]), torch.tensor([1, 0]), torch.tensor([0.3]),
        ...     return_terms=True,
        ... )
        >>> round(total.item(), 4), sorted(terms)
        (2.6, ['cls', 'loc'])
    """

    option_names = ("delta", "reduction", "validate")

    def __init__(
        self,
        delta: float = 1.0,
        loc_weight: float = 50.0,
        reduction: str = "mean",
        *,
        validate: bool | None = None,
    ) -> None:
        super().__init__(delta, reduction, validate)
        self.loc_weight = float(loc_weight)

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        regression_losses: Tensor,
        return_terms: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        cls, loc = alrp_loss(logits, labels, regression_losses, **self.options())
        total = cls + self.loc_weight * loc
        return (total, {"cls": cls, "loc": loc}) if return_terms else total

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, loc_weight={self.loc_weight}"
