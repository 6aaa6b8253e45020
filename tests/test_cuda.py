"""CUDA: every public loss and matcher against its CPU values, and without host syncs.

Two checks per case:

* ``test_cuda_equals_cpu``: the same float32 inputs on CUDA and on the CPU give the same
  loss (or matching) and the same input gradients, up to float32 rounding.
* ``test_no_host_sync``: on CUDA the call and its backward run under
  ``torch.cuda.set_sync_debug_mode("error")``, so any device-to-host read (``.item()``,
  ``bool(tensor)``, ``nonzero``, ``unique``, ``bincount``, a blocking host-to-device copy
  such as ``torch.tensor(list, device="cuda")``) raises. Inputs are moved to the device
  before the guarded region. The Hungarian and point matchers solve on the host by design
  (scipy): their losses are checked with the matching computed beforehand. Host syncs
  that are known and not yet removed are marked xfail with their source.

Every test here is marked ``cuda``; without a CUDA device the conftest skips them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from _device_cases import CASES, Case, box_target_list, move
from detloss.batching import pad_targets
from detloss.match.matching import Matching

pytestmark = pytest.mark.cuda


@contextmanager
def no_host_sync() -> Iterator[None]:
    """Any synchronising CUDA operation inside raises a RuntimeError."""
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _run(case: Case, device: str, guard: bool) -> list[torch.Tensor]:
    """Outputs (loss or matching tensors) and input gradients, moved to the CPU."""
    call, inputs = case.build(torch.Generator().manual_seed(0))
    inputs = move(inputs, device)
    grads = [g.requires_grad_() for g in inputs.get("grad", [])]
    context = no_host_sync() if guard else torch.enable_grad()
    with context:
        out = call(inputs)
        if isinstance(out, Matching):
            tensors = [out.pred_to_target, out.target_mask]
            tensors += [] if out.plan is None else [out.plan]
        elif isinstance(out, tuple):
            tensors = list(out)
        else:
            tensors = [out]
            if grads:
                tensors += list(torch.autograd.grad(out, grads))
    return [t.detach().cpu() for t in tensors]


@pytest.mark.parametrize("name", list(CASES))
def test_cuda_equals_cpu(name):
    case = CASES[name]
    cpu = _run(case, "cpu", guard=False)
    cuda = _run(case, "cuda", guard=False)
    for i, (a, b) in enumerate(zip(cuda, cpu, strict=True)):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, i=i: f"{i}: {m}")
        else:
            assert torch.equal(a, b), f"{name}: output {i} differs between CUDA and the CPU"


def _sync_cases():
    for name, case in CASES.items():
        marks = []
        if case.host_step:
            marks.append(pytest.mark.skip(reason="documented host step (scipy)"))
        elif case.known_sync:
            marks.append(pytest.mark.xfail(reason=case.known_sync, raises=RuntimeError))
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_sync_cases()))
def test_no_host_sync(name):
    _run(CASES[name], "cuda", guard=True)


def test_guard_catches_a_sync():
    """The guard is live: a device-to-host read inside it raises."""
    x = torch.ones(3, device="cuda")
    with pytest.raises(RuntimeError, match="synchroniz"), no_host_sync():
        bool(x.any())


def test_pad_targets_no_host_sync():
    """Per-image targets already on the device are padded without a sync (the mask is
    written by fill kernels, not copied from a host list of counts)."""
    targets = move(box_target_list(torch.Generator().manual_seed(0), (2, 0), 3), "cuda")
    with no_host_sync():
        out = pad_targets(targets)
    assert out["mask"].sum().item() == 2
