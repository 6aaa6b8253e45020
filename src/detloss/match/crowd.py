"""Exact P2PNet matching for dense crowds without the dense cost matrix.

The P2PNet cost of proposal ``i`` for target ``j`` is ``c(i, j) = tau * ||p_i - t_j|| - s_i``
(``s_i`` the proposal's person probability). With thousands of heads and tens of thousands
of proposals the dense ``[N, M]`` float64 cost is more than a gigabyte and the Hungarian
solve takes seconds, although each head only ever competes for proposals near it.

:func:`crowd_assignment` solves the same problem exactly from a small set of candidate
pairs (each head's nearest proposals) and proves the answer optimal over *all* pairs with
the dual of the assignment linear programme; where the proof does not go through, it adds
the pairs the proof found wanting and solves again, and as a last resort it solves the dense
problem. The method and its optimality argument are written out in ``docs/dense_crowds.md``.

Coordinates are (x, y) in any unit (usually pixels); the distance is Euclidean in that unit.
Everything runs on the host in float64; results come back on the inputs' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .._checks import check_nonnegative, check_shape, shape_str

if TYPE_CHECKING:
    from scipy.spatial import cKDTree

# scipy is imported inside the functions that call it: ``import detloss`` stays light.

__all__ = [
    "DENSE_BELOW",
    "Certificate",
    "CrowdSolution",
    "certify_assignment",
    "crowd_assignment",
    "solve_crowd_assignment",
]

#: Problems with fewer than this many pairs (``M * N``) are solved on the dense matrix,
#: which is faster there than building a k-d tree and a certificate.
DENSE_BELOW = 1 << 19
#: Bytes the dense fallback may allocate for its float64 ``[R, C]`` cost (4 GiB). A
#: problem whose dense cost would be larger keeps growing its candidate sets where the
#: certificate failed (up to ``_ROUND_FACTOR * max_rounds`` solves) and, if it still does
#: not certify, raises a ``ValueError`` naming the sizes instead of allocating.
DENSE_MEMORY_BUDGET = 4 << 30
# More candidate solves allowed when the dense fallback does not fit the budget.
_ROUND_FACTOR = 4
# Bytes per candidate pair kept by the sparse solve (keys, costs, graph arrays).
_BYTES_PER_CANDIDATE = 96
#: Candidate neighbours per head when ``k`` is not given.
DEFAULT_K = 8
# The first candidates of a head are its k cheapest among its _SCAN * k nearest.
_SCAN = 6
#: Relative tolerance of the certificate: a reduced cost counts as negative below
#: ``-_REL_TOL * scale``, ``scale`` the magnitude of the costs (see ``_Problem``).
_REL_TOL = 1e-12
# Pairs per k-d tree query: bounds the temporaries of one query (about 100 MB).
_QUERY_PAIRS = 1 << 22
# Rows per sparse solve when the candidate graph splits into independent components.
_BATCH_ROWS = 256
# Growth of a neighbourhood that turned out too small.
_GROWTH = 4
# Rounds of neighbourhood growth for a candidate graph without a full matching.
_MAX_FEASIBILITY_ROUNDS = 32


@dataclass(frozen=True)
class CrowdSolution:
    """The result of :func:`solve_crowd_assignment`.

    Attributes:
        pred_idx: ``int64[K]`` matched proposals, ``K = min(M, N)``.
        target_idx: ``int64[K]`` their targets, ascending.
        cost: the summed cost of the ``K`` pairs (float64 arithmetic).
        method: ``"dense"`` (small problem, dense solve), ``"sparse"`` (candidate solve
            proved optimal), ``"fallback"`` (the certificate did not close within the round
            limit, or the candidate graph grew too large, so the dense problem was solved)
            or ``"tau0"`` (``tau == 0``: the ``K`` best scores, solved in closed form).
        rounds: candidate solves that were certified or refuted (0 for dense / tau0).
        candidates: candidate pairs in the last sparse solve.
        checked: pairs whose reduced cost the certificate evaluated, over all rounds.
        gap_bound: proven upper bound on ``cost - optimum`` from the certificate's
            tolerance (``min(M, N) * tol``); ``0.0`` for the dense and closed-form solves.
    """

    pred_idx: Tensor
    target_idx: Tensor
    cost: float
    method: str
    rounds: int
    candidates: int
    checked: int
    gap_bound: float


@dataclass(frozen=True)
class Certificate:
    """The verdict of :func:`certify_assignment` on one assignment.

    Attributes:
        optimal: True when the assignment is proven to have the minimum total cost
            (up to ``gap_bound``); False when a cheaper assignment exists.
        reason: one line on how the verdict was reached.
        cost: the assignment's summed cost.
        gap_bound: upper bound on ``cost - optimum`` when ``optimal``; for a refuted
            assignment the amount it was found to exceed the optimum by, when known
            (``nan`` otherwise).
        target_potential: ``float64[N]`` dual values ``u_j`` of the proof (on the host),
            or None.
        pred_potential: ``float64[M]`` dual values ``v_i`` (on the host), or None. Together they satisfy
            ``c(i, j) - u_j - v_i >= -tol`` for every pair, ``~0`` on matched pairs, and the
            side with more points has potentials ``<= 0``, exactly ``0`` where unmatched.
        rounds: dual computations it took.
    """

    optimal: bool
    reason: str
    cost: float
    gap_bound: float
    target_potential: Tensor | None
    pred_potential: Tensor | None
    rounds: int


class _Problem:
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
        self.tol = _REL_TOL * max(1.0, tau * extent + 2.0 * spread)
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
        kept, else ``_SCAN * DEFAULT_K``)."""
        if k is None:
            if self._near is not None:
                return self._near
            k = _SCAN * DEFAULT_K
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


