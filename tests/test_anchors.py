import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detloss.anchors import (
    MAX_SIZE_LOG,
    MIN_SIZE_RATIO,
    BoxCoder,
    decode_boxes,
    encode_boxes,
    ssd_priors,
)

SMALL = {
    "image_size": 100,
    "feature_maps": (4, 2, 1),
    "steps": (25, 50, 100),
    "min_sizes": (20, 45, 70),
    "max_sizes": (45, 70, 95),
    "aspect_ratios": ((2,), (2, 3), (2,)),
}


def slow_priors(image_size, feature_maps, steps, min_sizes, max_sizes, aspect_ratios, clip):
    """The SSD default boxes by plain loops (float64)."""
    out = []
    for k, f in enumerate(feature_maps):
        for i, j in itertools.product(range(f), repeat=2):
            cx = (j + 0.5) * steps[k] / image_size
            cy = (i + 0.5) * steps[k] / image_size
            s = min_sizes[k] / image_size
            out.append([cx, cy, s, s])
            if max_sizes is not None:
                big = math.sqrt(s * max_sizes[k] / image_size)
                out.append([cx, cy, big, big])
            for r in aspect_ratios[k]:
                out.append([cx, cy, s * math.sqrt(r), s / math.sqrt(r)])
                out.append([cx, cy, s / math.sqrt(r), s * math.sqrt(r)])
    priors = torch.tensor(out, dtype=torch.float64)
    return priors.clamp(0, 1) if clip else priors


# --- priors -------------------------------------------------------------------------------


def test_ssd300_has_8732_priors():
    priors = ssd_priors()
    assert priors.shape == (8732, 4)
    assert priors.dtype == torch.float32
    assert bool(((priors >= 0) & (priors <= 1)).all())


def test_ssd300_hand_checked_priors():
    priors = ssd_priors(dtype=torch.float64)
    c = 0.5 * 8 / 300
    s2 = math.sqrt(2)
    expected_first_cell = [
        [c, c, 0.1, 0.1],
        [c, c, math.sqrt(30 * 60) / 300, math.sqrt(30 * 60) / 300],
        [c, c, 0.1 * s2, 0.1 / s2],
        [c, c, 0.1 / s2, 0.1 * s2],
    ]
    torch.testing.assert_close(priors[:4], torch.tensor(expected_first_cell, dtype=torch.float64))
    # Second cell of the first row: one step to the right; first cell of the second row.
    torch.testing.assert_close(priors[4, :2], torch.tensor([1.5 * 8 / 300, c], dtype=torch.float64))
    torch.testing.assert_close(
        priors[38 * 4, :2], torch.tensor([c, 1.5 * 8 / 300], dtype=torch.float64)
    )
    # The second level starts after 38 * 38 * 4 priors, with ratios 2 and 3.
    level2 = priors[5776 : 5776 + 6]
    torch.testing.assert_close(level2[:, 0], torch.full((6,), 8 / 300, dtype=torch.float64))
    torch.testing.assert_close(level2[0, 2:], torch.tensor([0.2, 0.2], dtype=torch.float64))
    s3 = math.sqrt(3)
    torch.testing.assert_close(
        level2[4, 2:], torch.tensor([0.2 * s3, 0.2 / s3], dtype=torch.float64)
    )
    # The last level is one cell at the centre; its ratio-2 box is 1.2445 wide, clipped to 1.
    s = 264 / 300
    last = torch.tensor(
        [
            [0.5, 0.5, s, s],
            [0.5, 0.5, math.sqrt(s * 315 / 300), math.sqrt(s * 315 / 300)],
            [0.5, 0.5, 1.0, s / s2],
            [0.5, 0.5, s / s2, 1.0],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(priors[-4:], last)
    unclipped = ssd_priors(clip=False, dtype=torch.float64)
    assert unclipped[-2, 2].item() == pytest.approx(s * s2)


@pytest.mark.parametrize("clip", [True, False])
def test_priors_equal_slow_loops(clip):
    defaults = {
        "image_size": 300,
        "feature_maps": (38, 19, 10, 5, 3, 1),
        "steps": (8, 16, 32, 64, 100, 300),
        "min_sizes": (30, 60, 111, 162, 213, 264),
        "max_sizes": (60, 111, 162, 213, 264, 315),
        "aspect_ratios": ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    }
    expected = slow_priors(**defaults, clip=clip)
    torch.testing.assert_close(ssd_priors(clip=clip, dtype=torch.float64), expected)
    torch.testing.assert_close(ssd_priors(clip=clip), expected.float())


def test_configurable_priors():
    priors = ssd_priors(**SMALL)
    assert priors.shape == (16 * 4 + 4 * 6 + 1 * 4, 4)
    torch.testing.assert_close(priors, slow_priors(**SMALL, clip=True).float())
    no_big = ssd_priors(**{**SMALL, "max_sizes": None}, clip=False, dtype=torch.float64)
    assert no_big.shape == (16 * 3 + 4 * 5 + 1 * 3, 4)
    torch.testing.assert_close(no_big, slow_priors(**{**SMALL, "max_sizes": None}, clip=False))
    # Lists are accepted as well as tuples.
    as_lists = ssd_priors(
        100, [4, 2, 1], [25, 50, 100], [20, 45, 70], [45, 70, 95], [[2], [2, 3], [2]]
    )
    torch.testing.assert_close(as_lists, priors)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"image_size": 0}, ValueError, r"image_size: expected a positive number, got 0"),
        ({"feature_maps": (38, 0)}, ValueError, r"feature_maps: expected positive ints"),
        ({"feature_maps": 38}, TypeError, r"feature_maps must be a sequence of ints, got int"),
        ({"steps": (8, -1, 32, 64, 100, 300)}, ValueError, r"steps: expected positive numbers"),
        (
            {"min_sizes": (30, 60)},
            ValueError,
            r"min_sizes: expected 6 entries \(one per feature map\), got 2",
        ),
        ({"max_sizes": (1, 2, 3)}, ValueError, r"max_sizes: expected 6 entries"),
        ({"aspect_ratios": ((2,),)}, ValueError, r"aspect_ratios: expected 6 entries"),
        (
            {"aspect_ratios": ((2,), (0,), (2,), (2,), (2,), (2,))},
            ValueError,
            r"aspect_ratios\[1\]: expected positive numbers",
        ),
        ({"aspect_ratios": "2"}, TypeError, r"aspect_ratios must be a sequence of sequences"),
    ],
)
def test_prior_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        ssd_priors(**kwargs)


