"""Box average precision: the COCO definition (pycocotools' ``COCOeval``, number for
number) and the PASCAL VOC 2010+ definition. Inputs are described in
:mod:`detloss.metrics`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._checks import check_finite, named_list_entries
from .._kernels import fast_path
from ._arrays import array_of, dict_entry

__all__ = ["COCO_IOU_THRESHOLDS", "coco_box_ap", "voc_box_ap"]


#: The ten COCO IoU thresholds 0.50, 0.55, ..., 0.95, exactly as pycocotools builds them
#: (``np.linspace``: its 0.9 is the float64 just below 0.9, which decides an IoU equal to
#: that value).
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.linspace(0.5, 0.95, 10).tolist())
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


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
        boxes = array_of(
            dict_entry(p, "boxes", f"predictions[{i}]"), f"predictions[{i}]['boxes']", (4,)
        )
        scores = array_of(
            dict_entry(p, "scores", f"predictions[{i}]"), f"predictions[{i}]['scores']", ()
        )
        labels = array_of(
            dict_entry(p, "labels", f"predictions[{i}]"), f"predictions[{i}]['labels']", ()
        )
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"predictions[{i}]: expected boxes, scores and labels of one length, got "
                f"{len(boxes)}, {len(scores)}, {len(labels)}"
            )
        t_boxes = array_of(dict_entry(t, "boxes", f"targets[{i}]"), f"targets[{i}]['boxes']", (4,))
        t_labels = array_of(dict_entry(t, "labels", f"targets[{i}]"), f"targets[{i}]['labels']", ())
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


#: COCO's object-size ranges (pycocotools ``Params.areaRng``): all, small, medium, large.
_AREA_RANGES = np.array([[0, 1e5**2], [0, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=float)
_AREA_NAMES = ("", "_small", "_medium", "_large")


class _CocoInputs(NamedTuple):
    """All images' boxes in one array per field, in image order (``*_image``: the image
    of each row); boxes as COCO's ``[x, y, w, h]`` with ``w = x2 - x1``, ``h = y2 - y1``."""

    det_xywh: np.ndarray  # float64 [D, 4]
    det_scores: np.ndarray  # float64 [D]
    det_labels: np.ndarray  # int64 [D]
    det_image: np.ndarray  # int64 [D]
    gt_xywh: np.ndarray  # float64 [G, 4]
    gt_labels: np.ndarray  # int64 [G]
    gt_image: np.ndarray  # int64 [G]
    gt_crowd: np.ndarray  # bool [G]
    gt_area: np.ndarray  # float64 [G]


class _MatchInputs(NamedTuple):
    """What COCO's matching reads, the one contract of its compiled loop
    (``_kernels.coco_eval_cpu.match``) and of :func:`_match_numpy`; both write
    ``matched`` and ``matched_ignored`` (``bool[A, T, D]``)."""

    det_xywh: np.ndarray  # float64 [D, 4]: per cell best score first, at most maxDets
    gt_xywh: np.ndarray  # float64 [G, 4]: per cell in input order
    gt_crowd: np.ndarray  # bool [G]
    gt_ignore: np.ndarray  # bool [A, G]: crowd, or outside area range a
    cells: np.ndarray  # int64 [P, 4]: det_start, det_end, gt_start, gt_end of each cell
    thresholds: np.ndarray  # float64 [T]


class _AccumulateInputs(NamedTuple):
    """What COCO's ``accumulate`` reads, the one contract of its compiled loop
    (``_kernels.coco_eval_cpu.accumulate``) and of :func:`_accumulate_numpy`; both write
    ``precision [T, R, K, A, M]`` and ``recall [T, K, A, M]``."""

    class_start: np.ndarray  # int64 [K + 1]: class k's detections in by_score
    by_score: np.ndarray  # int64 [D]: per class, detections by decreasing score
    rank: np.ndarray  # int64 [D]: place among its image's detections of the class
    matched: np.ndarray  # bool [A, T, D]
    matched_ignored: np.ndarray  # bool [A, T, D]
    det_outside: np.ndarray  # bool [A, D]: area outside range a
    n_regular: np.ndarray  # int64 [K, A]: regular ground truths
    max_dets: np.ndarray  # int64 [M]
    recall_points: np.ndarray  # float64 [R]


