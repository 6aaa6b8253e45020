"""Metrics on hand-computed cases, against brute force, and their error messages."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detloss.metrics import (
    COCO_IOU_THRESHOLDS,
    coco_box_ap,
    count_metrics,
    match_points_within,
    point_metrics,
    voc_box_ap,
)


def _det(boxes, scores, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    labels = torch.zeros(n, dtype=torch.int64) if labels is None else torch.tensor(labels)
    return {"boxes": boxes, "scores": torch.tensor(scores, dtype=torch.float32), "labels": labels}


def _gt(boxes, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.zeros(len(boxes), dtype=torch.int64) if labels is None else torch.tensor(labels)
    return {"boxes": boxes, "labels": labels}


# Two images: image 0 has two objects, image 1 one. Ranked detections: TP, FP, TP.
G1, G2, G3 = [0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 15, 15]
CASE_PREDS = [_det([G1, [50, 50, 60, 60]], [0.9, 0.8]), _det([G3], [0.7])]
CASE_TARGETS = [_gt([G1, G2]), _gt([G3])]


def test_coco_ap_hand_computed():
    # recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3 -> envelope 1, 2/3, 2/3.
    # 101 recall points: 0.00..0.33 -> 1 (34 points), 0.34..0.66 -> 2/3 (33 points),
    # 0.67..1 -> 0. IoUs are 0 or 1, so every threshold agrees.
    expected = (34 * 1 + 33 * 2 / 3) / 101
    r = coco_box_ap(CASE_PREDS, CASE_TARGETS)
    assert r["ap"] == pytest.approx(expected, abs=1e-12)
    assert r["ap50"] == pytest.approx(expected, abs=1e-12)
    assert r["ap75"] == pytest.approx(expected, abs=1e-12)
    assert r["per_class"] == {0: pytest.approx(expected)}


def test_voc_ap_hand_computed():
    # All-point: recall steps 0 -> 1/3 at precision 1, 1/3 -> 2/3 at 2/3: 1/3 + 2/9.
    r = voc_box_ap(CASE_PREDS, CASE_TARGETS)
    assert r["ap"] == pytest.approx(5 / 9, abs=1e-12)


def test_coco_ap_iou_threshold_sweep():
    # IoU 0.72: a true positive at 0.50 .. 0.70 (5 of 10 thresholds), a miss above.
    r = coco_box_ap([_det([[0, 0, 10, 7.2]], [0.5])], [_gt([[0, 0, 10, 10]])])
    assert r["ap50"] == pytest.approx(1.0)
    assert r["ap75"] == pytest.approx(0.0)
    assert r["ap"] == pytest.approx(0.5)


def test_coco_greedy_by_score_not_optimal():
    # d1 (best score) overlaps g1 (IoU 0.9) and g2 (0.6); d2 only g1 (0.6). COCO's
    # greedy rule gives g1 to d1, so d2 is a false positive although d1 -> g2, d2 -> g1
    # would match both. Recall 1/2 at precision 1: AP50 = 51 / 101.
    g1, g2 = [0, 0, 10, 10], [0, 0, 10, 6.0]
    d1 = [0, 0, 10, 9.0]  # IoU(d1, g1) = 0.9, IoU(d1, g2) = 0.6 / 0.9 = 0.667
    d2 = [0, 4, 10, 10]  # IoU(d2, g1) = 0.6, IoU(d2, g2) = 0.2 / 0.8 = 0.25
    r = coco_box_ap([_det([d1, d2], [0.9, 0.8])], [_gt([g1, g2])], iou_thresholds=[0.5])
    assert r["ap50"] == pytest.approx(51 / 101)


def test_voc_does_not_fall_back_to_second_best():
    # d2's best ground truth is g1 (taken by d1): VOC counts d2 as a false positive even
    # though it overlaps g2 above 0.5; COCO matches d2 to g2.
    g1, g2 = [0, 0, 10, 10], [0, 4, 10, 14]
    d1 = [0, 0, 10, 10]
    d2 = [0, 2, 10, 12]  # IoU(d2, g1) = 80/120, IoU(d2, g2) = 80/120 ... make g1 strictly best:
    d2 = [0, 1.5, 10, 11.5]  # IoU(d2, g1) = 85/115, IoU(d2, g2) = 75/125
    preds, targets = [_det([d1, d2], [0.9, 0.8])], [_gt([g1, g2])]
    assert voc_box_ap(preds, targets)["ap"] == pytest.approx(0.5)
    assert coco_box_ap(preds, targets, iou_thresholds=[0.5])["ap50"] == pytest.approx(1.0)


def test_coco_max_detections_per_image_and_class():
    # The true positive has the lowest score: with max_detections=2 it is cut.
    preds = [_det([[50, 50, 60, 60], [70, 70, 80, 80], [0, 0, 10, 10]], [0.9, 0.8, 0.1])]
    targets = [_gt([[0, 0, 10, 10]])]
    assert coco_box_ap(preds, targets, max_detections=2)["ap50"] == 0.0
    # All three kept: recall 1 reached at rank 3, precision 1/3.
    assert coco_box_ap(preds, targets, max_detections=3)["ap50"] == pytest.approx(1 / 3)


def test_coco_classes_are_separate_and_missing_classes_ignored():
    # Class 1 has no ground truth: its detection counts nowhere. Class 0 perfect.
    preds = [_det([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.95], [0, 1])]
    targets = [_gt([[0, 0, 10, 10]], [0])]
    r = coco_box_ap(preds, targets)
    assert r["ap"] == pytest.approx(1.0)
    assert list(r["per_class"]) == [0]
    # A wrong-class detection is not a match.
    r = coco_box_ap([_det([[0, 0, 10, 10]], [0.9], [1])], targets)
    assert r["ap"] == 0.0


def test_coco_perfect_and_empty_cases():
    targets = [_gt([[0, 0, 10, 10], [20, 20, 40, 30]], [0, 2]), _gt([])]
    preds = [_det([[0, 0, 10, 10], [20, 20, 40, 30]], [0.3, 0.6], [0, 2]), _det([], [])]
    r = coco_box_ap(preds, targets)
    assert r["ap"] == pytest.approx(1.0) and r["ap50"] == pytest.approx(1.0)
    # No ground truth at all: undefined.
    r = coco_box_ap([_det([[0, 0, 1, 1]], [0.5])], [_gt([])])
    assert math.isnan(r["ap"]) and math.isnan(r["ap50"])
    assert math.isnan(voc_box_ap([_det([], [])], [_gt([])])["ap"])
    # No predictions: 0.
    assert coco_box_ap([_det([], [])], [_gt([[0, 0, 1, 1]])])["ap"] == 0.0


def _slow_coco_ap50(preds, targets):
    """Independent float64 reference of COCO AP at IoU 0.5 for one class (loops)."""
    dets = []
    n_gt = 0
    for img, (p, t) in enumerate(zip(preds, targets, strict=True)):
        gt = t["boxes"].double().tolist()
        n_gt += len(gt)
        order = sorted(range(len(p["scores"])), key=lambda j: -float(p["scores"][j]))[:100]
        used = [False] * len(gt)
        for j in order:
            b = p["boxes"][j].double().tolist()
            best, best_iou = -1, 0.5
            for g, gb in enumerate(gt):
                if used[g]:
                    continue
                ix = max(0.0, min(b[2], gb[2]) - max(b[0], gb[0]))
                iy = max(0.0, min(b[3], gb[3]) - max(b[1], gb[1]))
                inter = ix * iy
                union = (b[2] - b[0]) * (b[3] - b[1]) + (gb[2] - gb[0]) * (gb[3] - gb[1]) - inter
                iou = inter / union if union > 0 else 0.0
                if iou >= best_iou:
                    best, best_iou = g, iou
            if best >= 0:
                used[best] = True
            dets.append((float(p["scores"][j]), img, best >= 0))
    dets.sort(key=lambda d: -d[0])
    tp = fp = 0
    prec, rec = [], []
    for _, _, hit in dets:
        tp += hit
        fp += not hit
        prec.append(tp / (tp + fp))
        rec.append(tp / n_gt)
    total = 0.0
    for r in [i / 100 for i in range(101)]:
        cands = [p for p, rr in zip(prec, rec, strict=True) if rr >= r - 1e-12]
        total += max(cands) if cands else 0.0
    return total / 101


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_coco_ap50_against_slow_reference(seed):
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(3):
        n = int(torch.randint(0, 4, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 30
        gt = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 10], 1)
        d = int(torch.randint(0, 5, (1,), generator=g))
        jitter = torch.randn(d, 4, generator=g) * 2
        base = gt[torch.randint(0, max(n, 1), (d,), generator=g)] if n else torch.rand(d, 4) * 30
        boxes = base + jitter
        boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)], 1)
        # Distinct scores: ties between images are ordered differently by the reference.
        scores = torch.randperm(100, generator=g)[:d].float() / 100
        preds.append({"boxes": boxes, "scores": scores, "labels": torch.zeros(d, dtype=torch.long)})
        targets.append({"boxes": gt, "labels": torch.zeros(n, dtype=torch.long)})
    if sum(len(t["boxes"]) for t in targets) == 0:
        return
    got = coco_box_ap(preds, targets, iou_thresholds=[0.5])["ap50"]
    assert got == pytest.approx(_slow_coco_ap50(preds, targets), abs=1e-9)


def test_box_ap_errors():
    with pytest.raises(
        ValueError, match=r"predictions: expected one entry per image \(1 targets\), got 2"
    ):
        coco_box_ap(CASE_PREDS, CASE_TARGETS[:1])
    with pytest.raises(ValueError, match=r"predictions\[0\]: missing key 'scores'"):
        coco_box_ap([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}], [_gt([])])
    with pytest.raises(
        ValueError, match=r"predictions\[0\]\['boxes'\]: expected shape \[n, 4\], got \[2, 3\]"
    ):
        coco_box_ap([_det([], []) | {"boxes": torch.zeros(2, 3)}], [_gt([])])
    with pytest.raises(
        ValueError,
        match=r"predictions\[0\]: expected boxes, scores and labels of one length, got 1, 2, 1",
    ):
        coco_box_ap([_det([[0, 0, 1, 1]], [0.5]) | {"scores": torch.ones(2)}], [_gt([])])
    with pytest.raises(
        ValueError, match=r"iou_thresholds: expected values in \(0, 1\], got \[1.5\]"
    ):
        coco_box_ap(CASE_PREDS, CASE_TARGETS, iou_thresholds=[1.5])
    with pytest.raises(ValueError, match="max_detections must be >= 1, got 0"):
        coco_box_ap(CASE_PREDS, CASE_TARGETS, max_detections=0)
    with pytest.raises(ValueError, match=r"iou_threshold must be in \(0, 1\], got 0"):
        voc_box_ap(CASE_PREDS, CASE_TARGETS, iou_threshold=0)
    with pytest.raises(TypeError, match=r"targets\[0\] must be a dict, got list"):
        coco_box_ap([_det([], [])], [[]])


def test_coco_thresholds_constant():
    # pycocotools' np.linspace values: 0.9 is the float64 just below 0.9.
    assert COCO_IOU_THRESHOLDS == tuple(np.linspace(0.5, 0.95, 10).tolist())
    assert np.allclose(COCO_IOU_THRESHOLDS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    assert COCO_IOU_THRESHOLDS[8] == np.nextafter(0.9, 0)


# ----------------------------------------------------------------------------- points


def test_maximum_matching_beats_greedy():
    # p0 is nearest to t0 (distance 1): greedy nearest-first pairs them and leaves p1
    # (whose only candidate is t0, at 3) and t1 (whose only candidate is p0, at 3)
    # unmatched: 1 pair. The maximum matching p0-t1, p1-t0 has 2.
    pred = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [-3.0, 0.0]])
    assert match_points_within(pred, target, 4.0) == 2
    r = point_metrics([pred], [target], distance_threshold=4.0)
    assert (r["tp"], r["fp"], r["fn"]) == (2.0, 0.0, 0.0)
    assert r["f1"] == 1.0


def test_point_metrics_hand_computed():
    preds = [torch.tensor([[0.0, 0.0], [10.0, 10.0], [50.0, 50.0]]), torch.zeros(0, 2)]
    targets = [torch.tensor([[1.0, 1.0], [10.0, 14.5]]), torch.tensor([[3.0, 3.0]])]
    # Image 0: (0,0)-(1,1) at 1.41 matches; (10,10)-(10,14.5) at 4.5 > 4 does not.
    r = point_metrics(preds, targets, distance_threshold=4.0)
    assert (r["tp"], r["fp"], r["fn"]) == (1.0, 2.0, 2.0)
    assert r["precision"] == pytest.approx(1 / 3)
    assert r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(1 / 3)
    # The threshold is inclusive.
    assert point_metrics(preds, targets, distance_threshold=4.5)["tp"] == 2.0
    # Dict inputs work the same.
    r2 = point_metrics([{"points": p} for p in preds], [{"points": t} for t in targets], 4.0)
    assert r2 == r


def test_point_metrics_empty():
    empty = [torch.zeros(0, 2)]
    assert point_metrics(empty, empty)["f1"] == 1.0
    assert point_metrics(empty, empty)["precision"] == 1.0
    r = point_metrics([torch.ones(2, 2)], empty)
    assert (r["precision"], r["recall"], r["f1"]) == (0.0, 1.0, 0.0)
    r = point_metrics(empty, [torch.ones(2, 2)])
    assert (r["precision"], r["recall"], r["f1"]) == (1.0, 0.0, 0.0)


def _brute_max_matching(p: np.ndarray, t: np.ndarray, thr: float) -> int:
    best = 0
    small, large = (p, t) if len(p) <= len(t) else (t, p)
    for perm in itertools.permutations(range(len(large)), len(small)):
        hits = sum(np.hypot(*(small[i] - large[j])) <= thr for i, j in enumerate(perm))
        best = max(best, hits)
    return best


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=5),
    st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=5),
    st.sampled_from([0.0, 2.0, 3.5, 6.0]),
)
def test_point_matching_against_brute_force(p, t, thr):
    pa = np.asarray(p, dtype=float).reshape(-1, 2)
    ta = np.asarray(t, dtype=float).reshape(-1, 2)
    assert match_points_within(pa, ta, thr) == _brute_max_matching(pa, ta, thr)


def test_point_errors():
    with pytest.raises(ValueError, match=r"predictions\[0\]: expected shape \[n, 2\], got \[3\]"):
        point_metrics([torch.zeros(3)], [torch.zeros(0, 2)])
    with pytest.raises(
        ValueError, match=r"predictions: expected one entry per image \(2 targets\), got 1"
    ):
        point_metrics([torch.zeros(0, 2)], [torch.zeros(0, 2)] * 2)
    with pytest.raises(ValueError, match="threshold must be >= 0, got -1"):
        match_points_within(torch.zeros(1, 2), torch.zeros(1, 2), -1)
    with pytest.raises(ValueError, match=r"targets\[0\]: missing key 'points'"):
        point_metrics([torch.zeros(0, 2)], [{"boxes": torch.zeros(0, 4)}])


# ----------------------------------------------------------------------------- counts


def test_count_metrics_hand_computed():
    r = count_metrics([10, 12, 0], [8, 12, 3])
    assert r["mae"] == pytest.approx(5 / 3)
    assert r["rmse"] == pytest.approx(math.sqrt((4 + 0 + 9) / 3))
    assert r["mean_count"] == pytest.approx(23 / 3)
    assert r["relative_mae"] == pytest.approx(5 / 23)
    # Tensors and point lists are accepted.
    r2 = count_metrics(torch.tensor([10, 12, 0]), [torch.zeros(n, 2) for n in (8, 12, 3)])
    assert r2 == pytest.approx(r)
    assert math.isnan(count_metrics([1], [0])["relative_mae"])


def test_count_errors():
    with pytest.raises(
        ValueError, match=r"pred_counts: expected 2 counts \(one per image, as true_counts\), got 1"
    ):
        count_metrics([1], [1, 2])
    with pytest.raises(ValueError, match="true_counts: expected at least one image, got none"):
        count_metrics([], [])
