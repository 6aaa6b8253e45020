"""Data: synthetic sets written as real files, and readers that return
``torch.utils.data.Dataset`` objects for our points JSON, COCO JSON, ShanghaiTech,
UCF-QNRF, JHU-Crowd++, NWPU-Crowd, YOLO txt and Pascal VOC XML folders."""

from ._common import DEFAULT_MAX_PIXELS, AnnotationError
from .base import AnnotatedImages
from .coco import CocoDetection, load_coco_annotations
from .collate import RandomHorizontalFlip, collate_detection, pad_images
from .crowd import read_jhu_crowd, read_nwpu_crowd, read_shanghaitech, read_ucf_qnrf
from .formats import (
    FORMATS,
    available_splits,
    detect_format,
    format_kind,
    open_split,
    open_train_val,
    split_dataset,
)
from .points import PointDataset, load_point_annotations
from .synthetic import SHAPE_CLASSES, CrowdSpec, ShapeSpec, make_crowds, make_shapes
from .voc import read_voc
from .yolo import read_yolo

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "SHAPE_CLASSES",
    "AnnotatedImages",
    "AnnotationError",
    "CocoDetection",
    "CrowdSpec",
    "PointDataset",
    "RandomHorizontalFlip",
    "ShapeSpec",
    "available_splits",
    "collate_detection",
    "detect_format",
    "format_kind",
    "load_coco_annotations",
    "load_point_annotations",
    "make_crowds",
    "make_shapes",
    "open_split",
    "open_train_val",
    "pad_images",
    "read_jhu_crowd",
    "read_nwpu_crowd",
    "read_shanghaitech",
    "read_ucf_qnrf",
    "read_voc",
    "read_yolo",
    "split_dataset",
]