def _field(entry: Mapping, key: str, name: str, tail: tuple[int, ...]) -> Tensor:
    """``entry[key]`` (``entry`` a mapping) as a detached tensor of shape ``[n, *tail]``."""
    try:
        x = entry[key]
    except KeyError:
        raise ValueError(f"{name}: missing key {key!r}, got keys {sorted(entry)}") from None
    if not isinstance(x, Tensor):
        x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    shape = x.shape
    if len(shape) != 1 + len(tail) or shape[1:] != tail:
        if x.numel() == 0:
            return x.detach().reshape(0, *tail)
        want = "[n" + "".join(f", {s}" for s in tail) + "]"
        raise ValueError(f"{name}[{key!r}]: expected shape {want}, got {list(shape)}")
    return x.detach()


def _concat(parts: list[Tensor], dtype: torch.dtype, tail: tuple[int, ...]) -> np.ndarray:
    """The parts (any devices and types) as one host array of ``dtype``."""
    if not parts:
        return torch.zeros((0, *tail), dtype=dtype).numpy()
    try:
        joined = torch.cat(parts)
    except RuntimeError:  # parts on several devices
        joined = torch.cat([p.cpu() for p in parts])
    return joined.to("cpu", dtype).numpy()


def _check_finite(values: np.ndarray, counts: list[int], name: str) -> None:
    """A ValueError naming the image of the first row with a NaN or infinite value."""
    flat = values.reshape(len(values), -1) if len(values) else values.reshape(0, 1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        image = int(np.searchsorted(np.cumsum(counts), row, side="right"))
        raise ValueError(f"{name.format(image)}: expected finite values, got {flat[row].tolist()}")


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """COCO's ``[x, y, w, h]`` of xyxy boxes, as a COCO results file would hold them."""
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _coco_inputs(
    predictions: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]]
) -> _CocoInputs:
    if len(predictions) != len(targets):
        raise ValueError(
            f"predictions: expected one entry per image ({len(targets)} targets), "
            f"got {len(predictions)}"
        )
    columns: tuple[list[Tensor], ...] = ([], [], [], [], [], [], [])
    n_det, n_gt = [], []
    has_crowd, has_area = [], []
    for i, (p, t) in enumerate(zip(predictions, targets, strict=True)):
        pname, tname = f"predictions[{i}]", f"targets[{i}]"
        for entry, name in ((p, pname), (t, tname)):
            if not isinstance(entry, Mapping):
                raise TypeError(f"{name} must be a dict, got {type(entry).__name__}")
        boxes = _field(p, "boxes", pname, (4,))
        scores = _field(p, "scores", pname, ())
        labels = _field(p, "labels", pname, ())
        n = boxes.shape[0]
        if not n == scores.shape[0] == labels.shape[0]:
            raise ValueError(
                f"{pname}: expected boxes, scores and labels of one length, got "
                f"{n}, {scores.shape[0]}, {labels.shape[0]}"
            )
        t_boxes = _field(t, "boxes", tname, (4,))
        t_labels = _field(t, "labels", tname, ())
        g = t_boxes.shape[0]
        if g != t_labels.shape[0]:
            raise ValueError(
                f"{tname}: expected boxes and labels of one length, got {g} and {t_labels.shape[0]}"
            )
        for column, value in zip(columns, (boxes, scores, labels, t_boxes, t_labels), strict=False):
            column.append(value)
        optional = (("iscrowd", columns[5], has_crowd), ("area", columns[6], has_area))
        for key, column, flags in optional:
            if key in t:
                value = _field(t, key, tname, ())
                if value.shape[0] != g:
                    raise ValueError(
                        f"{tname}[{key!r}]: expected shape [{g}] (one per box), "
                        f"got {list(value.shape)}"
                    )
                column.append(value)
            flags.append(key in t)
        n_det.append(n)
        n_gt.append(g)
    f64, i64 = torch.float64, torch.int64
    det_boxes, det_scores = _concat(columns[0], f64, (4,)), _concat(columns[1], f64, ())
    gt_boxes = _concat(columns[3], f64, (4,))
    gt_xywh = _xywh(gt_boxes)
    _check_finite(det_boxes, n_det, "predictions[{}]['boxes']")
    _check_finite(det_scores, n_det, "predictions[{}]['scores']")
    _check_finite(gt_boxes, n_gt, "targets[{}]['boxes']")
    # Optional columns: given values where an image has them, defaults elsewhere.
    gt_crowd = np.zeros(len(gt_boxes), dtype=bool)
    if any(has_crowd):
        gt_crowd[np.repeat(np.array(has_crowd), n_gt)] = _concat(columns[5], f64, ()) != 0
    gt_area = gt_xywh[:, 2] * gt_xywh[:, 3]  # w * h, as for a detection
    given_area = np.repeat(np.array(has_area, dtype=bool), n_gt)
    if any(has_area):
        gt_area[given_area] = _concat(columns[6], f64, ())
        _check_finite(np.where(given_area, gt_area, 0.0), n_gt, "targets[{}]['area']")
    images = np.arange(len(n_det))
    return _CocoInputs(
        det_xywh=_xywh(det_boxes),
        det_scores=det_scores,
        det_labels=_concat(columns[2], i64, ()),
        det_image=np.repeat(images, n_det),
        gt_xywh=gt_xywh,
        gt_labels=_concat(columns[4], i64, ()),
        gt_image=np.repeat(images, n_gt),
        gt_crowd=gt_crowd,
        gt_area=gt_area,
    )


