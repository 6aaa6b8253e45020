import math

import pytest
import torch
from torch.autograd import gradcheck

from _references import box_scores
from detloss.boxes import (
    aligned_box_iou,
    aligned_complete_box_iou,
    aligned_distance_box_iou,
    aligned_generalized_box_iou,
    box_area,
    box_convert,
    box_iou,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
)

# REFERENCES.md: (box1, box2, IoU, GIoU loss, DIoU loss, CIoU loss)
CASES = [
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1.0793651, 0.9682540, 0.9682540),
    ([0, 0, 1, 1], [1, 1, 2, 2], 0.0, 1.5, 1.25, 1.25),
    ([0, 0, 1, 1], [2, 0, 3, 1], 0.0, 1.3333333, 1.4, 1.4),
    ([0, 0, 4, 2], [1, 0, 3, 4], 1 / 3, 0.9166667, 0.6979167, 0.7316683),
]


@pytest.mark.parametrize("case", CASES)
def test_reference_numbers(case):
    a, b, iou, giou_l, diou_l, ciou_l = case
    ta = torch.tensor([a], dtype=torch.float64)
    tb = torch.tensor([b], dtype=torch.float64)
    assert box_iou(ta, tb).item() == pytest.approx(iou, abs=1e-7)
    assert 1 - generalized_box_iou(ta, tb).item() == pytest.approx(giou_l, abs=1e-7)
    assert 1 - distance_box_iou(ta, tb).item() == pytest.approx(diou_l, abs=1e-7)
    assert 1 - complete_box_iou(ta, tb).item() == pytest.approx(ciou_l, abs=1e-7)
    assert 1 - aligned_complete_box_iou(ta[0], tb[0]).item() == pytest.approx(ciou_l, abs=1e-7)


def random_boxes(n, generator, scale=10.0):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale + 0.1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize(
    "fn,index",
    [(box_iou, 0), (generalized_box_iou, 1), (distance_box_iou, 2), (complete_box_iou, 3)],
)
def test_pairwise_against_slow_reference(fn, index):
    g = torch.Generator().manual_seed(index)
    a, b = random_boxes(7, g), random_boxes(5, g)
    got = fn(a, b)
    assert got.shape == (7, 5)
    for i in range(7):
        for j in range(5):
            expected = box_scores(a[i].tolist(), b[j].tolist())[index]
            assert got[i, j].item() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "pairwise,aligned",
    [
        (box_iou, aligned_box_iou),
        (generalized_box_iou, aligned_generalized_box_iou),
        (distance_box_iou, aligned_distance_box_iou),
        (complete_box_iou, aligned_complete_box_iou),
    ],
)
def test_aligned_is_the_diagonal_and_batch_dims_broadcast(pairwise, aligned):
    g = torch.Generator().manual_seed(1)
    a = random_boxes(24, g).reshape(2, 3, 4, 4)
    b = random_boxes(24, g).reshape(2, 3, 4, 4)
    full = pairwise(a, b)
    assert full.shape == (2, 3, 4, 4)
    torch.testing.assert_close(torch.diagonal(full, dim1=-2, dim2=-1), aligned(a, b))
    # a single box set broadcasts against a batch
    torch.testing.assert_close(pairwise(a[0, 0], b), pairwise(a[0, 0].expand(2, 3, 4, 4), b))


@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_convert_round_trip_and_formats(fmt):
    xyxy = torch.tensor([[1.0, 2.0, 4.0, 8.0]])
    expected = {
        "xyxy": [[1.0, 2.0, 4.0, 8.0]],
        "xywh": [[1.0, 2.0, 3.0, 6.0]],
        "cxcywh": [[2.5, 5.0, 3.0, 6.0]],
    }[fmt]
    converted = box_convert(xyxy, "xyxy", fmt)
    assert converted.tolist() == expected
    torch.testing.assert_close(box_convert(converted, fmt, "xyxy"), xyxy)
    a, b = random_boxes(3, torch.Generator().manual_seed(0)), random_boxes(4, torch.Generator())
    torch.testing.assert_close(
        generalized_box_iou(
            box_convert(a, "xyxy", fmt), box_convert(b, "xyxy", fmt), box_format=fmt
        ),
        generalized_box_iou(a, b),
    )


