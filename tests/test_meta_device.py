"""The accelerator code paths, without an accelerator: every public loss and matcher on the
``meta`` device.

A meta tensor has a shape, a dtype and a device but no values, and it is not a CPU tensor,
so every function takes the branches it takes on a GPU. Any read of values on the host
raises there: ``.item()``, ``bool(tensor)``, ``.tolist()``, ``nonzero``, ``unique``,
``bincount``, boolean indexing, a copy to the CPU. A call (and its backward) that completes
on meta therefore contains none of the device-to-host synchronisations that would stall a
GPU, and this runs in every CPU test run. The calls with a documented host step
(``known_sync``) must still raise here: when one is removed, this test asks for its entry
to go. The CUDA tests (``test_cuda.py``) check the same list under CUDA's own sync guard
where a GPU is present, which also catches blocking host-to-device copies.
"""

from __future__ import annotations

import pytest
import torch

from _device_cases import CASES, box_target_list, move
from detloss.batching import pad_targets
from detloss.match.matching import Matching

# What a value read on a meta tensor raises, depending on the operator.
VALUE_READ = (RuntimeError, NotImplementedError)


def _call_on_meta(name: str) -> None:
    call, inputs = CASES[name].build(torch.Generator().manual_seed(0))
    inputs = move(inputs, "meta")
    grads = [g.requires_grad_() for g in inputs.get("grad", [])]
    out = call(inputs)
    if isinstance(out, Matching):
        assert out.pred_to_target.device.type == "meta"
    elif not isinstance(out, tuple) and grads:
        for grad in torch.autograd.grad(out, grads):
            assert grad.device.type == "meta"


@pytest.mark.parametrize(
    "name", [name for name, case in CASES.items() if not case.host_step and not case.known_sync]
)
def test_runs_without_reading_device_values(name):
    _call_on_meta(name)


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.known_sync])
def test_documented_host_reads_are_still_there(name):
    with pytest.raises(VALUE_READ):
        _call_on_meta(name)


def test_meta_catches_a_host_read():
    x = torch.ones(3, device="meta")
    for read in (lambda: bool(x.any()), lambda: x.nonzero(), lambda: x.tolist()):
        with pytest.raises(VALUE_READ):
            read()


def test_pad_targets_on_meta():
    targets = move(box_target_list(torch.Generator().manual_seed(0), (2, 0, 3), 3), "meta")
    out = pad_targets(targets)
    assert out["mask"].device.type == "meta"
    assert out["boxes"].shape == (3, 3, 4)
