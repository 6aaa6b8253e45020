"""Exact assignment on the host: the one place that decides how a host solve runs.

- **Orientation.** Every solver here (scipy's ``linear_sum_assignment``, the compiled
  batch solver, the GPU kernel, the certified crowd solver) is fastest, or only works,
  with at most as many rows as columns. :func:`targets_are_rows` is the rule, and
  :func:`wide` / :func:`solve_dense` apply it.
- **Dense or sparse.** Point problems with fewer than :data:`DENSE_BELOW` pairs are
  solved on their dense cost; larger ones never build it (see :mod:`detloss.match.crowd`).
  :func:`use_dense` is the rule.
- **Threads.** Images solved one by one on the host (scipy releases the GIL, the compiled
  solver runs without it) share one small pool, :func:`for_each_image`.
- **The batch solve.** :func:`solve_on_host` solves a padded ``[B, M, N]`` cost: one
  compiled call for the whole batch where Numba is installed (``detloss._kernels``'s
  ``assignment`` fast path), scipy per image otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from .._kernels import fast_path
from .matching import BACKGROUND, IGNORED

__all__ = [
    "DENSE_BELOW",
    "for_each_image",
    "solve_dense",
    "solve_on_host",
    "targets_are_rows",
    "thread_pool",
    "use_dense",
    "wide",
]

#: Point problems with fewer than this many pairs (``M * N``) are solved on the dense
#: matrix, which is faster there than building a k-d tree and a certificate.
DENSE_BELOW = 1 << 19
# Below this many cost entries in a batch a thread pool costs more than it saves.
_POOL_MIN_ENTRIES = 50_000
# Above this many entries per image (256 MB of float64) images are solved one at a time,
# so that at most one dense cost matrix is alive on the host.
_POOL_MAX_BLOCK = 1 << 25
#: From this many cost entries on, and where torch may use more than one thread, a batch
#: is split in two halves solved side by side by the compiled solver (at DINO size, 1.4
#: million entries, the second core saved nothing measurable on two cores).
_SPLIT_MIN_ENTRIES = 4_000_000
#: The cost dtypes the compiled solver reads directly (others go to float64 first).
_KERNEL_DTYPES = (torch.float32, torch.float64)
_pool: ThreadPoolExecutor | None = None


def thread_pool() -> ThreadPoolExecutor:
    """The host solvers' thread pool (at most four threads), created on first use.

    Example:
        >>> thread_pool() is thread_pool()
        True
    """
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
    return _pool


def for_each_image(solve: Callable[[int], None], entries: Sequence[int] | np.ndarray) -> None:
    """Call ``solve(i)`` for each image ``i``, in :func:`thread_pool` where the batch is
    large enough to gain from it and no image's dense cost is too large to have several
    alive at once.

    Args:
        solve: solves image ``i`` (writing its result somewhere); exceptions propagate.
        entries: ``int[B]`` the cost entries of each image.

    Shape:
        - entries: ``[B]``

    Example:
        >>> done = []
        >>> for_each_image(done.append, [6, 0, 4])
        >>> sorted(done)
        [0, 1, 2]
    """
    entries = np.asarray(entries, dtype=np.int64)
    count = entries.size
    if count > 1 and entries.sum() >= _POOL_MIN_ENTRIES and entries.max() <= _POOL_MAX_BLOCK:
        list(thread_pool().map(solve, range(count)))
    else:
        for i in range(count):
            solve(i)


def targets_are_rows(num_preds: int, num_targets: int) -> bool:
    """Whether the targets are the rows of the solved problem: the smaller side is, so
    that every row is assigned (``R <= C``).

    Example:
        >>> targets_are_rows(300, 20), targets_are_rows(5, 8)
        (True, False)
    """
    return num_targets <= num_preds


def wide(
    cost: Tensor, pred_mask: Tensor, target_mask: Tensor
) -> tuple[Tensor, Tensor, Tensor, bool]:
    """A padded cost in the solvers' orientation, at most as many rows as columns.

    Args:
        cost: ``Tensor[B, M, N]`` predictions by targets.
        pred_mask: ``bool[B, M]`` real predictions.
        target_mask: ``bool[B, N]`` real targets.

    Returns:
        ``(cost_rc, row_mask, col_mask, rows_are_targets)``: ``cost_rc`` is ``cost`` or its
        transposed view ``[B, N, M]`` (no copy), with the masks of its rows and columns.

    Shape:
        - cost: ``[B, M, N]``; cost_rc: ``[B, R, C]`` with ``R = min(M, N)``.

    Example:
        >>> cost_rc, rows, cols, flipped = wide(
        ...     torch.zeros(1, 5, 2), torch.ones(1, 5, dtype=torch.bool),
        ...     torch.ones(1, 2, dtype=torch.bool))
        >>> tuple(cost_rc.shape), flipped
        ((1, 2, 5), True)
    """
    if targets_are_rows(cost.shape[1], cost.shape[2]):
        return cost.transpose(1, 2), target_mask, pred_mask, True
    return cost, pred_mask, target_mask, False


def check_block(block: np.ndarray, image: int = 0) -> None:
    """Raise a ValueError naming ``image`` where ``block`` holds NaN or ``-inf``."""
    if block.size and not np.isfinite(block).all():
        if np.isnan(block).any():
            raise ValueError(f"cost: image {image} contains NaN; costs must be finite or +inf")
        if np.isneginf(block).any():
            raise ValueError(
                f"cost: image {image} contains -inf; costs must be finite or +inf (forbidden)"
            )


def solve_dense(block: np.ndarray, image: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost assignment of ``min(P, T)`` pairs of one dense float64 ``[P, T]`` cost,
    by the compiled solver (Numba installed, and not the reference path) or else scipy in
    its faster orientation (transposed when ``P > T``).

    Args:
        block: ``float64[P, T]``; ``+inf`` forbids a pair.
        image: the image's number in error messages.

    Returns:
        ``(row_idx, col_idx)``: ``int64[K]`` indices into ``block``'s rows and columns,
        ``K = min(P, T)``, sorted by row.

    Raises:
        ValueError: NaN or ``-inf`` in ``block``, or ``+inf`` pairs that leave no
            assignment of ``K`` pairs (the message names ``image``).

    Shape:
        - block: ``[P, T]``; outputs: ``[min(P, T)]``

    Example:
        >>> rows, cols = solve_dense(np.array([[4.0, 1.0], [2.0, 0.0], [1.0, 5.0]]))
        >>> rows.tolist(), cols.tolist()
        ([1, 2], [1, 0])
    """
    kernel = fast_path("assignment", "cpu")
    if kernel is not None:
        # The compiled solver: faster than scipy on every size measured, and its start
        # (row reduction, bounded bidding) suits the wide blocks of dense crowds.
        p, t = block.shape
        cost = np.ascontiguousarray(block, dtype=np.float64)[None]
        pred_to_target = np.empty((1, p), dtype=np.int64)
        status = np.empty(1, dtype=np.int64)
        targets = np.ones((1, t), dtype=bool)
        if kernel.solve_batch(cost, None, targets, pred_to_target, status) >= 0:
            _raise_for_status(kernel, int(status[0]), image, min(p, t))
        rows = np.flatnonzero(pred_to_target[0] >= 0)
        return rows, pred_to_target[0, rows]
    check_block(block, image)
    from scipy.optimize import linear_sum_assignment  # on first use: scipy loads slowly

    flipped = block.shape[0] > block.shape[1]
    try:
        if flipped:
            cols, rows = linear_sum_assignment(np.ascontiguousarray(block.T))
        else:
            rows, cols = linear_sum_assignment(block)
    except ValueError as err:
        raise ValueError(
            f"cost: image {image} is infeasible: the +inf (forbidden) pairs leave no "
            f"assignment of all {min(block.shape)} rows ({err})"
        ) from None
    if flipped:
        order = np.argsort(rows)
        rows, cols = rows[order], cols[order]
    return rows.astype(np.int64), cols.astype(np.int64)