def _box_iou_coco(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of ``[x, y, w, h]`` boxes ``d [..., 4]`` and ``g [..., 4]`` (broadcast) as
    pycocotools' ``bbIou`` computes it (same operations in the same order); the union of
    a crowd region (``crowd``, broadcast to the result) is the detection's own area."""
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    inter = w * h
    da = d[..., 2] * d[..., 3]
    union = np.where(crowd, da, da + g[..., 2] * g[..., 3] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), inter / union, 0.0)


def _match_numpy(inputs: _MatchInputs, matched: np.ndarray, matched_ignored: np.ndarray) -> None:
    """COCO's greedy matching (the rule of ``_kernels.coco_eval_cpu.match``). Scanning the regular
    ground truths and then the ignored ones, replacing the best so far on ``>=``, ends on
    the last one of highest IoU (at least the capped threshold) among the free regular
    ones, else among the free ignored ones (crowds are always free).

    The j-th detections of all cells are matched together (vectorised over cells, area
    ranges and thresholds), cells grouped by their number of ground truths (powers of
    two) so that padding them to one width stays cheap."""
    det_xywh, gt_xywh, gt_crowd, gt_ignore, cells, thresholds = inputs
    if len(cells) == 0:
        return
    floor = np.minimum(thresholds, 1 - 1e-10)[:, None]  # [T, 1]
    n_gt = cells[:, 3] - cells[:, 2]
    group = np.ceil(np.log2(n_gt)).astype(np.int64)
    for b in np.unique(group).tolist():
        # Cells by decreasing detection count: those with a j-th detection are a prefix.
        mine = cells[group == b]
        mine = mine[np.argsort(-(mine[:, 1] - mine[:, 0]), kind="stable")]
        d0, nd, ng = mine[:, 0], mine[:, 1] - mine[:, 0], mine[:, 3] - mine[:, 2]
        width = int(ng.max())
        slot = np.arange(width)
        valid = slot[None, :] < ng[:, None]  # [P, W]
        rows = mine[:, 2:3] + np.minimum(slot[None, :], ng[:, None] - 1)  # [P, W]
        g_boxes, crowd = gt_xywh[rows], gt_crowd[rows] & valid  # [P, W, 4], [P, W]
        regular = ~gt_ignore[:, rows].transpose(1, 0, 2)[:, :, None, :]  # [P, A, 1, W]
        taken = np.zeros((len(mine), matched.shape[0], len(thresholds), width), dtype=bool)
        for j in range(int(nd[0])):
            live = int(np.count_nonzero(nd > j))
            det_rows = d0[:live] + j
            iou = _box_iou_coco(det_xywh[det_rows][:, None, :], g_boxes[:live], crowd[:live])
            iou4 = iou[:, None, None, :]  # [P, 1, 1, W]
            free = ~taken[:live] | crowd[:live, None, None, :]
            fits = free & valid[:live, None, None, :] & (iou4 >= floor)  # [P, A, T, W]
            reg = regular[:live]
            # Regular ground truth where one fits, else the ignored ones.
            pool = fits & (reg == (fits & reg).any(axis=3, keepdims=True))
            value = np.where(pool, iou4, -np.inf)
            best = value == value.max(axis=3, keepdims=True)
            last = width - 1 - np.argmax(best[..., ::-1], axis=3)  # [P, A, T]
            p_i, a_i, t_i = np.nonzero(pool.any(axis=3))
            g_i = last[p_i, a_i, t_i]
            taken[p_i, a_i, t_i, g_i] = True
            matched[a_i, t_i, det_rows[p_i]] = True
            matched_ignored[a_i, t_i, det_rows[p_i]] = ~regular[p_i, a_i, 0, g_i]


