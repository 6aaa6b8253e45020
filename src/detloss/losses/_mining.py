"""Hard negative mining shared by :func:`~detloss.losses.multibox_loss` and
:func:`~detloss.losses.detection_loss`.

One rounding rule: an image with ``P`` positives keeps its ``ceil(ratio * P)`` hardest
negatives (highest background loss; equal losses in prediction order). It is SSD's
reference rule ``rank < ratio * P`` read for a fractional ratio: ratio 1.5 with one
positive keeps 2 negatives; an integer ratio gives the integer product. The product is
taken in the loss's floating dtype, as in the reference.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["hard_negative_weights", "hard_negatives", "negative_count"]


def negative_count(num_pos: Tensor, ratio: float, dtype: torch.dtype) -> Tensor:
    """``int64[B]``: ``ceil(ratio * num_pos)``, the negatives an image may keep.

    Shape:
        - num_pos: ``int64[B]``; output: ``int64[B]``

    Example:
        >>> negative_count(torch.tensor([0, 1, 2]), 1.5, torch.float32)
        tensor([0, 2, 3])
    """
    if isinstance(ratio, int):
        return num_pos * ratio
    return torch.ceil(num_pos.to(dtype) * ratio).to(torch.int64)


def hard_negatives(
    key: Tensor,
    candidates: Tensor,
    num_pos: Tensor,
    ratio: float,
    min_negatives: int = 0,
    host_selection: bool = False,
) -> Tensor:
    """``bool[B, M]``: per image, the ``k`` candidates with the largest ``key``.

    ``k = min(max(ceil(ratio * num_pos), min_negatives), number of candidates)``. Equal
    keys at the cut-off are taken in prediction order (the selection of a stable sort).

    ``host_selection`` (CPU tensors only) reads ``k`` on the host and lets NumPy's
    introselect move the ``k`` largest keys of every row to its end in linear time (3x
    faster than a top-k), sorting only those; otherwise every row is sorted, without a
    host synchronisation.

    Shape:
        - key, candidates: ``[B, M]``; num_pos: ``int64[B]``; output: ``bool[B, M]``

    Example:
        >>> key = torch.tensor([[0.3, 0.9, 0.1, 0.9]])
        >>> hard_negatives(key, torch.tensor([[True, True, True, False]]), torch.tensor([1]), 1.5)
        tensor([[ True,  True, False, False]])
    """
    if key.shape[1] == 0:
        return candidates.clone()
    available = candidates.sum(dim=1)
    k = negative_count(num_pos, ratio, key.dtype)
    k = torch.minimum(k.clamp(min=min_negatives), available)
    key = key.masked_fill(~candidates, float("-inf"))
    if host_selection:
        width, most = key.shape[1], max(1, int(k.max()))
        top = np.partition(key.numpy(), width - most, axis=1)[:, width - most :]
        largest = torch.from_numpy(top).sort(dim=1, descending=True).values
    else:
        largest = torch.sort(key, dim=1, descending=True).values
    cutoff = largest.gather(1, (k - 1).clamp(min=0)[:, None])  # the k-th largest key
    above = key > cutoff
    tied = key == cutoff
    room = k[:, None] - above.sum(dim=1, keepdim=True)
    return above | (tied & (tied.cumsum(dim=1) <= room))


def hard_negative_weights(values: Tensor, negative_mass: Tensor, budget: Tensor) -> Tensor:
    """The same rule for fractional background masses (a transport plan): ``float[B, M]``
    0/1, predictions visited by decreasing ``values`` (equal values in prediction order)
    and kept while the background mass taken before them is below the image's ``budget``
    (``ratio`` times its positive mass). With 0/1 masses this keeps the
    ``ceil(budget)`` hardest negatives, as :func:`hard_negatives`.

    Shape:
        - values, negative_mass: ``[B, M]``; budget: ``[B]``; output: ``[B, M]``

    Example:
        >>> values = torch.tensor([[0.3, 0.9, 0.1]])
        >>> hard_negative_weights(values, torch.ones(1, 3), torch.tensor([1.5]))
        tensor([[1., 1., 0.]])
    """
    order = values.argsort(dim=1, descending=True, stable=True)
    mass = negative_mass.gather(1, order)
    before = mass.cumsum(1) - mass
    kept_sorted = (before < budget.unsqueeze(1)).to(values.dtype)
    return torch.zeros_like(kept_sorted).scatter(1, order, kept_sorted)
