"""Evaluation metrics: box average precision (COCO and VOC), point localisation, counting.

These run once per evaluation, on the host, in float64 numpy: exact definitions matter
more here than speed. Inputs are lists with one entry per image, on any device.

Box AP (:func:`coco_box_ap`, :func:`voc_box_ap`)
    ``predictions[i]``: ``{"boxes": [d, 4], "scores": [d], "labels": [d]}``;
    ``targets[i]``: ``{"boxes": [n, 4], "labels": [n]}``; boxes xyxy in one unit system.

Points (:func:`point_metrics`, :func:`count_metrics`)
    ``predictions[i]``: ``Tensor[d, 2]`` or ``{"points": [d, 2]}``; ``targets[i]`` likewise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ._checks import check_finite, named_list_entries

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "coco_box_ap",
    "count_metrics",
    "match_points_within",
    "point_metrics",
    "voc_box_ap",
]

#: The ten COCO IoU thresholds 0.50, 0.55, ..., 0.95.
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _np(x: Tensor | np.ndarray | Sequence, name: str, shape_tail: tuple[int, ...]) -> np.ndarray:
    if isinstance(x, Tensor):
        arr = x.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape((0, *shape_tail))
    if arr.ndim != 1 + len(shape_tail) or tuple(arr.shape[1:]) != shape_tail:
        want = "[n" + "".join(f", {s}" for s in shape_tail) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {list(arr.shape)}")
    return arr


def _get(d: object, key: str, name: str) -> object:
    if not isinstance(d, Mapping):
        raise TypeError(f"{name} must be a dict, got {type(d).__name__}")
    if key not in d:
        raise ValueError(f"{name}: missing key {key!r}, got keys {sorted(d)}")
    return d[key]


def _box_lists(
    predictions: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]]
) -> tuple[list[tuple[np.ndarray, ...]], list[tuple[np.ndarray, ...]]]:
    if len(predictions) != len(targets):
        raise ValueError(
            f"predictions: expected one entry per image ({len(targets)} targets), "
            f"got {len(predictions)}"
        )
    preds, gts = [], []
    for i, (p, t) in enumerate(zip(predictions, targets, strict=True)):
        boxes = _np(_get(p, "boxes", f"predictions[{i}]"), f"predictions[{i}]['boxes']", (4,))
        scores = _np(_get(p, "scores", f"predictions[{i}]"), f"predictions[{i}]['scores']", ())
        labels = _np(_get(p, "labels", f"predictions[{i}]"), f"predictions[{i}]['labels']", ())
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"predictions[{i}]: expected boxes, scores and labels of one length, got "
                f"{len(boxes)}, {len(scores)}, {len(labels)}"
            )
        t_boxes = _np(_get(t, "boxes", f"targets[{i}]"), f"targets[{i}]['boxes']", (4,))
        t_labels = _np(_get(t, "labels", f"targets[{i}]"), f"targets[{i}]['labels']", ())
        if len(t_boxes) != len(t_labels):
            raise ValueError(
                f"targets[{i}]: expected boxes and labels of one length, got "
                f"{len(t_boxes)} and {len(t_labels)}"
            )
        preds.append((boxes, scores, labels.astype(np.int64)))
        gts.append((t_boxes, t_labels.astype(np.int64)))
    return preds, gts


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[len(a), len(b)]`` of xyxy boxes (continuous coordinates, no +1)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _coco_match(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """COCO's greedy matching of score-sorted detections: ``bool[T, d]`` true positives.

    Each detection, best score first, takes the unmatched ground truth of highest IoU
    if that IoU reaches the threshold (COCO's rule, applied per threshold).
    """
    t, (d, n) = len(thresholds), iou.shape
    tp = np.zeros((t, d), dtype=bool)
    if d == 0 or n == 0:
        return tp
    taken = np.zeros((t, n), dtype=bool)
    rows = np.arange(t)
    for j in range(d):
        cand = np.where(taken, -1.0, iou[j][None, :])  # [T, n]
        best = cand.argmax(axis=1)
        ok = cand[rows, best] >= thresholds
        tp[ok, j] = True
        taken[rows[ok], best[ok]] = True
    return tp


def _interpolated_precision(tp: np.ndarray, n_gt: int) -> np.ndarray:
    """101-point interpolated precision ``[101]`` of a score-sorted ``bool[d]`` TP list."""
    tps = np.cumsum(tp)
    fps = np.cumsum(~tp)
    recall = tps / n_gt
    precision = tps / np.maximum(tps + fps, np.finfo(np.float64).eps)
    # Precision envelope: the best precision at any recall at least as large.
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    out = np.zeros(len(_RECALL_POINTS))
    idx = np.searchsorted(recall, _RECALL_POINTS, side="left")
    valid = idx < len(precision)
    out[valid] = precision[idx[valid]]
    return out


def coco_box_ap(
    predictions: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    *,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    max_detections: int = 100,
) -> dict[str, float | dict[int, float]]:
    """Box average precision by the COCO definition (``pycocotools`` ``COCOeval`` over all
    areas, without crowd regions).

    Per image and class the detections are sorted by score (stable) and the first
    ``max_detections`` kept; at each IoU threshold they are matched greedily, best score
    first, each to the unmatched ground truth of highest IoU ``>= threshold``. Per class,
    the detections of all images are ranked by score, precision is made monotone
    (the envelope) and sampled at the 101 recalls ``0, 0.01, ..., 1`` (0 beyond the
    highest recall reached). AP is the mean over classes that have ground truth and over
    thresholds.

    Returns:
        ``{"ap": AP@[.5:.95], "ap50", "ap75", "per_class": {label: AP@[.5:.95]}}`` as
        floats; ``ap50`` / ``ap75`` are present when 0.5 / 0.75 are among the thresholds.
        With no ground truth at all every value is NaN (undefined; COCO prints -1).

    NaN or inf in a box or score is a ValueError naming it.
    """
    check_finite(*_named_boxes(predictions, targets))
    if max_detections < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    if (
        thresholds.ndim != 1
        or len(thresholds) == 0
        or (thresholds <= 0).any()
        or (thresholds > 1).any()
    ):
        raise ValueError(f"iou_thresholds: expected values in (0, 1], got {list(iou_thresholds)}")
    preds, gts = _box_lists(predictions, targets)
    classes = sorted({int(c) for _, labels in gts for c in labels})
    # Per class: scores and TP flags [T, d] of all images, in image order.
    scores_by: dict[int, list[np.ndarray]] = {c: [] for c in classes}
    tp_by: dict[int, list[np.ndarray]] = {c: [] for c in classes}
    n_gt = dict.fromkeys(classes, 0)
    for (boxes, scores, labels), (t_boxes, t_labels) in zip(preds, gts, strict=True):
        for c in classes:
            gt_c = t_boxes[t_labels == c]
            n_gt[c] += len(gt_c)
            sel = np.flatnonzero(labels == c)
            order = sel[np.argsort(-scores[sel], kind="mergesort")][:max_detections]
            iou = _iou(boxes[order], gt_c)
            scores_by[c].append(scores[order])
            tp_by[c].append(_coco_match(iou, thresholds))
    precision = np.zeros((len(thresholds), len(classes), len(_RECALL_POINTS)))
    for k, c in enumerate(classes):
        s = np.concatenate(scores_by[c])
        tp = np.concatenate(tp_by[c], axis=1)
        order = np.argsort(-s, kind="mergesort")
        for ti in range(len(thresholds)):
            precision[ti, k] = _interpolated_precision(tp[ti, order], n_gt[c])
    result: dict[str, float | dict[int, float]] = {}
    nan = float("nan")
    if not classes:
        result["ap"] = nan
        for t, key in ((0.5, "ap50"), (0.75, "ap75")):
            if np.isclose(thresholds, t).any():
                result[key] = nan
        result["per_class"] = {}
        return result
    per_threshold = precision.mean(axis=2)  # [T, K]
    result["ap"] = float(per_threshold.mean())
    for t, key in ((0.5, "ap50"), (0.75, "ap75")):
        hit = np.flatnonzero(np.isclose(thresholds, t))
        if len(hit):
            result[key] = float(per_threshold[hit[0]].mean())
    result["per_class"] = {c: float(per_threshold[:, k].mean()) for k, c in enumerate(classes)}
    return result


def voc_box_ap(
    predictions: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    *,
    iou_threshold: float = 0.5,
) -> dict[str, float | dict[int, float]]:
    """Box AP by the PASCAL VOC 2010+ definition: all-point interpolation.

    Per class, detections of all images ranked by score (stable); each is compared with
    the ground truth of highest IoU in its image: a true positive if that IoU is
    strictly above ``iou_threshold`` and that ground truth is not yet taken, otherwise a
    false positive (VOC does not fall back to the second-best box). AP is the area under
    the precision envelope, summed at every recall step. No detection limit; IoU in
    continuous coordinates (no "+1" pixel convention).

    Returns ``{"ap": mean over classes with ground truth, "per_class": {label: AP}}``;
    NaN when there is no ground truth. NaN or inf in a box or score is a ValueError.
    """
    check_finite(*_named_boxes(predictions, targets))
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    preds, gts = _box_lists(predictions, targets)
    classes = sorted({int(c) for _, labels in gts for c in labels})
    per_class: dict[int, float] = {}
    for c in classes:
        scores, flags = [], []
        n_gt = 0
        for (boxes, sc, labels), (t_boxes, t_labels) in zip(preds, gts, strict=True):
            gt_c = t_boxes[t_labels == c]
            n_gt += len(gt_c)
            sel = np.flatnonzero(labels == c)
            order = sel[np.argsort(-sc[sel], kind="mergesort")]
            iou = _iou(boxes[order], gt_c)
            taken = np.zeros(len(gt_c), dtype=bool)
            tp = np.zeros(len(order), dtype=bool)
            for j in range(len(order)):
                if len(gt_c) == 0:
                    break
                best = int(iou[j].argmax())
                if iou[j, best] > iou_threshold and not taken[best]:
                    tp[j] = taken[best] = True
            scores.append(sc[order])
            flags.append(tp)
        s = np.concatenate(scores)
        tp = np.concatenate(flags)[np.argsort(-s, kind="mergesort")]
        tps = np.cumsum(tp)
        fps = np.cumsum(~tp)
        recall = np.concatenate([[0.0], tps / n_gt, [1.0]])
        precision = np.concatenate(
            [[0.0], tps / np.maximum(tps + fps, np.finfo(np.float64).eps), [0.0]]
        )
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        step = np.flatnonzero(recall[1:] != recall[:-1])
        per_class[c] = float(np.sum((recall[step + 1] - recall[step]) * precision[step + 1]))
    ap = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"ap": ap, "per_class": per_class}


def _named_boxes(predictions: object, targets: object) -> list[tuple[str, object]]:
    """The boxes and scores of per-image dicts, named for :func:`check_finite`."""
    named = named_list_entries(predictions, ("boxes", "scores"), "predictions")
    return named + named_list_entries(targets, ("boxes",), "targets")


def _points(x: object, name: str) -> np.ndarray:
    if isinstance(x, Mapping):
        x = _get(x, "points", name)
        name = f"{name}['points']"
    points = _np(x, name, (2,))  # type: ignore[arg-type]
    if not np.isfinite(points).all():
        bad = points[~np.isfinite(points)][0]
        raise ValueError(f"{name}: expected finite coordinates, got {bad}")
    return points


def match_points_within(
    pred: Tensor | np.ndarray, target: Tensor | np.ndarray, threshold: float
) -> int:
    """The largest number of one-to-one pairs (prediction, target) at distance
    ``<= threshold``: a maximum-cardinality bipartite matching on the within-threshold
    graph (Hopcroft-Karp via ``scipy.sparse.csgraph.maximum_bipartite_matching``).

    Greedy nearest-first matching can find fewer pairs: a prediction that takes the
    target nearest to it may leave another prediction whose only candidate was that
    target without a partner.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    p = _points(pred, "pred")
    t = _points(target, "target")
    if len(p) == 0 or len(t) == 0:
        return 0
    from scipy.sparse import csr_matrix  # on first use: scipy loads slowly
    from scipy.sparse.csgraph import maximum_bipartite_matching
    from scipy.spatial import cKDTree

    pairs = cKDTree(p).query_ball_tree(cKDTree(t), r=threshold)
    rows = np.repeat(np.arange(len(p)), [len(c) for c in pairs])
    cols = np.fromiter((j for c in pairs for j in c), dtype=np.int64, count=len(rows))
    if len(rows) == 0:
        return 0
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(p), len(t)))
    match = maximum_bipartite_matching(graph, perm_type="column")
    return int((match >= 0).sum())


