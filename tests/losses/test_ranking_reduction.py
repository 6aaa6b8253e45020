"""``reduction`` of the three ranking losses against the published loops with per-positive
weights: "sum" is the mean's sum, "none" the per-positive values in place, and the
backward of "none" scales each positive's update by its incoming gradient. On both paths.
"""

from __future__ import annotations

import functools

import pytest
import torch
from test_ap_loss import alrp_reference, loop_reference, random_case, rank_sort_reference

from _paths import PATHS, use_path
from detloss.losses.ranking import (
    ALRPLoss,
    APLoss,
    RankSortLoss,
    alrp_loss,
    ap_loss,
    rank_sort_loss,
)


@pytest.fixture(scope="module", autouse=True, params=PATHS)
def cpu_path(request):
    yield from use_path(request.param)


def cases(seed: int, count: int = 40):
    """``(x, labels, delta)`` with at least one positive: ties, ignored elements."""
    g = torch.Generator().manual_seed(seed)
    for case in range(count):
        n = int(torch.randint(1, 30, (1,), generator=g))
        x, y = random_case(g, n, grid=case % 2 == 0)
        y[int(torch.randint(0, n, (1,), generator=g))] = 1
        yield g, x, y, (0.25, 0.5, 1.0, 2.0)[case % 4]


def test_ap_reductions_against_the_weighted_loop():
    for g, x, y, delta in cases(20):
        num_pos = int((y == 1).sum())
        mean = ap_loss(x, y, delta)
        total = ap_loss(x, y, delta, reduction="sum")
        assert total.item() == pytest.approx(mean.item() * num_pos, abs=1e-12)

        xs = x.clone().requires_grad_()
        total = ap_loss(xs, y, delta, reduction="sum")
        total.backward()
        _, ref_grad = loop_reference(x, y, delta, mean=False)
        torch.testing.assert_close(xs.grad, ref_grad, rtol=0, atol=1e-12)

        xs = x.clone().requires_grad_()
        per_positive = ap_loss(xs, y, delta, reduction="none")
        assert per_positive.shape == x.shape
        assert (per_positive[y != 1] == 0).all()
        assert per_positive.sum().item() == pytest.approx(total.item(), abs=1e-12)
        weights = torch.rand(x.shape, generator=g, dtype=torch.float64)
        per_positive.backward(weights)
        _, ref_grad = loop_reference(x, y, delta, weights=weights, mean=False)
        torch.testing.assert_close(xs.grad, ref_grad, rtol=0, atol=1e-12)


def test_alrp_reductions_against_the_weighted_loop():
    for g, x, y, delta in cases(21):
        reg = torch.rand(int((y == 1).sum()), generator=g, dtype=torch.float64)
        xs, regs = x.clone().requires_grad_(), reg.clone().requires_grad_()
        cls, loc = alrp_loss(xs, y, regs, delta, reduction="sum")
        (cls + loc).backward()
        ref = alrp_reference(x, y, reg, delta, mean=False)
        assert cls.item() == pytest.approx(ref[0].item(), abs=1e-12)
        torch.testing.assert_close(xs.grad, ref[2], rtol=0, atol=1e-12)
        if x.unique().numel() == x.numel():  # the localisation order of ties is arbitrary
            assert loc.item() == pytest.approx(ref[1].item(), abs=1e-12)
            torch.testing.assert_close(regs.grad, ref[3], rtol=0, atol=1e-12)

        xs, regs = x.clone().requires_grad_(), reg.clone().requires_grad_()
        cls_none, loc_none = alrp_loss(xs, y, regs, delta, reduction="none")
        assert cls_none.shape == loc_none.shape == x.shape
        assert cls_none.sum().item() == pytest.approx(cls.item(), abs=1e-12)
        assert loc_none.sum().item() == pytest.approx(loc.item(), abs=1e-12)
        weights = [torch.rand(x.shape, generator=g, dtype=torch.float64) for _ in range(2)]
        torch.autograd.backward((cls_none, loc_none), weights)
        ref = alrp_reference(x, y, reg, delta, weights=weights, mean=False)
        torch.testing.assert_close(xs.grad, ref[2], rtol=0, atol=1e-12)
        if x.unique().numel() == x.numel():
            torch.testing.assert_close(regs.grad, ref[3], rtol=0, atol=1e-12)


