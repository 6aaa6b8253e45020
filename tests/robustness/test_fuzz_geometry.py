"""Ugly inputs for geometry, costs and matchers."""

import pytest
import torch
from _fuzz import ALL_DTYPES, FLOAT_DTYPES, boxes, check_contract, values
from hypothesis import given
from hypothesis import strategies as st

from detloss import boxes as B
from detloss.costs import class_cost, detection_cost, p2p_cost
from detloss.match import closest_prediction, closest_target, hungarian, max_iou
from detloss.points import pairwise_distance

PAIRWISE = [B.box_iou, B.generalized_box_iou, B.distance_box_iou, B.complete_box_iou]
ALIGNED = [
    B.aligned_box_iou,
    B.aligned_generalized_box_iou,
    B.aligned_distance_box_iou,
    B.aligned_complete_box_iou,
]
sizes = st.integers(0, 6)


@pytest.mark.parametrize("fn", PAIRWISE)
@given(data=st.data(), n=sizes, m=sizes)
def test_pairwise_iou_ugly_boxes(fn, data, n, m):
    a = data.draw(boxes((n,))).requires_grad_()
    b = data.draw(boxes((m,), dtype=a.dtype))
    out = check_contract(lambda: fn(a, b), True)
    assert out is not None and out.shape == (n, m) and out.dtype == a.dtype
    if out.numel() and a.dtype in (torch.float32, torch.float64):
        out.float().sum().backward()
        assert torch.isfinite(a.grad).all()


@pytest.mark.parametrize("fn", ALIGNED)
@given(data=st.data(), n=sizes)
def test_aligned_iou_ugly_boxes_under_autocast(fn, data, n):
    a = data.draw(boxes((n,), dtype=torch.float32))
    b = data.draw(boxes((n,), dtype=torch.float32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = check_contract(lambda: fn(a, b), True)
    assert out is not None and torch.isfinite(out).all()


@given(
    dtype=st.sampled_from(ALL_DTYPES),
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=4),
    fn=st.sampled_from(PAIRWISE + ALIGNED + [B.box_area]),
)
def test_wrong_shapes_and_dtypes_only_raise_value_or_type_errors(dtype, shape, fn):
    x = torch.zeros(shape, dtype=dtype)
    args = (x,) if fn is B.box_area else (x, x)
    check_contract(lambda: fn(*args), True)
    check_contract(lambda: fn(*args[:1], [0, 0, 1, 1]) if fn is not B.box_area else fn(3), True)


@given(data=st.data(), b=st.integers(0, 3), m=sizes, n=sizes)
def test_hungarian_and_threshold_matchers(data, b, m, n):
    finite = data.draw(st.booleans())
    cost = data.draw(values((b, m, n), finite=finite))
    tmask = torch.rand(b, n) < 0.7
    out = check_contract(lambda: hungarian(cost, target_mask=tmask), finite)
    if finite:
        assert out is not None and (out.num_matched <= tmask.sum(1)).all()
    iou = data.draw(values((b, m, n), low=0.0, high=1.0))
    check_contract(lambda: max_iou(iou, target_mask=tmask), True)
    check_contract(lambda: closest_target(cost, 0.0, target_mask=tmask), finite)
    check_contract(lambda: closest_prediction(cost, 0.0, target_mask=tmask), finite)


@given(data=st.data(), m=sizes, n=sizes, c=st.integers(1, 4), dtype=st.sampled_from(FLOAT_DTYPES))
def test_costs_with_ugly_predictions(data, m, n, c, dtype):
    logits = data.draw(values((2, m, c), dtype=dtype))
    pred = data.draw(boxes((2, m), dtype=dtype))
    tgt = data.draw(boxes((2, n), dtype=dtype))
    labels = torch.randint(0, c, (2, n))
    for kind in ("softmax", "sigmoid", "focal"):
        out = check_contract(lambda k=kind: class_cost(logits, labels, k), True)
        assert out is not None and out.shape == (2, m, n)
    check_contract(lambda: detection_cost(logits, pred, labels, tgt), True)
    points = data.draw(values((2, m, 2), dtype=dtype))
    check_contract(lambda: p2p_cost(points, logits[..., 0], points[:, :n]), True)
    check_contract(lambda: pairwise_distance(points, points), True)
