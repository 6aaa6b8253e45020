"""Classification primitives used as matched-loss terms."""

from __future__ import annotations

from torch import Tensor

from .._checks import (
    check_finite,
    check_shape,
    check_tensor,
    compute_dtype,
    output_dtype,
    shape_str,
    should_validate,
)
from ._reduction import reduce_loss

__all__ = ["negative_prob"]


def negative_prob(
    logits: Tensor, labels: Tensor, reduction: str = "none", *, validate: bool | None = None
) -> Tensor:
    """DETR's class cost used as a loss: ``-softmax(logits)[label]``.

    Args:
        logits: ``Tensor[..., C]``.
        labels: ``int64[...]`` in ``0..C-1``.
        validate: scan the inputs for NaN and inf first (a ValueError naming the argument;
            one host synchronisation); None (default) scans on the CPU only.

    Half-precision and integer logits are computed in float32; the result has the logits'
    floating dtype (float32 for integers).
    """
    if should_validate(validate, logits):
        check_finite(("logits", logits))
    check_shape(logits, "logits", min_ndim=1, expected="[..., C]")
    check_tensor(labels, "labels")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels: expected shape {shape_str(logits.shape[:-1])}, got {shape_str(labels.shape)}"
        )
    if labels.is_floating_point():
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    x = logits.to(compute_dtype(logits))
    prob = x.softmax(dim=-1).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    # Returned in the logits' dtype, like the other primitives.
    return reduce_loss(-prob, reduction).to(output_dtype(logits))
