"""Argument handling shared by the matcher functions."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_shape, check_tensor, shape_str

__all__ = ["prepare_cost"]


def _mask(mask: Tensor | None, name: str, shape: tuple[int, int], device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    check_tensor(mask, name)
    if tuple(mask.shape) != shape:
        dims = "[B, N]" if name.startswith("target") else "[B, M]"
        raise ValueError(
            f"{name}: expected shape {shape_str(shape)} ({dims}), got {shape_str(mask.shape)}"
        )
    return mask.to(device=device, dtype=torch.bool)


def prepare_cost(
    cost: Tensor,
    target_mask: Tensor | None,
    pred_mask: Tensor | None = None,
    name: str = "cost",
) -> tuple[Tensor, Tensor, Tensor, bool]:
    """Validate a ``[B, M, N]`` (or unbatched ``[M, N]``) matrix and its masks.

    Returns the detached 3-D cost, ``target_mask [B, N]``, ``pred_mask [B, M]`` and whether
    the input was unbatched.
    """
    check_shape(cost, name, ndim=(2, 3), expected="[B, M, N] or [M, N]")
    unbatched = cost.ndim == 2
    cost = cost.detach()
    if unbatched:
        cost = cost.unsqueeze(0)
        target_mask = None if target_mask is None else target_mask.reshape(1, -1)
        pred_mask = None if pred_mask is None else pred_mask.reshape(1, -1)
    b, m, n = cost.shape
    target_mask = _mask(target_mask, "target_mask", (b, n), cost.device)
    pred_mask = _mask(pred_mask, "pred_mask", (b, m), cost.device)
    return cost, target_mask, pred_mask, unbatched
