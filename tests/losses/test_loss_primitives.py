"""The loss primitives: sigmoid focal, the IoU family, negative_prob and reduce_loss."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from _references import iou_family_reference
from detloss._kernels import reference_path
from detloss.losses._reduction import reduce_loss
from detloss.losses.classification import negative_prob
from detloss.losses.focal import SigmoidFocalLoss, sigmoid_focal_loss
from detloss.losses.iou import ciou_loss, diou_loss, giou_loss, iou_loss

# Element-wise values: the primitives' former default, reduction="none".
IOU_LOSSES = {
    name: functools.partial(fn, reduction="none")
    for name, fn in {
        "iou": iou_loss,
        "giou": giou_loss,
        "diou": diou_loss,
        "ciou": ciou_loss,
    }.items()
}


# --------------------------------------------------------------------------------------
# slow references


def focal_reference(x: float, t: float, alpha: float | None, gamma: float) -> float:
    p = 1 / (1 + math.exp(-x))
    bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    pt = p * t + (1 - p) * (1 - t)
    weight = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    return weight * (1 - pt) ** gamma * bce


def random_xyxy(gen: torch.Generator, n: int, dtype=torch.float64) -> torch.Tensor:
    xy = 4 * torch.rand(n, 2, generator=gen, dtype=dtype)
    wh = 0.1 + 2 * torch.rand(n, 2, generator=gen, dtype=dtype)
    return torch.cat((xy, xy + wh), dim=-1)


def xyxy_to(boxes: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt == "xywh":
        return torch.cat((boxes[..., :2], boxes[..., 2:] - boxes[..., :2]), dim=-1)
    if fmt == "cxcywh":
        return torch.cat(
            ((boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]), dim=-1
        )
    return boxes


# --------------------------------------------------------------------------------------
# sigmoid focal loss


@pytest.mark.parametrize(
    "logit, target, expected",
    [
        (0, 1, 0.0433217),
        (0, 0, 0.1299651),
        (2, 1, 4.50891e-4),
        (-2, 1, 0.4125195),
        (2, 0, 1.2375586),
    ],
)
def test_focal_hand_checked(logit, target, expected):
    loss = sigmoid_focal_loss(
        torch.tensor([float(logit)]), torch.tensor([float(target)]), reduction="none"
    )
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


@pytest.mark.parametrize(
    "alpha, gamma", [(0.25, 2.0), (None, 2.0), (0.6, 0.0), (0.25, 0.5), (None, 3.0)]
)
def test_focal_matches_slow_formula(alpha, gamma):
    gen = torch.Generator().manual_seed(0)
    x = 4 * torch.randn(5, 7, generator=gen, dtype=torch.float64)
    t = torch.rand(5, 7, generator=gen, dtype=torch.float64)  # soft targets too
    t[0] = (t[0] > 0.5).double()
    got = sigmoid_focal_loss(x, t, alpha, gamma, reduction="none")
    expected = torch.tensor(
        [
            [focal_reference(a, b, alpha, gamma) for a, b in zip(r, s)]
            for r, s in zip(x.tolist(), t.tolist())
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-14)
    assert torch.allclose(sigmoid_focal_loss(x, t, alpha, gamma, "sum"), expected.sum())
    assert torch.allclose(sigmoid_focal_loss(x, t, alpha, gamma, "mean"), expected.mean())


def test_focal_gamma_zero_no_alpha_is_bce():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, generator=gen)
    t = (torch.rand(20, generator=gen) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
    assert torch.allclose(sigmoid_focal_loss(x, t, alpha=None, gamma=0.0, reduction="none"), bce)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 0.99])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_focal_small_gamma_saturated_logits_have_finite_gradients(gamma, dtype):
    # p_t == 1 exactly in float32 from |x| ~ 17 on: d(1 - p_t)^gamma is infinite there.
    x = torch.tensor(
        [17.0, -17.0, 40.0, -40.0, 200.0, -200.0, 1.0], dtype=dtype, requires_grad=True
    )
    t = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=dtype)
    loss = sigmoid_focal_loss(x, t, gamma=gamma, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    assert loss[:6].abs().max() < 1e-6  # well classified: (almost) nothing to learn
    # Also the opposite, badly classified saturation (loss ~ |x|).
    y = torch.tensor([-200.0, 200.0], dtype=dtype, requires_grad=True)
    bad = sigmoid_focal_loss(
        y, torch.tensor([1.0, 0.0], dtype=dtype), alpha=None, gamma=gamma, reduction="none"
    )
    bad.sum().backward()
    assert torch.allclose(bad, torch.tensor([200.0, 200.0], dtype=dtype))
    assert torch.isfinite(y.grad).all()


def test_focal_mean_over_nothing_is_a_zero_in_the_graph():
    x = torch.zeros(0, 3, requires_grad=True)
    loss = sigmoid_focal_loss(x, torch.zeros(0, 3), reduction="mean")
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert x.grad.shape == (0, 3)
    assert SigmoidFocalLoss()(x, torch.zeros(0, 3)).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_focal_half_inputs_are_computed_in_float32(dtype):
    gen = torch.Generator().manual_seed(2)
    x = (3 * torch.randn(50, generator=gen)).to(dtype)
    t = (torch.rand(50, generator=gen) > 0.7).to(dtype)
    got = sigmoid_focal_loss(x, t, reduction="none")
    assert got.dtype == dtype
    expected = sigmoid_focal_loss(x.float(), t.float(), reduction="none")
    assert torch.allclose(got.float(), expected.to(dtype).float())
    mean = sigmoid_focal_loss(x, t, reduction="mean")
    assert torch.allclose(mean.float(), expected.mean(), rtol=1e-2)


def test_focal_integer_inputs():
    got = sigmoid_focal_loss(torch.tensor([0, 2]), torch.tensor([1, 0]), reduction="none")
    assert got.dtype == torch.float32
    assert torch.allclose(got, torch.tensor([0.0433217, 1.2375586]), rtol=1e-5)


@pytest.mark.parametrize(
    "alpha, gamma", [(0.25, 2.0), (None, 1.5), (0.3, 0.5), (0.25, 1.0), (0.4, 3.0)]
)
def test_focal_gradcheck(alpha, gamma):
    # gamma >= 1 runs the hand-written backward, gamma < 1 autograd through the clamp.
    gen = torch.Generator().manual_seed(3)
    x = (2 * torch.randn(12, generator=gen, dtype=torch.float64)).requires_grad_()
    t = torch.rand(12, generator=gen, dtype=torch.float64)
    t[:4] = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: sigmoid_focal_loss(v, t, alpha, gamma, "sum"), (x,))


def torchvision_focal(inputs, targets, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss (reduction "none"), transcribed."""
    p = torch.sigmoid(inputs)
    ce_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        inputs, targets, reduction="none"
    )
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 1.0), (0.5, 2.5), (0.1, 0.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_focal_equals_torchvision_bit_for_bit_with_its_gradient(monkeypatch, alpha, gamma, dtype):

    gen = torch.Generator().manual_seed(4)
    x = (4 * torch.randn(6, 50, generator=gen, dtype=dtype)).requires_grad_()
    t = torch.rand(6, 50, generator=gen, dtype=dtype)
    t[:3] = (t[:3] > 0.8).to(dtype)  # binary rows and soft rows
    want = torchvision_focal(x, t, alpha, gamma)
    (grad_want,) = torch.autograd.grad(want.sum(), x)
    ours_alpha = None if alpha < 0 else alpha
    for forced in (False, True):
        with reference_path(forced):
            got = sigmoid_focal_loss(x, t, ours_alpha, gamma, reduction="none")
        assert torch.equal(got, want)
        (grad,) = torch.autograd.grad(got.sum(), x)
        rtol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(grad, grad_want, rtol=rtol, atol=rtol * 1e-2)


def test_focal_module_equals_function():
    gen = torch.Generator().manual_seed(4)
    x, t = torch.randn(4, 5, generator=gen), (torch.rand(4, 5, generator=gen) > 0.5).float()
    for reduction in ("none", "mean", "sum"):
        module = SigmoidFocalLoss(alpha=0.4, gamma=1.0, reduction=reduction)
        assert torch.equal(module(x, t), sigmoid_focal_loss(x, t, 0.4, 1.0, reduction))


def test_focal_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(
        ValueError, match=r"targets: expected shape \[2, 3\] \(the inputs'\), got \[3, 2\]"
    ):
        sigmoid_focal_loss(x, torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\] or None, got 1.5"):
        sigmoid_focal_loss(x, x, alpha=1.5)
    with pytest.raises(ValueError, match="gamma must be >= 0, got -1"):
        sigmoid_focal_loss(x, x, gamma=-1)
    with pytest.raises(
        ValueError, match="reduction must be one of 'none', 'mean', 'sum', got 'avg'"
    ):
        sigmoid_focal_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match=r"reduction must be one of .* got 'elementwise_mean'"):
        SigmoidFocalLoss(reduction="elementwise_mean")
    with pytest.raises(TypeError, match=r"inputs must be a torch.Tensor, got list"):
        sigmoid_focal_loss([0.0], torch.zeros(1))
    with pytest.raises(TypeError, match=r"targets must be a torch.Tensor, got float"):
        sigmoid_focal_loss(torch.zeros(1), 1.0)


