"""The fast paths of detloss, behind one dispatch.

Every algorithm of detloss is written once in readable torch: the reference path, which
states the mathematics and is what accelerators without a kernel run. Where a compiled
loop (Numba on the CPU, Triton on CUDA) or a host-only strategy (sparse gathers that
synchronise, cheap on the CPU) is faster, it lives here, in a module named after the
algorithm and the device (``nms_cpu``, ``sinkhorn_cuda``), and the library asks for it
through :func:`fast_path` (compiled modules) or :func:`fast_path_enabled` (torch
strategies that need no module). The answer is None / False when:

- the device has no fast path for that algorithm,
- its optional dependency (Numba, Triton) is not installed,
- the reference path is forced: by :func:`reference_path` (what the tests use to run the
  same checks on both paths) or, for a whole process, the environment variable
  ``DETLOSS_REFERENCE_PATH=1`` (to rule out a kernel when debugging).

Each fast path gives the reference path's results: bit for bit where the docstring of its
module says so, else within the tolerance its tests state.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType

import torch

from .._optional import optional_module

__all__ = ["FAST_PATHS", "fast_path", "fast_path_enabled", "kernel_device", "reference_path"]

#: For each algorithm, the device types with a fast path and the module implementing it
#: (None: a strategy written in torch inside the algorithm's own module; "any": every
#: device).
FAST_PATHS: dict[str, dict[str, str | None]] = {
    "assignment": {"cpu": "assignment_cpu", "cuda": "assignment_cuda"},
    "coco_eval": {"cpu": "coco_eval_cpu"},
    "detection_cost": {"cpu": "detection_cost_cpu"},
    "focal_backward": {"any": None},
    "gaussians": {"cpu": "gaussians_cpu"},
    "max_iou_sparse": {"cpu": None},
    "nms": {"cpu": "nms_cpu"},
    "ranking": {"cpu": "ranking_cpu"},
    "row_argmax": {"cpu": "row_argmax_cpu"},
    "sinkhorn_scaling": {"cuda": "sinkhorn_cuda"},
    "sparse_assignment": {"cpu": "sparse_assignment_cpu"},
}

_forced_reference = os.environ.get("DETLOSS_REFERENCE_PATH", "") not in ("", "0")


def _device_type(device: torch.device | str) -> str:
    # Building a torch.device from a string costs about a microsecond on every call of a
    # hot path (the assignment of a DETR batch asks twice): read the type directly.
    return device.type if isinstance(device, torch.device) else device.split(":", 1)[0]


def fast_path_enabled(name: str, device: torch.device | str) -> bool:
    """Whether the fast path ``name`` may run on ``device`` (not forced off, and the
    device has one). Says nothing of optional dependencies: see :func:`fast_path`."""
    if name not in FAST_PATHS:
        raise KeyError(f"no fast path named {name!r}; known: {sorted(FAST_PATHS)}")
    devices = FAST_PATHS[name]
    return not _forced_reference and (_device_type(device) in devices or "any" in devices)


def fast_path(name: str, device: torch.device | str) -> ModuleType | None:
    """The module of the compiled fast path ``name`` on ``device``, imported on first use,
    or None: forced off, no fast path on that device, or its dependency missing."""
    if not fast_path_enabled(name, device):
        return None
    devices = FAST_PATHS[name]
    module = devices.get(_device_type(device), devices.get("any"))
    return None if module is None else optional_module(f"{__name__}.{module}")


@contextlib.contextmanager
def reference_path(forced: bool = True) -> Iterator[None]:
    """Within the block, every algorithm runs its torch reference path (``forced=True``)
    or its fast paths where they apply (``forced=False``)."""
    global _forced_reference
    saved = _forced_reference
    _forced_reference = forced
    try:
        yield
    finally:
        _forced_reference = saved


def kernel_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` the current CUDA device, where Triton launches its kernels; nothing
    for other devices (Triton's interpreter runs on CPU tensors)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
