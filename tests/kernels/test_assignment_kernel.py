"""The dense assignment kernel's augmenting row reduction against a plain transcription
that scans every row in full (the cached columns must give the same bids, ties
included), and its square solves against scipy where the bidding places most rows."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

pytest.importorskip("numba")

from detloss._kernels import assignment_cpu as kernel


def reference_row_reduction(w, x, y, v, free, n_free, step_factor):
    """Jonker-Volgenant's augmenting row reduction with the bounded bidding of the kernel,
    each bid from a full scan of the row (first column wins ties)."""
    cols = w.shape[1]
    current = new_free = steps = 0
    while current < n_free:
        steps += 1
        i = free[current]
        current += 1
        reduced = w[i] - v
        j1 = int(np.argmin(reduced))
        umin = reduced[j1]
        others = reduced.copy()
        others[j1] = np.inf
        j2 = int(np.argmin(others)) if cols > 1 else -1
        usubmin = others[j2] if cols > 1 else np.inf
        if umin == np.inf:
            free[new_free] = i
            new_free += 1
            continue
        i0 = y[j1]
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


def column_reduction_start(w):
    """The kernel's square start, and the bidding's cache as its reduction transfer
    leaves it."""
    n = w.shape[0]
    x, y, v = np.full(n, -1), np.full(n, -1), np.empty(n)
    free = np.empty(n, dtype=np.int64)
    cache = (
        np.empty((n, kernel._CACHED), dtype=np.int64),
        np.empty(n),
        np.empty(kernel._CACHED + 1),
    )
    cache[0][:, 0] = -1
    n_free = kernel._column_reduction(w, x, y, v, free, np.empty(n, dtype=np.int64), cache)
    return x, y, v, free, n_free, cache


COSTS = {
    "uniform": lambda rng, n: rng.random((n, n)),
    "three values": lambda rng, n: rng.integers(0, 3, (n, n)).astype(np.float64),
    "identical rows": lambda rng, n: np.tile(rng.integers(0, 20, n).astype(np.float64), (n, 1)),
    "rank one": lambda rng, n: np.outer(rng.random(n), rng.random(n)),
    "forbidden pairs": lambda rng, n: np.where(
        rng.random((n, n)) < 0.4, np.inf, rng.random((n, n))
    ),
}


@pytest.mark.parametrize("kind", sorted(COSTS))
@pytest.mark.parametrize("step_factor", [4, 256])
def test_cached_bids_are_those_of_full_scans(kind, step_factor):
    rng = np.random.default_rng(len(kind) * 10 + step_factor)
    w = COSTS[kind](rng, 60)
    x, y, v, free, n_free, cache = column_reduction_start(w)
    if n_free < 0:
        pytest.skip("a column without a finite entry")
    want = [a.copy() for a in (x, y, v, free)]
    want_free = n_free
    cache = (
        np.empty((60, kernel._CACHED), dtype=np.int64),
        np.empty(60),
        np.empty(kernel._CACHED + 1),
    )
    cache[0][:, 0] = -1
    for _ in range(2):  # the cache outlives the first pass, as in the solve
        want_free = reference_row_reduction(w, *want, want_free, step_factor)
        n_free = kernel._augmenting_row_reduction(w, (x, y, v), free, n_free, step_factor, cache)
        assert n_free == want_free
        np.testing.assert_array_equal(x, want[0])
        np.testing.assert_array_equal(y, want[1])
        np.testing.assert_array_equal(v, want[2])
        np.testing.assert_array_equal(free[:n_free], want[3][:want_free])


@pytest.mark.parametrize("kind", sorted(COSTS))
@pytest.mark.parametrize("n", [2, 17, 250])
def test_square_solves_match_scipy(kind, n):
    rng = np.random.default_rng(n)
    cost = COSTS[kind](rng, n)[None]
    out = np.empty((1, n), dtype=np.int64)
    status = np.empty(1, dtype=np.int64)
    kernel.solve_batch(cost, None, np.ones((1, n), dtype=bool), out, status)
    try:
        rows, cols = linear_sum_assignment(cost[0])
    except ValueError:
        assert status[0] == kernel.INFEASIBLE
        return
    assert status[0] == 0
    assert sorted(out[0]) == list(range(n))
    want = cost[0][rows, cols].sum()
    assert cost[0][np.arange(n), out[0]].sum() == pytest.approx(want, rel=1e-12, abs=1e-12)