# --------------------------------------------------------------------------------------
# IoU family

HAND = [
    # box 1, box 2, IoU, GIoU loss, DIoU loss, CIoU loss (REFERENCES.md)
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1.0793651, 0.9682540, 0.9682540),
    ([0, 0, 1, 1], [1, 1, 2, 2], 0.0, 1.5, 1.25, 1.25),
    ([0, 0, 1, 1], [2, 0, 3, 1], 0.0, 1.3333333, 1.4, 1.4),
    ([0, 0, 4, 2], [1, 0, 3, 4], 1 / 3, 0.9166667, 0.6979167, 0.7316683),
]


@pytest.mark.parametrize("box1, box2, iou, giou, diou, ciou", HAND)
def test_iou_losses_hand_checked(box1, box2, iou, giou, diou, ciou):
    a, b = torch.tensor(box1, dtype=torch.float64), torch.tensor(box2, dtype=torch.float64)
    expected = {"iou": 1 - iou, "giou": giou, "diou": diou, "ciou": ciou}
    for name, fn in IOU_LOSSES.items():
        assert math.isclose(fn(a, b).item(), expected[name], abs_tol=1e-6), name
        assert math.isclose(fn(b, a).item(), expected[name], abs_tol=1e-6), name  # symmetric


@pytest.mark.parametrize("name", list(IOU_LOSSES))
@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_iou_losses_match_slow_formula(name, fmt):
    gen = torch.Generator().manual_seed(5)
    a, b = random_xyxy(gen, 40), random_xyxy(gen, 40)
    b[:5] = a[:5] + 0.05  # a few heavy overlaps
    expected = torch.tensor(
        [1 - iou_family_reference(p, q, name) for p, q in zip(a.tolist(), b.tolist())],
        dtype=torch.float64,
    )
    got = IOU_LOSSES[name](xyxy_to(a, fmt), xyxy_to(b, fmt), box_format=fmt)
    # The 1e-7 eps of the CIoU aspect term moves it by ~1e-8 at these sizes.
    assert torch.allclose(got, expected, rtol=0, atol=1e-12 if name != "ciou" else 1e-7)


