import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detloss.match.closest import closest_prediction, closest_target
from detloss.match.hungarian import hungarian
from detloss.match.matching import Matching
from detloss.match.sinkhorn import sinkhorn
from detloss.match.softmin import combine, softmin

F64 = torch.float64


def rand(*shape, seed=0, dtype=F64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def softmin_reference(cost, reg, source, background, target_mask, pred_mask):
    """Loops in float64: each prediction's softmax over its real targets and the
    background, or each real target's softmax over the real predictions plus the
    background column's softmax weighted by max(m - n, 0)."""
    b, m, n = cost.shape
    plan = torch.zeros(b, m, n + 1, dtype=F64)
    for i in range(b):
        preds = [p for p in range(m) if pred_mask[i, p]]
        targets = [t for t in range(n) if target_mask[i, t]]
        if source == "prediction":
            for p in preds:
                logits = [-float(cost[i, p, t]) / reg for t in targets]
                logits.append(-float(background[i, p]) / reg)
                weights = torch.tensor(logits, dtype=F64).softmax(0)
                for k, t in enumerate(targets):
                    plan[i, p, t] = weights[k]
                plan[i, p, n] = weights[-1]
        else:
            if not preds:
                continue
            for t in targets:
                logits = torch.tensor([-float(cost[i, p, t]) / reg for p in preds], dtype=F64)
                plan[i, preds, t] = logits.softmax(0)
            logits = torch.tensor([-float(background[i, p]) / reg for p in preds], dtype=F64)
            plan[i, preds, n] = logits.softmax(0) * max(len(preds) - len(targets), 0)
    return plan


@pytest.mark.parametrize("source", ["prediction", "target"])
def test_matches_a_looped_reference_with_masks(source):
    cost = rand(3, 7, 4, seed=1) * 2 - 0.5
    background = rand(3, 7, seed=2)
    target_mask = torch.tensor([[True, False, True, True], [False] * 4, [False, True, False, True]])
    pred_mask = torch.ones(3, 7, dtype=torch.bool)
    pred_mask[2, [0, 3]] = False
    m = softmin(cost, 0.3, source, background, target_mask=target_mask, pred_mask=pred_mask)
    ref = softmin_reference(cost, 0.3, source, background, target_mask, pred_mask)
    torch.testing.assert_close(m.plan, ref)
    assert m.pred_to_target[2, [0, 3]].tolist() == [-2, -2]
    expected = ref.argmax(2)
    expected = torch.where(expected == 4, -1, expected).masked_fill(~pred_mask, -2)
    assert torch.equal(m.pred_to_target, expected)


def test_marginals_of_each_source():
    cost = rand(2, 9, 3, seed=3)
    rows = softmin(cost, source="prediction").plan
    torch.testing.assert_close(rows.sum(2), torch.ones(2, 9, dtype=F64))
    cols = softmin(cost, source="target").plan
    torch.testing.assert_close(cols[..., :3].sum(1), torch.ones(2, 3, dtype=F64))
    torch.testing.assert_close(cols[..., 3].sum(1), torch.full((2,), 6.0, dtype=F64))


def test_small_reg_limits_are_the_closest_matchings():
    cost = rand(2, 12, 4, seed=4)
    background = torch.full((2, 12), 0.3, dtype=F64)
    near = softmin(cost, 1e-6, "prediction", background)
    ref = closest_target(cost, background)
    torch.testing.assert_close(near.plan, ref.plan, atol=1e-9, rtol=0)
    assert torch.equal(near.pred_to_target, ref.pred_to_target)
    far = softmin(cost, 1e-6, "target")
    torch.testing.assert_close(
        far.plan[..., :4], closest_prediction(cost, math.inf).plan[..., :4], atol=1e-9, rtol=0
    )


def test_softmin_is_one_sided_sinkhorn():
    # A softmin over targets is unbalanced OT with free targets (tau_target = 0), whatever
    # the normalisation of the cost.
    cost = rand(2, 10, 3, seed=5)
    soft = softmin(cost, 0.05, "prediction", 0.5)
    ot = sinkhorn(cost, reg=0.05, tau_target=0.0, background_cost=0.5, normalize=False)
    torch.testing.assert_close(soft.plan, ot.plan)


def test_half_and_integer_costs():
    cost = rand(1, 5, 2, seed=6, dtype=torch.float32)
    half = softmin(cost.half(), 0.5)
    assert half.plan.dtype == torch.float16
    torch.testing.assert_close(half.plan.float(), softmin(cost.half().float(), 0.5).plan,
                               atol=1e-3, rtol=1e-3)  # fmt: skip
    ints = softmin(torch.tensor([[0, 4], [4, 0]]), 1.0, background_cost=9)
    assert ints.plan.dtype == torch.float32 and ints.pred_to_target.tolist() == [[0, 1]]


def test_empty_and_unbatched():
    assert softmin(torch.zeros(3, 0)).plan.tolist() == [[[1.0], [1.0], [1.0]]]
    assert softmin(torch.zeros(1, 0, 2), source="target").plan.shape == (1, 0, 3)
    none = softmin(torch.zeros(1, 2, 2), source="target", pred_mask=torch.zeros(1, 2).bool())
    assert torch.all(none.plan == 0) and none.pred_to_target.tolist() == [[-2, -2]]


def test_softmin_errors():
    cost = torch.rand(2, 4, 3)
    with pytest.raises(ValueError, match=r"reg: expected a finite number > 0, got 0.0"):
        softmin(cost, 0.0)
    with pytest.raises(ValueError, match=r"reg: expected a finite number > 0, got -1"):
        softmin(cost, -1)
    with pytest.raises(TypeError, match=r"reg must be a float, got str"):
        softmin(cost, "1")
    with pytest.raises(ValueError, match=r"source must be one of 'prediction', 'target', got 'x'"):
        softmin(cost, source="x")
    with pytest.raises(ValueError, match=r"background_cost: expected a float or a tensor"):
        softmin(cost, background_cost=torch.zeros(3))
    with pytest.raises(ValueError, match=r"target_mask: expected shape \[2, 3\]"):
        softmin(cost, target_mask=torch.ones(2, 2, dtype=torch.bool))


# -- combine ---------------------------------------------------------------------------------


def test_combine_is_the_normalised_convex_combination():
    cost = rand(2, 8, 3, seed=7)
    a = sinkhorn(cost, tol=1e-8, max_iter=2000)
    b = softmin(cost, 0.2)
    mixed = combine([a, b], [1.0, 3.0])
    torch.testing.assert_close(mixed.plan, 0.25 * a.plan + 0.75 * b.plan)
    torch.testing.assert_close(combine([a, b], [0.25, 0.75]).plan, mixed.plan)
    torch.testing.assert_close(combine([a, b]).plan, 0.5 * (a.plan + b.plan))
    torch.testing.assert_close(combine([a]).plan, a.plan)
    torch.testing.assert_close(combine([a, b], [0, 2]).plan, b.plan)
    expected = mixed.plan.argmax(2)
    assert torch.equal(mixed.pred_to_target, torch.where(expected == 3, -1, expected))
    torch.testing.assert_close(combine([a, b], torch.tensor([1.0, 3.0])).plan, mixed.plan)


def test_combine_with_a_hard_matching():
    cost = rand(1, 5, 2, seed=8)
    pred_mask = torch.tensor([[True, True, True, True, False]])
    hard = hungarian(cost, pred_mask=pred_mask)
    soft = softmin(cost, 0.1, pred_mask=pred_mask)
    mixed = combine([hard, soft], [1, 1])
    torch.testing.assert_close(mixed.plan, 0.5 * (hard.hard_plan(F64) + soft.plan))
    assert mixed.plan.dtype == F64
    assert mixed.pred_to_target[0, 4] == -2  # padded in both: ignored
    # Rows sum to 1 (every real prediction is matched or background in both).
    torch.testing.assert_close(mixed.plan[0, :4].sum(1), torch.ones(4, dtype=F64))
    both_hard = combine([hard, hard])
    assert both_hard.plan.dtype == torch.float32
    assert torch.equal(both_hard.pred_to_target, hard.pred_to_target)


@given(weights=st.lists(st.floats(0, 10), min_size=3, max_size=3), seed=st.integers(0, 999))
def test_property_combined_plans_stay_valid(weights, seed):
    if sum(weights) <= 0:
        with pytest.raises(ValueError, match="positive sum"):
            combine([Matching(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 1).bool())] * 3,
                    weights)  # fmt: skip
        return
    cost = rand(2, 6, 3, seed=seed)
    parts = [softmin(cost, 0.3), softmin(cost, 0.3, "target"), hungarian(cost)]
    mixed = combine(parts, weights)
    total = sum(weights)
    expected = sum(w / total * p.dense_plan(F64) for w, p in zip(weights, parts))
    torch.testing.assert_close(mixed.plan, expected)
    assert torch.all(mixed.plan >= 0) and torch.isfinite(mixed.plan).all()


