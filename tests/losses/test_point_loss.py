import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from torch.autograd import gradcheck

from _distributed import run_distributed
from detloss.batching import pad_targets
from detloss.losses.points import HEADS, PointLoss, point_loss
from detloss.match.matching import IGNORED, Matching
from detloss.match.points import match_points


def reference_match(pred, logits, target, tau):
    """{pred: target} of scipy on the P2PNet cost built in float64 numpy."""
    pred = np.asarray(pred, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    if logits.ndim == 2:
        prob = 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))
    else:
        prob = 1.0 / (1.0 + np.exp(-logits))
    if len(pred) == 0 or len(target) == 0:
        return {}
    cost = np.empty((len(pred), len(target)))
    for j in range(len(pred)):
        for i in range(len(target)):
            d = math.hypot(pred[j, 0] - target[i, 0], pred[j, 1] - target[i, 1])
            cost[j, i] = tau * d - prob[j]
    rows, cols = linear_sum_assignment(cost)
    return dict(zip(rows.tolist(), cols.tolist()))


def bce(x, y):
    return max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))


def reference_image(pred, logits, target, tau=0.05, neg_weight=0.5):
    """(cls, loc) of one image with the sigmoid head, from the formulas with loops."""
    pairs = reference_match(pred, logits, target, tau)
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    m = len(pred)
    cls = 0.0
    for j in range(m):
        y = 1.0 if j in pairs else 0.0
        w = 1.0 if j in pairs else neg_weight
        cls += w * bce(float(logits[j]), y)
    cls = cls / m if m else 0.0
    loc = 0.0
    for j, i in pairs.items():
        loc += (pred[j, 0] - target[i, 0]) ** 2 + (pred[j, 1] - target[i, 1]) ** 2
    loc = loc / len(pairs) if pairs else 0.0
    return cls, loc


def reference_softmax(preds, logits, targets, tau=0.05, neg_weight=0.5):
    """(cls, loc) of the official code: weighted CE over the batch, loc / matched pairs."""
    num = den = loc = 0.0
    matched = 0
    for pred, logit, target in zip(preds, logits, targets):
        pairs = reference_match(pred, logit, target, tau)
        pred = np.asarray(pred, dtype=np.float64)
        logit = np.asarray(logit, dtype=np.float64)
        target = np.asarray(target, dtype=np.float64).reshape(-1, 2)
        for j in range(len(pred)):
            y = 1 if j in pairs else 0
            w = 1.0 if y else neg_weight
            log_z = np.logaddexp(logit[j, 0], logit[j, 1])
            num += w * (log_z - logit[j, y])
            den += w
        for j, i in pairs.items():
            loc += ((pred[j] - target[i]) ** 2).sum()
        matched += len(pairs)
    return (num / den if den else 0.0), loc / max(matched, 1)


def random_batch(counts, m, seed, head="sigmoid", scale=32.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    b = len(counts)
    pred = (torch.rand(b, m, 2, generator=g, dtype=dtype) * scale).requires_grad_()
    shape = (b, m, 2) if head == "softmax" else (b, m)
    logits = (torch.randn(shape, generator=g, dtype=dtype) * 2).requires_grad_()
    targets = [torch.rand(n, 2, generator=g, dtype=dtype) * scale for n in counts]
    return pred, logits, targets


def test_hand_worked_value():
    # Proposal 0 costs 0.05 * 5 - 0.5 = -0.25 for the target, proposal 1 costs
    # 0.05 * sqrt(65) - 0.5 = -0.0969: proposal 0 is matched, at squared distance 25.
    # cls = (1 * ln 2 + 0.5 * ln 2) / 2 = 0.75 ln 2; loc = 25.
    pred = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]])
    logits = torch.zeros(1, 2)
    target = [torch.tensor([[3.0, 4.0]])]
    total, terms = point_loss(pred, logits, target, return_terms=True)
    assert terms["cls"].item() == pytest.approx(0.75 * math.log(2), rel=1e-6)
    assert terms["loc"].item() == pytest.approx(25.0, rel=1e-6)
    assert total.item() == pytest.approx(0.75 * math.log(2) + 2e-4 * 25, rel=1e-6)
    # The seed's F.mse_loss(p, t) averages over coordinates too: half our per-pair mean.
    assert F.mse_loss(pred[0, :1], target[0]).item() == pytest.approx(25.0 / 2)


