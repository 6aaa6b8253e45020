"""The public names that the convention and docstring tests walk over."""

from __future__ import annotations

import importlib
import inspect

PUBLIC_MODULES = (
    "detloss",
    "detloss.losses",
    "detloss.match",
    "detloss.postprocess",
    "detloss.costs",
    "detloss.metrics",
)


def public_names() -> dict[str, object]:
    """Every public name of the modules above, once (the first module that exports it)."""
    found: dict[str, object] = {}
    seen: set[int] = set()
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.ismodule(value) or id(value) in seen:
                continue
            seen.add(id(value))
            found[name] = value
    return found
