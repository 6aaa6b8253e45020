"""Readers of the published crowd-counting sets, as their authors distribute them.

* ShanghaiTech (parts A and B): ``train_data/`` and ``test_data/``, each with
  ``images/IMG_k.jpg`` and ``ground-truth/GT_IMG_k.mat``; the points are
  ``image_info[0, 0][0, 0][0]`` (``x, y``, MATLAB's 1-based pixel coordinates).
* UCF-QNRF: ``Train/`` and ``Test/``, each with ``img_k.jpg`` and ``img_k_ann.mat`` holding
  ``annPoints`` (``x, y``, MATLAB's 1-based pixel coordinates).
* JHU-Crowd++: ``train/``, ``val/``, ``test/``, each with ``images/k.jpg`` and ``gt/k.txt``,
  one head per line as ``x y w h o b`` (location, head box size, occlusion, blur).
* NWPU-Crowd: ``images/k.jpg``, ``jsons/k.json`` with ``points`` (``[[x, y], ...]``) and
  ``train.txt`` / ``val.txt`` / ``test.txt`` listing the ids of each split.

Coordinates. detloss uses the continuous convention (pixel ``(i, j)`` covers
``[j, j + 1] x [i, i + 1]``). MATLAB puts the centre of its pixel ``(1, 1)`` at ``(1, 1)``,
so the ``.mat`` points (ShanghaiTech, UCF-QNRF) are shifted by ``-0.5`` in ``x`` and ``y``
(``one_based=False`` reads them unshifted). JHU-Crowd++ and NWPU-Crowd points are read as
stored. The images are read in their stored pixel frame (no EXIF rotation), the frame the
annotation tools used.

A point up to ``tolerance`` pixels outside its image is clipped into it, one further out is
dropped; a point repeated at the same coordinates is dropped (``keep_duplicates`` keeps
it); one warning per split counts both. Image sizes are read from the headers when the
dataset is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from ._common import (
    DEFAULT_MAX_PIXELS,
    AnnotationError,
    image_size,
    open_regular_file,
    read_json,
    read_text,
    unique_rows,
    warn_dropped,
)
from .base import AnnotatedImages, Transform, fit_points, points_target

__all__ = [
    "IMAGE_SUFFIXES",
    "read_jhu_crowd",
    "read_nwpu_crowd",
    "read_shanghaitech",
    "read_ucf_qnrf",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: The shift from MATLAB's pixel centres (integers, 1-based) to detloss's (``k + 0.5``).
MATLAB_SHIFT = -0.5


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, in natural order (``IMG_2`` before ``IMG_10``)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder not found")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=natural_key)


def natural_key(path: Path) -> tuple:
    import re

    parts = re.split(r"(\d+)", path.name)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite_pairs(values: object, path: Path, what: str) -> list[list[float]]:
    """``values`` as a list of ``[x, y]`` finite floats, or an error naming the record."""
    import numpy as np

    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise AnnotationError(f"{path}: {what}: expected an N x 2 array of numbers") from None
    if arr.size == 0:
        return []
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise AnnotationError(
            f"{path}: {what}: expected an N x 2 array of (x, y), got shape {list(arr.shape)}"
        )
    if not np.isfinite(arr).all():
        k = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise AnnotationError(f"{path}: {what}, point {k}: not finite, got {arr[k].tolist()}")
    return arr.tolist()


def load_mat(path: Path) -> dict:
    """A MATLAB file as scipy reads it; every failure is an :class:`AnnotationError`."""
    from scipy.io import loadmat

    with open_regular_file(path, what="annotation file") as f:
        try:
            return loadmat(f)
        except Exception as err:  # scipy raises many types for malformed or v7.3 files
            raise AnnotationError(
                f"{path}: not a MATLAB file scipy reads ({type(err).__name__}: {err})"
            ) from None


def _build(
    image_dir: Path,
    images: Sequence[Path],
    points: Sequence[list[list[float]]],
    *,
    source: Path,
    format: str,
    tolerance: float,
    keep_duplicates: bool,
    transform: Transform | None,
    max_pixels: int | None,
    exif: bool = False,
) -> AnnotatedImages:
    counts = {"points outside their image": 0, "repeated points": 0}
    targets = []
    sizes = []
    for path, pts in zip(images, points):
        where = f"image {path.name!r} of {source}"
        h, w = image_size(path, where, root=image_dir, max_pixels=max_pixels, exif=exif)
        kept, outside = fit_points(pts, h, w, tolerance)
        counts["points outside their image"] += outside
        keep = unique_rows([tuple(p) for p in kept])
        counts["repeated points"] += len(kept) - len(keep)
        if not keep_duplicates:
            kept = [kept[k] for k in keep]
        targets.append(points_target(kept))
        sizes.append((h, w))
    if keep_duplicates:
        counts["repeated points (kept)"] = counts.pop("repeated points")
    warn_dropped(source, counts, stacklevel=4)
    return AnnotatedImages(
        image_dir,
        [p.relative_to(image_dir).as_posix() for p in images],
        targets,
        kind="points",
        categories=["person"],
        source=source,
        sizes=sizes,
        transform=transform,
        max_pixels=max_pixels,
        exif=exif,
        format=format,
    )


def _check_tolerance(tolerance: float) -> None:
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance: expected a finite number >= 0, got {tolerance!r}")


def _split_dir(root: Path, split: str, names: dict[str, str], format: str) -> Path:
    folder = names.get(split.lower(), split)
    path = root / folder
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: split {split!r} not found for {format} (expected one of "
            f"{sorted(set(names))}, folders {sorted(set(names.values()))})"
        )
    return path


def _mat_reader(
    format: str,
    split_names: dict[str, str],
    image_folder: Callable[[Path], Path],
    annotation_of: Callable[[Path, Path], Path],
    points_of: Callable[[dict, Path], object],
    record: str,
):
    def read(
        root: str | Path,
        split: str = "train",
        *,
        one_based: bool = True,
        tolerance: float = 1.0,
        keep_duplicates: bool = False,
        transform: Transform | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        exif: bool = False,
    ) -> AnnotatedImages:
        _check_tolerance(tolerance)
        split_dir = _split_dir(Path(root), split, split_names, format)
        image_dir = image_folder(split_dir)
        images = list_images(image_dir)
        shift = MATLAB_SHIFT if one_based else 0.0
        points = []
        for img in images:
            ann = annotation_of(split_dir, img)
            data = load_mat(ann)
            try:
                raw = points_of(data, ann)
            except (KeyError, IndexError, TypeError, ValueError):
                raise AnnotationError(
                    f"{ann}: expected {record} holding an N x 2 array of (x, y) points"
                ) from None
            pts = _finite_pairs(raw, ann, record)
            points.append([[x + shift, y + shift] for x, y in pts])
        return _build(
            image_dir,
            images,
            points,
            source=split_dir,
            format=format,
            tolerance=tolerance,
            keep_duplicates=keep_duplicates,
            transform=transform,
            max_pixels=max_pixels,
            exif=exif,
        )

    return read


read_shanghaitech = _mat_reader(
    "shanghaitech",
    {
        "train": "train_data",
        "test": "test_data",
        "train_data": "train_data",
        "test_data": "test_data",
    },
    lambda split_dir: split_dir / "images",
    lambda split_dir, img: split_dir / "ground-truth" / f"GT_{img.stem}.mat",
    lambda data, ann: data["image_info"][0, 0][0, 0][0],
    "image_info[0, 0][0, 0][0]",
)
read_shanghaitech.__name__ = "read_shanghaitech"
read_shanghaitech.__doc__ = """ShanghaiTech part A or B: ``root`` holds ``train_data/`` and
``test_data/``; ``split`` is ``"train"`` or ``"test"``. Points from
``ground-truth/GT_IMG_k.mat``'s ``image_info[0, 0][0, 0][0]``, shifted by -0.5 from
MATLAB's 1-based pixel centres unless ``one_based=False``. Returns
:class:`~detloss.app.data.base.AnnotatedImages` of points."""

read_ucf_qnrf = _mat_reader(
    "ucf-qnrf",
    {"train": "Train", "test": "Test"},
    lambda split_dir: split_dir,
    lambda split_dir, img: split_dir / f"{img.stem}_ann.mat",
    lambda data, ann: data["annPoints"],
    "'annPoints'",
)
read_ucf_qnrf.__name__ = "read_ucf_qnrf"
read_ucf_qnrf.__doc__ = """UCF-QNRF: ``root`` holds ``Train/`` and ``Test/``; ``split`` is
``"train"`` or ``"test"``. Points from ``img_k_ann.mat``'s ``annPoints``, shifted by -0.5
from MATLAB's 1-based pixel centres unless ``one_based=False``."""