@pytest.mark.parametrize("tau,neg_weight,loc_weight", [(0.05, 0.5, 2e-4), (0.3, 0.1, 0.01)])
def test_sigmoid_matches_reference(tau, neg_weight, loc_weight):
    counts = [5, 0, 12, 1]
    pred, logits, targets = random_batch(counts, 9, seed=1)
    total, terms = point_loss(
        pred,
        logits,
        targets,
        tau=tau,
        neg_weight=neg_weight,
        loc_weight=loc_weight,
        return_terms=True,
    )
    per_image = [
        reference_image(pred[i].detach(), logits[i].detach(), targets[i], tau, neg_weight)
        for i in range(len(counts))
    ]
    cls = sum(c for c, _ in per_image) / len(counts)
    loc = sum(v for _, v in per_image) / len(counts)
    assert terms["cls"].item() == pytest.approx(cls, abs=1e-6)
    assert terms["loc"].item() == pytest.approx(loc, abs=1e-6)
    assert total.item() == pytest.approx(cls + loc_weight * loc, abs=1e-6)
    # Batch result = mean of the per-image results.
    singles = [
        point_loss(
            pred[i : i + 1],
            logits[i : i + 1],
            targets[i : i + 1],
            tau=tau,
            neg_weight=neg_weight,
            loc_weight=loc_weight,
        )
        for i in range(len(counts))
    ]
    assert total.item() == pytest.approx(torch.stack(singles).mean().item(), abs=1e-12)


@pytest.mark.parametrize("neg_weight", [0.5, 0.0])
def test_softmax_matches_reference(neg_weight):
    counts = [3, 0, 7]
    pred, logits, targets = random_batch(counts, 8, seed=2, head="softmax")
    total, terms = point_loss(
        pred, logits, targets, head="softmax", neg_weight=neg_weight, return_terms=True
    )
    cls, loc = reference_softmax(pred.detach(), logits.detach(), targets, neg_weight=neg_weight)
    assert terms["cls"].item() == pytest.approx(cls, abs=1e-6)
    assert terms["loc"].item() == pytest.approx(loc, abs=1e-6)
    assert total.item() == pytest.approx(cls + 2e-4 * loc, abs=1e-6)
    # The classification term is torch's weighted cross-entropy over the whole batch.
    labels = match_points(pred, logits, targets).positive_mask.long()
    weight = torch.tensor([neg_weight, 1.0], dtype=torch.float64)
    torch_ce = F.cross_entropy(logits.transpose(1, 2), labels, weight=weight)
    if neg_weight:
        assert terms["cls"].item() == pytest.approx(torch_ce.item(), abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=3),
    softmax=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_target_permutation_changes_nothing(counts, softmax, seed):
    head = "softmax" if softmax else "sigmoid"
    pred, logits, targets = random_batch(counts, 7, seed=seed, head=head)
    g = torch.Generator().manual_seed(seed + 1)
    shuffled = [t[torch.randperm(len(t), generator=g)] for t in targets]
    a, terms_a = point_loss(pred, logits, targets, head=head, return_terms=True)
    b, terms_b = point_loss(pred, logits, shuffled, head=head, return_terms=True)
    assert b.item() == pytest.approx(a.item(), abs=1e-9)
    assert terms_b["loc"].item() == pytest.approx(terms_a["loc"].item(), abs=1e-9)
    # The padded form with a non-prefix mask too.
    padded = pad_targets(targets)
    flip = torch.arange(padded["mask"].shape[1] - 1, -1, -1)
    flipped = {"points": padded["points"][:, flip], "mask": padded["mask"][:, flip]}
    assert point_loss(pred, logits, flipped, head=head).item() == pytest.approx(a.item(), abs=1e-9)


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_function_module_and_dict_forms_agree(head):
    pred, logits, targets = random_batch([4, 2], 6, seed=3, head=head)
    kwargs = {"tau": 0.1, "neg_weight": 0.3, "loc_weight": 1e-3, "head": head}
    expected = point_loss(pred, logits, targets, **kwargs)
    module = PointLoss(**kwargs)
    assert torch.equal(module(pred, logits, targets), expected)
    outputs = {"pred_points": pred, "pred_logits": logits}
    assert torch.equal(module(outputs, targets), expected)
    total, terms = module(outputs, [{"points": t} for t in targets], return_terms=True)
    assert torch.equal(total, expected)
    assert set(terms) == {"cls", "loc"}
    assert "head='" + head + "'" in repr(module)


