import importlib
import inspect
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detloss._kernels import reference_path
from detloss.match.closest import closest_prediction, closest_target
from detloss.match.hungarian import hungarian
from detloss.match.sinkhorn import (
    SinkhornConvergenceWarning,
    SinkhornOptions,
    plan_to_assignment,
    sinkhorn,
)
from detloss.match.sinkhorn_matcher import SinkhornMatcher
from detloss.match.sinkhorn_solver import _Solver

F64 = torch.float64


def uotod_plan(cost, n, background, reg, iters, tau_pred=None, tau_target=None):
    """uotod's multiplicative Sinkhorn on one image, float64: ``cost [M, N]`` whose first
    ``n`` targets are real, the background column appended, the cost divided by its
    maximum, ``K = exp(-C / reg)`` and ``iters`` rounds of (target update, prediction
    update), then one more target update. Returns the ``[M, N + 1]`` plan scaled by M."""
    m, width = cost.shape
    full = torch.cat([cost[:, :n], torch.full((m, 1), background, dtype=F64)], dim=1)
    full = full / full.max()
    a = torch.full((m,), 1.0 / m, dtype=F64)
    b = torch.full((n + 1,), 1.0 / m, dtype=F64)
    b[n] = (m - n) / m
    phi_p = 1.0 if tau_pred is None else tau_pred / (tau_pred + reg)
    phi_t = 1.0 if tau_target is None else tau_target / (tau_target + reg)
    kernel = torch.exp(-full / reg)
    u = torch.ones(m, dtype=F64)
    for _ in range(iters):
        v = (b / (kernel * u[:, None]).sum(0)) ** phi_t
        u = (a / (kernel * v[None, :]).sum(1)) ** phi_p
    v = (b / (kernel * u[:, None]).sum(0)) ** phi_t
    small = u[:, None] * kernel * v[None, :] * m
    plan = torch.zeros(m, width + 1, dtype=F64)
    plan[:, :n] = small[:, :n]
    plan[:, width] = small[:, n]
    return plan


def quiet(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SinkhornConvergenceWarning)
        return sinkhorn(**kwargs)


