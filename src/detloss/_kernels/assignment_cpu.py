"""Compiled exact assignment of a whole batch on the CPU (Numba; optional).

:func:`detloss.match.hungarian` solves host problems through :func:`solve_batch` when
Numba is installed: one call for every image of the batch, read straight from the padded
``[B, M, N]`` cost (float32 or float64) and the two masks, with no thread pool and no
per-image Python. An image whose real predictions and targets are prefixes of their
slots is read in place, as a view whose rows are the smaller side (``R <= C``, the only
transposition); any other is packed once into a float64 block through index lists.
Every step reads the block through a 2-D view, so Numba compiles one specialisation
per memory layout: the whole C-contiguous image (a square or wide image with no
padding, e.g. one large problem) gets loops without stride arithmetic, about 1.6 times
faster than the strided ones on a 1000 x 1000 block. Arithmetic is float64. Each block
is solved by the Jonker-Volgenant scheme (Jonker & Volgenant 1987, as in ``lapjv``):

1. square blocks: column reduction and reduction transfer; wide blocks start from zero
   column potentials (each row takes its cheapest column where it is free), which keeps
   every unassigned column's potential at the maximum, the rectangular optimality
   condition. Then two passes of augmenting row reduction (an auction step per free
   row: its best column at its second-best price) whose bidding is bounded
   (``_SQUARE_STEPS`` / ``_WIDE_STEPS`` per row, not JV's column count) and mostly
   reads a few cached columns per step instead of the row (the potentials only fall);
2. shortest augmenting paths (Dijkstra on reduced costs) for the rows still free.

Every step keeps the reduced costs ``c[i, j] - u[i] - v[j]`` non-negative and zero on
assigned pairs, so the result is optimal (the same total as scipy's
``linear_sum_assignment``, which runs step 2 alone). ``+inf`` entries are forbidden
pairs: potentials stay finite, and a path search that finds no finite column proves the
image infeasible.
"""

from __future__ import annotations

import numpy as np

from ._numba import jit

__all__ = ["INFEASIBLE", "NEGATIVE_INFINITY", "NOT_A_NUMBER", "solve_batch"]

#: ``status`` codes of an image, in the order the host checks them.
NOT_A_NUMBER = 1
NEGATIVE_INFINITY = 2
INFEASIBLE = 3


#: Columns a row of augmenting row reduction keeps from its last full scan.
_CACHED = 4


@jit
def _scan_row(row: np.ndarray, v: np.ndarray, columns: np.ndarray, top: np.ndarray) -> None:
    """The :data:`_CACHED` + 1 smallest reduced costs ``row[j] - v[j]`` into ``top``
    (ascending, the first column winning ties) and the columns of the first
    :data:`_CACHED` into ``columns`` (-1 where the row has fewer finite entries)."""
    for t in range(_CACHED + 1):
        top[t] = np.inf
        if t < _CACHED:
            columns[t] = -1
    for j in range(row.shape[0]):
        h = np.float64(row[j]) - v[j]
        if h < top[_CACHED]:
            t = _CACHED
            while t > 0 and h < top[t - 1]:
                top[t] = top[t - 1]
                if t < _CACHED:
                    columns[t] = columns[t - 1]
                t -= 1
            top[t] = h
            if t < _CACHED:
                columns[t] = j


@jit
def _column_reduction(
    w: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    v: np.ndarray,
    free: np.ndarray,
    best_row: np.ndarray,
    cache: tuple,
) -> int:
    """Square start: ``v[j] = min_i w[i, j]``, each column to its best row if that row is
    still free (columns in reverse, as JV), then the reduction transfer. Returns the
    number of free rows (listed in ``free``), or -1 where a column has no finite entry
    (no perfect matching exists). The transfer's scan of a row fills its entry of the
    bidding's ``cache`` (see :func:`_augmenting_row_reduction`): the potentials only
    fall from there on, and a row it matches is often displaced in the bidding."""
    rows, cols = w.shape
    cached, bound, top = cache
    for j in range(cols):
        v[j] = np.float64(w[0, j])
        best_row[j] = 0
    for i in range(1, rows):
        row = w[i]
        for j in range(cols):
            h = np.float64(row[j])
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
            _scan_row(w[i], v, cached[i], top)
            bound[i] = top[_CACHED]
            # The smallest reduced cost beside the row's own column.
            mu = top[1] if cached[i, 0] == j1 else top[0]
            if mu < np.inf:
                v[j1] -= mu
    return n_free