@pytest.mark.parametrize("name", list(IOU_LOSSES))
def test_iou_losses_broadcast_and_reduce(name):
    gen = torch.Generator().manual_seed(6)
    a, b = random_xyxy(gen, 3), random_xyxy(gen, 4)
    fn = IOU_LOSSES[name]
    pairwise = fn(a[:, None, :], b[None, :, :])
    assert pairwise.shape == (3, 4)
    assert torch.allclose(pairwise[1, 2], fn(a[1], b[2]))
    assert torch.allclose(fn(a, b[:3], reduction="sum"), fn(a, b[:3]).sum())
    assert torch.allclose(fn(a, b[:3], reduction="mean"), fn(a, b[:3]).mean())
    assert torch.allclose(fn(a, a), torch.zeros(3, dtype=torch.float64), atol=1e-12)


box_coordinate = st.floats(-5, 5, allow_nan=False, width=32)


@given(
    a=st.lists(box_coordinate, min_size=4, max_size=4),
    b=st.lists(box_coordinate, min_size=4, max_size=4),
)
def test_iou_losses_ranges_and_symmetry(a, b):
    """Any boxes, inverted and degenerate included: finite values within their ranges."""
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    upper = {"iou": 1.0, "giou": 2.0, "diou": 2.0, "ciou": 3.0}
    for name, fn in IOU_LOSSES.items():
        value = fn(ta, tb)
        assert torch.isfinite(value)
        assert -1e-9 <= value.item() <= upper[name] + 1e-9, name
        if name != "ciou":  # CIoU's aspect weight alpha is not symmetric in eps
            assert math.isclose(value.item(), fn(tb, ta).item(), abs_tol=1e-9)


