"""Compiled sparse assignment and radius search of the crowd matcher (Numba; optional).

:func:`augment` is a shortest-augmenting-path solver of the rectangular assignment
problem on a sparse candidate graph (CSR, float64): every row is matched to a distinct
column at minimum total cost over the candidate pairs. Each free row runs Dijkstra's
algorithm on the reduced costs ``w(r, c) - u_r - v_c`` (a binary heap over columns) until
it pops a free column, then augments and lowers the prices of the columns it settled.
The row duals are implicit, ``u_r = w(r, mate(r)) - v_mate(r)``; the column duals ``v``
are kept, and the invariants of the method hold between calls:

1. every candidate pair of a matched row has ``w(r, c) - u_r - v_c >= 0``,
2. ``v_c <= 0`` for every column, ``v_c = 0`` for every free column,
3. matched pairs have reduced cost 0 (by the definition of ``u``),

which are the conditions of the optimality proof in ``docs/dense_crowds.md`` restricted
to the candidates. So the duals it returns are directly the certificate's potentials,
and a later call can be *warm-started*: :func:`repair` takes the matching and prices of
an earlier call on a graph that has since gained pairs, frees the rows whose new pairs
broke invariant 1 (and, since a freed column must have ``v = 0``, the rows that this
price reset breaks in turn), and :func:`augment` then re-matches only the freed rows.

:func:`radius_violations` is the certificate's search over *all* pairs on a uniform grid
of the columns: each row visits the cells within its reach ``need_r / tau`` and
evaluates the reduced cost of every column there (the reference path asks a k-d tree for
ever more nearest neighbours instead; same pairs, same tolerance).

Results equal the reference (scipy's sparse Jonker-Volgenant plus Bellman-Ford duals) in
optimal total up to rounding; among tied assignments the one returned may differ.
"""

from __future__ import annotations

import numpy as np

from ._numba import jit

__all__ = ["augment", "radius_violations", "release", "repair", "solve"]

# Steps of the augmenting row reduction per free row, before the shortest paths.
_REDUCTION_STEPS = 2
# Steps of the column reduction per stale column, before the shortest paths.
_RELEASE_STEPS = 32


@jit
def _search_arrays(n_cols, n_edges):
    """Work arrays of a Dijkstra search over the columns: distances (all inf), the row
    each column was reached by, settled flags, the lists of touched and settled columns,
    and a heap (keys, columns) with room for one entry per edge."""
    capacity = max(n_edges + 1, 1)
    return (
        np.full(n_cols, np.inf),
        np.empty(n_cols, dtype=np.int64),
        np.zeros(n_cols, dtype=np.bool_),
        np.empty(n_cols, dtype=np.int64),
        np.empty(n_cols, dtype=np.int64),
        np.empty(capacity),
        np.empty(capacity, dtype=np.int64),
    )


@jit
def _heap_push(heap_key, heap_val, size, key, val):
    # Binary min-heap of (distance, column) in two arrays; lazy deletion of stale entries.
    i = size
    heap_key[i] = key
    heap_val[i] = val
    while i > 0:
        parent = (i - 1) >> 1
        if heap_key[parent] <= heap_key[i]:
            break
        heap_key[parent], heap_key[i] = heap_key[i], heap_key[parent]
        heap_val[parent], heap_val[i] = heap_val[i], heap_val[parent]
        i = parent
    return size + 1


@jit
def _lower(col, candidate, row, search, n_touched, size):
    """A Dijkstra step: column ``col`` reached at the shorter distance ``candidate`` via
    ``row``; ``search`` is ``(dist, pred, touched, heap_key, heap_val)``. Returns the new
    counts of touched columns and heap entries."""
    dist, pred, touched, heap_key, heap_val = search
    if dist[col] == np.inf:
        touched[n_touched] = col
        n_touched += 1
    dist[col] = candidate
    pred[col] = row
    return n_touched, _heap_push(heap_key, heap_val, size, candidate, col)


@jit
def _clear(dist, settled, touched, n_touched):
    """Undo a search's marks on the columns it touched, for the next search."""
    for i in range(n_touched):
        col = touched[i]
        dist[col] = np.inf
        settled[col] = False