def read_jhu_crowd(
    root: str | Path,
    split: str = "train",
    *,
    tolerance: float = 1.0,
    keep_duplicates: bool = False,
    transform: Transform | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    exif: bool = False,
) -> AnnotatedImages:
    """JHU-Crowd++: ``root/<split>/images/k.jpg`` with ``root/<split>/gt/k.txt``, one head
    per line as ``x y w h o b`` (only ``x y`` are used; the six values are checked). An
    empty ``gt`` file is an image without heads; a missing one is an error."""
    _check_tolerance(tolerance)
    split_dir = _split_dir(
        Path(root), split, {"train": "train", "val": "val", "test": "test"}, "jhu-crowd"
    )
    image_dir = split_dir / "images"
    images = list_images(image_dir)
    points = []
    for img in images:
        gt = split_dir / "gt" / f"{img.stem}.txt"
        pts = []
        for n, line in enumerate(read_text(gt).splitlines(), start=1):
            fields = line.replace(",", " ").split()
            if not fields:
                continue
            try:
                values = [float(v) for v in fields]
            except ValueError:
                values = []
            if len(values) != 6 or not all(math.isfinite(v) for v in values):
                raise AnnotationError(
                    f"{gt}: line {n}: expected 6 numbers 'x y w h o b', got {line.strip()!r}"
                )
            pts.append(values[:2])
        points.append(pts)
    return _build(
        image_dir,
        images,
        points,
        source=split_dir / "gt",
        format="jhu-crowd",
        tolerance=tolerance,
        keep_duplicates=keep_duplicates,
        transform=transform,
        max_pixels=max_pixels,
        exif=exif,
    )


