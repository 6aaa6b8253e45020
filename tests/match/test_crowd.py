import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

import detloss.match.crowd as crowd
from _paths import PATHS, use_path
from _references import brute_force_assignment
from detloss.match._point_problem import SCAN
from detloss.match.certificate import certify_assignment
from detloss.match.crowd import crowd_assignment, solve_crowd_assignment


@pytest.fixture(scope="module", autouse=True, params=PATHS)
def path(request):
    """Every test on both candidate loops: the compiled warm-started solver and the
    reference (scipy's sparse solve from scratch each round, Bellman-Ford duals, k-d tree
    certificate)."""
    yield from use_path(request.param)


# ----------------------------------------------------------------------------- references


def dense_cost(pred, scores, target, tau):
    """The P2PNet cost ``[N, M]`` (targets by proposals), float64, from the definition."""
    pred = torch.as_tensor(pred).double().numpy().reshape(-1, 2)
    scores = torch.as_tensor(scores).double().numpy().reshape(-1)
    target = torch.as_tensor(target).double().numpy().reshape(-1, 2)
    dist = np.sqrt(((target[:, None, :] - pred[None, :, :]) ** 2).sum(axis=-1))
    return tau * dist - scores[None, :]


def optimum(cost: np.ndarray) -> float:
    if cost.size == 0:
        return 0.0
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum())


def total(cost: np.ndarray, pred_idx: torch.Tensor, target_idx: torch.Tensor) -> float:
    return float(cost[target_idx.numpy(), pred_idx.numpy()].sum())


def assert_one_to_one(pred_idx, target_idx, m, n):
    assert pred_idx.dtype == torch.int64 and target_idx.dtype == torch.int64
    assert pred_idx.shape == target_idx.shape == (min(m, n),)
    assert torch.unique(pred_idx).numel() == pred_idx.numel()
    assert torch.unique(target_idx).numel() == target_idx.numel()
    assert bool((target_idx[1:] > target_idx[:-1]).all())  # sorted by target
    if pred_idx.numel():
        assert 0 <= int(pred_idx.min()) and int(pred_idx.max()) < m
        assert 0 <= int(target_idx.min()) and int(target_idx.max()) < n


def assert_exact(pred, scores, target, tau, **kwargs):
    """Solve with the sparse path forced and compare the total with scipy's dense optimum."""
    kwargs.setdefault("dense_below", 0)
    solution = solve_crowd_assignment(pred, scores, target, tau, **kwargs)
    assert_one_to_one(solution.pred_idx, solution.target_idx, pred.shape[0], target.shape[0])
    cost = dense_cost(pred, scores, target, tau)
    best = optimum(cost)
    got = total(cost, solution.pred_idx, solution.target_idx)
    assert abs(got - best) <= 1e-9 * max(1.0, abs(best))
    assert solution.cost == pytest.approx(got, rel=1e-12, abs=1e-12)
    return solution


def crowd_problem(kind: str, m: int, n: int, seed: int, dtype=torch.float64):
    """Proposals, scores and heads of one image of the given kind."""
    g = np.random.default_rng(seed)
    if kind == "uniform":
        pred = g.uniform(0, 100, (m, 2))
        target = g.uniform(0, 100, (n, 2))
    elif kind == "clustered":
        pred = g.uniform(0, 100, (m, 2))
        target = g.normal(25, 4, (n, 2))
    elif kind == "grid":  # integer points: coincident points and exact distance ties
        pred = g.integers(0, 6, (m, 2)).astype(float)
        target = g.integers(0, 6, (n, 2)).astype(float)
    elif kind == "coincident":  # every head at one spot
        pred = g.uniform(0, 100, (m, 2))
        target = np.repeat(g.uniform(0, 100, (1, 2)), n, axis=0)
    elif kind in ("p2p", "p2p-quarter"):  # reference points + offsets, scores high near heads
        side = int(np.ceil(np.sqrt(m)))
        grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)
        pred = 4.0 * grid[:m] + 2.0 + g.normal(0, 1.0, (m, 2))
        extent = 4.0 * side if kind == "p2p" else 2.0 * side
        target = g.uniform(0, extent, (n, 2))
    else:
        raise AssertionError(kind)
    if kind.startswith("p2p") and n:
        near = np.sqrt(((pred[:, None] - target[None]) ** 2).sum(-1)).min(axis=1)
        scores = np.clip(0.3 * g.random(m) + 0.7 * np.exp(-(near**2) / 8.0), 0, 1)
    else:
        scores = g.random(m)
    if kind == "grid":
        scores = np.round(scores, 1)  # tied scores too
    return (
        torch.tensor(pred, dtype=dtype),
        torch.tensor(scores, dtype=dtype),
        torch.tensor(target, dtype=dtype),
    )