@jit
def _heap_pop(heap_key, heap_val, size):
    size -= 1
    heap_key[0] = heap_key[size]
    heap_val[0] = heap_val[size]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        child = left
        if left + 1 < size and heap_key[left + 1] < heap_key[left]:
            child = left + 1
        if heap_key[i] <= heap_key[child]:
            break
        heap_key[child], heap_key[i] = heap_key[i], heap_key[child]
        heap_val[child], heap_val[i] = heap_val[i], heap_val[child]
        i = child
    return size


@jit
def _row_reduction(indptr, index, weight, row_mate, col_mate, v):
    """Jonker and Volgenant's augmenting row reduction, with a budget of steps: a free row
    takes its cheapest column (reduced cost ``w - v``) and lowers that column's price
    until the row is indifferent to its second cheapest; a row it displaces becomes free.
    Prices only fall and only on the column being taken, so the invariants hold
    throughout, and most rows are matched before any shortest-path search."""
    n_rows = indptr.shape[0] - 1
    queue = np.empty(n_rows, dtype=np.int64)
    n_free = 0
    for row in range(n_rows):
        if row_mate[row] < 0 and indptr[row + 1] > indptr[row]:
            queue[n_free] = row
            n_free += 1
    head = 0
    count = n_free
    budget = _REDUCTION_STEPS * n_free
    while count > 0 and budget > 0:
        budget -= 1
        row = queue[head]
        head = head + 1 if head + 1 < n_rows else 0
        count -= 1
        best = np.inf
        second = np.inf
        best_col = -1
        second_col = -1
        for e in range(indptr[row], indptr[row + 1]):
            col = index[e]
            reduced = weight[e] - v[col]
            if reduced < second:
                if reduced < best:
                    second = best
                    second_col = best_col
                    best = reduced
                    best_col = col
                else:
                    second = reduced
                    second_col = col
        col = best_col
        if second_col >= 0 and best < second:
            v[col] -= second - best
        elif col_mate[col] >= 0 and second_col >= 0:
            # Tied: prefer the second column where the first is taken.
            col = second_col
        owner = col_mate[col]
        row_mate[row] = col
        col_mate[col] = row
        if owner >= 0:
            row_mate[owner] = -1
            tail = head + count
            queue[tail if tail < n_rows else tail - n_rows] = owner
            count += 1


@jit
def augment(
    indptr: np.ndarray,
    index: np.ndarray,
    weight: np.ndarray,
    row_mate: np.ndarray,
    col_mate: np.ndarray,
    v: np.ndarray,
    reached: np.ndarray,
) -> int:
    """Match every free row (``row_mate == -1``), in place, on the CSR graph ``indptr
    [R + 1]``, ``index [E]`` (columns), ``weight [E]`` (costs).

    ``row_mate [R]``, ``col_mate [C]`` (``-1``: free) and the prices ``v [C]`` must satisfy
    the invariants of the module docstring (all free and ``v = 0`` for a cold start).
    Returns -1 when every row is matched; otherwise the graph has no matching of every
    row and the return value is the number ``n`` of rows written to ``reached [R]``: each
    row that found no free column and the rows its search reached (their candidate sets
    are too small; the matching of the others stays valid and optimal).
    """
    n_rows = indptr.shape[0] - 1
    n_cols = v.shape[0]
    _row_reduction(indptr, index, weight, row_mate, col_mate, v)
    dist, pred, settled, touched, done, heap_key, heap_val = _search_arrays(n_cols, index.shape[0])
    search = (dist, pred, touched, heap_key, heap_val)
    short = np.zeros(n_rows, dtype=np.bool_)
    # Columns a failed search settled reach no free column, now or after later
    # augmentations: later searches skip them (their prices are then no longer kept
    # consistent, but a graph without a matching of every row is grown and repaired).
    dead = np.zeros(n_cols, dtype=np.bool_)
    n_short = 0
    for start in range(n_rows):
        if row_mate[start] >= 0:
            continue
        n_touched = 0
        n_done = 0
        size = 0
        row = start
        base = 0.0
        sink = -1
        sink_dist = 0.0
        while True:
            # Relax the pairs of ``row``, reached at distance ``base`` (its own column's).
            mate = row_mate[row]
            own = 0.0 if mate < 0 else weight_of(indptr, index, weight, row, mate) - v[mate]
            for e in range(indptr[row], indptr[row + 1]):
                col = index[e]
                if settled[col] or dead[col]:
                    continue
                candidate = base + (weight[e] - v[col] - own)
                if candidate < dist[col]:
                    n_touched, size = _lower(col, candidate, row, search, n_touched, size)
            col = -1
            while size > 0:
                key = heap_key[0]
                top = heap_val[0]
                size = _heap_pop(heap_key, heap_val, size)
                if not settled[top] and key == dist[top]:
                    col = top
                    break
            if col < 0:
                break
            settled[col] = True
            done[n_done] = col
            n_done += 1
            if col_mate[col] < 0:
                sink = col
                sink_dist = dist[col]
                break
            row = col_mate[col]
            base = dist[col]
        if sink < 0:
            # No free column reachable: note the rows the search reached, undo its marks
            # (it changed no price) and go on with the other rows.
            for i in range(-1, n_done):
                row = start if i < 0 else col_mate[done[i]]
                if i >= 0:
                    dead[done[i]] = True
                if not short[row]:
                    short[row] = True
                    reached[n_short] = row
                    n_short += 1
            _clear(dist, settled, touched, n_touched)
            continue
        # Lower the prices of the settled columns (the sink's own change is zero). Pairs
        # within the tolerance below 0 (kept by ``repair``) can settle a column after one
        # farther away; the clamp keeps that rounding-sized excess from raising a price
        # above 0.
        for i in range(n_done):
            col = done[i]
            v[col] = min(v[col] - (sink_dist - dist[col]), 0.0)
        col = sink
        while True:
            row = pred[col]
            previous = row_mate[row]
            col_mate[col] = row
            row_mate[row] = col
            if row == start:
                break
            col = previous
        _clear(dist, settled, touched, n_touched)
    return n_short if n_short else -1