def point_metrics(
    predictions: Sequence[Tensor | Mapping[str, Tensor]],
    targets: Sequence[Tensor | Mapping[str, Tensor]],
    threshold: float = 4.0,
) -> dict[str, float]:
    """Localisation precision, recall and F1 at a distance threshold (pixels), summed over
    images (micro-averaged), with the one-to-one matching of :func:`match_points_within`.

    Returns ``{"precision", "recall", "f1", "tp", "fp", "fn"}``. The undefined ratios
    ``0 / 0`` are 1: precision with no prediction (no false claim) and recall with no
    target (nothing missed); so both empty gives F1 1, and F1 is 0 as soon as one side
    is empty and the other not.
    """
    if len(predictions) != len(targets):
        raise ValueError(
            f"predictions: expected one entry per image ({len(targets)} targets), "
            f"got {len(predictions)}"
        )
    tp = n_pred = n_gt = 0
    for i, (p, t) in enumerate(zip(predictions, targets, strict=True)):
        pa, ta = _points(p, f"predictions[{i}]"), _points(t, f"targets[{i}]")
        tp += match_points_within(pa, ta, threshold)
        n_pred += len(pa)
        n_gt += len(ta)
    precision = tp / n_pred if n_pred else 1.0
    recall = tp / n_gt if n_gt else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": float(tp),
        "fp": float(n_pred - tp),
        "fn": float(n_gt - tp),
    }


