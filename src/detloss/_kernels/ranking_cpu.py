"""Compiled CPU loops of the ranking losses (Numba; optional): the fast path of
:mod:`detloss.losses.ranking`, whose torch code states the mathematics.

The torch reference sorts the positives and the negatives and finds every positive's
zone ``(x_i - delta, x_i + delta)`` among both by binary searches. Here only the P
positives are sorted. Every negative is placed in one of the 2P + 1 gaps between the
sorted zone ends ``x_i +- delta``: all negatives of one gap see every positive the same
way (below its zone, inside it, or above it), so a count and a score sum per gap give
each positive's soft count of false positives, and each negative's update is the same
linear function of its score within its gap. :func:`bin_negatives` locates, counts and
sums the negatives in one pass through a uniform grid over the ends (no sort of the N
negatives: O(N + P log P)); :func:`spread_into` writes their updates in another.

:func:`ap_loss`, :func:`alrp_loss` and :func:`rank_sort_loss` are each a whole loss in
one call: at 10^5 elements the dozens of small torch operations around the two passes
would cost more than the passes. :func:`sorting_terms` is Rank & Sort's comparison of the
positives by score and by target, in O(P log P) with Fenwick trees instead of the torch
reference's dense O(P^2). Sums run in float64; the results equal the reference's up to
rounding (the tests compare both to 1e-12 in float64).

Importing this module imports Numba; the losses ask for it through
``detloss._kernels.fast_path("ranking", device)`` and run their torch reference where it
is missing. Compiled code is cached on disk.
"""

from __future__ import annotations

import numpy as np

from ._numba import jit

__all__ = [
    "alrp_loss",
    "ap_loss",
    "bin_negatives",
    "rank_sort_loss",
    "sorting_terms",
    "spread_into",
]

#: Grid cells per zone end: most negatives find their gap with one table read.
_CELLS_PER_BOUND = 16
#: Ranges of at most this many ends are scanned, longer ones bisected.
_SCAN = 8


@jit
def _cell(value: float, start: float, scale: float, cells: int) -> int:
    """The grid cell of ``value``, in ``[0, cells + 1]``; NaN goes to cell 0 (below)."""
    position = (value - start) * scale
    if not position >= 0.0:
        return 0
    if position >= cells:
        return cells + 1
    return int(position) + 1


@jit
def _first_above(bounds: np.ndarray, value: float, start: int, stop: int) -> int:
    """The first index in ``[start, stop)`` whose bound exceeds ``value`` (``stop`` if
    none), for bounds sorted ascending; a scan when the range is short."""
    if stop - start <= _SCAN:
        while start < stop and bounds[start] <= value:
            start += 1
        return start
    while start < stop:
        middle = (start + stop) >> 1
        if bounds[middle] <= value:
            start = middle + 1
        else:
            stop = middle
    return start


