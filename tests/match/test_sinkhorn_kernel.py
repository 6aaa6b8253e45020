"""The fused Sinkhorn block (``detloss._kernels.sinkhorn_cuda``, Triton): its logic under
Triton's interpreter on the CPU (tests/interpreted/sinkhorn_kernel.py, in a child process;
skipped where Triton is not installed), its size rule, and on CUDA the compiled kernel
against the CPU and against the torch path on the GPU.
"""

from __future__ import annotations

import sys

import pytest
import torch

from _device_cases import move
from _sinkhorn_cases import F64, make_problem, quiet, sinkhorn_module, solver_after
from _triton import run_interpreted
from detloss._kernels import reference_path


def test_kernel_under_triton_interpreter():
    run_interpreted("sinkhorn_kernel.py")


def test_size_rule():
    pytest.importorskip("triton")
    from detloss._kernels import sinkhorn_cuda as interpreted

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
    monkeypatch.delitem(sys.modules, "detloss._kernels.sinkhorn_cuda", raising=False)
    assert sinkhorn_module._fused_block(torch.ones(2, 3, 4)) is None
    m = quiet(**make_problem(2), max_iter=5)
    assert torch.isfinite(m.plan).all()


# -- CUDA -----------------------------------------------------------------------------------


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
    pytest.param(lambda s: make_problem(s, dtype=torch.float32), {}, id="small"),
    pytest.param(lambda s: make_problem(s), {"tau_pred": 1.0, "tau_target": 0.1}, id="small-f64"),
    pytest.param(lambda s: make_problem(s, m=300, n=40), {"reg": 0.03, "eps_scaling": 2}, id="f64"),
]


@pytest.mark.cuda
@pytest.mark.parametrize(("make", "options"), CUDA_CASES)
@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_cuda_fused_equals_cpu_and_torch_path(monkeypatch, make, options, tol):
    pytest.importorskip("triton")
    from detloss._kernels import sinkhorn_cuda as _sinkhorn_kernel

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
    fused = quiet(**move(problem, "cuda"), **options)
    assert calls, "the fused block did not run"
    cpu = quiet(**problem, **options)
    with reference_path():
        torch_path = quiet(**move(problem, "cuda"), **options)
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
    problem = move(make_problem(6, dtype=torch.float32), "cuda")
    solver = solver_after(monkeypatch, **problem, tau_pred=1.0, tau_target=0.1, max_iter=3)
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