# ----------------------------------------------------------------------------- exactness


def test_hand_worked_example():
    # costs (tau 0.1), targets by proposals:
    #   t0: [-0.8, 0.7, 0.3]   t1: [0.0, -0.1, -0.7]  ->  t0-p0 + t1-p2 = -1.5
    pred = torch.tensor([[1.0, 0.0], [9.0, 0.0], [11.0, 0.0]])
    scores = torch.tensor([0.9, 0.2, 0.8])
    target = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    for dense_below in (0, crowd.DENSE_BELOW):
        solution = solve_crowd_assignment(pred, scores, target, 0.1, dense_below=dense_below)
        assert solution.pred_idx.tolist() == [0, 2]
        assert solution.target_idx.tolist() == [0, 1]
        assert solution.cost == pytest.approx(-1.5, abs=1e-6)
    cost = dense_cost(pred, scores, target, 0.1)
    assert brute_force_assignment(cost) == pytest.approx(-1.5, abs=1e-6)


@pytest.mark.parametrize("kind", ["uniform", "clustered", "grid", "coincident", "p2p"])
@pytest.mark.parametrize("shape", [(40, 12), (30, 30), (12, 40), (25, 1), (1, 25)])
def test_matches_dense_optimum(kind, shape):
    m, n = shape
    for seed in range(3):
        pred, scores, target = crowd_problem(kind, m, n, seed)
        for k in (1, 3):
            solution = assert_exact(pred, scores, target, 0.05, k=k)
            assert solution.method == "sparse"


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_empty_sides(shape):
    m, n = shape
    pred, scores, target = crowd_problem("uniform", m, n, 0)
    solution = assert_exact(pred, scores, target, 0.05)
    assert solution.pred_idx.numel() == 0 and solution.cost == 0.0


@pytest.mark.parametrize("kind", ["uniform", "p2p", "p2p-quarter"])
def test_medium_problem_takes_the_sparse_path(kind):
    pred, scores, target = crowd_problem(kind, 4096, 300, 7)
    solution = assert_exact(pred, scores, target, 0.05, dense_below=crowd.DENSE_BELOW)
    assert solution.method == "sparse"
    best = optimum(dense_cost(pred, scores, target, 0.05))
    assert solution.cost - best <= solution.gap_bound + 1e-9
    assert 0 < solution.gap_bound < 1e-6


@pytest.mark.parametrize("tau", [0.01, 0.05, 0.5, 3.0])
def test_any_tau(tau):
    pred, scores, target = crowd_problem("p2p", 200, 40, 3)
    assert_exact(pred, scores, target, tau, k=2)


def test_tau_zero_is_the_best_scores():
    pred, scores, target = crowd_problem("grid", 30, 12, 1)
    solution = assert_exact(pred, scores, target, 0.0)
    assert solution.method == "tau0"
    assert solution.cost == pytest.approx(-float(scores.double().sort().values[-12:].sum()))
    assert_exact(pred, scores, target[:1].repeat(40, 1), 0.0)  # more targets than proposals


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_input_dtypes(dtype):
    pred, scores, target = crowd_problem("p2p", 150, 30, 5, dtype=dtype)
    # The reference sees the same (rounded) values, upcast to float64.
    assert_exact(pred, scores, target, 0.05)