def rand(*shape, seed=0, dtype=F64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- agreement with uotod -------------------------------------------------------------------


@pytest.mark.parametrize(("tau_pred", "tau_target"), [(None, None), (1.0, 0.5), (0.1, 2.0)])
@pytest.mark.parametrize("iters", [0, 1, 7, 23])
def test_equals_uotod_iteration_by_iteration(tau_pred, tau_target, iters):
    cost = rand(12, 5)
    mask = torch.tensor([True, True, True, False, False])
    ours = sinkhorn(
        cost,
        target_mask=mask,
        reg=0.05,
        tau_pred=tau_pred,
        tau_target=tau_target,
        background_cost=0.6,
        max_iter=iters,
        tol=0,
        check_every=10,
    )
    ref = uotod_plan(cost, 3, 0.6, 0.05, iters, tau_pred, tau_target)
    torch.testing.assert_close(ours.plan[0], ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("tau_pred", "tau_target"), [(None, None), (1.0, 0.01), (0.05, 1.0)])
def test_converged_plan_equals_uotod(tau_pred, tau_target):
    cost = rand(30, 6, seed=1)
    mask = torch.tensor([True] * 4 + [False] * 2)
    reg = 0.12 / (math.log(60) + 1)  # uotod's default for 30 predictions
    ours = sinkhorn(
        cost, target_mask=mask, tau_pred=tau_pred, tau_target=tau_target, background_cost=0.7, tol=1e-11,
        max_iter=5000,
    )  # fmt: skip
    ref = uotod_plan(cost, 4, 0.7, reg, 5000, tau_pred, tau_target)
    torch.testing.assert_close(ours.plan[0], ref, rtol=1e-7, atol=1e-9)


def test_default_reg_follows_uotod():
    cost = rand(40, 3, seed=2)
    reg = 0.12 / (math.log(80) + 1)
    default = sinkhorn(cost, tol=1e-10, max_iter=3000)
    explicit = sinkhorn(cost, reg=reg, tol=1e-10, max_iter=3000)
    torch.testing.assert_close(default.plan, explicit.plan)
    other = sinkhorn(cost, reg_dimless=0.5, tol=1e-10, max_iter=3000)
    assert not torch.allclose(default.plan, other.plan)


# -- marginals, masks and batching -----------------------------------------------------------


def check_balanced_marginals(matching, pred_mask, target_mask, tol):
    plan = matching.plan.double()
    rows = plan.sum(2)
    for i in range(plan.shape[0]):
        m = int(pred_mask[i].sum())
        n = int(target_mask[i].sum())
        real_rows = rows[i][pred_mask[i]]
        assert torch.all((real_rows - 1).abs() <= tol), real_rows
        assert torch.all(plan[i][~pred_mask[i]] == 0)
        assert torch.all(plan[i][:, :-1][:, ~target_mask[i]] == 0)
        cols = plan[i][:, :-1][:, target_mask[i]].sum(0)
        share = m / max(m, n) if m else 0.0
        torch.testing.assert_close(cols, torch.full_like(cols, share), atol=1e-9, rtol=0)
        torch.testing.assert_close(
            plan[i][:, -1].sum(), torch.tensor(max(m - n, 0), dtype=F64), atol=1e-8, rtol=1e-9
        )


def test_non_prefix_masks_hold_their_marginals():
    cost = rand(3, 20, 6, seed=3)
    target_mask = torch.tensor(
        [
            [True, False, True, False, True, False],
            [False, False, False, False, False, True],
            [False, False, False, False, False, False],
        ]
    )
    pred_mask = torch.ones(3, 20, dtype=torch.bool)
    m = sinkhorn(cost, target_mask=target_mask, tol=1e-6, max_iter=2000)
    check_balanced_marginals(m, pred_mask, target_mask, tol=1e-6)
    assert torch.all(m.pred_to_target[2] == -1)


def test_mask_equals_dropping_the_padded_targets():
    # uotod assumes a prefix; with any mask the result equals the problem without padding.
    cost = rand(1, 15, 5, seed=4)
    mask = torch.tensor([[False, True, False, True, True]])
    ours = sinkhorn(cost, target_mask=mask, tau_pred=1.0, tau_target=0.1, tol=1e-11, max_iter=3000)
    dense = sinkhorn(cost[:, :, mask[0]], tau_pred=1.0, tau_target=0.1, tol=1e-11, max_iter=3000)
    torch.testing.assert_close(ours.plan[0][:, [1, 3, 4, 5]], dense.plan[0])
    assert torch.all(ours.plan[0][:, [0, 2]] == 0)
    assert ours.pred_to_target[0].tolist() == [
        [1, 3, 4, -1][int(j)] if j >= 0 else -1 for j in dense.pred_to_target[0]
    ]


def test_each_image_is_normalised_alone():
    # Scaling one image's cost changes nothing in the other: no batch-wide maximum.
    cost = rand(2, 10, 4, seed=5)
    first = sinkhorn(cost, tau_pred=1.0, tau_target=0.1, tol=1e-10, max_iter=2000)
    scaled = cost.clone()
    scaled[1] *= 30
    second = sinkhorn(scaled, tau_pred=1.0, tau_target=0.1, tol=1e-10, max_iter=2000)
    torch.testing.assert_close(first.plan[0], second.plan[0])
    alone = sinkhorn(cost[:1], tau_pred=1.0, tau_target=0.1, tol=1e-10, max_iter=2000)
    torch.testing.assert_close(first.plan[0], alone.plan[0])


def test_pred_mask_equals_dropping_the_padded_predictions():
    cost = rand(2, 12, 3, seed=6)
    pred_mask = torch.ones(2, 12, dtype=torch.bool)
    pred_mask[0, [2, 5, 6, 11]] = False
    m = sinkhorn(cost, pred_mask=pred_mask, tol=1e-10, max_iter=3000)
    assert m.pred_to_target[0, [2, 5, 6, 11]].tolist() == [-2] * 4
    assert torch.all(m.plan[0][~pred_mask[0]] == 0)
    # The default reg and the masses use the image's own prediction count.
    alone = sinkhorn(cost[0][pred_mask[0]], tol=1e-10, max_iter=3000)
    torch.testing.assert_close(m.plan[0][pred_mask[0]], alone.plan[0])
    full = sinkhorn(cost[1:], tol=1e-10, max_iter=3000)
    torch.testing.assert_close(m.plan[1], full.plan[0])


def test_more_targets_than_predictions_share_the_mass():
    cost = rand(1, 3, 5, seed=7)
    m = sinkhorn(cost, tol=1e-9, max_iter=3000)
    check_balanced_marginals(
        m, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool), tol=1e-9
    )
    assert torch.all(m.plan[0, :, -1] == 0)
    assert torch.all(m.pred_to_target >= 0)


def test_empty_shapes():
    m = sinkhorn(rand(2, 4, 0))
    assert m.plan.shape == (2, 4, 1)
    torch.testing.assert_close(m.plan, torch.ones(2, 4, 1, dtype=F64))
    assert m.pred_to_target.tolist() == [[-1] * 4] * 2
    assert sinkhorn(rand(2, 0, 3)).plan.shape == (2, 0, 4)
    assert sinkhorn(rand(0, 5, 3)).plan.shape == (0, 5, 4)
    pred_mask = torch.tensor([[False] * 4, [True] * 4])
    none = sinkhorn(rand(2, 4, 3, seed=26), pred_mask=pred_mask, max_iter=5000)
    assert torch.all(none.plan[0] == 0) and none.pred_to_target[0].tolist() == [-2] * 4
    assert torch.isfinite(none.plan).all() and torch.isfinite(none.potentials[0]).all()
    torch.testing.assert_close(none.plan[1].sum(1), torch.ones(4, dtype=F64), atol=1e-4, rtol=0)


