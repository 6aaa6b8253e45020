"""``detloss._kernels.assignment_cuda`` under Triton's interpreter, against scipy.

Run by tests/match/test_hungarian_device.py in a child process with ``TRITON_INTERPRET=1``.
Optimal assignments can tie, so the checks compare optimal totals, computed in float64
from the returned pairs, and require every real row to be assigned exactly once; where the
optimum is unique (continuous random costs) the pairs themselves are compared too.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run under TRITON_INTERPRET=1 (see tests/_triton.py)", allow_module_level=True)

from detloss._kernels import assignment_cuda as _assignment_kernel


@pytest.fixture(scope="module")
def kernel():
    return _assignment_kernel


def scipy_total(cost: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float | None:
    """The optimal total over the valid block, None where infeasible."""
    block = cost[np.ix_(rows, cols)]
    if block.shape[0] > block.shape[1]:
        return None
    try:
        r, c = linear_sum_assignment(block)
    except ValueError:
        return None
    return float(block[r, c].sum())


def check_image(cost, row_valid, col_valid, row_of_col, status) -> None:
    rows, cols = np.flatnonzero(row_valid), np.flatnonzero(col_valid)
    expected = scipy_total(cost, rows, cols)
    if expected is None:
        assert status == 1
        return
    assert status == 0
    assigned = np.flatnonzero(row_of_col >= 0)
    assert set(assigned) <= set(cols), "an invalid column was assigned"
    assert sorted(row_of_col[assigned]) == sorted(rows), "each valid row exactly once"
    total = cost[row_of_col[assigned], assigned].sum()
    np.testing.assert_allclose(total, expected, rtol=1e-12, atol=1e-12)


def run_kernel(kernel, cost, row_valid, col_valid):
    row_of_col, status = kernel.solve_on_device(
        torch.as_tensor(cost), torch.as_tensor(row_valid), torch.as_tensor(col_valid)
    )
    return row_of_col.numpy(), status.numpy()


def check_batch(kernel, cost, row_valid, col_valid) -> np.ndarray:
    row_of_col, status = run_kernel(kernel, cost, row_valid, col_valid)
    for i in range(cost.shape[0]):
        check_image(cost[i], row_valid[i], col_valid[i], row_of_col[i], status[i])
    return row_of_col


def test_unique_optimum_gives_scipy_pairs(kernel):
    rng = np.random.default_rng(0)
    cost = rng.random((3, 6, 11))
    valid_r, valid_c = np.ones((3, 6), bool), np.ones((3, 11), bool)
    row_of_col = check_batch(kernel, cost, valid_r, valid_c)
    for i in range(3):
        r, c = linear_sum_assignment(cost[i])
        np.testing.assert_array_equal(row_of_col[i][c], r)


def test_square_and_one_by_one(kernel):
    cost = np.array([[[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]]])
    row_of_col = check_batch(kernel, cost, np.ones((1, 3), bool), np.ones((1, 3), bool))
    # The textbook optimum: rows (0, 1, 2) take columns (1, 0, 2), total 5.
    np.testing.assert_array_equal(row_of_col[0], [1, 0, 2])
    row_of_col = check_batch(
        kernel, np.array([[[7.5]]]), np.ones((1, 1), bool), np.ones((1, 1), bool)
    )
    np.testing.assert_array_equal(row_of_col[0], [0])


def test_integer_ties_long_paths(kernel):
    # Few distinct values: many ties and augmenting paths through several matched rows.
    rng = np.random.default_rng(1)
    cost = rng.integers(0, 3, (4, 8, 9)).astype(np.float64)
    check_batch(kernel, cost, np.ones((4, 8), bool), np.ones((4, 9), bool))


def test_masks_infinities_and_fallbacks(kernel):
    rng = np.random.default_rng(2)
    cost = rng.random((4, 5, 7))
    row_valid = np.ones((4, 5), bool)
    col_valid = np.ones((4, 7), bool)
    row_valid[0, [1, 3]] = False  # holes in the rows
    col_valid[1, [0, 6]] = False  # holes in the columns: 5 rows, 5 columns
    cost[1, :, [0, 6]] = np.nan  # invalid columns' values are never read
    col_valid[2, 3:] = False  # 5 rows, 3 columns: the kernel hands the image back
    cost[3, 2, :] = np.inf  # a row with only forbidden pairs: infeasible
    row_of_col, status = run_kernel(kernel, cost, row_valid, col_valid)
    np.testing.assert_array_equal(status, [0, 0, 1, 1])
    for i in range(2):
        check_image(cost[i], row_valid[i], col_valid[i], row_of_col[i], status[i])
    assert (row_of_col[1][[0, 6]] == -1).all()


def test_forbidden_pairs_force_a_detour(kernel):
    cost = np.array([[[1.0, np.inf, 5.0], [1.0, np.inf, np.inf]]])
    row_of_col = check_batch(kernel, cost, np.ones((1, 2), bool), np.ones((1, 3), bool))
    np.testing.assert_array_equal(row_of_col[0], [1, -1, 0])  # row 1 can only take column 0


def test_no_valid_rows_or_columns(kernel):
    cost = np.random.default_rng(3).random((2, 3, 4))
    row_valid = np.array([[False] * 3, [True, False, False]])
    col_valid = np.array([[True] * 4, [False] * 4])
    row_of_col, status = run_kernel(kernel, cost, row_valid, col_valid)
    np.testing.assert_array_equal(status, [0, 1])
    assert (row_of_col[0] == -1).all()


@given(
    rows=st.integers(1, 6),
    extra=st.integers(0, 5),
    levels=st.sampled_from([2, 5, 0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_problems_match_scipy(kernel, rows, extra, levels, seed):
    rng = np.random.default_rng(seed)
    shape = (2, rows, rows + extra)
    cost = rng.integers(0, levels, shape).astype(float) if levels else rng.normal(size=shape)
    cost[rng.random(shape) < 0.1] = np.inf
    row_valid = rng.random(shape[:2]) < 0.9
    col_valid = rng.random((2, shape[2])) < 0.9
    check_batch(kernel, cost, row_valid, col_valid)
