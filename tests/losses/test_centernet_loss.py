import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import detloss.losses.centernet as centernet_module
from detloss.heatmap import centernet_targets
from detloss.losses.centernet import (
    CenterNetLoss,
    GaussianFocalLoss,
    GaussianFocalLossWithLogits,
    centernet_loss,
    gaussian_focal_loss,
    gaussian_focal_loss_with_logits,
)


def focal_reference(
    p: list[float], g: list[float], alpha: float = 2.0, gamma: float = 4.0
) -> float:
    """Element by element, in Python floats."""
    total = 0.0
    for pi, gi in zip(p, g):
        if gi == 1:
            total += -math.log(pi) * (1 - pi) ** alpha
        else:
            total += -math.log(1 - pi) * pi**alpha * (1 - gi) ** gamma
    return total


# ----------------------------------------------------------------------------------------
# gaussian focal loss
# ----------------------------------------------------------------------------------------


def test_reference_numbers_on_probabilities_and_logits():
    pred = torch.tensor([0.5, 0.5, 0.1])
    gt = torch.tensor([1.0, 0.5, 0.0])
    assert float(gaussian_focal_loss(pred, gt)) == pytest.approx(0.1851708, abs=1e-7)
    assert float(gaussian_focal_loss_with_logits(torch.logit(pred), gt)) == pytest.approx(
        0.1851708, abs=1e-7
    )
    # one positive: dividing by num_pos = 1 changes nothing
    assert float(gaussian_focal_loss(pred, gt, normalizer=1)) == pytest.approx(0.1851708, abs=1e-7)
    pred = torch.tensor([0.5, 0.2])
    gt = torch.tensor([0.5, 0.0])
    assert float(gaussian_focal_loss(pred, gt)) == pytest.approx(0.0197562, abs=1e-7)
    assert float(gaussian_focal_loss_with_logits(torch.logit(pred), gt)) == pytest.approx(
        0.0197562, abs=1e-7
    )


@given(
    st.lists(st.floats(-8, 8), min_size=1, max_size=20),
    st.sampled_from([(2.0, 4.0), (1.0, 2.0), (0.5, 3.0)]),
)
def test_logits_and_probability_forms_agree_away_from_the_clamp(logits, exponents):
    alpha, gamma = exponents
    x = torch.tensor(logits, dtype=torch.float64)
    g = torch.linspace(0, 1, len(logits), dtype=torch.float64)
    g[::3] = 1.0
    p = torch.sigmoid(x)
    want = focal_reference(p.tolist(), g.tolist(), alpha, gamma)
    got_p = gaussian_focal_loss(p, g, alpha, gamma, "sum")
    got_x = gaussian_focal_loss_with_logits(x, g, alpha, gamma, "sum")
    assert float(got_p) == pytest.approx(want, rel=1e-10, abs=1e-12)
    assert float(got_x) == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_positives_are_exactly_one():
    p = torch.tensor([0.7, 0.7])
    g = torch.tensor([1.0, 1 - 1e-7])
    loss = gaussian_focal_loss(p, g, reduction="none")
    assert float(loss[0]) == pytest.approx(-math.log(0.7) * 0.09, rel=1e-6)
    assert float(loss[1]) < 1e-20  # a near-1 target is a (fully discounted) negative


def test_probability_form_clamps_like_centernet():
    p = torch.tensor([0.0, 1.0, 0.0, 1.0], requires_grad=True)
    g = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss = gaussian_focal_loss(p, g, reduction="none")
    e = 1e-4
    expected = [
        -math.log(e) * (1 - e) ** 2,
        -math.log(e) * (1 - e) ** 2,
        -math.log(1 - e) * e**2,
        -math.log(1 - e) * e**2,
    ]
    torch.testing.assert_close(loss, torch.tensor(expected), rtol=1e-4, atol=1e-12)
    loss.sum().backward()
    assert torch.equal(
        p.grad, torch.zeros(4)
    )  # outside [eps, 1 - eps] the clamp stops the gradient