def test_rank_sort_reductions_against_the_weighted_loop():
    for g, x, y, delta in cases(22):
        quality = torch.rand(x.shape, generator=g, dtype=torch.float64).clamp(min=0.05)
        t = torch.where(y == 1, quality, y.double())
        xs = x.clone().requires_grad_()
        ranking, sorting = rank_sort_loss(xs, t, delta, reduction="sum")
        (ranking + sorting).backward()
        ref = rank_sort_reference(x, t, delta, mean=False)
        assert ranking.item() == pytest.approx(ref[0].item(), abs=1e-12)
        assert sorting.item() == pytest.approx(ref[1].item(), abs=1e-12)
        torch.testing.assert_close(xs.grad, ref[2], rtol=0, atol=1e-12)

        xs = x.clone().requires_grad_()
        ranking_none, sorting_none = rank_sort_loss(xs, t, delta, reduction="none")
        assert ranking_none.sum().item() == pytest.approx(ranking.item(), abs=1e-12)
        assert sorting_none.sum().item() == pytest.approx(sorting.item(), abs=1e-12)
        weights = [torch.rand(x.shape, generator=g, dtype=torch.float64) for _ in range(2)]
        torch.autograd.backward((ranking_none, sorting_none), weights)
        ref = rank_sort_reference(x, t, delta, weights=weights, mean=False)
        torch.testing.assert_close(xs.grad, ref[2], rtol=0, atol=1e-12)


def test_none_with_unit_weights_is_sum_and_float32_keeps_its_dtype():
    g = torch.Generator().manual_seed(23)
    x = torch.randn(3, 40, generator=g)
    y = torch.randint(-1, 2, (3, 40), generator=g)
    y[0, 0] = 1
    grads = []
    for reduction in ("none", "sum"):
        xs = x.clone().requires_grad_()
        out = ap_loss(xs, y, reduction=reduction)
        assert out.dtype == torch.float32
        out.sum().backward()
        grads.append(xs.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-7)


def test_no_positive_and_empty_input_under_every_reduction():
    x, y = torch.tensor([0.3, -1.0]), torch.tensor([0, -1])
    for reduction in ("mean", "sum", "none"):
        xs = x.clone().requires_grad_()
        out = ap_loss(xs, y, reduction=reduction)
        out.sum().backward()
        assert torch.equal(out, torch.zeros(() if reduction != "none" else 2))
        assert torch.equal(xs.grad, torch.zeros(2))
        cls, loc = alrp_loss(x, y, torch.zeros(0), reduction=reduction)
        assert cls.abs().sum().item() == loc.abs().sum().item() == 0.0
        ranking, sorting = rank_sort_loss(x, y.double(), reduction=reduction)
        assert ranking.abs().sum().item() == sorting.abs().sum().item() == 0.0
        empty = ap_loss(torch.zeros(0), torch.zeros(0), reduction=reduction)
        assert empty.shape == (() if reduction != "none" else (0,))


def test_alrp_localisation_gradcheck_under_every_reduction():
    """The localisation's backward is its derivative in the regression losses."""
    g = torch.Generator().manual_seed(24)
    x = torch.randn(30, generator=g, dtype=torch.float64)
    y = torch.randint(-1, 2, (30,), generator=g)
    y[0] = 1
    reg = torch.rand(int((y == 1).sum()), generator=g, dtype=torch.float64, requires_grad=True)
    for reduction in ("mean", "sum", "none"):
        localisation = functools.partial(
            lambda r, how: alrp_loss(x, y, r, reduction=how)[1], how=reduction
        )
        assert torch.autograd.gradcheck(localisation, (reg,))


def test_modules_store_the_options_and_pass_them_on():
    g = torch.Generator().manual_seed(25)
    x = torch.randn(20, generator=g, dtype=torch.float64)
    y = torch.randint(-1, 2, (20,), generator=g)
    y[0] = 1
    t = torch.where(y == 1, 0.6, y.double())
    reg = torch.rand(int((y == 1).sum()), generator=g, dtype=torch.float64)
    ap = APLoss(delta=0.5, reduction="sum", validate=False)
    assert repr(ap) == "APLoss(delta=0.5, distributed=True, reduction='sum', validate=False)"
    assert torch.equal(ap(x, y), ap_loss(x, y, 0.5, reduction="sum"))
    alrp = ALRPLoss(delta=0.5, loc_weight=2.0, reduction="none")
    cls, loc = alrp_loss(x, y, reg, 0.5, reduction="none")
    assert torch.equal(alrp(x, y, reg), cls + 2.0 * loc)
    rs = RankSortLoss(delta=0.25, reduction="sum")
    assert torch.equal(rs(x, t), sum(rank_sort_loss(x, t, 0.25, reduction="sum")))
    for build in (APLoss, ALRPLoss, RankSortLoss):
        with pytest.raises(ValueError, match="reduction"):
            build(reduction="average")
    with pytest.raises(ValueError, match="reduction"):
        ap_loss(x, y, reduction="average")
    with pytest.raises(ValueError, match="reduction"):
        rank_sort_loss(x, t, reduction="batch")
