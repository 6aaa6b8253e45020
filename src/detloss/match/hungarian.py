"""Exact minimum-cost one-to-one assignment per image (the Hungarian matching)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ._common import prepare_cost
from .matching import BACKGROUND, IGNORED, Matching

__all__ = ["hungarian", "solve_assignment"]

# Below this many cost entries in a batch a thread pool costs more than it saves.
_POOL_MIN_ENTRIES = 50_000
_pool: ThreadPoolExecutor | None = None


def _thread_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
    return _pool


def solve_assignment(block: np.ndarray, image: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost assignment of one float64 ``[R, C]`` block with ``R <= C``.

    Returns ``(rows, cols)``; every row is assigned. ``+inf`` entries are forbidden
    pairs; NaN or ``-inf`` raise ``ValueError`` naming ``image``.
    """
    if block.size and not np.isfinite(block).all():
        if np.isnan(block).any():
            raise ValueError(f"cost: image {image} contains NaN; costs must be finite or +inf")
        if np.isneginf(block).any():
            raise ValueError(
                f"cost: image {image} contains -inf; costs must be finite or +inf (forbidden)"
            )
    try:
        return linear_sum_assignment(block)
    except ValueError as err:
        raise ValueError(
            f"cost: image {image} is infeasible: the +inf (forbidden) pairs leave no "
            f"assignment of all {block.shape[0]} rows ({err})"
        ) from None


@torch.compiler.disable  # a host step: tracing it only splits the caller's graph
def hungarian(
    cost: Tensor,
    target_mask: Tensor | None = None,
    pred_mask: Tensor | None = None,
) -> Matching:
    """Exact minimum-cost one-to-one matching of predictions to targets in each image.

    Args:
        cost: ``Tensor[B, M, N]`` (or ``[M, N]`` for one image), predictions by targets.
            ``+inf`` forbids a pair. Any float or integer dtype; half precision is solved in
            float64 like everything else.
        target_mask: ``bool[B, N]``, True for real targets (need not be a prefix).
        pred_mask: ``bool[B, M]``, True for real predictions. Padded predictions come back
            as ignored (``-2``).

    Returns:
        A :class:`Matching` in which ``min(m_b, n_b)`` predictions of image ``b`` are matched
        (``m_b``, ``n_b`` its real predictions and targets) and the other real predictions
        are background (``-1``). An unbatched cost gives a matching with ``B = 1``.

    Raises:
        ValueError: a NaN or ``-inf`` cost, or an image whose ``+inf`` pairs make every
            assignment impossible (the message names the image).

    The valid block of each image is copied to the host once per batch as float64 and
    solved by ``scipy.optimize.linear_sum_assignment`` in its faster orientation (fewer
    rows than columns); images run in a small thread pool, since scipy releases the GIL.
    No gradient flows through a matching.
    """
    cost, target_mask, pred_mask, _ = prepare_cost(cost, target_mask, pred_mask)
    b, m, n = cost.shape
    device = cost.device
    result = np.full((b, m), BACKGROUND, dtype=np.int64)
    pmask_host = pred_mask.cpu().numpy()
    result[~pmask_host] = IGNORED
    if b == 0 or m == 0 or n == 0:
        return Matching(torch.from_numpy(result).to(device), target_mask)

    tmask_host = target_mask.cpu().numpy()
    pred_counts = pmask_host.sum(axis=1)
    target_counts = tmask_host.sum(axis=1)
    # Targets as rows when predictions outnumber them: scipy is fastest with R <= C, and
    # transposing on the torch side fuses the copy with the float64 conversion.
    transposed = m > n
    full = bool(pmask_host.all() and tmask_host.all())
    if full:
        src = cost.transpose(1, 2) if transposed else cost
        host = src.to(device="cpu", dtype=torch.float64, memory_format=torch.contiguous_format)
        blocks = list(host.numpy())
    else:
        pair_mask = pred_mask[:, :, None] & target_mask[:, None, :]
        if transposed:
            values = cost.transpose(1, 2)[pair_mask.transpose(1, 2)]
        else:
            values = cost[pair_mask]
        flat = values.to(device="cpu", dtype=torch.float64).numpy()
        sizes = (pred_counts * target_counts).tolist()
        offsets = np.cumsum([0, *sizes])
        shapes = (
            zip(target_counts, pred_counts, strict=True)
            if transposed
            else zip(pred_counts, target_counts, strict=True)
        )
        blocks = [
            flat[offsets[i] : offsets[i + 1]].reshape(r, c) for i, (r, c) in enumerate(shapes)
        ]

    def solve(i: int) -> None:
        if pred_counts[i] == 0 or target_counts[i] == 0:
            return
        block = blocks[i]
        if block.shape[0] > block.shape[1]:
            block = np.ascontiguousarray(block.T)
            cols, rows = solve_assignment(block, i)
        else:
            rows, cols = solve_assignment(block, i)
        preds, targets = (cols, rows) if transposed else (rows, cols)
        pred_ids = np.flatnonzero(pmask_host[i])
        target_ids = np.flatnonzero(tmask_host[i])
        result[i, pred_ids[preds]] = target_ids[targets]

    if b > 1 and m * n * b >= _POOL_MIN_ENTRIES:
        list(_thread_pool().map(solve, range(b)))
    else:
        for i in range(b):
            solve(i)
    return Matching(torch.from_numpy(result).to(device), target_mask)
