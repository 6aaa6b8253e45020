"""Small reference detectors used by the demo and the trainer."""

from .centernet import CenterNet
from .p2pnet import P2PNet, TwoStageFinetune, VGGBackbone, set_backbone_frozen

__all__ = ["CenterNet", "P2PNet", "TwoStageFinetune", "VGGBackbone", "set_backbone_frozen"]
