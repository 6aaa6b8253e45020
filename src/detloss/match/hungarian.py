"""Exact minimum-cost one-to-one assignment per image (the Hungarian matching)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from .._checks import check_choice
from .._kernels import fast_path
from .._optional import host_step
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
    from scipy.optimize import linear_sum_assignment  # on first use: scipy loads slowly

    try:
        return linear_sum_assignment(block)
    except ValueError as err:
        raise ValueError(
            f"cost: image {image} is infeasible: the +inf (forbidden) pairs leave no "
            f"assignment of all {block.shape[0]} rows ({err})"
        ) from None


#: The values of ``hungarian``'s ``solver``.
SOLVERS = ("auto", "scipy", "triton")


def _triton_kernel() -> ModuleType | None:
    """The device solver's module, or None where Triton is not installed."""
    return fast_path("assignment", "cuda")


def gpu_solver_fits(device: torch.device, m: int, n: int) -> bool:
    """Whether the GPU solver takes an ``[M, N]`` cost on ``device``."""
    kernel = _triton_kernel() if device.type == "cuda" else None
    return kernel is not None and max(m, n) <= kernel.MAX_COLUMNS


def _use_device_solver(cost: Tensor, solver: str) -> bool:
    check_choice(solver, "solver", SOLVERS)
    if solver == "scipy":
        return False
    m, n = cost.shape[1:]
    fits = gpu_solver_fits(cost.device, m, n)
    if solver == "triton" and not fits:
        kernel = _triton_kernel()
        reason = (
            f"cost is on {cost.device}, not a CUDA device"
            if cost.device.type != "cuda"
            else "Triton is not installed"
            if kernel is None
            else f"an image has {max(m, n)} > {kernel.MAX_COLUMNS} columns"
        )
        raise ValueError(f"solver='triton': {reason}")
    return fits


@host_step
def hungarian(
    cost: Tensor,
    target_mask: Tensor | None = None,
    pred_mask: Tensor | None = None,
    *,
    solver: str = "auto",
) -> Matching:
    """Exact minimum-cost one-to-one matching of predictions to targets in each image.

    Args:
        cost: ``Tensor[B, M, N]`` (or ``[M, N]`` for one image), predictions by targets.
            ``+inf`` forbids a pair. Any float or integer dtype; half precision is solved in
            float64 like everything else.
        target_mask: ``bool[B, N]``, True for real targets (need not be a prefix).
        pred_mask: ``bool[B, M]``, True for real predictions. Padded predictions come back
            as ignored (``-2``).
        solver: ``"scipy"`` solves on the host; ``"triton"`` on the GPU (a CUDA cost,
            Triton installed, and at most 8192 predictions, or targets where they are
            more); ``"auto"`` (default) takes the GPU where it can and the host otherwise.

    Returns:
        A :class:`Matching` in which ``min(m_b, n_b)`` predictions of image ``b`` are matched
        (``m_b``, ``n_b`` its real predictions and targets) and the other real predictions
        are background (``-1``). An unbatched cost gives a matching with ``B = 1``.

    Raises:
        ValueError: a NaN or ``-inf`` cost, or an image whose ``+inf`` pairs make every
            assignment impossible (the message names the image).

    Both solvers are exact in float64 (shortest augmenting paths, as
    ``scipy.optimize.linear_sum_assignment``), so they reach the same optimal total; where
    several assignments share it they may pick different ones.

    On the host, with Numba installed, one compiled call solves the whole batch from the
    padded cost (Jonker-Volgenant's column or row reduction and augmenting row reduction,
    then shortest augmenting paths; see ``docs/hungarian.md``); without Numba, scipy
    solves each image's valid block in its faster orientation. On the GPU, one Triton program per
    image solves it in place; the host reads back one status flag per image (one
    synchronisation per batch) and solves there only the images the kernel could not
    finish (more real targets than real predictions, or infeasible +inf pairs) and those
    with a NaN or ``-inf`` cost, so errors read the same on both. No gradient flows
    through a matching.
    """
    cost, target_mask, pred_mask, _ = prepare_cost(cost, target_mask, pred_mask)
    on_gpu = _use_device_solver(cost, solver)
    if not on_gpu or 0 in cost.shape:
        return Matching(_solve_on_host(cost, target_mask, pred_mask), target_mask)
    pred_to_target, unsolved = solve_on_gpu(cost, target_mask, pred_mask)
    unsolved = unsolved.cpu()  # the batch's one synchronisation
    if unsolved.any():
        ids = unsolved.nonzero().squeeze(1)
        images = ids.to(cost.device)
        pred_to_target[images] = _solve_on_host(
            cost[images], target_mask[images], pred_mask[images], image_ids=ids.tolist()
        )
    return Matching(pred_to_target, target_mask)