@jit
def _augmenting_row_reduction(
    w: np.ndarray,
    state: tuple,
    free: np.ndarray,
    n_free: int,
    step_factor: int,
    cache: tuple,
) -> int:
    """One JV pass over the free rows: each takes its cheapest column and lowers that
    column's potential by the gap to its second cheapest, displacing the column's row
    (which then bids at once if the potential fell, else in the next pass). Returns how
    many rows are left free (listed in ``free``).

    A row bids again at once only while the pass has taken fewer than ``step_factor``
    steps per row handled so far (JV's bound is the column count). ``state`` is the
    assignment ``(x, y, v)``: each row's column, each column's row, the column potentials.

    The potentials only fall here, so a row's reduced costs only rise: ``cache`` keeps,
    from each row's last full scan, its :data:`_CACHED` cheapest columns
    (``cached[i]``, -1 where unset) and the next smallest reduced cost (``bound[i]``),
    below which no other column can have come since. A row whose two cheapest cached
    columns are now still under that bound bids from them alone; the same columns as a
    full scan, ties included (the first column wins). ``top`` is scratch.
    """
    x, y, v = state
    cached, bound, top = cache
    current = 0
    new_free = 0
    steps = 0
    while current < n_free:
        steps += 1
        i = free[current]
        current += 1
        row = w[i]
        columns = cached[i]
        umin = np.inf
        j1 = -1
        usubmin = np.inf
        j2 = -1
        if columns[0] >= 0:
            for t in range(_CACHED):
                j = columns[t]
                if j < 0:
                    break
                h = np.float64(row[j]) - v[j]
                if h < umin or (h == umin and j < j1):
                    usubmin = umin
                    j2 = j1
                    umin = h
                    j1 = j
                elif h < usubmin or (h == usubmin and j < j2):
                    usubmin = h
                    j2 = j
        if not usubmin < bound[i]:
            _scan_row(row, v, columns, top)
            bound[i] = top[_CACHED]
            umin = top[0]
            j1 = columns[0]
            usubmin = top[1]
            j2 = columns[1]
        if umin == np.inf:
            # No finite column: the path search reports the image infeasible.
            free[new_free] = i
            new_free += 1
            continue
        i0 = y[j1]
        # An infinite gap (one finite column) cannot move a potential.
        lowers = umin < usubmin < np.inf
        if steps < current * step_factor:
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


#: Bounds of the bidding of augmenting row reduction, in steps per free row (see
#: :func:`_solve_block`). JV's bound, the column count, lets the bidding of a random
#: 1000 x 1000 block run for 25 ms where it leaves a few rows that the path search then
#: places in less. With the cached columns most steps read a few entries, not a row:
#: on random square blocks 256 steps per row leave no row free up to 2000 x 2000 and
#: solve a 1000 x 1000 block in half the time of 16 (2000 x 2000: a sixth), while on
#: structured ones (identical rows, rank-one or low-rank costs, few distinct values)
#: it changes the time by -25 % to +10 %.
_SQUARE_STEPS = 256
_WIDE_STEPS = 8


