"""Ugly inputs for every loss, function and module: wrong arguments, NaN / Inf, degenerate,
inverted and huge boxes, empty images, all-padding batches, single predictions, ties,
half precision and bfloat16 autocast.

The rule (see ``_fuzz.check_contract``): a loss returns or raises ValueError / TypeError;
finite inputs give a finite value and finite gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
from _fuzz import (
    FLOAT_DTYPES,
    NOT_TENSORS,
    box_targets,
    boxes,
    check_complex_rejected,
    check_contract,
    check_grads,
    check_wrong_argument,
    counts,
    is_finite,
    padded_form,
    rejection,
    values,
    wrong_tensors,
    wrong_values,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from detloss.anchors import ssd_priors
from detloss.heatmap import centernet_targets
from detloss.losses.centernet import (
    CenterNetLoss,
    GaussianFocalLoss,
    GaussianFocalLossWithLogits,
    centernet_loss,
    gaussian_focal_loss,
    gaussian_focal_loss_with_logits,
)
from detloss.losses.classification import negative_prob
from detloss.losses.detection import DetectionLoss, detection_loss
from detloss.losses.focal import SigmoidFocalLoss, sigmoid_focal_loss
from detloss.losses.iou import ciou_loss, diou_loss, giou_loss, iou_loss
from detloss.losses.points import PointLoss, point_loss
from detloss.losses.ranking import (
    ALRPLoss,
    APLoss,
    RankSortLoss,
    alrp_loss,
    ap_loss,
    rank_sort_loss,
)
from detloss.losses.regression import smooth_l1_loss
from detloss.losses.ssd import MultiBoxLoss, multibox_loss
from detloss.match.matching import Matching
from detloss.match.modules import HungarianMatcher, MaxIoUMatcher
from detloss.match.sinkhorn import SinkhornMatcher
from detloss.match.targets import box_targets as padded_box_targets

REDUCTIONS = ["none", "mean", "sum"]
IOU_LOSSES = [iou_loss, giou_loss, diou_loss, ciou_loss]
sizes = st.integers(0, 5)


def leaf(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a leaf that records its gradient (floating dtypes only)."""
    return x.clone().requires_grad_(x.is_floating_point())


def assert_finite_result(out: object, *leaves: torch.Tensor) -> None:
    """A returned loss from finite inputs: finite values, finite gradients.

    float16 results are returned in float16, whose range ends at 65504: a loss of huge
    inputs may round to inf there (never to NaN), so only float16 is allowed to."""
    if out is None:
        return
    tensors = out if isinstance(out, tuple) else (out,)
    flat = [t for t in tensors if isinstance(t, torch.Tensor)]
    flat += [v for t in tensors if isinstance(t, dict) for v in t.values()]
    assert not any(torch.isnan(t).any() for t in flat), f"NaN loss from finite inputs: {flat}"
    wide = [t for t in flat if t.dtype != torch.float16]
    assert is_finite(*wide), f"non-finite loss from finite inputs: {wide}"
    check_grads(out, *[x for x in leaves if x.dtype != torch.float16])
    for x in leaves:
        if x.dtype == torch.float16 and x.grad is not None:
            assert not torch.isnan(x.grad).any(), "NaN gradient from finite inputs"


# --------------------------------------------------------------------------------------
# element-wise primitives


