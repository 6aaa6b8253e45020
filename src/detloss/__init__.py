"""detloss: training objectives for object and point detectors in PyTorch.

Matching (:mod:`detloss.match`), losses (:mod:`detloss.losses`), targets
(:mod:`detloss.heatmap`, :mod:`detloss.anchors`), decoding (:mod:`detloss.postprocess`)
and metrics (:mod:`detloss.metrics`) for DETR-, SSD-, CenterNet- and P2PNet-style
detectors. The most used names are re-exported here. The application built on them lives
in :mod:`detloss.app` (trainer, CLI, demo); its reference detectors and dataset readers are
also reachable as ``detloss.models`` and ``detloss.data`` (the readers need Pillow, the
``demo`` extra).

``import detloss`` costs little more than ``import torch``: the models, the data readers,
scipy, Numba and ``torch._dynamo`` are imported on first use.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from . import costs, losses, match, metrics, postprocess
from .anchors import BoxCoder, decode_boxes, encode_boxes, ssd_priors
from .batching import pad_targets, unpad_targets
from .boxes import (
    aligned_box_iou,
    aligned_complete_box_iou,
    aligned_distance_box_iou,
    aligned_generalized_box_iou,
    box_area,
    box_convert,
    box_iou,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
)
from .heatmap import centernet_targets, draw_gaussians, gaussian_kernel, gaussian_radius
from .losses import *  # noqa: F403 (every loss, as detloss.losses.__all__ lists it)
from .match import (
    HungarianMatcher,
    Matching,
    MaxIoUMatcher,
    SinkhornMatcher,
    hungarian,
    match_points,
    max_iou,
    sinkhorn,
)
from .metrics import coco_box_ap, count_metrics, point_metrics, voc_box_ap
from .points import anchor_points, pairwise_distance
from .postprocess import batched_nms, centernet_decode, decode_points, nms, ssd_detect

__version__ = "0.1.0"

# The application's reference models and data readers, reachable as ``detloss.models`` and
# ``detloss.data`` and imported when first used (PEP 562): computing a loss needs neither.
_LAZY_SUBMODULES = {"data": "detloss.app.data", "models": "detloss.app.models"}

__all__ = [
    "BoxCoder",
    "HungarianMatcher",
    "Matching",
    "MaxIoUMatcher",
    "SinkhornMatcher",
    "__version__",
    "aligned_box_iou",
    "aligned_complete_box_iou",
    "aligned_distance_box_iou",
    "aligned_generalized_box_iou",
    "anchor_points",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "centernet_decode",
    "centernet_targets",
    "coco_box_ap",
    "complete_box_iou",
    "costs",
    "count_metrics",
    "decode_boxes",
    "decode_points",
    "distance_box_iou",
    "draw_gaussians",
    "encode_boxes",
    "gaussian_kernel",
    "gaussian_radius",
    "generalized_box_iou",
    "hungarian",
    "losses",
    "match",
    "match_points",
    "max_iou",
    "metrics",
    "models",  # noqa: F405 (imported on first use, by __getattr__)
    "nms",
    "pad_targets",
    "pairwise_distance",
    "point_metrics",
    "postprocess",
    "sinkhorn",
    "ssd_detect",
    "ssd_priors",
    "unpad_targets",
    "voc_box_ap",
]
# Every loss, as listed once in detloss.losses (a form that type checkers read too).
__all__ += losses.__all__


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(_LAZY_SUBMODULES[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_LAZY_SUBMODULES))
