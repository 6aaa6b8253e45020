"""Batched exact assignment on a GPU: shortest augmenting paths in one Triton program per
image.

The algorithm is the one scipy's ``linear_sum_assignment`` runs (Crouse's rectangular
variant of Jonker-Volgenant without its initialisation): each row in turn is joined to the
matching along a shortest augmenting path found by Dijkstra's method on reduced costs,
then the column duals are updated. It is exact in the arithmetic it runs in (float64
here, as on the host), so the result is an optimal assignment, not an approximation.

One program solves one image with all of its column state in registers: ``BLOCK_C`` (the
column count rounded up to a power of two) lanes hold the column duals, the shortest path
costs, the path tree and each column's row. The row duals are never stored: a row reached
through its matched column ``j`` has ``u_i = C[i, j] - v_j`` (the matched edge's reduced
cost is zero), and a row not yet matched has ``u_i = 0``. Every Dijkstra step is one load
of a cost row and a handful of reductions over the lanes.

This module imports Triton: import it only where Triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import kernel_device

__all__ = ["MAX_COLUMNS", "solve_on_device"]

#: The most columns (the larger side of an image's cost) one program holds in registers.
MAX_COLUMNS = 8192


@triton.jit
def _shortest_augmenting_paths(
    cost_ptr,  # float64 [B, R, C], contiguous
    row_valid_ptr,  # int8 [B, R]
    col_valid_ptr,  # int8 [B, C]
    row_of_col_ptr,  # int32 [B, C], out: the row of each column, -1 where none
    status_ptr,  # int32 [B], out
    n_rows,
    n_cols,
    BLOCK_C: tl.constexpr,
):
    image = tl.program_id(0).to(tl.int64)
    cost_ptr += image * n_rows * n_cols
    lanes = tl.arange(0, BLOCK_C)
    in_range = lanes < n_cols
    col_ok = tl.load(col_valid_ptr + image * n_cols + lanes, mask=in_range, other=0) != 0

    inf = float("inf")
    v = tl.zeros([BLOCK_C], dtype=tl.float64)
    row_of_col = tl.full([BLOCK_C], -1, dtype=tl.int32)
    status = tl.program_id(0) * 0  # int32 zero

    # A while loop rather than range(): the interpreter cannot index with a scalar argument.
    current = status
    while current < n_rows:
        row_ok = tl.load(row_valid_ptr + image * n_rows + current)
        if (row_ok != 0) & (status == 0):
            # Dijkstra from the free row `current` over the reduced costs.
            path_cost = tl.full([BLOCK_C], inf, dtype=tl.float64)
            path_row = tl.full([BLOCK_C], -1, dtype=tl.int32)
            scanned = lanes < 0
            row = current
            row_dual = tl.sum(v, axis=0) * 0.0  # float64 zero: `current` is not matched yet
            min_value = row_dual
            sink = current * 0 - 1
            while (sink < 0) & (status == 0):
                cost_row = tl.load(cost_ptr + row * n_cols + lanes, mask=in_range, other=inf)
                reduced = min_value + cost_row - row_dual - v
                open_lane = col_ok & ~scanned
                better = open_lane & (reduced < path_cost)
                path_cost = tl.where(better, reduced, path_cost)
                path_row = tl.where(better, row, path_row)
                candidate = tl.where(open_lane, path_cost, inf)
                lowest = tl.min(candidate, axis=0)
                if lowest == inf:
                    # No free column reachable: +inf pairs, or more rows than columns.
                    status = status + 1
                else:
                    at_lowest = open_lane & (candidate == lowest)
                    # Among equal costs prefer a free column: it ends the search (scipy's
                    # rule, which matters for integer costs with many ties).
                    free = tl.min(tl.where(at_lowest & (row_of_col < 0), lanes, BLOCK_C), axis=0)
                    first = tl.min(tl.where(at_lowest, lanes, BLOCK_C), axis=0)
                    column = tl.where(free < BLOCK_C, free, first)
                    min_value = lowest
                    scanned = scanned | (lanes == column)
                    if free < BLOCK_C:
                        sink = column
                    else:
                        # Continue from the row matched to `column`; its dual makes the
                        # matched edge's reduced cost zero.
                        row = tl.sum(tl.where(lanes == column, row_of_col, 0), axis=0)
                        v_column = tl.sum(tl.where(lanes == column, v, 0.0), axis=0)
                        row_dual = tl.load(cost_ptr + row * n_cols + column) - v_column

            if status == 0:
                # Dual update of the scanned columns, then the augmentation along the path.
                v = tl.where(scanned, v - (min_value - path_cost), v)
                column = sink
                walking = sink >= 0
                while walking:
                    row = tl.sum(tl.where(lanes == column, path_row, 0), axis=0)
                    previous = tl.min(tl.where(row_of_col == row, lanes, BLOCK_C), axis=0)
                    row_of_col = tl.where(lanes == column, row, row_of_col)
                    walking = row != current
                    column = previous
        current += 1

    tl.store(row_of_col_ptr + image * n_cols + lanes, row_of_col, mask=in_range)
    tl.store(status_ptr + image, status)


def _warps(block: int) -> int:
    # 16 warps: the fastest at 1024 lanes on an H100, and up to 4096 lanes without spills.
    return max(4, min(16, block // 64))


def solve_on_device(cost: Tensor, row_valid: Tensor, col_valid: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost assignment of every valid row of each image of ``cost [B, R, C]``.

    Args:
        cost: ``float64[B, R, C]`` with ``C <= MAX_COLUMNS``; invalid pairs may hold
            anything. ``+inf`` forbids a pair; NaN and ``-inf`` must be screened out before.
        row_valid: ``bool[B, R]``; col_valid: ``bool[B, C]``.

    Returns:
        ``(row_of_col int64[B, C], status int32[B])``: the row assigned to each column
        (``-1`` for none) and per image ``0`` where every valid row was assigned, ``1``
        where some row found no free column (an infeasible image, or more valid rows than
        valid columns); such an image's assignment is incomplete and must be solved
        elsewhere. Runs asynchronously: nothing is read back to the host.
    """
    b, r, c = cost.shape
    if c > MAX_COLUMNS:
        raise ValueError(f"cost: at most {MAX_COLUMNS} columns on the device, got {c}")
    cost = cost.to(torch.float64).contiguous()
    row_of_col = torch.empty((b, c), dtype=torch.int32, device=cost.device)
    status = torch.empty((b,), dtype=torch.int32, device=cost.device)
    if b == 0:
        return row_of_col.long(), status
    block = max(16, triton.next_power_of_2(c))
    # Triton launches on the current device: make it the cost's.
    with kernel_device(cost.device):
        _shortest_augmenting_paths[(b,)](
            cost,
            row_valid.to(torch.int8).contiguous(),
            col_valid.to(torch.int8).contiguous(),
            row_of_col,
            status,
            r,
            c,
            BLOCK_C=block,
            num_warps=_warps(block),
        )
    return row_of_col.long(), status
