"""The P2PNet point assignment problem of :mod:`detloss.match.crowd` and
:mod:`detloss.match.certificate`: its geometry (a k-d tree over the columns, nearest
neighbours, costs of any pairs, the dense cost) and its candidate pair sets."""

from __future__ import annotations

from numbers import Integral
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .._checks import check_nonnegative, check_shape, shape_str
from .assignment import solve_dense, targets_are_rows

if TYPE_CHECKING:
    from scipy.spatial import cKDTree

#: Bytes a dense fallback may allocate for its float64 ``[R, C]`` cost (4 GiB). A
#: problem whose dense cost would be larger keeps growing its candidate sets where the
#: certificate failed and, if it still does not certify, raises a ``ValueError`` naming
#: the sizes instead of allocating (``detloss.match.crowd.DENSE_MEMORY_BUDGET`` is the
#: value the crowd solver reads).
DENSE_MEMORY_BUDGET = 4 << 30
#: Candidate neighbours per head when ``k`` is not given.
DEFAULT_K = 8
# The first candidates of a head are its k cheapest among its SCAN * k nearest.
SCAN = 6
#: Relative tolerance of the certificate: a reduced cost counts as negative below
#: ``-REL_TOL * scale``, ``scale`` the magnitude of the costs (see ``PointProblem``).
REL_TOL = 1e-12
# Pairs per k-d tree query: bounds the temporaries of one query (about 100 MB).
_QUERY_PAIRS = 1 << 22
#: Growth of a neighbourhood that turned out too small.
GROWTH = 4