@jit
def _augment(
    w: np.ndarray,
    state: tuple,
    free: np.ndarray,
    n_free: int,
    d: np.ndarray,
    pred: np.ndarray,
    order: np.ndarray,
) -> bool:
    """Shortest augmenting paths (Dijkstra on the reduced costs) from each free row; the
    columns reached before the free one found get their potentials lowered. False where
    a free row reaches no column at finite cost (the image is infeasible). ``state`` as
    in :func:`_augmenting_row_reduction`.

    The columns are kept in scan order (``order``) and so are their path costs and
    potentials (``d[0]``, ``d[1]``, moved with them): the scan of a row then reads
    everything in memory order except the row's own entries. That scan also keeps the
    smallest path cost left and its first position, so the next column is taken without
    a search of its own (one pass per scanned row instead of two; 5 % of a random
    1000 x 1000 solve). Tied columns are taken one at a time."""
    x, y, v = state
    cols = w.shape[1]
    dist = d[0]
    pot = d[1]
    for f in range(n_free):
        source = free[f]
        row = w[source]
        # The smallest path cost of the unscanned columns and its first position, kept
        # by every scan so that no separate search for the next column is needed.
        best = np.inf
        best_at = 0
        for j in range(cols):
            h = np.float64(row[j]) - v[j]
            dist[j] = h
            pot[j] = v[j]
            pred[j] = source
            order[j] = j
            if h < best:
                best = h
                best_at = j
        # Positions [:low] scanned; [low:] the rest.
        low = 0
        mn = 0.0
        end = -1
        while True:
            mn = best
            if mn == np.inf:
                return False
            j1 = order[best_at]
            if y[j1] < 0:
                end = j1
                break
            order[best_at] = order[low]
            order[low] = j1
            dist[best_at] = dist[low]
            dist[low] = mn
            p1 = pot[best_at]
            pot[best_at] = pot[low]
            pot[low] = p1
            i = y[j1]
            row = w[i]
            u1 = np.float64(row[j1]) - p1 - mn
            low += 1
            best = np.inf
            best_at = low
            for k in range(low, cols):
                j = order[k]
                h = np.float64(row[j]) - pot[k] - u1
                if h < dist[k]:
                    dist[k] = h
                    pred[j] = i
                    if h == mn and y[j] < 0:
                        end = j
                        break
                else:
                    h = dist[k]
                if h < best:
                    best = h
                    best_at = k
            if end >= 0:
                break
        last = low
        for k in range(last):
            v[order[k]] += dist[k] - mn
        while True:
            i = pred[end]
            y[end] = i
            j = end
            end = x[i]
            x[i] = j
            if i == source:
                break
    return True


@jit
def _solve_block(
    w: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    v: np.ndarray,
    free: np.ndarray,
    d: np.ndarray,
    pred: np.ndarray,
    order: np.ndarray,
    best: np.ndarray,
    best_col: np.ndarray,
    cache: tuple,
) -> bool:
    """Minimum-cost assignment of every row of the block ``w [R, C]`` (``R <= C``; a view
    with any strides, any float dtype, computed in float64) into ``x`` (row to column).
    ``best[i]`` / ``best_col[i]`` hold each row's smallest entry and its first column;
    ``cache`` is the work of :func:`_augmenting_row_reduction`. False where the block is
    infeasible."""
    rows, cols = w.shape
    for j in range(cols):
        y[j] = -1
    cached = cache[0]
    for i in range(rows):
        x[i] = -1
        cached[i, 0] = -1
    state = (x, y, v)
    if rows == cols:
        n_free = _column_reduction(w, x, y, v, free, pred, cache)
        if n_free < 0:
            return False
        steps = _SQUARE_STEPS
    else:
        # Row reduction with zero column potentials: each row takes its cheapest column
        # where no earlier row did (with many more columns than rows, nearly all do);
        # the others bid for theirs (two JV passes) before any path search. The bids are
        # bounded by _WIDE_STEPS per row, not JV's column count: on a wide block whose
        # rows crowd a few columns (3,000 heads packed among as many of 49,152
        # proposals), unbounded bidding ran for minutes where the path search takes
        # seconds.
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
        steps = _WIDE_STEPS
    for _ in range(2):
        if n_free == 0:
            break
        n_free = _augmenting_row_reduction(w, state, free, n_free, steps, cache)
    return _augment(w, state, free, n_free, d, pred, order)


@jit
def _row_minima(w: np.ndarray, best: np.ndarray, best_col: np.ndarray) -> bool:
    """Each row's smallest entry and its first column (rows read in memory order); False
    where an entry is NaN or -inf (both fail ``h > -inf``)."""
    ok = True
    rows, cols = w.shape
    for i in range(rows):
        row = w[i]
        row_best = np.inf
        row_best_col = 0
        for j in range(cols):
            h = np.float64(row[j])
            ok &= h > -np.inf
            if h < row_best:
                row_best = h
                row_best_col = j
        best[i] = row_best
        best_col[i] = row_best_col
    return ok


@jit
def _entries_valid(w: np.ndarray) -> bool:
    """False where ``w`` holds a NaN or -inf (both fail ``h > -inf``): a branch-free scan
    on vector registers, a tenth of :func:`_row_minima`'s time."""
    ok = True
    rows, cols = w.shape
    for i in range(rows):
        row = w[i]
        for j in range(cols):
            ok &= row[j] > -np.inf
    return ok