# --- encode / decode ----------------------------------------------------------------------


def test_encode_hand_checked():
    prior = torch.tensor([0.5, 0.5, 0.2, 0.2], dtype=torch.float64)
    gt = torch.tensor([0.4, 0.4, 0.6, 0.7], dtype=torch.float64)
    offsets = BoxCoder().encode(gt, prior)
    torch.testing.assert_close(
        offsets, torch.tensor([0.0, 2.5, 0.0, 2.0273255], dtype=torch.float64)
    )
    torch.testing.assert_close(BoxCoder().decode(offsets, prior), gt)


def test_encode_variances_scale_offsets():
    prior = torch.tensor([0.5, 0.5, 0.2, 0.2], dtype=torch.float64)
    gt = torch.tensor([0.4, 0.4, 0.6, 0.7], dtype=torch.float64)
    raw = encode_boxes(gt, prior, (1.0, 1.0))
    torch.testing.assert_close(
        encode_boxes(gt, prior, (0.1, 0.2)),
        raw / torch.tensor([0.1, 0.1, 0.2, 0.2], dtype=torch.float64),
    )


def test_encode_broadcasts_over_batch():
    priors = ssd_priors(**SMALL)
    g = torch.Generator().manual_seed(0)
    centre = torch.rand(3, priors.shape[0], 2, generator=g)
    size = torch.rand(3, priors.shape[0], 2, generator=g) * 0.5 + 0.01
    boxes = torch.cat((centre - size / 2, centre + size / 2), dim=-1)
    coder = BoxCoder()
    batched = coder.encode(boxes, priors)
    assert batched.shape == (3, priors.shape[0], 4)
    for b in range(3):
        torch.testing.assert_close(batched[b], coder.encode(boxes[b], priors))
    torch.testing.assert_close(coder.decode(batched, priors), boxes, rtol=1e-5, atol=1e-6)


@given(
    st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2),
    st.lists(st.floats(0.001, 0.6), min_size=2, max_size=2),
    st.lists(st.floats(0.01, 1.0), min_size=2, max_size=2),
    st.sampled_from([(0.1, 0.2), (1.0, 1.0), (0.5, 0.05)]),
)
def test_decode_inverts_encode(centre, size, prior_size, variances):
    # Size ratios stay below the decode clamp (62.5).
    prior = torch.tensor([0.5, 0.5, *prior_size], dtype=torch.float64)
    c = torch.tensor(centre, dtype=torch.float64)
    s = torch.tensor(size, dtype=torch.float64)
    gt = torch.cat((c - s / 2, c + s / 2))
    back = decode_boxes(encode_boxes(gt, prior, variances), prior, variances)
    torch.testing.assert_close(back, gt, rtol=1e-9, atol=1e-12)


