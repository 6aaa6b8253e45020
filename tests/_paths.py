"""Run a test module on both paths of an algorithm: its fast path (compiled loops where
Numba is installed, host strategies) and its torch / NumPy reference path. In the module::

    @pytest.fixture(scope="module", autouse=True, params=PATHS)
    def path(request):
        yield from use_path(request.param)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from detloss._kernels import reference_path

HAS_NUMBA = importlib.util.find_spec("numba") is not None

PATHS = [
    pytest.param(True, id="fast", marks=pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")),
    pytest.param(False, id="reference"),
]


def use_path(fast: bool) -> Iterator[bool]:
    """Force the reference path (``fast=False``) or allow the fast paths for the duration
    of a fixture."""
    with reference_path(not fast):
        yield fast
