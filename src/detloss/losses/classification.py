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
from ._module import FunctionLoss
from ._reduction import reduce_loss

__all__ = ["NegativeProbLoss", "negative_prob"]


def negative_prob(
    logits: Tensor, labels: Tensor, reduction: str = "mean", *, validate: bool | None = None
) -> Tensor:
    """DETR's class cost used as a loss: ``-softmax(logits)[label]``.

    Args:
        logits: ``Tensor[..., C]``.
        labels: ``int64[...]`` in ``0..C-1``.
        reduction: ``"mean"`` (default) averages the elements, ``"sum"`` adds them,
            ``"none"`` returns one value per label.
        validate: scan the inputs for NaN and inf first (a ValueError naming the argument;
            one host synchronisation); None (default) scans on the CPU only.

    Half-precision and integer logits are computed in float32; the result has the logits'
    floating dtype (float32 for integers).

    Shape:
        - logits: ``[..., C]``.
        - labels: ``[...]``.
        - output: ``[]``, or ``[...]`` with ``reduction="none"``.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0], [0.0, 100.0]])
        >>> negative_prob(logits, torch.tensor([0, 1]), reduction="none")
        tensor([-0.5000, -1.0000])
        >>> negative_prob(logits, torch.tensor([0, 1]))
        tensor(-0.7500)
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


class NegativeProbLoss(FunctionLoss, function=negative_prob, call_args=("logits", "labels")):
    """Module form of :func:`negative_prob`: stores ``reduction`` and ``validate``;
    ``forward(logits, labels)``.

    Shape:
        - logits: ``[..., C]``.
        - labels: ``[...]``.
        - output: ``[]``, or ``[...]`` with ``reduction="none"``.

    Example:
        >>> NegativeProbLoss()(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        tensor(-0.5000)
    """
