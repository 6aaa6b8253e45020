"""The compiled CPU loops of the ranking losses against NumPy's searches and sorts, each
fused loss against the torch reference (which the published loops check in
test_ap_loss), with and without per-positive weights, and the Numba helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detloss.losses.ranking.alrp import ALRP_EPS, _alrp_terms
from detloss.losses.ranking.ap import _ap_terms
from detloss.losses.ranking.rank_sort import RS_EPS, _rank_sort_terms, _sorting_terms

numba = pytest.importorskip("numba")

from detloss._kernels import ranking_cpu as kernel  # noqa: E402
from detloss._kernels import reference_path  # noqa: E402
from detloss._kernels._numba import jit  # noqa: E402  (needs numba)


def random_bounds(rng: np.random.Generator, case: int) -> np.ndarray:
    size = int(rng.integers(1, 300))
    bounds = rng.normal(size=size)
    if case % 3 == 0:
        bounds = np.round(bounds, 1)  # equal ends: cells crowded with ends
    if case % 5 == 0:
        bounds[: size // 2] = bounds[0] + rng.uniform(0, 1e-9, size // 2)
    return np.sort(bounds)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bin_negatives_equals_searchsorted_and_bincount(dtype):
    """Values on the ends, just below them, beyond both extremes and infinite; ends in
    crowded cells; integer and bool roles."""
    rng = np.random.default_rng(0)
    for case in range(80):
        bounds = random_bounds(rng, case)
        values = rng.normal(size=1500) * 1.5
        values[:50] = rng.choice(bounds, 50)
        values[50:60] = np.nextafter(rng.choice(bounds, 10), -np.inf)
        values[60:64] = (np.inf, -np.inf, 1e30, -1e30)
        values = values.astype(dtype)
        if case % 2:
            roles, negative = rng.integers(-1, 2, values.size), 0.0
            is_negative = roles == 0
        else:
            roles, negative = rng.random(values.size) < 0.7, True
            is_negative = roles
        gap, counts, sums = kernel.bin_negatives(values, roles, negative, bounds)

        expected = np.searchsorted(bounds, values.astype(np.float64), "right")
        np.testing.assert_array_equal(gap, np.where(is_negative, expected, -1), str(case))
        assert gap.dtype == np.int32
        np.testing.assert_array_equal(
            counts, np.bincount(expected[is_negative], minlength=bounds.size + 1)
        )
        finite = is_negative & np.isfinite(values)
        expected_sums = np.bincount(
            expected[finite], values[finite].astype(np.float64), minlength=bounds.size + 1
        )
        infinite_gaps = np.unique(expected[is_negative & ~np.isfinite(values)])
        keep = np.setdiff1d(np.arange(bounds.size + 1), infinite_gaps)
        np.testing.assert_allclose(sums[keep], expected_sums[keep], rtol=1e-12, atol=1e-9)


def test_bin_negatives_without_a_usable_grid():
    """One end, or ends so close that the grid's scale overflows: plain bisection."""
    for bounds in (np.array([0.5]), np.array([0.0, 1e-320, 2e-320]), np.array([2.0, 2.0, 2.0])):
        values = np.array([-1.0, 0.0, 1e-320, 0.5, 2.0, 5.0, np.inf, -np.inf])
        gap, counts, _ = kernel.bin_negatives(values, np.zeros(values.size), 0.0, bounds)
        np.testing.assert_array_equal(gap, np.searchsorted(bounds, values, "right"))
        assert counts.sum() == values.size


def test_bin_negatives_puts_nan_below_every_end():
    gap, counts, _ = kernel.bin_negatives(
        np.array([np.nan, 1.0]), np.zeros(2), 0.0, np.array([0.0, 2.0])
    )
    np.testing.assert_array_equal(gap, [0, 1])
    np.testing.assert_array_equal(counts, [1, 1, 0])


def test_spread_into():
    values = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    out = np.full(4, 7.0, dtype=np.float32)
    gap = np.array([0, -1, 2, 1], dtype=np.int32)
    kernel.spread_into(out, values, gap, np.array([1.0, 10.0, 100.0]), np.array([0.5, 0, -1]))
    np.testing.assert_array_equal(out, [1.5, 0.0, 299.0, 40.0])


