"""detloss: training objectives for object and point detectors in PyTorch."""

from . import costs, losses, match
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
from .losses import (
    SigmoidFocalLoss,
    ciou_loss,
    diou_loss,
    giou_loss,
    iou_loss,
    negative_prob,
    sigmoid_focal_loss,
)
from .match import HungarianMatcher, Matching, MaxIoUMatcher
from .points import anchor_points, pairwise_distance

__version__ = "0.1.0"

__all__ = [
    "HungarianMatcher",
    "Matching",
    "MaxIoUMatcher",
    "SigmoidFocalLoss",
    "__version__",
    "aligned_box_iou",
    "aligned_complete_box_iou",
    "aligned_distance_box_iou",
    "aligned_generalized_box_iou",
    "anchor_points",
    "box_area",
    "box_convert",
    "box_iou",
    "ciou_loss",
    "complete_box_iou",
    "costs",
    "diou_loss",
    "distance_box_iou",
    "generalized_box_iou",
    "giou_loss",
    "iou_loss",
    "losses",
    "match",
    "negative_prob",
    "pad_targets",
    "pairwise_distance",
    "sigmoid_focal_loss",
    "unpad_targets",
]