@jit
def bin_negatives(
    values: np.ndarray, roles: np.ndarray, negative: float, bounds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place the negatives (``roles[j] == negative``) among the sorted float64
    ``bounds`` (at least one).

    Returns ``(gap int32[n], counts float64[m + 1], sums float64[m + 1])`` for ``m``
    bounds: ``gap[j]`` is how many bounds lie at or below ``values[j]`` for a negative
    (``np.searchsorted(bounds, v, "right")``) and -1 for any other element; ``counts[g]``
    and ``sums[g]`` are the number and the score sum of the negatives in gap ``g``.

    A uniform grid of cells over ``[bounds[0], bounds[-1]]`` places a value with one table
    read: the cell is a non-decreasing function of the value, so every bound in an
    earlier cell lies below it and every bound in a later cell above it. Most cells hold
    at most one bound, and for those the gap is the bounds below the cell plus one
    comparison, without a branch; the other cells are searched.
    """
    n, m = values.size, bounds.size
    gap = np.empty(n, np.int32)
    counts = np.zeros(m + 1)
    sums = np.zeros(m + 1)
    start = bounds[0]
    cells = _CELLS_PER_BOUND * m
    width = bounds[-1] - start
    scale = cells / width if width > 0 else 0.0
    gridded = 0.0 < scale < np.inf
    in_cell = np.zeros(cells + 2, np.int32)
    if gridded:
        for k in range(m):
            in_cell[_cell(bounds[k], start, scale, cells)] += 1
    # table[c]: the bounds below cell c, or -1 - that where the cell holds several.
    table = np.empty(cells + 2, np.int32)
    below = 0
    for c in range(cells + 2):
        table[c] = below if in_cell[c] <= 1 else -1 - below
        below += in_cell[c]
    # The first bound at or after each table entry; NaN past the end compares false.
    first = np.empty(m + 1)
    first[:m] = bounds
    first[m] = np.nan
    for j in range(n):
        if roles[j] != negative:
            gap[j] = -1
            continue
        value = np.float64(values[j])
        if not gridded:
            g = _first_above(bounds, value, 0, m)
        else:
            c = _cell(value, start, scale, cells)
            g = table[c]
            if g >= 0:
                g += first[g] <= value
            else:
                g = _first_above(bounds, value, -1 - g, -1 - g + in_cell[c])
        gap[j] = g
        counts[g] += 1.0
        sums[g] += value
    return gap, counts, sums


@jit
def spread_into(
    out: np.ndarray, values: np.ndarray, gap: np.ndarray, slope: np.ndarray, offset: np.ndarray
) -> None:
    """``out[j] = slope[g] * values[j] + offset[g]`` for the elements of gap ``g >= 0``,
    0 for the others."""
    for j in range(values.size):
        g = gap[j]
        out[j] = 0.0 if g < 0 else slope[g] * np.float64(values[j]) + offset[g]


@jit
def _soft_counts(
    counts: np.ndarray,
    sums: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    x: np.ndarray,
    delta: float,
) -> np.ndarray:
    """``sum_k H(z_k - x_i)`` for every ``x_i`` from the prefix ``counts`` and ``sums`` of
    the ``z`` (sorted, or per gap): those in ``[lo_i, hi_i)`` are in the linear zone, those
    from ``hi_i`` on count 1."""
    out = np.empty(x.size)
    total = counts[-1]
    for i in range(x.size):
        inside = counts[hi[i]] - counts[lo[i]]
        linear = (sums[hi[i]] - sums[lo[i]]) - (x[i] - delta) * inside
        out[i] = (total - counts[hi[i]]) + linear / (2 * delta)
    return out


@jit
def _count_at_most(sorted_values: np.ndarray, queries: np.ndarray, strict: bool) -> np.ndarray:
    """For ascending ``queries``: how many ``sorted_values`` are ``<=`` each (``<`` when
    ``strict``), i.e. ``np.searchsorted(sorted_values, queries, "left" if strict else
    "right")``, in one merge-like sweep instead of a bisection per query."""
    out = np.empty(queries.size, np.int64)
    k = 0
    for i in range(queries.size):
        q = queries[i]
        if strict:
            while k < sorted_values.size and sorted_values[k] < q:
                k += 1
        else:
            while k < sorted_values.size and sorted_values[k] <= q:
                k += 1
        out[i] = k
    return out


@jit
def _merge(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The union of two ascending arrays, ascending."""
    out = np.empty(first.size + second.size)
    i = k = 0
    for j in range(out.size):
        if k >= second.size or (i < first.size and first[i] <= second[k]):
            out[j] = first[i]
            i += 1
        else:
            out[j] = second[k]
            k += 1
    return out


@jit
def _prefix(values: np.ndarray) -> np.ndarray:
    out = np.zeros(values.size + 1)
    out[1:] = np.cumsum(values)
    return out


@jit
def _positives(
    values: np.ndarray, roles: np.ndarray, graded: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(slot, where)``: the element indices ``where`` of the positives (``roles == 1``,
    or ``roles > 0`` when ``graded``) sorted by score ascending, ties in element order,
    and ``slot``, the rank of each among the positives in element order."""
    where = np.empty(values.size, np.int64)
    p = 0
    for j in range(values.size):
        if (roles[j] > 0) if graded else (roles[j] == 1):
            where[p] = j
            p += 1
    slot = np.argsort(values[where[:p]], kind="mergesort")
    return slot, where[:p][slot]


@jit
def _weights_at(weights: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Each sorted positive's weight: ``weights`` read at its element, or 1 where
    ``weights`` is empty."""
    if weights.size == 0:
        return np.ones(where.size)
    return weights[where]


@jit
def _rank(
    values: np.ndarray, roles: np.ndarray, x: np.ndarray, delta: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The steps of :class:`detloss.losses.ranking._engine.Ranking` for the sorted
    positives ``x``, with the negatives (``roles == 0``) placed in the gaps between the
    zone ends instead of sorted.

    Returns ``(lo_p, hi_p, positives_above, lo, hi, gap, negatives_above)``: the positives
    in each one's linear zone (``[lo_p, hi_p)``; those from ``hi_p`` on are above it);
    ``sum_k H(x_k - x_i)``, itself included with ``H(0) = 1/2``; ``[lo, hi)``, each
    zone's gaps; each negative's gap (-1 for other elements); and ``sum_j H(y_j - x_i)``.
    """
    p = x.size
    lo_p = _count_at_most(x, x - delta, False)
    hi_p = _count_at_most(x, x + delta, True)
    counts = np.arange(p + 1).astype(np.float64)
    positives_above = _soft_counts(counts, _prefix(x), lo_p, hi_p, x, delta)
    # A negative at exactly x_i - delta is below the zone (H = 0), one at x_i + delta
    # above it (H = 1): with each lower end moved up to the next float, "at or above an
    # end" means the same for both ends.
    lower = np.nextafter(x - delta, np.inf)
    upper = x + delta
    bounds = _merge(lower, upper)
    lo = _count_at_most(bounds, lower, False)
    hi = _count_at_most(bounds, upper, False)
    gap, counts, sums = bin_negatives(values, roles, 0.0, bounds)
    negatives_above = _soft_counts(_prefix(counts), _prefix(sums), lo, hi, x, delta)
    return lo_p, hi_p, positives_above, lo, hi, gap, negatives_above


@jit
def _spread_weights(
    update: np.ndarray,
    values: np.ndarray,
    gap: np.ndarray,
    weight: np.ndarray,
    x: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    delta: float,
) -> None:
    """Write ``sum_i w_i H(y_j - x_i)`` for every negative j into ``update`` (0 for the
    other elements). Within a gap that sum is linear in ``y``: positive i's slope starts
    at ``lo_i`` and ends at ``hi_i``, where its offset becomes ``w_i``."""
    gaps = 2 * x.size + 1
    slope = np.zeros(gaps + 1)
    offset = np.zeros(gaps + 1)
    width = 2 * delta
    for i in range(x.size):
        w = weight[i]
        slope[lo[i]] += w / width
        slope[hi[i]] -= w / width
        offset[lo[i]] += 0.5 * w - w * x[i] / width
        offset[hi[i]] += 0.5 * w + w * x[i] / width
    spread_into(update, values, gap, np.cumsum(slope), np.cumsum(offset))


@jit
def ap_loss(
    values: np.ndarray, labels: np.ndarray, delta: float, weights: np.ndarray, normalise: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP-Loss and its error-driven update for flat scores (float32 or float64) and
    labels (1 positive, 0 negative, anything else ignored): the steps of
    :func:`detloss.losses.ranking.ap._ap_terms`, with the negatives binned.

    ``weights`` (float64, one per element, or empty for 1) scale each positive's update;
    ``normalise`` divides them by P. Returns ``(errors, where, update)``: the errors
    ``1 - interpolated precision`` of the positives in ascending order of score, their
    element indices, and the update in ``values``' dtype.
    """
    update = np.zeros_like(values)
    _, where = _positives(values, labels, False)
    p = where.size
    if p == 0:
        return np.zeros(0), where, update
    x = values[where].astype(np.float64)
    _, _, a, lo, hi, gap, b = _rank(values, labels, x, delta)
    a += 0.5  # a positive ranks itself 1
    norm = float(p) if normalise else 1.0
    c = _weights_at(weights, where)

    # Ascending scores = descending recall: the running maximum of the precision is the
    # interpolated precision. Below it, the reference scales the positive's share of its
    # negatives by (1 - interpolated) / (1 - precision).
    best = 0.0
    weight = np.empty(p)
    errors = np.empty(p)
    for i in range(p):
        precision = a[i] / (a[i] + b[i])
        scale = 1.0
        if precision >= best:
            best = precision
        else:
            scale = (1.0 - best) / (1.0 - precision)
        weight[i] = c[i] * scale / ((a[i] + b[i]) * norm)
        errors[i] = 1.0 - best
    _spread_weights(update, values, gap, weight, x, lo, hi, delta)
    for i in range(p):
        update[where[i]] = -(c[i] * errors[i]) / norm
    return errors, where, update


@jit
def alrp_loss(
    values: np.ndarray,
    labels: np.ndarray,
    losses: np.ndarray,
    delta: float,
    eps: float,
    cls_weights: np.ndarray,
    loc_weights: np.ndarray,
    normalise: bool,
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """aLRP Loss for flat scores, labels as for :func:`ap_loss`, and ``losses``, the
    positives' localisation losses in element order (float64): the steps of
    :func:`detloss.losses.ranking.alrp._alrp_terms`.

    ``cls_weights`` and ``loc_weights`` scale each positive's term of the classification
    update and of the localisation gradient as ``weights`` in :func:`ap_loss`. Returns
    ``(P, classification errors, localisation values, where, update, d localisation /
    d losses)``, the per-positive arrays in ascending order of score; when ``losses``
    does not hold one entry per positive, only ``P`` is meaningful.
    """
    update = np.zeros_like(values)
    slot, where = _positives(values, labels, False)
    p = where.size
    if p == 0 or losses.size != p:
        return p, np.zeros(0), np.zeros(0), where, update, np.zeros(losses.size)
    x = values[where].astype(np.float64)
    loc = losses[slot]
    lo_p, hi_p, rank_pos, lo, hi, gap, false_pos = _rank(values, labels, x, delta)
    # The reference drops i itself from its positive relations and adds 1 instead:
    # sum_{k != i} H(x_k - x_i) = (sum with H(0) = 1/2) - 1/2, likewise for the losses.
    rank_pos += 0.5
    loc_above = _soft_counts(_prefix(loc), _prefix(loc * x), lo_p, hi_p, x, delta)
    rank = rank_pos + false_pos
    norm = float(p) if normalise else 1.0
    c = _weights_at(cls_weights, where)
    errors = np.empty(p)
    weight = np.zeros(p)
    own = np.zeros(p)
    for i in range(p):
        errors[i] = 1.0 - rank_pos[i] / rank[i]
        if false_pos[i] > eps:
            error = (loc_above[i] - 0.5 * loc[i] + false_pos[i]) / rank[i]
            weight[i] = c[i] * error / (false_pos[i] * norm)
            own[i] = -(c[i] * error) / norm
    _spread_weights(update, values, gap, weight, x, lo, hi, delta)
    for i in range(p):
        update[where[i]] = own[i]

    # Localisation: positives by descending score, each with the summed losses of those
    # at or above it over its soft rank; its gradient in loss k sums 1 / (rank_r P) over
    # the positives r at or below k in ascending order.
    c = _weights_at(loc_weights, where)
    localisation = np.empty(p)
    above = 0.0
    for i in range(p - 1, -1, -1):
        above += loc[i]
        localisation[i] = above / rank[i]
    grad = np.empty(p)
    below = 0.0
    for k in range(p):
        below += c[k] / rank[k]
        grad[slot[k]] = below / norm
    return p, errors, localisation, where, update, grad


@jit
def rank_sort_loss(
    values: np.ndarray,
    targets: np.ndarray,
    delta: float,
    eps: float,
    rank_weights: np.ndarray,
    sort_weights: np.ndarray,
    normalise: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rank & Sort Loss for flat scores and targets (> 0 a positive with that target, 0 a
    negative, < 0 ignored): the steps of :func:`detloss.losses.ranking.rank_sort.
    _rank_sort_terms`, with the negatives binned and the positives compared by
    :func:`sorting_terms`.

    The weights scale each positive's ranking and sorting updates as ``weights`` in
    :func:`ap_loss`. Returns ``(ranking errors, sorting errors, where, ranking update,
    sorting update)``, the errors in ascending order of score.
    """
    rank_update = np.zeros_like(values)
    sort_update = np.zeros_like(values)
    _, where = _positives(values, targets, True)
    p = where.size
    if p == 0:
        return np.zeros(0), np.zeros(0), where, rank_update, sort_update
    x = values[where].astype(np.float64)
    t = targets[where].astype(np.float64)
    lo_p, hi_p, rank_pos, lo, hi, gap, false_pos = _rank(values, targets, x, delta)
    norm = float(p) if normalise else 1.0

    # Ranking error: the share of false positives above each positive, handed to them in
    # proportion to H unless there are (almost) none.
    c = _weights_at(rank_weights, where)
    ranking = false_pos / (rank_pos + false_pos)
    weight = np.zeros(p)
    for i in range(p):
        if false_pos[i] > eps:
            weight[i] = c[i] * ranking[i] / false_pos[i] / norm
    _spread_weights(rank_update, values, gap, weight, x, lo, hi, delta)
    for i in range(p):
        rank_update[where[i]] = -(c[i] * ranking[i]) / norm if false_pos[i] > eps else 0.0

    keep = 1.0 - t
    current = _soft_counts(_prefix(keep), _prefix(keep * x), lo_p, hi_p, x, delta) / rank_pos
    c = _weights_at(sort_weights, where)
    sorting, own, received = sorting_terms(x, t, lo_p, hi_p, current, delta, eps, c)
    for i in range(p):
        sort_update[where[i]] = (own[i] + received[i]) / norm
    return ranking, sorting, where, rank_update, sort_update


@jit
def _tree_add(tree: np.ndarray, position: int, values: np.ndarray) -> None:
    """Add ``values`` (one per row of ``tree``) at ``position`` of Fenwick trees."""
    i = position + 1
    while i < tree.shape[1]:
        for row in range(tree.shape[0]):
            tree[row, i] += values[row]
        i += i & -i


@jit
def _tree_sum(tree: np.ndarray, row: int, stop: int) -> float:
    """The sum of ``[0, stop)`` of one Fenwick tree."""
    total = 0.0
    while stop > 0:
        total += tree[row, stop]
        stop -= stop & -stop
    return total


@jit
def _tree_range(tree: np.ndarray, row: int, start: int, stop: int) -> float:
    return _tree_sum(tree, row, stop) - _tree_sum(tree, row, start)


@jit
def _equal_runs(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Boundaries of the runs of equal ``values[order]`` (``order`` sorts them):
    run ``g`` is ``order[starts[g]:starts[g + 1]]``."""
    starts = [0]
    for j in range(1, order.size):
        if values[order[j]] != values[order[j - 1]]:
            starts.append(j)
    starts.append(order.size)
    return np.array(starts)


@jit
def sorting_terms(
    x: np.ndarray,
    t: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    current: np.ndarray,
    delta: float,
    eps: float,
    weight: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank & Sort's sorting error of every positive and its update, in O(P log P).

    ``x`` are the positives' scores ascending, ``t`` their targets, ``[lo_i, hi_i)`` the
    positives in i's linear zone (those from ``hi_i`` on count fully) and ``current`` the
    mean ``1 - t`` above each. For positive i the reference sums ``H(x_k - x_i)`` over the
    positives with ``t_k >= t_i`` (in order) and over the others (mis-sorted); positive i
    then hands its error to its mis-sorted positives in proportion to ``H``. Each of
    those sums is a count or a sum over an index range, restricted to the positives whose
    target lies on one side of ``t_i``: taking the positives by target and adding each to
    Fenwick trees over the score order answers them all.

    Returns ``(error, own, received)``: the sorting error, the update a positive keeps
    (``-weight * error`` when it has mis-sorted positives above ``eps``, else 0), and the
    update it receives from the positives it is mis-sorted against (each handing out
    ``weight * error``).
    """
    p = x.size
    width = 2 * delta
    keep = 1.0 - t
    all_x, all_keep, all_keep_x = _prefix(x), _prefix(keep), _prefix(keep * x)
    by_target = np.argsort(t, kind="mergesort")
    runs = _equal_runs(t, by_target)

    # Mis-sorted sums: the positives with a lower target, added run by run from the
    # lowest, are in the trees when a run is queried. Fields: count, x, 1 - t, (1 - t) x.
    below = np.zeros((4, p + 1))
    error, own, share = np.empty(p), np.empty(p), np.zeros(p)
    entry = np.empty(4)
    for g in range(runs.size - 1):
        for i in by_target[runs[g] : runs[g + 1]]:
            a, b, base = lo[i], hi[i], x[i] - delta
            missorted = (
                _tree_range(below, 0, b, p)
                + (_tree_range(below, 1, a, b) - base * _tree_range(below, 0, a, b)) / width
            )
            missorted_keep = (
                _tree_range(below, 2, b, p)
                + (_tree_range(below, 3, a, b) - base * _tree_range(below, 2, a, b)) / width
            )
            steps = (p - b) + ((all_x[b] - all_x[a]) - base * (b - a)) / width
            steps_keep = (all_keep[p] - all_keep[b]) + (
                (all_keep_x[b] - all_keep_x[a]) - base * (all_keep[b] - all_keep[a])
            ) / width
            e = current[i] - (steps_keep - missorted_keep) / (steps - missorted)
            error[i] = e
            if missorted > eps:
                own[i] = -(weight[i] * e)
                share[i] = weight[i] * e / missorted
            else:
                own[i] = 0.0
        for k in by_target[runs[g] : runs[g + 1]]:
            entry[0], entry[1], entry[2], entry[3] = 1.0, x[k], keep[k], keep[k] * x[k]
            _tree_add(below, k, entry)

    # Received updates: positive k is mis-sorted against the positives i with a higher
    # target, added run by run from the highest; H(x_k - x_i) is 1 for i < lo_k and
    # linear for lo_k <= i < hi_k. Fields: share, share * x.
    above = np.zeros((2, p + 1))
    received = np.empty(p)
    entry = np.empty(2)
    for g in range(runs.size - 2, -1, -1):
        for k in by_target[runs[g] : runs[g + 1]]:
            a, b = lo[k], hi[k]
            zone = (x[k] + delta) * _tree_range(above, 0, a, b) - _tree_range(above, 1, a, b)
            received[k] = _tree_sum(above, 0, a) + zone / width
        for i in by_target[runs[g] : runs[g + 1]]:
            entry[0], entry[1] = share[i], share[i] * x[i]
            _tree_add(above, i, entry)
    return error, own, received
