"""Classification primitives used as matched-loss terms."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_shape, check_tensor, shape_str
from ._reduction import reduce_loss

__all__ = ["negative_prob"]


def negative_prob(logits: Tensor, labels: Tensor, reduction: str = "none") -> Tensor:
    """DETR's class cost used as a loss: ``-softmax(logits)[label]``.

    Args:
        logits: ``Tensor[..., C]``.
        labels: ``int64[...]`` in ``0..C-1``.
    """
    check_shape(logits, "logits", min_ndim=1, expected="[..., C]")
    check_tensor(labels, "labels")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels: expected shape {shape_str(logits.shape[:-1])}, got {shape_str(labels.shape)}"
        )
    if labels.is_floating_point():
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    prob = x.softmax(dim=-1).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return reduce_loss(-prob, reduction)