DEGENERATE = torch.tensor(
    [
        [0.5, 0.5, 0.5, 0.5],  # a point
        [0.2, 0.1, 0.2, 0.9],  # a vertical line
        [0.6, 0.2, 0.4, 0.1],  # inverted
        [0.0, 0.0, 0.0, 0.0],  # a point at the origin
        [0.0, 0.0, 1.0, 1.0],
    ],
    dtype=torch.float64,
)


@pytest.mark.parametrize("name", list(IOU_LOSSES))
def test_iou_losses_degenerate_boxes_finite_gradients(name):
    pred = DEGENERATE.clone().requires_grad_()
    target = DEGENERATE.flip(0)
    loss = IOU_LOSSES[name](pred, target) + IOU_LOSSES[name](pred, DEGENERATE)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("name", ["iou", "giou", "diou"])
def test_iou_losses_gradcheck(name):
    gen = torch.Generator().manual_seed(7)
    a = random_xyxy(gen, 6).requires_grad_()
    b = random_xyxy(gen, 6)
    b[:2] = a[:2].detach() + 0.3
    assert torch.autograd.gradcheck(lambda x: IOU_LOSSES[name](x, b).sum(), (a,))


def test_ciou_gradient_treats_alpha_as_a_constant():
    """The CIoU paper (and torchvision) stop the gradient through alpha; a float64 torch
    reference written here with alpha detached must give the same gradient."""
    gen = torch.Generator().manual_seed(8)
    a = random_xyxy(gen, 8).requires_grad_()
    b = random_xyxy(gen, 8)
    b[:3] = a[:3].detach() + 0.2

    def reference(p, q):
        ix = (torch.minimum(p[:, 2], q[:, 2]) - torch.maximum(p[:, 0], q[:, 0])).clamp(min=0)
        iy = (torch.minimum(p[:, 3], q[:, 3]) - torch.maximum(p[:, 1], q[:, 1])).clamp(min=0)
        wp, hp, wq, hq = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1], q[:, 2] - q[:, 0], q[:, 3] - q[:, 1]
        inter = ix * iy
        iou = inter / (wp * hp + wq * hq - inter)
        cw = torch.maximum(p[:, 2], q[:, 2]) - torch.minimum(p[:, 0], q[:, 0])
        ch = torch.maximum(p[:, 3], q[:, 3]) - torch.minimum(p[:, 1], q[:, 1])
        rho2 = (
            (p[:, 0] + p[:, 2] - q[:, 0] - q[:, 2]) ** 2
            + (p[:, 1] + p[:, 3] - q[:, 1] - q[:, 3]) ** 2
        ) / 4
        v = 4 / math.pi**2 * (torch.atan(wq / hq) - torch.atan(wp / hp)) ** 2
        alpha = (v / (1 - iou + v)).detach()
        return 1 - iou + rho2 / (cw**2 + ch**2) + alpha * v

    (grad,) = torch.autograd.grad(ciou_loss(a, b, "sum"), a)
    (expected,) = torch.autograd.grad(reference(a, b).sum(), a)
    assert torch.allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_iou_losses_half_inputs(dtype):
    gen = torch.Generator().manual_seed(9)
    a, b = random_xyxy(gen, 10, torch.float32), random_xyxy(gen, 10, torch.float32)
    for name, fn in IOU_LOSSES.items():
        got = fn(a.to(dtype), b.to(dtype))
        assert got.dtype == dtype
        expected = fn(a.to(dtype).float(), b.to(dtype).float())
        assert torch.allclose(got.float(), expected, atol=1e-2), name


def test_iou_losses_integer_boxes():
    a = torch.tensor([[0, 0, 2, 2]])
    b = torch.tensor([[1, 1, 3, 3]])
    got = giou_loss(a, b, reduction="none")
    assert got.dtype == torch.float32
    assert torch.allclose(got, torch.tensor([1.0793651]))


@pytest.mark.parametrize("name", list(IOU_LOSSES))
def test_iou_losses_mean_over_nothing(name):
    a = torch.zeros(0, 4, requires_grad=True)
    loss = IOU_LOSSES[name](a, torch.zeros(0, 4), reduction="mean")
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert a.grad.shape == (0, 4)


