"""Shared inputs and checks of the Sinkhorn kernel tests (tests/match/test_sinkhorn_kernel.py on
CUDA, tests/interpreted/sinkhorn_kernel.py under Triton's interpreter)."""

from __future__ import annotations

import importlib
import warnings

import torch

from detloss.match.sinkhorn import SinkhornConvergenceWarning, sinkhorn
from detloss.match.sinkhorn_solver import _Solver

# The solver's module, whose _fused_block the kernel tests patch.
sinkhorn_module = importlib.import_module("detloss.match.sinkhorn_solver")
F64 = torch.float64


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    # float32: the sums run in another order, ~1e-7 relative per iteration.
    return {"rtol": 1e-9, "atol": 1e-12} if dtype == F64 else {"rtol": 1e-4, "atol": 1e-6}


def make_problem(
    seed: int, b: int = 4, m: int = 37, n: int = 5, dtype: torch.dtype = F64
) -> dict[str, torch.Tensor]:
    """A cost with random masks; image 1 has no targets, image 2 no predictions."""
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(b, m, n, generator=gen, dtype=F64).to(dtype)
    target_mask = torch.rand(b, n, generator=gen) < 0.7
    pred_mask = torch.rand(b, m, generator=gen) < 0.8
    target_mask[0, 0] = pred_mask[0, 0] = True
    target_mask[1] = False
    pred_mask[2] = False
    return {"cost": cost, "target_mask": target_mask, "pred_mask": pred_mask}


def quiet(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SinkhornConvergenceWarning)
        return sinkhorn(**kwargs)


def solver_after(monkeypatch, **kwargs) -> _Solver:
    """The ``_Solver`` of a ``sinkhorn`` call, in its state after the run (its kernel kept:
    the plan is formed over it)."""
    solvers = []
    init, plan = _Solver.__init__, _Solver.plan

    def spy(self, *args):
        init(self, *args)
        solvers.append(self)

    def keep_kernel(self, *args):
        kernel = self.kernel_t.clone()
        result = plan(self, *args)
        self.kernel_t = kernel
        return result

    monkeypatch.setattr(_Solver, "__init__", spy)
    monkeypatch.setattr(_Solver, "plan", keep_kernel)
    quiet(**kwargs)
    monkeypatch.setattr(_Solver, "__init__", init)
    monkeypatch.setattr(_Solver, "plan", plan)
    return solvers[-1]


def assert_matchings_close(got, want, dtype: torch.dtype) -> None:
    torch.testing.assert_close(got.plan.cpu(), want.plan.cpu(), **tolerances(dtype))
    for p, q in zip(got.potentials, want.potentials):
        # Potentials are in cost units, reg times the log of the scalings.
        torch.testing.assert_close(p.cpu(), q.cpu(), **tolerances(dtype))
