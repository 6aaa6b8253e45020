"""Reductions shared by every loss."""

from __future__ import annotations

from torch import Tensor

from .._checks import check_reduction

__all__ = ["reduce_loss"]


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """Apply ``"none" | "mean" | "sum"``; the mean of an empty tensor is a zero that keeps
    the autograd graph (never NaN)."""
    check_reduction(reduction)
    if reduction == "none":
        return loss
    if reduction == "sum" or loss.numel() == 0:
        return loss.sum()
    return loss.mean()