def test_combine_errors():
    cost = torch.rand(2, 4, 3)
    a = softmin(cost)
    other = softmin(torch.rand(2, 5, 3))
    cases = [
        (lambda: combine([]), ValueError, r"matchings: expected at least one Matching"),
        (lambda: combine(a), TypeError, r"matchings must be a sequence of Matching"),
        (lambda: combine([a, "x"]), TypeError, r"matchings\[1\] must be a Matching, got str"),
        (lambda: combine([a, other]), ValueError,
         r"matchings\[1\]: expected \[B, M\] = \[2, 4\] and \[B, N\] = \[2, 3\] like "
         r"matchings\[0\], got \[2, 5\] and \[2, 3\]"),
        (lambda: combine([a, a], [1.0]), ValueError,
         r"weights: expected 2 values \(one per matching\), got 1"),
        (lambda: combine([a, a], [1.0, -0.5]), ValueError,
         r"weights: expected finite values >= 0, got \[1.0, -0.5\]"),
        (lambda: combine([a, a], [1.0, math.nan]), ValueError, r"expected finite values >= 0"),
        (lambda: combine([a, a], [0, 0]), ValueError, r"weights: expected a positive sum"),
        (lambda: combine([a, a], "ab"), TypeError, r"weights must be a sequence of floats"),
        (lambda: combine([a, a], [1, "2"]), TypeError, r"weights must be numbers, got str"),
        (lambda: combine([a, a], torch.ones(2, 1)), ValueError,
         r"weights: expected shape \[2\], got \[2, 1\]"),
    ]  # fmt: skip
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


@pytest.mark.parametrize("source", ["prediction", "target"])
def test_a_slot_with_only_forbidden_pairs_gets_no_mass(source):
    inf = math.inf
    # Target 2 can only go to the prediction at +inf cost; prediction 1 reaches nothing but
    # the background, which is forbidden too.
    cost = torch.tensor([[[940.0, 415.75, inf], [inf, inf, inf]]])
    background = torch.tensor([[1.0, inf]])
    plan = softmin(cost, 1e-6, source, background).plan
    assert torch.isfinite(plan).all()
    if source == "target":
        assert plan[0, :, 2].tolist() == [0.0, 0.0]
        assert plan[0, 0, :2].tolist() == [1.0, 1.0]
    else:
        assert plan[0, 1].tolist() == [0.0] * 4
        assert plan[0, 0].tolist() == [0.0, 0.0, 0.0, 1.0]  # the background is cheapest