@jit
def _first_scan(w: np.ndarray, best: np.ndarray, best_col: np.ndarray) -> bool:
    """The scan of a block ``w [R, C]`` before its solve: the entries' check, and on a
    wide block (``R < C``, which starts from them) the row minima."""
    if w.shape[0] == w.shape[1]:
        return _entries_valid(w)
    return _row_minima(w, best, best_col)


#: The lanes of the vector loop of :func:`_column_minima`: enough that a vector loop
#: (16 float32 per register, four registers a step) runs over them even for few targets,
#: and that the lanes left after its last full step are few beside those it covers
#: (with 128, a batch of 300 predictions by 30 targets took 20 % longer, and one of
#: 900 by 100 a third longer).
_LANES = 256


@jit
def _column_minima(
    block: np.ndarray,
    p: int,
    t: int,
    lane_best: np.ndarray,
    lane_group: np.ndarray,
    lane_sum: np.ndarray,
    best: np.ndarray,
    best_col: np.ndarray,
) -> bool:
    """For each of the first ``t`` columns of the image ``block [M, N]`` (its real targets,
    the rows of the problem), the smallest of the first ``p`` entries and its first row.

    The block is read as groups of ``k`` consecutive rows, each group one contiguous run
    of ``k N`` lanes (``k N`` at least :data:`_LANES`; padded targets ride along and are
    ignored), so the loop has no branch and enough lanes for vector registers even with
    a few targets; it runs in the cost's own dtype (exact: widening keeps the order). The
    ``k`` partial minima of a target and the rows left over are merged after, the first
    row winning ties. False where an entry is NaN or -inf: -inf is the minimum then, and
    a NaN turns the target's running sum into NaN (as can a sum that overflows into -inf
    before a +inf; the caller then checks the entries one by one)."""
    n = block.shape[1]
    k = max(1, _LANES // n)
    width = k * n
    groups = p // k
    flat = block.reshape(-1)
    for lane in range(width):
        lane_best[lane] = np.inf
        lane_group[lane] = 0
        lane_sum[lane] = 0
    for g in range(groups):
        base = g * width
        group = np.int32(g)
        for lane in range(width):
            h = flat[base + lane]
            less = h < lane_best[lane]
            lane_best[lane] = h if less else lane_best[lane]
            lane_group[lane] = group if less else lane_group[lane]
            lane_sum[lane] += h
    ok = True
    for i in range(t):
        target_best = np.inf
        target_col = -1
        total = 0.0
        for r in range(k):
            lane = r * n + i
            h = np.float64(lane_best[lane])
            j = lane_group[lane] * k + r
            if h < target_best or (h == target_best and (target_col < 0 or j < target_col)):
                target_best = h
                target_col = j
            total += lane_sum[lane]
        for j in range(groups * k, p):
            h = np.float64(block[j, i])
            if h < target_best:
                target_best = h
                target_col = j
            total += h
        best[i] = target_best
        best_col[i] = max(target_col, 0)
        ok &= target_best > -np.inf and not np.isnan(total)
    return ok


@jit
def _invalid_entries(w: np.ndarray) -> int:
    """:data:`NOT_A_NUMBER` where ``w`` holds a NaN, else :data:`NEGATIVE_INFINITY` where it
    holds -inf, else 0."""
    rows, cols = w.shape
    negative_infinity = False
    for i in range(rows):
        for j in range(cols):
            h = w[i, j]
            if np.isnan(h):
                return NOT_A_NUMBER
            negative_infinity |= h == -np.inf
    return NEGATIVE_INFINITY if negative_infinity else 0


@jit
def _solve_view(w: np.ndarray, scanned_ok: bool, work: tuple) -> int:
    """Solve the block ``w [R, C]`` (``R <= C``) with the work arrays ``work``, its row
    minima already in ``best`` / ``best_col``; ``scanned_ok`` False where that scan saw
    (or, for the lane scan, may have seen) a NaN or -inf. Returns the image's status."""
    x, y, v, free, d, pred, order, best, best_col, cache = work
    if not scanned_ok:
        invalid = _invalid_entries(w)
        if invalid:
            return invalid
    if _solve_block(w, x, y, v, free, d, pred, order, best, best_col, cache):
        return 0
    return INFEASIBLE


@jit
def solve_batch(
    cost: np.ndarray,
    pred_mask: np.ndarray | None,
    target_mask: np.ndarray,
    out: np.ndarray,
    status: np.ndarray,
) -> int:
    """Exact matching of every image of ``cost`` (``[B, M, N]`` float32 or float64,
    C-contiguous; ``bool`` masks ``[B, M]`` and ``[B, N]``, ``pred_mask`` None where every
    prediction is real, which spares its scan) into ``out`` (``int64[B, M]``:
    the target of each prediction, -1 background, -2 padded). ``status[b]`` becomes
    :data:`NOT_A_NUMBER`, :data:`NEGATIVE_INFINITY` or :data:`INFEASIBLE` for an image
    that cannot be solved (checked in that order), else 0; such an image's ``out`` row
    is left partial. Returns the first such image, or -1 (the host then reads no status).

    An image whose real predictions and targets are prefixes of the padded slots (the
    usual padded batch) is solved in place on ``cost``; any other is first packed into a
    float64 block. Either way the smaller side is the rows."""
    b_count, m, n = cost.shape
    small = min(m, n)
    large = max(m, n)
    packed = np.empty(small * large)
    pred_ids = np.empty(m, dtype=np.int64)
    target_ids = np.empty(n, dtype=np.int64)
    x = np.empty(small, dtype=np.int64)
    best = np.empty(small)
    best_col = np.empty(small, dtype=np.int64)
    work = (
        x,
        np.empty(large, dtype=np.int64),  # y: each column's row
        np.empty(large),  # v: column potentials
        np.empty(small, dtype=np.int64),  # free rows
        np.empty((2, large)),  # d: path costs and potentials in scan order
        np.empty(large, dtype=np.int64),  # pred: path tree
        np.empty(large, dtype=np.int64),  # order: the scan list
        best,
        best_col,
        (  # augmenting row reduction: cached columns, their bound, scratch
            np.empty((small, _CACHED), dtype=np.int64),
            np.empty(small),
            np.empty(_CACHED + 1),
        ),
    )
    lanes = max(n, _LANES)
    lane_best = np.empty(lanes, dtype=cost.dtype)
    lane_group = np.empty(lanes, dtype=np.int32)
    lane_sum = np.empty(lanes, dtype=cost.dtype)
    first_failed = -1
    if pred_mask is None:
        for k in range(m):
            pred_ids[k] = k
    for b in range(b_count):
        status[b] = 0
        p = 0
        prefix = True
        if pred_mask is None:
            p = m
            out[b] = -1
        else:
            for k in range(m):
                if pred_mask[b, k]:
                    prefix &= p == k
                    pred_ids[p] = k
                    p += 1
                    out[b, k] = -1
                else:
                    out[b, k] = -2
        t = 0
        for k in range(n):
            if target_mask[b, k]:
                prefix &= t == k
                target_ids[t] = k
                t += 1
        if p == 0 or t == 0:
            continue
        targets_are_rows = p > t
        rows, cols = (t, p) if targets_are_rows else (p, t)
        image = cost[b]
        # A prefix image is solved in place on a view of its real block (targets as rows
        # read down the image's columns); the whole image is a C-contiguous view, for
        # which Numba compiles its fastest loops. Any other is packed row-major in float64.
        if prefix and targets_are_rows:
            ok = _column_minima(image, p, t, lane_best, lane_group, lane_sum, best, best_col)
            code = _solve_view(image[:p, :t].T, ok, work)
        elif prefix and p == m and t == n:
            code = _solve_view(image, _first_scan(image, best, best_col), work)
        elif prefix:
            view = image[:p, :t]
            code = _solve_view(view, _first_scan(view, best, best_col), work)
        else:
            for i in range(rows):
                for j in range(cols):
                    if targets_are_rows:
                        packed[i * cols + j] = image[pred_ids[j], target_ids[i]]
                    else:
                        packed[i * cols + j] = image[pred_ids[i], target_ids[j]]
            view = packed[: rows * cols].reshape(rows, cols)
            code = _solve_view(view, _first_scan(view, best, best_col), work)
        status[b] = code
        if code != 0:
            if first_failed < 0:
                first_failed = b
            continue
        for i in range(rows):
            if targets_are_rows:
                out[b, pred_ids[x[i]]] = target_ids[i]
            else:
                out[b, pred_ids[i]] = target_ids[x[i]]
    return first_failed