def test_integer_inputs():
    pred, scores, target = crowd_problem("grid", 40, 15, 2)
    assert_exact(pred.long(), scores, target.int(), 0.05)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(0, 25),
    n=st.integers(0, 25),
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["uniform", "clustered", "grid", "coincident", "p2p"]),
    tau=st.sampled_from([0.01, 0.05, 0.3]),
    k=st.integers(1, 4),
)
def test_property_same_total_as_scipy(m, n, seed, kind, tau, k):
    pred, scores, target = crowd_problem(kind, m, n, seed)
    assert_exact(pred, scores, target, tau, k=k)


# ----------------------------------------------------------------------------- hard cases


def far_partner_problem(spots: int = 3):
    """Each head has 12 poor proposals (score 0) within 2 px and one confident proposal
    (score 1) 100 px away, its optimal partner: the first candidates miss it."""
    g = np.random.default_rng(0)
    heads = np.array([[300.0 * s, 0.0] for s in range(spots)])
    near = heads[:, None, :] + g.uniform(-1.4, 1.4, (spots, 12, 2))
    far = heads + np.array([0.0, 100.0])
    pred = np.concatenate((near.reshape(-1, 2), far))
    scores = np.concatenate((np.zeros(12 * spots), np.ones(spots)))
    return torch.tensor(pred), torch.tensor(scores), torch.tensor(heads)


def test_certificate_adds_the_pairs_the_candidates_missed():
    pred, scores, target = far_partner_problem()
    solution = assert_exact(pred, scores, target, 0.005, k=1)
    assert solution.method == "sparse" and solution.rounds == 2
    assert sorted(solution.pred_idx.tolist()) == [36, 37, 38]


def test_falls_back_to_dense_when_rounds_run_out():
    pred, scores, target = far_partner_problem()
    solution = assert_exact(pred, scores, target, 0.005, k=1, max_rounds=1)
    assert solution.method == "fallback" and solution.rounds == 1


def test_dense_fallback_over_the_memory_budget_keeps_growing_then_raises(monkeypatch):
    # A dense cost over the budget is never allocated: the sparse solve gets more rounds
    # (and here certifies), and when those also run out the error names the sizes.
    pred, scores, target = far_partner_problem()
    monkeypatch.setattr(crowd, "DENSE_MEMORY_BUDGET", 64)
    solution = assert_exact(pred, scores, target, 0.005, k=1, max_rounds=1)
    assert solution.method == "sparse" and solution.rounds == 2
    monkeypatch.setattr(crowd, "_ROUND_FACTOR", 1)
    n, m = target.shape[0], pred.shape[0]
    with pytest.raises(
        ValueError,
        match=rf"crowd_assignment: {n} targets x {m} proposals were not certified optimal "
        rf".* float64 \[{n}, {m}\] cost .* over detloss.match.crowd.DENSE_MEMORY_BUDGET",
    ):
        solve_crowd_assignment(pred, scores, target, 0.005, k=1, max_rounds=1, dense_below=0)


def test_candidate_graph_without_full_matching_grows():
    # 60 heads at one spot compete for the same few nearest proposals.
    pred, scores, target = crowd_problem("coincident", 300, 60, 4)
    solution = assert_exact(pred, scores, target, 0.05, k=1)
    assert solution.method == "sparse"
    assert solution.candidates > 60 * SCAN


def test_independent_groups_solved_in_batches():
    # A crowd at one spot (its candidates must grow) next to scattered heads that form many
    # small independent components, more rows than one batch holds.
    g = np.random.default_rng(5)
    pred = torch.tensor(g.uniform(0, 1000, (6000, 2)))
    scores = torch.tensor(g.random(6000))
    spot = np.repeat([[500.0, 500.0]], 40, axis=0)
    target = torch.tensor(np.concatenate((spot, g.uniform(0, 1000, (500, 2)))))
    assert 500 > crowd._BATCH_ROWS
    solution = assert_exact(pred, scores, target, 0.05, k=2)
    assert solution.method == "sparse"


def test_never_returns_a_suboptimal_candidate_solve(monkeypatch, path):
    # A sparse solver that returns the *most* expensive matching on the candidates: the
    # dual computation must notice and the dense solve take over.
    if path:
        pytest.skip("the reference path's sparse solve (the compiled one: test_crowd_kernel)")
    original = crowd._sparse_matching

    def worst(n_rows, r, c, w):
        return original(n_rows, r, c, -w)

    monkeypatch.setattr(crowd, "_sparse_matching", worst)
    pred, scores, target = crowd_problem("p2p", 400, 60, 1)
    solution = assert_exact(pred, scores, target, 0.05)
    assert solution.method == "fallback"


