"""Losses: one function per loss, plus a thin ``nn.Module`` that stores its settings."""

from .centernet import (
    CenterNetLoss,
    GaussianFocalLoss,
    GaussianFocalLossWithLogits,
    centernet_loss,
    gaussian_focal_loss,
    gaussian_focal_loss_with_logits,
)
from .classification import NegativeProbLoss, negative_prob
from .detection import DetectionLoss, detection_loss
from .detr import SetCriterion
from .focal import SigmoidFocalLoss, sigmoid_focal_loss
from .iou import CIoULoss, DIoULoss, GIoULoss, IoULoss, ciou_loss, diou_loss, giou_loss, iou_loss
from .points import PointLoss, point_loss
from .ranking import ALRPLoss, APLoss, RankSortLoss, alrp_loss, ap_loss, rank_sort_loss
from .regression import SmoothL1Loss, smooth_l1_loss
from .ssd import MultiBoxLoss, multibox_loss

__all__ = [
    "ALRPLoss",
    "APLoss",
    "CIoULoss",
    "CenterNetLoss",
    "DIoULoss",
    "DetectionLoss",
    "GIoULoss",
    "GaussianFocalLoss",
    "GaussianFocalLossWithLogits",
    "IoULoss",
    "MultiBoxLoss",
    "NegativeProbLoss",
    "PointLoss",
    "RankSortLoss",
    "SetCriterion",
    "SigmoidFocalLoss",
    "SmoothL1Loss",
    "alrp_loss",
    "ap_loss",
    "centernet_loss",
    "ciou_loss",
    "detection_loss",
    "diou_loss",
    "gaussian_focal_loss",
    "gaussian_focal_loss_with_logits",
    "giou_loss",
    "iou_loss",
    "multibox_loss",
    "negative_prob",
    "point_loss",
    "rank_sort_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
]
