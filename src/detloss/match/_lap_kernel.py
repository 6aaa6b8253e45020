"""Compiled exact assignment of a whole batch on the CPU (Numba; optional).

:func:`detloss.match.hungarian` solves host problems through :func:`solve_batch` when
Numba is installed: one call for every image of the batch, read straight from the padded
``[B, M, N]`` cost (float32 or float64) and the two masks, with no thread pool and no
per-image Python. Each image's valid block is copied once into a float64 working block
with the smaller side as rows (``R <= C``, the only transposition) and solved by the
Jonker-Volgenant scheme (Jonker & Volgenant 1987, as in ``lapjv``):

1. square blocks: column reduction and reduction transfer (a dual start that usually
   assigns most rows for free); wide blocks start from zero column potentials, which
   keeps every unassigned column's potential at the maximum, the rectangular optimality
   condition;
2. two passes of augmenting row reduction (an auction step per free row: its best
   column at its second-best price);
3. shortest augmenting paths (Dijkstra on reduced costs) for the rows still free.

Every step keeps the reduced costs ``c[i, j] - u[i] - v[j]`` non-negative and zero on
assigned pairs, so the result is optimal (the same total as scipy's
``linear_sum_assignment``, which runs step 3 alone). ``+inf`` entries are forbidden
pairs: potentials stay finite, and a path search that finds no finite column proves the
image infeasible.
"""

from __future__ import annotations

import numpy as np

from .._numba import jit

__all__ = ["INFEASIBLE", "NEGATIVE_INFINITY", "NOT_A_NUMBER", "solve_batch"]

#: ``status`` codes of an image, in the order the host checks them.
NOT_A_NUMBER = 1
NEGATIVE_INFINITY = 2
INFEASIBLE = 3


@jit
def _column_reduction(
    w: np.ndarray,
    rows: int,
    cols: int,
    x: np.ndarray,
    y: np.ndarray,
    v: np.ndarray,
    free: np.ndarray,
    best_row: np.ndarray,
) -> int:
    """Square start: ``v[j] = min_i w[i, j]``, each column to its best row if that row is
    still free (columns in reverse, as JV), then the reduction transfer. Returns the
    number of free rows (listed in ``free``), or -1 where a column has no finite entry
    (no perfect matching exists)."""
    for j in range(cols):
        v[j] = w[j]
        best_row[j] = 0
    # Rows outer, columns inner: the block is read in memory order.
    for i in range(1, rows):
        base = i * cols
        for j in range(cols):
            h = w[base + j]
            if h < v[j]:
                v[j] = h
                best_row[j] = i
    matches = np.zeros(rows, dtype=np.int64)
    for j in range(cols - 1, -1, -1):
        if v[j] == np.inf:
            return -1
        i = best_row[j]
        if matches[i] == 0:
            x[i] = j
            y[j] = i
        else:
            y[j] = -1
        matches[i] += 1
    n_free = 0
    for i in range(rows):
        if matches[i] == 0:
            free[n_free] = i
            n_free += 1
        elif matches[i] == 1:
            # Reduction transfer: the row's price moves onto its column.
            j1 = x[i]
            base = i * cols
            mu = np.inf
            for j in range(cols):
                if j != j1:
                    h = w[base + j] - v[j]
                    if h < mu:
                        mu = h
            if mu < np.inf:
                v[j1] -= mu
    return n_free


