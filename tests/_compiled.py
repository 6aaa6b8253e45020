"""Run a test module on both CPU paths: the compiled loops (where Numba is installed) and
the NumPy / torch fallback. In the module::

    @pytest.fixture(scope="module", autouse=True, params=CPU_PATHS)
    def cpu_path(request):
        yield from use_compiled(the_module, request.param)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from types import ModuleType

import pytest

HAS_NUMBA = importlib.util.find_spec("numba") is not None

CPU_PATHS = [
    pytest.param(
        True, id="compiled", marks=pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
    ),
    pytest.param(False, id="fallback"),
]


def use_compiled(module: ModuleType, compiled: bool) -> Iterator[bool]:
    """Set ``module._COMPILED`` for the duration of a fixture."""
    saved = module._COMPILED
    module._COMPILED = compiled
    yield compiled
    module._COMPILED = saved