@given(
    data=st.data(),
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    dtype=st.sampled_from(FLOAT_DTYPES),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_focal_smooth_l1_and_gaussian_focal(data, shape, dtype, reduction):
    x = leaf(data.draw(values(shape, dtype=dtype)))
    soft = data.draw(values(shape, dtype=dtype, low=0.0, high=1.0)).clamp(0, 1)
    hard = soft.round()
    alpha = data.draw(st.sampled_from([None, 0.0, 0.25, 1.0]))
    gamma = data.draw(st.sampled_from([0.0, 0.5, 2.0]))
    prob = leaf(data.draw(values(shape, dtype=dtype, low=0.0, high=1.0)).clamp(0, 1))
    beta = data.draw(st.sampled_from([0.0, 1 / 9, 1.0]))
    calls = [
        (lambda: sigmoid_focal_loss(x, soft, alpha, gamma, reduction), x),
        (lambda: SigmoidFocalLoss(alpha, gamma, reduction)(x, hard), x),
        (lambda: smooth_l1_loss(x, soft, beta, reduction), x),
        (lambda: gaussian_focal_loss(prob, soft, reduction=reduction), prob),
        (lambda: gaussian_focal_loss_with_logits(x, soft, reduction=reduction), x),
        (lambda: GaussianFocalLossWithLogits(reduction=reduction)(x, hard), x),
        (lambda: GaussianFocalLoss(reduction=reduction)(prob, soft), prob),
    ]
    for call, grad_leaf in calls:
        grad_leaf.grad = None
        out = check_contract(call, True)
        assert out is not None and out.dtype == dtype
        assert out.shape == (tuple(shape) if reduction == "none" else ())
        assert_finite_result(out, grad_leaf)
        assert (out >= 0).all() or out.numel() == 0


@pytest.mark.parametrize("fn", IOU_LOSSES)
@given(
    data=st.data(),
    n=sizes,
    reduction=st.sampled_from(REDUCTIONS),
    box_format=st.sampled_from(["xyxy", "xywh", "cxcywh"]),
)
def test_iou_losses_ugly_boxes(fn, data, n, reduction, box_format):
    a = leaf(data.draw(boxes((n,))))
    b = data.draw(boxes((n,), dtype=a.dtype))
    out = check_contract(lambda: fn(a, b, reduction, box_format), True)
    assert out is not None and out.dtype == a.dtype
    assert_finite_result(out, a)
    if reduction != "sum":  # each element in [0, 3), so their mean too
        assert (out >= -1e-6).all() and (out <= 3 + 1e-6).all()


@given(data=st.data(), n=sizes, c=st.integers(1, 4), reduction=st.sampled_from(REDUCTIONS))
def test_negative_prob(data, n, c, reduction):
    logits = leaf(data.draw(values((n, c))))
    labels = torch.randint(0, c, (n,))
    out = check_contract(lambda: negative_prob(logits, labels, reduction), True)
    assert_finite_result(out, logits)
    assert (out <= 0).all() and (out >= -1).all()


# --------------------------------------------------------------------------------------
# DetectionLoss


def _cost_settings(background: str) -> dict[str, str]:
    """The matcher's class cost in the loss's logit convention."""
    kind = "focal" if background == "none" else "softmax"
    return {"background": background, "class_cost_kind": kind}


MATCHERS = {
    "hungarian": lambda background="last": HungarianMatcher(
        background=background, class_cost_kind=_cost_settings(background)["class_cost_kind"]
    ),
    "max_iou": lambda background="last": MaxIoUMatcher(0.5, 0.4),
    # tol=0: a fixed number of iterations, no convergence warning.
    "sinkhorn": lambda background="last": SinkhornMatcher(
        max_iter=20, tol=0.0, **_cost_settings(background)
    ),
}
CLS_BY_BACKGROUND = {
    "last": ["ce", "negative_prob", "focal", "bce"],
    "first": ["ce", "focal"],
    "none": ["focal", "bce"],
}
ALL_LOC = {"l1": 5.0, "smooth_l1": 1.0, "iou": 1.0, "giou": 2.0, "diou": 1.0, "ciou": 1.0}


@st.composite
def detection_problem(draw):
    b = draw(st.integers(1, 3))
    m = draw(st.integers(0, 5))  # 0 and 1: no prediction, a single prediction
    c = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    background = draw(st.sampled_from(list(CLS_BY_BACKGROUND)))
    k = c if background == "none" else c + 1
    outputs = {
        "pred_logits": leaf(draw(values((b, m, k), dtype=dtype))),
        "pred_boxes": leaf(draw(boxes((b, m), dtype=dtype))),
    }
    targets = draw(box_targets(b, c, dtype=dtype))
    if draw(st.booleans()):
        targets = draw(padded_form(targets))
    settings_ = {
        "cls_loss": draw(st.sampled_from(CLS_BY_BACKGROUND[background])),
        "background": background,
        "hard_negative_ratio": draw(st.sampled_from([None, 1.0, 3.0])),
        "reduction": draw(st.sampled_from(REDUCTIONS)),
        "loc_losses": draw(st.sampled_from([None, ALL_LOC, {}])),
    }
    return outputs, targets, settings_


@settings(max_examples=30)
@given(problem=detection_problem(), matcher=st.sampled_from(list(MATCHERS)), aux=st.booleans())
def test_detection_loss_module(problem, matcher, aux):
    outputs, targets, kwargs = problem
    if aux:
        outputs["aux_outputs"] = [
            {k: leaf(v.detach().flip(1)) for k, v in outputs.items() if k.startswith("pred")}
        ]
    loss = DetectionLoss(MATCHERS[matcher](kwargs["background"]), **kwargs)
    out = check_contract(lambda: loss(outputs, targets, return_terms=True), True)
    assert out is not None, "finite, well-formed inputs must not be rejected"
    total, _ = out
    b = outputs["pred_logits"].shape[0]
    assert total.shape == ((b,) if kwargs["reduction"] == "none" else ())
    leaves = [outputs["pred_logits"], outputs["pred_boxes"]]
    leaves += [v for layer in outputs.get("aux_outputs", []) for v in layer.values()]
    assert_finite_result(out, *leaves)


@settings(max_examples=25)
@given(problem=detection_problem(), data=st.data())
def test_detection_loss_function_random_matchings(problem, data):
    """Any matching (-2 ignored, -1 background, real slots) and its soft plan."""
    outputs, targets, kwargs = problem
    b, m = outputs["pred_logits"].shape[:2]
    mask = padded_box_targets(targets, b, torch.device("cpu"))["mask"]
    n = mask.shape[1]
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    p2t = torch.randint(-2, max(n, 1), (b, m), generator=g)
    real = mask.gather(1, p2t.clamp(min=0)) if n else torch.zeros(b, m, dtype=torch.bool)
    p2t = torch.where((p2t >= 0) & ~real, -1, p2t)
    matching = Matching(p2t, mask)
    if data.draw(st.booleans()):
        plan = torch.rand(b, m, n + 1, generator=g) * data.draw(st.sampled_from([0.0, 1.0, 1e6]))
        matching = Matching(p2t, mask, plan)
    out = check_contract(
        lambda: detection_loss(outputs, targets, matching, return_terms=True, **kwargs), True
    )
    assert out is not None
    assert_finite_result(out, outputs["pred_logits"], outputs["pred_boxes"])


@settings(max_examples=25)
@given(data=st.data(), matcher=st.sampled_from(list(MATCHERS)))
def test_detection_loss_nonfinite_predictions(data, matcher):
    """NaN / Inf logits or boxes: the matchers' cost validation rejects them (ValueError),
    or, where no validation applies, a value comes back (possibly NaN); nothing else."""
    b, m, c = 2, 3, 2
    outputs = {
        "pred_logits": data.draw(values((b, m, c + 1), finite=False)),
        "pred_boxes": data.draw(boxes((b, m))),
    }
    if data.draw(st.booleans()):
        outputs["pred_boxes"] = outputs["pred_boxes"].clone()
        outputs["pred_boxes"][0, 0, data.draw(st.integers(0, 3))] = data.draw(
            st.sampled_from([math.nan, math.inf, -math.inf])
        )
    targets = data.draw(box_targets(b, c))
    check_contract(lambda: DetectionLoss(MATCHERS[matcher]())(outputs, targets), False)


# --------------------------------------------------------------------------------------
# MultiBoxLoss

# 4 x 4 and 2 x 2 cells with 4 priors each: 80 priors.
PRIORS = ssd_priors(64, (4, 2), (16, 32), (16, 32), (32, 48), ((2,), (2,)))


@settings(max_examples=30)
@given(
    data=st.data(),
    b=st.integers(0, 3),
    c=st.integers(2, 4),
    dtype=st.sampled_from(FLOAT_DTYPES),
    threshold=st.sampled_from([0.0, 0.5, 1.0]),
    min_negatives=st.sampled_from([0, 3]),
    padded=st.booleans(),
)
def test_multibox_loss(data, b, c, dtype, threshold, min_negatives, padded):
    p = PRIORS.shape[0]
    loc = leaf(data.draw(values((b, p, 4), dtype=dtype)))
    conf = leaf(data.draw(values((b, p, c), dtype=dtype)))
    targets = data.draw(box_targets(b, c - 1, dtype=dtype)) if b else []
    if padded and b:
        targets = data.draw(padded_form(targets))
    priors = PRIORS.to(dtype)
    kwargs = {"pos_threshold": threshold, "min_negatives": min_negatives}
    out = check_contract(
        lambda: multibox_loss(loc, conf, priors, targets, return_terms=True, **kwargs), True
    )
    if b:
        assert out is not None
    assert_finite_result(out, loc, conf)
    if out is not None:
        module = MultiBoxLoss(c, **kwargs)(loc.detach(), conf.detach(), priors, targets)
        assert torch.equal(module, out[0])


@settings(max_examples=20)
@given(data=st.data(), where=st.sampled_from(["loc", "conf", "targets"]))
def test_multibox_loss_nonfinite_inputs(data, where):
    """Validated (the default on the CPU), NaN / inf in ``loc``, ``conf`` or a real target
    box is a ValueError naming it; with ``validate=False`` (no host sync, the default on a
    GPU) a NaN prediction may reach the loss, and nothing else happens."""
    p = PRIORS.shape[0]
    loc = data.draw(values((2, p, 4), dtype=torch.float32))
    conf = data.draw(values((2, p, 3), dtype=torch.float32))
    targets = [
        {"boxes": torch.tensor([[0.1, 0.1, 0.5, 0.6]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[0.2, 0.3, 0.4, 0.9]]), "labels": torch.tensor([0])},
    ]
    bad = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    index = data.draw(st.integers(0, p - 1))
    if where == "loc":
        loc[1, index, 2] = bad
    elif where == "conf":
        conf[0, index, 0] = bad
    else:
        targets[1]["boxes"][0, 3] = bad
    err = rejection(lambda: multibox_loss(loc, conf, PRIORS, targets))
    name = {"loc": "loc", "conf": "conf", "targets": "targets['boxes']"}[where]
    assert isinstance(err, ValueError) and name in str(err) and "finite" in str(err), err
    if where != "targets":
        unscanned = check_contract(
            lambda: multibox_loss(loc, conf, PRIORS, targets, validate=False), False
        )
        assert unscanned is not None


# --------------------------------------------------------------------------------------
# PointLoss


@settings(max_examples=30)
@given(
    data=st.data(),
    b=st.integers(0, 3),
    m=st.integers(0, 5),
    head=st.sampled_from(["sigmoid", "softmax"]),
    tau=st.sampled_from([0.0, 0.05, 1e3]),
    dtype=st.sampled_from(FLOAT_DTYPES),
)
def test_point_loss(data, b, m, head, tau, dtype):
    points = leaf(data.draw(values((b, m, 2), dtype=dtype)))
    logits = leaf(data.draw(values((b, m, 2) if head == "softmax" else (b, m), dtype=dtype)))
    targets = [data.draw(values((n, 2), dtype=dtype)) for n in data.draw(counts(b))]
    form = data.draw(st.sampled_from(["list", "dicts", "padded"]))
    if form == "dicts":
        targets = [{"points": t} for t in targets]
    elif form == "padded" and b:
        targets = data.draw(padded_form([{"points": t} for t in targets], keys=("points",)))
    out = check_contract(
        lambda: point_loss(points, logits, targets, tau=tau, head=head, return_terms=True), True
    )
    assert_finite_result(out, points, logits)
    if out is not None and b:
        module = PointLoss(tau=tau, head=head)
        assert torch.equal(module(points.detach(), logits.detach(), targets), out[0])


@given(data=st.data(), head=st.sampled_from(["sigmoid", "softmax"]))
def test_point_loss_nonfinite_inputs_are_rejected(data, head):
    """The matcher validates coordinates and logits: NaN / Inf is a ValueError naming them."""
    b, m = 2, 4
    points = data.draw(values((b, m, 2)))
    logits = data.draw(values((b, m, 2) if head == "softmax" else (b, m)))
    which = data.draw(st.sampled_from(["pred_points", "pred_logits", "targets"]))
    bad = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    targets = [torch.ones(2, 2), torch.ones(1, 2)]
    if which == "pred_points":
        points = points.clone()
        points[1, 2, 0] = bad
    elif which == "pred_logits":
        logits = logits.clone()
        logits.view(-1)[3] = bad
    else:
        targets[1] = torch.tensor([[0.0, bad]])
    err = rejection(lambda: point_loss(points, logits, targets, head=head))
    assert isinstance(err, ValueError), f"{which} with {bad}: expected a ValueError"
    assert "finite" in str(err)


# --------------------------------------------------------------------------------------
# CenterNet


@settings(max_examples=30)
@given(
    data=st.data(),
    b=st.integers(0, 2),
    c=st.integers(1, 3),
    hw=st.sampled_from([(1, 1), (3, 5), (8, 8)]),
    dtype=st.sampled_from(FLOAT_DTYPES),
    validate=st.booleans(),
)
def test_centernet_targets_and_loss(data, b, c, hw, dtype, validate):
    h, w = hw
    scale = data.draw(st.sampled_from([4.0 * min(h, w), 1e6]))
    objects = data.draw(box_targets(b, c, dtype=dtype, scale=scale)) if b else []
    box_tensor = torch.zeros(b, 0, 4, dtype=dtype)
    if b and max(len(t["labels"]) for t in objects):
        padded = data.draw(padded_form(objects))
        box_tensor, labels, mask = padded["boxes"], padded["labels"], padded["mask"]
    else:
        labels, mask = torch.zeros(b, 0, dtype=torch.long), torch.zeros(b, 0, dtype=torch.bool)
    targets = check_contract(
        lambda: centernet_targets(
            box_tensor, labels, target_mask=mask, num_classes=c, output_size=hw, validate=validate
        ),
        True,
    )
    if targets is None:
        return
    assert targets["weight"].sum() == targets["index_mask"].sum()
    predictions = {
        "heatmap": leaf(data.draw(values((b, c, h, w), dtype=dtype))),
        "size": leaf(data.draw(values((b, 2, h, w), dtype=dtype))),
        "offset": leaf(data.draw(values((b, 2, h, w), dtype=dtype))),
    }
    out = check_contract(lambda: centernet_loss(predictions, targets, return_terms=True), True)
    assert out is not None
    assert_finite_result(out, *predictions.values())
    module = CenterNetLoss()({k: v.detach() for k, v in predictions.items()}, targets)
    assert torch.equal(module, out[0])


def test_centernet_loss_nonfinite_predictions():
    """Validated (the default on the CPU), a NaN prediction is a ValueError naming it;
    ``validate=False`` (no host sync, the default on a GPU) lets it reach the loss: the
    documented behaviour of an unvalidated loss."""
    targets = centernet_targets(
        [{"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([0])}],
        num_classes=1,
        output_size=(4, 4),
    )
    predictions = {"heatmap": torch.zeros(1, 1, 4, 4), "size": torch.zeros(1, 2, 4, 4)}
    predictions["offset"] = torch.zeros(1, 2, 4, 4)
    predictions["heatmap"][0, 0, 3, 3] = math.nan
    err = rejection(lambda: centernet_loss(predictions, targets))
    assert isinstance(err, ValueError)
    assert (
        str(err) == "predictions['heatmap']: expected finite values, got nan at index [0, 0, 3, 3]"
    )
    assert torch.isnan(centernet_loss(predictions, targets, validate=False))


# --------------------------------------------------------------------------------------
# ranking losses


@st.composite
def ranking_problem(draw):
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    logits = leaf(draw(values(shape, dtype=dtype)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["mixed", "no_positive", "all_positive", "all_ignored"]))
    labels = torch.randint(-1, 2, shape, generator=g)
    if kind == "no_positive":
        labels = labels.clamp(max=0)
    elif kind == "all_positive":
        labels = torch.ones(shape, dtype=torch.long)
    elif kind == "all_ignored":
        labels = torch.full(shape, -1)
    delta = draw(st.sampled_from([1e-6, 0.5, 1.0, 1e3]))
    return logits, labels, delta


@settings(max_examples=30)
@given(problem=ranking_problem())
def test_ranking_losses(problem):
    logits, labels, delta = problem
    out = check_contract(lambda: ap_loss(logits, labels, delta), True)
    assert out is not None and 0 <= float(out.detach()) <= 1
    assert_finite_result(out, logits)
    assert torch.equal(APLoss(delta)(logits.detach(), labels), out)
    if logits.grad is not None and logits.dtype == torch.float64 and logits.numel():
        # The error-driven updates of AP-Loss sum to zero, up to the cancellation of the
        # float64 prefix sums over logits of size |x| measured in units of delta.
        scale = 1 + float(logits.detach().abs().max()) / delta
        assert abs(float(logits.grad.sum())) <= 1e-12 + 1e-14 * scale

    logits.grad = None
    reg = leaf(torch.rand(int((labels == 1).sum()), dtype=torch.float64))
    out = check_contract(lambda: alrp_loss(logits, labels, reg, delta), True)
    assert out is not None
    assert_finite_result(out, logits, reg)
    check_contract(lambda: ALRPLoss(delta)(logits.detach(), labels, reg.detach()), True)

    logits.grad = None
    iou = torch.where(labels == 1, torch.rand(labels.shape, dtype=torch.float64), labels.double())
    iou = torch.where(labels == 1, iou.clamp(min=1e-3), iou)
    out = check_contract(lambda: rank_sort_loss(logits, iou, delta), True)
    assert out is not None
    assert_finite_result(out, logits)
    check_contract(lambda: RankSortLoss(delta)(logits.detach(), iou), True)


@given(data=st.data(), n=st.integers(1, 6))
def test_ranking_losses_reject_nonfinite_logits(data, n):
    logits = data.draw(values((n,), finite=False))
    labels = torch.ones(n, dtype=torch.long)
    finite = bool(torch.isfinite(logits).all())
    for call in (
        lambda: ap_loss(logits, labels),
        lambda: alrp_loss(logits, labels, torch.zeros(n)),
        lambda: rank_sort_loss(logits, labels.double()),
    ):
        err = rejection(call)
        if not finite:
            assert isinstance(err, ValueError) and "logits" in str(err)
    # validate=False skips the scan: a value comes back, whatever it is.
    check_contract(lambda: ap_loss(logits, labels, validate=False), False)


# --------------------------------------------------------------------------------------
# bfloat16 autocast: float32 inputs, every loss inside the autocast region


@settings(max_examples=15)
@given(data=st.data())
def test_losses_under_bfloat16_autocast(data):
    b, m, c = 2, 4, 2
    logits = leaf(data.draw(values((b, m, c + 1), dtype=torch.float32)))
    pred = leaf(data.draw(boxes((b, m), dtype=torch.float32, scale=1.0)))
    targets = data.draw(box_targets(b, c, dtype=torch.float32, scale=1.0))
    points = leaf(data.draw(values((b, m, 2), dtype=torch.float32)))
    point_logits = leaf(data.draw(values((b, m), dtype=torch.float32)))
    point_targets = [data.draw(values((n, 2), dtype=torch.float32)) for n in (2, 0)]
    loc = leaf(data.draw(values((b, PRIORS.shape[0], 4), dtype=torch.float32)))
    conf = leaf(data.draw(values((b, PRIORS.shape[0], c + 1), dtype=torch.float32)))
    heat = leaf(data.draw(values((b, c, 4, 4), dtype=torch.float32)))
    cn_targets = centernet_targets(
        [{"boxes": t["boxes"].clamp(0, 1) * 15, "labels": t["labels"]} for t in targets],
        num_classes=c,
        output_size=(4, 4),
        validate=False,
    )
    outputs = {"pred_logits": logits, "pred_boxes": pred}
    ap_labels = (torch.arange(logits.numel()).view(logits.shape) % 3) - 1
    cn_predictions = {"heatmap": heat, "size": heat[:, :2], "offset": heat[:, :2]}
    calls = [
        (lambda: DetectionLoss(HungarianMatcher())(outputs, targets), (logits, pred)),
        (lambda: multibox_loss(loc, conf, PRIORS, targets), (loc, conf)),
        (lambda: point_loss(points, point_logits, point_targets), (points, point_logits)),
        (lambda: centernet_loss(cn_predictions, cn_targets), (heat,)),
        (lambda: ap_loss(logits, ap_labels), (logits,)),
        (lambda: sigmoid_focal_loss(logits, torch.zeros_like(logits), reduction="mean"), (logits,)),
        (lambda: giou_loss(pred, pred.flip(1), "mean"), (pred,)),
        (lambda: ciou_loss(pred, pred.flip(1), "mean"), (pred,)),
    ]
    for call, leaves in calls:
        for x in leaves:
            x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = check_contract(call, True)
        assert out is not None
        assert_finite_result(out, *leaves)


# --------------------------------------------------------------------------------------
# wrong arguments: one argument at a time replaced by a tensor of any rank, size and dtype,
# or by something that is not a tensor


def _valid_arguments():
    """Each loss with valid keyword arguments; replacing one must give a clear error."""
    x = torch.zeros(2, 3)
    boxes_ = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 3.0, 2.0]])
    det_targets = [{"boxes": boxes_[:1], "labels": torch.tensor([0])}] * 2
    outputs = {"pred_logits": torch.zeros(2, 3, 3), "pred_boxes": boxes_[:1].expand(2, 3, 4)}
    targets_cn = centernet_targets(
        [{"boxes": boxes_ * 4, "labels": torch.tensor([0, 1])}], num_classes=2, output_size=(4, 4)
    )
    preds_cn = {"heatmap": torch.zeros(1, 2, 4, 4), "size": torch.zeros(1, 2, 4, 4)}
    preds_cn["offset"] = torch.zeros(1, 2, 4, 4)
    return {
        "sigmoid_focal_loss": (sigmoid_focal_loss, {"inputs": x, "targets": x}),
        "smooth_l1_loss": (smooth_l1_loss, {"input": x, "target": x}),
        "giou_loss": (giou_loss, {"boxes1": boxes_, "boxes2": boxes_}),
        "ciou_loss": (ciou_loss, {"boxes1": boxes_, "boxes2": boxes_}),
        "negative_prob": (negative_prob, {"logits": x, "labels": torch.zeros(2, dtype=torch.long)}),
        "gaussian_focal_loss": (gaussian_focal_loss, {"pred": x, "target": x}),
        "detection_loss": (
            lambda outputs, targets: DetectionLoss(HungarianMatcher())(outputs, targets),
            {"outputs": outputs, "targets": det_targets},
        ),
        "multibox_loss": (
            multibox_loss,
            {
                "loc": torch.zeros(2, 80, 4),
                "conf": torch.zeros(2, 80, 3),
                "priors": PRIORS,
                "targets": det_targets,
            },
        ),
        "point_loss": (
            point_loss,
            {
                "pred_points": torch.zeros(2, 3, 2),
                "pred_logits": torch.zeros(2, 3),
                "targets": [torch.ones(1, 2), torch.ones(2, 2)],
            },
        ),
        "centernet_loss": (centernet_loss, {"predictions": preds_cn, "targets": targets_cn}),
        "ap_loss": (ap_loss, {"logits": x, "labels": x.long()}),
        "rank_sort_loss": (rank_sort_loss, {"logits": x, "targets": x}),
    }