@jit
def _augmenting_row_reduction(
    w: np.ndarray,
    cols: int,
    x: np.ndarray,
    y: np.ndarray,
    v: np.ndarray,
    free: np.ndarray,
    n_free: int,
) -> int:
    """One JV pass over the free rows: each takes its cheapest column and lowers that
    column's potential by the gap to its second cheapest, displacing the column's row
    (which then bids at once if the potential fell, else in the next pass). Returns how
    many rows are left free (listed in ``free``)."""
    current = 0
    new_free = 0
    steps = 0
    while current < n_free:
        steps += 1
        i = free[current]
        current += 1
        base = i * cols
        umin = w[base] - v[0]
        j1 = 0
        usubmin = np.inf
        j2 = -1
        for j in range(1, cols):
            h = w[base + j] - v[j]
            if h < usubmin:
                if h >= umin:
                    usubmin = h
                    j2 = j
                else:
                    usubmin = umin
                    umin = h
                    j2 = j1
                    j1 = j
        if umin == np.inf:
            # No finite column: the path search reports the image infeasible.
            free[new_free] = i
            new_free += 1
            continue
        i0 = y[j1]
        # An infinite gap (one finite column) cannot move a potential.
        lowers = umin < usubmin < np.inf
        if steps < current * cols:
            if lowers:
                v[j1] -= usubmin - umin
            elif i0 >= 0 and j2 >= 0 and usubmin < np.inf:
                j1 = j2
                i0 = y[j2]
            if i0 >= 0:
                if lowers:
                    current -= 1
                    free[current] = i0
                else:
                    free[new_free] = i0
                    new_free += 1
        elif i0 >= 0:
            free[new_free] = i0
            new_free += 1
        x[i] = j1
        y[j1] = i
        if i0 >= 0:
            x[i0] = -1
    return new_free


@jit
def _augment(
    w: np.ndarray,
    cols: int,
    x: np.ndarray,
    y: np.ndarray,
    v: np.ndarray,
    free: np.ndarray,
    n_free: int,
    d: np.ndarray,
    pred: np.ndarray,
    order: np.ndarray,
) -> bool:
    """Shortest augmenting paths (Dijkstra on the reduced costs) from each free row; the
    columns reached before the free one found get their potentials lowered. False where
    a free row reaches no column at finite cost (the image is infeasible)."""
    for f in range(n_free):
        start = free[f]
        base = start * cols
        for j in range(cols):
            d[j] = w[base + j] - v[j]
            pred[j] = start
            order[j] = j
        # order[:low] scanned, order[low:up] at the current minimum, order[up:] the rest.
        low = 0
        up = 0
        last = 0
        mn = 0.0
        end = -1
        while end < 0:
            if low == up:
                last = low
                mn = d[order[up]]
                up += 1
                for k in range(up, cols):
                    j = order[k]
                    h = d[j]
                    if h <= mn:
                        if h < mn:
                            up = low
                            mn = h
                        order[k] = order[up]
                        order[up] = j
                        up += 1
                if mn == np.inf:
                    return False
                for k in range(low, up):
                    if y[order[k]] < 0:
                        end = order[k]
                        break
                if end >= 0:
                    break
            j1 = order[low]
            low += 1
            i = y[j1]
            row = i * cols
            u1 = w[row + j1] - v[j1] - mn
            for k in range(up, cols):
                j = order[k]
                h = w[row + j] - v[j] - u1
                if h < d[j]:
                    d[j] = h
                    pred[j] = i
                    if h == mn:
                        if y[j] < 0:
                            end = j
                            break
                        order[k] = order[up]
                        order[up] = j
                        up += 1
        for k in range(last):
            j = order[k]
            v[j] += d[j] - mn
        while True:
            i = pred[end]
            y[end] = i
            j = end
            end = x[i]
            x[i] = j
            if i == start:
                break
    return True


@jit
def _solve_block(
    w: np.ndarray,
    rows: int,
    cols: int,
    x: np.ndarray,
    y: np.ndarray,
    v: np.ndarray,
    free: np.ndarray,
    d: np.ndarray,
    pred: np.ndarray,
    order: np.ndarray,
    best: np.ndarray,
    best_col: np.ndarray,
) -> bool:
    """Minimum-cost assignment of every row of the float64 ``w[:rows * cols]`` (row-major,
    ``rows <= cols``) into ``x`` (row to column). ``best[i]`` / ``best_col[i]`` hold each
    row's smallest entry and its first column (read while copying the block). False
    where the block is infeasible."""
    for j in range(cols):
        y[j] = -1
    for i in range(rows):
        x[i] = -1
    if rows == cols:
        n_free = _column_reduction(w, rows, cols, x, y, v, free, pred)
        if n_free < 0:
            return False
        n_free = _augmenting_row_reduction(w, cols, x, y, v, free, n_free)
    else:
        # Row reduction with zero column potentials: each row takes its cheapest column
        # where no earlier row did (with many more columns than rows, nearly all do).
        for j in range(cols):
            v[j] = 0.0
        n_free = 0
        for i in range(rows):
            if best[i] == np.inf:
                return False
            j = best_col[i]
            if y[j] < 0:
                x[i] = j
                y[j] = i
            else:
                free[n_free] = i
                n_free += 1
    return _augment(w, cols, x, y, v, free, n_free, d, pred, order)