def test_count_at_most_and_merge_equal_numpy():
    rng = np.random.default_rng(1)
    for case in range(100):
        values = np.sort(np.round(rng.normal(size=int(rng.integers(0, 60))), case % 3))
        queries = np.sort(np.round(rng.normal(size=int(rng.integers(0, 60))), case % 2))
        for strict, side in ((False, "right"), (True, "left")):
            np.testing.assert_array_equal(
                kernel._count_at_most(values, queries, strict),
                np.searchsorted(values, queries, side),
            )
        np.testing.assert_array_equal(
            kernel._merge(values, queries), np.sort(np.concatenate((values, queries)))
        )


def ranking_problems(seed: int, dtype: torch.dtype):
    """60 random problems ``(case, scores, labels, delta)``: ties, a single positive, no
    negative, no positive and ignored elements."""
    g = torch.Generator().manual_seed(seed)
    for case in range(60):
        n = int(torch.randint(1, 400, (), generator=g))
        x = torch.randn(n, generator=g, dtype=torch.float64) * 2
        if case % 4 == 0:
            x = x.round()
        labels = torch.randint(-1, 2, (n,), generator=g)
        if case % 7 == 0:
            labels[labels == 1] = 0
            labels[int(torch.randint(0, n, (), generator=g))] = 1
        if case % 11 == 0:
            labels[labels == 0] = -1
        if case % 13 == 0:
            labels[labels == 1] = 0
        yield case, x.to(dtype), labels, (0.25, 1.0, 3.0)[case % 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_ap_loss_equals_the_torch_path(dtype):
    """The same loss and update as the static-shape torch path."""
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for case, x, labels, delta in ranking_problems(2, dtype):
        errors, where, update = kernel.ap_loss(x.numpy(), labels.numpy(), delta, np.empty(0), True)
        ref_loss, ref_update = _ap_terms(x, labels, delta, compact=False)
        assert update.dtype == x.numpy().dtype
        assert errors.sum() / max(where.size, 1) == pytest.approx(ref_loss.item(), abs=tol), case
        np.testing.assert_allclose(update, ref_update.numpy(), rtol=0, atol=tol, err_msg=str(case))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_alrp_loss_equals_the_torch_path(dtype):
    """As for AP-Loss, with localisation losses; tied scores order the positives by
    element index in both paths."""
    g = torch.Generator().manual_seed(5)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for case, x, labels, delta in ranking_problems(3, dtype):
        reg = torch.rand(int((labels == 1).sum()), generator=g, dtype=torch.float64)
        num_pos, cls, loc, _, update, grad = kernel.alrp_loss(
            x.numpy(), labels.numpy(), reg.numpy(), delta, ALRP_EPS, np.empty(0), np.empty(0), True
        )
        ref = _alrp_terms(x, labels, reg, delta, compact=False)
        assert num_pos == reg.numel() and update.dtype == x.numpy().dtype
        norm = max(num_pos, 1)
        assert cls.sum() / norm == pytest.approx(ref[0].item(), abs=tol), case
        assert loc.sum() / norm == pytest.approx(ref[1].item(), abs=1e-12), case
        np.testing.assert_allclose(update, ref[2].numpy(), rtol=0, atol=tol, err_msg=str(case))
        np.testing.assert_allclose(grad, ref[3].numpy(), rtol=0, atol=1e-12, err_msg=str(case))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_rank_sort_equals_the_torch_path(dtype):
    """Ranking and sorting errors and both updates, against the torch reference (sorted
    negatives, dense comparison of the positives)."""
    g = torch.Generator().manual_seed(6)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for case, x, labels, delta in ranking_problems(4, dtype):
        quality = torch.rand(x.shape, generator=g, dtype=torch.float64).clamp(min=0.05)
        if case % 3 == 0:
            quality = (quality * 4).ceil() / 4  # tied targets
        t = torch.where(labels == 1, quality, labels.double())
        empty = np.empty(0)
        ranking, sorting, where, rank_update, sort_update = kernel.rank_sort_loss(
            x.numpy(), t.numpy(), delta, RS_EPS, empty, empty, True
        )
        with reference_path():
            ref = _rank_sort_terms(x, t, delta)
        norm = max(where.size, 1)
        assert rank_update.dtype == sort_update.dtype == x.numpy().dtype
        assert ranking.sum() / norm == pytest.approx(ref[0].item(), abs=tol), case
        assert sorting.sum() / norm == pytest.approx(ref[1].item(), abs=tol), case
        for got, want in ((rank_update, ref[2]), (sort_update, ref[3])):
            np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=tol, err_msg=str(case))


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_fused_losses_with_weights_equal_the_torch_path(reduction):
    """Per-positive weights (the incoming gradients of reduction="none") and the
    undivided "sum" through the three fused losses and the torch reference."""
    g = torch.Generator().manual_seed(7)
    for case, x, labels, delta in ranking_problems(5, torch.float64):
        w = None
        if reduction == "none":
            w = [torch.rand(x.shape, generator=g, dtype=torch.float64) for _ in range(2)]
        reg = torch.rand(int((labels == 1).sum()), generator=g, dtype=torch.float64)
        t = torch.where(labels == 1, 0.5 + 0.5 * torch.rand(x.shape, generator=g), labels)
        t = t.double()
        ap = w[0] if w else None
        got = (
            _ap_terms(x, labels, delta, reduction, ap),
            _alrp_terms(x, labels, reg, delta, reduction, w),
            _rank_sort_terms(x, t, delta, reduction, w),
        )
        with reference_path():
            want = (
                _ap_terms(x, labels, delta, reduction, ap),
                _alrp_terms(x, labels, reg, delta, reduction, w),
                _rank_sort_terms(x, t, delta, reduction, w),
            )
        for loss, (a, b) in enumerate(zip(got, want)):
            for k, (u, v) in enumerate(zip(a, b)):
                torch.testing.assert_close(u, v, rtol=0, atol=1e-12, msg=f"{case} {loss} {k}")