def test_degenerate_boxes_encode_finite_with_documented_clamp():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.2]], dtype=torch.float64)
    gt = torch.tensor(
        [[0.5, 0.5, 0.5, 0.5], [0.4, 0.4, 0.3, 0.6]], dtype=torch.float64, requires_grad=True
    )
    offsets = encode_boxes(gt, prior)
    assert bool(torch.isfinite(offsets).all())
    clamped = math.log(MIN_SIZE_RATIO) / 0.2
    torch.testing.assert_close(
        offsets[0, 2:], torch.tensor([clamped, clamped], dtype=torch.float64)
    )
    # An inverted box (x2 < x1) counts as zero width.
    assert offsets[1, 2].item() == pytest.approx(clamped)
    offsets.sum().backward()
    assert bool(torch.isfinite(gt.grad).all())


def test_decode_clamps_huge_size_offsets():
    prior = torch.tensor([0.5, 0.5, 0.1, 0.1])
    boxes = decode_boxes(torch.tensor([0.0, 0.0, 1e4, -1e4]), prior)
    assert bool(torch.isfinite(boxes).all())
    width = (boxes[2] - boxes[0]).item()
    assert width == pytest.approx(0.1 * math.exp(MAX_SIZE_LOG), rel=1e-5)
    assert (boxes[3] - boxes[1]).item() == pytest.approx(0.0, abs=1e-6)


def test_dtypes_half_and_integer():
    prior = torch.tensor([0.5, 0.5, 0.2, 0.2])
    gt = torch.tensor([0.4, 0.4, 0.6, 0.7])
    ref = encode_boxes(gt, prior)
    half = encode_boxes(gt.half(), prior.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), ref, rtol=1e-2, atol=1e-2)
    bf = decode_boxes(ref.bfloat16(), prior.bfloat16())
    assert bf.dtype == torch.bfloat16
    pixel = encode_boxes(torch.tensor([40, 40, 60, 70]), torch.tensor([50, 50, 20, 20]))
    assert pixel.dtype == torch.float32
    torch.testing.assert_close(pixel, torch.tensor([0.0, 2.5, 0.0, 2.0273255]))


def test_gradcheck_encode_decode():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.2, 0.7, 0.1, 0.1]], dtype=torch.float64)
    gt = torch.tensor([[0.4, 0.4, 0.6, 0.7], [0.1, 0.6, 0.3, 0.9]], dtype=torch.float64)
    offsets = torch.randn(2, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda b: encode_boxes(b, prior), (gt.requires_grad_(),))
    assert torch.autograd.gradcheck(lambda d: decode_boxes(d, prior), (offsets.requires_grad_(),))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: encode_boxes(torch.zeros(3, 5), torch.zeros(3, 4)),
            ValueError,
            r"boxes: expected shape \[\.\.\., 4\], got \[3, 5\]",
        ),
        (
            lambda: encode_boxes(torch.zeros(3, 4), torch.zeros(4)[:3]),
            ValueError,
            r"priors: expected shape \[\.\.\., 4\], got \[3\]",
        ),
        (
            lambda: decode_boxes(torch.zeros(2, 3, 4), torch.zeros(5, 4)),
            ValueError,
            r"offsets and priors: expected broadcastable shapes \[\.\.\., 4\], got \[2, 3, 4\] and \[5, 4\]",
        ),
        (
            lambda: encode_boxes([0, 0, 1, 1], torch.zeros(4)),
            TypeError,
            r"boxes must be a torch.Tensor, got list",
        ),
        (
            lambda: BoxCoder((0.1,)),
            ValueError,
            r"variances: expected two positive numbers \(v_xy, v_wh\), got \(0.1,\)",
        ),
        (lambda: BoxCoder((0.1, 0.0)), ValueError, r"variances: expected two positive numbers"),
        (lambda: BoxCoder(0.1), TypeError, r"variances must be a pair of numbers"),
    ],
)
def test_coder_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_coder_matches_functions_and_repr():
    coder = BoxCoder([0.2, 0.1])
    assert coder.variances == (0.2, 0.1)
    assert repr(coder) == "BoxCoder(variances=(0.2, 0.1))"
    prior = torch.tensor([0.5, 0.5, 0.2, 0.2])
    gt = torch.tensor([0.4, 0.4, 0.6, 0.7])
    torch.testing.assert_close(coder.encode(gt, prior), encode_boxes(gt, prior, (0.2, 0.1)))
    d = torch.tensor([0.3, -0.2, 0.5, 0.1])
    torch.testing.assert_close(coder.decode(d, prior), decode_boxes(d, prior, (0.2, 0.1)))