def test_box_area_and_inverted_boxes():
    boxes = torch.tensor([[0, 0, 2, 3], [3, 3, 1, 5], [0, 0, 0, 0]])
    assert box_area(boxes).tolist() == [6.0, 0.0, 0.0]
    assert box_area(boxes).dtype == torch.float32
    assert box_area(torch.tensor([[0.0, 0.0, 2.0, 3.0]]), "xywh").item() == 6.0


@pytest.mark.parametrize("fn", [box_iou, generalized_box_iou, distance_box_iou, complete_box_iou])
def test_degenerate_boxes_finite_values_and_gradients(fn):
    a = torch.tensor(
        [[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 1, 1], [0, 0, 1e6, 1e6], [0, 0, 3, 0]],
        dtype=torch.float32,
        requires_grad=True,
    )
    b = torch.tensor(
        [[0, 0, 0, 0], [1, 1, 2, 2], [5, 5, 4, 6]], dtype=torch.float32, requires_grad=True
    )
    out = fn(a, b)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_float32(dtype):
    g = torch.Generator().manual_seed(3)
    a, b = random_boxes(6, g), random_boxes(6, g)
    got = complete_box_iou(a.to(dtype), b.to(dtype))
    assert got.dtype == dtype
    expected = complete_box_iou(a.to(dtype).float(), b.to(dtype).float())
    torch.testing.assert_close(got.float(), expected, atol=1e-2, rtol=1e-2)


def test_integer_inputs_give_float32():
    a = torch.tensor([[0, 0, 2, 2]])
    b = torch.tensor([[1, 1, 3, 3]])
    out = generalized_box_iou(a, b)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(1 - 1.0793651, abs=1e-6)


@pytest.mark.parametrize(
    "fn", [aligned_box_iou, aligned_generalized_box_iou, aligned_distance_box_iou]
)
def test_gradcheck_float64(fn):
    g = torch.Generator().manual_seed(5)
    a = random_boxes(4, g).requires_grad_()
    b = random_boxes(4, g).requires_grad_()
    assert gradcheck(fn, (a, b), atol=1e-6)


def test_ciou_gradient_holds_alpha_constant():
    g = torch.Generator().manual_seed(6)
    a = random_boxes(5, g).requires_grad_()
    b = random_boxes(5, g).requires_grad_()
    aligned_complete_box_iou(a, b).sum().backward()
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    iou = aligned_box_iou(a2, b2)
    diou = aligned_distance_box_iou(a2, b2)
    wa, ha = a2[:, 2] - a2[:, 0], a2[:, 3] - a2[:, 1]
    wb, hb = b2[:, 2] - b2[:, 0], b2[:, 3] - b2[:, 1]
    v = 4 / math.pi**2 * (torch.atan(wb / hb) - torch.atan(wa / ha)) ** 2
    alpha = (v / (1 - iou + v)).detach()
    (diou - alpha * v).sum().backward()
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"boxes1: expected shape \[\.\.\., 4\], got \[3, 5\]"):
        box_iou(torch.zeros(3, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="box_format must be one of"):
        box_iou(torch.zeros(3, 4), torch.zeros(2, 4), box_format="yxyx")
    with pytest.raises(TypeError, match=r"boxes2 must be a torch\.Tensor, got list"):
        box_iou(torch.zeros(3, 4), [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"expected shapes \[\.\.\., N, 4\] and \[\.\.\., M, 4\]"):
        box_iou(torch.zeros(4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="expected broadcastable shapes"):
        aligned_box_iou(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="in_fmt must be one of"):
        box_convert(torch.zeros(1, 4), "xyz", "xyxy")
