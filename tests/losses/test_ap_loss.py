"""AP-Loss: hand-worked numbers, the published per-positive loop, VOC AP, properties,
dtypes, errors, and the two-process contract; then aLRP Loss and Rank & Sort Loss against
their published loops."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st

from _distributed import run_distributed
from _paths import PATHS, use_path
from detloss.losses.ranking import (
    ALRPLoss,
    APLoss,
    RankSortLoss,
    alrp_loss,
    ap_loss,
    rank_sort_loss,
)
from detloss.losses.ranking._engine import _sorted_subset
from detloss.losses.ranking.alrp import _alrp_terms
from detloss.losses.ranking.ap import _ap_terms


def _ap_loss_and_grad(x, labels, delta, compact=None):
    """``(loss, update)`` of flat scores; ``compact=False``: the static-shape torch path."""
    return _ap_terms(x, labels, delta, compact=compact)


def _alrp_loss_and_grads(x, labels, reg, delta, compact=None):
    return _alrp_terms(x, labels, reg, delta, compact=compact)


# Every test runs with the compiled CPU loops and with the torch reference.
@pytest.fixture(scope="module", autouse=True, params=PATHS)
def cpu_path(request):
    yield from use_path(request.param)


# ---------------------------------------------------------------- references


def loop_reference(
    logits: torch.Tensor, labels: torch.Tensor, delta: float = 1.0, weights=None, mean=True
):
    """The published algorithm, step by step, in float64: ``(loss, update)``.

    One positive at a time in ascending order of score: soft counts of the positives and
    of the participating negatives at or above it, its precision, the running maximum
    (interpolated precision) and the negatives' share of its error, rescaled when the
    precision is below the running maximum. ``weights`` (per element) scale each
    positive's update; ``mean=False`` leaves out the division by P.
    """
    x = logits.detach().double().reshape(-1)
    y = labels.reshape(-1)
    update = torch.zeros_like(x)
    if not bool((y == 1).any()):
        return torch.zeros((), dtype=torch.float64), update
    is_pos = y == 1
    fg = x[is_pos]
    is_neg = (y == 0) & (x >= fg.min() - delta)
    bg = x[is_neg]
    c = torch.ones_like(fg) if weights is None else weights.double().reshape(-1)[is_pos]
    bg_update = torch.zeros_like(bg)
    prec = torch.zeros_like(fg)
    max_prec = 0.0
    for i in torch.argsort(fg).tolist():
        pos_step = torch.clamp((fg - fg[i]) / (2 * delta) + 0.5, 0, 1)
        neg_step = torch.clamp((bg - fg[i]) / (2 * delta) + 0.5, 0, 1)
        a = float(pos_step.sum()) + 0.5
        b = float(neg_step.sum())
        neg_step = neg_step / (a + b)
        current = a / (a + b)
        if max_prec <= current:
            max_prec = current
        else:
            neg_step = neg_step * ((1 - max_prec) / (1 - current))
        bg_update += neg_step * c[i]
        prec[i] = max_prec
    update[is_neg] = bg_update
    update[is_pos] = -(1 - prec) * c
    if mean:
        update /= fg.numel()
    return 1 - prec.sum() / fg.numel(), update.view(labels.shape)


def voc_ap(scores: list[float], is_positive: list[bool]) -> float:
    """All-point interpolated AP (PASCAL VOC 2010+), from scratch."""
    ranked = sorted(zip(scores, is_positive), key=lambda t: -t[0])
    num_pos = sum(is_positive)
    tp = fp = 0
    recall, precision = [0.0], [0.0]
    for _, positive in ranked:
        tp += positive
        fp += not positive
        recall.append(tp / num_pos)
        precision.append(tp / (tp + fp))
    recall.append(1.0)
    precision.append(0.0)
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    return sum(
        (recall[i + 1] - recall[i]) * precision[i + 1]
        for i in range(len(recall) - 1)
        if recall[i + 1] != recall[i]
    )


def run_ap(logits, labels, delta=1.0, **kwargs):
    """``(loss, gradient)`` through autograd."""
    x = torch.as_tensor(logits).clone().requires_grad_()
    y = torch.as_tensor(labels)
    loss = ap_loss(x, y, delta, **kwargs)
    loss.backward()
    return loss.detach(), x.grad


def random_case(g: torch.Generator, n: int, grid: bool):
    """Logits on a quarter grid (ties, and pairs exactly delta apart) or continuous."""
    if grid:
        x = torch.randint(-8, 9, (n,), generator=g).double() / 4
    else:
        x = torch.randn(n, generator=g, dtype=torch.float64) * 2
    return x, torch.randint(-1, 2, (n,), generator=g)


# ---------------------------------------------------------------- hand-worked numbers


def test_reference_numbers():
    loss, grad = run_ap([0.0, -0.5], [1, 0])
    assert loss.item() == pytest.approx(0.2, abs=1e-7)
    assert grad.tolist() == pytest.approx([-0.2, 0.2], abs=1e-7)


@pytest.mark.parametrize("margin", [1.0, 1.5, 3.0])
def test_margin_of_delta_gives_zero(margin):
    loss, grad = run_ap([0.0, -margin, 0.3], [1, 0, 1])
    assert loss.item() == 0.0
    assert grad.abs().max().item() == 0.0


def test_tie_and_boundaries():
    # A negative tied with the positive counts 1/2 (H(0) = 1/2): precision 1 / 1.5.
    loss, grad = run_ap([0.0, 0.0], [1, 0])
    assert loss.item() == pytest.approx(1 / 3)
    assert grad.tolist() == pytest.approx([-1 / 3, 1 / 3])
    # Exactly delta above counts 1, exactly delta below counts 0.
    loss, _ = run_ap([0.0, 1.0], [1, 0])
    assert loss.item() == pytest.approx(0.5)
    loss, grad = run_ap([0.0, -1.0], [1, 0])
    assert loss.item() == 0.0 and grad.abs().max().item() == 0.0
    # Tied positives rank themselves at 1 and each other at 1/2; the tied negative counts
    # 1/2: precision 1.5 / 2 for both, and each sends 0.5 / 2 to the negative.
    loss, grad = run_ap([0.0, 0.0, 0.0], [1, 1, 0], delta=0.5)
    assert loss.item() == pytest.approx(0.25)
    assert grad.tolist() == pytest.approx([-0.125, -0.125, 0.25])


def test_interpolation_rescales_negative_updates():
    # Positives at 0 and 2, a negative at 3 (delta 1). Ascending: the positive at 0 has
    # precision 2 / 3, the one at 2 only 1 / 2, interpolated up to 2 / 3, so its share to
    # the negative, 1 / 2, is rescaled by (1 - 2/3) / (1 - 1/2).
    loss, grad = run_ap([0.0, 2.0, 3.0], [1, 1, 0])
    assert loss.item() == pytest.approx(1 / 3)
    assert grad.tolist() == pytest.approx([-1 / 6, -1 / 6, 1 / 3])


def test_no_positive_gives_zero_and_zero_gradient():
    for labels in ([0, 0, -1], [-1, -1, -1]):
        loss, grad = run_ap([0.3, -2.0, 5.0], labels)
        assert loss.item() == 0.0
        assert torch.equal(grad, torch.zeros(3))
    x = torch.zeros(0, requires_grad=True)
    loss = ap_loss(x, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and x.grad.shape == (0,)


def test_ignored_elements_get_nothing_and_change_nothing():
    x = torch.tensor([0.2, -0.1, 0.4, 1.0, -0.3], dtype=torch.float64)
    y = torch.tensor([1, 0, -1, 0, 1])
    loss, grad = run_ap(x, y)
    assert grad[2].item() == 0.0
    keep = y != -1
    loss_kept, grad_kept = run_ap(x[keep], y[keep])
    assert loss.item() == pytest.approx(loss_kept.item(), abs=1e-15)
    assert torch.allclose(grad[keep], grad_kept, rtol=0, atol=1e-15)


# ---------------------------------------------------------------- against the published loop


def test_matches_loop_on_random_cases():
    g = torch.Generator().manual_seed(0)
    for case in range(400):
        n = int(torch.randint(1, 30, (1,), generator=g))
        delta = (0.25, 0.5, 1.0, 2.0)[case % 4]
        x, y = random_case(g, n, grid=case % 2 == 0)
        kind = case % 7
        if kind == 0:  # no positive
            y[y == 1] = 0
        elif kind == 1:  # exactly one positive
            y[y == 1] = 0
            y[int(torch.randint(0, n, (1,), generator=g))] = 1
        elif kind == 2:  # nothing ignored
            y[y == -1] = 0
        ref_loss, ref_grad = loop_reference(x, y, delta)
        for compact in (True, False):
            loss, grad = _ap_loss_and_grad(x, y, delta, compact=compact)
            assert abs(loss.item() - ref_loss.item()) < 1e-12, (case, compact)
            assert torch.allclose(grad, ref_grad, rtol=0, atol=1e-12), (case, compact)


def test_float32_sorted_subset_matches_float64():
    g = torch.Generator().manual_seed(3)
    for case in range(40):
        x, _ = random_case(g, int(torch.randint(1, 60, (1,), generator=g)), grid=case % 2 == 0)
        x = x.float().double()
        mask = torch.rand(x.shape, generator=g) < 0.7
        for compact in (True, False):
            v32, i32, valid32 = _sorted_subset(x.float(), mask, compact)
            v64, i64, valid64 = _sorted_subset(x, mask, compact)
            assert v32.dtype == torch.float32 and i32.dtype == torch.int64
            assert torch.equal(v32.double(), v64), (case, compact)
            # Ties in element order on both paths.
            assert torch.equal(i32, i64), (case, compact)
            if compact:
                assert valid32 is None and valid64 is None
            else:
                assert torch.equal(valid32, valid64)


def test_float32_matches_float64_on_random_cases():
    # The float32 path sorts through integer keys; it must give the float64 numbers of
    # the same values, rounded once to float32.
    g = torch.Generator().manual_seed(4)
    for case in range(200):
        n = int(torch.randint(1, 40, (1,), generator=g))
        delta = (0.25, 0.5, 1.0, 2.0)[case % 4]
        x, y = random_case(g, n, grid=case % 2 == 0)
        x = x.float().double()
        ref_loss, ref_grad = loop_reference(x, y, delta)
        reg = torch.rand(int((y == 1).sum()), generator=g, dtype=torch.float64)
        ref_alrp = alrp_reference(x, y, reg, delta) if bool((y == 1).any()) else None
        for compact in (True, False):
            loss, grad = _ap_loss_and_grad(x.float(), y, delta, compact=compact)
            assert loss.dtype == grad.dtype == torch.float32
            assert abs(loss.item() - ref_loss.item()) < 1e-7, (case, compact)
            assert torch.allclose(grad.double(), ref_grad, rtol=0, atol=1e-7), (case, compact)
            if ref_alrp is not None:
                cls, _, update, _ = _alrp_loss_and_grads(x.float(), y, reg, delta, compact)
                assert cls.item() == pytest.approx(ref_alrp[0].item(), abs=1e-7)
                assert torch.allclose(update.double(), ref_alrp[2], rtol=0, atol=1e-7)


def test_matches_loop_with_one_positive():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, generator=g, dtype=torch.float64)
    y = torch.zeros(50, dtype=torch.long)
    y[17] = 1
    ref_loss, ref_grad = loop_reference(x, y)
    loss, grad = run_ap(x, y)
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-12)
    assert torch.allclose(grad, ref_grad, atol=1e-12)


def chunked_reference(logits: torch.Tensor, labels: torch.Tensor, delta: float = 1.0):
    """The same algorithm with the per-positive sums taken for 64 positives at a time
    (dense [64, N] soft steps) and the running maximum taken afterwards; for large cases."""
    x = logits.detach().double().reshape(-1)
    y = labels.reshape(-1)
    is_pos = y == 1
    fg = x[is_pos].sort().values
    is_neg = (y == 0) & (x >= fg.min() - delta)
    bg = x[is_neg]
    a, b, steps = [], [], []
    for q in fg.split(64):
        a.append(torch.clamp((fg - q[:, None]) / (2 * delta) + 0.5, 0, 1).sum(1) + 0.5)
        steps.append(torch.clamp((bg - q[:, None]) / (2 * delta) + 0.5, 0, 1))
        b.append(steps[-1].sum(1))
    a, b = torch.cat(a), torch.cat(b)
    current = a / (a + b)
    prec = current.clone()
    for i in range(1, len(prec)):  # the running maximum, in ascending order of score
        prec[i] = max(prec[i - 1], current[i])
    scale = torch.where(current >= prec, 1.0, (1 - prec) / (1 - current))
    weight = (scale / (a + b)).split(64)
    bg_update = sum((w[:, None] * step).sum(0) for w, step in zip(weight, steps))
    update = torch.zeros_like(x)
    update[is_neg] = bg_update
    # Tied positives have equal precision, so sorted order can be scattered by value.
    update[is_pos] = -(1 - prec[torch.searchsorted(fg, x[is_pos])])
    update /= fg.numel()
    return 1 - prec.sum() / fg.numel(), update


def test_chunked_reference_is_the_loop():
    g = torch.Generator().manual_seed(8)
    for case in range(20):
        x, y = random_case(g, 150, grid=case % 2 == 0)
        y[0] = 1
        ref_loss, ref_grad = loop_reference(x, y)
        loss, grad = chunked_reference(x, y)
        assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-12)
        assert torch.allclose(grad, ref_grad, atol=1e-12)


@pytest.fixture(scope="module")
def large_case():
    # 10^5 elements: 300 positives, 5,000 ignored, the rest negatives.
    g = torch.Generator().manual_seed(2)
    n = 100_000
    y = torch.zeros(n, dtype=torch.long)
    y[torch.randperm(n, generator=g)[:300]] = 1
    y[torch.randperm(n, generator=g)[:5_000]] = -1
    x = torch.randn(n, generator=g, dtype=torch.float64) + 0.5 * (y == 1)
    return x, y, *chunked_reference(x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_at_scale(large_case, dtype):
    x, y, ref_loss, ref_grad = large_case
    loss, grad = run_ap(x.to(dtype), y)
    assert loss.dtype == grad.dtype == dtype
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-6)
    assert (grad.double() - ref_grad).abs().max().item() < 1e-6
    # Each negative's update is tiny: compare them relatively as well.
    neg = y == 0
    rel = (grad.double()[neg] - ref_grad[neg]).abs().max() / ref_grad[neg].abs().max()
    assert rel.item() < (1e-5 if dtype == torch.float32 else 1e-10)
    loss_s, grad_s = _ap_loss_and_grad(x.to(dtype), y, 1.0, compact=False)
    assert loss_s.item() == pytest.approx(loss.item(), abs=1e-7)
    assert torch.allclose(grad_s, grad, rtol=1e-5, atol=1e-12)


# ---------------------------------------------------------------- VOC AP as delta -> 0


def test_hard_step_limit_is_voc_ap():
    g = torch.Generator().manual_seed(3)
    for _ in range(30):
        n = int(torch.randint(2, 40, (1,), generator=g))
        # Distinct scores at least 1e-3 apart, far more than delta.
        x = torch.randperm(1000, generator=g)[:n].double() * 1e-3
        y = torch.randint(-1, 2, (n,), generator=g)
        y[0] = 1
        loss, _ = run_ap(x, y, delta=1e-7)
        keep = (y != -1).tolist()
        scores = [s for s, k in zip(x.tolist(), keep) if k]
        positive = [bool(v == 1) for v, k in zip(y.tolist(), keep) if k]
        assert 1 - loss.item() == pytest.approx(voc_ap(scores, positive), abs=1e-9)


# ---------------------------------------------------------------- properties


@st.composite
def problems(draw):
    n = draw(st.integers(1, 25))
    grid = draw(st.booleans())
    if grid:
        values = draw(st.lists(st.integers(-6, 6), min_size=n, max_size=n))
        x = torch.tensor(values, dtype=torch.float64) / 4
    else:
        values = draw(st.lists(st.floats(-5, 5, allow_nan=False), min_size=n, max_size=n))
        x = torch.tensor(values, dtype=torch.float64)
    y = torch.tensor(draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=n, max_size=n)))
    delta = draw(st.sampled_from([0.1, 0.5, 1.0, 3.0]))
    return x, y, delta


@given(problems())
def test_properties(problem):
    x, y, delta = problem
    loss, grad = run_ap(x, y, delta)
    ref_loss, ref_grad = loop_reference(x, y, delta)
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-12)
    assert torch.allclose(grad, ref_grad, atol=1e-12)
    assert 0 <= loss.item() < 1
    # The updates sum to zero; the loss is minus the positives' updates.
    assert abs(grad.sum().item()) < 1e-12
    assert loss.item() == pytest.approx(-grad[y == 1].sum().item(), abs=1e-12)
    assert (grad[y == 1] <= 0).all() and (grad[y == 0] >= 0).all()
    assert (grad[y == -1] == 0).all()
    # The order of the elements is irrelevant.
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(len(x)))
    loss_p, grad_p = run_ap(x[perm], y[perm], delta)
    assert loss_p.item() == pytest.approx(loss.item(), abs=1e-12)
    assert torch.allclose(grad_p, grad[perm], atol=1e-12)
    # Negatives below min(positive) - delta change nothing.
    if (y == 1).any():
        low = x[y == 1].min() - delta - torch.tensor([0.0, 0.5, 7.0], dtype=torch.float64)
        loss_f, grad_f = run_ap(torch.cat([x, low]), torch.cat([y, torch.zeros(3).long()]), delta)
        assert loss_f.item() == pytest.approx(loss.item(), abs=1e-12)
        assert torch.allclose(grad_f[: len(x)], grad, atol=1e-12)
        assert (grad_f[len(x) :] == 0).all()


@given(problems(), st.sampled_from([-3.0, 0.25, 10.0]))
def test_shift_invariance(problem, shift):
    x, y, delta = problem
    loss, grad = run_ap(x, y, delta)
    loss_s, grad_s = run_ap(x + shift, y, delta)
    assert loss_s.item() == pytest.approx(loss.item(), abs=1e-9)
    assert torch.allclose(grad_s, grad, atol=1e-9)


# ---------------------------------------------------------------- autograd, shapes, dtypes


def test_backward_scales_with_incoming_gradient_and_keeps_shape():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(-1, 2, (2, 5, 3), generator=g)
    y[0, 0, 0] = 1
    (3 * ap_loss(x, y)).backward()
    _, ref_grad = loop_reference(x, y)
    assert x.grad.shape == (2, 5, 3)
    assert torch.allclose(x.grad, 3 * ref_grad, atol=1e-12)


def test_batch_is_ranked_as_a_whole():
    # Two images whose scores are shifted: the ranking spans both, as in the reference.
    x = torch.tensor([[2.0, 1.5], [0.0, -0.5]], dtype=torch.float64)
    y = torch.tensor([[0, 1], [1, 0]])
    loss, grad = run_ap(x, y)
    ref_loss, ref_grad = loop_reference(x, y)
    assert loss.item() == pytest.approx(ref_loss.item())
    assert torch.allclose(grad, ref_grad)
    per_image = [run_ap(x[i], y[i])[0].item() for i in range(2)]
    assert loss.item() != pytest.approx(sum(per_image) / 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, generator=g).to(dtype)
    y = torch.randint(-1, 2, (200,), generator=g)
    loss, grad = run_ap(x, y)
    assert loss.dtype == grad.dtype == dtype
    # Computed on the upcast values and rounded once at the end.
    loss32, grad32 = run_ap(x.float(), y)
    assert torch.equal(loss, loss32.to(dtype)) and torch.equal(grad, grad32.to(dtype))
    ref_loss, ref_grad = loop_reference(x.double(), y)
    eps = torch.finfo(dtype).eps
    assert loss.double().item() == pytest.approx(ref_loss.item(), rel=eps)
    assert torch.allclose(grad.double(), ref_grad, rtol=eps, atol=1e-7)


def test_integer_and_bool_inputs():
    loss = ap_loss(torch.tensor([0, -1, 2]), torch.tensor([1, 0, 0]))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(
        loop_reference(torch.tensor([0, -1, 2]), torch.tensor([1, 0, 0]))[0].item()
    )
    bool_loss, _ = run_ap([0.0, -0.5], torch.tensor([True, False]))
    float_loss, _ = run_ap([0.0, -0.5], torch.tensor([1.0, 0.0]))
    assert bool_loss.item() == pytest.approx(0.2) and float_loss.item() == pytest.approx(0.2)


@pytest.mark.parametrize(
    "dtype",
    [
        torch.bool,
        torch.uint8,
        torch.int8,
        torch.int32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
    ],
)
def test_every_label_dtype_gives_the_same_numbers(dtype):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(200, generator=g)
    y = torch.randint(0 if dtype in (torch.bool, torch.uint8) else -1, 2, (200,), generator=g)
    expected = _ap_loss_and_grad(x, y, 1.0)
    loss, update = _ap_loss_and_grad(x, y.to(dtype), 1.0)
    assert torch.equal(loss, expected[0]) and torch.equal(update, expected[1])


def test_module_matches_function():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 30, generator=g, requires_grad=True)
    y = torch.randint(-1, 2, (4, 30), generator=g)
    module = APLoss(delta=0.5)
    assert "delta=0.5" in repr(module)
    out = module(x, y)
    (grad_module,) = torch.autograd.grad(out, x)
    ref = ap_loss(x, y, delta=0.5)
    (grad_function,) = torch.autograd.grad(ref, x)
    assert torch.equal(out, ref) and torch.equal(grad_module, grad_function)


def test_unvalidated_unknown_labels_are_ignored():
    loss, grad = run_ap([0.0, -0.5, 3.0], [1, 0, 2], validate=False)
    assert loss.item() == pytest.approx(0.2) and grad[2].item() == 0.0


@pytest.mark.cuda
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5_000, generator=g)
    y = torch.randint(-1, 2, (5_000,), generator=g)
    loss, grad = run_ap(x, y)
    loss_c, grad_c = run_ap(x.cuda(), y.cuda())
    assert loss_c.device.type == "cuda"
    assert loss_c.item() == pytest.approx(loss.item(), abs=1e-6)
    assert torch.allclose(grad_c.cpu(), grad, atol=1e-7)
    reg = torch.rand(int((y == 1).sum()), generator=g)
    cpu = run_alrp(x, y, reg)
    gpu = run_alrp(x.cuda(), y.cuda(), reg.cuda())
    for a, b in zip(cpu, gpu):
        assert torch.allclose(b.cpu(), a, atol=1e-6)
    t = torch.where(y == 1, torch.rand(5_000, generator=g).clamp(min=0.05), y.float())
    cpu = run_rs(x, t)
    gpu = run_rs(x.cuda(), t.cuda())
    for a, b in zip(cpu, gpu):
        assert torch.allclose(b.cpu(), a, atol=1e-6)


# ---------------------------------------------------------------- bad input


def test_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(
        ValueError, match=r"labels: expected shape \[2, 3\] \(the logits'\), got \[6\]"
    ):
        ap_loss(x, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels: expected values in \{-1, 0, 1\}, got 2"):
        ap_loss(x, torch.tensor([[0, 1, 2], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"labels: expected values in \{-1, 0, 1\}, got 0.5"):
        ap_loss(x, torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="logits: expected finite values, got NaN or inf"):
        ap_loss(torch.tensor([float("nan"), 0.0]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="delta must be a finite number > 0, got 0"):
        ap_loss(x, torch.zeros(2, 3), delta=0)
    with pytest.raises(ValueError, match="delta must be a finite number > 0, got inf"):
        APLoss(delta=float("inf"))
    with pytest.raises(TypeError, match="delta must be a float, got str"):
        ap_loss(x, torch.zeros(2, 3), delta="1")
    with pytest.raises(TypeError, match=r"logits must be a torch\.Tensor, got list"):
        ap_loss([0.0], torch.zeros(1))
    with pytest.raises(TypeError, match=r"labels must be a torch\.Tensor, got list"):
        ap_loss(torch.zeros(1), [1])


# ---------------------------------------------------------------- two processes


def _dist_case(case: int):
    """Whole batch and the split point for rank 0 (rank 1 takes the rest)."""
    g = torch.Generator().manual_seed(100 + case)
    n, split = [(60, 37), (40, 20), (30, 30)][case]
    x = torch.randint(-8, 9, (n,), generator=g).double() / 4
    y = torch.randint(-1, 2, (n,), generator=g)
    if case == 0:
        y[split:][y[split:] == 1] = 0  # rank 1 holds no positive
    return x, y, split


def _dist_worker(rank: int, world: int):
    results = []
    for case in range(3):
        x, y, split = _dist_case(case)
        part = slice(0, split) if rank == 0 else slice(split, None)
        xr = x[part].clone().requires_grad_()
        loss = ap_loss(xr, y[part])
        loss.backward()
        local = ap_loss(x[part], y[part], distributed=False)
        # reduction="none": this rank's per-positive errors, and a backward whose weights
        # come from every rank.
        xn = x[part].clone().requires_grad_()
        per_positive = ap_loss(xn, y[part], reduction="none")
        per_positive.backward(_dist_weights(x)[part])
        results.append((loss.detach(), xr.grad, local, per_positive.detach(), xn.grad))
    return results


def _dist_weights(x):
    return torch.linspace(0.5, 2.0, x.numel(), dtype=x.dtype)


def test_two_processes_reproduce_single_process():
    world = 2
    results = run_distributed(_dist_worker, world=world, timeout=60)
    for case in range(3):
        x, y, split = _dist_case(case)
        loss, grad = run_ap(x, y)
        parts = [slice(0, split), slice(split, None)]
        losses = torch.stack([results[r][case][0] for r in range(world)])
        assert losses.mean().item() == pytest.approx(loss.item(), abs=1e-12)
        assert torch.allclose(losses, loss.expand(world), atol=1e-12)  # every rank: global
        for r in range(world):
            assert torch.allclose(results[r][case][1] / world, grad[parts[r]], atol=1e-12)
            local = loop_reference(x[parts[r]], y[parts[r]])[0]
            assert results[r][case][2].item() == pytest.approx(local.item(), abs=1e-12)
        xs = x.clone().requires_grad_()
        per_positive = ap_loss(xs, y, reduction="none")
        per_positive.backward(_dist_weights(x))
        for r in range(world):
            torch.testing.assert_close(results[r][case][3], per_positive.detach()[parts[r]])
            torch.testing.assert_close(results[r][case][4] / world, xs.grad[parts[r]])


def test_single_process_flag_is_harmless():
    assert not dist.is_initialized()
    loss_a, grad_a = run_ap([0.0, -0.5], [1, 0], distributed=True)
    loss_b, grad_b = run_ap([0.0, -0.5], [1, 0], distributed=False)
    assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)


# ---------------------------------------------------------------- aLRP Loss


def alrp_reference(logits, labels, regression_losses, delta=1.0, weights=None, mean=True):
    """The published aLRP loop in float64: ``(cls, loc, logits update, d loc / d losses)``.

    Positive i ranks itself 1 (its own relation is set to 0, then 1 is added); when its
    soft false-positive count exceeds 1e-5 it receives minus (its relations times the
    other positives' losses plus FP) over its rank, and the negatives above share that in
    proportion to their relations. Localisation: losses by descending score, cumulated,
    over the rank, averaged; differentiated by autograd here. ``weights``: per-element
    ``(classification, localisation)`` factors on each positive's terms; ``mean=False``:
    sums instead of means.
    """
    x = logits.double().reshape(-1)
    y = labels.reshape(-1)
    reg = regression_losses.detach().double().clone().requires_grad_()
    is_pos = y == 1
    fg = x[is_pos]
    is_neg = (y == 0) & (x >= fg.min() - delta)
    bg = x[is_neg]
    ones = torch.ones_like(x)
    cls_w, loc_w = (ones, ones) if weights is None else (w.double().reshape(-1) for w in weights)
    cls_w, loc_w = cls_w[is_pos], loc_w[is_pos]
    bg_update = torch.zeros_like(bg)
    fg_update = torch.zeros_like(fg)
    rank = torch.zeros_like(fg)
    prec = torch.zeros_like(fg)
    order = torch.argsort(fg)
    for i in order.tolist():
        pos_step = torch.clamp((fg - fg[i]) / (2 * delta) + 0.5, 0, 1)
        pos_step[i] = 0
        neg_step = torch.clamp((bg - fg[i]) / (2 * delta) + 0.5, 0, 1)
        rank_pos = 1 + pos_step.sum()
        fp = neg_step.sum()
        rank[i] = rank_pos + fp
        prec[i] = rank_pos / rank[i]
        if fp > 1e-5:
            fg_update[i] = -((pos_step * reg.detach()).sum() + fp) / rank[i] * cls_w[i]
            bg_update += neg_step * (-fg_update[i] / fp)
    update = torch.zeros_like(x)
    update[is_pos] = fg_update
    update[is_neg] = bg_update
    norm = fg.numel() if mean else 1
    update /= norm
    per_positive = reg[order].flip(0).cumsum(0) / rank[order].flip(0)
    (per_positive * loc_w[order].flip(0)).sum().div(norm).backward()
    loc = per_positive.detach().sum() / norm
    return (1 - prec).sum() / norm, loc, update.view(labels.shape), reg.grad


def run_alrp(logits, labels, regression_losses, delta=1.0):
    x = torch.as_tensor(logits).clone().requires_grad_()
    reg = torch.as_tensor(regression_losses).clone().requires_grad_()
    cls, loc = alrp_loss(x, torch.as_tensor(labels), reg, delta)
    (cls + loc).backward()
    return cls.detach(), loc.detach(), x.grad, reg.grad


def test_alrp_hand_numbers():
    # One positive at 0 with localisation loss 0.3, a negative at -0.5: rank 1 + 0.25,
    # precision 0.8; the positive receives -0.25 / 1.25; localisation 0.3 / 1.25.
    cls, loc, grad, grad_reg = run_alrp([0.0, -0.5], [1, 0], [0.3])
    assert cls.item() == pytest.approx(0.2)
    assert loc.item() == pytest.approx(0.24)
    assert grad.tolist() == pytest.approx([-0.2, 0.2])
    assert grad_reg.tolist() == pytest.approx([0.8])


def test_alrp_matches_loop_on_random_cases():
    g = torch.Generator().manual_seed(10)
    for case in range(200):
        n = int(torch.randint(1, 30, (1,), generator=g))
        delta = (0.25, 0.5, 1.0, 2.0)[case % 4]
        grid = case % 2 == 0
        x, y = random_case(g, n, grid)
        y[int(torch.randint(0, n, (1,), generator=g))] = 1
        reg = torch.rand(int((y == 1).sum()), generator=g, dtype=torch.float64)
        ref = alrp_reference(x, y, reg, delta)
        for compact in (True, False):
            cls, loc, update, grad_reg = _alrp_loss_and_grads(x, y, reg, delta, compact)
            assert cls.item() == pytest.approx(ref[0].item(), abs=1e-12)
            assert torch.allclose(update, ref[2], atol=1e-12)
            assert abs(update.sum().item()) < 1e-12
            if not grid:  # the localisation order of tied positives is arbitrary
                assert loc.item() == pytest.approx(ref[1].item(), abs=1e-12)
                assert torch.allclose(grad_reg, ref[3], atol=1e-12)


def test_alrp_without_positive_and_module():
    x = torch.tensor([0.5, -1.0], requires_grad=True)
    reg = torch.zeros(0, requires_grad=True)
    cls, loc = alrp_loss(x, torch.tensor([0, -1]), reg)
    (cls + loc).backward()
    assert cls.item() == 0.0 and loc.item() == 0.0
    assert torch.equal(x.grad, torch.zeros(2)) and reg.grad.shape == (0,)

    g = torch.Generator().manual_seed(12)
    x = torch.randn(3, 20, generator=g)
    y = torch.randint(-1, 2, (3, 20), generator=g)
    reg = torch.rand(int((y == 1).sum()), generator=g)
    module = ALRPLoss(delta=0.5, loc_weight=10.0)
    total, terms = module(x, y, reg, return_terms=True)
    cls, loc = alrp_loss(x, y, reg, delta=0.5)
    assert torch.equal(terms["cls"], cls) and torch.equal(terms["loc"], loc)
    assert total.item() == pytest.approx(cls.item() + 10 * loc.item())
    assert "loc_weight=10.0" in repr(module)


def test_alrp_errors():
    x = torch.zeros(4)
    y = torch.tensor([1, 0, 1, -1])
    with pytest.raises(
        ValueError,
        match=r"regression_losses: expected shape \[2\] \(one per positive label\), got \[3\]",
    ):
        alrp_loss(x, y, torch.zeros(3))
    with pytest.raises(ValueError, match=r"regression_losses: expected shape \[P\], got \[2, 1\]"):
        alrp_loss(x, y, torch.zeros(2, 1))
    with pytest.raises(ValueError, match="regression_losses: expected finite values"):
        alrp_loss(x, y, torch.tensor([0.0, float("inf")]))
    with pytest.raises(TypeError, match=r"regression_losses must be a torch\.Tensor, got list"):
        alrp_loss(x, y, [0.0, 0.0])
    with pytest.raises(ValueError, match=r"labels: expected values in \{-1, 0, 1\}, got 3"):
        alrp_loss(x, torch.tensor([3, 0, 1, 1]), torch.zeros(2))


# ---------------------------------------------------------------- Rank & Sort Loss


def rank_sort_reference(logits, targets, delta=0.5, weights=None, mean=True):
    """The published Rank & Sort loop in float64: ``(ranking, sorting, update)``.

    Here a positive's own relation stays H(0) = 1/2. Ranking error: soft false positives
    over the soft rank, handed to the negatives above in proportion to their relations.
    Sorting error: the mean (1 - target) of the positives above minus that of those above
    with a target at least as high, handed to the positives above with a lower target.
    ``weights``: per-element ``(ranking, sorting)`` factors on each positive's updates;
    ``mean=False``: sums instead of means.
    """
    x = logits.double().reshape(-1)
    t = targets.double().reshape(-1)
    is_pos = t > 0
    fg, fg_t = x[is_pos], t[is_pos]
    is_neg = (t == 0) & (x >= fg.min() - delta)
    bg = x[is_neg]
    ones = torch.ones_like(x)
    rank_w, sort_w = (ones, ones) if weights is None else (w.double().reshape(-1) for w in weights)
    rank_w, sort_w = rank_w[is_pos], sort_w[is_pos]
    bg_update = torch.zeros_like(bg)
    fg_update = torch.zeros_like(fg)
    ranking = torch.zeros_like(fg)
    sorting = torch.zeros_like(fg)
    for i in torch.argsort(fg).tolist():
        pos_step = torch.clamp((fg - fg[i]) / (2 * delta) + 0.5, 0, 1)
        neg_step = torch.clamp((bg - fg[i]) / (2 * delta) + 0.5, 0, 1)
        rank_pos = pos_step.sum()
        fp = neg_step.sum()
        ranking[i] = fp / (rank_pos + fp)
        current = (pos_step * (1 - fg_t)).sum() / rank_pos
        in_order = fg_t >= fg_t[i]
        target = (in_order * pos_step * (1 - fg_t)).sum() / (in_order * pos_step).sum()
        sorting[i] = current - target
        if fp > 1e-10:
            fg_update[i] -= rank_w[i] * ranking[i]
            bg_update += neg_step * (rank_w[i] * ranking[i] / fp)
        missorted = ~in_order * pos_step
        if missorted.sum() > 1e-10:
            fg_update[i] -= sort_w[i] * sorting[i]
            fg_update += missorted * (sort_w[i] * sorting[i] / missorted.sum())
    norm = fg.numel() if mean else 1
    update = torch.zeros_like(x)
    update[is_pos] = fg_update / norm
    update[is_neg] = bg_update / norm
    return ranking.sum() / norm, sorting.sum() / norm, update.view(targets.shape)


def run_rs(logits, targets, delta=0.5):
    x = torch.as_tensor(logits).clone().requires_grad_()
    ranking, sorting = rank_sort_loss(x, torch.as_tensor(targets), delta)
    (ranking + sorting).backward()
    return ranking.detach(), sorting.detach(), x.grad


def test_rank_sort_hand_numbers():
    # Positives at 0 (target 0.9) and 1 (target 0.5), no negative, delta 0.5. The one at
    # 0 sees itself at 1/2 and the other fully: current (0.05 + 0.5) / 1.5, target 0.1,
    # sorting error 4/15, handed to the mis-sorted positive at 1, whose own error is 0.
    ranking, sorting, grad = run_rs([0.0, 1.0], [0.9, 0.5])
    assert ranking.item() == 0.0
    assert sorting.item() == pytest.approx(2 / 15)
    assert grad.tolist() == pytest.approx([-2 / 15, 2 / 15])
    # A negative at 0 between positives at -0.5 and 0.5: the lower one sees the other
    # positive and the negative fully (H(0.5) = 1 for delta 0.5): ranking error
    # 1 / (1.5 + 1); the upper one sees neither: 0.
    ranking, _, _ = run_rs([-0.5, 0.0, 0.5], [1.0, 0.0, 1.0])
    assert ranking.item() == pytest.approx((1 / 2.5 + 0) / 2)


def test_rank_sort_matches_loop_on_random_cases():
    g = torch.Generator().manual_seed(13)
    for case in range(200):
        n = int(torch.randint(1, 30, (1,), generator=g))
        delta = (0.25, 0.5, 1.0, 2.0)[case % 4]
        x, y = random_case(g, n, grid=case % 2 == 0)
        y[int(torch.randint(0, n, (1,), generator=g))] = 1
        quality = torch.rand(n, generator=g, dtype=torch.float64).clamp(min=0.05)
        if case % 3 == 0:  # tied targets
            quality = (quality * 4).ceil() / 4
        t = torch.where(y == 1, quality, y.double())
        ref_rank, ref_sort, ref_update = rank_sort_reference(x, t, delta)
        ranking, sorting, update = run_rs(x, t, delta)
        assert ranking.item() == pytest.approx(ref_rank.item(), abs=1e-12)
        assert sorting.item() == pytest.approx(ref_sort.item(), abs=1e-12)
        assert torch.allclose(update, ref_update, atol=1e-12)
        assert abs(update.sum().item()) < 1e-12


def test_rank_sort_terms_have_their_own_updates():
    g = torch.Generator().manual_seed(14)
    x = torch.randn(50, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.where(torch.rand(50, generator=g) < 0.3, torch.rand(50, generator=g), 0.0)
    t = t.double()
    t[0] = 0.7
    ranking, sorting = rank_sort_loss(x, t)
    (g_rank,) = torch.autograd.grad(ranking, x, retain_graph=True)
    (g_sort,) = torch.autograd.grad(sorting, x, retain_graph=True)
    (g_both,) = torch.autograd.grad(2 * ranking + 3 * sorting, x)
    assert torch.allclose(g_both, 2 * g_rank + 3 * g_sort, atol=1e-15)
    assert (g_sort[t == 0] == 0).all()  # sorting only moves positives
    module = RankSortLoss()
    total, terms = module(x, t, return_terms=True)
    assert total.item() == pytest.approx(ranking.item() + sorting.item())
    assert torch.equal(terms["rank"], ranking) and torch.equal(terms["sort"], sorting)


def test_rank_sort_at_scale_and_edge_cases():
    g = torch.Generator().manual_seed(15)
    n = 20_000
    t = torch.zeros(n, dtype=torch.float64)
    t[torch.randperm(n, generator=g)[:150]] = torch.rand(150, generator=g, dtype=torch.float64)
    t[t > 0] = t[t > 0].clamp(min=0.01)
    x = torch.randn(n, generator=g) + (t > 0)
    ref_rank, ref_sort, ref_update = rank_sort_reference(x, t)
    ranking, sorting, update = run_rs(x, t)
    assert ranking.dtype == torch.float32
    assert ranking.item() == pytest.approx(ref_rank.item(), abs=1e-6)
    assert sorting.item() == pytest.approx(ref_sort.item(), abs=1e-6)
    assert (update.double() - ref_update).abs().max().item() < 1e-6
    # No positive, empty input.
    ranking, sorting, update = run_rs([0.3, 1.0], [0.0, -1.0])
    assert ranking.item() == sorting.item() == 0.0 and torch.equal(update, torch.zeros(2))
    ranking, sorting, update = run_rs(torch.zeros(0), torch.zeros(0))
    assert ranking.item() == 0.0 and update.shape == (0,)


def test_rank_sort_errors():
    with pytest.raises(ValueError, match=r"targets: expected -1 or values in \[0, 1\], got 1.5"):
        rank_sort_loss(torch.zeros(2), torch.tensor([1.5, 0.0]))
    with pytest.raises(
        ValueError, match=r"targets: expected shape \[2\] \(the logits'\), got \[3\]"
    ):
        rank_sort_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="delta must be a finite number > 0, got -1"):
        RankSortLoss(delta=-1)