def test_logits_form_is_finite_for_extreme_logits():
    x = torch.tensor([-1e4, 1e4, -100.0, 100.0, 1e4, -1e4, 0.0], requires_grad=True)
    g = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.5, 0.3])
    loss = gaussian_focal_loss_with_logits(x, g, reduction="none")
    values = loss.detach()
    assert torch.isfinite(values).all()
    assert float(values[0]) == pytest.approx(1e4) and float(values[1]) == pytest.approx(1e4)
    assert float(values[4]) == 0 and float(values[5]) == 0
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()
    # a confident wrong logit still gets a unit gradient (no vanishing at the clamp)
    assert x.grad[:4].tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0])


def test_gradcheck_logits_form():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 3, 3, generator=g, dtype=torch.float64) * 3).requires_grad_()
    t = torch.rand(2, 3, 3, generator=g, dtype=torch.float64)
    t[0, 1, 2] = t[1, 0, 1] = 1.0
    assert torch.autograd.gradcheck(
        lambda v: gaussian_focal_loss_with_logits(v, t, reduction="none"), (x,), fast_mode=True
    )
    for alpha, gamma in ((2.0, 4.0), (1.5, 0.5)):
        assert torch.autograd.gradcheck(
            lambda v, a=alpha, c=gamma: gaussian_focal_loss_with_logits(v, t, a, c, "mean", 3.0),
            (x,),
        )


def test_gradcheck_probability_form_inside_the_clamp():
    g = torch.Generator().manual_seed(1)
    p = (torch.rand(12, generator=g, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    t = torch.rand(12, generator=g, dtype=torch.float64)
    t[3] = 1.0
    assert torch.autograd.gradcheck(lambda v: gaussian_focal_loss(v, t, reduction="none"), (p,))


def test_reductions_and_normalizer():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, generator=g)
    t = torch.rand(3, 4, generator=g)
    t[0, :2] = 1.0  # two positive cells
    none = gaussian_focal_loss_with_logits(x, t, reduction="none")
    assert none.shape == (3, 4)
    # The default "mean" divides the sum by the positives (CenterNet's normaliser).
    torch.testing.assert_close(gaussian_focal_loss_with_logits(x, t), none.sum() / 2)
    torch.testing.assert_close(gaussian_focal_loss_with_logits(x, t, reduction="sum"), none.sum())
    no_positive = torch.zeros(3, 4)
    torch.testing.assert_close(
        gaussian_focal_loss_with_logits(x, no_positive),
        gaussian_focal_loss_with_logits(x, no_positive, reduction="sum"),
    )
    torch.testing.assert_close(gaussian_focal_loss_with_logits(x, t, normalizer=4), none.sum() / 4)
    torch.testing.assert_close(
        gaussian_focal_loss_with_logits(x, t, normalizer=torch.tensor([8.0])), none.sum() / 8
    )
    torch.testing.assert_close(
        gaussian_focal_loss(torch.sigmoid(x), t, normalizer=2.0), none.sum() / 2
    )


def test_empty_inputs_give_graph_connected_zeros():
    x = torch.zeros(0, 3, requires_grad=True)
    for reduction in ("mean", "sum"):
        loss = gaussian_focal_loss_with_logits(x, torch.zeros(0, 3), reduction=reduction)
        assert loss.item() == 0 and loss.requires_grad
        loss.backward()
    assert gaussian_focal_loss(torch.zeros(0), torch.zeros(0), reduction="mean").item() == 0


def test_half_inputs_are_computed_in_float32():
    x = torch.tensor([3.0, -2.0, 0.5])
    t = torch.tensor([1.0, 0.2, 0.0])
    want = gaussian_focal_loss_with_logits(x, t, reduction="none")
    got = gaussian_focal_loss_with_logits(x.half(), t.half(), reduction="none")
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), want, rtol=1e-3, atol=1e-4)
    got_b = gaussian_focal_loss(torch.sigmoid(x).bfloat16(), t, reduction="sum")
    assert got_b.dtype == torch.bfloat16


