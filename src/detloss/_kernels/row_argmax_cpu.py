"""Compiled row argmax of a CPU plan (Numba; optional).

``torch.argmax`` over a short last dimension (the ``N + 1`` columns of a Sinkhorn or
softmin plan) walks each row with a scalar loop that tracks the index: about 2 ms for
16 x 900 rows of 101 on one core, more than the rest of a cold-start ``sinkhorn`` call's
set-up. This loop does the same in about 1 ms, with ``torch.argmax``'s conventions: the
first of tied maxima, and the first NaN where a row has one.

:func:`scaled_row_argmax` also forms a Sinkhorn plan from its kernel and scalings on the
way, in place: one pass over the plan instead of four (two products, the flush of
rounding dust, the argmax), with the reference's arithmetic, so the plan is the same bit
for bit.
"""

from __future__ import annotations

import numpy as np

from ._numba import jit

__all__ = ["row_argmax", "scaled_row_argmax"]


@jit
def _argmax(row: np.ndarray) -> int:
    """``argmax(row)`` of a non-empty row: the first of tied maxima, the first NaN."""
    best = row[0]
    index = 0
    if best == best:  # not NaN
        for j in range(1, row.shape[0]):
            value = row[j]
            if value > best:
                best = value
                index = j
            elif value != value:
                return j
    return index


@jit
def row_argmax(values: np.ndarray, out: np.ndarray) -> None:
    """``out[r] = argmax(values[r])`` for a C-contiguous ``values [R, C]``, ``C >= 1``."""
    for r in range(values.shape[0]):
        out[r] = _argmax(values[r])


@jit
def scaled_row_argmax(
    plan: np.ndarray, bits: np.ndarray, u: np.ndarray, v: np.ndarray, tiny: float, out: np.ndarray
) -> None:
    """In place, for a C-contiguous kernel ``plan [B, R, C]`` (``C >= 1``) and the
    scalings ``u [B, R]``, ``v [B, C]``: ``plan[b, r, j] = (plan[b, r, j] * v[b, j]) *
    u[b, r]``, entries ``<= tiny`` set to 0 (as ``torch.nn.functional.threshold_``), and
    ``out[b, r]`` the argmax of the row (as :func:`row_argmax`). ``bits`` is ``plan``'s
    memory read as integers of its width (``plan.view(np.int32)`` for float32);
    ``tiny`` (positive) has the plan's dtype, so every operation is in it.

    After the flush a row holds only +0.0, values above ``tiny`` and NaN. Without NaN its
    floats order as their bit patterns read as integers, whose maximum the compiler
    vectorises (a float maximum it may not reorder, for NaN's sake); a row with a NaN
    takes :func:`row_argmax`'s scalar loop."""
    for b in range(plan.shape[0]):
        for r in range(plan.shape[1]):
            if _scale_row(plan[b, r], v[b], u[b, r], tiny):
                out[b, r] = _argmax(plan[b, r])
            else:
                out[b, r] = _argmax_of_bits(bits[b, r])


@jit
def _scale_row(row: np.ndarray, scale_columns: np.ndarray, scale: float, tiny: float) -> int:
    """``row = (row * scale_columns) * scale``, entries ``<= tiny`` set to 0; returns the
    number of NaN."""
    nans = 0
    for j in range(row.shape[0]):
        value = row[j] * scale_columns[j] * scale
        nans += value != value
        row[j] = 0.0 if value <= tiny else value
    return nans


@jit
def _argmax_of_bits(row_bits: np.ndarray) -> int:
    """The first index of the largest of ``row_bits``, in two reductions the compiler
    vectorises."""
    columns = row_bits.shape[0]
    best = row_bits[0]
    for j in range(1, columns):
        best = max(best, row_bits[j])
    index = columns
    for j in range(columns):
        index = min(index, j if row_bits[j] == best else columns)
    return index
