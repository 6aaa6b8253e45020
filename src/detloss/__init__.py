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
from .losses import (
    ALRPLoss,
    APLoss,
    CenterNetLoss,
    CIoULoss,
    DetectionLoss,
    DIoULoss,
    GaussianFocalLoss,
    GaussianFocalLossWithLogits,
    GIoULoss,
    IoULoss,
    MultiBoxLoss,
    NegativeProbLoss,
    PointLoss,
    RankSortLoss,
    SetCriterion,
    SigmoidFocalLoss,
    SmoothL1Loss,
    alrp_loss,
    ap_loss,
    centernet_loss,
    ciou_loss,
    detection_loss,
    diou_loss,
    gaussian_focal_loss,
    gaussian_focal_loss_with_logits,
    giou_loss,
    iou_loss,
    multibox_loss,
    negative_prob,
    point_loss,
    rank_sort_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
)
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
    "ALRPLoss",
    "APLoss",
    "BoxCoder",
    "CIoULoss",
    "CenterNetLoss",
    "DIoULoss",
    "DetectionLoss",
    "GIoULoss",
    "GaussianFocalLoss",
    "GaussianFocalLossWithLogits",
    "HungarianMatcher",
    "IoULoss",
    "Matching",
    "MaxIoUMatcher",
    "MultiBoxLoss",
    "NegativeProbLoss",
    "PointLoss",
    "RankSortLoss",
    "SetCriterion",
    "SigmoidFocalLoss",
    "SinkhornMatcher",
    "SmoothL1Loss",
    "__version__",
    "aligned_box_iou",
    "aligned_complete_box_iou",
    "aligned_distance_box_iou",
    "aligned_generalized_box_iou",
    "alrp_loss",
    "anchor_points",
    "ap_loss",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "centernet_decode",
    "centernet_loss",
    "centernet_targets",
    "ciou_loss",
    "coco_box_ap",
    "complete_box_iou",
    "costs",
    "count_metrics",
    "decode_boxes",
    "decode_points",
    "detection_loss",
    "diou_loss",
    "distance_box_iou",
    "draw_gaussians",
    "encode_boxes",
    "gaussian_focal_loss",
    "gaussian_focal_loss_with_logits",
    "gaussian_kernel",
    "gaussian_radius",
    "generalized_box_iou",
    "giou_loss",
    "hungarian",
    "iou_loss",
    "losses",
    "match",
    "match_points",
    "max_iou",
    "metrics",
    "models",
    "multibox_loss",
    "negative_prob",
    "nms",
    "pad_targets",
    "pairwise_distance",
    "point_loss",
    "point_metrics",
    "postprocess",
    "rank_sort_loss",
    "sigmoid_focal_loss",
    "sinkhorn",
    "smooth_l1_loss",
    "ssd_detect",
    "ssd_priors",
    "unpad_targets",
    "voc_box_ap",
]


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(_LAZY_SUBMODULES[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_LAZY_SUBMODULES))
