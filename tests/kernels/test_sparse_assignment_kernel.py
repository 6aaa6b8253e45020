"""The compiled sparse assignment of the crowd matcher against scipy and brute force:
cold and warm-started solves, tied and infeasible graphs, the duals' invariants, and the
certificate's grid search."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_bipartite_matching

pytest.importorskip("numba")

from detloss._kernels import sparse_assignment_cpu as kernel

MISSING = 1e6


def random_graph(rng, n_rows, n_cols, degree, tied=False):
    """CSR ``(indptr, index, weight)``, each row's columns ascending, and the dense cost
    with ``MISSING`` where a pair is not a candidate."""
    dense = np.full((n_rows, n_cols), MISSING)
    for row in range(n_rows):
        cols = rng.choice(n_cols, size=min(degree, n_cols), replace=False)
        dense[row, cols] = rng.integers(-3, 4, cols.size) if tied else rng.normal(size=cols.size)
    return to_csr(dense), dense


def to_csr(dense):
    mask = dense < MISSING
    indptr = np.concatenate(([0], np.cumsum(mask.sum(axis=1)))).astype(np.int64)
    rows, cols = np.nonzero(mask)
    return indptr, cols.astype(np.int64), dense[rows, cols].astype(np.float64)


def cold_state(n_rows, n_cols):
    return np.full(n_rows, -1, np.int64), np.full(n_cols, -1, np.int64), np.zeros(n_cols)


def feasible(dense):
    graph = csr_array((dense < MISSING).astype(float))
    return (maximum_bipartite_matching(graph, perm_type="column") >= 0).all()


def check_duals(indptr, index, weight, row_mate, col_mate, v, tol=1e-9):
    """The invariants the certificate needs, on every candidate pair."""
    assert (v <= 0).all()
    assert (v[col_mate < 0] == 0).all()
    assert (row_mate >= 0).all() and np.unique(row_mate).size == row_mate.size
    assert (col_mate[row_mate] == np.arange(row_mate.size)).all()
    for row in range(indptr.size - 1):
        cols, w = index[indptr[row] : indptr[row + 1]], weight[indptr[row] : indptr[row + 1]]
        u = w[cols == row_mate[row]][0] - v[row_mate[row]]
        assert (w - u - v[cols] >= -tol).all()


def total(dense, row_mate):
    return float(dense[np.arange(row_mate.size), row_mate].sum())


def optimum(dense):
    rows, cols = linear_sum_assignment(dense)
    return float(dense[rows, cols].sum())


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (20, 30), (60, 61), (80, 200)])
def test_cold_solve_is_optimal_with_valid_duals(shape, tied):
    rng = np.random.default_rng(sum(shape) + tied)
    for _ in range(5):
        (indptr, index, weight), dense = random_graph(rng, *shape, degree=6, tied=tied)
        if not feasible(dense):
            continue
        row_mate, col_mate, v = cold_state(*shape)
        reached = np.empty(shape[0], np.int64)
        assert kernel.solve(indptr, index, weight, row_mate, col_mate, v, 0.0, reached) == -1
        check_duals(indptr, index, weight, row_mate, col_mate, v)
        assert total(dense, row_mate) == pytest.approx(optimum(dense), abs=1e-9)


def test_hand_worked_example():
    # Row 0 prefers column 0, but row 1 can only use column 0: row 0 moves to column 2.
    dense = np.array([[1.0, MISSING, 2.5], [0.0, MISSING, MISSING]])
    indptr, index, weight = to_csr(dense)
    row_mate, col_mate, v = cold_state(2, 3)
    reached = np.empty(2, np.int64)
    assert kernel.solve(indptr, index, weight, row_mate, col_mate, v, 0.0, reached) == -1
    assert row_mate.tolist() == [2, 0]
    # Column 0 is worth 1.5 more to the rows than its price-free alternative.
    assert v.tolist() == [-1.5, 0.0, 0.0]


def test_infeasible_graph_reports_the_rows_that_compete():
    # Rows 0-2 share the two columns 0 and 1; row 3 has its own column.
    dense = np.full((4, 5), MISSING)
    dense[:3, :2] = [[1.0, 2.0], [2.0, 1.0], [0.5, 0.5]]
    dense[3, 4] = 0.0
    indptr, index, weight = to_csr(dense)
    row_mate, col_mate, v = cold_state(4, 5)
    reached = np.empty(4, np.int64)
    n = kernel.solve(indptr, index, weight, row_mate, col_mate, v, 0.0, reached)
    assert n > 0 and set(reached[:n].tolist()) == {0, 1, 2}
    assert row_mate[3] == 4


@pytest.mark.parametrize("tied", [False, True])
def test_warm_start_after_new_pairs_equals_a_cold_solve(tied):
    # Solve on part of the pairs, add the rest, re-solve warm: same optimum as a cold solve
    # of the full graph, with valid duals; repeated growth too.
    rng = np.random.default_rng(7 + tied)
    for trial in range(8):
        n_rows, n_cols = (40, 60) if trial % 2 else (50, 50)
        (_, _, _), dense = random_graph(rng, n_rows, n_cols, degree=12, tied=tied)
        if not feasible(dense):
            continue
        row_mate, col_mate, v = cold_state(n_rows, n_cols)
        reached = np.empty(n_rows, np.int64)
        keep = dense < MISSING
        ranks = rng.random(dense.shape)
        for fraction in (0.4, 0.7, 1.0):
            part = np.where(keep & (ranks <= fraction), dense, MISSING)
            if not feasible(part):
                continue
            indptr, index, weight = to_csr(part)
            n = kernel.solve(indptr, index, weight, row_mate, col_mate, v, 0.0, reached)
            assert n == -1
            check_duals(indptr, index, weight, row_mate, col_mate, v)
            assert total(part, row_mate) == pytest.approx(optimum(part), abs=1e-9)


def test_warm_start_releases_columns_left_behind():
    # Row 0 leaves column 0 (priced below 0 by the competition) for a new pair; nobody
    # else wants column 0 at that price, so its price must return to 0 or someone take it.
    dense = np.array([[0.0, 1.0, MISSING], [0.5, 0.0, MISSING]])
    indptr, index, weight = to_csr(dense)
    row_mate, col_mate, v = cold_state(2, 3)
    reached = np.empty(2, np.int64)
    kernel.solve(indptr, index, weight, row_mate, col_mate, v, 0.0, reached)
    grown = dense.copy()
    grown[0, 2] = -5.0
    indptr, index, weight = to_csr(grown)
    assert kernel.solve(indptr, index, weight, row_mate, col_mate, v, 0.0, reached) == -1
    check_duals(indptr, index, weight, row_mate, col_mate, v)
    assert total(grown, row_mate) == pytest.approx(optimum(grown))


def test_radius_violations_match_brute_force():
    rng = np.random.default_rng(3)
    rows = rng.uniform(0, 50, (40, 2))
    cols = rng.uniform(0, 50, (300, 2))
    cols[:20] = cols[20]  # coincident columns share a cell
    base = rng.uniform(-1, 1, 40)
    gain = rng.uniform(-1, 1, 300)
    tau = 0.1
    cell = 4.0
    n_x, n_y = (np.floor((cols.max(0) - cols.min(0)) / cell).astype(int) + 1).tolist()
    xy = np.minimum(((cols - cols.min(0)) / cell).astype(np.int64), [n_x - 1, n_y - 1])
    cell_id = xy[:, 1] * n_x + xy[:, 0]
    order = np.argsort(cell_id, kind="stable")
    cell_start = np.searchsorted(cell_id[order], np.arange(n_x * n_y + 1))
    dist = np.sqrt(((rows[:, None] - cols[None]) ** 2).sum(-1))
    for threshold in (-1e-12, 0.3):
        reduced = tau * dist - base[:, None] - gain[None]
        expected = set(zip(*np.nonzero(reduced < threshold)))
        need = base + gain.max() + threshold
        for room in (1, 100_000):
            out_r = np.empty(room, np.int64)
            out_c = np.empty(room, np.int64)
            found, checked = kernel.radius_violations(
                rows, base, need, cols, gain, cell_start, order, *cols.min(0), cell,
                n_x, n_y, tau, threshold, out_r, out_c,
            )  # fmt: skip
            assert found == len(expected)
            assert 0 < checked <= rows.shape[0] * cols.shape[0]
            if room >= found:
                assert set(zip(out_r[:found].tolist(), out_c[:found].tolist())) == expected
