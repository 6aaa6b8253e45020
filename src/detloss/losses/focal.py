"""Sigmoid focal loss (Lin et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._checks import compute_dtype, output_dtype, shape_str
from .._kernels import fast_path_enabled
from ._elementwise import check_pair
from ._module import FunctionLoss
from ._reduction import reduce_loss

__all__ = ["SigmoidFocalLoss", "sigmoid_focal_loss"]


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
    *,
    validate: bool | None = None,
) -> Tensor:
    """Focal loss on logits, element-wise: ``alpha_t (1 - p_t)^gamma BCE(inputs, targets)``.

    Args:
        inputs: logits of any shape.
        targets: same shape, in [0, 1] (binary or soft).
        alpha: weight of positives in (0, 1), negatives get ``1 - alpha``; None for no
            weighting (torchvision's ``alpha < 0``).
        gamma: focusing exponent >= 0. ``gamma < 1`` has an infinite derivative of
            ``(1 - p_t)^gamma`` at ``p_t = 1``; the base is clamped to the smallest normal
            float there, so saturated logits give zero, not NaN, gradients.
        reduction: ``"mean"`` (default) averages the elements, ``"sum"`` adds them,
            ``"none"`` returns them (torchvision's default: pass it to keep that).
        validate: scan the inputs for NaN and inf first (a ValueError naming the argument;
            one host synchronisation); None (default) scans on the CPU only.

    Values equal torchvision's ``sigmoid_focal_loss`` to the bit (the same operations).
    For ``gamma >= 1`` the gradient in ``inputs`` is written out rather than replayed
    by autograd (fewer passes; not differentiable twice). Half-precision and integer
    inputs are computed in float32 and returned in their floating dtype (float32 for
    integers).

    Shape:
        - inputs: any shape, e.g. ``[B, M, C]``.
        - targets: the inputs' shape.
        - output: ``[]``, or the inputs' shape with ``reduction="none"``.

    Example:
        >>> x = torch.tensor([0.0, 2.0])
        >>> sigmoid_focal_loss(x, torch.tensor([1.0, 0.0]), reduction="none")
        tensor([0.0433, 1.2376])
        >>> sigmoid_focal_loss(x, torch.tensor([1.0, 0.0]))
        tensor(0.6404)
    """
    check_pair(("inputs", inputs), ("targets", targets), reduction, validate)
    if inputs.shape != targets.shape:
        raise ValueError(
            f"targets: expected shape {shape_str(inputs.shape)} (the inputs'), "
            f"got {shape_str(targets.shape)}"
        )
    if alpha is not None and not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1] or None, got {alpha}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    out = output_dtype(inputs)
    x = inputs.to(compute_dtype(inputs))
    t = targets.to(x.dtype)
    if (
        gamma >= 1
        and x.requires_grad
        and not t.requires_grad
        and torch.is_grad_enabled()
        and fast_path_enabled("focal_backward", x.device)
    ):
        ce = _FocalLoss.apply(x, t, alpha, float(gamma))
    else:
        ce = _focal(x, t, alpha, gamma)[0]
    return reduce_loss(ce, reduction).to(out)


def _focal(
    x: Tensor, t: Tensor, alpha: float | None, gamma: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """torchvision's formula, operation for operation (so the values are the same to the
    bit; ``1 - p`` and ``1 - t`` formed once, in-place steps where a temporary is not
    read again): the loss and, for the backward, ``p``, ``1 - p``, the cross-entropy,
    ``1 - p_t``, its power and ``alpha_t`` (None without alpha)."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    one_minus_p = 1 - p
    one_minus_t = 1 - t
    p_t = (p * t).add_(one_minus_p * one_minus_t)
    one_minus_pt = 1 - p_t
    weight = one_minus_pt
    loss = ce
    if gamma != 0:
        # Below 1, d(1 - p_t)^gamma is infinite at p_t = 1: the base is clamped to the
        # smallest normal float, so saturated logits get zero, not NaN, gradients. From
        # 1 on the power is finite: no clamp, as torchvision.
        base = one_minus_pt if gamma >= 1 else one_minus_pt.clamp(min=torch.finfo(x.dtype).tiny)
        weight = base**gamma
        loss = ce * weight
    alpha_t = None
    if alpha is not None:
        alpha_t = (alpha * t).add_(one_minus_t * (1 - alpha))
        loss = alpha_t * loss
    return loss, p, one_minus_p, ce, one_minus_pt, weight, alpha_t


class _FocalLoss(torch.autograd.Function):
    """The element-wise focal loss with its gradient in the inputs written out (gamma >= 1):
    with ``q = 1 - p_t``, ``dq/dx = p (1 - p) (1 - 2 t)`` and ``dce/dx = p - t``,

        dL/dx = alpha_t ((p - t) q^gamma + gamma q^(gamma - 1) p (1 - p) (1 - 2 t) ce),

    about a dozen element-wise passes where autograd replays every operation of the
    formula. Not differentiable twice (``once_differentiable``)."""

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, alpha: float | None, gamma: float) -> Tensor:
        loss, p, one_minus_p, ce, q, weight, alpha_t = _focal(x, t, alpha, gamma)
        ctx.gamma = gamma
        ctx.save_for_backward(t, p, one_minus_p, ce, q, weight, alpha_t)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        t, p, one_minus_p, ce, q, weight, alpha_t = ctx.saved_tensors
        gamma = ctx.gamma
        grad_x = (p - t).mul_(weight)
        slope = (p * one_minus_p).mul_(1 - 2 * t).mul_(ce)
        if gamma != 1:
            slope.mul_(q if gamma == 2 else q ** (gamma - 1))
        grad_x.add_(slope, alpha=gamma)
        grad_x.mul_(grad)
        if alpha_t is not None:
            grad_x.mul_(alpha_t)
        return grad_x, None, None, None


class SigmoidFocalLoss(FunctionLoss, function=sigmoid_focal_loss, call_args=("inputs", "targets")):
    """Module form of :func:`sigmoid_focal_loss`: stores ``alpha``, ``gamma``,
    ``reduction`` and ``validate``; ``forward(inputs, targets)``.

    Shape:
        - inputs: any shape; targets: the same.
        - output: ``[]``, or the inputs' shape with ``reduction="none"``.

    Example:
        >>> loss = SigmoidFocalLoss(alpha=None, gamma=0.0, reduction="sum")
        >>> loss(torch.zeros(2), torch.tensor([1.0, 0.0]))  # plain BCE: 2 log 2
        tensor(1.3863)
    """
