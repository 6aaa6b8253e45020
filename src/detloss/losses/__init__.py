"""Losses: one function per loss, plus a thin ``nn.Module`` that stores its settings."""

from .classification import negative_prob
from .focal import SigmoidFocalLoss, sigmoid_focal_loss
from .iou import ciou_loss, diou_loss, giou_loss, iou_loss

__all__ = [
    "SigmoidFocalLoss",
    "ciou_loss",
    "diou_loss",
    "giou_loss",
    "iou_loss",
    "negative_prob",
    "sigmoid_focal_loss",
]
