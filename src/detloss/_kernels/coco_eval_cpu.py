"""Compiled COCO box evaluation (Numba; optional).

On the CPU, :func:`detloss.metrics.coco_box_ap` runs its per-image matching and its
accumulation through this module when Numba is installed. Both follow pycocotools'
``COCOeval.evaluateImg`` and ``accumulate`` statement by statement, in float64 and in the
same order of operations, so the numbers are pycocotools' to the last bit; only the
(image, class) cells that hold both detections and ground truth are matched at all.
"""

from __future__ import annotations

import numpy as np

from ._numba import jit

__all__ = ["accumulate", "match"]


@jit
def match(inputs: tuple, matched: np.ndarray, matched_ignored: np.ndarray) -> None:
    """COCO's greedy matching in every cell, written into ``matched`` and
    ``matched_ignored`` (``bool[A, T, D]``, false on entry).

    ``cells [P, 4]`` holds ``det_start, det_end, gt_start, gt_end`` of each (image, class)
    cell: its detections (``det_xywh [D, 4]``, best score first, at most ``maxDets``) and
    ground truths (``gt_xywh [G, 4]`` in input order). ``gt_ignore [A, G]``: crowd or
    outside area range ``a``. Per area range and threshold, each detection in turn takes
    the ground truth of highest IoU (at least the threshold, capped at ``1 - 1e-10``)
    among the regular ones not yet taken, the later one on a tie; only when there is
    none, likewise among the ignored ones (crowds can be taken again). ``matched_ignored``
    records whether the ground truth taken is an ignored one.

    ``inputs`` is ``(det_xywh, gt_xywh, gt_crowd, gt_ignore, cells, thresholds)``, as the
    record ``detloss.metrics.boxes._MatchInputs`` holds them for both implementations.
    """
    det_xywh, gt_xywh, gt_crowd, gt_ignore, cells, thresholds = inputs
    n_areas, n_thresholds = matched.shape[0], matched.shape[1]
    for p in range(cells.shape[0]):
        d0, d1, g0, g1 = cells[p, 0], cells[p, 1], cells[p, 2], cells[p, 3]
        nd, ng = d1 - d0, g1 - g0
        # IoU as maskApi.c's bbIou computes it from [x, y, w, h].
        iou = np.zeros((nd, ng))
        for g in range(ng):
            gx, gy, gw, gh = gt_xywh[g0 + g]
            ga = gw * gh
            crowd = gt_crowd[g0 + g]
            for d in range(nd):
                dx, dy, dw, dh = det_xywh[d0 + d]
                da = dw * dh
                w = min(dw + dx, gw + gx) - max(dx, gx)
                if w <= 0:
                    continue
                h = min(dh + dy, gh + gy) - max(dy, gy)
                if h <= 0:
                    continue
                i = w * h
                u = da if crowd else da + ga - i
                iou[d, g] = i / u
        order = np.empty(ng, dtype=np.int64)
        taken = np.zeros(ng, dtype=np.bool_)
        for a in range(n_areas):
            # Ground truths regular first, then ignored, each in input order (a stable sort).
            k = 0
            for g in range(ng):
                if not gt_ignore[a, g0 + g]:
                    order[k] = g
                    k += 1
            for g in range(ng):
                if gt_ignore[a, g0 + g]:
                    order[k] = g
                    k += 1
            for t in range(n_thresholds):
                taken[:] = False
                for d in range(nd):
                    best = min(thresholds[t], 1 - 1e-10)
                    m = -1
                    for k in range(ng):
                        g = order[k]
                        if taken[g] and not gt_crowd[g0 + g]:
                            continue
                        if m > -1 and not gt_ignore[a, g0 + m] and gt_ignore[a, g0 + g]:
                            break
                        if iou[d, g] < best:
                            continue
                        best = iou[d, g]
                        m = g
                    if m == -1:
                        continue
                    matched[a, t, d0 + d] = True
                    matched_ignored[a, t, d0 + d] = gt_ignore[a, g0 + m]
                    taken[m] = True


