"""Reader of box annotations in COCO JSON ("instances") format.

The parts read are the standard ones::

    {
      "images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480}, ...],
      "annotations": [{"id": 7, "image_id": 1, "category_id": 3,
                       "bbox": [x, y, w, h], "iscrowd": 0}, ...],
      "categories": [{"id": 3, "name": "dog"}, ...]
    }

``bbox`` is ``[x, y, width, height]`` in pixels with ``(x, y)`` the top-left corner, in
the continuous convention (the image spans ``[0, W] x [0, H]``). Other keys
(``segmentation``, ``area``, ``info``, ...) are ignored.

Rules:

* Category ids may be any integers; labels are their rank in ascending id order
  (``0..C-1``), with the names in :attr:`CocoDetection.categories`.
* A box with a negative width or height, or reaching more than ``tolerance`` pixels
  outside its image, is an error naming the file and the annotation. Boxes within the
  tolerance are clipped to the image.
* Crowd regions (``iscrowd: 1``) and boxes of zero width or height are dropped, and one
  warning reports how many.
* An image without annotations is kept, with empty targets.
* The optional ``ignore`` flag (0 or 1, as mmdetection reads it) of an annotation is kept
  in the target's ``"ignore": bool[n]`` when any annotation of the file has it.
* ``file_name`` is a relative path inside the image directory; two records naming the
  same file are an error; an annotation repeated exactly is dropped with a counted warning.
* Boxes, ``width`` and ``height`` are in the stored pixel frame (EXIF orientation is not
  applied), as in pycocotools and the COCO tools.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from torch import Tensor

from ._common import (
    AnnotationError,
    check_image_name,
    read_json,
    warn_dropped,
)
from .base import AnnotationFileDataset, boxes_target

__all__ = ["CocoDetection", "load_coco_annotations"]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _require(record: object, keys: tuple[str, ...], path: Path, where: str) -> dict:
    if not isinstance(record, dict):
        raise AnnotationError(f"{path}: {where}: expected an object, got {type(record).__name__}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise AnnotationError(f"{path}: {where}: missing keys {missing}, got {sorted(record)}")
    return record


def load_coco_annotations(
    path: str | Path, tolerance: float = 1.0, *, keep_duplicates: bool = False
) -> tuple[list[dict], dict[int, dict[str, Tensor]], list[int], list[str]]:
    """Parse and check a COCO file.

    An annotation repeated exactly (same image, category and ``bbox``) is dropped, or kept
    with ``keep_duplicates``; one warning counts the repeats either way.

    Returns:
        ``(images, targets, category_ids, category_names)``: the image records in file
        order, ``{image id: {"boxes": float32[n, 4] xyxy, "labels": int64[n]}}``, and the
        categories in label order.

    Raises:
        FileNotFoundError: no such file.
        AnnotationError (a ``ValueError``): the message names the file and the record.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "instances.json"
        >>> _ = path.write_text(json.dumps({
        ...     "images": [{"id": 5, "file_name": "a.jpg", "width": 30, "height": 20}],
        ...     "annotations": [{"image_id": 5, "category_id": 90, "bbox": [2, 3, 10, 4]}],
        ...     "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}]}))
        >>> images, targets, category_ids, names = load_coco_annotations(path)
        >>> targets[5]["boxes"].tolist(), targets[5]["labels"].tolist(), names
        ([[2.0, 3.0, 12.0, 7.0]], [1], ['person', 'toothbrush'])
    """
    path = Path(path)
    data = read_json(path)
    top = _require(data, ("images", "annotations", "categories"), path, "top level")
    for key in ("images", "annotations", "categories"):
        if not isinstance(top[key], list):
            raise AnnotationError(
                f"{path}: '{key}': expected a list, got {type(top[key]).__name__}"
            )

    cat_ids: list[int] = []
    names: dict[int, str] = {}
    for k, cat in enumerate(top["categories"]):
        cat = _require(cat, ("id",), path, f"categories[{k}]")
        if not _is_int(cat["id"]) or cat["id"] in names:
            raise AnnotationError(
                f"{path}: categories[{k}]: expected a unique integer 'id', got {cat['id']!r}"
            )
        names[cat["id"]] = str(cat.get("name", cat["id"]))
        cat_ids.append(cat["id"])
    cat_ids.sort()
    label_of = {cid: i for i, cid in enumerate(cat_ids)}

    images: list[dict] = []
    by_id: dict[int, dict] = {}
    for k, img in enumerate(top["images"]):
        img = _require(img, ("id", "file_name", "width", "height"), path, f"images[{k}]")
        where = f"images[{k}] (id {img['id']!r})"
        if not _is_int(img["id"]) or img["id"] in by_id:
            raise AnnotationError(f"{path}: {where}: expected a unique integer 'id'")
        img["file_name"] = check_image_name(img["file_name"], f"{path}: {where}: 'file_name'")
        for key in ("width", "height"):
            if not _is_int(img[key]) or img[key] <= 0:
                raise AnnotationError(
                    f"{path}: {where}: expected a positive integer '{key}', got {img[key]!r}"
                )
        images.append(img)
        by_id[img["id"]] = img

    has_ignore = any(isinstance(a, dict) and "ignore" in a for a in top["annotations"])
    ignores: dict[int, list[bool]] = {i: [] for i in by_id}
    seen: dict[int, set[tuple]] = {i: set() for i in by_id}
    repeated = 0
    boxes: dict[int, list[list[float]]] = {i: [] for i in by_id}
    labels: dict[int, list[int]] = {i: [] for i in by_id}
    dropped = {"crowd regions (iscrowd=1)": 0, "boxes of zero width or height": 0}
    for k, ann in enumerate(top["annotations"]):
        ann = _require(ann, ("image_id", "category_id", "bbox"), path, f"annotations[{k}]")
        where = f"annotations[{k}] (id {ann.get('id', '?')!r})"
        if ann["image_id"] not in by_id:
            raise AnnotationError(
                f"{path}: {where}: 'image_id' {ann['image_id']!r} is not in 'images'"
            )
        if ann["category_id"] not in label_of:
            raise AnnotationError(
                f"{path}: {where}: 'category_id' {ann['category_id']!r} is not in 'categories'"
            )
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise AnnotationError(
                f"{path}: {where}: expected 'bbox' [x, y, width, height] of finite numbers, "
                f"got {bbox!r}"
            )
        x, y, w, h = (float(v) for v in bbox)
        if w < 0 or h < 0:
            raise AnnotationError(
                f"{path}: {where}: 'bbox' has a negative size, got {bbox!r} "
                "(expected [x, y, width, height] with width, height >= 0)"
            )
        img = by_id[ann["image_id"]]
        width, height = img["width"], img["height"]
        if (
            x < -tolerance
            or y < -tolerance
            or x + w > width + tolerance
            or (y + h > height + tolerance)
        ):
            raise AnnotationError(
                f"{path}: {where}: 'bbox' {bbox!r} lies outside image {img['id']} "
                f"({img['file_name']!r}, width {width}, height {height})"
            )
        for flag in ("iscrowd", "ignore"):
            if ann.get(flag, 0) not in (0, 1) or isinstance(ann.get(flag, 0), float):
                raise AnnotationError(
                    f"{path}: {where}: expected '{flag}' 0 or 1, got {ann[flag]!r}"
                )
        ignore = ann.get("ignore", 0)
        key = (ann["category_id"], x, y, w, h, bool(ann.get("iscrowd", 0)), bool(ignore))
        if key in seen[img["id"]]:
            repeated += 1
            if not keep_duplicates:
                continue
        seen[img["id"]].add(key)
        if ann.get("iscrowd", 0):
            dropped["crowd regions (iscrowd=1)"] += 1
            continue
        x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x1 <= x0 or y1 <= y0:
            dropped["boxes of zero width or height"] += 1
            continue
        boxes[img["id"]].append([x0, y0, x1, y1])
        labels[img["id"]].append(label_of[ann["category_id"]])
        ignores[img["id"]].append(bool(ignore))
    if keep_duplicates and repeated:
        warnings.warn(
            f"{path}: {repeated} repeated annotations (same image, category and bbox) kept",
            UserWarning,
            stacklevel=2,
        )
    else:
        dropped["repeated annotations (same image, category and bbox)"] = repeated
    warn_dropped(path, dropped)
    targets = {
        i: boxes_target(boxes[i], labels[i], ignores[i] if has_ignore else None) for i in by_id
    }
    return images, targets, cat_ids, [names[c] for c in cat_ids]


class CocoDetection(AnnotationFileDataset):
    """Images with COCO box annotations, as ``(image, target)`` pairs.

    Args:
        image_dir: directory the ``file_name`` entries are relative to; every image must
            lie inside it.
        annotation_file: a COCO instances JSON file.
        transform: optional ``(image, target) -> (image, target)`` applied after loading.
        tolerance: how far (pixels) a box may reach outside its image before it is an
            error; boxes within it are clipped.
        check_images: read every image header at construction, so a missing or
            unreadable image, or one whose size differs from its record, fails now.
        max_pixels: pixel budget of one image, checked from its header before decoding.
        exif: apply EXIF orientation tags (default ``False``: COCO's boxes, ``width`` and
            ``height`` are in the stored pixel frame, as pycocotools reads them).
        keep_duplicates: keep exactly repeated annotations (default: drop the repeats).

    Items: ``image`` is ``float32[3, H, W]`` in [0, 1] (RGB); ``target`` is
    ``{"boxes": float32[n, 4] (xyxy, pixels), "labels": int64[n]}``. ``image_ids[i]`` is
    the COCO id of item ``i``; ``categories`` the names in label order. Two image records
    naming the same file are an error.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from detloss.app.data import ShapeSpec, make_shapes
        >>> root = Path(tempfile.mkdtemp())
        >>> path = make_shapes(root, 2, ShapeSpec(image_size=32, count_range=(1, 1), size_range=(8, 12)))
        >>> ds = CocoDetection(root / "images", path)
        >>> image, target = ds[0]
        >>> image.shape, target["boxes"].shape, ds.image_ids, ds.categories[:2]
        (torch.Size([3, 32, 32]), torch.Size([1, 4]), [1, 2], ['circle', 'square'])
    """

    format_name = "coco"

    def parse(self, *, keep_duplicates: bool, tolerance: float = 1.0) -> dict:
        """Read the COCO file (see :func:`load_coco_annotations`)."""
        images, self.targets, self.category_ids, categories = load_coco_annotations(
            self.annotation_file, tolerance, keep_duplicates=keep_duplicates
        )
        self.images = images
        self.image_ids = [img["id"] for img in images]
        return {
            "names": [img["file_name"] for img in images],
            "targets": [self.targets[i] for i in self.image_ids],
            "kind": "boxes",
            "categories": categories,
            "wheres": [f"image id {img['id']} ({img['file_name']!r})" for img in images],
            "sizes": [(img["height"], img["width"]) for img in images],
        }
