"""Modules that need an optional dependency, imported on first use."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

__all__ = ["optional_module"]


@functools.cache
def optional_module(name: str) -> ModuleType | None:
    """The module ``name`` (absolute), imported on first use, or None where a dependency
    it imports is not installed: Triton for the GPU kernels (PyTorch's CPU wheels have
    none), Numba for the compiled CPU loops."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