def solve_on_gpu(cost: Tensor, target_mask: Tensor, pred_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``pred_to_target [B, M]`` from the device kernel and ``bool[B]``: the images it left
    for the host."""
    b, m, n = cost.shape
    # The smaller side is the rows: the kernel loops over rows and holds columns in lanes.
    rows_are_targets = m >= n
    if rows_are_targets:
        cost_rc, row_valid, col_valid = cost.transpose(1, 2), target_mask, pred_mask
    else:
        cost_rc, row_valid, col_valid = cost, pred_mask, target_mask
    pair_valid = row_valid[:, :, None] & col_valid[:, None, :]
    invalid_value = (cost_rc.isnan() | (cost_rc == -torch.inf)) & pair_valid
    row_of_col, status = _triton_kernel().solve_on_device(cost_rc, row_valid, col_valid)
    unsolved = (status != 0) | invalid_value.flatten(1).any(dim=1)
    if rows_are_targets:
        pred_to_target = row_of_col
    else:
        # Each target's prediction, scattered into a row with one spare slot for the
        # unmatched targets.
        scattered = torch.full((b, m + 1), BACKGROUND, dtype=torch.int64, device=cost.device)
        slots = torch.where(row_of_col >= 0, row_of_col, m)
        targets = torch.arange(n, device=cost.device).expand(b, n)
        pred_to_target = scattered.scatter_(1, slots, targets)[:, :m]
    return pred_to_target.masked_fill(~pred_mask, IGNORED), unsolved


#: The cost dtypes the compiled solver reads directly (others go to float64 first).
_KERNEL_DTYPES = (torch.float32, torch.float64)
#: From this many cost entries on, and where torch may use more than one thread, a batch
#: is split in two halves solved side by side in the thread pool (at DINO size, 1.4
#: million entries, the second core saved nothing measurable on two cores).
_SPLIT_MIN_ENTRIES = 4_000_000


def _lap_kernel() -> ModuleType | None:
    """The compiled batch solver, or None: Numba missing or switched off."""
    return fast_path("assignment", "cpu")


def _solve_on_host(
    cost: Tensor, target_mask: Tensor, pred_mask: Tensor, image_ids: list[int] | None = None
) -> Tensor:
    """``pred_to_target [B, M]`` solved on the host, on ``cost``'s device. ``image_ids``
    are the images' numbers in error messages (default ``0 .. B - 1``)."""
    kernel = _lap_kernel()
    if kernel is None:
        return _solve_with_scipy(cost, target_mask, pred_mask, image_ids)
    b, m, n = cost.shape
    device = cost.device
    if cost.dtype not in _KERNEL_DTYPES:
        cost = cost.double()
    cost_np, pmask_np, tmask_np = (_host_array(t) for t in (cost, pred_mask, target_mask))
    result = np.empty((b, m), dtype=np.int64)
    status = np.empty(b, dtype=np.int64)
    if b > 1 and m * n * b >= _SPLIT_MIN_ENTRIES and torch.get_num_threads() > 1:
        # The kernel runs without the GIL: two halves of the batch on two threads.
        half = b // 2
        parts = [slice(0, half), slice(half, b)]
        list(
            _thread_pool().map(
                lambda s: kernel.solve_batch(
                    cost_np[s], pmask_np[s], tmask_np[s], result[s], status[s]
                ),
                parts,
            )
        )
    else:
        kernel.solve_batch(cost_np, pmask_np, tmask_np, result, status)
    if status.any():
        first = int(np.flatnonzero(status)[0])
        image = first if image_ids is None else image_ids[first]
        code = int(status[first])
        if code == kernel.NOT_A_NUMBER:
            raise ValueError(f"cost: image {image} contains NaN; costs must be finite or +inf")
        if code == kernel.NEGATIVE_INFINITY:
            raise ValueError(
                f"cost: image {image} contains -inf; costs must be finite or +inf (forbidden)"
            )
        rows = int(min(pmask_np[first].sum(), tmask_np[first].sum()))
        raise ValueError(
            f"cost: image {image} is infeasible: the +inf (forbidden) pairs leave no "
            f"assignment of all {rows} rows"
        )
    pred_to_target = torch.from_numpy(result)
    return pred_to_target if device.type == "cpu" else pred_to_target.to(device)


def _host_array(tensor: Tensor) -> np.ndarray:
    """``tensor`` as a C-contiguous host array (a view where it already is one)."""
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        tensor = tensor.to(device="cpu", memory_format=torch.contiguous_format)
    return tensor.numpy()


def _solve_with_scipy(
    cost: Tensor, target_mask: Tensor, pred_mask: Tensor, image_ids: list[int] | None = None
) -> Tensor:
    """``pred_to_target [B, M]`` by scipy per image (the path without Numba)."""
    b, m, n = cost.shape
    device = cost.device
    result = np.full((b, m), BACKGROUND, dtype=np.int64)
    pmask_host = pred_mask.cpu().numpy()
    result[~pmask_host] = IGNORED
    if b == 0 or m == 0 or n == 0:
        return torch.from_numpy(result).to(device)
    image_ids = list(range(b)) if image_ids is None else image_ids

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
            cols, rows = solve_assignment(block, image_ids[i])
        else:
            rows, cols = solve_assignment(block, image_ids[i])
        preds, targets = (cols, rows) if transposed else (rows, cols)
        pred_ids = np.flatnonzero(pmask_host[i])
        target_ids = np.flatnonzero(tmask_host[i])
        result[i, pred_ids[preds]] = target_ids[targets]

    if b > 1 and m * n * b >= _POOL_MIN_ENTRIES:
        list(_thread_pool().map(solve, range(b)))
    else:
        for i in range(b):
            solve(i)
    return torch.from_numpy(result).to(device)
