"""The fused scaling block (``detloss.match._sinkhorn_kernel``, Triton) against the torch
path of ``_Solver.scaling_block``.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors: a private copy of
the module is loaded with ``TRITON_INTERPRET=1`` (``triton.jit`` picks the interpreter when
the module is imported), on small problems, as the interpreter is slow. The CUDA tests
compare the compiled kernel with the CPU and with the torch path on the GPU.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from detloss.match.sinkhorn import SinkhornConvergenceWarning, _Solver, sinkhorn

# The module (the package's ``sinkhorn`` attribute is the function).
sinkhorn_module = importlib.import_module("detloss.match.sinkhorn")
F64 = torch.float64
KERNEL_PATH = Path(sinkhorn_module.__file__).with_name("_sinkhorn_kernel.py")


def _tolerances(dtype: torch.dtype) -> dict[str, float]:
    # float32: the sums run in another order, ~1e-7 relative per iteration.
    return {"rtol": 1e-9, "atol": 1e-12} if dtype == F64 else {"rtol": 1e-4, "atol": 1e-6}


def _problem(
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


def _quiet(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SinkhornConvergenceWarning)
        return sinkhorn(**kwargs)


def _solver_after(monkeypatch, **kwargs) -> _Solver:
    """The ``_Solver`` of a ``sinkhorn`` call, in its state after the run."""
    solvers = []
    init = _Solver.__init__

    def spy(self, *args):
        init(self, *args)
        solvers.append(self)

    monkeypatch.setattr(_Solver, "__init__", spy)
    _quiet(**kwargs)
    monkeypatch.setattr(_Solver, "__init__", init)
    return solvers[-1]


def _assert_matchings_close(got, want, dtype: torch.dtype) -> None:
    torch.testing.assert_close(got.plan.cpu(), want.plan.cpu(), **_tolerances(dtype))
    for p, q in zip(got.potentials, want.potentials):
        # Potentials are in cost units, reg times the log of the scalings.
        torch.testing.assert_close(p.cpu(), q.cpu(), **_tolerances(dtype))


# -- the interpreter ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def interpreted():
    """A private copy of the kernel module whose kernels run in Triton's interpreter."""
    pytest.importorskip("triton")
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        spec = importlib.util.spec_from_file_location(
            "_detloss_sinkhorn_kernel_interpreted", KERNEL_PATH
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return module


@pytest.fixture
def kernel(interpreted, monkeypatch):
    """The interpreted module with tiles of 16 predictions (several tiles, a partial last
    one, on small problems), numpy's warnings off (the masked-off lanes divide 0 by 0)."""
    from triton.runtime import interpreter

    # The interpreter passes a kernel's int arguments as one-element arrays and turns them
    # into loop bounds with int(), which numpy >= 2.4 refuses: use .item().
    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_tensor is not None:

        def patched(tensor, scope):
            patch_tensor(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

        monkeypatch.setattr(interpreter, "_patch_lang_tensor", patched)
    # The interpreter reduces with a Python call per element unless the combine is one of
    # triton's own; the kernel's sums (its own combine, see the module) go to numpy.
    reduce_ops = getattr(interpreter, "ReduceOps", None)
    if reduce_ops is not None and hasattr(reduce_ops, "sum"):
        apply_impl = reduce_ops.apply_impl

        def fast_sum(self, input):
            if self.combine_fn is interpreted._add:
                return self.sum(input[0])
            return apply_impl(self, input)

        monkeypatch.setattr(reduce_ops, "apply_impl", fast_sum)
    monkeypatch.setattr(interpreted, "_TILE", {torch.float32: 256, torch.float64: 256})
    with np.errstate(all="ignore"):
        yield interpreted


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
    problem = _problem(0, b=3, m=20, dtype=dtype)
    solver = _solver_after(monkeypatch, **problem, **options, max_iter=4, tol=0)
    assert kernel.supports(solver.kernel_t)
    solver.fused = None
    want = solver.scaling_block(2, True)
    solver.fused = kernel
    got = solver.scaling_block(2, True)
    for name, g, w in zip(("u", "v", "residual", "spread"), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        # The image without predictions has NaN scalings on both paths.
        torch.testing.assert_close(g, w, equal_nan=True, msg=name, **_tolerances(dtype))
    scalings = torch.cat([got[0], got[1]], 1)[:2]
    valid = torch.cat([solver.row_valid, solver.col_valid], 1)[:2]
    assert torch.isfinite(scalings[valid]).all()
    assert got[3] > 0


def test_interpreted_block_propagates_nan(kernel, monkeypatch):
    # A NaN scaling of a real prediction makes the spread NaN (the block is then redone),
    # as torch's amax does; the compiled tl.max would drop it.
    solver = _solver_after(monkeypatch, **_problem(3, b=3, m=20), reg=0.1, max_iter=2)
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
    problem = _problem(1, b=3, m=21, n=4, dtype=dtype)
    want = _quiet(**problem, **options)
    _fused_on_cpu(monkeypatch, kernel)
    got = _quiet(**problem, **options)
    _assert_matchings_close(got, want, dtype)
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
    want = _quiet(cost=cost, background_cost=background, **options)
    _fused_on_cpu(monkeypatch, kernel)
    monkeypatch.setattr(_Solver, "log_block", spy)
    got = _quiet(cost=cost, background_cost=background, **options)
    assert calls, "expected at least one log-domain block"
    torch.testing.assert_close(got.plan, want.plan, atol=1e-5, rtol=1e-4)


def test_size_rule(interpreted):
    supports = interpreted.supports
    meta = {"device": "meta"}
    assert supports(torch.empty(2, 101, 900, **meta))
    assert supports(torch.empty(2, interpreted.MAX_ROWS, 8192, dtype=F64, **meta))
    assert not supports(torch.empty(2, interpreted.MAX_ROWS + 1, 16, **meta))
    assert not supports(torch.empty(2, 512, 8193, **meta))  # M (N + 1) > 2^22
    assert not supports(torch.empty(2, 101, 900, dtype=torch.float16, **meta))
    assert not supports(torch.empty(2, 101, 0, **meta))


def test_cpu_never_imports_triton(monkeypatch):
    # The CPU path keeps the torch iterations and works without triton.
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton raises ImportError
    monkeypatch.delitem(sys.modules, "detloss.match._sinkhorn_kernel", raising=False)
    assert sinkhorn_module._fused_block(torch.ones(2, 3, 4)) is None
    m = _quiet(**_problem(2), max_iter=5)
    assert torch.isfinite(m.plan).all()


# -- CUDA -----------------------------------------------------------------------------------


def _cuda(problem: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.cuda() for k, v in problem.items()}


def _dino(seed: int) -> dict[str, torch.Tensor]:
    """DINO's size: 16 images, 900 queries, up to 100 targets (one image without any)."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 101, (16,), generator=gen)
    counts[3] = 0
    return {
        "cost": torch.rand(16, 900, 100, generator=gen),
        "target_mask": torch.arange(100)[None, :] < counts[:, None],
    }


CUDA_CASES = [
    pytest.param(_dino, {"tau_pred": 1e3, "tau_target": 1e-3, "background_cost": 0.5}, id="dino"),
    pytest.param(_dino, {"reg": 0.05}, id="dino-balanced"),
    pytest.param(lambda s: _problem(s, dtype=torch.float32), {}, id="small"),
    pytest.param(lambda s: _problem(s), {"tau_pred": 1.0, "tau_target": 0.1}, id="small-f64"),
    pytest.param(lambda s: _problem(s, m=300, n=40), {"reg": 0.03, "eps_scaling": 2}, id="f64"),
]


@pytest.mark.cuda
@pytest.mark.parametrize(("make", "options"), CUDA_CASES)
@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_cuda_fused_equals_cpu_and_torch_path(monkeypatch, make, options, tol):
    pytest.importorskip("triton")
    from detloss.match import _sinkhorn_kernel

    problem = make(5)
    dtype = problem["cost"].dtype
    options = {"max_iter": 70, "tol": tol, **options}
    kernel_t = torch.empty(2, 101, 900, device="cuda", dtype=dtype)
    assert sinkhorn_module._fused_block(kernel_t) is _sinkhorn_kernel
    calls = []
    block = _sinkhorn_kernel.scaling_block

    def spy(*args):
        calls.append(args[-1])
        return block(*args)

    monkeypatch.setattr(_sinkhorn_kernel, "scaling_block", spy)
    fused = _quiet(**_cuda(problem), **options)
    assert calls, "the fused block did not run"
    cpu = _quiet(**problem, **options)
    monkeypatch.setattr(sinkhorn_module, "_FUSED", False)
    torch_path = _quiet(**_cuda(problem), **options)
    tolerances = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}
    for want in (cpu, torch_path):
        torch.testing.assert_close(fused.plan.cpu(), want.plan.cpu(), **tolerances)
        # The argmax agrees wherever the row's top two entries are apart.
        top = want.plan.cpu().topk(2, dim=2).values
        clear = top[..., 0] - top[..., 1] > 1e-3 * top[..., 0]
        p2t = fused.pred_to_target.cpu()
        assert torch.equal(p2t[clear], want.pred_to_target.cpu()[clear])


@pytest.mark.cuda
def test_cuda_fused_block_has_no_host_sync(monkeypatch):
    pytest.importorskip("triton")
    problem = _cuda(_problem(6, dtype=torch.float32))
    solver = _solver_after(monkeypatch, **problem, tau_pred=1.0, tau_target=0.1, max_iter=3)
    assert solver.fused is not None
    solver.scaling_block(10, True)  # compiled outside the guard
    solver.scaling_block(10, False)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        solver.scaling_block(10, True)
        solver.scaling_block(10, False)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
