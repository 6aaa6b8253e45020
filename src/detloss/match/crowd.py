"""Exact P2PNet matching for dense crowds without the dense cost matrix.

The P2PNet cost of proposal ``i`` for target ``j`` is ``c(i, j) = tau * ||p_i - t_j|| - s_i``
(``s_i`` the proposal's person probability). With thousands of heads and tens of thousands
of proposals the dense ``[N, M]`` float64 cost is more than a gigabyte and the Hungarian
solve takes seconds, although each head only ever competes for proposals near it.

:func:`crowd_assignment` solves the same problem exactly from a small set of candidate
pairs (each head's nearest proposals) and proves the answer optimal over *all* pairs with
the dual of the assignment linear programme; where the proof does not go through, it adds
the pairs near the rows where it failed and solves again, and as a last resort it solves
the dense problem (reported as ``method == "fallback"``). With Numba installed the sparse
solves run on the compiled solver of ``detloss._kernels.sparse_assignment_cpu``, whose
prices are the proof's potentials and which re-matches only the rows that new pairs
unsettle; the reference path (scipy's sparse solve from scratch each round, duals by
Bellman-Ford, a k-d tree search) gives the same optimum. The method and its optimality
argument are written out in ``docs/dense_crowds.md``.

Coordinates are (x, y) in any unit (usually pixels); the distance is Euclidean in that unit.
Everything runs on the host in float64; results come back on the inputs' device.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch  # noqa: F401  (the examples)
from torch import Tensor

from .._kernels import fast_path
from ._point_problem import (
    DEFAULT_K,
    DENSE_MEMORY_BUDGET,
    GROWTH,
    PointProblem,
    candidate_keys,
    index_unique,
    initial_keys,
    point_problem,
    positive_int,
    read_inputs,
    to_pairs,
    union_keys,
)
from .assignment import DENSE_BELOW, use_dense
from .certificate import potentials, violations

# scipy is imported inside the functions that call it: ``import detloss`` stays light.

__all__ = ["DENSE_BELOW", "CrowdSolution", "crowd_assignment", "solve_crowd_assignment"]

# More candidate solves allowed when the dense fallback does not fit the budget.
_ROUND_FACTOR = 4
# Bytes per candidate pair kept by the sparse solve (keys, costs, graph arrays).
_BYTES_PER_CANDIDATE = 96
# Rows per sparse solve when the candidate graph splits into independent components.
_BATCH_ROWS = 256
# Rounds of neighbourhood growth for a candidate graph without a full matching.
_MAX_FEASIBILITY_ROUNDS = 32
# Columns per cell of the certificate's grid.
_PER_CELL = 4
# Where the certificate fails, the pairs of reduced cost below this many tau (pixels of
# distance, in cost) join the candidates too.
_GROWTH_SLACK = 4.0


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

    Shape:
        - pred_idx, target_idx: ``[min(M, N)]``

    Example:
        >>> solution = solve_crowd_assignment(torch.rand(40, 2), torch.rand(40),
        ...                                   torch.rand(5, 2), dense_below=0)
        >>> solution.method, solution.pred_idx.shape
        ('sparse', torch.Size([5]))
    """

    pred_idx: Tensor
    target_idx: Tensor
    cost: float
    method: str
    rounds: int
    candidates: int
    checked: int
    gap_bound: float


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

    used, local = index_unique(c, int(c.max()) + 1 if c.size else 0)
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
        rows, row_local = index_unique(r[edges], n_rows)
        cols, col_local = index_unique(local[edges], used.size)
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


@dataclass
class _Outcome:
    mate: np.ndarray
    method: str
    rounds: int = 0
    candidates: int = 0
    checked: int = 0
    gap_bound: float = 0.0


