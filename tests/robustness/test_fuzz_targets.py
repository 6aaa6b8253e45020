"""Ugly inputs for targets, decoding and soft matchers: gaussian heatmaps and CenterNet
targets / decoding, SSD priors and the BoxCoder, NMS and SSD detection, Sinkhorn,
softmin and combined matchings, point decoding.

The rule (see ``_fuzz.check_contract``): return, or raise ValueError / TypeError; finite
inputs give no NaN. Where a cheap invariant or a brute-force reference exists it is
checked too.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from _fuzz import (
    ALL_DTYPES,
    FLOAT_DTYPES,
    NOT_TENSORS,
    boxes,
    check_complex_rejected,
    check_contract,
    check_wrong_argument,
    is_finite,
    rejection,
    values,
    wrong_tensors,
    wrong_values,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from detloss.anchors import BoxCoder, decode_boxes, encode_boxes, ssd_priors
from detloss.heatmap import centernet_targets, draw_gaussians, gaussian_kernel, gaussian_radius
from detloss.match.matching import Matching
from detloss.match.sinkhorn import SinkhornConvergenceWarning, SinkhornMatcher, sinkhorn
from detloss.match.softmin import combine, softmin
from detloss.postprocess.centernet import centernet_decode
from detloss.postprocess.nms import batched_nms, nms
from detloss.postprocess.points import decode_points, point_scores
from detloss.postprocess.ssd import ssd_detect

sizes = st.integers(0, 6)


# --------------------------------------------------------------------------------------
# gaussian heatmaps


@given(
    data=st.data(),
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=2),
    min_overlap=st.sampled_from([1e-6, 0.3, 0.7, 1.0]),
    legacy=st.booleans(),
)
def test_gaussian_radius(data, shape, min_overlap, legacy):
    finite = data.draw(st.booleans())
    h = data.draw(values(shape, finite=finite, low=-10.0, high=1e3))
    w = data.draw(values(shape, dtype=h.dtype, low=-10.0, high=1e3))
    r = check_contract(lambda: gaussian_radius(h, w, min_overlap, legacy), finite)
    assert r is not None and r.shape == h.shape and r.dtype == h.dtype
    if finite and h.dtype != torch.float16:
        assert is_finite(r) and (r >= 0).all()
        # The radius never exceeds the box's shorter side (any IoU > 0 needs overlap)
        # unless the legacy formula is asked for, which overshoots by design.
        if not legacy:
            side = torch.minimum(h, w).clamp(min=0).double()
            assert (r.double() <= side * (1 + 1e-2) + 1e-6).all()
    # Scalars give the same radius as tensors.
    if not shape and finite and h.dtype == torch.float64:
        scalar = gaussian_radius(float(h), float(w), min_overlap, legacy)
        assert scalar == pytest.approx(float(r), rel=1e-9, abs=1e-12)


@given(
    radius=st.one_of(st.integers(-2, 12), st.sampled_from([1.5, "2", None, True])),
    sigma=st.one_of(st.none(), st.sampled_from([1e-9, 0.5, 3.0, 1e9, 0.0, -1.0, math.nan])),
    dtype=st.sampled_from(ALL_DTYPES),
)
def test_gaussian_kernel(radius, sigma, dtype):
    k = check_contract(lambda: gaussian_kernel(radius, sigma, dtype=dtype), True)
    if k is not None:
        side = 2 * radius + 1
        assert k.shape == (side, side) and k.dtype == dtype
        assert float(k[radius, radius]) == 1.0 and (k >= 0).all() and (k <= 1).all()


@settings(max_examples=40)
@given(
    data=st.data(),
    channels=st.sampled_from([None, 1, 3]),
    hw=st.tuples(st.integers(0, 6), st.integers(0, 6)),
    n=sizes,
    validate=st.booleans(),
    dtype=st.sampled_from(FLOAT_DTYPES),
)
def test_draw_gaussians(data, channels, hw, n, validate, dtype):
    h, w = hw
    shape = (h, w) if channels is None else (channels, h, w)
    heatmap = torch.zeros(shape, dtype=dtype)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    centers = torch.randint(-2, 9, (n, 2), generator=g)
    radii = torch.randint(-1, 5, (n,), generator=g)
    labels = None if channels is None else torch.randint(-1, channels + 1, (n,), generator=g)
    out = check_contract(
        lambda: draw_gaussians(heatmap, centers, radii, labels, validate=validate), True
    )
    if out is None:
        return
    assert out is heatmap and is_finite(out)
    assert (out >= 0).all() and (out <= 1).all()
    # Every drawn centre inside the map holds exactly 1 in its channel.
    inside = (centers[:, 0] >= 0) & (centers[:, 0] < w) & (centers[:, 1] >= 0)
    inside &= (centers[:, 1] < h) & (radii >= 0)
    if channels is not None:
        inside &= (labels >= 0) & (labels < channels)
    for i in inside.nonzero().flatten().tolist():
        x, y = centers[i].tolist()
        value = out[y, x] if channels is None else out[labels[i], y, x]
        assert float(value) == 1.0


@settings(max_examples=40)
@given(
    data=st.data(),
    b=st.integers(0, 3),
    n=sizes,
    c=st.integers(1, 3),
    hw=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    stride=st.sampled_from([1, 4, 0.5, 1e-3, 1e6]),
    legacy=st.booleans(),
    validate=st.booleans(),
)
def test_centernet_targets(data, b, n, c, hw, stride, legacy, validate):
    finite = data.draw(st.booleans())
    scale = data.draw(st.sampled_from([float(max(hw) * stride), 1e6]))
    box = data.draw(boxes((b, n), scale=scale))
    if not finite and box.numel():
        box = box.clone()
        box.view(-1)[0] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    labels = torch.randint(0, c, (b, n), generator=g)
    mask = torch.rand(b, n, generator=g) < 0.7
    out = check_contract(
        lambda: centernet_targets(
            box,
            labels,
            target_mask=mask,
            num_classes=c,
            output_size=hw,
            stride=stride,
            legacy_radius=legacy,
            validate=validate,
        ),
        True,  # NaN boxes are rejected or dropped, never spread into the maps
    )
    if out is None:
        assert validate, "validate=False drops what it cannot use, it does not raise"
        return
    heat = out["heatmap"]
    assert heat.shape == (b, c, *hw) and (heat >= 0).all() and (heat <= 1).all()
    assert out["weight"].sum() == out["index_mask"].sum()
    # Each owned cell is a peak of exactly 1 and holds its owner's size and offset.
    for i, j in out["index_mask"].nonzero().tolist():
        y, x = divmod(int(out["index"][i, j]), hw[1])
        assert float(heat[i, labels[i, j], y, x]) == 1.0
        assert torch.equal(out["size"][i, :, y, x], out["size_target"][i, j])
    assert (out["offset"] >= 0).all() and (out["offset"] < 1).all()


@settings(max_examples=40)
@given(
    data=st.data(),
    b=st.integers(0, 2),
    c=st.integers(1, 3),
    hw=st.tuples(st.integers(0, 5), st.integers(0, 5)),
    k=st.sampled_from([1, 3, 100, 0, -1]),
    kernel=st.sampled_from([1, 3, 5, 2]),
    logits=st.booleans(),
    with_offset=st.booleans(),
)
def test_centernet_decode(data, b, c, hw, k, kernel, logits, with_offset):
    finite = data.draw(st.booleans())
    heat = data.draw(values((b, c, *hw), finite=finite))
    size = data.draw(values((b, 2, *hw), dtype=heat.dtype))
    offset = data.draw(values((b, 2, *hw), dtype=heat.dtype)) if with_offset else None
    out = check_contract(
        lambda: centernet_decode(heat, size, offset, k, 4, logits=logits, kernel=kernel), finite
    )
    if out is None:
        return
    top = min(k, c * hw[0] * hw[1])
    assert isinstance(out, list) and len(out) == b
    for image in out:
        det_boxes, scores, labels = image["boxes"], image["scores"], image["labels"]
        assert det_boxes.shape[1:] == (4,) and scores.shape == labels.shape
        assert len(scores) <= top and (scores > 0).all()
        assert ((labels >= 0) & (labels < c)).all()
        if finite:
            assert (scores[:-1] >= scores[1:]).all(), "scores sorted in decreasing order"


# --------------------------------------------------------------------------------------
# SSD priors and the box coder


@given(
    image_size=st.sampled_from([1, 64, 300.0, 0, -1, "300"]),
    fmaps=st.lists(st.integers(-1, 4), min_size=0, max_size=3),
    ratio=st.sampled_from([(2,), (2, 3), (), (0.5,), (0,), (-2,)]),
    with_max=st.booleans(),
    clip=st.booleans(),
)
def test_ssd_priors(image_size, fmaps, ratio, with_max, clip):
    levels = len(fmaps)
    steps = [8.0 * (i + 1) for i in range(levels)]
    mins = [16.0 * (i + 1) for i in range(levels)]
    maxs = [24.0 * (i + 1) for i in range(levels)] if with_max else None
    priors = check_contract(
        lambda: ssd_priors(image_size, fmaps, steps, mins, maxs, [ratio] * levels, clip), True
    )
    if priors is None:
        return
    per_cell = 1 + with_max + 2 * len(ratio)
    assert priors.shape == (sum(f * f for f in fmaps) * per_cell, 4)
    assert is_finite(priors) and (priors[:, 2:] > 0).all()
    if clip:
        assert (priors >= 0).all() and (priors <= 1).all()


@settings(max_examples=40)
@given(
    data=st.data(),
    n=sizes,
    variances=st.sampled_from([(0.1, 0.2), (1, 1), (1e-6, 1e-6), (0, 0.2), (0.1,), "ab"]),
    prior_kind=st.sampled_from(["ssd", "ugly"]),
)
def test_encode_decode(data, n, variances, prior_kind):
    dtype = data.draw(st.sampled_from(FLOAT_DTYPES))
    gt = data.draw(boxes((n,), dtype=dtype))
    if prior_kind == "ssd":
        priors = ssd_priors(64, (2,), (32,), (16,), (32,), ((2,),), dtype=dtype)[:1].expand(n, 4)
    else:
        # cxcywh priors with positive sizes: tiny, ordinary or huge.
        centre = data.draw(values((n, 2), dtype=dtype))
        wh = data.draw(values((n, 2), dtype=dtype, low=1e-3, high=1e3)).abs() + 1e-3
        priors = torch.cat((centre, wh), dim=-1).to(dtype)
    offsets = check_contract(lambda: encode_boxes(gt, priors, variances), True)
    coder_offsets = check_contract(lambda: BoxCoder(variances).encode(gt, priors), True)
    if offsets is None:
        assert coder_offsets is None
        return
    assert torch.equal(offsets, coder_offsets) and offsets.shape == gt.shape
    if dtype != torch.float16:
        assert is_finite(offsets)
    decoded = check_contract(lambda: decode_boxes(offsets, priors, variances), True)
    assert decoded is not None and decoded.shape == gt.shape
    if dtype != torch.float16:
        assert is_finite(decoded)
    huge = data.draw(values((n, 4), dtype=dtype)) * 1e3  # size offsets far past the clamp
    out = check_contract(lambda: BoxCoder(variances).decode(huge, priors), True)
    if dtype != torch.float16:
        assert out is not None and is_finite(out)


def test_encode_decode_round_trip_on_ordinary_boxes():
    gen = torch.Generator().manual_seed(0)
    priors = ssd_priors(64, (4,), (16,), (16,), (32,), ((2,),), dtype=torch.float64)
    xy = torch.rand(priors.shape[0], 2, generator=gen, dtype=torch.float64) * 0.7
    gt = torch.cat((xy, xy + 0.05 + 0.2 * torch.rand(xy.shape, generator=gen)), -1)
    back = decode_boxes(encode_boxes(gt, priors), priors)
    torch.testing.assert_close(back, gt, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------
# NMS


def greedy_nms_reference(box: torch.Tensor, scores: torch.Tensor, idxs, threshold: float):
    """The greedy rule in float64, one box at a time (division-free IoU test)."""
    b = box.double()
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        suppressed = False
        for j in kept:
            if int(idxs[i]) != int(idxs[j]):
                continue
            iw = max(0.0, float(torch.minimum(b[i, 2], b[j, 2]) - torch.maximum(b[i, 0], b[j, 0])))
            ih = float(torch.minimum(b[i, 3], b[j, 3]) - torch.maximum(b[i, 1], b[j, 1]))
            area_i = max(0.0, float(b[i, 2] - b[i, 0])) * max(0.0, float(b[i, 3] - b[i, 1]))
            area_j = max(0.0, float(b[j, 2] - b[j, 0])) * max(0.0, float(b[j, 3] - b[j, 1]))
            if iw * ih * (1 + threshold) > threshold * (area_i + area_j):
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return kept


@settings(max_examples=50)
@given(
    data=st.data(),
    n=st.integers(0, 12),
    groups=st.integers(1, 3),
    threshold=st.sampled_from([0.0, 0.3, 0.5, 1.0, 2.0]),
)
def test_nms_against_greedy_reference(data, n, groups, threshold):
    dtype = data.draw(st.sampled_from(FLOAT_DTYPES))
    box = data.draw(boxes((n,), dtype=dtype, scale=data.draw(st.sampled_from([1.0, 1e6]))))
    scores = data.draw(values((n,), dtype=dtype))  # ties included
    idxs = torch.randint(0, groups, (n,), generator=torch.Generator().manual_seed(n))
    kept = check_contract(lambda: batched_nms(box, scores, idxs, threshold), True)
    assert kept is not None and kept.dtype == torch.int64
    assert len(set(kept.tolist())) == len(kept)
    if dtype == torch.float64:  # other dtypes round the IoU test differently at the edge
        assert kept.tolist() == greedy_nms_reference(box, scores, idxs, threshold)
    plain = check_contract(lambda: nms(box, scores, threshold), True)
    assert plain is not None
    if dtype == torch.float64:
        assert plain.tolist() == greedy_nms_reference(box, scores, [0] * n, threshold)


@given(data=st.data())
def test_nms_wrong_arguments(data):
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.1]])
    kwargs = {"boxes": box, "scores": torch.ones(2), "idxs": torch.zeros(2, dtype=torch.long)}
    arg = data.draw(st.sampled_from([*kwargs, "iou_threshold"]))
    wrong = data.draw(st.one_of(wrong_tensors(), st.sampled_from([*NOT_TENSORS, -0.5, math.nan])))
    call = {**kwargs, "iou_threshold": 0.5, arg: wrong}
    err = rejection(lambda: batched_nms(**call))
    if err is not None:
        assert any(name in str(err) for name in call), str(err)


# --------------------------------------------------------------------------------------
# SSD detection

PRIORS = ssd_priors(64, (4, 2), (16, 32), (16, 32), (32, 48), ((2,), (2,)))


@settings(max_examples=30)
@given(
    data=st.data(),
    b=st.integers(0, 2),
    c=st.integers(2, 4),
    score_threshold=st.sampled_from([0.0, 0.01, 0.5, 0.999, 1.0]),
    top_k=st.sampled_from([1, 5, 200, 0]),
    per_class=st.sampled_from([None, 1, 1000]),
)
def test_ssd_detect(data, b, c, score_threshold, top_k, per_class):
    dtype = data.draw(st.sampled_from(FLOAT_DTYPES))
    p = PRIORS.shape[0]
    loc = data.draw(values((b, p, 4), dtype=dtype))
    conf = data.draw(values((b, p, c), dtype=dtype))
    out = check_contract(
        lambda: ssd_detect(
            loc, conf, PRIORS, score_threshold, 0.45, top_k, candidates_per_class=per_class
        ),
        True,
    )
    if out is None:
        return
    assert len(out) == b
    for image in out:
        assert len(image["scores"]) <= top_k and is_finite(image["boxes"], image["scores"])
        assert (image["scores"] > score_threshold).all()
        assert (image["scores"][:-1] >= image["scores"][1:]).all()
        assert ((image["labels"] >= 0) & (image["labels"] <= c - 2)).all()


# --------------------------------------------------------------------------------------
# Sinkhorn, softmin and combinations


@st.composite
def transport_problem(draw):
    b, m, n = draw(st.integers(0, 3)), draw(sizes), draw(sizes)
    finite = draw(st.booleans())
    cost = draw(values((b, m, n), finite=finite))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if draw(st.booleans()) and cost.numel():  # forbidden pairs
        cost = cost.masked_fill(torch.rand(b, m, n, generator=g) < 0.2, math.inf)
    target_mask = torch.rand(b, n, generator=g) < 0.7
    pred_mask = (torch.rand(b, m, generator=g) < 0.8) if draw(st.booleans()) else None
    return cost, target_mask, pred_mask, finite


def check_plan(matching: Matching, target_mask, pred_mask) -> None:
    plan = matching.plan
    b, m = matching.pred_to_target.shape
    n = target_mask.shape[1]
    assert plan is not None and plan.shape == (b, m, n + 1)
    assert is_finite(plan) and (plan >= 0).all()
    assert (plan[..., :n] * ~target_mask[:, None, :]).eq(0).all(), "mass on padded targets"
    p2t = matching.pred_to_target
    assert ((p2t >= -2) & (p2t < max(n, 1))).all()
    if pred_mask is not None:
        assert (plan * ~pred_mask[..., None]).eq(0).all(), "mass on padded predictions"
        assert (p2t[~pred_mask] == -2).all()


@settings(max_examples=40)
@given(
    problem=transport_problem(),
    reg=st.sampled_from([None, 1e-4, 0.05, 1e3]),
    taus=st.sampled_from([(None, None), (1.0, None), (None, 0.1), (0.0, 10.0)]),
    background_cost=st.sampled_from([1.0, 0.0, -5.0, 1e6]),
    normalize=st.booleans(),
    eps_scaling=st.sampled_from([0, 2]),
)
def test_sinkhorn(problem, reg, taus, background_cost, normalize, eps_scaling):
    cost, target_mask, pred_mask, finite = problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SinkhornConvergenceWarning)
        out = check_contract(
            lambda: sinkhorn(
                cost,
                target_mask=target_mask,
                reg=reg,
                tau_pred=taus[0],
                tau_target=taus[1],
                background_cost=background_cost,
                normalize=normalize,
                max_iter=30,
                eps_scaling=eps_scaling,
                pred_mask=pred_mask,
            ),
            finite,
        )
    if not finite:
        return
    assert out is not None, "finite costs (with +inf forbidden pairs) are accepted"
    check_plan(out, target_mask, pred_mask)


@given(data=st.data())
def test_sinkhorn_rejects_nan_and_negative_inf(data):
    cost = data.draw(values((2, 3, 2))).clone()
    cost[1, data.draw(st.integers(0, 2)), data.draw(st.integers(0, 1))] = data.draw(
        st.sampled_from([math.nan, -math.inf])
    )
    err = rejection(lambda: sinkhorn(cost))
    assert isinstance(err, ValueError) and "cost" in str(err)


@settings(max_examples=40)
@given(
    problem=transport_problem(),
    reg=st.sampled_from([1e-6, 1.0, 1e6]),
    source=st.sampled_from(["prediction", "target"]),
    background_cost=st.sampled_from([1.0, -1e6, 1e6]),
)
def test_softmin_and_combine(problem, reg, source, background_cost):
    cost, target_mask, pred_mask, finite = problem
    soft = check_contract(
        lambda: softmin(
            cost, reg, source, background_cost, target_mask=target_mask, pred_mask=pred_mask
        ),
        finite,
    )
    if not finite:
        return
    assert soft is not None
    check_plan(soft, target_mask, pred_mask)
    hard = Matching(soft.pred_to_target, target_mask)
    both = check_contract(lambda: combine([soft, hard], [1.0, 3.0]), True)
    assert both is not None
    check_plan(both, target_mask, pred_mask)
    assert check_contract(lambda: combine([soft, hard], [0.0, 0.0]), True) is None


@settings(max_examples=25)
@given(
    data=st.data(),
    b=st.integers(1, 2),
    m=st.integers(0, 4),
    n=st.integers(0, 3),
    class_cost=st.sampled_from(["softmax", "sigmoid", "focal"]),
)
def test_sinkhorn_matcher_ugly_predictions(data, b, m, n, class_cost):
    dtype = data.draw(st.sampled_from(FLOAT_DTYPES))
    outputs = {
        "pred_logits": data.draw(values((b, m, 3), dtype=dtype)),
        "pred_boxes": data.draw(boxes((b, m), dtype=dtype)),
    }
    targets = [
        {"boxes": data.draw(boxes((n,), dtype=dtype)), "labels": torch.zeros(n, dtype=torch.long)}
        for _ in range(b)
    ]
    matcher = SinkhornMatcher(class_cost_kind=class_cost, max_iter=20, tol=0.0)
    out = check_contract(lambda: matcher(outputs, targets), True)
    assert out is not None
    check_plan(out, out.target_mask, None)


# --------------------------------------------------------------------------------------
# point decoding


@given(
    data=st.data(),
    b=st.integers(0, 2),
    m=sizes,
    head=st.sampled_from(["sigmoid", "softmax", "wrong"]),
    threshold=st.sampled_from([0.0, 0.5, 0.999, 1.0, -0.1]),
)
def test_decode_points(data, b, m, head, threshold):
    finite = data.draw(st.booleans())
    points = data.draw(values((b, m, 2)))
    shape = {"sigmoid": (b, m), "softmax": (b, m, 2), "wrong": (b, m, 3)}[head]
    logits = data.draw(values(shape, finite=finite))
    scores = check_contract(lambda: point_scores(logits), finite)
    out = check_contract(lambda: decode_points(points, logits, threshold), finite)
    if head == "wrong":
        assert scores is None and out is None
        return
    if out is None:
        # A bad threshold, or NaN / inf logits (validated on the CPU by default).
        assert not (0 <= threshold < 1 and is_finite(logits))
        return
    assert is_finite(logits)
    assert len(out) == b
    for i, image in enumerate(out):
        assert (image["scores"] > threshold).all()
        assert (image["scores"][:-1] >= image["scores"][1:]).all()
        assert len(image["points"]) == len(image["labels"]) == int((scores[i] > threshold).sum())


# --------------------------------------------------------------------------------------
# wrong arguments: one argument at a time replaced by a tensor of any rank, size and dtype,
# or by something that is not a tensor


def _valid_arguments():
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 12.0, 10.0]])
    cost = torch.rand(2, 3, 2, generator=torch.Generator().manual_seed(0))
    return {
        "draw_gaussians": (
            draw_gaussians,
            {
                "heatmap": torch.zeros(2, 5, 5),
                "centers": torch.tensor([[1, 1]]),
                "radii": torch.tensor([1]),
                "labels": torch.tensor([1]),
            },
        ),
        "centernet_targets": (
            lambda boxes, labels, target_mask: centernet_targets(
                boxes, labels, target_mask=target_mask, num_classes=2, output_size=(4, 4)
            ),
            {
                "boxes": box[None],
                "labels": torch.tensor([[0, 1]]),
                "target_mask": torch.ones(1, 2) > 0,
            },
        ),
        "centernet_decode": (
            centernet_decode,
            {
                "heatmap": torch.zeros(1, 2, 4, 4),
                "size": torch.zeros(1, 2, 4, 4),
                "offset": torch.zeros(1, 2, 4, 4),
            },
        ),
        "encode_boxes": (encode_boxes, {"boxes": box / 16, "priors": PRIORS[:2]}),
        "decode_boxes": (decode_boxes, {"offsets": box / 16, "priors": PRIORS[:2]}),
        "ssd_detect": (
            ssd_detect,
            {"loc": torch.zeros(1, 80, 4), "conf": torch.zeros(1, 80, 3), "priors": PRIORS},
        ),
        "sinkhorn": (
            lambda cost, target_mask: sinkhorn(cost, target_mask=target_mask, tol=0.0),
            {"cost": cost, "target_mask": torch.ones(2, 2) > 0},
        ),
        "softmin": (softmin, {"cost": cost, "target_mask": torch.ones(2, 2) > 0}),
        "decode_points": (
            decode_points,
            {"points": torch.zeros(2, 3, 2), "logits": torch.zeros(2, 3)},
        ),
        "gaussian_radius": (gaussian_radius, {"height": box[:, 3], "width": box[:, 2]}),
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
    assert check_contract(lambda: fn(**kwargs), True) is not None


@settings(max_examples=60)
@given(name=st.sampled_from(list(VALID)), data=st.data())
def test_wrong_arguments_raise_clear_errors(name, data):
    fn, kwargs = VALID[name]
    arg = data.draw(st.sampled_from(list(kwargs)))
    wrong = data.draw(st.one_of(wrong_tensors(), st.sampled_from(NOT_TENSORS)))
    err = rejection(lambda: fn(**{**kwargs, arg: wrong}))
    if err is not None:
        message = str(err)
        # The message names the culprit (or, for a mismatch, the argument it must match).
        assert any(word in message for word in kwargs), message
        assert any(w in message for w in ("expected", "must", "missing", "required", "only")), (
            message
        )
