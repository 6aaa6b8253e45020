"""Matchers: functions from a cost (or IoU) matrix to a :class:`Matching`, and modules
that build the cost from model outputs and targets."""

from .closest import closest_prediction, closest_target
from .hungarian import hungarian
from .matching import BACKGROUND, IGNORED, Matching
from .modules import BoxCostMatcher, HungarianMatcher, MaxIoUMatcher
from .threshold import max_iou

__all__ = [
    "BACKGROUND",
    "IGNORED",
    "BoxCostMatcher",
    "HungarianMatcher",
    "Matching",
    "MaxIoUMatcher",
    "closest_prediction",
    "closest_target",
    "hungarian",
    "max_iou",
]