def test_unbatched_input_and_integer_cost():
    m = sinkhorn(torch.tensor([[0, 5], [5, 0], [3, 3]]), background_cost=4, max_iter=1000)
    assert m.plan.shape == (1, 3, 3) and m.plan.dtype == torch.float32
    assert m.pred_to_target.tolist() == [[0, 1, -1]]


def test_forbidden_pairs_get_no_mass():
    cost = rand(1, 6, 3, seed=8)
    cost[0, :, 1] = torch.inf
    cost[0, [2, 4], 1] = 0.5
    m = sinkhorn(cost, reg=0.1, tol=1e-9, max_iter=2000)
    assert torch.all(m.plan[0, [0, 1, 3, 5], 1] == 0)
    torch.testing.assert_close(m.plan[0, :, 1].sum(), torch.tensor(1.0, dtype=F64))


def test_padded_entries_may_hold_garbage():
    cost = rand(1, 6, 4, seed=9)
    mask = torch.tensor([[True, False, True, False]])
    dirty = cost.clone()
    dirty[0, :, 1] = torch.nan
    dirty[0, :, 3] = -torch.inf
    torch.testing.assert_close(
        sinkhorn(dirty, target_mask=mask).plan, sinkhorn(cost, target_mask=mask).plan
    )


@given(
    b=st.integers(1, 3),
    m=st.integers(1, 9),
    n=st.integers(0, 6),
    seed=st.integers(0, 10_000),
    unbalanced=st.booleans(),
)
def test_property_plans_are_valid(b, m, n, seed, unbalanced):
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(b, m, n, generator=gen, dtype=F64) * 3 - 1
    target_mask = torch.rand(b, n, generator=gen) < 0.6
    pred_mask = torch.rand(b, m, generator=gen) < 0.8
    taus = {"tau_pred": 1.0, "tau_target": 0.2} if unbalanced else {}
    match = sinkhorn(
        cost, target_mask=target_mask, pred_mask=pred_mask, tol=1e-6, max_iter=5000, reg=0.1, **taus
    )
    plan = match.plan
    assert torch.isfinite(plan).all() and (plan >= 0).all()
    assert torch.all(plan[:, :, :n][~(pred_mask[:, :, None] & target_mask[:, None, :])] == 0)
    if not unbalanced:
        check_balanced_marginals(match, pred_mask, target_mask, tol=1e-6)
    expected = plan.argmax(2)
    expected = torch.where(expected == n, -1, expected).masked_fill(~pred_mask, -2)
    assert torch.equal(match.pred_to_target, expected)


# -- limits ------------------------------------------------------------------------------------


def best_assignments(cost, background):
    """All ways for each of the N targets to take a distinct prediction (the rest go to the
    background), sorted by total cost: the balanced problem's vertices."""
    m, n = cost.shape
    totals = []
    for preds in itertools.permutations(range(m), n):
        total = float(background.sum())
        for j, i in enumerate(preds):
            total += float(cost[i, j] - background[i])
        totals.append((total, preds))
    return sorted(totals)


def test_small_reg_balanced_is_hungarian_on_cost_minus_background():
    gen = torch.Generator().manual_seed(10)
    checked = 0
    for _ in range(12):
        cost = torch.rand(1, 6, 3, generator=gen, dtype=F64)
        background = torch.rand(1, 6, generator=gen, dtype=F64)
        ranked = best_assignments(cost[0], background[0])
        if ranked[1][0] - ranked[0][0] < 0.02:
            continue  # a near tie: the entropic solution may round either way
        m = quiet(
            cost=cost,
            reg=1e-3,
            background_cost=background,
            normalize=False,
            max_iter=3000,
            tol=1e-6,
            eps_scaling=8,
        )
        # Each target takes one prediction; M - N go to the background: Hungarian on
        # [cost | background replicated], i.e. on cost - background per prediction.
        expected = hungarian(cost - background[:, :, None]).pred_to_target
        assert torch.equal(m.pred_to_target, expected)
        assert [int(i) for i in torch.nonzero(m.pred_to_target[0] >= 0)] == sorted(ranked[0][1])
        checked += 1
    assert checked >= 8


def min_gap(values, dim):
    two = values.topk(2, dim=dim, largest=False).values
    return float((two.select(dim, 1) - two.select(dim, 0)).min())


def test_free_targets_give_closest_target():
    # tau_pred -> inf (hard), tau_target = 0 (free): each prediction takes its cheapest column.
    cost = rand(3, 30, 5, seed=11)
    background = rand(3, 30, seed=12) * 0.5 + 0.25
    assert min_gap(torch.cat([cost, background[..., None]], 2), 2) > 1e-4  # no near tie
    m = sinkhorn(cost, tau_pred=None, tau_target=0.0, background_cost=background, reg=1e-6)
    ref = closest_target(cost, background)
    assert torch.equal(m.pred_to_target, ref.pred_to_target)
    torch.testing.assert_close(m.plan, ref.plan, atol=1e-9, rtol=0)
    huge = sinkhorn(cost, tau_pred=1e12, tau_target=0.0, background_cost=background, reg=1e-6)
    torch.testing.assert_close(huge.plan, m.plan)