def test_crowd_assignment_is_the_solution_pairs():
    pred, scores, target = crowd_problem("p2p", 300, 50, 9)
    pred_idx, target_idx = crowd_assignment(pred, scores, target, 0.05, dense_below=0)
    solution = solve_crowd_assignment(pred, scores, target, 0.05, dense_below=0)
    assert torch.equal(pred_idx, solution.pred_idx)
    assert torch.equal(target_idx, solution.target_idx)
    assert pred_idx.device == pred.device


def test_more_targets_than_proposals_sorted_by_target():
    pred, scores, target = crowd_problem("uniform", 10, 30, 2)
    solution = assert_exact(pred, scores, target, 0.05)
    assert solution.pred_idx.sort().values.tolist() == list(range(10))


@pytest.mark.cuda
def test_cuda_inputs_come_back_on_cuda():
    pred, scores, target = crowd_problem("p2p", 300, 50, 0)
    on_host = crowd_assignment(pred, scores, target, 0.05, dense_below=0)
    on_gpu = crowd_assignment(
        pred.to("cuda"), scores.to("cuda"), target.to("cuda"), 0.05, dense_below=0
    )
    assert all(t.device.type == "cuda" for t in on_gpu)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(on_host, on_gpu))


def test_no_gradient_flows():
    pred, scores, target = crowd_problem("p2p", 100, 20, 0)
    pred.requires_grad_(True)
    scores.requires_grad_(True)
    pred_idx, target_idx = crowd_assignment(pred, scores, target, 0.05, dense_below=0)
    assert not pred_idx.requires_grad and not target_idx.requires_grad


# ----------------------------------------------------------------------------- certificate


def assert_potentials(certificate, pred, scores, target, pred_idx, target_idx, tau):
    cost = dense_cost(pred, scores, target, tau)
    u = certificate.target_potential.numpy()
    v = certificate.pred_potential.numpy()
    reduced = cost - u[:, None] - v[None, :]
    assert reduced.min() >= -1e-9
    assert np.abs(reduced[target_idx.numpy(), pred_idx.numpy()]).max() <= 1e-9
    n, m = cost.shape
    larger, matched = (v, pred_idx) if n <= m else (u, target_idx)
    assert larger.max() <= 0.0
    unmatched = np.ones(larger.size, dtype=bool)
    unmatched[matched.numpy()] = False
    assert (larger[unmatched] == 0.0).all()
    # Weak duality made tight: the dual objective equals the assignment's cost.
    assert u.sum() + v.sum() == pytest.approx(certificate.cost, abs=1e-8)


@pytest.mark.parametrize("shape", [(60, 20), (20, 60), (30, 30)])
def test_certificate_accepts_the_optimum_with_valid_potentials(shape):
    m, n = shape
    pred, scores, target = crowd_problem("p2p", m, n, 11)
    cost = dense_cost(pred, scores, target, 0.05)
    rows, cols = linear_sum_assignment(cost)
    target_idx, pred_idx = torch.from_numpy(rows), torch.from_numpy(cols)
    certificate = certify_assignment(pred, scores, target, pred_idx, target_idx, 0.05, k=2)
    assert certificate.optimal
    assert certificate.cost == pytest.approx(optimum(cost))
    assert 0 < certificate.gap_bound < 1e-8
    assert_potentials(certificate, pred, scores, target, pred_idx, target_idx, 0.05)


@pytest.mark.parametrize("shape", [(60, 20), (20, 60)])
def test_certificate_rejects_a_swapped_assignment(shape):
    m, n = shape
    pred, scores, target = crowd_problem("p2p", m, n, 12)
    cost = dense_cost(pred, scores, target, 0.05)
    rows, cols = linear_sum_assignment(cost)
    cols = cols.copy()
    cols[[0, 1]] = cols[[1, 0]]
    assert cost[rows, cols].sum() > optimum(cost) + 1e-6
    certificate = certify_assignment(
        pred, scores, target, torch.from_numpy(cols), torch.from_numpy(rows), 0.05
    )
    assert not certificate.optimal
    assert certificate.target_potential is None


