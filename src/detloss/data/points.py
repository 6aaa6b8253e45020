"""Reader of point annotations (crowd counting) in a small, documented JSON format.

The file maps each image, by its path relative to the image directory, to the list of
its points ``[x, y]`` in pixels::

    {
      "img_0001.jpg": [[12.5, 40.0], [97.25, 13.0]],
      "img_0002.jpg": []
    }

Coordinates are continuous: the image spans ``[0, W] x [0, H]`` and the centre of the
top-left pixel is ``(0.5, 0.5)``. A point must lie inside that closed rectangle. An image
listed with ``[]`` has no objects (a normal training image). Images present in the
directory but absent from the file are ignored; images in the file but not on disk fail
when read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._common import AnnotationError, image_size, load_image, read_json

__all__ = ["PointDataset", "load_point_annotations"]

Transform = Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_point_annotations(path: str | Path) -> dict[str, Tensor]:
    """Parse and check a point JSON file -> ``{image name: float32[n, 2]}`` in file order.

    Raises:
        FileNotFoundError: no such file.
        AnnotationError (a ``ValueError``): invalid JSON, a top level that is not an
            object, or a record that is not a list of ``[x, y]`` pairs of finite numbers
            with ``x, y >= 0``; the message names the file, the image and the point.
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
        if not isinstance(pts, list):
            raise AnnotationError(
                f"{path}: image {name!r}: expected a list of [x, y] points, got {type(pts).__name__}"
            )
        for k, p in enumerate(pts):
            if not (isinstance(p, list) and len(p) == 2 and all(_number(v) for v in p)):
                raise AnnotationError(
                    f"{path}: image {name!r}, point {k}: expected [x, y] with finite numbers, "
                    f"got {p!r}"
                )
            if p[0] < 0 or p[1] < 0:
                raise AnnotationError(
                    f"{path}: image {name!r}, point {k}: outside the image, got {p!r} "
                    f"(coordinates must be >= 0)"
                )
        out[name] = torch.tensor(pts, dtype=torch.float32).reshape(-1, 2)
    return out


class PointDataset(Dataset):
    """Images with point annotations, as ``(image, target)`` pairs.

    Args:
        image_dir: directory the annotation's image names are relative to.
        annotation_file: the JSON file described in this module.
        transform: optional ``(image, target) -> (image, target)`` applied after loading.
        check_images: read every image header at construction, so a missing or
            unreadable image or a point outside its image fails now rather than during
            training (one header read per image).

    Items: ``image`` is ``float32[3, H, W]`` in [0, 1] (RGB); ``target`` is
    ``{"points": float32[n, 2], "labels": int64[n] (zeros)}`` (every value has one row
    per object, as :func:`detloss.batching.pad_targets` requires; ``names[i]`` is the
    file of item ``i``).

    Raises ``AnnotationError`` (a ``ValueError``) naming the file and the record for a
    malformed file, an unreadable image, or a point outside its image (checked against the
    image size when the image is read, or at construction with ``check_images``).
    """

    def __init__(
        self,
        image_dir: str | Path,
        annotation_file: str | Path,
        transform: Transform | None = None,
        *,
        check_images: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.image_dir}: image directory not found")
        self.annotations = load_point_annotations(self.annotation_file)
        self.names = list(self.annotations)
        self.transform = transform
        if check_images:
            for name in self.names:
                self._check_inside(name, image_size(self.image_dir / name, self._where(name)))

    def _where(self, name: str) -> str:
        return f"image {name!r} of {self.annotation_file}"

    def _check_inside(self, name: str, hw: tuple[int, int]) -> None:
        h, w = hw
        pts = self.annotations[name]
        outside = (pts[:, 0] > w) | (pts[:, 1] > h)
        if bool(outside.any()):
            k = int(outside.nonzero()[0, 0])
            raise AnnotationError(
                f"{self.annotation_file}: image {name!r}, point {k}: outside the image, "
                f"got {pts[k].tolist()} for an image of width {w} and height {h}"
            )

    def __len__(self) -> int:
        return len(self.names)

    def counts(self) -> Tensor:
        """``int64[len(self)]``: the number of points of every image."""
        return torch.tensor([len(self.annotations[n]) for n in self.names], dtype=torch.int64)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        name = self.names[index]
        image = load_image(self.image_dir / name, self._where(name))
        self._check_inside(name, (image.shape[1], image.shape[2]))
        pts = self.annotations[name].clone()
        target = {"points": pts, "labels": torch.zeros(len(pts), dtype=torch.int64)}
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target
