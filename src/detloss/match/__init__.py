"""Matchers: functions from a cost (or IoU) matrix to a :class:`Matching`, and modules
that build the cost from model outputs and targets."""

from .certificate import certify_assignment
from .closest import closest_prediction, closest_target
from .crowd import crowd_assignment
from .hungarian import hungarian
from .matching import BACKGROUND, IGNORED, Matching
from .modules import BoxCostMatcher, HungarianMatcher, MaxIoUMatcher
from .points import match_points
from .sinkhorn import SinkhornConvergenceWarning, SinkhornMatcher, SinkhornOptions, sinkhorn
from .softmin import combine, softmin
from .threshold import max_iou
from .threshold_boxes import max_iou_boxes

__all__ = [
    "BACKGROUND",
    "IGNORED",
    "BoxCostMatcher",
    "HungarianMatcher",
    "Matching",
    "MaxIoUMatcher",
    "SinkhornConvergenceWarning",
    "SinkhornMatcher",
    "SinkhornOptions",
    "certify_assignment",
    "closest_prediction",
    "closest_target",
    "combine",
    "crowd_assignment",
    "hungarian",
    "match_points",
    "max_iou",
    "max_iou_boxes",
    "sinkhorn",
    "softmin",
]
