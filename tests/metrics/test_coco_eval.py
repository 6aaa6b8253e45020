"""COCO box AP against pycocotools' COCOeval, number for number, on both CPU paths
(the compiled loops where Numba is installed, and the NumPy fallback)."""

from __future__ import annotations

import contextlib
import importlib
import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _paths import PATHS, use_path
from detloss.metrics import COCO_IOU_THRESHOLDS, coco_box_ap

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval, Params  # noqa: E402

metrics_module = importlib.import_module("detloss.metrics")

STATS = (
    "ap",
    "ap50",
    "ap75",
    "ap_small",
    "ap_medium",
    "ap_large",
    "ar_1",
    "ar_10",
    "ar_100",
    "ar_small",
    "ar_medium",
    "ar_large",
)


@pytest.fixture(scope="module", autouse=True, params=PATHS)
def cpu_path(request):
    yield from use_path(request.param)


def _xywh(box: list[float]) -> list[float]:
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def pycocotools_stats(preds, targets, iou_thresholds=None, max_dets=100):
    """``COCOeval.stats`` of the same data written as a COCO dataset and results list
    (image ids from 1, annotation ids from 1, boxes ``[x1, y1, x2 - x1, y2 - y1]`` in
    float64), or None when there is no detection at all (``loadRes`` refuses an empty
    list). Another limit than 100 is set as ``maxDets = [1, 10, limit]`` (``[1, limit,
    limit]`` below 10, since COCOeval matches with the largest); ``stats[0]``, which
    COCOeval reads at a literal 100, is then read at the limit, from its precision
    array as ``summarize`` reads it."""
    images, annotations, results = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
        images.append({"id": i + 1})
        boxes = t["boxes"].double().tolist()
        crowd = t.get("iscrowd", torch.zeros(len(boxes))).tolist()
        for j, (box, label) in enumerate(zip(boxes, t["labels"].tolist(), strict=True)):
            xywh = _xywh(box)
            area = float(t["area"][j]) if "area" in t else xywh[2] * xywh[3]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "bbox": xywh,
                    "area": area,
                    "iscrowd": int(crowd[j]),
                }
            )
        columns = (p["boxes"].double(), p["scores"].double(), p["labels"])
        for box, score, label in zip(*(c.tolist() for c in columns), strict=True):
            results.append(
                {"image_id": i + 1, "category_id": int(label), "bbox": _xywh(box), "score": score}
            )
    if not results:
        return None
    categories = sorted({a["category_id"] for a in annotations})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c} for c in categories],
        }
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        if iou_thresholds is not None:
            evaluator.params.iouThrs = np.asarray(iou_thresholds)
        evaluator.params.maxDets = [1, 10, max_dets] if max_dets >= 10 else [1, max_dets, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    if max_dets != 100:
        s = evaluator.eval["precision"][:, :, :, [0], [2]]
        stats[0] = np.mean(s[s > -1]) if (s > -1).any() else -1
    return stats


def assert_same_as_pycocotools(preds, targets, **kwargs):
    ours = coco_box_ap(preds, targets, **kwargs)
    reference = pycocotools_stats(
        preds, targets, kwargs.get("iou_thresholds"), kwargs.get("max_detections", 100)
    )
    if reference is None:
        return ours
    limit = kwargs.get("max_detections", 100)
    keys = [k.replace("ar_100", f"ar_{limit}") for k in STATS]
    if limit < 10:
        keys[7] = f"ar_{limit}"
    got = np.array([ours[k] for k in keys])
    got = np.where(np.isnan(got), -1.0, got)
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-12)
    return ours