def _accumulate_numpy(inputs: _AccumulateInputs, precision: np.ndarray, recall: np.ndarray) -> None:
    """COCO's ``accumulate`` (the rule of ``_kernels.coco_eval_cpu.accumulate``), as pycocotools
    writes it: vectorised over the detections of a class, a loop over thresholds."""
    x = inputs
    eps = np.spacing(1)
    for k in range(len(x.class_start) - 1):
        segment = x.by_score[x.class_start[k] : x.class_start[k + 1]]
        for a in range(x.det_outside.shape[0]):
            npig = x.n_regular[k, a]
            if npig == 0:
                continue
            for m, limit in enumerate(x.max_dets.tolist()):
                d = segment[x.rank[segment] < limit]
                dtm = x.matched[a][:, d]
                ignored = np.where(dtm, x.matched_ignored[a][:, d], x.det_outside[a, d][None, :])
                tp_sum = np.cumsum(dtm & ~ignored, axis=1).astype(float)
                fp_sum = np.cumsum(~dtm & ~ignored, axis=1).astype(float)
                for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum, strict=True)):
                    nd = len(tp)
                    rc = tp / npig
                    pr = tp / (fp + tp + eps)
                    recall[t, k, a, m] = rc[-1] if nd else 0
                    pr = np.maximum.accumulate(pr[::-1])[::-1]
                    idx = np.searchsorted(rc, x.recall_points, side="left")
                    q = np.zeros(len(x.recall_points))
                    q[idx < nd] = pr[idx[idx < nd]]
                    precision[t, :, k, a, m] = q


def _summarize(
    values: np.ndarray, thresholds: np.ndarray, iou: float | None, area: int, m: int
) -> float:
    """pycocotools ``COCOeval.summarize``: the mean of the defined (> -1) entries of
    ``precision [T, R, K, A, M]`` or ``recall [T, K, A, M]`` at one area range and
    detection limit (and one threshold if given), by the same NumPy expression; NaN where
    none is defined (COCO prints -1)."""
    s = values
    if iou is not None:
        s = s[np.flatnonzero(np.isclose(thresholds, iou))[:1]]
    s = s[..., [area], [m]]
    defined = s[s > -1]
    return float(np.mean(defined)) if len(defined) else float("nan")