def test_focal_errors():
    x, t = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(
        ValueError, match=r"target: expected shape \[2, 3\] \(the logits'\), got \[3, 2\]"
    ):
        gaussian_focal_loss_with_logits(x, t.T)
    with pytest.raises(
        ValueError, match=r"target: expected shape \[2, 3\] \(the pred'\), got \[6\]"
    ):
        gaussian_focal_loss(x, t.view(-1))
    with pytest.raises(
        ValueError, match="reduction must be one of 'none', 'mean', 'sum', got 'avg'"
    ):
        gaussian_focal_loss_with_logits(x, t, reduction="avg")
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0, got -1"):
        gaussian_focal_loss_with_logits(x, t, alpha=-1.0)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0, got inf"):
        gaussian_focal_loss(x, t, gamma=float("inf"))
    with pytest.raises(ValueError, match=r"eps must be in \(0, 0.5\), got 0"):
        gaussian_focal_loss(x, t, eps=0.0)
    with pytest.raises(
        ValueError, match=r"normalizer: expected a number or a one-element tensor, got shape \[2\]"
    ):
        gaussian_focal_loss(x, t, normalizer=torch.ones(2))
    with pytest.raises(TypeError, match="normalizer must be a number, a tensor or None, got str"):
        gaussian_focal_loss(x, t, normalizer="n")
    with pytest.raises(TypeError, match=r"logits must be a torch\.Tensor, got list"):
        gaussian_focal_loss_with_logits([0.0], t)
    with pytest.raises(ValueError, match="normalizer divides the sum of reduction='mean'"):
        gaussian_focal_loss_with_logits(x, t, reduction="sum", normalizer=2.0)
    with pytest.raises(ValueError, match=r"pred: expected probabilities in \[0, 1\]"):
        gaussian_focal_loss(x - 1, t)


def test_focal_module_equals_function():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 4, 4, generator=g)
    t = torch.rand(2, 2, 4, 4, generator=g)
    t[0, 0, 1, 1] = 1
    module = GaussianFocalLossWithLogits(alpha=1.5, gamma=3.0, reduction="sum")
    assert torch.equal(module(x, t), gaussian_focal_loss_with_logits(x, t, 1.5, 3.0, "sum"))
    mean = GaussianFocalLossWithLogits(alpha=1.5, gamma=3.0)
    assert torch.equal(
        mean(x, t, 5.0), gaussian_focal_loss_with_logits(x, t, 1.5, 3.0, "mean", 5.0)
    )
    p = torch.sigmoid(x)
    prob = GaussianFocalLoss(eps=1e-3)
    assert torch.equal(prob(p, t), gaussian_focal_loss(p, t, eps=1e-3))
    assert "eps=0.001" in repr(prob)
    with pytest.raises(TypeError, match="use GaussianFocalLossWithLogits"):
        GaussianFocalLoss(logits=True)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        GaussianFocalLossWithLogits(alpha=-1.0)


# ----------------------------------------------------------------------------------------
# CenterNet loss
# ----------------------------------------------------------------------------------------