def use_dense(num_preds: int, num_targets: int, dense_below: int = DENSE_BELOW) -> bool:
    """Whether a point problem is solved on its dense cost (fewer than ``dense_below``
    pairs) rather than by the certified sparse solver.

    Example:
        >>> use_dense(300, 100), use_dense(20_000, 3_000)
        (True, False)
    """
    return num_preds * num_targets < dense_below


def solve_on_host(
    cost: Tensor,
    target_mask: Tensor,
    pred_mask: Tensor | None,
    image_ids: list[int] | None = None,
) -> Tensor:
    """Exact matching of every image of a padded cost, solved on the host.

    Args:
        cost: ``Tensor[B, M, N]`` predictions by targets, on any device; ``+inf`` forbids
            a pair.
        target_mask: ``bool[B, N]`` real targets.
        pred_mask: ``bool[B, M]`` real predictions (None: all).
        image_ids: the images' numbers in error messages (default ``0 .. B - 1``).

    Returns:
        ``int64[B, M]`` on ``cost``'s device: each prediction's target, ``-1`` background,
        ``-2`` padded.

    Raises:
        ValueError: NaN or ``-inf`` among an image's real entries, or an image whose
            ``+inf`` pairs allow no assignment (the message names the image).

    Shape:
        - cost: ``[B, M, N]``; output: ``[B, M]``

    Example:
        >>> cost = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
        >>> solve_on_host(cost, torch.ones(1, 2, dtype=torch.bool),
        ...               torch.ones(1, 3, dtype=torch.bool)).tolist()
        [[1, 0, -1]]
    """
    kernel = fast_path("assignment", "cpu")
    if kernel is None:
        if pred_mask is None:
            pred_mask = torch.ones(cost.shape[:2], dtype=torch.bool, device=cost.device)
        return _solve_with_scipy(cost, target_mask, pred_mask, image_ids)
    b, m, n = cost.shape
    device = cost.device
    if cost.dtype not in _KERNEL_DTYPES:
        cost = cost.double()
    cost_np, tmask_np = _host_array(cost), _host_array(target_mask)
    # No pred_mask: the kernel takes every prediction as real without reading a mask.
    pmask_np = None if pred_mask is None else _host_array(pred_mask)
    result = np.empty((b, m), dtype=np.int64)
    status = np.empty(b, dtype=np.int64)
    if b > 1 and m * n * b >= _SPLIT_MIN_ENTRIES and torch.get_num_threads() > 1:
        # The kernel runs without the GIL: two halves of the batch on two threads.
        half = b // 2
        parts = [slice(0, half), slice(half, b)]
        failed = list(
            thread_pool().map(
                lambda s: kernel.solve_batch(
                    cost_np[s],
                    None if pmask_np is None else pmask_np[s],
                    tmask_np[s],
                    result[s],
                    status[s],
                ),
                parts,
            )
        )
        first = failed[0] if failed[0] >= 0 else failed[1] + half if failed[1] >= 0 else -1
    else:
        first = kernel.solve_batch(cost_np, pmask_np, tmask_np, result, status)
    if first >= 0:
        image = first if image_ids is None else image_ids[first]
        preds = m if pmask_np is None else int(pmask_np[first].sum())
        _raise_for_status(kernel, int(status[first]), image, min(preds, int(tmask_np[first].sum())))
    pred_to_target = torch.from_numpy(result)
    return pred_to_target if device.type == "cpu" else pred_to_target.to(device)