def coco_box_ap(
    predictions: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    *,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    max_detections: int = 100,
) -> dict[str, float | dict[int, float]]:
    """Box average precision and recall by the COCO definition: pycocotools'
    ``COCOeval`` (``iouType="bbox"``), number for number, ties included.

    Each image is a COCO image and each label a category; boxes are read as COCO's
    ``[x1, y1, x2 - x1, y2 - y1]`` in float64. ``targets[i]`` may also carry
    ``"iscrowd"`` (``[n]``, nonzero for crowd regions) and ``"area"`` (``[n]``, the area
    that decides the small / medium / large range; default ``w * h``); a detection's area
    is ``w * h``.

    Per image and class the detections are sorted by score (stable) and the first
    ``max_detections`` kept. At each IoU threshold and area range they are matched
    greedily, best score first: each takes the ground truth of highest IoU (at least the
    threshold) among the regular ones not yet taken, the later one on an exact IoU tie
    (pycocotools' loop replaces on ``>=``); only when none fits, a crowd region or a
    ground truth outside the area range, and is then ignored. A crowd region can be taken
    any number of times; its IoU is the intersection over the detection's area.
    Unmatched detections outside the area range are ignored too. Per class, the
    detections of all images are ranked by score (stable), precision is made monotone
    (the envelope) and read at the 101 recalls ``0, 0.01, ..., 1``. Every value is a mean
    over the classes with regular ground truth (and over the thresholds).

    Returns:
        floats, NaN where COCO prints -1 (nothing to average): ``ap`` (AP@[.5:.95]),
        ``ap50`` and ``ap75`` (when 0.5 / 0.75 are among the thresholds), ``ap_small``,
        ``ap_medium``, ``ap_large``, ``ar_1``, ``ar_10`` (limits below
        ``max_detections``), ``ar_{max_detections}`` (``ar_100`` by default),
        ``ar_small``, ``ar_medium``, ``ar_large`` (at ``max_detections``); and
        ``per_class``: ``{label: AP@[.5:.95]}`` of the classes with regular ground
        truth. With the defaults the first twelve are ``COCOeval.stats`` in order.

    Only the (image, class) cells that hold both detections and ground truth are
    matched; on the CPU with Numba installed matching and accumulation are one compiled
    loop each (``detloss._kernels.coco_eval_cpu``).

    NaN or inf in a box, score or area is a ValueError naming it.

    Shape:
        - predictions: ``B`` dicts of ``boxes [d_i, 4]``, ``scores [d_i]``, ``labels [d_i]``.
        - targets: ``B`` dicts of ``boxes [n_i, 4]``, ``labels [n_i]`` (and optional
          ``iscrowd``, ``area [n_i]``).
        - output: a dict of floats (and ``per_class``).

    Example:
        >>> target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}
        >>> hit = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 9.0]]), "scores": torch.tensor([0.9]),
        ...        "labels": torch.tensor([0])}
        >>> result = coco_box_ap([hit], [target])
        >>> [round(result[key], 4) for key in ("ap50", "ap75", "ap")]  # IoU 0.9
        [1.0, 1.0, 0.9]
    """
    if (
        isinstance(max_detections, bool)
        or not isinstance(max_detections, (int, np.integer))
        or max_detections < 1
    ):
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    if (
        thresholds.ndim != 1
        or len(thresholds) == 0
        or (thresholds <= 0).any()
        or (thresholds > 1).any()
    ):
        raise ValueError(f"iou_thresholds: expected values in (0, 1], got {list(iou_thresholds)}")
    x = _coco_inputs(predictions, targets)
    limits = np.array(sorted({m for m in (1, 10) if m < max_detections} | {int(max_detections)}))
    classes = np.unique(x.gt_labels)
    n_images, n_classes = len(predictions), len(classes)
    n_areas, n_thresholds = len(_AREA_RANGES), len(thresholds)
    lo, hi = _AREA_RANGES[:, :1], _AREA_RANGES[:, 1:]

    # Detections of the ground truth's classes by (class, image, score desc, input
    # order); the first max_detections of each (class, image) cell kept.
    det_class = np.searchsorted(classes, x.det_labels)
    known = det_class < n_classes
    known[known] = classes[det_class[known]] == x.det_labels[known]
    rows = np.flatnonzero(known)
    rows = rows[np.lexsort((-x.det_scores[rows], x.det_image[rows], det_class[rows]))]
    det_cell = det_class[rows] * n_images + x.det_image[rows]
    rank = np.arange(len(rows)) - np.searchsorted(det_cell, det_cell, side="left")
    kept = rank < max_detections
    rows, det_cell, rank = rows[kept], det_cell[kept], rank[kept]
    det_xywh = np.ascontiguousarray(x.det_xywh[rows])
    det_scores = x.det_scores[rows]
    det_area = det_xywh[:, 2] * det_xywh[:, 3]
    det_outside = (det_area[None, :] < lo) | (det_area[None, :] > hi)  # [A, D]

    # Ground truths by (class, image), input order within a cell.
    gt_class = np.searchsorted(classes, x.gt_labels)
    gt_rows = np.lexsort((x.gt_image, gt_class))
    gt_class = gt_class[gt_rows]
    gt_cell = gt_class * n_images + x.gt_image[gt_rows]
    gt_xywh = np.ascontiguousarray(x.gt_xywh[gt_rows])
    gt_crowd = x.gt_crowd[gt_rows]
    gt_area = x.gt_area[gt_rows]
    gt_ignore = gt_crowd[None, :] | (gt_area[None, :] < lo) | (gt_area[None, :] > hi)  # [A, G]

    # Only cells with both detections and ground truth are matched.
    cell_ids, det_start = np.unique(det_cell, return_index=True)
    det_end = np.append(det_start[1:], len(det_cell))[: len(det_start)]
    gt_start = np.searchsorted(gt_cell, cell_ids, side="left")
    gt_end = np.searchsorted(gt_cell, cell_ids, side="right")
    both = gt_end > gt_start
    cells = np.stack([det_start, det_end, gt_start, gt_end], axis=1)[both].astype(np.int64)

    kernel = fast_path("coco_eval", "cpu")
    match = kernel.match if kernel is not None else _match_numpy
    accumulate = kernel.accumulate if kernel is not None else _accumulate_numpy
    matched = np.zeros((n_areas, n_thresholds, len(rows)), dtype=bool)
    matched_ignored = np.zeros_like(matched)
    match(
        _MatchInputs(det_xywh, gt_xywh, gt_crowd, gt_ignore, cells, thresholds),
        matched,
        matched_ignored,
    )

    # Per class, the detections of all images by score, ties in image order then rank.
    det_class = det_cell // n_images
    by_score = np.lexsort((-det_scores, det_class))
    class_start = np.searchsorted(det_class, np.arange(n_classes + 1), side="left")
    n_regular = np.stack(
        [np.bincount(gt_class[~ignore], minlength=n_classes) for ignore in gt_ignore], axis=1
    ).reshape(n_classes, n_areas)
    precision = -np.ones((n_thresholds, len(_RECALL_POINTS), n_classes, n_areas, len(limits)))
    recall = -np.ones((n_thresholds, n_classes, n_areas, len(limits)))
    accumulate(
        _AccumulateInputs(
            class_start,
            by_score,
            rank,
            matched,
            matched_ignored,
            det_outside,
            n_regular,
            limits,
            _RECALL_POINTS,
        ),
        precision,
        recall,
    )

    top = len(limits) - 1
    result: dict[str, float | dict[int, float]] = {
        "ap": _summarize(precision, thresholds, None, 0, top)
    }
    for t, key in ((0.5, "ap50"), (0.75, "ap75")):
        if np.isclose(thresholds, t).any():
            result[key] = _summarize(precision, thresholds, t, 0, top)
    for a in (1, 2, 3):
        result[f"ap{_AREA_NAMES[a]}"] = _summarize(precision, thresholds, None, a, top)
    for m, limit in enumerate(limits.tolist()):
        result[f"ar_{limit}"] = _summarize(recall, thresholds, None, 0, m)
    for a in (1, 2, 3):
        result[f"ar{_AREA_NAMES[a]}"] = _summarize(recall, thresholds, None, a, top)
    result["per_class"] = {
        int(c): float(np.mean(precision[:, :, k, 0, top]))
        for k, c in enumerate(classes.tolist())
        if n_regular[k, 0] > 0
    }
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

    Shape:
        - predictions: ``B`` dicts of ``boxes [d_i, 4]``, ``scores [d_i]``, ``labels [d_i]``.
        - targets: ``B`` dicts of ``boxes [n_i, 4]``, ``labels [n_i]``.
        - output: ``{"ap": float, "per_class": {label: float}}``.

    Example:
        >>> targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]]),
        ...             "labels": torch.tensor([0, 0])}]
        >>> predictions = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 0.0, 60.0, 10.0]]),
        ...                 "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}]
        >>> voc_box_ap(predictions, targets)  # one of two found, at precision 1
        {'ap': 0.5, 'per_class': {0: 0.5}}
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
