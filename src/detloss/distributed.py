"""Cross-rank normalisers for losses under ``torch.distributed``.

A loss divided by a per-rank count (positives, matched pairs, objects) gives every rank
a different scale. :func:`normalizer` instead returns the global count divided by the
world size, so that DDP's gradient averaging reproduces single-process training: with a
batch split over W ranks, the mean of the ranks' losses equals the loss of the whole
batch on one process. Nothing here calls ``.item()``: counts stay tensors on the device.

The lower clamp applies to the global count, before the division: ``max(G, 1) / W``,
not DETR's ``max(G / W, 1)``. The two differ only when the batch holds fewer than W
objects in all (``0 <= G < W``), and only the first keeps the mean of the ranks' losses
equal to the single-process loss there.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_with_grad", "is_distributed", "normalizer", "world_size"]


def is_distributed() -> bool:
    """True when a default process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def normalizer(count: Tensor | float, distributed: bool = True, minimum: float = 1.0) -> Tensor:
    """``max(global_count, minimum) / world_size`` as a float tensor without gradient.

    Args:
        count: this rank's count (a tensor or number).
        distributed: when True and a process group is initialised, the count is summed
            over ranks, clamped, and divided by the world size; otherwise it is this
            rank's count clamped (world size 1).
        minimum: the lower clamp of the global count (1 keeps a batch without objects
            finite).
    """
    count = torch.as_tensor(count).detach()
    if not count.is_floating_point():
        count = count.float()
    if distributed and is_distributed():
        count = count.clone()
        dist.all_reduce(count)
        # Clamp before dividing: sum_r loss_r / (max(G, min) / W) / W is the
        # single-process loss / max(G, min) for every G, including 0 <= G < W.
        return count.clamp(min=minimum) / dist.get_world_size()
    return count.clamp(min=minimum)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank = dist.get_rank()
        ctx.sizes = [None] * dist.get_world_size()
        sizes = torch.tensor([tensor.shape[0]], device=tensor.device)
        gathered_sizes = [torch.zeros_like(sizes) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered_sizes, sizes)
        ctx.sizes = [int(s) for s in torch.cat(gathered_sizes).tolist()]
        largest = max(ctx.sizes)
        padded = tensor.new_zeros((largest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in ctx.sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:s] for p, s in zip(parts, ctx.sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]].contiguous()


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (``[n_r, ...]``, sizes may differ) from every rank in rank
    order. The gradient flowing back to this rank is the slice of its own rows, not summed
    over ranks: each rank computes the global loss and keeps the gradient of its part.
    Without a process group it returns ``tensor``.
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)
