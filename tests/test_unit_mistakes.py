"""Unit and format mistakes caught where checking is cheap (CPU / validate paths): pixel
boxes given to DETR's normalised criterion, inverted xyxy targets, cxcywh targets read as
xyxy; and centernet_decode never returns an inverted box."""

from __future__ import annotations

import warnings

import pytest
import torch

import detloss._checks
from detloss import DetectionLoss, HungarianMatcher, SetCriterion, centernet_decode
from detloss._checks import check_box_values


def detr_outputs(b: int = 1, q: int = 4, k: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "pred_logits": torch.randn(b, q, k, generator=g),
        "pred_boxes": torch.rand(b, q, 4, generator=g).mul(0.3).add(0.2),
    }


def test_pixel_boxes_given_to_set_criterion_name_the_argument():
    criterion = SetCriterion(3, HungarianMatcher(box_format="cxcywh"), {}, 0.1)
    targets = [{"boxes": torch.tensor([[320.0, 240.0, 50.0, 80.0]]), "labels": torch.tensor([1])}]
    with pytest.raises(ValueError, match=r"targets\['boxes'\]: expected coordinates normalised"):
        criterion(detr_outputs(), targets)
    ok = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 1.0]]), "labels": torch.tensor([1])}]
    assert torch.isfinite(criterion(detr_outputs(), ok)["loss_bbox"])
    # validate=False skips the check (as on a GPU, where it would synchronise).
    unchecked = SetCriterion(3, HungarianMatcher(box_format="cxcywh"), {}, 0.1, validate=False)
    assert torch.isfinite(unchecked(detr_outputs(), targets)["loss_bbox"])


def test_xyxy_boxes_given_to_set_criterion_are_caught_as_negative_sizes():
    criterion = SetCriterion(3, HungarianMatcher(box_format="cxcywh"), {}, 0.1)
    # xyxy (0.6, 0.6, 0.2, 0.3) read as cxcywh is fine, but (0.5, 0.5, 0.4, -0.1) is not.
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.4, -0.1]]), "labels": torch.tensor([0])}]
    with pytest.raises(ValueError, match=r"widths and heights >= 0 .*box \[0, 0\]"):
        criterion(detr_outputs(), targets)


def test_inverted_xyxy_targets_warn_once_with_the_box_and_a_hint(monkeypatch):
    """Inverted boxes stay data (the losses are finite on them), so DetectionLoss warns,
    once per process, instead of raising."""
    monkeypatch.setattr(detloss._checks, "_WARNED", set())
    outputs = detr_outputs(2)
    outputs["pred_boxes"] = torch.cat(
        (outputs["pred_boxes"][..., :2], outputs["pred_boxes"][..., :2] + 0.1), -1
    )
    # cxcywh boxes (centre 0.5, 0.5, size 0.2 x 0.3) read as xyxy: x2 = 0.2 < x1 = 0.5.
    targets = [
        {"boxes": torch.tensor([[0.1, 0.1, 0.3, 0.4]]), "labels": torch.tensor([0])},
        {
            "boxes": torch.tensor([[0.1, 0.1, 0.3, 0.4], [0.5, 0.5, 0.2, 0.3]]),
            "labels": torch.tensor([0, 1]),
        },
    ]
    expected = r"x2 < x1 .* box \[1, 1\] = \[0.5, 0.5, 0.2, 0.3\].*cxcywh"
    with pytest.warns(UserWarning, match=expected):
        assert torch.isfinite(DetectionLoss(HungarianMatcher())(outputs, targets))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DetectionLoss(HungarianMatcher())(outputs, targets)  # once only
        # The same boxes declared as cxcywh are accepted silently.
        loss = DetectionLoss(HungarianMatcher(box_format="cxcywh"))(outputs, targets)
    assert torch.isfinite(loss)


def test_degenerate_and_padded_boxes_are_normal_data():
    boxes = torch.tensor([[[0.2, 0.2, 0.2, 0.5], [5.0, 5.0, 1.0, 1.0]]])  # the second is padding
    mask = torch.tensor([[True, False]])
    check_box_values(boxes, "targets['boxes']", "xyxy", mask)
    check_box_values(torch.zeros(0, 4), "targets['boxes']", "xyxy", normalized=True)
    with pytest.raises(ValueError, match=r"box \[0, 1\]"):
        check_box_values(boxes, "targets['boxes']", "xyxy", torch.tensor([[True, True]]))
    with pytest.raises(ValueError, match="pixel boxes"):
        check_box_values(torch.tensor([[0.0, 0.0, 1.2, 1.0]]), "t", "xyxy", normalized=True)
    check_box_values(torch.tensor([[0.0, 0.0, 1.005, 1.0]]), "t", "xyxy", normalized=True)


def test_centernet_decode_clamps_negative_sizes():
    heat = torch.full((1, 1, 4, 4), -5.0)
    heat[0, 0, 1, 2] = 3.0
    size = torch.zeros(1, 2, 4, 4)
    size[0, :, 1, 2] = torch.tensor([-2.0, 1.0])  # negative width at the peak
    (image,) = centernet_decode(heat, size, None, k=3, stride=4)
    boxes, scores = image["boxes"], image["scores"]
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()
    # The peak: centre (2, 1) cells = (8, 4) pixels, width 0, height 1 cell = 4 pixels.
    assert boxes[0].tolist() == [8.0, 2.0, 8.0, 6.0]
    assert scores[0] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