def _det(boxes, scores, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    labels = torch.zeros(len(boxes), dtype=torch.int64) if labels is None else torch.tensor(labels)
    return {"boxes": boxes, "scores": torch.tensor(scores, dtype=torch.float64), "labels": labels}


def _gt(boxes, labels=None, **extra):
    boxes = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    labels = torch.zeros(len(boxes), dtype=torch.int64) if labels is None else torch.tensor(labels)
    return {"boxes": boxes, "labels": labels, **{k: torch.tensor(v) for k, v in extra.items()}}


def test_thresholds_are_pycocotools():
    assert COCO_IOU_THRESHOLDS == tuple(Params(iouType="bbox").iouThrs.tolist())


def test_an_exact_iou_tie_goes_to_the_later_ground_truth():
    # The best detection has IoU 0.6 with both ground truths; COCOeval gives it the later
    # one (g2), which leaves g1 for the second detection: two true positives. Taking the
    # first (an argmax) would leave the second detection with IoU 1/3 only.
    g1, g2 = [0, 0, 10, 10], [5, 0, 15, 10]
    a, b = [2.5, 0, 12.5, 10], [0, 0, 10, 10]
    preds, targets = [_det([a, b], [0.9, 0.8])], [_gt([g1, g2])]
    r = assert_same_as_pycocotools(preds, targets)
    assert r["ap50"] == pytest.approx(1.0, abs=1e-12)
    # Listed the other way round the tie goes to g1, and the second detection hits g2
    # at IoU 1/3: a false positive.
    r = assert_same_as_pycocotools(preds, [_gt([g2, g1])])
    assert r["ap50"] == pytest.approx(51 / 101)


def test_crowd_regions_match_many_detections_and_are_ignored():
    # Two detections inside a crowd region: both matched to it and ignored (neither TP
    # nor FP); the regular object is found by the third.
    crowd = [0, 0, 100, 100]
    obj = [200, 200, 220, 220]
    preds = [_det([[10, 10, 30, 30], [40, 40, 60, 60], obj], [0.9, 0.8, 0.7])]
    targets = [_gt([crowd, obj], iscrowd=[1, 0])]
    r = assert_same_as_pycocotools(preds, targets)
    assert r["ap"] == pytest.approx(1.0, abs=1e-12)  # pycocotools' eps: 1 - 2e-16
    # Only crowd ground truth: the class has nothing to find.
    r = assert_same_as_pycocotools(preds, [_gt([crowd], iscrowd=[1])])
    assert math.isnan(r["ap"]) and r["per_class"] == {}


def test_area_ranges_use_the_given_area():
    # A 20 x 20 box declared large by its area: found in "large", ignored in "small".
    preds = [_det([[0, 0, 20, 20]], [0.9])]
    targets = [_gt([[0, 0, 20, 20]], area=[100.0**2])]
    r = assert_same_as_pycocotools(preds, targets)
    assert r["ap_large"] == pytest.approx(1.0, abs=1e-12) and math.isnan(r["ap_small"])


def random_scene(seed: int, images: int = 6, crowded: bool = True):
    """Boxes on an 8-pixel grid (IoUs repeat exactly: ties), duplicated annotations,
    scores from five values (ties across and within images), crowd regions, given
    areas, images without ground truth, without detections, or with more than 100."""
    g = np.random.default_rng(seed)
    preds, targets = [], []
    for i in range(images):
        n = int(g.integers(0, 6)) if i else 0
        xy = g.integers(0, 12, (n, 2))
        gt = np.concatenate([xy, xy + g.integers(1, 10, (n, 2))], 1) * 8.0
        labels = g.integers(0, 3, n)
        if n and g.random() < 0.5:  # a duplicated annotation
            k = int(g.integers(0, n))
            gt, labels = np.concatenate([gt, gt[k : k + 1]]), np.append(labels, labels[k])
        extra = {}
        if crowded and len(gt) and g.random() < 0.4:
            extra["iscrowd"] = torch.tensor(g.random(len(gt)) < 0.3)
        if len(gt) and g.random() < 0.3:
            extra["area"] = torch.tensor(g.choice([100.0, 2000.0, 20000.0], len(gt)))
        targets.append(
            {"boxes": torch.tensor(gt).reshape(-1, 4), "labels": torch.tensor(labels), **extra}
        )
        d = 0 if i == 1 else int(g.choice([0, 3, 8, 105], p=[0.1, 0.4, 0.4, 0.1]))
        if len(gt) and d:
            base = gt[g.integers(0, len(gt), d)]
            boxes = base + g.integers(-1, 2, (d, 4)) * 8.0
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 8)
            det_labels = np.where(g.random(d) < 0.8, labels[0], g.integers(0, 4, d))
            if d > 100:  # more than 100 of one class in one image: the limit cuts
                det_labels[:] = labels[0]
        else:
            xy = g.integers(0, 12, (d, 2))
            boxes = np.concatenate([xy, xy + g.integers(1, 10, (d, 2))], 1) * 8.0
            det_labels = g.integers(0, 4, d)
        preds.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(g.integers(0, 5, d) / 4, dtype=torch.float32),
                "labels": torch.tensor(det_labels),
            }
        )
    return preds, targets


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_equals_pycocotools_on_random_scenes_with_ties(seed):
    preds, targets = random_scene(seed)
    assert_same_as_pycocotools(preds, targets)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 5, 10, 20, 150]))
