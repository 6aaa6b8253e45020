"""COCO box AP (``coco_box_ap``) against pycocotools' ``COCOeval`` and faster-coco-eval's
``COCOeval_faster`` (C++ matching and accumulation).

The scene: images with 1 to 14 objects of 80 classes on integer pixels, 100 detections
each (jittered copies of the objects, 70 % with the object's class), uniform scores. The
peers get the ground truth as a ready ``COCO`` object (built outside the timed region)
and the detections as the ``[N, 7]`` array ``loadRes`` takes; their timed region is
``loadRes``, ``evaluate``, ``accumulate`` and ``summarize``. detloss starts from the
per-image tensor dicts of both sides. All twelve ``COCOeval.stats`` must be equal: bit
for bit to pycocotools', within 1e-12 to faster-coco-eval's (which sums in another
order).

Run: ``python benchmarks/bench_coco.py [--quick] [--repeats R] [--threads T]``.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from _timing import bench_main, time_pair
from detloss.metrics import coco_box_ap

KEYS = (
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


def make_scene(images: int, detections: int = 100, classes: int = 80, seed: int = 0):
    """``(predictions, targets, dataset, results)``: the tensors detloss takes, and the
    same data as a COCO dataset dict and a ``[N, 7]`` results array."""
    rng = np.random.default_rng(seed)
    preds, targets, annotations, results = [], [], [], []
    for i in range(images):
        n = int(rng.integers(1, 15))
        xy = rng.uniform(0, 500, (n, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 200, (n, 2))], 1).round()
        labels = rng.integers(0, classes, n)
        source = rng.integers(0, n, detections)
        boxes = gt[source] + rng.normal(0, 10, (detections, 4))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        det_labels = np.where(
            rng.random(detections) < 0.7, labels[source], rng.integers(0, classes, detections)
        )
        scores = rng.random(detections)
        preds.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "scores": torch.tensor(scores, dtype=torch.float32),
                "labels": torch.tensor(det_labels),
            }
        )
        gt_boxes = torch.tensor(gt, dtype=torch.float32)
        targets.append({"boxes": gt_boxes, "labels": torch.tensor(labels)})
        g64 = targets[-1]["boxes"].double().numpy()
        for box, label in zip(g64, labels, strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        d64 = preds[-1]["boxes"].double().numpy()
        s64 = preds[-1]["scores"].double().numpy()
        for box, score, label in zip(d64, s64, det_labels, strict=True):
            results.append([i + 1, box[0], box[1], box[2] - box[0], box[3] - box[1], score, label])
    dataset = {
        "images": [{"id": i + 1} for i in range(images)],
        "annotations": annotations,
        "categories": [{"id": c} for c in range(classes)],
    }
    return preds, targets, dataset, np.array(results)


def pycocotools_stats(gt: COCO, results: np.ndarray) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def faster_stats(gt, results: np.ndarray) -> np.ndarray:
    from faster_coco_eval import COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval_faster(
            gt, gt.loadRes(results), "bbox", print_function=lambda *args: None
        )
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def detloss_stats(preds, targets) -> np.ndarray:
    result = coco_box_ap(preds, targets)
    return np.array([result[k] for k in KEYS])


def run(repeats: int = 5, quick: bool = False, threads: int | None = None) -> list[dict]:
    """Rows for pycocotools and faster-coco-eval (where installed), 1 and 2 torch threads
    (or ``threads`` only)."""
    images = 100 if quick else 500
    preds, targets, dataset, results = make_scene(images)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
    peers = [("pycocotools COCOeval", lambda: pycocotools_stats(gt, results), max(1, repeats // 3))]
    try:
        from faster_coco_eval import COCO as FasterCOCO

        faster_gt = FasterCOCO(dataset)
        peers.append(
            ("faster-coco-eval COCOeval_faster", lambda: faster_stats(faster_gt, results), repeats)
        )
    except ImportError:
        pass
    ours = detloss_stats(preds, targets)
    before = torch.get_num_threads()
    rows = []
    try:
        for t in (1, 2) if threads is None else (threads,):
            torch.set_num_threads(t)
            for name, peer, peer_repeats in peers:
                stats = peer()
                # pycocotools: bit for bit; faster-coco-eval sums in another order in C++.
                gap = float(np.abs(stats - ours).max())
                assert gap <= (0.0 if name.startswith("pycocotools") else 1e-12), (name, gap)
                base, mine = time_pair(peer, lambda: detloss_stats(preds, targets), peer_repeats)
                rows.append(
                    {
                        "name": f"coco_box_ap {images} images x 100 dets t={t}",
                        "baseline_s": base,
                        "ours_s": mine,
                        "note": f"{name}; 12 stats equal (max gap {gap:.0e})",
                    }
                )
    finally:
        torch.set_num_threads(before)
    return rows


if __name__ == "__main__":
    bench_main(run, __doc__)