def count_metrics(
    pred_counts: Sequence[float] | Tensor | np.ndarray,
    true_counts: Sequence[float] | Tensor | np.ndarray,
) -> dict[str, float]:
    """Counting errors over images: ``mae`` = mean |pred - true|, ``rmse`` = sqrt(mean
    (pred - true)^2) (crowd-counting papers often print this under the name "MSE"),
    ``mean_count`` = mean true count, and ``relative_mae`` = mae / mean_count (NaN when
    ``mean_count`` is 0). Counts may also be lists of point sets, counted by length."""
    p = _counts(pred_counts, "pred_counts")
    t = _counts(true_counts, "true_counts")
    check_finite(("pred_counts", p), ("true_counts", t))
    if len(p) != len(t):
        raise ValueError(
            f"pred_counts: expected {len(t)} counts (one per image, as true_counts), got {len(p)}"
        )
    if len(t) == 0:
        raise ValueError("true_counts: expected at least one image, got none")
    err = p - t
    mean_count = float(t.mean())
    mae = float(np.abs(err).mean())
    return {
        "mae": mae,
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mean_count": mean_count,
        "relative_mae": mae / mean_count if mean_count > 0 else float("nan"),
    }


def _counts(x: object, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        arr = x.detach().to("cpu", torch.float64).reshape(-1).numpy()
    elif isinstance(x, Sequence) and x and not isinstance(x[0], (int, float, np.number)):
        arr = np.array([len(_points(v, f"{name}[{i}]")) for i, v in enumerate(x)], dtype=float)
    else:
        arr = np.asarray(x, dtype=np.float64).reshape(-1)
    return arr
