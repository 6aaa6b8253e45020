"""Data: synthetic sets written as real files, and readers for COCO boxes and point
annotations that return ``torch.utils.data.Dataset`` objects."""

from ._common import AnnotationError
from .coco import CocoDetection, load_coco_annotations
from .collate import RandomHorizontalFlip, collate_detection, pad_images
from .points import PointDataset, load_point_annotations
from .synthetic import SHAPE_CLASSES, CrowdSpec, ShapeSpec, make_crowds, make_shapes

__all__ = [
    "SHAPE_CLASSES",
    "AnnotationError",
    "CocoDetection",
    "CrowdSpec",
    "PointDataset",
    "RandomHorizontalFlip",
    "ShapeSpec",
    "collate_detection",
    "load_coco_annotations",
    "load_point_annotations",
    "make_crowds",
    "make_shapes",
    "pad_images",
]
