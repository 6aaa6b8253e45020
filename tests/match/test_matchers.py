import dataclasses
import inspect

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from detloss.costs import (
    DetectionCostOptions,
    class_cost,
    detection_cost,
    p2p_cost,
    weighted_cost,
)
from detloss.match import (
    BoxCostMatcher,
    HungarianMatcher,
    MaxIoUMatcher,
    SinkhornMatcher,
    SinkhornOptions,
)


def random_batch(seed, b=3, m=20, c=6, max_n=5, empty=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, m, c + 1, generator=g, dtype=torch.float64)
    xy = torch.rand(b, m, 2, generator=g, dtype=torch.float64) * 0.7
    wh = torch.rand(b, m, 2, generator=g, dtype=torch.float64) * 0.3 + 0.01
    boxes = torch.cat([xy, xy + wh], -1)
    targets = []
    for i in range(b):
        n = 0 if (empty and i == 1) else int(torch.randint(1, max_n + 1, (1,), generator=g))
        txy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.7
        twh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.3 + 0.01
        targets.append(
            {
                "boxes": torch.cat([txy, txy + twh], -1),
                "labels": torch.randint(0, c, (n,), generator=g),
            }
        )
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


def slow_giou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (enclosing - union) / enclosing


def to_cxcywh(b):
    return [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]]


def slow_detr_matching(outputs, targets, wc=1.0, wb=5.0, wg=2.0, l1_format="xyxy"):
    """DETR's matcher, one image and one pair at a time."""
    result = []
    for i, t in enumerate(targets):
        prob = outputs["pred_logits"][i].softmax(-1)
        boxes = outputs["pred_boxes"][i].tolist()
        tb = t["boxes"].tolist()
        m, n = len(boxes), len(tb)
        cost = np.zeros((m, n))
        for p in range(m):
            for j in range(n):
                a, b = boxes[p], tb[j]
                if l1_format == "cxcywh":
                    a1, b1 = to_cxcywh(a), to_cxcywh(b)
                else:
                    a1, b1 = a, b
                l1 = sum(abs(x - y) for x, y in zip(a1, b1, strict=True))
                cost[p, j] = -wc * prob[p, t["labels"][j]].item() + wb * l1 - wg * slow_giou(a, b)
        rows, cols = linear_sum_assignment(cost)
        p2t = [-1] * m
        for r, c in zip(rows, cols, strict=True):
            p2t[r] = int(c)
        result.append(p2t)
    return result


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("l1_format", ["xyxy", "cxcywh"])
def test_hungarian_matcher_equals_slow_detr_reference(seed, l1_format):
    outputs, targets = random_batch(seed)
    matching = HungarianMatcher(l1_format=l1_format)(outputs, targets)
    assert matching.pred_to_target.tolist() == slow_detr_matching(
        outputs, targets, l1_format=l1_format
    )


def test_hungarian_matcher_accepts_padded_targets_and_float32():
    outputs, targets = random_batch(7)
    from detloss.batching import pad_targets

    padded = pad_targets(targets)
    a = HungarianMatcher()(outputs, targets).pred_to_target
    b = HungarianMatcher()(outputs, padded).pred_to_target
    assert torch.equal(a, b)
    outputs32 = {k: v.float() for k, v in outputs.items()}
    assert HungarianMatcher()(outputs32, targets).num_matched.tolist() == [
        len(t["labels"]) for t in targets
    ]


def test_class_cost_kinds():
    logits = torch.tensor([[[0.0, 2.0, -1.0]]], dtype=torch.float64)
    labels = torch.tensor([[1, 0]])
    prob = logits.softmax(-1)[0, 0]
    assert class_cost(logits, labels)[0, 0].tolist() == pytest.approx(
        [-prob[1].item(), -prob[0].item()]
    )
    first = class_cost(logits, labels, background="first")[0, 0]
    assert first.tolist() == pytest.approx([-prob[2].item(), -prob[1].item()])
    sig = class_cost(logits, labels, "sigmoid")[0, 0]
    assert sig.tolist() == pytest.approx([-torch.sigmoid(torch.tensor(2.0)).item(), -0.5])
    focal = class_cost(logits, labels, "focal")[0, 0, 0].item()
    p = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64)).item()
    expected = 0.25 * (1 - p) ** 2 * -np.log(p) - 0.75 * p**2 * -np.log(1 - p)
    assert focal == pytest.approx(expected, rel=1e-12)
    # saturated logits stay finite
    assert torch.isfinite(class_cost(torch.full((1, 1, 2), 200.0), labels, "focal")).all()


def test_p2p_cost_and_weighted_cost():
    pts = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])
    logits = torch.tensor([[0.0, 100.0]])
    tgt = torch.tensor([[[0.0, 0.0]]])
    cost = p2p_cost(pts, logits, tgt, tau=0.05)
    assert cost[0, :, 0].tolist() == pytest.approx([-0.5, 0.25 - 1.0])
    softmax = p2p_cost(pts, torch.tensor([[[0.0, 0.0], [0.0, 0.0]]]), tgt)
    assert softmax[0, :, 0].tolist() == pytest.approx([-0.5, -0.25])
    total = weighted_cost(
        {"a": (2.0, torch.ones(1, 2, 3)), "b": (0.0, torch.full((1, 2, 3), float("nan")))}
    )
    assert total.tolist() == [[[2.0] * 3] * 2]


