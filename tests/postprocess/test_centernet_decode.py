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


def decode_one(*args, **kwargs):
    """The single image's (boxes, scores, labels)."""
    (image,) = centernet_decode(*args, **kwargs)
    return image["boxes"], image["scores"], image["labels"]


def test_decode_hand_built_heatmap():
    heat, size, offset = hand_built()
    out = centernet_decode(heat, size, offset, k=3, stride=4, logits=False)
    assert isinstance(out, list) and len(out) == 1 and set(out[0]) == {"boxes", "scores", "labels"}
    boxes, scores, labels = decode_one(heat, size, offset, k=3, stride=4, logits=False)
    assert boxes.shape == (3, 4) and scores.shape == (3,) and labels.shape == (3,)
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, 0.6]))
    assert labels.tolist() == [0, 1, 0]
    # peak (x=2, y=1): centre (2.25, 1.5) * 4 = (9, 6), size (2, 4) * 4 = (8, 16)
    # peak (x=6, y=4): centre (6.5, 4) * 4 = (26, 16), size (3, 1) * 4 = (12, 4)
    expected = torch.tensor(
        [[5.0, -2.0, 13.0, 14.0], [20.0, 14.0, 32.0, 18.0], [20.0, 14.0, 32.0, 18.0]]
    )
    torch.testing.assert_close(boxes, expected)
    # the suppressed shoulder (0.8) and the other zero-score cells are not returned
    _, scores, _ = decode_one(heat, size, offset, k=5, logits=False)
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, 0.6]))
    # score_threshold is strict
    _, scores, _ = decode_one(heat, size, offset, k=5, logits=False, score_threshold=0.7)
    torch.testing.assert_close(scores, torch.tensor([0.9]))


def test_decode_logits_equals_probabilities():
    heat, size, offset = hand_built()
    logits = torch.logit(heat.clamp(1e-6, 1 - 1e-6))
    a = decode_one(logits, size, offset, k=3)
    b = decode_one(torch.sigmoid(logits), size, offset, k=3, logits=False)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_decode_without_offset_and_other_kernel():
    heat, size, offset = hand_built()
    boxes, _, _ = decode_one(heat, size, None, k=1, stride=2, logits=False)
    torch.testing.assert_close(boxes, torch.tensor([[2.0, -2.0, 6.0, 6.0]]))
    # a 5 x 5 window: the 0.6 peak at (6, 4) is no longer beaten, but 0.8 is still beaten
    _, scores, _ = decode_one(heat, size, offset, k=3, logits=False, kernel=5)
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, 0.6]))
    _, scores, _ = decode_one(heat, size, offset, k=3, logits=False, kernel=1)
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.8, 0.7]))


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
    out = centernet_decode(t["heatmap"], t["size"], t["offset"], k=n, logits=False)
    for b, image in enumerate(out):
        assert (image["scores"] == 1).all()
        order = torch.argsort(image["boxes"][:, 0])
        want = torch.argsort(boxes[b, :, 0])
        torch.testing.assert_close(image["boxes"][order], boxes[b, want], rtol=0, atol=1e-9)
        assert torch.equal(image["labels"][order], labels[b, want])


def test_decode_is_batched_per_image():
    g = torch.Generator().manual_seed(1)
    heat = torch.randn(3, 2, 5, 7, generator=g)
    size = torch.rand(3, 2, 5, 7, generator=g)
    offset = torch.rand(3, 2, 5, 7, generator=g)
    full = centernet_decode(heat, size, offset, k=6)
    assert len(full) == 3
    for i in range(3):
        (one,) = centernet_decode(heat[i : i + 1], size[i : i + 1], offset[i : i + 1], k=6)
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(full[i][key], one[key])
        assert (one["scores"][:-1] >= one["scores"][1:]).all()


def test_decode_k_is_clamped_and_empty_maps():
    heat, size, offset = hand_built()
    _, scores, _ = decode_one(heat + 0.01, size, offset, k=1000, logits=False, kernel=1)
    assert scores.shape == (96,)  # every cell is a peak of a 1 x 1 window
    out = centernet_decode(
        torch.zeros(2, 0, 6, 8), torch.zeros(2, 2, 6, 8), torch.zeros(2, 2, 6, 8)
    )
    assert len(out) == 2
    assert out[0]["boxes"].shape == (0, 4) and out[0]["labels"].dtype == torch.int64
    # a map without any object decodes to nothing
    boxes, scores, labels = decode_one(
        torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 4), None, logits=False, k=5
    )
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)


def test_decode_dtypes():
    heat, size, offset = hand_built()
    boxes, scores, labels = decode_one(
        heat.double(), size.double(), offset.double(), k=2, logits=False
    )
    assert boxes.dtype == scores.dtype == torch.float64 and labels.dtype == torch.int64
    boxes, scores, _ = decode_one(heat.half(), size.half(), offset.half(), k=2, logits=False)
    assert boxes.dtype == scores.dtype == torch.float16
    torch.testing.assert_close(boxes.float(), decode_one(heat, size, offset, k=2, logits=False)[0])


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
    with pytest.raises(ValueError, match=r"score_threshold must be in \[0, 1\), got 1"):
        centernet_decode(heat, size, offset, score_threshold=1)
