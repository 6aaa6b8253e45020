"""The input checks that every element-wise loss of two tensors starts with."""

from __future__ import annotations

from torch import Tensor

from .._checks import check_finite, check_reduction, check_tensor, should_validate

__all__ = ["check_pair"]


def check_pair(
    first: tuple[str, Tensor], second: tuple[str, Tensor], reduction: str, validate: bool | None
) -> None:
    """Check a loss's two ``(name, tensor)`` inputs and its ``reduction``: with
    ``validate`` (None: on the CPU only) a scan of both for NaN and inf, then each must be
    a real tensor, and ``reduction`` one of ``"none" | "mean" | "sum"``; every error names
    the argument."""
    if should_validate(validate, first[1]):
        check_finite(first, second)
    for name, value in (first, second):
        check_tensor(value, name)
    check_reduction(reduction)