@pytest.mark.parametrize("name", list(IOU_LOSSES))
def test_iou_losses_errors(name):
    fn = IOU_LOSSES[name]
    box = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"boxes1: expected shape \[\.\.\., 4\], got \[2, 3\]"):
        fn(torch.zeros(2, 3), box)
    with pytest.raises(ValueError, match=r"boxes2: expected shape \[\.\.\., 4\], got \[5\]"):
        fn(box, torch.zeros(5))
    with pytest.raises(
        ValueError, match=r"expected broadcastable shapes \[\.\.\., 4\], got \[2, 4\] and \[3, 4\]"
    ):
        fn(box, torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"box_format must be one of .* got 'xxyy'"):
        fn(box, box, box_format="xxyy")
    with pytest.raises(
        ValueError, match="reduction must be one of 'none', 'mean', 'sum', got 'max'"
    ):
        fn(box, box, reduction="max")
    with pytest.raises(TypeError, match=r"boxes1 must be a torch.Tensor, got list"):
        fn([0.0, 0.0, 1.0, 1.0], box)


# --------------------------------------------------------------------------------------
# negative_prob


def test_negative_prob_values():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [1.0, 2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    got = negative_prob(logits, labels, reduction="none")
    e = math.e
    expected = torch.tensor([-0.5, -0.75, -(e**2) / (e + e**2)], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-15)
    assert torch.allclose(negative_prob(logits, labels, "sum"), expected.sum())
    assert torch.allclose(negative_prob(logits, labels, "mean"), expected.mean())
    batched = negative_prob(logits.expand(2, 3, 2), labels.expand(2, 3), reduction="none")
    assert batched.shape == (2, 3) and torch.allclose(batched[1], expected)


def test_negative_prob_gradcheck_and_empty_mean():
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (5,), generator=gen)
    assert torch.autograd.gradcheck(lambda v: negative_prob(v, labels, "sum"), (x,))
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = negative_prob(empty, torch.zeros(0, dtype=torch.long), "mean")
    assert loss.item() == 0.0 and loss.grad_fn is not None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_negative_prob_half_inputs(dtype):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, 5, generator=gen).to(dtype)
    labels = torch.randint(0, 5, (6,), generator=gen)
    got = negative_prob(x, labels, reduction="none")
    assert got.dtype == dtype
    assert torch.allclose(
        got.float(), negative_prob(x.float(), labels, reduction="none"), atol=1e-2
    )
    assert negative_prob(torch.tensor([[1, 1]]), torch.tensor([0])).dtype == torch.float32


def test_negative_prob_errors():
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"labels: expected shape \[3\], got \[3, 1\]"):
        negative_prob(logits, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(TypeError, match=r"labels must be an integer tensor, got torch.float32"):
        negative_prob(logits, torch.zeros(3))
    with pytest.raises(ValueError, match=r"logits: expected shape \[\.\.\., C\], got \[\]"):
        negative_prob(torch.tensor(1.0), torch.tensor(0))
    with pytest.raises(TypeError, match=r"labels must be a torch.Tensor, got list"):
        negative_prob(logits, [0, 0, 0])
    with pytest.raises(ValueError, match=r"reduction must be one of .* got 'mean '"):
        negative_prob(logits, torch.zeros(3, dtype=torch.long), "mean ")


# --------------------------------------------------------------------------------------
# reduce_loss


def test_reduce_loss():
    x = torch.tensor([1.0, 2.0, 6.0], requires_grad=True)
    assert reduce_loss(x, "none") is x
    assert reduce_loss(x, "sum").item() == 9.0
    assert reduce_loss(x, "mean").item() == 3.0
    empty = torch.zeros(0, requires_grad=True) * 2
    for reduction in ("mean", "sum"):
        out = reduce_loss(empty, reduction)
        assert out.item() == 0.0 and out.grad_fn is not None and not torch.isnan(out)


@pytest.mark.parametrize("bad", ["avg", "Mean", "", None, 1])
def test_reduce_loss_errors_quote_the_value(bad):
    with pytest.raises(
        ValueError, match=f"reduction must be one of 'none', 'mean', 'sum', got {bad!r}"
    ):
        reduce_loss(torch.zeros(2), bad)