def test_free_predictions_give_closest_prediction():
    # tau_pred = 0 (free), tau_target -> inf: each target takes its cheapest prediction.
    cost = rand(2, 30, 5, seed=13)
    assert min_gap(cost, 1) > 1e-4
    m = sinkhorn(cost, tau_pred=0.0, tau_target=math.inf, reg=1e-6)
    ref = closest_prediction(cost, cost_threshold=math.inf)
    torch.testing.assert_close(m.plan[..., :5], ref.plan[..., :5], atol=1e-9, rtol=0)
    # The background spreads its (M - N) / M evenly when its cost is constant.
    torch.testing.assert_close(m.plan[..., 5], torch.full((2, 30), 25 / 30, dtype=F64))
    chosen = ref.plan[..., :5].sum(2) > 0
    assert torch.equal(m.pred_to_target >= 0, chosen)


def test_tiny_reg_is_finite_and_stable_in_float32():
    cost = rand(4, 50, 8, seed=14, dtype=torch.float32)
    # The multiplicative iteration underflows here: exp(-C / reg) is zero almost everywhere.
    assert torch.exp(-cost / cost.amax() / 1e-4).eq(0).float().mean() > 0.9
    plain = quiet(cost=cost, reg=1e-4, max_iter=30)
    assert torch.isfinite(plain.plan).all() and torch.isfinite(plain.potentials[0]).all()
    # Epsilon scaling reaches the tolerance quickly, and reg -> 0 is the Hungarian matching.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = sinkhorn(cost, reg=1e-4, max_iter=100, eps_scaling=8, tol=1e-3)
        exact = sinkhorn(cost.double(), reg=1e-4, max_iter=100, eps_scaling=8, tol=1e-3)
    assert (exact.plan.sum(2) - 1).abs().max() <= 1e-3
    # float32 holds exponents of size C / reg = 1e4 to about 1e-3: the documented limit.
    assert (m.plan.sum(2) - 1).abs().max() <= 5e-3
    torch.testing.assert_close(m.plan[..., :-1].sum(1), torch.ones(4, 8), atol=5e-3, rtol=0)
    assert torch.equal(m.pred_to_target, hungarian(cost).pred_to_target)
    assert torch.equal(exact.pred_to_target, m.pred_to_target)


def test_scaling_and_log_domain_blocks_agree():
    cost = rand(2, 40, 6, seed=15)
    mask = torch.rand(2, 6, generator=torch.Generator().manual_seed(0)) < 0.7
    f0 = torch.randn(2, 40, dtype=F64, generator=torch.Generator().manual_seed(1))
    for taus in [(None, None), (0.5, 0.05)]:
        solver = _Solver(*_problem(cost, mask))
        solver.set_reg(0.05, *taus)
        g0 = solver.log_target(f0)
        f_log, g_log, res_log = solver.log_block(f0, g0, 7, residual=True)
        solver.rebuild(f0, g0)
        # Both product paths (bmm for large kernels, product-and-sum for small ones).
        solver.use_bmm = True
        u_bmm, v_bmm, _, _ = solver.scaling_block(7, residual=True)
        solver.use_bmm = False
        u, v, res_scale, spread = solver.scaling_block(7, residual=True)
        torch.testing.assert_close(u_bmm, u)
        torch.testing.assert_close(v_bmm, v)
        assert spread < 20
        solver.u, solver.v = u, v
        f_scale, g_scale = solver.potentials()
        torch.testing.assert_close(f_scale, f_log)
        torch.testing.assert_close(g_scale, g_log)
        torch.testing.assert_close(res_scale, res_log)
        plan, _ = solver.plan(torch.ones(2, dtype=F64))
        exact = torch.exp(solver.S_t + f_log[:, None, :] + g_log[:, :, None])
        torch.testing.assert_close(plan, exact.transpose(1, 2))


def _problem(cost, target_mask):
    """The solver's inputs for full predictions: cost with background 1, normalised, and
    the masses (1/m per prediction and real target, the rest on the background)."""
    b, m, n = cost.shape
    full = torch.cat([cost, torch.ones(b, m, 1, dtype=F64)], 2)
    full = full / full.amax((1, 2), keepdim=True)
    row_valid = torch.ones(b, m, dtype=torch.bool)
    col_valid = torch.cat([target_mask, torch.ones(b, 1, dtype=torch.bool)], 1)
    mass_b = torch.where(col_valid, 1.0 / m, 0.0).to(F64)
    mass_b[:, n] = (m - target_mask.sum(1)) / m
    mass_a = torch.full((b, m), 1.0 / m, dtype=F64)
    pair = row_valid[:, :, None] & col_valid[:, None, :]
    # The solver works on targets by predictions: [B, N + 1, M].
    return full.transpose(1, 2), pair.transpose(1, 2), row_valid, col_valid, mass_a, mass_b