def test_detection_cost_half_inputs():
    outputs, targets = random_batch(3, empty=False)
    from detloss.batching import pad_targets

    p = pad_targets(targets)
    half = detection_cost(
        outputs["pred_logits"].half(), outputs["pred_boxes"].half(), p["labels"], p["boxes"].half()
    )
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


def test_max_iou_matcher_on_anchors():
    anchors = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.9, 1.0]])
    outputs = {"pred_logits": torch.zeros(1, 3, 2), "pred_boxes": torch.zeros(1, 3, 4)}
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]]), "labels": torch.tensor([0])}]
    m = MaxIoUMatcher(0.5)(outputs, targets, anchors=anchors)
    assert m.pred_to_target.tolist() == [[0, -1, 0]]
    with pytest.raises(ValueError, match="anchors: expected 3 anchors"):
        MaxIoUMatcher()(outputs, targets, anchors=anchors[:2])


def test_matcher_errors():
    outputs, targets = random_batch(0)
    with pytest.raises(ValueError, match=r"outputs: missing keys \['pred_boxes'\]"):
        HungarianMatcher()({"pred_logits": outputs["pred_logits"]}, targets)
    with pytest.raises(ValueError, match="expected 3 images"):
        HungarianMatcher()(outputs, targets[:2])
    with pytest.raises(ValueError, match="class_cost_kind must be one of"):
        HungarianMatcher(class_cost_kind="softmin")
    with pytest.raises(TypeError, match="'class_cost' was renamed 'class_cost_kind'"):
        HungarianMatcher(class_cost="focal")
    with pytest.raises(ValueError, match="cost_bbox must be >= 0, got -1"):
        HungarianMatcher(cost_bbox=-1)
    bad = dict(outputs, pred_boxes=outputs["pred_boxes"][:, :5])
    with pytest.raises(ValueError, match=r"outputs\['pred_boxes'\]: expected shape \[3, 20, 4\]"):
        HungarianMatcher()(bad, targets)
    with pytest.raises(TypeError, match="labels"):
        HungarianMatcher()(outputs, [dict(t, labels=t["labels"].float()) for t in targets])


def _defaults(parameters):
    return {p.name: p.default for p in parameters}


def test_box_cost_matchers_take_the_options_of_detection_cost():
    """One declaration of the cost options: detection_cost's signature, which the options
    record and every box-cost matcher's constructor repeat with the same names and defaults
    (the three weights and box_format also by position, as DETR's matcher takes them)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    function = _defaults(
        p for p in inspect.signature(detection_cost).parameters.values() if p.kind is keyword
    )
    assert _defaults(dataclasses.fields(DetectionCostOptions)) == function
    own_options = {
        BoxCostMatcher: {"validate": None},
        HungarianMatcher: {"validate": None, "solver": "auto"},
        SinkhornMatcher: SinkhornOptions().kwargs(),
    }
    for matcher, own in own_options.items():
        parameters = inspect.signature(matcher).parameters
        assert _defaults(parameters.values()) == {**function, **own}, matcher.__name__
        by_position = [p.name for p in parameters.values() if p.kind is not keyword]
        assert by_position == ["cost_class", "cost_bbox", "cost_giou", "box_format"]
    matcher = HungarianMatcher(0.5, 1.0, 0.0, "cxcywh", l1_format="xyxy", solver="scipy")
    assert matcher.cost_options() == {
        **function,
        "cost_class": 0.5,
        "cost_bbox": 1.0,
        "cost_giou": 0.0,
        "box_format": "cxcywh",
        "l1_format": "xyxy",
    }
    assert (matcher.solver, matcher.validate) == ("scipy", None)
    with pytest.raises(TypeError, match=r"HungarianMatcher\(\): too many positional"):
        HungarianMatcher(1.0, 5.0, 2.0, "xyxy", None)
    with pytest.raises(TypeError, match=r"BoxCostMatcher\(\): .*unexpected keyword .*'solver'"):
        BoxCostMatcher(solver="scipy")


@pytest.mark.parametrize(
    "option, message",
    [
        ({"cost_giou": -0.5}, "cost_giou must be >= 0, got -0.5"),
        ({"box_format": "xxyy"}, "box_format must be one of .* got 'xxyy'"),
        ({"l1_format": "yxyx"}, "l1_format must be one of .* got 'yxyx'"),
        ({"class_cost_kind": "softmin"}, "class_cost_kind must be one of .* got 'softmin'"),
        ({"background": "middle"}, "background must be one of .* got 'middle'"),
    ],
)
def test_cost_options_are_checked_by_the_function_and_the_matcher(option, message):
    outputs, _ = random_batch(0)
    with pytest.raises(ValueError, match=message):
        detection_cost(
            outputs["pred_logits"],
            outputs["pred_boxes"],
            torch.zeros(3, 1, dtype=torch.int64),
            torch.zeros(3, 1, 4),
            **option,
        )
    with pytest.raises(ValueError, match=message):
        HungarianMatcher(**option)
