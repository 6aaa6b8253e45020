import pytest
import torch

from detloss.heatmap import centernet_targets
from detloss.postprocess.centernet import centernet_decode


def hand_built():
    """Two classes on a 6 x 8 grid (probabilities) with three peaks and a suppressed shoulder."""
    heat = torch.zeros(1, 2, 6, 8)
    heat[0, 0, 1, 2] = 0.9  # peak
    heat[0, 0, 1, 3] = 0.8  # next to a higher cell: not a peak
    heat[0, 1, 4, 6] = 0.7  # peak
    heat[0, 0, 4, 6] = 0.6  # same cell, other class: a peak of its own channel
    size = torch.zeros(1, 2, 6, 8)
    offset = torch.zeros(1, 2, 6, 8)
    size[0, :, 1, 2] = torch.tensor([2.0, 4.0])
    offset[0, :, 1, 2] = torch.tensor([0.25, 0.5])
    size[0, :, 4, 6] = torch.tensor([3.0, 1.0])
    offset[0, :, 4, 6] = torch.tensor([0.5, 0.0])
    return heat, size, offset


def test_decode_hand_built_heatmap():
    heat, size, offset = hand_built()
    boxes, scores, labels = centernet_decode(heat, size, offset, k=3, stride=4, logits=False)
    assert boxes.shape == (1, 3, 4) and scores.shape == (1, 3) and labels.shape == (1, 3)
    torch.testing.assert_close(scores, torch.tensor([[0.9, 0.7, 0.6]]))
    assert labels.tolist() == [[0, 1, 0]]
    # peak (x=2, y=1): centre (2.25, 1.5) * 4 = (9, 6), size (2, 4) * 4 = (8, 16)
    # peak (x=6, y=4): centre (6.5, 4) * 4 = (26, 16), size (3, 1) * 4 = (12, 4)
    expected = torch.tensor(
        [[[5.0, -2.0, 13.0, 14.0], [20.0, 14.0, 32.0, 18.0], [20.0, 14.0, 32.0, 18.0]]]
    )
    torch.testing.assert_close(boxes, expected)
    # the suppressed shoulder (0.8) only appears with score 0 once the peaks run out
    _, scores, _ = centernet_decode(heat, size, offset, k=5, logits=False)
    assert scores[0, 3] == 0 and scores[0, 4] == 0


def test_decode_logits_equals_probabilities():
    heat, size, offset = hand_built()
    logits = torch.logit(heat.clamp(1e-6, 1 - 1e-6))
    a = centernet_decode(logits, size, offset, k=4)
    b = centernet_decode(torch.sigmoid(logits), size, offset, k=4, logits=False)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_decode_without_offset_and_other_kernel():
    heat, size, offset = hand_built()
    boxes, _, _ = centernet_decode(heat, size, None, k=1, stride=2, logits=False)
    torch.testing.assert_close(boxes, torch.tensor([[[2.0, -2.0, 6.0, 6.0]]]))
    # a 5 x 5 window: the 0.6 peak at (6, 4) is no longer beaten, but 0.8 is still beaten
    _, scores, _ = centernet_decode(heat, size, offset, k=3, logits=False, kernel=5)
    torch.testing.assert_close(scores, torch.tensor([[0.9, 0.7, 0.6]]))
    _, scores, _ = centernet_decode(heat, size, offset, k=3, logits=False, kernel=1)
    torch.testing.assert_close(scores, torch.tensor([[0.9, 0.8, 0.7]]))