def test_certificate_finds_an_improvement_outside_the_candidates():
    pred, scores, target = far_partner_problem()
    # Each head on its nearest poor neighbour: the best among the candidates, but 0.5 per
    # head worse than the far confident proposal.
    cost = dense_cost(pred, scores, target, 0.005)
    pred_idx = torch.from_numpy(cost[:, :36].argmin(axis=1))
    target_idx = torch.arange(3)
    certificate = certify_assignment(pred, scores, target, pred_idx, target_idx, 0.005, k=1)
    assert not certificate.optimal and certificate.rounds == 2
    # With a single round the spatial search cannot re-check: the dense optimum decides.
    certificate = certify_assignment(
        pred, scores, target, pred_idx, target_idx, 0.005, k=1, max_rounds=1
    )
    assert not certificate.optimal and certificate.reason == "compared with the dense optimum"
    assert certificate.gap_bound == pytest.approx(total(cost, pred_idx, target_idx) - optimum(cost))
    good = torch.tensor([36, 37, 38])
    assert certify_assignment(pred, scores, target, good, target_idx, 0.005, k=1).optimal


def test_certificate_of_an_empty_assignment():
    pred, scores, target = crowd_problem("uniform", 5, 0, 0)
    empty = torch.zeros(0, dtype=torch.int64)
    assert certify_assignment(pred, scores, target, empty, empty).optimal


# ----------------------------------------------------------------------------- errors


def test_bad_inputs():
    pred, scores, target = crowd_problem("uniform", 6, 3, 0)
    with pytest.raises(ValueError, match=r"pred_points: expected shape \[M, 2\], got \[6, 3\]"):
        crowd_assignment(torch.zeros(6, 3), scores, target)
    with pytest.raises(ValueError, match=r"pred_scores: expected shape \[6\] .*got \[5\]"):
        crowd_assignment(pred, scores[:5], target)
    with pytest.raises(ValueError, match=r"pred_scores: expected shape \[M\], got \[6, 1\]"):
        crowd_assignment(pred, scores[:, None], target)
    with pytest.raises(ValueError, match=r"target_points: expected shape \[N, 2\], got \[3\]"):
        crowd_assignment(pred, scores, target[:, 0])
    with pytest.raises(TypeError, match=r"pred_points must be a torch\.Tensor, got ndarray"):
        crowd_assignment(pred.numpy(), scores, target)
    with pytest.raises(TypeError, match=r"pred_scores must be a real .* got torch\.bool"):
        crowd_assignment(pred, scores > 0.5, target)
    bad = target.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="target_points: expected finite values, got a NaN"):
        crowd_assignment(pred, scores, bad)
    with pytest.raises(ValueError, match="pred_scores: expected finite values"):
        crowd_assignment(pred, torch.full((6,), float("inf")), target)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"tau": -0.1}, ValueError, r"tau: expected a finite number >= 0, got -0.1"),
        ({"tau": float("nan")}, ValueError, r"tau: expected a finite number >= 0, got nan"),
        ({"tau": True}, TypeError, r"tau must be a real number, got bool"),
        ({"tau": "0.05"}, TypeError, r"tau must be a real number, got str"),
        ({"k": 0}, ValueError, r"k: expected an int >= 1, got 0"),
        ({"k": 2.5}, ValueError, r"k: expected an int >= 1, got 2.5"),
        ({"max_rounds": 0}, ValueError, r"max_rounds: expected an int >= 1, got 0"),
        ({"dense_below": -1}, ValueError, r"dense_below: expected an int >= 0, got -1"),
    ],
)
def test_bad_settings(kwargs, error, message):
    pred, scores, target = crowd_problem("uniform", 6, 3, 0)
    with pytest.raises(error, match=message):
        crowd_assignment(pred, scores, target, **kwargs)