def test_small_reg_falls_back_to_the_log_domain(monkeypatch):
    # At a small reg the unbalanced scalings jump by more than exp(20) within a block; the
    # block is redone in the log domain and the result stays that of float64.
    calls = []
    original = _Solver.log_block

    def spy(self, *args):
        calls.append(args)
        return original(self, *args)

    monkeypatch.setattr(_Solver, "log_block", spy)
    gen = torch.Generator().manual_seed(0)
    cost = torch.rand(1, 8, 3, generator=gen)
    background = torch.rand(1, 8, generator=gen)
    taus = {"tau_pred": 1.0, "tau_target": 0.01, "reg": 1e-3, "max_iter": 40}
    m = quiet(cost=cost, background_cost=background, **taus)
    assert calls, "expected at least one log-domain block"
    ref = quiet(cost=cost.double(), background_cost=background.double(), **taus)
    torch.testing.assert_close(m.plan, ref.plan.float(), atol=1e-4, rtol=0)


# -- precision and devices -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_costs_are_solved_in_float32(dtype):
    cost = rand(2, 30, 4, seed=17, dtype=torch.float32).to(dtype)
    m = sinkhorn(cost, tau_pred=1.0, tau_target=0.1)
    assert m.plan.dtype == dtype and m.potentials[0].dtype == torch.float32
    ref = sinkhorn(cost.float(), tau_pred=1.0, tau_target=0.1)
    torch.testing.assert_close(m.plan.float(), ref.plan, atol=1e-2, rtol=1e-2)
    assert torch.equal(m.pred_to_target, ref.pred_to_target)


def test_float64_stays_float64():
    m = sinkhorn(rand(1, 5, 2))
    assert m.plan.dtype == F64 and m.potentials[1].dtype == F64


@pytest.mark.cuda
def test_cuda_matches_cpu():
    cost = rand(2, 100, 7, seed=18, dtype=torch.float32)
    mask = torch.rand(2, 7, generator=torch.Generator().manual_seed(0)) < 0.6
    cpu = sinkhorn(cost, target_mask=mask, tau_pred=1.0, tau_target=0.1)
    gpu = sinkhorn(cost.cuda(), target_mask=mask.cuda(), tau_pred=1.0, tau_target=0.1)
    assert gpu.plan.is_cuda and gpu.pred_to_target.is_cuda
    torch.testing.assert_close(gpu.plan.cpu(), cpu.plan, atol=1e-5, rtol=1e-4)


# -- stopping rule, warm start, eps scaling ------------------------------------------------


def test_tol_zero_runs_exactly_max_iter_and_never_warns():
    cost = rand(10, 3, seed=19)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = sinkhorn(cost, reg=0.02, max_iter=13, tol=0, check_every=4)
    torch.testing.assert_close(m.plan[0], uotod_plan(cost, 3, 1.0, 0.02, 13), rtol=1e-10, atol=0)


def test_stops_at_the_first_check_below_tol():
    cost = rand(10, 3, seed=20)
    # A huge tol is met at the first check: exactly check_every iterations ran.
    m = sinkhorn(cost, reg=0.02, max_iter=100, tol=10.0, check_every=3)
    torch.testing.assert_close(m.plan[0], uotod_plan(cost, 3, 1.0, 0.02, 3), rtol=1e-10, atol=0)


def test_converged_rows_are_within_tol():
    cost = rand(3, 25, 4, seed=21)
    for tol in (1e-3, 1e-6):
        m = sinkhorn(cost, tol=tol, max_iter=5000)
        assert (m.plan.sum(2) - 1).abs().max() <= tol


def test_warns_once_when_not_converged():
    cost = rand(2, 40, 5, seed=22)
    with pytest.warns(SinkhornConvergenceWarning, match=r"did not converge.*max_iter=3") as rec:
        sinkhorn(cost, reg=1e-3, max_iter=3, tol=1e-6)
    assert len([w for w in rec if w.category is SinkhornConvergenceWarning]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinkhorn(cost, max_iter=2000, tol=1e-4)


def test_potentials_describe_the_plan_and_warm_start():
    cost = rand(2, 20, 4, seed=23)
    reg = 0.05
    m = sinkhorn(cost, reg=reg, tol=1e-10, max_iter=3000, background_cost=0.5)
    f, g = m.potentials
    full = torch.cat([cost, torch.full((2, 20, 1), 0.5, dtype=F64)], 2)
    full = full / full.amax((1, 2), keepdim=True)
    rebuilt = 20 * torch.exp((f[:, :, None] + g[:, None, :] - full) / reg)
    torch.testing.assert_close(rebuilt, m.plan)
    # Warm-started from the solution, one block is already converged.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warm = sinkhorn(
            cost, reg=reg, tol=1e-8, max_iter=1, warm_start=m.potentials, background_cost=0.5
        )
    torch.testing.assert_close(warm.plan, m.plan)
    with pytest.warns(SinkhornConvergenceWarning):
        sinkhorn(cost, reg=reg, tol=1e-8, max_iter=1, background_cost=0.5)


