"""Reader of point annotations (crowd counting) in a small, documented JSON format.

The file maps each image, by its path relative to the image directory, to the list of
its points ``[x, y]`` in pixels::

    {
      "img_0001.jpg": [[12.5, 40.0], [97.25, 13.0]],
      "img_0002.jpg": []
    }

Coordinates are continuous: the image spans ``[0, W] x [0, H]`` and the centre of the
top-left pixel is ``(0.5, 0.5)``, in the stored pixel frame (EXIF orientation tags are
not applied). A point must lie inside that closed rectangle. An image listed with ``[]``
has no objects (a normal training image). Images present in the directory but absent from
the file are ignored; images in the file but not on disk fail when read. Image names are
relative paths that stay inside the image directory; a key repeated in the file is an
error.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from ._common import AnnotationError, check_points, read_json, unique_rows
from .base import AnnotationFileDataset, points_target

__all__ = ["PointDataset", "load_point_annotations"]


def load_point_annotations(path: str | Path) -> dict[str, Tensor]:
    """Parse and check a point JSON file -> ``{image name: float32[n, 2]}`` in file order.

    Raises:
        FileNotFoundError: no such file.
        AnnotationError (a ``ValueError``): invalid JSON, a top level that is not an
            object, or a record that is not a list of ``[x, y]`` pairs of finite numbers
            with ``x, y >= 0``; the message names the file, the image and the point.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "points.json"
        >>> _ = path.write_text('{"a.jpg": [[12.5, 40], [97.25, 13]], "b.jpg": []}')
        >>> {name: pts.shape for name, pts in load_point_annotations(path).items()}
        {'a.jpg': torch.Size([2, 2]), 'b.jpg': torch.Size([0, 2])}
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(
            f"{path}: expected an object mapping image file -> [[x, y], ...], "
            f"got {type(data).__name__}"
        )
    out: dict[str, Tensor] = {}
    for name, pts in data.items():
        for k, p in enumerate(check_points(pts, f"{path}: image {name!r}")):
            if p[0] < 0 or p[1] < 0:
                raise AnnotationError(
                    f"{path}: image {name!r}, point {k}: outside the image, got {p!r} "
                    f"(coordinates must be >= 0)"
                )
        out[name] = torch.tensor(pts, dtype=torch.float32).reshape(-1, 2)
    return out


class PointDataset(AnnotationFileDataset):
    """Images with point annotations, as ``(image, target)`` pairs.

    Args:
        image_dir: directory the annotation's image names are relative to; every image
            must lie inside it.
        annotation_file: the JSON file described in this module.
        transform: optional ``(image, target) -> (image, target)`` applied after loading.
        check_images: read every image header at construction, so a missing or
            unreadable image or a point outside its image fails now rather than during
            training (one header read per image).
        max_pixels: pixel budget of one image, checked from its header before decoding.
        exif: apply EXIF orientation tags (default ``False``: points are in the stored
            pixel frame, see docs/data.md).
        keep_duplicates: keep a point repeated at the same coordinates of one image
            (default: drop the repeats); either way one warning counts them.

    Items: ``image`` is ``float32[3, H, W]`` in [0, 1] (RGB); ``target`` is
    ``{"points": float32[n, 2], "labels": int64[n] (zeros)}`` (every value has one row
    per object, as :func:`detloss.batching.pad_targets` requires; ``names[i]`` is the
    file of item ``i``).

    Raises ``AnnotationError`` (a ``ValueError``) naming the file and the record for a
    malformed file, an unreadable image, or a point outside its image (checked against the
    image size when the image is read, or at construction with ``check_images``).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from detloss.app.data import CrowdSpec, make_crowds
        >>> root = Path(tempfile.mkdtemp())
        >>> path = make_crowds(root, 2, CrowdSpec(image_size=32, count_range=(3, 3)))
        >>> ds = PointDataset(root / "images", path, check_images=True)
        >>> ds.counts().tolist(), ds[0][1]["points"].shape
        ([3, 3], torch.Size([3, 2]))
    """

    format_name = "points-json"

    def parse(self, *, keep_duplicates: bool) -> dict:
        """Read the points, dropping (or keeping) repeats with one counting warning."""
        raw = load_point_annotations(self.annotation_file)
        repeated = 0
        for name, pts in raw.items():
            keep = unique_rows([tuple(p) for p in pts.tolist()])
            if len(keep) < len(pts):
                repeated += len(pts) - len(keep)
                if not keep_duplicates:
                    raw[name] = pts[keep]
        if repeated:
            how = "kept" if keep_duplicates else "dropped"
            warnings.warn(
                f"{self.annotation_file}: {repeated} repeated points (same image, same "
                f"coordinates) {how}",
                UserWarning,
                stacklevel=3,
            )
        self.annotations = raw
        return {
            "names": list(raw),
            "targets": [points_target(p) for p in raw.values()],
            "kind": "points",
            "categories": ["point"],
        }

    def counts(self) -> Tensor:
        """``int64[len(self)]``: the number of points of every image."""
        return self.num_annotations()