def _limits(problem: PointProblem, max_rounds: int) -> tuple[bool, int, int]:
    """``(dense_fits, max_candidates, max_rounds)`` of a candidate loop.

    Past ``max_candidates`` pairs the sparse problem stops being small; when the dense
    problem does not fit ``DENSE_MEMORY_BUDGET``, the sparse one may use the budget
    instead, and more rounds.
    """
    n_rows, n_cols = problem.n_rows, problem.n_cols
    dense_fits = 8 * n_rows * n_cols <= DENSE_MEMORY_BUDGET
    max_candidates = max(n_rows * n_cols // 16, 1 << 16)
    if not dense_fits:
        max_candidates = max(max_candidates, DENSE_MEMORY_BUDGET // _BYTES_PER_CANDIDATE)
        max_rounds = _ROUND_FACTOR * max_rounds
    return dense_fits, max_candidates, max_rounds


def _widen(
    problem: PointProblem, keys: np.ndarray, row_k: np.ndarray, short: np.ndarray, rounds: int
) -> np.ndarray | None:
    """The candidate keys with the rows ``short``, which no matching of the candidates
    covers, given ``GROWTH`` times as many of their nearest columns (``row_k``, each row's
    count, updated in place); None when those rows already have every column or this is
    widening round ``rounds > _MAX_FEASIBILITY_ROUNDS``."""
    n_cols = problem.n_cols
    if rounds > _MAX_FEASIBILITY_ROUNDS or (row_k[short] >= n_cols).all():
        return None
    row_k[short] = np.minimum(row_k[short] * GROWTH, n_cols)
    return union_keys(keys, candidate_keys(problem, short, int(row_k[short].max())))


def _solve(problem: PointProblem, k: int, max_rounds: int, dense_below: int) -> _Outcome:
    n_rows, n_cols = problem.n_rows, problem.n_cols
    if n_rows == 0:
        return _Outcome(np.empty(0, dtype=np.int64), "dense")
    if problem.tau == 0:
        # Every row sees the same costs up to its own constant: any assignment of the rows
        # to the columns of largest offset is optimal.
        best = np.argsort(-problem.col_offset, kind="stable")[:n_rows]
        return _Outcome(best.astype(np.int64), "tau0")
    if use_dense(n_rows, n_cols, dense_below):
        return _Outcome(problem.dense_mate(), "dense")
    kernel = fast_path("sparse_assignment", "cpu")
    if kernel is not None:
        return _solve_warm(problem, k, max_rounds, kernel)

    outcome = _Outcome(np.empty(0, dtype=np.int64), "fallback")
    dense_fits, max_candidates, max_rounds = _limits(problem, max_rounds)
    row_k = np.full(n_rows, min(k, n_cols))
    keys = initial_keys(problem, k)
    growth_rounds = 0
    while keys.size <= max_candidates:
        r, c = np.divmod(keys, n_cols)
        w = problem.cost(r, c)
        mate, short = _sparse_matching(n_rows, r, c, w)
        outcome.candidates = keys.size
        if mate is None:
            growth_rounds += 1
            grown = _widen(problem, keys, row_k, short, growth_rounds)
            if grown is None:
                break
            keys = grown
            continue
        duals = potentials(problem, r, c, w, mate)
        if duals is None:
            break
        outcome.rounds += 1
        bad_r, bad_c, checked = violations(problem, *duals)
        outcome.checked += checked
        if bad_r.size == 0:
            outcome.mate = mate
            outcome.method = "sparse"
            outcome.gap_bound = n_rows * problem.tol
            return outcome
        grown = union_keys(keys, bad_r * n_cols + bad_c)
        # A violated pair that already is a candidate means the duals do not describe the
        # candidate optimum (rounding trouble): trust only the dense solve.
        if grown.size == keys.size or outcome.rounds >= max_rounds:
            break
        keys = grown
    return _fallback(problem, outcome, keys.size, dense_fits)


def _fallback(
    problem: PointProblem, outcome: _Outcome, candidates: int, dense_fits: bool
) -> _Outcome:
    """The last resort of the candidate loops: the dense solve, or a ``ValueError`` when its
    cost does not fit ``DENSE_MEMORY_BUDGET``."""
    n_rows, n_cols = problem.n_rows, problem.n_cols
    if not dense_fits:
        targets, proposals = (n_rows, n_cols) if problem.targets_are_rows else (n_cols, n_rows)
        raise ValueError(
            f"crowd_assignment: {targets} targets x {proposals} proposals were not "
            f"certified optimal on {candidates} candidate pairs after {outcome.rounds} "
            f"solves, and the dense fallback would need a float64 [{n_rows}, {n_cols}] cost "
            f"of {8 * n_rows * n_cols / 2**30:.1f} GiB, over "
            f"detloss.match.crowd.DENSE_MEMORY_BUDGET = {DENSE_MEMORY_BUDGET / 2**30:.1f} GiB "
            "(raise it, or max_rounds)"
        )
    outcome.mate = problem.dense_mate()
    outcome.method = "fallback"
    return outcome


class _ColumnGrid:
    """The columns of a problem bucketed into square cells (about ``_PER_CELL`` columns
    each over their bounding box), for :func:`radius_violations` of the kernel."""

    def __init__(self, problem: PointProblem) -> None:
        cols = problem.cols
        low = cols.min(axis=0)
        span = np.maximum(cols.max(axis=0) - low, 1e-12)
        self.cell = float(max(np.sqrt(span[0] * span[1] * _PER_CELL / cols.shape[0]), 1e-9))
        n_x, n_y = (np.floor(span / self.cell).astype(np.int64) + 1).tolist()
        cell_xy = np.minimum(((cols - low) / self.cell).astype(np.int64), [n_x - 1, n_y - 1])
        cell_id = cell_xy[:, 1] * n_x + cell_xy[:, 0]
        self.order = np.argsort(cell_id, kind="stable")
        self.cell_start = np.searchsorted(cell_id[self.order], np.arange(n_x * n_y + 1))
        self.origin = (float(low[0]), float(low[1]))
        self.shape = (n_x, n_y)

    def below(
        self,
        kernel: ModuleType,
        problem: PointProblem,
        rows: np.ndarray,
        base: np.ndarray,
        gain: np.ndarray,
        threshold: float,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Every pair ``(rows[i], c)`` with reduced cost ``tau * d - base[i] - gain[c]``
        below ``threshold``: ``(pair rows, pair cols, reduced costs evaluated)``."""
        need = base + gain.max() + threshold
        points = np.ascontiguousarray(problem.rows[rows])
        room = max(4 * rows.size, 1024)
        while True:
            out_rows = np.empty(room, dtype=np.int64)
            out_cols = np.empty(room, dtype=np.int64)
            found, checked = kernel.radius_violations(
                points,
                base,
                need,
                problem.cols,
                gain,
                self.cell_start,
                self.order,
                *self.origin,
                self.cell,
                *self.shape,
                problem.tau,
                threshold,
                out_rows,
                out_cols,
            )
            if found <= room:
                return rows[out_rows[:found]], out_cols[:found], checked
            room = found


def _csr(keys: np.ndarray, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr [R + 1], cols [E])`` of ascending pair keys ``r * C + c``."""
    r, c = np.divmod(keys, n_cols)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n_rows), out=indptr[1:])
    return indptr, c


def _proof_shaped(row_mate: np.ndarray, col_mate: np.ndarray, v: np.ndarray) -> bool:
    """Whether the solver's matching and prices have the form the proof needs, checked
    rather than trusted (a cheap pass): every row matched to a distinct column, prices
    ``<= 0``, and 0 on the columns left free (conditions 2 and 4 of the proof; 3 holds by
    the definition of ``u``, 1 is the certificate's search)."""
    if (row_mate < 0).any() or (col_mate[row_mate] != np.arange(row_mate.size)).any():
        return False
    return bool((v <= 0).all() and (v[col_mate < 0] == 0).all())


def _solve_warm(problem: PointProblem, k: int, max_rounds: int, kernel: ModuleType) -> _Outcome:
    """The candidate loop on the compiled solver, warm-started across rounds.

    The solver's column prices are the certificate's potentials; pairs the certificate
    finds negative join the candidates together with every pair of the failing rows whose
    reduced cost is below ``_GROWTH_SLACK`` (likely partners after the next re-matching),
    and only the rows the new pairs unsettle are matched again.
    """
    n_rows, n_cols = problem.n_rows, problem.n_cols
    outcome = _Outcome(np.empty(0, dtype=np.int64), "fallback")
    dense_fits, max_candidates, max_rounds = _limits(problem, max_rounds)
    row_mate = np.full(n_rows, -1, dtype=np.int64)
    col_mate = np.full(n_cols, -1, dtype=np.int64)
    v = np.zeros(n_cols)
    reached = np.empty(n_rows, dtype=np.int64)
    grid = _ColumnGrid(problem)
    all_rows = np.arange(n_rows)
    row_k = np.full(n_rows, min(k, n_cols))
    keys = initial_keys(problem, k)
    growth_rounds = 0
    slack = _GROWTH_SLACK * max(problem.tau, problem.tol)
    while keys.size <= max_candidates:
        indptr, cols = _csr(keys, n_rows, n_cols)
        weight = problem.cost(np.repeat(all_rows, np.diff(indptr)), cols)
        outcome.candidates = keys.size
        n_short = kernel.solve(indptr, cols, weight, row_mate, col_mate, v, problem.tol, reached)
        if n_short >= 0:
            short = np.unique(reached[:n_short])
            growth_rounds += 1
            grown = _widen(problem, keys, row_k, short, growth_rounds)
            if grown is None:
                break
            keys = grown
            # The partial matching of a graph without a full one is a poor start: a cold
            # solve of the grown graph costs less than repairing it.
            row_mate.fill(-1)
            col_mate.fill(-1)
            v.fill(0.0)
            continue
        if not _proof_shaped(row_mate, col_mate, v):
            break
        outcome.rounds += 1
        u = problem.cost(all_rows, row_mate) - v[row_mate]
        gain = v + problem.col_offset
        base = u + problem.row_offset
        bad_r, _, checked = grid.below(kernel, problem, all_rows, base, gain, -problem.tol)
        outcome.checked += checked
        if bad_r.size == 0:
            outcome.mate = row_mate.copy()
            outcome.method = "sparse"
            outcome.gap_bound = n_rows * problem.tol
            return outcome
        if outcome.rounds >= max_rounds:
            break
        # The failing rows' pairs below the slack include the violated ones.
        failing = np.unique(bad_r)
        near_r, near_c, checked = grid.below(kernel, problem, failing, base[failing], gain, slack)
        outcome.checked += checked
        grown = union_keys(keys, near_r * n_cols + near_c)
        # A violated pair that already is a candidate means the solver's prices do not
        # describe the candidate optimum (rounding trouble): trust only the dense solve.
        if grown.size == keys.size:
            break
        keys = grown
    return _fallback(problem, outcome, keys.size, dense_fits)


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

    Shape:
        - pred_points: ``[M, 2]``; pred_scores: ``[M]``; target_points: ``[N, 2]``
        - output: a :class:`CrowdSolution` with ``min(M, N)`` pairs

    Example:
        >>> pred = torch.tensor([[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]])
        >>> solution = solve_crowd_assignment(pred, torch.tensor([0.9, 0.8, 0.1]),
        ...                                   torch.tensor([[9.0, 1.0], [1.0, 1.0]]))
        >>> solution.pred_idx.tolist(), solution.target_idx.tolist(), solution.method
        ([1, 0], [0, 1], 'dense')
    """
    pred, scores, target, tau = read_inputs(pred_points, pred_scores, target_points, tau)
    k = DEFAULT_K if k is None else positive_int(k, "k", 1)
    max_rounds = positive_int(max_rounds, "max_rounds", 1)
    dense_below = positive_int(dense_below, "dense_below", 0)
    problem = point_problem(pred, scores, target, tau)
    outcome = _solve(problem, k, max_rounds, dense_below)
    rows = np.arange(outcome.mate.size)
    total = float(problem.cost(rows, outcome.mate).sum()) if rows.size else 0.0
    pred_idx, target_idx = to_pairs(outcome.mate, problem.targets_are_rows, pred_points.device)
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
    **options: int | None,
) -> tuple[Tensor, Tensor]:
    """Exact minimum-cost one-to-one assignment of proposals to targets for one image.

    Minimises ``sum tau * ||p_i - t_j|| - s_i`` over the matched pairs among all
    assignments of ``min(M, N)`` pairs (with ``N <= M``, the usual case, every target is
    matched and ``M - N`` proposals stay unmatched). The result has the same optimal total
    as ``scipy.optimize.linear_sum_assignment`` on the dense float64 cost; when several
    assignments tie, it may return a different one of them.

    Large problems (``M * N >= dense_below``) never build the dense cost: the candidates
    of each target are its ``k`` cheapest proposals among its ``6 k`` nearest, the
    assignment on them comes from a sparse solve (a compiled shortest-augmenting-path
    solver, warm-started from one round to the next, where Numba is installed; scipy's
    sparse Jonker-Volgenant otherwise), and dual values then prove it optimal over all
    ``M * N`` pairs by a spatial search (pairs the proof needs are added and the
    candidates solved again). If the proof does not close within
    ``max_rounds`` solves, the dense problem is solved instead, so the result is never a
    suboptimal assignment. Optimal means: within ``min(M, N) * 1e-12 * scale`` of the
    optimum, ``scale = max(1, tau * extent + 2 max|s|)`` with ``extent`` the larger side of
    the points' bounding box (see :class:`CrowdSolution`'s ``gap_bound``); in practice
    the total equals the dense solve's. Any real scores work; P2PNet's are probabilities
    in ``[0, 1]``. The host does all the work (single-threaded numpy / scipy / Numba).

    Args:
        pred_points: ``Tensor[M, 2]`` proposal coordinates (x, y).
        pred_scores: ``Tensor[M]`` proposal scores ``s_i`` (the person probability).
        target_points: ``Tensor[N, 2]`` annotated points (x, y), same units.
        tau: weight of the distance, ``>= 0`` (P2PNet: 0.05).
        options: keyword-only, those of :func:`solve_crowd_assignment`:
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

    Shape:
        - pred_points: ``[M, 2]``; pred_scores: ``[M]``; target_points: ``[N, 2]``
        - pred_idx, target_idx: ``[min(M, N)]``

    Example:
        >>> pred = torch.tensor([[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]])
        >>> crowd_assignment(pred, torch.tensor([0.9, 0.8, 0.1]),
        ...                  torch.tensor([[9.0, 1.0], [1.0, 1.0]]))
        (tensor([1, 0]), tensor([0, 1]))
    """
    solution = solve_crowd_assignment(pred_points, pred_scores, target_points, tau, **options)
    return solution.pred_idx, solution.target_idx