def test_eps_scaling_converges_faster_at_small_reg():
    cost = rand(2, 30, 6, seed=1)
    with pytest.warns(SinkhornConvergenceWarning):
        sinkhorn(cost, reg=3e-3, max_iter=400, tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled = sinkhorn(cost, reg=3e-3, max_iter=100, tol=1e-4, eps_scaling=6)
    assert (scaled.plan.sum(2) - 1).abs().max() <= 1e-4
    # Same optimum: the plan without scaling, converged further from the scaled potentials.
    plain = quiet(cost=cost, reg=3e-3, max_iter=1000, tol=1e-8, warm_start=scaled.potentials)
    torch.testing.assert_close(scaled.plan, plain.plan, atol=1e-3, rtol=0)


def test_normalize_false_keeps_cost_units():
    cost = rand(1, 8, 2, seed=24)
    a = sinkhorn(cost * 10, reg=0.5, normalize=False, background_cost=10.0, max_iter=20, tol=0)
    b = sinkhorn(cost, reg=0.05, normalize=False, background_cost=1.0, max_iter=20, tol=0)
    torch.testing.assert_close(a.plan, b.plan)
    c = sinkhorn(cost * 10, reg=0.05, background_cost=10.0, max_iter=20, tol=0)
    torch.testing.assert_close(c.plan, b.plan)


def test_negative_costs_are_normalised_by_magnitude():
    # All costs in [-2, -1]: dividing by the largest magnitude keeps them in [-1, -0.5];
    # uotod divides by the maximum clamped at 1e-8, here by 1e-8.
    cost = -rand(1, 8, 2, seed=25) - 1
    m = sinkhorn(cost, background_cost=0.0, tol=1e-10, max_iter=3000)
    reg = 0.12 / (math.log(16) + 1)
    by_hand = sinkhorn(
        cost / cost.abs().max(),
        background_cost=0.0,
        reg=reg,
        normalize=False,
        tol=1e-10,
        max_iter=3000,
    )
    torch.testing.assert_close(m.plan, by_hand.plan)


# -- validation ------------------------------------------------------------------------------


def test_bad_arguments():
    cost = rand(2, 5, 3, dtype=torch.float32)
    cases = [
        (dict(reg=-1.0), ValueError, r"reg: expected a number > 0, got -1.0"),
        (dict(reg=0.0), ValueError, r"reg: expected a number > 0, got 0.0"),
        (dict(reg_dimless=0), ValueError, r"reg_dimless: expected a number > 0"),
        (dict(tau_pred=-0.5), ValueError, r"tau_pred: expected a number >= 0, got -0.5"),
        (dict(tau_target=float("nan")), ValueError, r"tau_target: expected a number >= 0"),
        (dict(max_iter=-1), ValueError, r"max_iter: expected an int >= 0, got -1"),
        (dict(max_iter=2.5), TypeError, r"max_iter must be an int, got float"),
        (dict(check_every=0), ValueError, r"check_every: expected an int >= 1, got 0"),
        (dict(tol=-1e-3), ValueError, r"tol: expected a number >= 0"),
        (dict(eps_scaling=-2), ValueError, r"eps_scaling: expected an int >= 0"),
        (dict(reg="big"), TypeError, r"reg must be a float, got str"),
        (dict(normalize=1), TypeError, r"normalize must be a bool, got int"),
        (dict(target_mask=torch.ones(2, 4, dtype=torch.bool)), ValueError,
         r"target_mask: expected shape \[2, 3\].*got \[2, 4\]"),
        (dict(pred_mask=torch.ones(5, dtype=torch.bool)), ValueError,
         r"pred_mask: expected shape \[2, 5\].*got \[5\]"),
        (dict(background_cost=torch.zeros(4)), ValueError,
         r"background_cost: expected a float or a tensor broadcastable to \[B, M\] = \[2, 5\], "
         r"got shape \[4\]"),
        (dict(background_cost="x"), TypeError, r"background_cost must be a float or a tensor"),
        (dict(warm_start=torch.zeros(2, 5)), TypeError, r"warm_start must be a pair \(f, g\)"),
        (dict(warm_start=(torch.zeros(2, 5), torch.zeros(2, 3))), ValueError,
         r"warm_start\[1\]: expected shape \[2, 4\], got \[2, 3\]"),
    ]  # fmt: skip
    for kwargs, error, message in cases:
        kwargs = dict(kwargs)
        mask = kwargs.pop("target_mask", None)
        with pytest.raises(error, match=message):
            sinkhorn(cost, target_mask=mask, **kwargs)
    with pytest.raises(
        ValueError, match=r"cost: expected shape \[B, M, N\] or \[M, N\], got \[5\]"
    ):
        sinkhorn(torch.rand(5))
    with pytest.raises(TypeError, match=r"cost must be a torch.Tensor, got list"):
        sinkhorn([[1.0]])


def test_nan_and_negative_inf_costs_are_rejected_when_validating():
    cost = rand(2, 5, 3, dtype=torch.float32)
    cost[1, 2, 0] = torch.nan
    with pytest.raises(ValueError, match=r"cost: expected finite values or \+inf.*got NaN or -inf"):
        sinkhorn(cost)
    cost[1, 2, 0] = -torch.inf
    with pytest.raises(ValueError, match=r"got NaN or -inf"):
        sinkhorn(cost)
    with pytest.raises(ValueError, match=r"got NaN or -inf"):
        sinkhorn(rand(2, 5, 3), background_cost=torch.full((2, 5), torch.nan))
    # validate=False skips the scan (and its device synchronisation).
    cost[1, 2, 0] = torch.nan
    quiet(cost=cost, validate=False)


# -- module -----------------------------------------------------------------------------------


def detr_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, 12, 2, generator=gen) * 0.6
    boxes = torch.cat([xy, xy + 0.1 + 0.3 * torch.rand(2, 12, 2, generator=gen)], -1)
    outputs = {"pred_logits": torch.randn(2, 12, 5, generator=gen), "pred_boxes": boxes}
    t_xy = torch.rand(3, 2, generator=gen) * 0.6
    targets = [
        {"boxes": torch.cat([t_xy, t_xy + 0.2], -1), "labels": torch.tensor([0, 3, 1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return outputs, targets


def test_matcher_module_calls_the_function():
    outputs, targets = detr_batch()
    matcher = SinkhornMatcher(tau_pred=1.0, tau_target=0.1, background_cost=0.5, tol=1e-6)
    got = matcher(outputs, targets)
    cost, mask = matcher.cost(outputs, targets)
    want = sinkhorn(
        cost, target_mask=mask, tau_pred=1.0, tau_target=0.1, background_cost=0.5, tol=1e-6
    )
    torch.testing.assert_close(got.plan, want.plan)
    assert torch.equal(got.pred_to_target, want.pred_to_target)
    assert got.plan.shape == (2, 12, 4)
    assert torch.all(got.pred_to_target[1] == -1)
    assert "tau_pred=1.0" in repr(matcher) and "background_cost=0.5" in repr(matcher)
    pred_mask = torch.ones(2, 12, dtype=torch.bool)
    pred_mask[0, :4] = False
    masked = matcher({**outputs, "pred_mask": pred_mask}, targets)
    assert masked.pred_to_target[0, :4].tolist() == [-2] * 4


def test_matcher_module_validates_at_construction():
    with pytest.raises(ValueError, match=r"tau_target: expected a number >= 0, got -1.0"):
        SinkhornMatcher(tau_target=-1.0)
    with pytest.raises(ValueError, match=r"reg: expected a number > 0"):
        SinkhornMatcher(reg=0.0)
    with pytest.raises(
        ValueError, match=r"background_cost: expected a finite number or \+inf, got nan"
    ):
        SinkhornMatcher(background_cost=math.nan)
    with pytest.raises(ValueError, match=r"cost_bbox must be >= 0"):
        SinkhornMatcher(cost_bbox=-1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plan_to_assignment_compiled_equals_torch_argmax(monkeypatch, dtype):
    # Ties (the first wins), NaN (the first NaN wins, as torch.argmax), a non-contiguous
    # plan, a single column.
    pytest.importorskip("numba")
    module = importlib.import_module("detloss.match.sinkhorn")  # the package exports the function

    gen = torch.Generator().manual_seed(5)
    plan = torch.randint(0, 3, (3, 40, 7), generator=gen).to(dtype)
    plan[0, 0] = 0.0
    plan[1, 1, 3] = torch.nan
    plan[1, 2, 0] = torch.nan
    plan[1, 3, [2, 5]] = torch.nan
    row_valid = torch.rand(3, 40, generator=gen) < 0.8
    cases = [plan, plan.transpose(0, 1).contiguous().transpose(0, 1), plan[..., :1]]
    for case in cases:
        with reference_path():
            want = plan_to_assignment(case, row_valid)
        assert module._argmax_kernel(case) is not None
        assert torch.equal(plan_to_assignment(case, row_valid), want)


def test_positional_target_mask_still_works_with_a_future_warning():
    cost = rand(2, 5, 3, dtype=torch.float32)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    with pytest.warns(FutureWarning, match=r"pass target_mask by keyword"):
        old = sinkhorn(cost, mask, tol=0, max_iter=5)
    new = sinkhorn(cost, target_mask=mask, tol=0, max_iter=5)
    assert torch.equal(old.plan, new.plan)
    with pytest.raises(TypeError, match=r"got two values for 'target_mask'"):
        sinkhorn(cost, mask, target_mask=mask)


def test_options_have_the_function_s_names_and_defaults():
    # One set of options: SinkhornOptions, sinkhorn's keywords and SinkhornMatcher's.
    keywords = {
        name: p.default
        for name, p in inspect.signature(inspect.unwrap(sinkhorn)).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        and name not in ("target_mask", "pred_mask", "warm_start")
    }
    assert SinkhornOptions().kwargs() == keywords
    matcher = SinkhornMatcher(0.5, tau_pred=1.0, max_iter=7)
    assert matcher.options == SinkhornOptions(tau_pred=1.0, max_iter=7)
    assert matcher.cost_class == 0.5 and matcher.validate is True
    assert SinkhornMatcher(validate=False).validate is False


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fused_plan_and_argmax_equal_the_reference_path(dtype):
    # On the CPU the plan and its row argmax are formed in one compiled pass over the
    # kernel: the same plan bit for bit, the same assignment.
    pytest.importorskip("numba")
    gen = torch.Generator().manual_seed(31)
    cost = torch.rand(3, 50, 7, generator=gen, dtype=F64).to(dtype)
    target_mask = torch.rand(3, 7, generator=gen) < 0.7
    pred_mask = torch.rand(3, 50, generator=gen) < 0.9
    pred_mask[2] = False
    for options in [{}, {"tau_pred": 1.0, "tau_target": 0.1, "reg": 1e-3}]:
        kwargs = dict(target_mask=target_mask, pred_mask=pred_mask, max_iter=5, tol=0, **options)
        got = sinkhorn(cost, **kwargs)
        with reference_path():
            want = sinkhorn(cost, **kwargs)
        assert torch.equal(got.plan, want.plan)
        assert torch.equal(got.pred_to_target, want.pred_to_target)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_scaled_row_argmax_equals_torch(dtype):
    # Ties (the first wins), NaN (the first NaN wins), entries flushed to zero, zero
    # scalings.
    pytest.importorskip("numba")
    from detloss._kernels import row_argmax_cpu

    gen = torch.Generator().manual_seed(7)
    kernel = torch.randint(0, 3, (2, 30, 5), generator=gen).to(dtype)
    kernel[0, 0, 1] = kernel[0, 0, 3] = torch.nan
    kernel[0, 1, 2] = torch.finfo(dtype).tiny / 4
    kernel[1, 2] = 0.0
    u = torch.rand(2, 30, generator=gen, dtype=dtype)
    u[1, :3] = 0.0
    v = torch.rand(2, 5, generator=gen, dtype=dtype)
    v[0, 4] = 0.0
    tiny = torch.finfo(dtype).tiny
    want = kernel * v[:, None, :] * u[:, :, None]
    torch.nn.functional.threshold_(want, tiny, 0.0)
    got = kernel.clone()
    column = torch.empty(2, 30, dtype=torch.int64)
    values = got.numpy()
    bits = values.view(np.int32 if dtype == torch.float32 else np.int64)
    row_argmax_cpu.scaled_row_argmax(
        values, bits, u.numpy(), v.numpy(), values.dtype.type(tiny), column.numpy()
    )
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(column, want.argmax(dim=2))
    assert column[0, 0] == 1


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_first_kernel_and_plan_are_the_same_on_any_number_of_threads(dtype):
    # exp2 of the first kernel splits over threads only at vector-aligned boundaries: the
    # parts' scalar tails would otherwise differ in the last bit from the serial exp2. The
    # plan loop on two halves of the batch gives the reference plan and argmax.
    from detloss.match.sinkhorn_solver import _exp2_

    threads = torch.get_num_threads()
    exponents = rand(3, 100, 301, seed=5, dtype=dtype).mul_(-150.0)
    # Above the size where the plan loop splits the batch over two threads.
    cost = rand(4, 700, 100, seed=6, dtype=dtype)
    try:
        torch.set_num_threads(1)
        want = torch.special.exp2(exponents)
        match_1 = sinkhorn(cost, max_iter=3, tol=0)
        torch.set_num_threads(2)
        for size in (70_001, exponents.numel()):  # a tail of one image, and three
            got = exponents.view(-1)[:size].clone()
            _exp2_(got.view(1, 1, -1))
            assert torch.equal(got, want.view(-1)[:size])
        match_2 = sinkhorn(cost, max_iter=3, tol=0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(match_1.plan, match_2.plan)
    assert torch.equal(match_1.pred_to_target, match_2.pred_to_target)
    with reference_path():
        want_match = sinkhorn(cost, max_iter=3, tol=0)
    assert torch.equal(match_2.plan, want_match.plan)
    assert torch.equal(match_2.pred_to_target, want_match.pred_to_target)
