"""Numba's ``njit`` as the compiled CPU loops use it. Importing this module imports
Numba: only the kernel modules do, and they are imported on first use."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numba

__all__ = ["jit"]

F = TypeVar("F", bound=Callable)


def jit(function: F, *, ieee_division: bool = False) -> F:
    """``function`` compiled on its first call for each argument type (nopython, without
    the GIL), and cached on disk where Numba finds a writable place (next to the module,
    else the user's cache directory). Where it finds none, Numba refuses ``cache=True``
    at definition time; such an install compiles in every process instead of failing.

    ``ieee_division``: a division by zero gives inf or NaN (NumPy's error model) instead
    of raising, which spares each division a branch and lets loops with divisions run on
    vector registers."""
    options = {"nogil": True, "error_model": "numpy" if ieee_division else "python"}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:
        return numba.njit(**options)(function)