def test_precomputed_matching_and_ignored_predictions():
    pred, logits, targets = random_batch([3, 1], 5, seed=4)
    matching = match_points(pred, logits, targets)
    assert torch.equal(
        point_loss(pred, logits, targets, matching=matching), point_loss(pred, logits, targets)
    )
    # Ignored proposals weigh nothing: the loss equals the one without their logits' effect.
    p2t = matching.pred_to_target.clone()
    p2t[0, p2t[0] < 0] = IGNORED
    ignored = Matching(p2t, matching.target_mask)
    _, terms = point_loss(pred, logits, targets, matching=ignored, return_terms=True)
    per = [reference_image(pred[i].detach(), logits[i].detach(), targets[i]) for i in range(2)]
    positives = matching.positive_mask[0]
    cls0 = (
        F.binary_cross_entropy_with_logits(
            logits[0][positives],
            torch.ones(int(positives.sum()), dtype=torch.float64),
            reduction="sum",
        ).item()
        / 5
    )
    assert terms["cls"].item() == pytest.approx((cls0 + per[1][0]) / 2, abs=1e-9)


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_empty_images_and_batches(head):
    pred, logits, targets = random_batch([0, 0], 6, seed=5, head=head)
    total, terms = point_loss(pred, logits, targets, head=head, return_terms=True)
    total.backward()
    assert terms["loc"].item() == 0.0
    assert torch.isfinite(total)
    assert torch.isfinite(pred.grad).all() and (pred.grad == 0).all()
    # Every proposal is pushed down: descending the loss lowers every person score.
    if head == "sigmoid":
        assert (logits.grad > 0).all()
    else:
        assert (logits.grad[..., 1] > 0).all() and (logits.grad[..., 0] < 0).all()
    # No proposals, no images: a zero that keeps the graph.
    for p, lg, t in ((pred[:, :0], logits[:, :0], targets), (pred[:0], logits[:0], [])):
        loss = point_loss(p, lg, t, head=head)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
    # A padded batch without slots.
    loss = point_loss(
        pred, logits, {"points": torch.zeros(2, 0, 2), "mask": torch.zeros(2, 0)}, head=head
    )
    assert torch.isfinite(loss)


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_padding_values_never_leak(head):
    pred, logits, targets = random_batch([3, 1], 6, seed=12, head=head)
    expected = point_loss(pred, logits, targets, head=head)
    (grad,) = torch.autograd.grad(expected, pred)
    padded = pad_targets(targets)
    padded["points"][1, 1:] = math.nan
    # Gathering for an unmatched proposal reads slot 0 of the image: make it a NaN slot.
    padded["points"][1] = padded["points"][1].flip(0)
    padded["mask"][1] = padded["mask"][1].flip(0)
    loss = point_loss(pred, logits, padded, head=head)
    (grad_nan,) = torch.autograd.grad(loss, pred)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    torch.testing.assert_close(grad_nan, grad)


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_no_term_is_dropped(head):
    """Each term with a non-zero weight moves the gradient (the official code's bug)."""
    pred, logits, targets = random_batch([3, 2], 6, seed=6, head=head)
    base, terms = point_loss(pred, logits, targets, head=head, loc_weight=0.5, return_terms=True)
    (grad_loc,) = torch.autograd.grad(terms["loc"], pred, retain_graph=True)
    grad_pts, grad_logits = torch.autograd.grad(base, (pred, logits))
    # Localisation reaches the matched points, and exactly with its weight.
    assert grad_pts.abs().sum() > 0
    torch.testing.assert_close(grad_pts, 0.5 * grad_loc)
    no_loc = point_loss(pred, logits, targets, head=head, loc_weight=0.0)
    assert base.item() == pytest.approx(no_loc.item() + 0.5 * terms["loc"].item(), abs=1e-12)
    # Classification reaches every matched and unmatched logit.
    positive = match_points(pred, logits, targets).positive_mask
    per_proposal = grad_logits.abs().reshape(*positive.shape, -1).sum(-1)
    assert (per_proposal > 0).all()
    # neg_weight is what moves the unmatched ones.
    zero_neg = point_loss(pred, logits, targets, head=head, neg_weight=0.0)
    (grad_zero,) = torch.autograd.grad(zero_neg, logits)
    assert grad_zero[~positive].abs().sum() == 0
    # And the total depends on the classification term at all.
    assert base.item() - 0.5 * terms["loc"].item() == pytest.approx(terms["cls"].item())


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_gradcheck(head):
    pred, logits, targets = random_batch([3, 0, 2], 5, seed=7, head=head)
    matching = match_points(pred, logits, targets)

    def fn(p, lg):
        return point_loss(p, lg, targets, head=head, loc_weight=0.01, matching=matching)

    assert gradcheck(fn, (pred, logits))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    pred, logits, targets = random_batch([4, 1], 6, seed=8, dtype=torch.float32)
    pred_h = pred.detach().to(dtype).requires_grad_()
    logits_h = logits.detach().to(dtype).requires_grad_()
    loss = point_loss(pred_h, logits_h, targets)
    assert loss.dtype == dtype
    expected = point_loss(pred_h.detach().float(), logits_h.detach().float(), targets)
    assert loss.float().item() == pytest.approx(expected.item(), rel=1e-2)
    loss.backward()
    assert pred_h.grad.dtype == dtype and torch.isfinite(pred_h.grad.float()).all()