def read_nwpu_crowd(
    root: str | Path,
    split: str = "train",
    *,
    tolerance: float = 1.0,
    keep_duplicates: bool = False,
    transform: Transform | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    exif: bool = False,
) -> AnnotatedImages:
    """NWPU-Crowd: the ids of ``root/<split>.txt`` (first field of each line), each with
    ``root/images/<id>.jpg`` and ``root/jsons/<id>.json`` holding ``"points": [[x, y], ...]``.
    The test split's annotations are not public: its missing JSON files are an error."""
    _check_tolerance(tolerance)
    root = Path(root)
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: split {split!r} not found for nwpu-crowd")
    image_dir = root / "images"
    images, points = [], []
    for n, line in enumerate(read_text(listing).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        ident = fields[0]
        if not ident.isalnum():
            raise AnnotationError(f"{listing}: line {n}: expected an image id, got {ident!r}")
        ann = root / "jsons" / f"{ident}.json"
        data = read_json(ann)
        if not isinstance(data, dict) or "points" not in data:
            raise AnnotationError(f"{ann}: expected an object with 'points': [[x, y], ...]")
        raw = data["points"]
        if not isinstance(raw, list):
            raise AnnotationError(
                f"{ann}: 'points': expected a list of [x, y], got {type(raw).__name__}"
            )
        for k, p in enumerate(raw):
            if not (isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p)):
                raise AnnotationError(
                    f"{ann}: 'points', point {k}: expected [x, y] numbers, got {p!r}"
                )
        pts = _finite_pairs(raw, ann, "'points'")
        images.append(image_dir / f"{ident}.jpg")
        points.append(pts)
    return _build(
        image_dir,
        images,
        points,
        source=listing,
        format="nwpu-crowd",
        tolerance=tolerance,
        keep_duplicates=keep_duplicates,
        transform=transform,
        max_pixels=max_pixels,
        exif=exif,
    )
