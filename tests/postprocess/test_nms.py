import importlib

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from _paths import PATHS, use_path
from detloss.anchors import decode_boxes, ssd_priors
from detloss.boxes import box_iou
from detloss.postprocess.nms import batched_nms, nms
from detloss.postprocess.ssd import ssd_detect

# The package re-exports the function nms, which shadows the submodule as an attribute.
nms_module = importlib.import_module("detloss.postprocess.nms")


@pytest.fixture(scope="module", autouse=True, params=PATHS)
def cpu_path(request):
    """Every test on both CPU paths: the compiled loop and the torch one (accelerators)."""
    yield from use_path(request.param)


@pytest.fixture(autouse=True)
def one_thread():
    """Many small calls: a second intra-op thread only adds wake-up latency here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def slow_nms(boxes, scores, idxs, threshold):
    """Greedy NMS by plain loops: visit by (score desc, index asc); drop a box whose IoU
    with a kept box of its group is above the threshold."""
    iou = box_iou(boxes.double(), boxes.double())
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept = []
    for i in order:
        if all(int(idxs[j]) != int(idxs[i]) or iou[i, j] <= threshold for j in kept):
            kept.append(i)
    return kept


def torchvision_nms(boxes, scores, threshold, idxs=None):
    """torchvision's CPU kernel transcribed with scalars of the boxes' type (float64 boxes
    in float64, others in float32): boxes by (score desc, index asc); a kept box
    suppresses a later box of its group when ``inter / (area_i + area_j - inter)``,
    computed in that type, is above the threshold as a float64 comparison. The groups
    are suppressed independently (torchvision's per-class path) and the kept boxes of
    all groups returned by (score desc, index asc)."""
    dtype = np.float64 if boxes.dtype == torch.float64 else np.float32
    b = boxes.to(torch.float64).numpy().astype(dtype)
    n = len(b)
    group = [0] * n if idxs is None else [int(v) for v in idxs]
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    area = [(b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1]) for i in range(n)]
    zero = dtype(0)
    suppressed = [False] * n
    keep = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for pos, i in enumerate(order):
            if suppressed[i]:
                continue
            keep.append(i)
            for j in order[pos + 1 :]:
                if suppressed[j] or group[j] != group[i]:
                    continue
                xx1, yy1 = max(b[i, 0], b[j, 0]), max(b[i, 1], b[j, 1])
                xx2, yy2 = min(b[i, 2], b[j, 2]), min(b[i, 3], b[j, 3])
                inter = max(zero, xx2 - xx1) * max(zero, yy2 - yy1)
                if float(inter / (area[i] + area[j] - inter)) > threshold:
                    suppressed[j] = True
    return keep


def random_boxes(g, n, spread=10.0, size=5.0):
    xy = torch.rand(n, 2, generator=g) * spread
    wh = torch.rand(n, 2, generator=g) * size
    return torch.cat((xy, xy + wh), dim=1)


# --- nms / batched_nms ----------------------------------------------------------------------


@given(st.integers(0, 10_000), st.integers(0, 40), st.sampled_from([0.0, 0.3, 0.5, 0.7]))
def test_nms_equals_slow_reference(seed, n, threshold):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(g, n)
    # Integer scores give many ties: equal scores are visited in index order.
    scores = torch.randint(0, 4, (n,), generator=g).float()
    expected = slow_nms(boxes, scores, torch.zeros(n), threshold)
    assert nms(boxes, scores, threshold).tolist() == expected
    assert torchvision_nms(boxes, scores, threshold) == expected


@given(st.integers(0, 10_000), st.integers(0, 50))
def test_batched_nms_equals_slow_reference(seed, n):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(g, n)
    scores = torch.rand(n, generator=g).round(decimals=1)
    idxs = torch.randint(-1, 3, (n,), generator=g)
    expected = torchvision_nms(boxes, scores, 0.4, idxs)
    assert batched_nms(boxes, scores, idxs, 0.4).tolist() == expected


def test_batched_nms_is_the_union_of_per_class_nms():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(g, 200, spread=20)
    scores = torch.rand(200, generator=g)
    idxs = torch.randint(0, 5, (200,), generator=g)
    kept = batched_nms(boxes, scores, idxs, 0.5)
    union = []
    for c in range(5):
        members = (idxs == c).nonzero().squeeze(1)
        union.append(members[nms(boxes[members], scores[members], 0.5)])
    union = torch.cat(union)
    assert kept.tolist() == union[scores[union].argsort(descending=True, stable=True)].tolist()
    assert bool((scores[kept].diff() <= 0).all())


def test_blocked_computation_equals_one_block(monkeypatch):
    g = torch.Generator().manual_seed(1)
    boxes = random_boxes(g, 300, spread=30)
    scores = torch.rand(300, generator=g)
    idxs = torch.randint(0, 4, (300,), generator=g)
    expected = slow_nms(boxes, scores, idxs, 0.3)
    assert batched_nms(boxes, scores, idxs, 0.3).tolist() == expected
    # Few pairs at once: several column blocks per group chunk and sliced IoU blocks.
    monkeypatch.setattr(nms_module, "_SCAN_PAIRS", 500)
    monkeypatch.setattr(nms_module, "_CPU_PAIRS", 77)
    assert batched_nms(boxes, scores, idxs, 0.3).tolist() == expected
    assert nms(boxes, scores, 0.3).tolist() == slow_nms(boxes, scores, torch.zeros(300), 0.3)


def test_threshold_is_strict():
    # IoU exactly 0.5: suppressed only when the threshold is below it.
    boxes = torch.tensor([[0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 4.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert box_iou(boxes, boxes)[0, 1].item() == 0.5
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]


def test_ties_are_decided_in_the_boxes_type_as_torchvision():
    # Integer boxes with IoU exactly 1/10 and 3/10: the float32 quotients round above 0.1
    # and 0.3 (0.1000000015, 0.3000000119), so torchvision suppresses at those thresholds;
    # in float64 the quotients equal the thresholds and nothing is suppressed.
    tenth = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 1.0, 1.0]])  # IoU 1 / 10
    three = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 3.0, 1.0]])  # IoU 3 / 10
    scores = torch.tensor([0.9, 0.8])
    for boxes, t in ((tenth, 0.1), (three, 0.3)):
        assert float(np.float32(t)) > t
        assert nms(boxes, scores, t).tolist() == [0] == torchvision_nms(boxes, scores, t)
        assert nms(boxes.double(), scores, t).tolist() == [0, 1]
        assert nms(boxes.int(), scores, t).tolist() == [0]  # integers are read in float32
        labels = torch.tensor([3, 3])
        assert batched_nms(boxes, scores, labels, t).tolist() == [0]
        assert batched_nms(boxes.double(), scores, labels, t).tolist() == [0, 1]


@given(
    st.integers(0, 10_000),
    st.integers(0, 30),
    st.sampled_from([0.1, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.6, 0.7, 0.9]),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_integer_boxes_with_exact_ties_equal_torchvision(seed, n, threshold, dtype):
    # Small integer boxes: many pairs with IoU exactly at a threshold.
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 4, (n, 2), generator=g)
    boxes = torch.cat([xy, xy + torch.randint(1, 5, (n, 2), generator=g)], 1).to(dtype)
    scores = torch.randint(0, 3, (n,), generator=g).to(dtype)
    idxs = torch.randint(0, 2, (n,), generator=g)
    assert nms(boxes, scores, threshold).tolist() == torchvision_nms(boxes, scores, threshold)
    assert batched_nms(boxes, scores, idxs, threshold).tolist() == torchvision_nms(
        boxes, scores, threshold, idxs
    )


@given(
    st.lists(
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e-30, -1e-30, float("inf"), -3e38]),
        max_size=40,
    ),
    st.sampled_from([torch.float32, torch.float64, torch.int64, torch.float16]),
)
def test_score_order_is_stable_descending(values, dtype):
    # Disjoint boxes: everything is kept, so the result is the visiting order: scores
    # descending, equal scores (-0.0 equals +0.0) in index order. An infinite score is
    # rejected by the input scan; with the scan off it ranks as torch.sort ranks it.
    scores = torch.tensor(values, dtype=torch.float64).to(dtype)
    n = len(values)
    boxes = torch.arange(n, dtype=torch.float32)[:, None] * 2 + torch.tensor([0.0, 0, 1, 1])
    expected = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    assert nms(boxes, scores, 0.5, validate=False).tolist() == expected
    groups = torch.tensor([(-1) ** i * 2**40 * (i % 3) for i in range(n)], dtype=torch.int64)
    assert batched_nms(boxes, scores, groups, 0.5, validate=False).tolist() == expected


def test_identical_degenerate_and_empty_inputs():
    boxes = torch.tensor(
        [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]]
    )
    scores = torch.tensor([0.5, 0.9, 0.7, 0.8])
    # The duplicate is suppressed by the higher score; zero-area boxes never overlap.
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 2]
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    # An inverted box has zero extent and suppresses nothing.
    inverted = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    assert nms(inverted, torch.tensor([0.9, 0.8]), 0.0).tolist() == [0, 1]


def test_dtypes():
    g = torch.Generator().manual_seed(2)
    boxes = random_boxes(g, 60)
    scores = torch.rand(60, generator=g)
    expected = nms(boxes, scores, 0.5)
    assert nms(boxes.double(), scores.double(), 0.5).tolist() == expected.tolist()
    pixel = (boxes * 100).round().int()
    assert nms(pixel, scores, 0.5).tolist() == slow_nms(pixel, scores, torch.zeros(60), 0.5)
    half = nms(boxes.half(), scores.half(), 0.5)
    assert half.dtype == torch.int64


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: nms(torch.zeros(3, 5), torch.zeros(3), 0.5),
            ValueError,
            r"boxes: expected shape \[N, 4\], got \[3, 5\]",
        ),
        (
            lambda: nms(torch.zeros(3, 4), torch.zeros(2), 0.5),
            ValueError,
            r"scores: expected shape \[3\] \(one per box\), got \[2\]",
        ),
        (
            lambda: nms(torch.zeros(3, 4), torch.zeros(3, 1), 0.5),
            ValueError,
            r"scores: expected shape \[N\], got \[3, 1\]",
        ),
        (
            lambda: nms(torch.zeros(3, 4), torch.zeros(3), -0.1),
            ValueError,
            r"iou_threshold must be a number >= 0, got -0.1",
        ),
        (
            lambda: nms(torch.zeros(3, 4), torch.zeros(3), float("nan")),
            ValueError,
            r"iou_threshold must be a number >= 0, got nan",
        ),
        (
            lambda: nms(torch.zeros(3, 4), torch.zeros(3), "0.5"),
            ValueError,
            r"iou_threshold must be a number >= 0, got '0.5'",
        ),
        (
            lambda: batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5),
            TypeError,
            r"idxs must be an integer tensor, got torch.float32",
        ),
        (
            lambda: batched_nms(
                torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, dtype=torch.int64), 0.5
            ),
            ValueError,
            r"idxs: expected shape \[3\] \(one per box\), got \[2\]",
        ),
        (
            lambda: nms([[0, 0, 1, 1]], torch.zeros(1), 0.5),
            TypeError,
            r"boxes must be a torch.Tensor, got list",
        ),
    ],
)
def test_nms_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- ssd_detect -----------------------------------------------------------------------------


def slow_detect(
    loc, conf, priors, conf_threshold, nms_threshold, top_k, per_class, variances=(0.1, 0.2)
):
    """Per image and class: threshold, the best `per_class` by (score desc, prior asc),
    greedy NMS; then the best `top_k` of the image."""
    results = []
    for b in range(loc.shape[0]):
        boxes = decode_boxes(loc[b].double(), priors.double(), variances)
        probs = conf[b].double().softmax(dim=-1)
        found = []
        for c in range(1, conf.shape[2]):
            order = sorted(range(priors.shape[0]), key=lambda p, c=c: (-float(probs[p, c]), p))
            chosen = [p for p in order[:per_class] if probs[p, c] > conf_threshold]
            if not chosen:
                continue
            chosen_t = torch.tensor(chosen)
            kept = slow_nms(
                boxes[chosen_t], probs[chosen_t, c], torch.zeros(len(chosen)), nms_threshold
            )
            found += [(float(probs[chosen[k], c]), chosen[k], c - 1) for k in kept]
        found.sort(key=lambda f: -f[0])
        results.append(found[:top_k])
    return results


def test_ssd_detect_equals_slow_reference():
    priors = ssd_priors(
        image_size=100,
        feature_maps=(4, 2),
        steps=(25, 50),
        min_sizes=(30, 60),
        max_sizes=(60, 90),
        aspect_ratios=((2,), (2,)),
    )  # 80 priors
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(3, 80, 4, generator=g) * 0.5
    conf = torch.randn(3, 80, 4, generator=g) * 2
    for conf_threshold, top_k, per_class in ((0.2, 30, 10), (0.01, 200, 200), (0.5, 5, 3)):
        got = ssd_detect(
            loc, conf, priors, conf_threshold, 0.45, top_k, candidates_per_class=per_class
        )
        expected = slow_detect(loc, conf, priors, conf_threshold, 0.45, top_k, per_class)
        for image, (out, ref) in enumerate(zip(got, expected, strict=True)):
            assert out["labels"].tolist() == [r[2] for r in ref]
            torch.testing.assert_close(out["scores"], torch.tensor([r[0] for r in ref]))
            boxes = decode_boxes(loc[image], priors)
            ref_boxes = boxes[[r[1] for r in ref]] if ref else torch.zeros(0, 4)
            torch.testing.assert_close(out["boxes"], ref_boxes)


def test_ssd_detect_hand_built_case():
    # Three priors: two overlapping (IoU 0.6), one apart; zero offsets decode to the priors.
    priors = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.33, 0.3, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]])
    loc = torch.zeros(1, 3, 4)
    prob = torch.tensor(
        [
            [0.1, 0.8, 0.1],  # class 0 (logit 1) at 0.8
            [0.1, 0.7, 0.2],  # class 0 at 0.7: suppressed by prior 0; class 1 at 0.2 stays
            [0.97, 0.005, 0.025],  # class 0 below the threshold, class 1 at 0.025
        ]
    )
    out = ssd_detect(loc, prob.log()[None], priors, score_threshold=0.01, iou_threshold=0.45)[0]
    assert out["labels"].tolist() == [0, 1, 1]
    torch.testing.assert_close(out["scores"], torch.tensor([0.8, 0.2, 0.025]))
    expected_boxes = torch.tensor(
        [[0.2, 0.2, 0.4, 0.4], [0.23, 0.2, 0.43, 0.4], [0.7, 0.7, 0.9, 0.9]]
    )
    torch.testing.assert_close(out["boxes"], expected_boxes)
    # top_k keeps the best overall; a stricter threshold drops the weak box.
    assert ssd_detect(loc, prob.log()[None], priors, top_k=1)[0]["labels"].tolist() == [0]
    assert ssd_detect(loc, prob.log()[None], priors, score_threshold=0.1)[0]["scores"].shape == (2,)


def test_ssd_detect_empty_and_dtypes():
    priors = ssd_priors(
        image_size=100,
        feature_maps=(2,),
        steps=(50,),
        min_sizes=(40,),
        max_sizes=None,
        aspect_ratios=((),),
    )
    conf = torch.zeros(2, 4, 3)
    conf[..., 0] = 20.0  # confident background everywhere
    out = ssd_detect(torch.zeros(2, 4, 4), conf, priors)
    assert len(out) == 2
    assert out[0]["boxes"].shape == (0, 4) and out[0]["labels"].dtype == torch.int64
    half = ssd_detect(
        torch.zeros(1, 4, 4, dtype=torch.float16),
        torch.zeros(1, 4, 3, dtype=torch.float16),
        priors.half(),
    )
    assert half[0]["scores"].dtype == torch.float32
    assert half[0]["scores"].shape == (8,)  # 4 disjoint priors x 2 classes at 1/3
    assert ssd_detect(torch.zeros(0, 4, 4), torch.zeros(0, 4, 3), priors) == []


P4 = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 4)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: ssd_detect(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), P4),
            ValueError,
            r"loc: expected shape \[B, P, 4\], got \[1, 4, 3\]",
        ),
        (
            lambda: ssd_detect(torch.zeros(1, 4, 4), torch.zeros(1, 4, 1), P4),
            ValueError,
            r"conf: expected shape \[1, 4, C\] with C >= 2 \(background \+ classes\), got \[1, 4, 1\]",
        ),
        (
            lambda: ssd_detect(torch.zeros(1, 4, 4), torch.zeros(1, 4, 3), P4[:3]),
            ValueError,
            r"priors: expected shape \[4, 4\] \(one per prediction\), got \[3, 4\]",
        ),
        (
            lambda: ssd_detect(torch.zeros(1, 4, 4), torch.zeros(1, 4, 3), P4, score_threshold=1.0),
            ValueError,
            r"score_threshold must be in \[0, 1\), got 1.0",
        ),
        (
            lambda: ssd_detect(torch.zeros(1, 4, 4), torch.zeros(1, 4, 3), P4, top_k=0),
            ValueError,
            r"top_k must be a positive int, got 0",
        ),
        (
            lambda: ssd_detect(
                torch.zeros(1, 4, 4), torch.zeros(1, 4, 3), P4, candidates_per_class=2.5
            ),
            ValueError,
            r"candidates_per_class must be a positive int, got 2.5",
        ),
        (
            lambda: ssd_detect(torch.zeros(1, 4, 4), torch.zeros(1, 4, 3), P4, iou_threshold=-1),
            ValueError,
            r"iou_threshold must be a number >= 0, got -1",
        ),
        (
            lambda: ssd_detect(torch.zeros(1, 4, 4), torch.zeros(1, 4, 3), P4, variances=(0.1,)),
            ValueError,
            r"variances: expected two positive numbers",
        ),
    ],
)
def test_ssd_detect_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
