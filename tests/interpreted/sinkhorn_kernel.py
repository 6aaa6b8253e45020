"""The fused Sinkhorn block (``detloss._kernels.sinkhorn_cuda``) under Triton's interpreter,
against the torch path of ``_Solver.scaling_block``.

Run by tests/match/test_sinkhorn_kernel.py in a child process with ``TRITON_INTERPRET=1``, on
small problems (the interpreter is slow) with tiles of 16 predictions, so that a block
spans several tiles and a partial last one. Off CUDA the kernel runs one program per
image (the parts' barrier needs programs running side by side; the CUDA tests cover it).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run under TRITON_INTERPRET=1 (see tests/_triton.py)", allow_module_level=True)

from _sinkhorn_cases import (
    F64,
    assert_matchings_close,
    make_problem,
    quiet,
    sinkhorn_module,
    solver_after,
    tolerances,
)
from detloss._kernels import sinkhorn_cuda as _sinkhorn_kernel
from detloss.match.sinkhorn_solver import _Solver


@pytest.fixture
def kernel(monkeypatch):
    """The kernel module with tiles of 16 predictions; NumPy's warnings off (the
    masked-off lanes divide 0 by 0)."""
    monkeypatch.setattr(_sinkhorn_kernel, "_TILE", {torch.float32: 256, torch.float64: 256})
    with np.errstate(all="ignore"):
        yield _sinkhorn_kernel


BLOCK_CASES = [
    ("balanced", F64, {"reg": 0.05}),
    ("balanced", torch.float32, {"reg": 0.05}),
    ("relaxed", F64, {"reg": 0.05, "tau_pred": 0.5, "tau_target": 0.05}),
    ("relaxed, reg per image", torch.float32, {"tau_pred": 1.0, "tau_target": 0.1}),
    ("free targets", F64, {"reg": 0.1, "tau_target": 0.0}),
    ("free predictions", torch.float32, {"reg": 0.1, "tau_pred": 0.0, "tau_target": math.inf}),
]


@pytest.mark.parametrize(
    ("dtype", "options"), [pytest.param(*c[1:], id=f"{c[0]}, {c[1]}") for c in BLOCK_CASES]
)
def test_interpreted_block_equals_torch_block(kernel, monkeypatch, dtype, options):
    # The solver's state after a few CPU iterations (the torch path); reg is per image
    # where it is not given, as pred_mask is. Image 1 has no targets, image 2 no
    # predictions.
    problem = make_problem(0, b=3, m=20, dtype=dtype)
    solver = solver_after(monkeypatch, **problem, **options, max_iter=4, tol=0)
    assert kernel.supports(solver.kernel_t)
    solver.fused = None
    want = solver.scaling_block(2, True)
    solver.fused = kernel
    got = solver.scaling_block(2, True)
    for name, g, w in zip(("u", "v", "residual", "spread"), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        # The image without predictions has NaN scalings on both paths.
        torch.testing.assert_close(g, w, equal_nan=True, msg=name, **tolerances(dtype))
    scalings = torch.cat([got[0], got[1]], 1)[:2]
    valid = torch.cat([solver.row_valid, solver.col_valid], 1)[:2]
    assert torch.isfinite(scalings[valid]).all()
    assert got[3] > 0


def test_interpreted_block_propagates_nan(kernel, monkeypatch):
    # A NaN scaling of a real prediction makes the spread NaN (the block is then redone),
    # as on the torch path.
    solver = solver_after(monkeypatch, **make_problem(3, b=3, m=20), reg=0.1, max_iter=2)
    solver.kernel_t[0, :, 0] = torch.nan  # prediction 0 of image 0 is real
    for fused in (None, kernel):
        solver.fused = fused
        u, _, res, spread = solver.scaling_block(1, True)
        assert u[0, 0].isnan() and spread.isnan() and res[0].isnan(), fused
        assert not res[1].isnan()


def _fused_on_cpu(monkeypatch, module) -> None:
    """Make ``sinkhorn`` use ``module``'s fused block on the CPU."""
    monkeypatch.setattr(
        sinkhorn_module, "_fused_block", lambda t: module if module.supports(t) else None
    )


@pytest.mark.parametrize(
    ("dtype", "options"),
    [
        (F64, {"reg": 0.05, "max_iter": 12, "tol": 0.0, "check_every": 5, "eps_scaling": 1}),
        (torch.float32, {"tau_pred": 1.0, "tau_target": 0.1, "max_iter": 12, "check_every": 4}),
    ],
)
def test_interpreted_sinkhorn_equals_torch_path(kernel, monkeypatch, dtype, options):
    problem = make_problem(1, b=3, m=21, n=4, dtype=dtype)
    want = quiet(**problem, **options)
    _fused_on_cpu(monkeypatch, kernel)
    got = quiet(**problem, **options)
    assert_matchings_close(got, want, dtype)
    assert torch.equal(got.pred_to_target, want.pred_to_target)


def test_interpreted_blow_up_falls_back_to_the_log_domain(kernel, monkeypatch):
    # As test_small_reg_falls_back_to_the_log_domain: the unbalanced scalings jump by more
    # than exp(20) within a block; the fused block's spread must say so.
    calls = []
    log_block = _Solver.log_block

    def spy(self, *args):
        calls.append(args)
        return log_block(self, *args)

    gen = torch.Generator().manual_seed(0)
    cost = torch.rand(1, 8, 3, generator=gen)
    background = torch.rand(1, 8, generator=gen)
    options = {"tau_pred": 1.0, "tau_target": 0.01, "reg": 1e-3, "max_iter": 40}
    want = quiet(cost=cost, background_cost=background, **options)
    _fused_on_cpu(monkeypatch, kernel)
    monkeypatch.setattr(_Solver, "log_block", spy)
    got = quiet(cost=cost, background_cost=background, **options)
    assert calls, "expected at least one log-domain block"
    torch.testing.assert_close(got.plan, want.plan, atol=1e-5, rtol=1e-4)