@jit
def weight_of(indptr, index, weight, row, col):
    """The cost of the candidate pair ``(row, col)`` (its row's columns are ascending)."""
    lo = indptr[row]
    hi = indptr[row + 1]
    while lo < hi:
        mid = (lo + hi) >> 1
        if index[mid] < col:
            lo = mid + 1
        else:
            hi = mid
    return weight[lo]


@jit
def repair(
    indptr: np.ndarray,
    index: np.ndarray,
    weight: np.ndarray,
    row_mate: np.ndarray,
    col_mate: np.ndarray,
    v: np.ndarray,
    tol: float,
    reset: bool,
) -> int:
    """Restore the invariants of :func:`augment`, in place, after pairs were added to the
    graph: free every matched row with a pair of reduced cost below ``-tol``, set the price
    of each freed column to 0, and repeat until no matched row has one. Returns the number
    of freed rows. ``v`` must be ``<= 0`` with ``v = 0`` on free columns beforehand.
    """
    n_rows = indptr.shape[0] - 1
    freed = 0
    changed = True
    while changed:
        changed = False
        for row in range(n_rows):
            mate = row_mate[row]
            if mate < 0:
                continue
            own = weight_of(indptr, index, weight, row, mate) - v[mate] - tol
            for e in range(indptr[row], indptr[row + 1]):
                if weight[e] - v[index[e]] < own:
                    row_mate[row] = -1
                    col_mate[mate] = -1
                    freed += 1
                    if reset:
                        v[mate] = 0.0
                        changed = True
                    break
    return freed


@jit
def _column_reduction(
    indptr, index, weight, col_indptr, col_rows, col_weight, row_mate, col_mate, v, stale
):
    """The mirror image of :func:`_row_reduction` for :func:`release`, with a budget of
    steps: a stale column raises its price towards 0; if a row becomes indifferent first,
    the column takes it (and its price rises on until the row's next best alternative),
    leaving that row's old column stale. Returns the columns still stale."""
    n = stale.shape[0]
    capacity = max(n, 1)
    queue = np.empty(capacity, dtype=np.int64)
    count = 0
    for col in stale:
        if col_mate[col] < 0 and v[col] < 0.0:
            queue[count] = col
            count += 1
    head = 0
    budget = _RELEASE_STEPS * count
    left = np.empty(capacity, dtype=np.int64)
    while count > 0 and budget > 0:
        budget -= 1
        col = queue[head]
        head = head + 1 if head + 1 < capacity else 0
        count -= 1
        best = -v[col]
        second = np.inf
        best_row = -1
        for e in range(col_indptr[col], col_indptr[col + 1]):
            row = col_rows[e]
            mate = row_mate[row]
            if mate < 0:
                continue
            slack = col_weight[e] - v[col] - (weight_of(indptr, index, weight, row, mate) - v[mate])
            if slack < second:
                if slack < best:
                    second = best
                    best = slack
                    best_row = row
                else:
                    second = slack
        if best_row < 0:
            v[col] = 0.0
            continue
        # Take the row, raising the price to its second best (at most to 0).
        raise_by = min(second, -v[col])
        old = row_mate[best_row]
        v[col] = min(v[col] + raise_by, 0.0)
        row_mate[best_row] = col
        col_mate[col] = best_row
        col_mate[old] = -1
        if v[old] < 0.0:
            tail = head + count
            queue[tail if tail < capacity else tail - capacity] = old
            count += 1
    n_left = 0
    for i in range(count):
        col = queue[(head + i) % capacity]
        left[n_left] = col
        n_left += 1
    return left[:n_left]