class PointProblem:
    """An assignment problem in the orientation "every row is matched" (``R <= C``).

    ``cost(r, c) = tau * ||rows[r] - cols[c]|| - row_offset[r] - col_offset[c]``. With fewer
    targets than proposals the rows are the targets (offset 0) and the columns the
    proposals (offset = score); otherwise the other way round.
    """

    def __init__(
        self,
        rows: np.ndarray,
        row_offset: np.ndarray,
        cols: np.ndarray,
        col_offset: np.ndarray,
        tau: float,
        targets_are_rows: bool,
    ) -> None:
        self.targets_are_rows = targets_are_rows
        self.rows = rows
        self.row_offset = row_offset
        self.cols = cols
        self.col_offset = col_offset
        self.tau = tau
        self.n_rows = rows.shape[0]
        self.n_cols = cols.shape[0]
        points = np.concatenate((rows, cols))
        extent = float(np.ptp(points, axis=0).max()) if points.size else 0.0
        offsets = np.concatenate((row_offset, col_offset))
        spread = float(np.abs(offsets).max()) if offsets.size else 0.0
        # Costs are sums of terms up to tau * extent + |offsets|, so rounding errors (and
        # hence the tolerance) scale with that magnitude.
        self.tol = REL_TOL * max(1.0, tau * extent + 2.0 * spread)
        self._tree: cKDTree | None = None
        self._near: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def tree(self) -> cKDTree:
        if self._tree is None:
            from scipy.spatial import cKDTree

            # Sliding-midpoint splits build faster and query as fast on these point sets.
            self._tree = cKDTree(self.cols, balanced_tree=False)
        return self._tree

    def cost(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        dist = np.hypot(self.rows[r, 0] - self.cols[c, 0], self.rows[r, 1] - self.cols[c, 1])
        return self.tau * dist - self.row_offset[r] - self.col_offset[c]

    def nearest(self, r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Distances and indices ``[len(r), k]`` of the ``k`` nearest columns of rows ``r``,
        nearest first (``k <= n_cols``)."""
        dist = np.empty((r.size, k))
        index = np.empty((r.size, k), dtype=np.int64)
        step = max(1, _QUERY_PAIRS // k)
        for start in range(0, r.size, step):
            part = r[start : start + step]
            d, i = self.tree.query(self.rows[part], k=k)
            dist[start : start + part.size] = np.reshape(d, (part.size, k))
            index[start : start + part.size] = np.reshape(i, (part.size, k))
        return dist, index

    def neighbours(self, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`nearest` for every row, kept for later calls (``k=None``: whatever is
        kept, else ``SCAN * DEFAULT_K``)."""
        if k is None:
            if self._near is not None:
                return self._near
            k = SCAN * DEFAULT_K
        k = min(k, self.n_cols)
        if self._near is None or self._near[0].shape[1] != k:
            self._near = self.nearest(np.arange(self.n_rows), k)
        return self._near

    def dense(self) -> np.ndarray:
        """The dense float64 ``[R, C]`` cost, built in place without temporaries."""
        rows = torch.from_numpy(self.rows)
        cols = torch.from_numpy(self.cols)
        cost = torch.cdist(rows[None], cols[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
        cost.mul_(self.tau)
        cost.sub_(torch.from_numpy(self.row_offset)[:, None])
        cost.sub_(torch.from_numpy(self.col_offset)[None, :])
        return cost.numpy()

    def dense_mate(self) -> np.ndarray:
        """``int64[R]``: each row's column in an optimal assignment, solved on the dense
        cost."""
        return solve_dense(self.dense())[1]


def _host_points(x: object, name: str, shape: str, last: int | None) -> np.ndarray:
    x = check_shape(x, name, ndim=2 if last else 1, last=last, expected=shape)
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must be a real (float or integer) tensor, got {x.dtype}")
    host = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(host).all():
        raise ValueError(f"{name}: expected finite values, got a NaN or inf")
    return host


def read_inputs(
    pred_points: Tensor, pred_scores: Tensor, target_points: Tensor, tau: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    pred = _host_points(pred_points, "pred_points", "[M, 2]", 2)
    scores = _host_points(pred_scores, "pred_scores", "[M]", None)
    if scores.shape[0] != pred.shape[0]:
        raise ValueError(
            f"pred_scores: expected shape [{pred.shape[0]}] (M of pred_points), "
            f"got {shape_str(scores.shape)}"
        )
    target = _host_points(target_points, "target_points", "[N, 2]", 2)
    return pred, scores, target, check_nonnegative(tau, "tau")


def positive_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def point_problem(
    pred: np.ndarray, scores: np.ndarray, target: np.ndarray, tau: float
) -> PointProblem:
    if targets_are_rows(pred.shape[0], target.shape[0]):
        return PointProblem(target, np.zeros(target.shape[0]), pred, scores, tau, True)
    return PointProblem(pred, scores, target, np.zeros(target.shape[0]), tau, False)


def to_pairs(
    mate: np.ndarray, rows_are_targets: bool, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``(pred_idx, target_idx)`` int64 tensors sorted by target from the rows' mates."""
    rows = np.arange(mate.size, dtype=np.int64)
    if rows_are_targets:
        pred_idx, target_idx = mate, rows
    else:
        order = np.argsort(mate, kind="stable")
        pred_idx, target_idx = rows[order], mate[order]
    return (
        torch.from_numpy(np.ascontiguousarray(pred_idx, dtype=np.int64)).to(device),
        torch.from_numpy(np.ascontiguousarray(target_idx, dtype=np.int64)).to(device),
    )


def candidate_keys(problem: PointProblem, rows: np.ndarray, k: int) -> np.ndarray:
    """Pair keys ``r * C + c`` of each row's ``k`` nearest columns."""
    _, index = problem.nearest(rows, k)
    return (rows[:, None] * problem.n_cols + index).ravel()


def initial_keys(problem: PointProblem, k: int) -> np.ndarray:
    """Pair keys of each row's ``k`` cheapest columns among its ``SCAN * k`` nearest.

    Cheapest rather than nearest: a confident proposal a little farther away is a likelier
    partner than a poor one next to the head, and picking it up front saves solve rounds.
    """
    n_rows, n_cols = problem.n_rows, problem.n_cols
    k = min(k, n_cols)
    dist, index = problem.neighbours(SCAN * k)
    if index.shape[1] > k:
        cost = problem.tau * dist - problem.col_offset[index]
        pick = np.argpartition(cost, k - 1, axis=1)[:, :k]
        index = np.take_along_axis(index, pick, axis=1)
    return sorted_unique(np.arange(n_rows)[:, None] * n_cols + index)


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """The distinct values of the int64 pair keys, ascending, by a sort: NumPy's
    hash-based ``unique`` (behind ``union1d``) took seconds on the million keys of a
    packed crowd."""
    keys = np.sort(keys, axis=None)
    if keys.size == 0:
        return keys
    keep = np.empty(keys.size, dtype=bool)
    keep[0] = True
    np.not_equal(keys[1:], keys[:-1], out=keep[1:])
    return keys[keep]


def union_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.union1d`` of two int64 key arrays, by :func:`sorted_unique`."""
    return sorted_unique(np.concatenate((np.ravel(a), np.ravel(b))))


def index_unique(values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` for indices in ``[0, size)``, by a table
    of ``size`` flags: linear time (NumPy's hash-based unique took seconds on the million
    candidate pairs of a packed crowd)."""
    present = np.zeros(size, dtype=bool)
    present[values] = True
    used = np.flatnonzero(present)
    position = np.cumsum(present) - 1
    return used, position[values]
