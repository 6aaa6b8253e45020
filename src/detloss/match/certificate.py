"""Proofs of optimality for P2PNet point assignments: dual values on a candidate graph,
checked against every pair by a spatial search (``docs/dense_crowds.md``).

:func:`certify_assignment` decides whether a given assignment is optimal;
:mod:`detloss.match.crowd` uses the same proof on its own candidate solves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._checks import check_shape, shape_str
from ._point_problem import (
    DEFAULT_K,
    DENSE_MEMORY_BUDGET,
    GROWTH,
    PointProblem,
    initial_keys,
    point_problem,
    positive_int,
    read_inputs,
    union_keys,
)

__all__ = ["Certificate", "certify_assignment"]


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
        pred_potential: ``float64[M]`` dual values ``v_i`` (on the host), or None.
            Together they satisfy ``c(i, j) - u_j - v_i >= -tol`` for every pair, ``~0``
            on matched pairs, and the side with more points has potentials ``<= 0``,
            exactly ``0`` where unmatched.
        rounds: dual computations it took.

    Shape:
        - target_potential: ``[N]``; pred_potential: ``[M]``

    Example:
        >>> pred = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
        >>> verdict = certify_assignment(pred, torch.tensor([0.9, 0.8]),
        ...                              torch.tensor([[9.0, 1.0]]), torch.tensor([1]),
        ...                              torch.tensor([0]))
        >>> verdict.optimal, tuple(verdict.pred_potential.shape)
        (True, (2,))
    """

    optimal: bool
    reason: str
    cost: float
    gap_bound: float
    target_potential: Tensor | None
    pred_potential: Tensor | None
    rounds: int


def potentials(
    problem: PointProblem, r: np.ndarray, c: np.ndarray, w: np.ndarray, mate: np.ndarray
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


def violations(
    problem: PointProblem, u: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Pairs over *all* ``R x C`` with reduced cost ``c - u - v < -tol``, found without
    visiting every pair.

    Reduced cost ``tau * d(r, c) - (u[r] + row_offset[r]) - (v[c] + col_offset[c])``: with
    ``top = max(v + col_offset)`` no column farther than ``(u[r] + row_offset[r] + top) /
    tau`` from row ``r`` can be negative, so each row only checks its nearest columns
    (those :meth:`PointProblem.neighbours` already holds first), widening the search until
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
        k = min(GROWTH * k, n_cols)
        dist, index = problem.nearest(todo, k)
    if not bad_r:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, checked
    return np.concatenate(bad_r), np.concatenate(bad_c), checked


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

    Shape:
        - pred_points: ``[M, 2]``; pred_scores: ``[M]``; target_points: ``[N, 2]``
        - pred_idx, target_idx: ``[min(M, N)]``

    Example:
        >>> pred = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
        >>> scores, target = torch.tensor([0.9, 0.8]), torch.tensor([[9.0, 1.0]])
        >>> certify_assignment(pred, scores, target, torch.tensor([0]), torch.tensor([0])).optimal
        False
    """
    pred, scores, target, tau = read_inputs(pred_points, pred_scores, target_points, tau)
    k = DEFAULT_K if k is None else positive_int(k, "k", 1)
    max_rounds = positive_int(max_rounds, "max_rounds", 1)
    preds, targets = _check_assignment(pred_idx, target_idx, pred.shape[0], target.shape[0])
    problem = point_problem(pred, scores, target, tau)
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
    keys = union_keys(initial_keys(problem, k), rows * n_cols + mate)
    for rounds in range(1, max_rounds + 1):
        r, c = np.divmod(keys, n_cols)
        w = problem.cost(r, c)
        duals = potentials(problem, r, c, w, mate)
        if duals is None:
            return verdict(
                False,
                "a cheaper re-assignment exists among the candidate pairs",
                math.nan,
                None,
                rounds,
            )
        bad_r, bad_c, _ = violations(problem, *duals)
        if bad_r.size == 0:
            reason = "dual values with no negative reduced cost over all pairs"
            return verdict(True, reason, problem.n_rows * problem.tol, duals, rounds)
        keys = union_keys(keys, bad_r * n_cols + bad_c)
    if 8 * problem.n_rows * n_cols > DENSE_MEMORY_BUDGET:
        reason = (
            f"undecided: no certificate after {max_rounds} rounds and the dense check's "
            f"float64 [{problem.n_rows}, {n_cols}] cost is over DENSE_MEMORY_BUDGET"
        )
        return verdict(False, reason, math.inf, None, max_rounds)
    optimum = float(problem.cost(rows, problem.dense_mate()).sum())
    gap = total - optimum
    optimal = gap <= problem.n_rows * problem.tol
    reason = "compared with the dense optimum"
    return verdict(optimal, reason, max(gap, 0.0), None, max_rounds)