def test_integer_targets_and_float32():
    pred, logits, targets = random_batch([3], 5, seed=9, dtype=torch.float32)
    ints = [t.round().long() for t in targets]
    loss = point_loss(pred, logits, ints)
    assert loss.dtype == torch.float32
    cls, loc = reference_image(pred[0].detach(), logits[0].detach(), ints[0])
    assert loss.item() == pytest.approx(cls + 2e-4 * loc, rel=1e-5)


def test_errors():
    pred, logits, targets = random_batch([2], 4, seed=10)
    with pytest.raises(ValueError, match=r"head must be one of 'sigmoid', 'softmax', got 'sig'"):
        point_loss(pred, logits, targets, head="sig")
    with pytest.raises(ValueError, match=r"head must be one of .* got 'focal'"):
        PointLoss(head="focal")
    with pytest.raises(
        ValueError, match=r"pred_logits: expected shape \[1, 4\] for head='sigmoid'"
    ):
        point_loss(pred, torch.zeros(1, 4, 2), targets)
    with pytest.raises(ValueError, match=r"pred_logits: expected shape \[1, 4, 2\] for head="):
        point_loss(pred, logits, targets, head="softmax")
    with pytest.raises(ValueError, match=r"pred_points: expected shape \[B, M, 2\], got \[4, 2\]"):
        point_loss(pred[0], logits, targets)
    with pytest.raises(ValueError, match=r"pred_logits: expected shape \[1, 4\] or .*got \[2, 4\]"):
        point_loss(pred, torch.zeros(2, 4), targets)
    with pytest.raises(TypeError, match=r"pred_logits must be a real .* got torch.complex64"):
        point_loss(pred, torch.zeros(1, 4, dtype=torch.complex64), targets)
    for name in ("neg_weight", "loc_weight", "tau"):
        with pytest.raises(ValueError, match=rf"{name}: expected a finite number >= 0, got -1"):
            point_loss(pred, logits, targets, **{name: -1})
        with pytest.raises(ValueError, match=rf"{name}: expected a finite number >= 0, got inf"):
            PointLoss(**{name: math.inf})
        with pytest.raises(TypeError, match=rf"{name} must be a real number, got str"):
            PointLoss(**{name: "1"})
    with pytest.raises(TypeError, match=r"matching must be a Matching, got dict"):
        point_loss(pred, logits, targets, matching={})
    bad = Matching(torch.full((1, 5), -1), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"matching: expected pred_to_target \[1, 4\] over 2"):
        point_loss(pred, logits, targets, matching=bad)
    module = PointLoss()
    with pytest.raises(ValueError, match=r"outputs: expected keys .* missing \['pred_logits'\]"):
        module({"pred_points": pred}, targets)
    with pytest.raises(TypeError, match=r"expected loss\(pred_points, pred_logits, targets\)"):
        module(pred, logits)
    with pytest.raises(TypeError, match=r"expected loss\(outputs, targets\), got a third"):
        module({"pred_points": pred, "pred_logits": logits}, targets, targets)
    with pytest.raises(ValueError, match=r"targets: expected 1 images .* got 2"):
        module(pred, logits, targets * 2)
    with pytest.raises(ValueError, match=r"targets: a padded target dict needs keys"):
        module(pred, logits, {"points": torch.zeros(1, 2, 2)})