VALID = _valid_arguments()


@pytest.mark.parametrize("name", list(VALID))
def test_every_argument_rejects_every_wrong_kind(name):
    fn, kwargs = VALID[name]
    for arg in kwargs:
        for wrong in wrong_values():
            check_wrong_argument(fn, kwargs, arg, wrong)


@pytest.mark.parametrize("name", list(VALID))
def test_complex_arguments_are_type_errors(name):
    check_complex_rejected(*VALID[name])


@pytest.mark.parametrize("name", list(VALID))
def test_valid_arguments_are_accepted(name):
    fn, kwargs = VALID[name]
    out = check_contract(lambda: fn(**kwargs), True)
    assert out is not None and is_finite(*(out if isinstance(out, tuple) else (out,)))


@settings(max_examples=60)
@given(
    name=st.sampled_from(list(VALID)),
    data=st.data(),
)
def test_wrong_arguments_raise_clear_errors(name, data):
    fn, kwargs = VALID[name]
    arg = data.draw(st.sampled_from(list(kwargs)))
    original = kwargs[arg]
    if isinstance(original, dict) and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(list(original)))
        wrong = {**original, key: data.draw(wrong_tensors())}
        names = [arg, key]
    elif isinstance(original, list) and data.draw(st.booleans()):
        wrong = [data.draw(wrong_tensors()), *original[1:]]
        names = [arg]
    else:
        wrong = data.draw(st.one_of(wrong_tensors(), st.sampled_from(NOT_TENSORS)))
        names = [arg]
    err = rejection(lambda: fn(**{**kwargs, arg: wrong}))
    if err is not None:
        message = str(err)
        # The message names the culprit (or, for a mismatch, the argument it must match).
        mentioned = [*names, *kwargs, "target", "label", "box", "point", "mask", "logit"]
        assert any(word in message for word in mentioned), message
        assert any(w in message for w in ("expected", "must", "missing", "required", "only")), (
            message
        )
