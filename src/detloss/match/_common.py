"""Argument handling shared by the matcher functions."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_shape, check_tensor, shape_str

__all__ = ["broadcast_value", "prepare_cost"]


def broadcast_value(
    value: float | Tensor,
    shape: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
    name: str,
    dims: str,
) -> Tensor:
    """A float or a tensor broadcastable to ``shape`` (named ``dims`` in errors), expanded
    to it in ``dtype`` on ``device``.

    A Python number is written by a fill kernel (``torch.full``), not copied from the host
    as ``torch.as_tensor(value, device=...)`` would (a blocking copy on a GPU), and goes
    straight to the dtype (a float32 detour would round it).
    """
    if isinstance(value, Tensor):
        tensor = value.detach().to(dtype=dtype, device=device)
    else:
        tensor = torch.full((), value, dtype=dtype, device=device)
    try:
        return tensor.expand(shape)
    except RuntimeError:
        raise ValueError(
            f"{name}: expected a float or a tensor broadcastable to {dims} = "
            f"{shape_str(shape)}, got shape {shape_str(tensor.shape)}"
        ) from None


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
    *,
    fill_pred_mask: bool = True,
) -> tuple[Tensor, Tensor, Tensor, bool]:
    """Validate a ``[B, M, N]`` (or unbatched ``[M, N]``) matrix and its masks.

    Returns the detached 3-D cost, ``target_mask [B, N]``, ``pred_mask [B, M]`` and whether
    the input was unbatched. ``fill_pred_mask=False`` leaves a missing ``pred_mask`` None
    (for callers that read "all real" more cheaply than from a tensor of ones).
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
    if pred_mask is not None or fill_pred_mask:
        pred_mask = _mask(pred_mask, "pred_mask", (b, m), cost.device)
    return cost, target_mask, pred_mask, unbatched
