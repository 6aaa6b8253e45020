"""The small SSD-style detector: shapes, prior layout, decoding, bad input."""

from __future__ import annotations

import pytest
import torch

from detloss.anchors import encode_boxes, ssd_priors
from detloss.app.models import SSD


def test_outputs_and_priors_match_the_feature_maps() -> None:
    model = SSD(3, image_size=64)
    # Four stride-2 stages: 32, 16, 8, 4; the last three are the feature maps.
    assert model.feature_maps == (16, 8, 4)
    # 1 small square + 1 big square + 2 boxes for ratio 2 on each level.
    assert model.boxes_per_cell == (4, 4, 4)
    assert model.priors.shape == ((256 + 64 + 16) * 4, 4)
    out = model(torch.rand(2, 3, 64, 64))
    assert out["loc"].shape == (2, 1344, 4)
    assert out["conf"].shape == (2, 1344, 4)
    # The demo's 128-pixel input: 32 x 32, 16 x 16 and 8 x 8 cells, 5376 default boxes.
    assert SSD(4).priors.shape == (5376, 4)


def test_priors_are_those_of_ssd_priors() -> None:
    model = SSD(
        2, image_size=128, min_sizes=(20.0, 40.0), max_sizes=None, aspect_ratios=((2,), (3,))
    )
    # The last two of four stages: strides 8 and 16.
    expected = ssd_priors(128, (16, 8), (8.0, 16.0), (20.0, 40.0), None, ((2,), (3,)))
    assert model.feature_maps == (16, 8)
    torch.testing.assert_close(model.priors, expected)


def test_prior_order_matches_the_head_layout() -> None:
    # A bias-only loc head: prior p of cell (i, j) on level 0 must read channel block a.
    model = SSD(1, image_size=64, min_sizes=(16.0,), max_sizes=None, aspect_ratios=((2.0,),))
    head = model.loc_heads[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.arange(12, dtype=torch.float32))  # 3 boxes x 4 offsets
    loc = model(torch.rand(1, 3, 64, 64))["loc"][0]
    cells = model.feature_maps[0] ** 2
    assert loc.shape == (cells * 3, 4)
    # Every cell repeats boxes 0, 1, 2 in the order of ssd_priors.
    expected = torch.arange(12, dtype=torch.float32).view(3, 4).repeat(cells, 1)
    torch.testing.assert_close(loc, expected)
    # ...and the widths of the priors follow the same 3-periodic pattern.
    w = model.priors[:, 2].view(cells, 3)
    assert torch.allclose(w, w[:1].expand_as(w))


def test_detect_recovers_encoded_boxes() -> None:
    model = SSD(2, image_size=64)
    priors = model.priors
    gt = torch.tensor([[0.1, 0.2, 0.4, 0.5]])
    best = 5
    loc = torch.zeros(1, priors.shape[0], 4)
    loc[0, best] = encode_boxes(gt, priors[best : best + 1])[0]
    conf = torch.zeros(1, priors.shape[0], 3)
    conf[..., 0] = 10.0  # background everywhere...
    conf[0, best] = torch.tensor([0.0, 0.0, 10.0])  # ...but class 1 at one prior
    dets = model.detect({"loc": loc, "conf": conf})
    assert dets[0]["labels"][0] == 1
    torch.testing.assert_close(dets[0]["boxes"][0], gt[0])


def test_initial_head_predicts_background() -> None:
    torch.manual_seed(0)
    model = SSD(4, image_size=64).eval()
    with torch.no_grad():
        prob = model(torch.rand(1, 3, 64, 64))["conf"].softmax(-1)
    assert float(prob[..., 0].mean()) > 0.8


def test_bad_input() -> None:
    model = SSD(2, image_size=64)
    with pytest.raises(ValueError, match=r"images: expected shape \[B, 3, 64, 64\]"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="num_classes"):
        SSD(0)
    with pytest.raises(ValueError, match="min_sizes"):
        SSD(2, channels=(8, 16), depths=(1, 1))
