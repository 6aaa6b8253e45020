"""Small reference detectors used by the demo and the trainer."""

from .centernet import CenterNet
from .p2pnet import P2PNet, TwoStageFinetune, VGGBackbone, set_backbone_frozen
from .ssd import SSD

__all__ = ["SSD", "CenterNet", "P2PNet", "TwoStageFinetune", "VGGBackbone", "set_backbone_frozen"]
