"""Element-wise regression primitives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import output_dtype, shape_str
from ._elementwise import check_pair
from ._module import FunctionLoss
from ._reduction import reduce_loss

__all__ = ["SmoothL1Loss", "smooth_l1_loss"]


def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    beta: float = 1.0,
    reduction: str = "mean",
    *,
    validate: bool | None = None,
) -> Tensor:
    """Smooth-L1 (Huber divided by ``beta``), element-wise on broadcastable tensors.

    ``0.5 * d**2 / beta`` where ``|d| < beta``, else ``|d| - 0.5 * beta``, with
    ``d = input - target``; ``beta = 0`` is the L1 loss. Examples: ``beta = 1`` gives
    0.125 at ``|d| = 0.5`` and 1.5 at ``|d| = 2``; ``beta = 1/9`` gives 0.4444444 at
    ``|d| = 0.5``.

    Args:
        input, target: broadcastable tensors.
        beta: the switch point, ``>= 0``.
        reduction: ``"mean"`` (default) averages the elements, ``"sum"`` adds them,
            ``"none"`` returns them (the broadcast shape).
        validate: scan the inputs for NaN and inf first (a ValueError naming the argument;
            one host synchronisation); None (default) scans on the CPU only.

    Half-precision inputs are computed in float32 and returned in their dtype.

    Shape:
        - input, target: broadcastable, any shape.
        - output: ``[]``, or the broadcast shape with ``reduction="none"``.

    Example:
        >>> smooth_l1_loss(torch.tensor([0.5, 2.0]), torch.zeros(2), reduction="none")
        tensor([0.1250, 1.5000])
        >>> smooth_l1_loss(torch.tensor([0.5, 2.0]), torch.zeros(2))
        tensor(0.8125)
    """
    check_pair(("input", input), ("target", target), reduction, validate)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")
    try:
        shape = torch.broadcast_shapes(input.shape, target.shape)
    except RuntimeError:
        raise ValueError(
            f"target: expected a shape broadcastable with input {shape_str(input.shape)}, "
            f"got {shape_str(target.shape)}"
        ) from None
    out = output_dtype(input, target)
    dtype = torch.float64 if out == torch.float64 else torch.float32
    x = input.to(dtype).expand(shape)
    y = target.to(dtype).expand(shape)
    loss = F.smooth_l1_loss(x, y, reduction="none", beta=float(beta))
    return reduce_loss(loss, reduction).to(out)


class SmoothL1Loss(FunctionLoss, function=smooth_l1_loss, call_args=("input", "target")):
    """Module form of :func:`smooth_l1_loss`: stores ``beta``, ``reduction`` and
    ``validate``; ``forward(input, target)``.

    Shape:
        - input, target: broadcastable, any shape.
        - output: ``[]``, or the broadcast shape with ``reduction="none"``.

    Example:
        >>> SmoothL1Loss(beta=1.0, reduction="sum")(torch.tensor([0.5, 2.0]), torch.zeros(2))
        tensor(1.6250)
    """