def _raise_for_status(kernel: ModuleType, code: int, image: int, rows: int) -> None:
    """The ValueError of the compiled solver's failure ``code`` for ``image``."""
    if code == kernel.NOT_A_NUMBER:
        raise ValueError(f"cost: image {image} contains NaN; costs must be finite or +inf")
    if code == kernel.NEGATIVE_INFINITY:
        raise ValueError(
            f"cost: image {image} contains -inf; costs must be finite or +inf (forbidden)"
        )
    raise ValueError(
        f"cost: image {image} is infeasible: the +inf (forbidden) pairs leave no "
        f"assignment of all {rows} rows"
    )


def _host_array(tensor: Tensor) -> np.ndarray:
    """``tensor`` as a C-contiguous host array (a view where it already is one)."""
    if not tensor.is_contiguous() or tensor.device.type != "cpu":
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
    # Transposing on the torch side fuses the copy with the float64 conversion.
    cost_rc, row_mask, col_mask, rows_are_targets = wide(cost, pred_mask, target_mask)
    row_counts = row_mask.sum(dim=1).cpu().numpy()
    col_counts = col_mask.sum(dim=1).cpu().numpy()
    if bool(pmask_host.all() and tmask_host.all()):
        host = cost_rc.to(device="cpu", dtype=torch.float64, memory_format=torch.contiguous_format)
        blocks = list(host.numpy())
    else:
        values = cost_rc[row_mask[:, :, None] & col_mask[:, None, :]]
        flat = values.to(device="cpu", dtype=torch.float64).numpy()
        offsets = np.cumsum([0, *(row_counts * col_counts).tolist()])
        blocks = [
            flat[offsets[i] : offsets[i + 1]].reshape(row_counts[i], col_counts[i])
            for i in range(b)
        ]

    def solve(i: int) -> None:
        if row_counts[i] == 0 or col_counts[i] == 0:
            return
        rows, cols = solve_dense(blocks[i], image_ids[i])
        preds, targets = (cols, rows) if rows_are_targets else (rows, cols)
        pred_ids = np.flatnonzero(pmask_host[i])
        target_ids = np.flatnonzero(tmask_host[i])
        result[i, pred_ids[preds]] = target_ids[targets]

    for_each_image(solve, row_counts * col_counts)
    return torch.from_numpy(result).to(device)
