"""Modules that need an optional dependency, imported on first use, and the lazy form of
``torch.compiler.disable`` (whose import of ``torch._dynamo`` takes about a second)."""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import torch

__all__ = ["host_step", "optional_module", "required_module"]

F = TypeVar("F", bound=Callable[..., Any])


@functools.cache
def optional_module(name: str) -> ModuleType | None:
    """The module ``name`` (absolute), imported on first use, or None where a dependency
    it imports is not installed: Triton for the GPU kernels (PyTorch's CPU wheels have
    none), Numba for the compiled CPU loops."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def required_module(name: str, missing: str) -> ModuleType:
    """The module ``name`` (absolute), imported; where it or a dependency it imports is
    not installed, an ImportError with the message ``missing`` (who needs it, and how to
    install it)."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(missing) from err


def host_step(function: F) -> F:
    """``function`` kept out of ``torch.compile`` graphs: a host step (scipy, a loop on
    the CPU) that tracing would only split the caller's graph around.

    ``torch.compiler.disable`` imports ``torch._dynamo`` when it is applied, which would
    cost every ``import detloss`` about a second. Nothing can be compiled before
    ``torch._dynamo`` is loaded, so until then the function is called as it is; once it
    is loaded, a call made while Dynamo traces goes through ``torch.compiler.disable``
    (it breaks the graph there, then skips the function), and other calls, in eager
    code, call the function directly.
    """
    disabled: Callable[..., Any] | None = None

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal disabled
        # Outside tracing, the wrapper of torch.compiler.disable costs microseconds per
        # call (the assignment's whole host overhead at DETR size): call the function.
        if "torch._dynamo" not in sys.modules or not torch.compiler.is_compiling():
            return function(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(function)
        return disabled(*args, **kwargs)

    return call  # type: ignore[return-value]