# --------------------------------------------------------------------------- validation


def _host(x: object, name: str, shape: str, last: int | None) -> np.ndarray:
    x = check_shape(x, name, ndim=2 if last else 1, last=last, expected=shape)
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must be a real (float or integer) tensor, got {x.dtype}")
    host = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(host).all():
        raise ValueError(f"{name}: expected finite values, got a NaN or inf")
    return host


def _inputs(
    pred_points: Tensor, pred_scores: Tensor, target_points: Tensor, tau: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    pred = _host(pred_points, "pred_points", "[M, 2]", 2)
    scores = _host(pred_scores, "pred_scores", "[M]", None)
    if scores.shape[0] != pred.shape[0]:
        raise ValueError(
            f"pred_scores: expected shape [{pred.shape[0]}] (M of pred_points), "
            f"got {shape_str(scores.shape)}"
        )
    target = _host(target_points, "target_points", "[N, 2]", 2)
    return pred, scores, target, check_nonnegative(tau, "tau")


def _positive_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def _problem(pred: np.ndarray, scores: np.ndarray, target: np.ndarray, tau: float) -> _Problem:
    if target.shape[0] <= pred.shape[0]:
        return _Problem(target, np.zeros(target.shape[0]), pred, scores, tau, True)
    return _Problem(pred, scores, target, np.zeros(target.shape[0]), tau, False)


def _to_pairs(
    mate: np.ndarray, targets_are_rows: bool, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``(pred_idx, target_idx)`` int64 tensors sorted by target from the rows' mates."""
    rows = np.arange(mate.size, dtype=np.int64)
    if targets_are_rows:
        pred_idx, target_idx = mate, rows
    else:
        order = np.argsort(mate, kind="stable")
        pred_idx, target_idx = rows[order], mate[order]
    return (
        torch.from_numpy(np.ascontiguousarray(pred_idx, dtype=np.int64)).to(device),
        torch.from_numpy(np.ascontiguousarray(target_idx, dtype=np.int64)).to(device),
    )


# --------------------------------------------------------------------------- the solver parts


def _candidate_keys(problem: _Problem, rows: np.ndarray, k: int) -> np.ndarray:
    """Pair keys ``r * C + c`` of each row's ``k`` nearest columns."""
    _, index = problem.nearest(rows, k)
    return (rows[:, None] * problem.n_cols + index).ravel()


def _initial_keys(problem: _Problem, k: int) -> np.ndarray:
    """Pair keys of each row's ``k`` cheapest columns among its ``_SCAN * k`` nearest.

    Cheapest rather than nearest: a confident proposal a little farther away is a likelier
    partner than a poor one next to the head, and picking it up front saves solve rounds.
    """
    n_rows, n_cols = problem.n_rows, problem.n_cols
    k = min(k, n_cols)
    dist, index = problem.neighbours(_SCAN * k)
    if index.shape[1] > k:
        cost = problem.tau * dist - problem.col_offset[index]
        pick = np.argpartition(cost, k - 1, axis=1)[:, :k]
        index = np.take_along_axis(index, pick, axis=1)
    return _sorted_unique(np.arange(n_rows)[:, None] * n_cols + index)


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
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


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.union1d`` of two int64 key arrays, by :func:`_sorted_unique`."""
    return _sorted_unique(np.concatenate((np.ravel(a), np.ravel(b))))


def _index_unique(values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` for indices in ``[0, size)``, by a table
    of ``size`` flags: linear time (NumPy's hash-based unique took seconds on the million
    candidate pairs of a packed crowd)."""
    present = np.zeros(size, dtype=bool)
    present[values] = True
    used = np.flatnonzero(present)
    position = np.cumsum(present) - 1
    return used, position[values]


def _sparse_matching(
    n_rows: int, r: np.ndarray, c: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray]:
    """Minimum-cost matching of every row on the candidate pairs ``(r, c)`` of cost ``w``.

    Returns ``(mate, empty)`` with ``mate[row]`` its column, or ``(None, short)`` when the
    candidates admit no matching of every row; ``short`` are rows a maximum matching
    leaves out.

    The candidate graph falls apart into connected components wherever groups of heads
    share no proposal; they are independent problems. scipy's sparse Jonker-Volgenant
    spends time proportional to rows x columns of its input, so components are solved in
    batches of about ``_BATCH_ROWS`` rows rather than all at once.
    """
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import connected_components

    used, local = _index_unique(c, int(c.max()) + 1 if c.size else 0)
    n_nodes = n_rows + used.size
    graph = csr_array((np.ones(r.size), (r, n_rows + local)), shape=(n_nodes, n_nodes))
    _, label = connected_components(graph, directed=True, connection="weak")
    rows_per_label = np.bincount(label[:n_rows], minlength=label.max() + 1)
    # Components in label order, cut into consecutive batches by their first row's place.
    batch_of_label = (np.cumsum(rows_per_label) - rows_per_label) // _BATCH_ROWS
    edge_batch = batch_of_label[label[r]]
    order = np.argsort(edge_batch, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_batch[order])) + 1
    mate = np.empty(n_rows, dtype=np.int64)
    short: list[np.ndarray] = []
    for edges in np.split(order, bounds):
        rows, row_local = _index_unique(r[edges], n_rows)
        cols, col_local = _index_unique(local[edges], used.size)
        solved = _solve_block(rows.size, cols.size, row_local, col_local, w[edges])
        if isinstance(solved, tuple):
            row_ind, col_ind = solved
            mate[rows[row_ind]] = used[cols[col_ind]]
        else:
            short.append(rows[solved])
    if short:
        return None, np.concatenate(short)
    return mate, np.empty(0, dtype=np.int64)


def _solve_block(
    n_rows: int, n_cols: int, r: np.ndarray, c: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
    """One batch of :func:`_sparse_matching`: ``(row_ind, col_ind)`` or the short rows."""
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching

    # Every row is matched exactly once, so a constant shift changes every feasible total
    # by the same amount; it keeps the weights nonzero, as the sparse solver requires.
    shifted = w - w.min() + 1.0
    # One edgeless extra column keeps the graph strictly wider than tall: scipy's sparse
    # Jonker-Volgenant then skips its square-case initialisation, whose augmenting row
    # reduction can cycle forever on (near-)tied costs.
    graph = csr_array((shifted, (r, c)), shape=(n_rows, n_cols + 1))
    if n_cols >= n_rows:
        try:
            return min_weight_full_bipartite_matching(graph)
        except ValueError:
            pass
    matched = maximum_bipartite_matching(graph, perm_type="column")
    return np.flatnonzero(matched < 0)


def _potentials(
    problem: _Problem, r: np.ndarray, c: np.ndarray, w: np.ndarray, mate: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Dual values ``(u [R], v [C])`` proving ``mate`` optimal on the pairs ``(r, c)``.

    The pairs must include every matched pair. ``v`` solves the difference constraints
    ``v[c] <= v[mate[r]] + w(r, c) - w(r, mate[r])`` and ``v <= 0`` with the largest
    values (shortest paths from a virtual source joined to every column at length 0, by
    a vectorised Bellman-Ford over all edges at once); ``u[r] = w(r, mate[r]) - v[mate[r]]``.
    Returns None when no such duals exist: a negative cycle, or a negative path ending in
    an unmatched column, i.e. a cheaper assignment among the pairs.
    """
    n_rows, n_cols = problem.n_rows, problem.n_cols
    on_mate = c == mate[r]
    matched_cost = np.empty(n_rows)
    matched_cost[r[on_mate]] = w[on_mate]
    off = ~on_mate
    # Edge mate[r] -> c: column c may take row r from its current column at this price.
    src = mate[r[off]]
    dst = c[off]
    length = w[off] - matched_cost[r[off]]
    order = np.argsort(dst, kind="stable")
    src, dst, length = src[order], dst[order], length[order]
    heads, starts = np.unique(dst, return_index=True)
    v = np.zeros(n_cols)
    if heads.size:
        # Updates need a margin so that rounding cannot cycle; a quarter of the tolerance
        # leaves the rest for the certificate. Only matched columns have outgoing edges, so
        # a shortest path has at most R edges and R + 1 sweeps settle it.
        margin = 0.25 * problem.tol
        for _ in range(n_rows + 2):
            best = np.minimum.reduceat(v[src] + length, starts)
            better = best < v[heads] - margin
            if not better.any():
                break
            v[heads[better]] = best[better]
        else:
            return None
    free = np.ones(n_cols, dtype=bool)
    free[mate] = False
    if (v[free] < 0).any():
        return None
    return matched_cost - v[mate], v


def _violations(
    problem: _Problem, u: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Pairs over *all* ``R x C`` with reduced cost ``c - u - v < -tol``, found without
    visiting every pair.

    Reduced cost ``tau * d(r, c) - (u[r] + row_offset[r]) - (v[c] + col_offset[c])``: with
    ``top = max(v + col_offset)`` no column farther than ``(u[r] + row_offset[r] + top) /
    tau`` from row ``r`` can be negative, so each row only checks its nearest columns
    (those :meth:`_Problem.neighbours` already holds first), widening the search until
    its farthest checked column lies beyond that reach. Returns ``(rows, cols, checked)``.
    """
    tau, n_cols = problem.tau, problem.n_cols
    base = u + problem.row_offset
    gain = v + problem.col_offset
    need = base + gain.max()
    todo = np.flatnonzero(need > 0)
    dist, index = problem.neighbours()
    k = dist.shape[1]
    dist, index = dist[todo], index[todo]
    bad_r: list[np.ndarray] = []
    bad_c: list[np.ndarray] = []
    checked = 0
    while todo.size:
        reduced = tau * dist - base[todo, None] - gain[index]
        checked += reduced.size
        bad = reduced < -problem.tol
        bad_r.append(np.broadcast_to(todo[:, None], bad.shape)[bad])
        bad_c.append(index[bad])
        if k >= n_cols:
            break
        todo = todo[tau * dist[:, -1] < need[todo]]
        k = min(_GROWTH * k, n_cols)
        dist, index = problem.nearest(todo, k)
    if not bad_r:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, checked
    return np.concatenate(bad_r), np.concatenate(bad_c), checked


def _dense_mate(problem: _Problem) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    _, cols = linear_sum_assignment(problem.dense())
    return cols.astype(np.int64)


@dataclass
class _Outcome:
    mate: np.ndarray
    method: str
    rounds: int = 0
    candidates: int = 0
    checked: int = 0
    gap_bound: float = 0.0


def _solve(problem: _Problem, k: int, max_rounds: int, dense_below: int) -> _Outcome:
    n_rows, n_cols = problem.n_rows, problem.n_cols
    if n_rows == 0:
        return _Outcome(np.empty(0, dtype=np.int64), "dense")
    if problem.tau == 0:
        # Every row sees the same costs up to its own constant: any assignment of the rows
        # to the columns of largest offset is optimal.
        best = np.argsort(-problem.col_offset, kind="stable")[:n_rows]
        return _Outcome(best.astype(np.int64), "tau0")
    if n_rows * n_cols < dense_below:
        return _Outcome(_dense_mate(problem), "dense")

    outcome = _Outcome(np.empty(0, dtype=np.int64), "fallback")
    dense_bytes = 8 * n_rows * n_cols
    dense_fits = dense_bytes <= DENSE_MEMORY_BUDGET
    # Past this many candidates the sparse problem stops being small; when the dense
    # problem does not fit, the sparse one may use the budget instead, and more rounds.
    max_candidates = max(n_rows * n_cols // 16, 1 << 16)
    if not dense_fits:
        max_candidates = max(max_candidates, DENSE_MEMORY_BUDGET // _BYTES_PER_CANDIDATE)
        max_rounds = _ROUND_FACTOR * max_rounds
    row_k = np.full(n_rows, min(k, n_cols))
    keys = _initial_keys(problem, k)
    growth_rounds = 0
    while keys.size <= max_candidates:
        r, c = np.divmod(keys, n_cols)
        w = problem.cost(r, c)
        mate, short = _sparse_matching(n_rows, r, c, w)
        outcome.candidates = keys.size
        if mate is None:
            growth_rounds += 1
            if growth_rounds > _MAX_FEASIBILITY_ROUNDS or (row_k[short] >= n_cols).all():
                break
            row_k[short] = np.minimum(row_k[short] * _GROWTH, n_cols)
            extra = _candidate_keys(problem, short, int(row_k[short].max()))
            keys = _union(keys, extra)
            continue
        duals = _potentials(problem, r, c, w, mate)
        if duals is None:
            break
        outcome.rounds += 1
        bad_r, bad_c, checked = _violations(problem, *duals)
        outcome.checked += checked
        if bad_r.size == 0:
            outcome.mate = mate
            outcome.method = "sparse"
            outcome.gap_bound = n_rows * problem.tol
            return outcome
        grown = _union(keys, bad_r * n_cols + bad_c)
        # A violated pair that already is a candidate means the duals do not describe the
        # candidate optimum (rounding trouble): trust only the dense solve.
        if grown.size == keys.size or outcome.rounds >= max_rounds:
            break
        keys = grown
    if not dense_fits:
        targets, proposals = (n_rows, n_cols) if problem.targets_are_rows else (n_cols, n_rows)
        raise ValueError(
            f"crowd_assignment: {targets} targets x {proposals} proposals were not "
            f"certified optimal on {keys.size} candidate pairs after {outcome.rounds} "
            f"solves, and the dense fallback would need a float64 [{n_rows}, {n_cols}] cost "
            f"of {dense_bytes / 2**30:.1f} GiB, over detloss.match.crowd.DENSE_MEMORY_BUDGET "
            f"= {DENSE_MEMORY_BUDGET / 2**30:.1f} GiB (raise it, or max_rounds)"
        )
    outcome.mate = _dense_mate(problem)
    return outcome


# --------------------------------------------------------------------------- public API


def solve_crowd_assignment(
    pred_points: Tensor,
    pred_scores: Tensor,
    target_points: Tensor,
    tau: float = 0.05,
    *,
    k: int | None = None,
    max_rounds: int = 8,
    dense_below: int = DENSE_BELOW,
) -> CrowdSolution:
    """:func:`crowd_assignment` with its diagnostics (method, rounds, candidates, bound).

    See :func:`crowd_assignment` for the arguments.
    """
    pred, scores, target, tau = _inputs(pred_points, pred_scores, target_points, tau)
    k = DEFAULT_K if k is None else _positive_int(k, "k", 1)
    max_rounds = _positive_int(max_rounds, "max_rounds", 1)
    dense_below = _positive_int(dense_below, "dense_below", 0)
    problem = _problem(pred, scores, target, tau)
    outcome = _solve(problem, k, max_rounds, dense_below)
    rows = np.arange(outcome.mate.size)
    total = float(problem.cost(rows, outcome.mate).sum()) if rows.size else 0.0
    pred_idx, target_idx = _to_pairs(outcome.mate, problem.targets_are_rows, pred_points.device)
    return CrowdSolution(
        pred_idx=pred_idx,
        target_idx=target_idx,
        cost=total,
        method=outcome.method,
        rounds=outcome.rounds,
        candidates=outcome.candidates,
        checked=outcome.checked,
        gap_bound=outcome.gap_bound,
    )


def crowd_assignment(
    pred_points: Tensor,
    pred_scores: Tensor,
    target_points: Tensor,
    tau: float = 0.05,
    *,
    k: int | None = None,
    max_rounds: int = 8,
    dense_below: int = DENSE_BELOW,
) -> tuple[Tensor, Tensor]:
    """Exact minimum-cost one-to-one assignment of proposals to targets for one image.

    Minimises ``sum tau * ||p_i - t_j|| - s_i`` over the matched pairs among all
    assignments of ``min(M, N)`` pairs (with ``N <= M``, the usual case, every target is
    matched and ``M - N`` proposals stay unmatched). The result has the same optimal total
    as ``scipy.optimize.linear_sum_assignment`` on the dense float64 cost; when several
    assignments tie, it may return a different one of them.

    Large problems (``M * N >= dense_below``) never build the dense cost: the candidates
    of each target are its ``k`` cheapest proposals among its ``6 k`` nearest, the
    assignment on them comes from a sparse Jonker-Volgenant solve, and dual values then
    prove it optimal over all ``M * N`` pairs by a spatial search (pairs the proof needs
    are added and the candidates solved again). If the proof does not close within
    ``max_rounds`` solves, the dense problem is solved instead, so the result is never a
    suboptimal assignment. Optimal means: within ``min(M, N) * 1e-12 * scale`` of the
    optimum, ``scale = max(1, tau * extent + 2 max|s|)`` with ``extent`` the larger side of
    the points' bounding box (see :class:`CrowdSolution`'s ``gap_bound``); in practice
    the total equals the dense solve's. Any real scores work; P2PNet's are probabilities
    in ``[0, 1]``. The host does all the work (single-threaded numpy / scipy).

    Args:
        pred_points: ``Tensor[M, 2]`` proposal coordinates (x, y).
        pred_scores: ``Tensor[M]`` proposal scores ``s_i`` (the person probability).
        target_points: ``Tensor[N, 2]`` annotated points (x, y), same units.
        tau: weight of the distance, ``>= 0`` (P2PNet: 0.05).
        k: candidate proposals per target in the first solve (default 8); any value
            gives the exact answer, it only moves work between the first solve and the
            certificate's extra rounds.
        max_rounds: candidate solves before falling back to the dense problem.
        dense_below: problems with fewer pairs are solved densely (0: never, except as
            the fallback).

    Returns:
        ``(pred_idx, target_idx)``: ``int64[K]`` tensors, ``K = min(M, N)``, sorted by
        target index, on ``pred_points``' device.

    Raises:
        ValueError: bad shapes, a NaN or inf coordinate or score, ``tau < 0`` or
            non-finite, ``k < 1``, ``max_rounds < 1`` or ``dense_below < 0``.
        TypeError: a non-tensor or boolean / complex input, or a non-numeric ``tau``.

    Float16 / bfloat16 / integer inputs are converted to float64 like the others; no
    gradient flows through an assignment.
    """
    solution = solve_crowd_assignment(
        pred_points,
        pred_scores,
        target_points,
        tau,
        k=k,
        max_rounds=max_rounds,
        dense_below=dense_below,
    )
    return solution.pred_idx, solution.target_idx


def _check_assignment(
    pred_idx: Tensor, target_idx: Tensor, m: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    pairs = []
    for name, idx, size in (("pred_idx", pred_idx, m), ("target_idx", target_idx, n)):
        check_shape(idx, name, ndim=1, expected=f"[{min(m, n)}]")
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got {idx.dtype}")
        host = idx.detach().to(device="cpu", dtype=torch.int64).numpy()
        if host.shape[0] != min(m, n):
            raise ValueError(
                f"{name}: expected shape [{min(m, n)}] (min(M, N) pairs), "
                f"got {shape_str(host.shape)}"
            )
        if host.size and (host.min() < 0 or host.max() >= size):
            raise ValueError(
                f"{name}: expected indices in [0, {size - 1}], "
                f"got values in [{host.min()}, {host.max()}]"
            )
        if np.unique(host).size != host.size:
            raise ValueError(f"{name}: expected distinct indices (one-to-one), got repeats")
        pairs.append(host)
    return pairs[0], pairs[1]


def certify_assignment(
    pred_points: Tensor,
    pred_scores: Tensor,
    target_points: Tensor,
    pred_idx: Tensor,
    target_idx: Tensor,
    tau: float = 0.05,
    *,
    k: int | None = None,
    max_rounds: int = 16,
) -> Certificate:
    """Decide whether a one-to-one assignment has the minimum P2PNet cost.

    The assignment's dual values are computed on a candidate graph (its own pairs plus
    each target's ``k`` cheapest among its ``6 k`` nearest proposals); a negative cycle or
    negative augmenting path there (a re-assignment cheaper by more than the tolerance)
    refutes it; otherwise a spatial search over all pairs either finds no negative
    reduced cost (a proof of optimality) or adds the offending pairs and tries again.
    After ``max_rounds`` the dense optimum decides.

    Args:
        pred_points, pred_scores, target_points, tau: the problem, as in
            :func:`crowd_assignment`.
        pred_idx, target_idx: ``int64[K]`` the assignment, ``K = min(M, N)`` distinct
            proposals and distinct targets.
        k: candidate proposals per target (default 8).
        max_rounds: dual computations before the dense check.

    Returns:
        A :class:`Certificate`.

    Raises:
        ValueError / TypeError: as :func:`crowd_assignment`, and for an assignment of the
        wrong size, out-of-range or repeated indices.
    """
    pred, scores, target, tau = _inputs(pred_points, pred_scores, target_points, tau)
    k = DEFAULT_K if k is None else _positive_int(k, "k", 1)
    max_rounds = _positive_int(max_rounds, "max_rounds", 1)
    preds, targets = _check_assignment(pred_idx, target_idx, pred.shape[0], target.shape[0])
    problem = _problem(pred, scores, target, tau)
    targets_are_rows = problem.targets_are_rows
    mate = np.empty(problem.n_rows, dtype=np.int64)
    if targets_are_rows:
        mate[targets] = preds
    else:
        mate[preds] = targets
    rows = np.arange(problem.n_rows)
    total = float(problem.cost(rows, mate).sum()) if rows.size else 0.0

    def verdict(
        optimal: bool, reason: str, gap: float, duals: tuple | None, rounds: int
    ) -> Certificate:
        target_pot = pred_pot = None
        if duals is not None:
            u, v = (torch.from_numpy(d) for d in duals)
            target_pot, pred_pot = (u, v) if targets_are_rows else (v, u)
        return Certificate(optimal, reason, total, gap, target_pot, pred_pot, rounds)

    if problem.n_rows == 0:
        return verdict(True, "empty assignment", 0.0, None, 0)
    n_cols = problem.n_cols
    keys = _union(_initial_keys(problem, k), rows * n_cols + mate)
    for rounds in range(1, max_rounds + 1):
        r, c = np.divmod(keys, n_cols)
        w = problem.cost(r, c)
        duals = _potentials(problem, r, c, w, mate)
        if duals is None:
            return verdict(
                False,
                "a cheaper re-assignment exists among the candidate pairs",
                math.nan,
                None,
                rounds,
            )
        bad_r, bad_c, _ = _violations(problem, *duals)
        if bad_r.size == 0:
            reason = "dual values with no negative reduced cost over all pairs"
            return verdict(True, reason, problem.n_rows * problem.tol, duals, rounds)
        keys = _union(keys, bad_r * n_cols + bad_c)
    if 8 * problem.n_rows * n_cols > DENSE_MEMORY_BUDGET:
        reason = (
            f"undecided: no certificate after {max_rounds} rounds and the dense check's "
            f"float64 [{problem.n_rows}, {n_cols}] cost is over DENSE_MEMORY_BUDGET"
        )
        return verdict(False, reason, math.inf, None, max_rounds)
    from scipy.optimize import linear_sum_assignment

    dense = problem.dense()
    _, best = linear_sum_assignment(dense)
    optimum = float(dense[rows, best].sum())
    gap = total - optimum
    optimal = gap <= problem.n_rows * problem.tol
    reason = "compared with the dense optimum"
    return verdict(optimal, reason, max(gap, 0.0), None, max_rounds)