@jit
def release(
    indptr: np.ndarray,
    index: np.ndarray,
    weight: np.ndarray,
    col_indptr: np.ndarray,
    col_rows: np.ndarray,
    col_weight: np.ndarray,
    row_mate: np.ndarray,
    col_mate: np.ndarray,
    v: np.ndarray,
    stale: np.ndarray,
) -> None:
    """Bring every free column of ``stale`` with a price ``v < 0`` back to price 0, in
    place, keeping invariants 1 and 3 of the module docstring, when every row is matched.

    The mirror image of :func:`augment`: Dijkstra from the column over the reduced costs
    of the pairs into it (the same graph by columns: ``col_indptr [C + 1]``,
    ``col_rows [E]``, ``col_weight [E]``), from a row on to that row's own column; any
    settled column ``c`` may end the path at the extra cost ``-v_c`` (it is freed and its
    price returns to 0). The prices of the settled columns rise by the distance left to
    the sink, and each row on the path moves to the previous column. Nothing else moves,
    so the rows an earlier :func:`augment` matched keep most of their work.
    """
    n_cols = v.shape[0]
    stale = _column_reduction(
        indptr, index, weight, col_indptr, col_rows, col_weight, row_mate, col_mate, v, stale
    )
    dist, pred, settled, touched, done, heap_key, heap_val = _search_arrays(
        n_cols, col_rows.shape[0]
    )
    search = (dist, pred, touched, heap_key, heap_val)
    came_from = np.empty(n_cols, dtype=np.int64)
    for start in stale:
        if col_mate[start] >= 0 or v[start] >= 0.0:
            continue
        dist[start] = 0.0
        came_from[start] = -1
        touched[0] = start
        n_touched = 1
        size = _heap_push(heap_key, heap_val, 0, 0.0, start)
        n_done = 0
        sink = -1
        sink_dist = np.inf
        while size > 0:
            key = heap_key[0]
            col = heap_val[0]
            size = _heap_pop(heap_key, heap_val, size)
            if settled[col] or key != dist[col]:
                continue
            if key >= sink_dist:
                break
            settled[col] = True
            done[n_done] = col
            n_done += 1
            leave = key - v[col]
            if leave < sink_dist:
                sink = col
                sink_dist = leave
            for e in range(col_indptr[col], col_indptr[col + 1]):
                row = col_rows[e]
                mate = row_mate[row]
                if mate == col or mate < 0 or settled[mate]:
                    continue
                own = weight_of(indptr, index, weight, row, mate) - v[mate]
                candidate = key + (col_weight[e] - v[col] - own)
                if candidate < dist[mate]:
                    came_from[mate] = col
                    n_touched, size = _lower(mate, candidate, row, search, n_touched, size)
        for i in range(n_done):
            col = done[i]
            if dist[col] < sink_dist:
                v[col] = min(v[col] + (sink_dist - dist[col]), 0.0)
        v[sink] = 0.0
        # Walk back from the sink to its source: each row on the path moves to the column
        # it was reached from; the sink is left free.
        col = sink
        col_mate[sink] = -1
        while came_from[col] >= 0:
            row = pred[col]
            previous = came_from[col]
            row_mate[row] = previous
            col_mate[previous] = row
            col = previous
        _clear(dist, settled, touched, n_touched)


