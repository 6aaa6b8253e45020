"""Numba's ``njit`` as the compiled CPU loops use it. Importing this module imports
Numba: only the kernel modules do, and they are imported on first use."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numba

__all__ = ["jit"]

F = TypeVar("F", bound=Callable)


def jit(function: F, *, error_model: str = "python") -> F:
    """``function`` compiled on its first call for each argument type (nopython, without
    the GIL), and cached on disk where Numba finds a writable place (next to the module,
    else the user's cache directory). Where it finds none, Numba refuses ``cache=True``
    at definition time; such an install compiles in every process instead of failing.

    ``error_model="numpy"`` makes a float division by zero give inf / NaN as in C
    instead of raising, which also lets loops containing one be vectorised."""
    try:
        return numba.njit(cache=True, nogil=True, error_model=error_model)(function)
    except RuntimeError:
        return numba.njit(nogil=True, error_model=error_model)(function)
