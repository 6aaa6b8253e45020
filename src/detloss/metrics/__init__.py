"""Evaluation metrics: box average precision (COCO and VOC), point localisation, counting.

These run once per evaluation, on the host, in float64: exact definitions come first
(:func:`coco_box_ap` is pycocotools' ``COCOeval`` number for number), then speed (its
matching and accumulation are compiled loops where Numba is installed). Inputs are lists
with one entry per image, on any device.

Box AP (:func:`coco_box_ap`, :func:`voc_box_ap`)
    ``predictions[i]``: ``{"boxes": [d, 4], "scores": [d], "labels": [d]}``;
    ``targets[i]``: ``{"boxes": [n, 4], "labels": [n]}`` (COCO also reads optional
    ``"iscrowd"`` and ``"area"``, ``[n]`` each); boxes xyxy in one unit system.

Points (:func:`point_metrics`, :func:`count_metrics`)
    ``predictions[i]``: ``Tensor[d, 2]`` or ``{"points": [d, 2]}``; ``targets[i]`` likewise.
"""

from .boxes import COCO_IOU_THRESHOLDS, coco_box_ap, voc_box_ap
from .points import count_metrics, match_points_within, point_metrics

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "coco_box_ap",
    "count_metrics",
    "match_points_within",
    "point_metrics",
    "voc_box_ap",
]
