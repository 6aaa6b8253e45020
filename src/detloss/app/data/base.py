"""The dataset type every reader returns: images named relative to one folder, with their
points or boxes, read through the hardened loading of :mod:`detloss.app.data._common`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._common import (
    DEFAULT_MAX_PIXELS,
    AnnotationError,
    ImageAccess,
    check_image_name,
)

__all__ = ["AnnotatedImages", "AnnotationFileDataset", "Transform"]

Transform = Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]

KINDS = ("points", "boxes")


class AnnotatedImages(Dataset):
    """Images with point or box annotations, as ``(image, target)`` pairs.

    Args:
        image_dir: the folder the image names are relative to; no image may lie outside
            it (``..``, absolute names and symlinks leading out are errors).
        names: image paths relative to ``image_dir``, one per item.
        targets: per item ``{"points": float32[n, 2]}`` or ``{"boxes": float32[n, 4]
            (xyxy, pixels)}``, with ``"labels": int64[n]`` and optional per-object keys
            (``"ignore": bool[n]`` for Pascal VOC's difficult objects).
        kind: ``"points"`` or ``"boxes"``.
        categories: class names in label order.
        source: the annotation file or folder, named in errors.
        wheres: per item, how errors name its record (default ``image 'name' of source``).
        sizes: per item ``(height, width)`` the annotation declares; a file of another
            size is an error when read. ``None``: not declared.
        transform: optional ``(image, target) -> (image, target)`` applied after loading.
        max_pixels: pixel budget of one image, checked from its header before decoding
            (default 64 megapixels); ``None``: Pillow's own limit only.
        exif: apply the EXIF orientation tag when reading (see docs/data.md for which
            formats do by default).
        format: the format's name (for messages and ``detloss data check``).

    Raises:
        AnnotationError: an image name that is not a relative path inside ``image_dir``,
            or one image file listed by two records.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import torch
        >>> from PIL import Image
        >>> folder = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (30, 20)).save(folder / "a.png")
        >>> target = {"points": torch.tensor([[3.0, 4.0]]), "labels": torch.tensor([0])}
        >>> ds = AnnotatedImages(folder, ["a.png"], [target], kind="points", categories=["person"],
        ...                      source=folder / "points.json")
        >>> image, item = ds[0]
        >>> image.shape, item["points"].tolist(), ds.num_annotations().tolist()
        (torch.Size([3, 20, 30]), [[3.0, 4.0]], [1])
        >>> AnnotatedImages(folder, ["../a.png"], [target], kind="points", categories=["person"],
        ...                 source="points.json")
        Traceback (most recent call last):
        ...
        detloss.app.data._common.AnnotationError: points.json: image '../a.png': image path '../a.png' leaves the image folder; expected a path inside it
    """

    def __init__(
        self,
        image_dir: str | Path,
        names: Sequence[str],
        targets: Sequence[dict[str, Tensor]],
        *,
        kind: str,
        categories: Sequence[str],
        source: str | Path,
        wheres: Sequence[str] | None = None,
        sizes: Sequence[tuple[int, int] | None] | None = None,
        transform: Transform | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        exif: bool = False,
        format: str = "",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if len(targets) != len(names):
            raise ValueError(
                f"targets: expected {len(names)} entries (one per name), got {len(targets)}"
            )
        if max_pixels is not None and (
            isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1
        ):
            raise ValueError(f"max_pixels: expected a positive int or None, got {max_pixels!r}")
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.image_dir}: image directory not found")
        self.source = Path(source)
        self.kind = kind
        self.format = format
        self.categories = list(categories)
        self.transform = transform
        self.max_pixels = max_pixels
        self.exif = exif
        self.access = ImageAccess(self.image_dir, max_pixels, exif)
        self._wheres = list(wheres) if wheres is not None else None
        self.sizes: list[tuple[int, int] | None] = (
            list(sizes) if sizes is not None else [None] * len(names)
        )
        clean: list[str] = []
        first: dict[str, int] = {}
        for i, name in enumerate(names):
            norm = check_image_name(name, f"{self.source}: {self.where(i, name)}")
            if norm in first:
                j = first[norm]
                raise AnnotationError(
                    f"{self.source}: {self.where(i, name)} names the same image file as "
                    f"{self.where(j, names[j])} ({norm!r}); expected each image once"
                )
            first[norm] = i
            clean.append(norm)
        self.names = clean
        self.target_list = list(targets)

    # ------------------------------------------------------------------ naming

    def where(self, index: int, name: str | None = None) -> str:
        """How messages name the record of item ``index``."""
        if self._wheres is not None:
            return self._wheres[index]
        return f"image {name if name is not None else self.names[index]!r}"

    def _context(self, index: int) -> str:
        return f"{self.where(index)} of {self.source}"

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.names[index]

    def num_annotations(self) -> Tensor:
        """``int64[len(self)]``: the number of annotated objects of every image."""
        key = self.kind
        return torch.tensor([len(t[key]) for t in self.target_list], dtype=torch.int64)

    # ------------------------------------------------------------------ checks

    def read_size(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of image ``index`` from its header (path, type and pixel
        budget checked as when it is read)."""
        return self.access.size(self.image_path(index), self._context(index))

    def _check_frame(self, index: int, hw: tuple[int, int]) -> None:
        declared = self.sizes[index]
        name = self.names[index]
        if declared is not None and tuple(hw) != tuple(declared):
            raise AnnotationError(
                f"{self.source}: {self.where(index)}: record says width {declared[1]} and "
                f"height {declared[0]}, the file has width {hw[1]} and height {hw[0]}"
                + (" after its EXIF rotation" if self.exif else "")
            )
        if self.kind == "points":
            h, w = hw
            pts = self.target_list[index]["points"]
            outside = (pts[:, 0] > w) | (pts[:, 1] > h)
            if bool(outside.any()):
                k = int(outside.nonzero()[0, 0])
                raise AnnotationError(
                    f"{self.source}: image {name!r}, point {k}: outside the image, "
                    f"got {pts[k].tolist()} for an image of width {w} and height {h}"
                )

    def check_images(self) -> None:
        """Read every image header now; the first problem raises."""
        for i in range(len(self)):
            self._check_frame(i, self.read_size(i))

    def problems(self) -> list[str]:
        """Every image problem (missing, unreadable, escaping, too large, wrong size),
        one line each, reading headers only."""
        found: list[str] = []
        for i in range(len(self)):
            try:
                self._check_frame(i, self.read_size(i))
            except (AnnotationError, FileNotFoundError) as err:
                found.append(str(err))
        return found

    # ------------------------------------------------------------------ items

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = self.access.load(self.image_path(index), self._context(index))
        self._check_frame(index, (image.shape[1], image.shape[2]))
        target = {k: v.clone() for k, v in self.target_list[index].items()}
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(format={self.format!r}, kind={self.kind!r}, "
            f"images={len(self)}, classes={self.num_classes}, source='{self.source}')"
        )