@jit
def by_column(
    indptr: np.ndarray, index: np.ndarray, weight: np.ndarray, n_cols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CSR graph by columns: ``(col_indptr [C + 1], col_rows [E], col_weight [E])``, by
    a counting sort."""
    n_rows = indptr.shape[0] - 1
    col_indptr = np.zeros(n_cols + 1, dtype=np.int64)
    for e in range(index.shape[0]):
        col_indptr[index[e] + 1] += 1
    for c in range(n_cols):
        col_indptr[c + 1] += col_indptr[c]
    fill = col_indptr[:-1].copy()
    col_rows = np.empty(index.shape[0], dtype=np.int64)
    col_weight = np.empty(index.shape[0])
    for row in range(n_rows):
        for e in range(indptr[row], indptr[row + 1]):
            at = fill[index[e]]
            col_rows[at] = row
            col_weight[at] = weight[e]
            fill[index[e]] = at + 1
    return col_indptr, col_rows, col_weight


@jit
def solve(
    indptr: np.ndarray,
    index: np.ndarray,
    weight: np.ndarray,
    row_mate: np.ndarray,
    col_mate: np.ndarray,
    v: np.ndarray,
    tol: float,
    reached: np.ndarray,
) -> int:
    """Minimum-cost matching of every row, in place, warm-started from ``row_mate``,
    ``col_mate``, ``v`` (a cold start: all ``-1`` and ``v = 0``), the graph having possibly
    gained pairs since: :func:`repair` without price resets (rows whose new pairs undercut
    their match start again, at the old prices), :func:`augment`, then :func:`release` of
    the columns left free with a price below 0. On return the invariants of the module
    docstring hold. Returns :func:`augment`'s value (-1: every row matched; else the
    number of rows in ``reached`` whose candidates are too few).
    """
    repair(indptr, index, weight, row_mate, col_mate, v, tol, False)
    n_short = augment(indptr, index, weight, row_mate, col_mate, v, reached)
    if n_short >= 0:
        return n_short
    stale = np.flatnonzero((col_mate < 0) & (v < 0.0))
    if stale.shape[0]:
        col_indptr, col_rows, col_weight = by_column(indptr, index, weight, v.shape[0])
        release(
            indptr, index, weight, col_indptr, col_rows, col_weight, row_mate, col_mate, v, stale
        )
    return -1


@jit
def radius_violations(
    rows: np.ndarray,
    base: np.ndarray,
    need: np.ndarray,
    cols: np.ndarray,
    gain: np.ndarray,
    cell_start: np.ndarray,
    order: np.ndarray,
    origin_x: float,
    origin_y: float,
    cell: float,
    n_x: int,
    n_y: int,
    tau: float,
    threshold: float,
    out_rows: np.ndarray,
    out_cols: np.ndarray,
) -> tuple[int, int]:
    """Pairs of reduced cost ``tau * ||rows[r] - cols[c]|| - base[r] - gain[c] <
    threshold`` over all pairs, by a grid of the columns.

    The columns lie in ``n_x * n_y`` square cells of side ``cell`` from ``(origin_x,
    origin_y)``; ``order [C]`` lists them cell by cell (row-major, x fastest) and
    ``cell_start [n_x * n_y + 1]`` delimits the cells. Row ``r`` only visits the cells
    within ``max(need[r], 0) / tau`` of it (``need[r] >= base[r] + max(gain) +
    threshold``, so every column farther away is above the threshold). Writes up to
    ``out_rows.shape[0]`` pairs to ``out_rows``, ``out_cols`` and returns ``(found,
    checked)``: the number of pairs below the threshold (which may exceed the room; the
    caller then asks again with more) and of reduced costs evaluated.
    """
    room = out_rows.shape[0]
    found = 0
    checked = 0
    for r in range(rows.shape[0]):
        if need[r] <= 0.0:
            continue
        x = rows[r, 0]
        y = rows[r, 1]
        reach = need[r] / tau
        x_lo = max(int(np.floor((x - reach - origin_x) / cell)), 0)
        x_hi = min(int(np.floor((x + reach - origin_x) / cell)), n_x - 1)
        y_lo = max(int(np.floor((y - reach - origin_y) / cell)), 0)
        y_hi = min(int(np.floor((y + reach - origin_y) / cell)), n_y - 1)
        limit = base[r] + threshold
        for cy in range(y_lo, y_hi + 1):
            for cx in range(x_lo, x_hi + 1):
                c0 = cy * n_x + cx
                for p in range(cell_start[c0], cell_start[c0 + 1]):
                    c = order[p]
                    checked += 1
                    dx = x - cols[c, 0]
                    dy = y - cols[c, 1]
                    reduced = tau * np.sqrt(dx * dx + dy * dy) - gain[c]
                    if reduced < limit:
                        if found < room:
                            out_rows[found] = r
                            out_cols[found] = c
                        found += 1
    return found, checked