@jit
def accumulate(inputs: tuple, precision: np.ndarray, recall: np.ndarray) -> None:
    """COCO's ``accumulate``: ``precision [T, R, K, A, M]`` and ``recall [T, K, A, M]``
    (filled with -1 on entry; classes without regular ground truth stay -1).

    Class ``k``'s detections of all images are ``by_score[class_start[k]:class_start[k+1]]``
    (decreasing score, ties in image order then in-image order); ``rank`` is each one's
    place among its image's detections of the class, so ``rank < maxDet`` keeps the first
    ``maxDet`` of every image. ``det_outside [A, D]``: the detection's area is outside
    range ``a`` (an unmatched one is then ignored); ``n_regular [K, A]``: regular ground
    truths.

    ``inputs``: the record ``detloss.metrics.boxes._AccumulateInputs`` (a named tuple
    of these fields), which both implementations read.
    """
    x = inputs
    n_thresholds, n_points = precision.shape[0], precision.shape[1]
    n_areas = x.det_outside.shape[0]
    eps = np.spacing(1.0)
    longest = 0
    for k in range(x.class_start.size - 1):
        longest = max(longest, x.class_start[k + 1] - x.class_start[k])
    # Per class, gathered once in score order: 1 true positive, 2 false positive, 0
    # ignored, for each area range and threshold.
    status = np.zeros((n_areas, n_thresholds, longest), dtype=np.int8)
    ranks = np.empty(longest, dtype=np.int64)
    # Precision at the detections where recall grows (and at the first one): between two
    # such places precision only falls, so the envelope and its samples are read there.
    event_rc = np.empty(longest + 1)
    event_pr = np.empty(longest + 1)
    for k in range(x.class_start.size - 1):
        lo, hi = x.class_start[k], x.class_start[k + 1]
        nk = hi - lo
        top_rank = -1
        for j in range(nk):
            d = x.by_score[lo + j]
            ranks[j] = x.rank[d]
            top_rank = max(top_rank, x.rank[d])
            for a in range(n_areas):
                for t in range(n_thresholds):
                    if x.matched[a, t, d]:
                        status[a, t, j] = 0 if x.matched_ignored[a, t, d] else 1
                    else:
                        status[a, t, j] = 0 if x.det_outside[a, d] else 2
        for a in range(n_areas):
            npig = x.n_regular[k, a]
            if npig == 0:
                continue
            for m in range(x.max_dets.size):
                limit = x.max_dets[m]
                if m > 0 and top_rank < x.max_dets[m - 1]:
                    # The smaller limit already kept every detection: same numbers.
                    for t in range(n_thresholds):
                        recall[t, k, a, m] = recall[t, k, a, m - 1]
                        for r in range(n_points):
                            precision[t, r, k, a, m] = precision[t, r, k, a, m - 1]
                    continue
                for t in range(n_thresholds):
                    tp = 0.0
                    fp = 0.0
                    nd = 0
                    events = 0
                    for j in range(nk):
                        if ranks[j] >= limit:
                            continue
                        flag = status[a, t, j]
                        if flag == 1:
                            tp += 1.0
                        elif flag == 2:
                            fp += 1.0
                        if flag == 1 or nd == 0:
                            event_rc[events] = tp / npig
                            event_pr[events] = tp / (fp + tp + eps)
                            events += 1
                        nd += 1
                    recall[t, k, a, m] = tp / npig if nd else 0.0
                    # The envelope (a suffix maximum) at the places read.
                    for i in range(events - 1, 0, -1):
                        if event_pr[i] > event_pr[i - 1]:
                            event_pr[i - 1] = event_pr[i]
                    # np.searchsorted(rc, recall_points, side="left") lands on a place
                    # where recall grows (or on the first detection): a merge.
                    i = 0
                    for r in range(n_points):
                        while i < events and event_rc[i] < x.recall_points[r]:
                            i += 1
                        precision[t, r, k, a, m] = event_pr[i] if i < events else 0.0