def test_equals_pycocotools_with_other_limits_and_thresholds(seed, limit):
    preds, targets = random_scene(seed, images=4)
    assert_same_as_pycocotools(preds, targets, max_detections=limit)
    assert_same_as_pycocotools(preds, targets, iou_thresholds=[0.5, 0.75, 0.4, 0.9])


def test_continuous_boxes_equal_pycocotools():
    # Float32 boxes off the grid: the float64 [x, y, w, h] conversion decides the last
    # bits of every IoU, on both sides.
    g = torch.Generator().manual_seed(0)
    preds, targets = [], []
    for _ in range(20):
        n = int(torch.randint(1, 8, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 300
        gt = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 150], 1)
        labels = torch.randint(0, 3, (n,), generator=g)
        d = 30
        src = torch.randint(0, n, (d,), generator=g)
        boxes = gt[src] + torch.randn(d, 4, generator=g) * 8
        preds.append({"boxes": boxes, "scores": torch.rand(d, generator=g), "labels": labels[src]})
        targets.append({"boxes": gt, "labels": labels})
    assert_same_as_pycocotools(preds, targets)


def test_edge_cases():
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}
    no_gt = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    # No images, no ground truth: undefined everywhere.
    for preds, targets in (([], []), ([empty], [no_gt]), ([_det([[0, 0, 1, 1]], [0.5])], [no_gt])):
        r = coco_box_ap(preds, targets)
        assert all(math.isnan(r[k]) for k in STATS) and r["per_class"] == {}
    # Ground truth and no detection: 0.
    r = coco_box_ap([empty], [_gt([[0, 0, 10, 10]])])
    assert r["ap"] == 0.0 and r["ar_100"] == 0.0
    # Inverted detection boxes have negative area: ignored when unmatched, as in COCO.
    preds = [_det([[10, 0, 0, 10], [0, 0, 10, 10]], [0.9, 0.8])]
    r = assert_same_as_pycocotools(preds, [_gt([[0, 0, 10, 10]])])
    assert r["ap"] == pytest.approx(1.0, abs=1e-12)  # pycocotools' eps: 1 - 2e-16


def test_errors():
    with pytest.raises(
        ValueError, match=r"predictions\[1\]\['scores'\]: expected finite values, got \[nan\]"
    ):
        coco_box_ap(
            [_det([[0, 0, 1, 1]], [0.5]), _det([[0, 0, 1, 1]], [float("nan")])],
            [_gt([[0, 0, 1, 1]])] * 2,
        )
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]: expected finite values"):
        coco_box_ap([_det([], [])], [_gt([[0, 0, float("inf"), 1]])])
    with pytest.raises(
        ValueError,
        match=r"targets\[0\]\['iscrowd'\]: expected shape \[1\] \(one per box\), got \[2\]",
    ):
        coco_box_ap([_det([], [])], [_gt([[0, 0, 1, 1]], iscrowd=[0, 1])])
    with pytest.raises(ValueError, match=r"max_detections must be >= 1, got 2\.5"):
        coco_box_ap([_det([], [])], [_gt([])], max_detections=2.5)