def test_alrp_with_a_wrong_number_of_losses_takes_the_torch_path():
    x, labels = torch.tensor([0.5, -0.2, 1.0, 0.1]), torch.tensor([1, 0, 1, 0])
    empty = np.empty(0)
    args = (1.0, ALRP_EPS, empty, empty, True)
    assert kernel.alrp_loss(x.numpy(), labels.numpy(), np.zeros(1), *args)[0] == 2
    short = torch.tensor([0.3])
    got = _alrp_terms(x, labels, short, 1.0)
    want = _alrp_terms(x, labels, short, 1.0, compact=False)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_jit_compiles_without_a_cache_location():
    """A function with no source file has nowhere to cache: Numba refuses cache=True at
    definition time, and the helper compiles it uncached instead."""
    namespace: dict = {}
    exec("def add_one(x):\n    return x + 1\n", namespace)
    with pytest.raises(RuntimeError, match="cannot cache"):
        numba.njit(cache=True)(namespace["add_one"])
    assert jit(namespace["add_one"])(41) == 42


def test_sorting_terms_equal_the_dense_pairwise_comparison():
    """Rank & Sort's sorting terms by Fenwick trees against every pair compared: ties in
    scores and in targets, scores exactly delta apart, one positive, one target."""
    g = torch.Generator().manual_seed(4)
    for case in range(80):
        p = int(torch.randint(1, 120, (), generator=g))
        x = torch.randn(p, generator=g, dtype=torch.float64)
        if case % 3 == 0:
            x = (x * 4).round() / 4  # ties, and pairs exactly delta = 0.25 or 0.5 apart
        x = x.sort().values
        t = torch.rand(p, generator=g, dtype=torch.float64).clamp(min=0.05)
        if case % 4 == 0:
            t = (t * 4).ceil() / 4  # tied targets
        if case % 10 == 0:
            t.fill_(0.7)
        delta = (0.25, 0.5, 2.0)[case % 3]
        lo = torch.searchsorted(x, x - delta, right=True)
        hi = torch.searchsorted(x, x + delta)
        current = torch.rand(p, generator=g, dtype=torch.float64)
        weight = torch.rand(p, generator=g, dtype=torch.float64) if case % 2 else torch.ones(p)
        arrays = (x, t, lo, hi, current)
        got = kernel.sorting_terms(*(a.numpy() for a in arrays), delta, RS_EPS, weight.numpy())
        want = _sorting_terms(x, t, current, delta, weight.double())
        for name, a, b in zip(("error", "own", "received"), got, want):
            np.testing.assert_allclose(a, b.numpy(), rtol=0, atol=1e-12, err_msg=f"{case} {name}")