class AnnotationFileDataset(AnnotatedImages):
    """Images in one folder described by one annotation file (our points JSON, COCO JSON).

    A subclass sets :attr:`format` and implements :meth:`parse`, which reads
    :attr:`annotation_file` and returns the remaining arguments of
    :class:`AnnotatedImages` (``names``, ``targets``, ``kind``, ``categories`` and, where
    the file has them, ``wheres`` and ``sizes``). ``parse_options`` (e.g. COCO's
    ``tolerance``) go to :meth:`parse`; ``check_images`` reads every image header now.
    The image folder is checked before the annotation file is parsed.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> class Listed(AnnotationFileDataset):  # a file naming one image per line, no objects
        ...     format_name = "listed"
        ...     def parse(self, *, keep_duplicates):
        ...         names = self.annotation_file.read_text().split()
        ...         return {"names": names, "targets": [points_target([]) for _ in names],
        ...                 "kind": "points", "categories": ["person"]}
        >>> folder = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (8, 6)).save(folder / "a.png")
        >>> _ = (folder / "list.txt").write_text("a.png\\n")
        >>> ds = Listed(folder, folder / "list.txt", check_images=True)
        >>> ds.format, ds.names, ds[0][1]["points"].shape
        ('listed', ['a.png'], torch.Size([0, 2]))
    """

    format_name = ""

    def __init__(
        self,
        image_dir: str | Path,
        annotation_file: str | Path,
        transform: Transform | None = None,
        *,
        check_images: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        exif: bool = False,
        keep_duplicates: bool = False,
        **parse_options: object,
    ) -> None:
        self.annotation_file = Path(annotation_file)
        if not Path(image_dir).is_dir():
            raise FileNotFoundError(f"{image_dir}: image directory not found")
        fields = self.parse(keep_duplicates=keep_duplicates, **parse_options)
        super().__init__(
            image_dir,
            **fields,
            source=self.annotation_file,
            transform=transform,
            max_pixels=max_pixels,
            exif=exif,
            format=self.format_name,
        )
        if check_images:
            self.check_images()

    def parse(self, *, keep_duplicates: bool) -> dict:
        """The arguments of :class:`AnnotatedImages` read from :attr:`annotation_file`."""
        raise NotImplementedError


def points_target(
    points: Sequence[Sequence[float]] | Tensor, **per_point: Tensor
) -> dict[str, Tensor]:
    """``{"points": float32[n, 2], "labels": int64[n] (zeros), **per_point}``; every
    ``per_point`` value has one row per point (e.g. JHU-Crowd++'s ``sizes``).

    Example:
        >>> points_target([[1.0, 2.0]])
        {'points': tensor([[1., 2.]]), 'labels': tensor([0])}
    """
    pts = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
    return {"points": pts, "labels": torch.zeros(len(pts), dtype=torch.int64), **per_point}


def boxes_target(
    boxes: Sequence[Sequence[float]], labels: Sequence[int], ignore: Sequence[bool] | None = None
) -> dict[str, Tensor]:
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(list(labels), dtype=torch.int64),
    }
    if ignore is not None:
        target["ignore"] = torch.tensor(list(ignore), dtype=torch.bool)
    return target