@jit
def solve_batch(
    cost: np.ndarray,
    pred_mask: np.ndarray,
    target_mask: np.ndarray,
    out: np.ndarray,
    status: np.ndarray,
) -> None:
    """Exact matching of every image of ``cost`` (``[B, M, N]`` float32 or float64,
    C-contiguous; ``bool`` masks ``[B, M]`` and ``[B, N]``) into ``out`` (``int64[B, M]``:
    the target of each prediction, -1 background, -2 padded). ``status[b]`` becomes
    :data:`NOT_A_NUMBER`, :data:`NEGATIVE_INFINITY` or :data:`INFEASIBLE` for an image
    that cannot be solved (checked in that order), else 0; such an image's ``out`` row
    is left partial."""
    b_count, m, n = cost.shape
    small = min(m, n)
    large = max(m, n)
    w = np.empty(small * large)
    pred_ids = np.empty(m, dtype=np.int64)
    target_ids = np.empty(n, dtype=np.int64)
    x = np.empty(small, dtype=np.int64)
    free = np.empty(small, dtype=np.int64)
    y = np.empty(large, dtype=np.int64)
    v = np.empty(large)
    d = np.empty(large)
    pred = np.empty(large, dtype=np.int64)
    order = np.empty(large, dtype=np.int64)
    best = np.empty(small)
    best_col = np.empty(small, dtype=np.int64)
    for b in range(b_count):
        status[b] = 0
        p = 0
        for k in range(m):
            if pred_mask[b, k]:
                pred_ids[p] = k
                p += 1
                out[b, k] = -1
            else:
                out[b, k] = -2
        t = 0
        for k in range(n):
            if target_mask[b, k]:
                target_ids[t] = k
                t += 1
        if p == 0 or t == 0:
            continue
        # The working block, smaller side as rows, checked on the way (NaN or -inf in a
        # valid pair fails the one comparison below), with each row's minimum.
        bad = False
        targets_are_rows = p > t
        if targets_are_rows:
            rows, cols = t, p
            for i in range(t):
                best[i] = np.inf
                best_col[i] = 0
            for j in range(p):
                source = cost[b, pred_ids[j]]
                for i in range(t):
                    h = np.float64(source[target_ids[i]])
                    bad |= not h > -np.inf
                    w[i * p + j] = h
                    if h < best[i]:
                        best[i] = h
                        best_col[i] = j
        else:
            rows, cols = p, t
            for i in range(p):
                source = cost[b, pred_ids[i]]
                base = i * t
                row_best = np.inf
                row_best_col = 0
                for j in range(t):
                    h = np.float64(source[target_ids[j]])
                    bad |= not h > -np.inf
                    w[base + j] = h
                    if h < row_best:
                        row_best = h
                        row_best_col = j
                best[i] = row_best
                best_col[i] = row_best_col
        if bad:
            status[b] = NEGATIVE_INFINITY
            for k in range(rows * cols):
                if np.isnan(w[k]):
                    status[b] = NOT_A_NUMBER
                    break
            continue
        if not _solve_block(w, rows, cols, x, y, v, free, d, pred, order, best, best_col):
            status[b] = INFEASIBLE
            continue
        for i in range(rows):
            if targets_are_rows:
                out[b, pred_ids[x[i]]] = target_ids[i]
            else:
                out[b, pred_ids[i]] = target_ids[x[i]]
