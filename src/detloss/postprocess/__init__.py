"""Decoding model outputs into detections: NMS, SSD, CenterNet and point decoding."""

from .centernet import centernet_decode
from .nms import batched_nms, nms
from .points import decode_points
from .ssd import ssd_detect

__all__ = ["batched_nms", "centernet_decode", "decode_points", "nms", "ssd_detect"]