def test_decode_round_trip_through_targets():
    g = torch.Generator().manual_seed(0)
    batch, n = 3, 5
    # centres on distinct cells of a 32 x 48 grid (stride 4), sizes 4..40 px
    cells = torch.stack([torch.randperm(32 * 48, generator=g)[:n] for _ in range(batch)])
    cx = (cells % 48).double() * 4 + torch.rand(batch, n, generator=g, dtype=torch.float64) * 4
    cy = (cells // 48).double() * 4 + torch.rand(batch, n, generator=g, dtype=torch.float64) * 4
    wh = torch.rand(batch, n, 2, generator=g, dtype=torch.float64) * 36 + 4
    boxes = torch.stack(
        (cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2), -1
    )
    labels = torch.randint(0, 4, (batch, n), generator=g)
    t = centernet_targets(boxes, labels, num_classes=4, output_size=(32, 48))
    got_boxes, scores, got_labels = centernet_decode(
        t["heatmap"], t["size"], t["offset"], k=n, logits=False
    )
    assert (scores == 1).all()
    for b in range(batch):
        order = torch.argsort(got_boxes[b, :, 0])
        want = torch.argsort(boxes[b, :, 0])
        torch.testing.assert_close(got_boxes[b, order], boxes[b, want], rtol=0, atol=1e-9)
        assert torch.equal(got_labels[b, order], labels[b, want])


def test_decode_is_batched_per_image():
    g = torch.Generator().manual_seed(1)
    heat = torch.randn(3, 2, 5, 7, generator=g)
    size = torch.rand(3, 2, 5, 7, generator=g)
    offset = torch.rand(3, 2, 5, 7, generator=g)
    full = centernet_decode(heat, size, offset, k=6)
    for i in range(3):
        one = centernet_decode(heat[i : i + 1], size[i : i + 1], offset[i : i + 1], k=6)
        for x, y in zip(full, one):
            torch.testing.assert_close(x[i : i + 1], y)


def test_decode_k_is_clamped_and_empty_maps():
    heat, size, offset = hand_built()
    boxes, scores, labels = centernet_decode(heat, size, offset, k=1000, logits=False)
    assert boxes.shape == (1, 96, 4) and scores.shape == (1, 96) and labels.shape == (1, 96)
    boxes, scores, labels = centernet_decode(
        torch.zeros(2, 0, 6, 8), torch.zeros(2, 2, 6, 8), torch.zeros(2, 2, 6, 8)
    )
    assert boxes.shape == (2, 0, 4) and scores.shape == (2, 0) and labels.dtype == torch.int64
    # a map without any object decodes to finite zero-score boxes
    boxes, scores, _ = centernet_decode(
        torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 4), None, logits=False, k=5
    )
    assert (scores == 0).all() and torch.isfinite(boxes).all()


def test_decode_dtypes():
    heat, size, offset = hand_built()
    boxes, scores, labels = centernet_decode(
        heat.double(), size.double(), offset.double(), k=2, logits=False
    )
    assert boxes.dtype == scores.dtype == torch.float64 and labels.dtype == torch.int64
    boxes, scores, _ = centernet_decode(heat.half(), size.half(), offset.half(), k=2, logits=False)
    assert boxes.dtype == scores.dtype == torch.float16
    torch.testing.assert_close(
        boxes.float(), centernet_decode(heat, size, offset, k=2, logits=False)[0]
    )


def test_decode_errors():
    heat, size, offset = hand_built()
    with pytest.raises(
        ValueError, match=r"heatmap: expected shape \[B, C, H, W\], got \[2, 6, 8\]"
    ):
        centernet_decode(heat[0], size, offset)
    with pytest.raises(
        ValueError, match=r"size: expected shape \[1, 2, 6, 8\], got \[1, 2, 6, 7\]"
    ):
        centernet_decode(heat, size[..., :7], offset)
    with pytest.raises(
        ValueError, match=r"offset: expected shape \[1, 2, 6, 8\], got \[1, 3, 6, 8\]"
    ):
        centernet_decode(heat, size, torch.zeros(1, 3, 6, 8))
    with pytest.raises(ValueError, match="k must be > 0, got 0"):
        centernet_decode(heat, size, offset, k=0)
    with pytest.raises(TypeError, match="k must be an int, got float"):
        centernet_decode(heat, size, offset, k=2.0)
    with pytest.raises(ValueError, match="kernel must be a positive odd int, got 4"):
        centernet_decode(heat, size, offset, kernel=4)
    with pytest.raises(ValueError, match="stride must be a finite number > 0, got 0"):
        centernet_decode(heat, size, offset, stride=0)