def make_problem(seed: int = 0, objects: bool = True):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.tensor(
        [
            [[4.0, 4.0, 20.0, 28.0], [30.0, 2.0, 38.0, 10.0], [0.0, 0.0, 0.0, 0.0]],
            [[10.0, 12.0, 40.0, 30.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
        ],
        dtype=torch.float64,
    )
    labels = torch.tensor([[0, 2, 0], [1, 0, 0]])
    mask = torch.tensor([[True, True, False], [True, False, False]]) & objects
    targets = centernet_targets(boxes, labels, target_mask=mask, num_classes=3, output_size=(8, 12))
    preds = {
        "heatmap": torch.randn(2, 3, 8, 12, generator=g, dtype=torch.float64).requires_grad_(),
        "size": (torch.rand(2, 2, 8, 12, generator=g, dtype=torch.float64) * 8).requires_grad_(),
        "offset": torch.rand(2, 2, 8, 12, generator=g, dtype=torch.float64).requires_grad_(),
    }
    return preds, targets


def loss_reference(preds, targets, weights=(1.0, 0.1, 1.0)):
    """Loops over cells in float64."""
    heat, t_heat = preds["heatmap"].detach(), targets["heatmap"]
    batch, classes, height, width = heat.shape
    focal = 0.0
    l1 = {"size": 0.0, "offset": 0.0}
    objects = 0
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                for c in range(classes):
                    p = 1 / (1 + math.exp(-float(heat[b, c, y, x])))
                    focal += focal_reference([p], [float(t_heat[b, c, y, x])])
                if targets["weight"][b, 0, y, x] > 0:
                    objects += 1
                    for key in l1:
                        for k in range(2):
                            diff = float(preds[key].detach()[b, k, y, x]) - float(
                                targets[key][b, k, y, x]
                            )
                            l1[key] += abs(diff) / 2
    n = max(objects, 1)
    terms = {"heatmap": focal / n, "size": l1["size"] / n, "offset": l1["offset"] / n}
    total = (
        weights[0] * terms["heatmap"] + weights[1] * terms["size"] + weights[2] * terms["offset"]
    )
    return total, terms


def test_centernet_loss_equals_the_cell_by_cell_reference():
    preds, targets = make_problem()
    assert targets["weight"].sum() == 3
    total, terms = centernet_loss(preds, targets, return_terms=True)
    want_total, want_terms = loss_reference(preds, targets)
    assert float(total.detach()) == pytest.approx(want_total, rel=1e-12)
    for key in ("heatmap", "size", "offset"):
        assert float(terms[key].detach()) == pytest.approx(want_terms[key], rel=1e-12), key
    total.backward()
    for key in ("heatmap", "size", "offset"):
        assert torch.isfinite(preds[key].grad).all()
    # size and offset gradients live only on object cells
    off_cells = targets["weight"].expand(-1, 2, -1, -1) == 0
    assert (preds["size"].grad[off_cells] == 0).all() and (preds["size"].grad.abs().sum() > 0)


def test_centernet_loss_reductions():
    preds, targets = make_problem(5)
    per_image, terms = centernet_loss(preds, targets, reduction="none", return_terms=True)
    assert per_image.shape == (2,) and all(t.shape == (2,) for t in terms.values())
    total = centernet_loss(preds, targets, reduction="sum")
    torch.testing.assert_close(total, per_image.sum())
    objects = targets["weight"].sum().clamp(min=1)
    torch.testing.assert_close(centernet_loss(preds, targets), total / objects)
    module = CenterNetLoss(reduction="none")
    assert torch.equal(module(preds, targets), per_image)
    with pytest.raises(
        ValueError, match="reduction must be one of 'none', 'mean', 'sum', got 'avg'"
    ):
        centernet_loss(preds, targets, reduction="avg")


def test_centernet_loss_weights():
    preds, targets = make_problem(1)
    total, terms = centernet_loss(preds, targets, 2.0, 0.5, 3.0, return_terms=True)
    want = 2.0 * terms["heatmap"] + 0.5 * terms["size"] + 3.0 * terms["offset"]
    torch.testing.assert_close(total, want)
    want_total, _ = loss_reference(preds, targets, (2.0, 0.5, 3.0))
    assert float(total.detach()) == pytest.approx(want_total, rel=1e-12)


def test_centernet_loss_without_objects():
    preds, targets = make_problem(2, objects=False)
    assert targets["weight"].sum() == 0
    total, terms = centernet_loss(preds, targets, return_terms=True)
    assert torch.isfinite(total)
    assert terms["size"].item() == 0 and terms["offset"].item() == 0
    # N clamps to 1: the heatmap term is the plain sum of the negatives' loss
    plain = gaussian_focal_loss_with_logits(preds["heatmap"], targets["heatmap"])
    torch.testing.assert_close(terms["heatmap"], plain)
    total.backward()
    assert preds["size"].grad is not None and torch.equal(
        preds["size"].grad, torch.zeros(2, 2, 8, 12, dtype=torch.float64)
    )


def test_centernet_module_equals_function_and_repr():
    preds, targets = make_problem(3)
    module = CenterNetLoss(1.0, 0.2, 0.5, alpha=1.0, gamma=2.0)
    got = module(preds, targets)
    want = centernet_loss(preds, targets, 1.0, 0.2, 0.5, alpha=1.0, gamma=2.0)
    assert torch.equal(got, want)
    got_total, got_terms = module(preds, targets, return_terms=True)
    assert torch.equal(got_total, want) and set(got_terms) == {"heatmap", "size", "offset"}
    assert "size_weight=0.2" in repr(module)


def test_centernet_loss_uses_the_global_object_count(monkeypatch):
    preds, targets = make_problem(4)
    seen = {}

    def fake_normalizer(count, distributed=True, minimum=1.0):
        seen["count"], seen["distributed"] = float(count), distributed
        return torch.tensor(6.0, dtype=torch.float64)  # as if another rank held 9 objects

    monkeypatch.setattr(centernet_module, "global_normalizer", fake_normalizer)
    _, terms = CenterNetLoss(distributed=False)(preds, targets, return_terms=True)
    assert seen == {"count": 3.0, "distributed": False}
    _, want = loss_reference(preds, targets)
    assert float(terms["size"].detach()) == pytest.approx(want["size"] * 3 / 6, rel=1e-12)
    centernet_loss(preds, targets)
    assert seen["distributed"] is True


def test_centernet_loss_half_predictions():
    preds, targets = make_problem(5)
    half = {k: v.detach().half() for k, v in preds.items()}
    target32 = {k: v.float() if v.is_floating_point() else v for k, v in targets.items()}
    got = centernet_loss(half, target32)
    assert got.dtype == torch.float16
    want = centernet_loss({k: v.float() for k, v in half.items()}, target32)
    torch.testing.assert_close(got.float(), want, rtol=1e-3, atol=1e-3)


def test_centernet_loss_errors():
    preds, targets = make_problem()
    with pytest.raises(ValueError, match=r"predictions: missing keys \['offset'\]"):
        centernet_loss({"heatmap": preds["heatmap"], "size": preds["size"]}, targets)
    with pytest.raises(TypeError, match="predictions must be a dict with keys"):
        centernet_loss(preds["heatmap"], targets)
    bad = dict(preds, size=preds["size"][:, :1])
    with pytest.raises(
        ValueError,
        match=r"predictions\['size'\]: expected shape \[2, 2, 8, 12\], got \[2, 1, 8, 12\]",
    ):
        centernet_loss(bad, targets)
    bad_t = dict(targets, heatmap=targets["heatmap"][:, :2])
    with pytest.raises(
        ValueError,
        match=r"targets\['heatmap'\]: expected shape \[2, 3, 8, 12\], got \[2, 2, 8, 12\]",
    ):
        centernet_loss(preds, bad_t)
    no_weight = {k: v for k, v in targets.items() if k != "weight"}
    with pytest.raises(ValueError, match=r"targets: missing keys \['weight'\]"):
        centernet_loss(preds, no_weight)
    with pytest.raises(
        ValueError,
        match=r"predictions\['heatmap'\]: expected shape \[B, C, H, W\], got \[3, 8, 12\]",
    ):
        centernet_loss(dict(preds, heatmap=preds["heatmap"][0]), targets)
