"""detection_cost builds the sum in one buffer; it must equal the sum of the public terms
bit for bit, and stay differentiable."""

import importlib

import pytest
import torch

from _paths import PATHS, use_path
from detloss.boxes import box_convert
from detloss.costs import box_l1_cost, class_cost, detection_cost, giou_cost, weighted_cost

costs_module = importlib.import_module("detloss.costs")


@pytest.fixture(scope="module", autouse=True, params=PATHS)
def cpu_path(request):
    """Every test on the compiled box terms and on the torch path."""
    yield from use_path(request.param)


def separate_terms(logits, boxes, labels, targets, weights, fmt, l1_fmt, kind):
    return weighted_cost(
        {
            "class": (weights[0], class_cost(logits, labels, kind)),
            "bbox": (
                weights[1],
                box_l1_cost(box_convert(boxes, fmt, l1_fmt), box_convert(targets, fmt, l1_fmt)),
            ),
            "giou": (weights[2], giou_cost(boxes, targets, fmt)),
        }
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "fmt, l1_fmt", [("xyxy", "xyxy"), ("cxcywh", "cxcywh"), ("xyxy", "cxcywh")]
)
@pytest.mark.parametrize("kind", ["softmax", "sigmoid", "focal"])
@pytest.mark.parametrize("weights", [(1.0, 5.0, 2.0), (0.0, 1.7, 3.1), (2.5, 0.0, 0.3)])
# Few targets and many: the compiled loops pad the first to whole vector steps.
@pytest.mark.parametrize("count", [7, 70])
def test_equals_the_weighted_sum_of_the_terms(dtype, fmt, l1_fmt, kind, weights, count):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 40, 6, generator=g).to(dtype)
    boxes = (torch.rand(3, 40, 4, generator=g) - 0.2).to(dtype)
    targets = (torch.rand(3, count, 4, generator=g) - 0.2).to(dtype)
    boxes[0, :5] = boxes[0, :5, :1]  # points and inverted boxes
    targets[1, :2] = 0
    labels = torch.randint(0, 6, (3, count), generator=g)
    fused = detection_cost(
        logits,
        boxes,
        labels,
        targets,
        cost_class=weights[0],
        cost_bbox=weights[1],
        cost_giou=weights[2],
        box_format=fmt,
        l1_format=l1_fmt,
        class_cost_kind=kind,
    )
    expected = separate_terms(logits, boxes, labels, targets, weights, fmt, l1_fmt, kind)
    assert torch.equal(fused, expected)


def test_nan_boxes_give_nan_costs_as_the_terms_do():
    boxes = torch.rand(1, 3, 4)
    boxes[0, 1, 2] = float("nan")
    targets = torch.rand(1, 2, 4)
    labels = torch.zeros(1, 2, dtype=torch.long)
    fused = detection_cost(torch.zeros(1, 3, 2), boxes, labels, targets)
    expected = separate_terms(
        torch.zeros(1, 3, 2), boxes, labels, targets, (1.0, 5.0, 2.0), "xyxy", "xyxy", "softmax"
    )
    assert torch.equal(fused.isnan(), expected.isnan()) and fused[0, 1].isnan().all()
    finite = ~expected.isnan()
    assert torch.equal(fused[finite], expected[finite])


def test_gradients_flow_through_every_term():
    g = torch.Generator().manual_seed(1)
    inputs = [
        torch.randn(2, 9, 4, generator=g, dtype=torch.float64),
        torch.rand(2, 9, 4, generator=g, dtype=torch.float64) * 0.5 + 0.2,
        torch.rand(2, 3, 4, generator=g, dtype=torch.float64) * 0.5 + 0.2,
    ]
    labels = torch.randint(0, 4, (2, 3), generator=g)
    grads = []
    for fn in (detection_cost, None):
        leaves = [t.clone().requires_grad_() for t in inputs]
        if fn is None:
            total = separate_terms(
                leaves[0],
                leaves[1],
                labels,
                leaves[2],
                (1.0, 5.0, 2.0),
                "cxcywh",
                "cxcywh",
                "softmax",
            )
        else:
            total = fn(leaves[0], leaves[1], labels, leaves[2], box_format="cxcywh")
        total.sum().backward()
        grads.append([t.grad for t in leaves])
    for fused, expected in zip(*grads, strict=True):
        torch.testing.assert_close(fused, expected)