def test_certificate_bad_assignments():
    pred, scores, target = crowd_problem("uniform", 6, 3, 0)
    idx = torch.arange(3)
    with pytest.raises(ValueError, match=r"pred_idx: expected shape \[3\] .*got \[2\]"):
        certify_assignment(pred, scores, target, idx[:2], idx[:2])
    with pytest.raises(ValueError, match=r"target_idx: expected indices in \[0, 2\], got .* 3\]"):
        certify_assignment(pred, scores, target, idx, idx + 1)
    with pytest.raises(ValueError, match=r"pred_idx: expected distinct indices"):
        certify_assignment(pred, scores, target, torch.tensor([0, 0, 1]), idx)
    with pytest.raises(TypeError, match=r"pred_idx must be an integer tensor, got torch\.float32"):
        certify_assignment(pred, scores, target, idx.float(), idx)
    with pytest.raises(ValueError, match=r"target_idx: expected shape \[3\], got \[3, 1\]"):
        certify_assignment(pred, scores, target, idx, idx[:, None])


def test_dense_solves_agree_with_scipy_on_a_packed_cluster():
    # Heads packed in a corner: the dense path and the sparse path (with its dense
    # fallback), by the compiled solver or by scipy, reach scipy's optimum.
    _check_packed_cluster()


def _check_packed_cluster() -> None:
    rng = np.random.default_rng(11)
    pred = torch.from_numpy(rng.uniform(0, 300, (1500, 2)))
    scores = torch.from_numpy(rng.random(1500))
    target = torch.from_numpy(rng.uniform(0, 40, (120, 2)))
    for dense_below in (10**9, 0):
        solution = assert_exact(pred, scores, target, 0.05, dense_below=dense_below)
        assert solution.method in ("dense", "sparse", "fallback")


def _solve_with_tampered_kernel(monkeypatch, tamper):
    """A p2p crowd problem solved with the compiled solver's output passed through
    ``tamper(n_short, row_mate, col_mate, v)`` (in place) before the certificate reads it;
    the dense solve must take over, so the result is still exact."""
    import detloss._kernels.sparse_assignment_cpu as kernel

    original = kernel.solve

    def tampered(indptr, index, weight, row_mate, col_mate, v, tol, reached):
        n_short = original(indptr, index, weight, row_mate, col_mate, v, tol, reached)
        tamper(n_short, row_mate, col_mate, v)
        return n_short

    monkeypatch.setattr(kernel, "solve", tampered)
    pred, scores, target = crowd_problem("p2p", 400, 60, 1)
    return assert_exact(pred, scores, target, 0.05)


def test_fast_path_never_returns_a_suboptimal_candidate_solve(monkeypatch, path):
    # A compiled solver that swaps the columns of two rows after solving, keeping its
    # prices: the certificate must notice and the dense solve take over.
    if not path:
        pytest.skip("the compiled solver (the reference path: the test above)")

    def swap(n_short, row_mate, col_mate, v):
        if n_short < 0:
            row_mate[[0, 1]] = row_mate[[1, 0]]
            col_mate[row_mate[:2]] = [0, 1]

    assert _solve_with_tampered_kernel(monkeypatch, swap).method == "fallback"


def test_fast_path_checks_the_shape_of_the_prices(monkeypatch, path):
    # Prices that break condition 4 (a free column below 0) are never taken as a proof.
    if not path:
        pytest.skip("the compiled solver")

    def stale_price(n_short, row_mate, col_mate, v):
        v[np.flatnonzero(col_mate < 0)[0]] = -1.0

    assert _solve_with_tampered_kernel(monkeypatch, stale_price).method == "fallback"


def test_packed_crowd_certified_in_few_rounds(path):
    # Twice as many heads as proposals in one corner: most heads must be matched far out,
    # through long chains of displaced neighbours.
    rng = np.random.default_rng(2)
    pred = torch.from_numpy(rng.uniform(0, 200, (2500, 2)))
    target = torch.from_numpy(rng.uniform(0, 50, (300, 2)))
    near = torch.cdist(pred, target).min(dim=1).values
    scores = (0.3 * torch.rand(2500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
              + 0.7 * torch.exp(-(near**2) / 32)).clamp(0, 1)  # fmt: skip
    solution = assert_exact(pred, scores, target, 0.05)
    if path:  # the reference path may need the dense fallback here
        assert solution.method == "sparse" and solution.rounds <= 4
