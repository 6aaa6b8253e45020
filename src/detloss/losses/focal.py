"""Sigmoid focal loss (Lin et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import (
    check_finite,
    check_reduction,
    check_tensor,
    compute_dtype,
    output_dtype,
    shape_str,
    should_validate,
)
from ._reduction import reduce_loss

__all__ = ["SigmoidFocalLoss", "sigmoid_focal_loss"]


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
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
        reduction: ``"none"`` (default, as torchvision), ``"mean"`` or ``"sum"``.
        validate: scan the inputs for NaN and inf first (a ValueError naming the argument;
            one host synchronisation); None (default) scans on the CPU only.

    Values equal torchvision's ``sigmoid_focal_loss``. Half-precision and integer inputs
    are computed in float32 and returned in their floating dtype (float32 for integers).
    """
    if should_validate(validate, inputs):
        check_finite(("inputs", inputs), ("targets", targets))
    check_tensor(inputs, "inputs")
    check_tensor(targets, "targets")
    check_reduction(reduction)
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
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    one_minus_pt = 1 - (p * t + (1 - p) * (1 - t))
    if gamma != 0:
        ce = ce * one_minus_pt.clamp(min=torch.finfo(x.dtype).tiny) ** gamma
    if alpha is not None:
        ce = (alpha * t + (1 - alpha) * (1 - t)) * ce
    return reduce_loss(ce, reduction).to(out)


class SigmoidFocalLoss(nn.Module):
    """Module form of :func:`sigmoid_focal_loss` (default reduction ``"mean"``)."""

    def __init__(
        self,
        alpha: float | None = 0.25,
        gamma: float = 2.0,
        reduction: str = "mean",
        *,
        validate: bool | None = None,
    ):
        super().__init__()
        check_reduction(reduction)
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction
        self.validate = validate

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return sigmoid_focal_loss(
            inputs, targets, self.alpha, self.gamma, self.reduction, validate=self.validate
        )