def _ddp_worker(rank, world, inputs):
    out = {}
    mine = slice(0, 2) if rank == 0 else slice(2, None)
    for head, (pred, logits, targets) in inputs.items():
        p = pred[mine].clone().requires_grad_()
        lg = logits[mine].clone().requires_grad_()
        loss = point_loss(p, lg, targets[mine], head=head)
        grad_p, grad_l = torch.autograd.grad(loss, (p, lg))
        out[head] = torch.cat((grad_p.flatten(), grad_l.flatten())).tolist()
    return out


@pytest.mark.slow
def test_distributed_normalisers_reproduce_single_process():
    """A batch split unevenly over 2 gloo ranks (2 + 1 images, different point counts)
    gives the single-process gradients after DDP's averaging, for both heads."""
    world = 2
    inputs = {}
    for head in HEADS:
        pred, logits, targets = random_batch([4, 1, 6], 5, seed=11, head=head)
        inputs[head] = (pred.detach(), logits.detach(), targets)
    out = run_distributed(_ddp_worker, inputs, world=world)
    for head, (pred, logits, targets) in inputs.items():
        p, lg = pred.clone().requires_grad_(), logits.clone().requires_grad_()
        grad_p, grad_l = torch.autograd.grad(point_loss(p, lg, targets, head=head), (p, lg))
        for rank, mine in ((0, slice(0, 2)), (1, slice(2, None))):
            # A parameter's DDP gradient is the mean over ranks of sum_x dL_r/dx dx/dtheta:
            # it equals the single-process one when dL_r/dx / world = dL/dx for every x.
            got = torch.tensor(out[rank][head], dtype=torch.float64) / world
            expected = torch.cat((grad_p[mine].flatten(), grad_l[mine].flatten()))
            torch.testing.assert_close(got, expected)


def test_coordinates_too_large_for_the_dtype_are_named():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(1, 4, 2, generator=g) * 10
    logits = torch.randn(1, 4, generator=g)
    points = torch.rand(1, 3, 2, generator=g) * 10
    far_pred, far_points = pred.clone(), points.clone()
    far_pred[0, 2, 1] = -1e30
    far_points[0, 1, 0] = 1e30
    with pytest.raises(ValueError, match=r"pred_points: expected coordinates .* got 1e\+30"):
        point_loss(far_pred, logits, [points[0]])
    with pytest.raises(ValueError, match=r"targets' points: expected coordinates .* got 1e\+30"):
        point_loss(pred, logits, [far_points[0]])
    # Large but representable: finite; float64 takes far larger values.
    assert torch.isfinite(point_loss(pred * 1e17, logits, [points[0] * 1e17]))
    big = point_loss(pred.double() * 1e29, logits.double(), [points[0].double() * 1e29])
    assert torch.isfinite(big)
    # Padded slots are not checked: they hold anything.
    padded = {
        "points": torch.cat((points, torch.full((1, 1, 2), 1e30)), 1),
        "mask": torch.tensor([[True, True, True, False]]),
    }
    assert torch.isfinite(point_loss(pred, logits, padded))


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_reductions(head):
    pred, logits, targets = random_batch([3, 0, 2], 5, seed=11, head=head)
    kwargs = {"head": head, "loc_weight": 0.1}
    per_image, terms = point_loss(
        pred, logits, targets, reduction="none", return_terms=True, **kwargs
    )
    assert per_image.shape == (3,) and terms["cls"].shape == terms["loc"].shape == (3,)
    total = point_loss(pred, logits, targets, reduction="sum", **kwargs)
    torch.testing.assert_close(total, per_image.sum())
    mean, mean_terms = point_loss(pred, logits, targets, return_terms=True, **kwargs)
    if head == "sigmoid":  # the sums over the images, divided by B
        torch.testing.assert_close(mean, per_image.sum() / 3)
    else:  # cls by the class weight sum, loc by the matched pairs (5 of them)
        torch.testing.assert_close(mean_terms["loc"], terms["loc"].sum() / 5)
    assert torch.equal(PointLoss(reduction="none", **kwargs)(pred, logits, targets), per_image)
    with pytest.raises(
        ValueError, match="reduction must be one of 'none', 'mean', 'sum', got 'avg'"
    ):
        point_loss(pred, logits, targets, reduction="avg", head=head)
