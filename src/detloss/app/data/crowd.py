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

import torch
from torch import Tensor

from ._common import (
    AnnotationError,
    ImageAccess,
    check_points,
    open_regular_file,
    read_json,
    read_text,
)
from ._reader import ParsedSplit, ReadOptions, Repeats, split_reader
from .base import points_target

__all__ = [
    "IMAGE_SUFFIXES",
    "JHU_KEYS",
    "read_jhu_crowd",
    "read_jhu_gt",
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


def _fit_points(
    rows: dict[str, Tensor], height: int, width: int, tolerance: float
) -> tuple[dict[str, Tensor], int]:
    """Clip the points within ``tolerance`` pixels of the image into it and drop the others,
    with their per-point values; returns ``(kept rows, number dropped)``."""
    x, y = rows["points"].unbind(1)
    inside = (x >= -tolerance) & (x <= width + tolerance)
    inside &= (y >= -tolerance) & (y <= height + tolerance)
    kept = {key: value[inside] for key, value in rows.items()}
    x, y = kept["points"].unbind(1)
    kept["points"] = torch.stack([x.clamp(0.0, width), y.clamp(0.0, height)], 1)
    return kept, int((~inside).sum())


def _points_split(
    image_dir: Path,
    images: Sequence[Path],
    rows: Sequence[dict[str, Tensor]],
    source: Path,
    options: ReadOptions,
) -> ParsedSplit:
    """The parsed split of a crowd set: per image ``rows`` holds ``"points"``
    (``float64[n, 2]``) and any per-point values (``[n, ...]``), fitted into the image
    whose size is read from its header; repeated points counted (and dropped)."""
    outside = 0
    repeats = Repeats(options.keep_duplicates)
    targets, sizes = [], []
    access = ImageAccess(image_dir, options.max_pixels, options.exif)
    for i, (path, found) in enumerate(zip(images, rows, strict=True)):
        h, w = access.size(path, f"image {path.name!r} of {source}")
        kept, dropped = _fit_points(found, h, w, options.tolerance)
        outside += dropped
        keep = [k for k, p in enumerate(kept["points"].tolist()) if not repeats.skip((i, *p))]
        targets.append(points_target(**{key: value[keep] for key, value in kept.items()}))
        sizes.append((h, w))
    return ParsedSplit(
        image_dir,
        [p.relative_to(image_dir).as_posix() for p in images],
        targets,
        kind="points",
        categories=["person"],
        source=source,
        dropped={"points outside their image": outside},
        repeats=repeats,
        repeated="repeated points",
        sizes=sizes,
    )


def _points_rows(points: list[list[float]], shift: float = 0.0) -> dict[str, Tensor]:
    return {"points": torch.tensor(points, dtype=torch.float64).reshape(-1, 2) + shift}


def _split_dir(root: Path, split: str, names: dict[str, str], format: str) -> Path:
    folder = names.get(split.lower(), split)
    path = root / folder
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: split {split!r} not found for {format} (expected one of "
            f"{sorted(set(names))}, folders {sorted(set(names.values()))})"
        )
    return path


def _mat_parser(
    format: str,
    split_names: dict[str, str],
    image_folder: Callable[[Path], Path],
    annotation_of: Callable[[Path, Path], Path],
    points_of: Callable[[dict], object],
    record: str,
) -> Callable[..., ParsedSplit]:
    """The parser of a set with one MATLAB file of points per image."""

    def parse(root: Path, split: str, options: ReadOptions, *, one_based: bool = True):
        split_dir = _split_dir(root, split, split_names, format)
        image_dir = image_folder(split_dir)
        images = list_images(image_dir)
        rows = []
        for img in images:
            ann = annotation_of(split_dir, img)
            data = load_mat(ann)
            try:
                raw = points_of(data)
            except (KeyError, IndexError, TypeError, ValueError):
                raise AnnotationError(
                    f"{ann}: expected {record} holding an N x 2 array of (x, y) points"
                ) from None
            rows.append(
                _points_rows(_finite_pairs(raw, ann, record), MATLAB_SHIFT if one_based else 0.0)
            )
        return _points_split(image_dir, images, rows, split_dir, options)

    return parse


_READER_OPTIONS_DOC = """
    Args:
        root: the data folder, as its authors distribute it.
        split: the split's name.
        tolerance: how far (pixels) a point may lie outside its image and be clipped into
            it; points further out are dropped (default 1).
        keep_duplicates: keep points repeated at the same coordinates of one image
            (default: drop them); one warning per split counts both kinds.
        transform: optional ``(image, target) -> (image, target)`` applied to every item.
        max_pixels: pixel budget of one image, checked from its header before decoding.
        exif: apply EXIF orientation tags (default ``False``: the stored pixels, the frame
            the annotation tools used)."""

_POINTS_RETURNS = """
    Returns:
        :class:`~detloss.app.data.base.AnnotatedImages` of points: items ``(image
        float32[3, H, W], {"points": float32[n, 2], "labels": int64[n]})``.
"""

read_shanghaitech = split_reader(
    "shanghaitech",
    _mat_parser(
        "shanghaitech",
        {
            "train": "train_data",
            "test": "test_data",
            "train_data": "train_data",
            "test_data": "test_data",
        },
        lambda split_dir: split_dir / "images",
        lambda split_dir, img: split_dir / "ground-truth" / f"GT_{img.stem}.mat",
        lambda data: data["image_info"][0, 0][0, 0][0],
        "image_info[0, 0][0, 0][0]",
    ),
    doc="""ShanghaiTech part A or B: ``root`` holds ``train_data/`` and ``test_data/``;
    ``split`` is ``"train"`` or ``"test"``.

    Points come from ``ground-truth/GT_IMG_k.mat``'s ``image_info[0, 0][0, 0][0]``, shifted
    by -0.5 from MATLAB's 1-based pixel centres unless ``one_based=False``.
"""
    + _READER_OPTIONS_DOC
    + """
        one_based: the ``.mat`` points are MATLAB's 1-based pixel centres (default); shift
            them by -0.5 into detloss's frame.
"""
    + _POINTS_RETURNS
    + """
    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from PIL import Image
        >>> from scipy.io import savemat
        >>> root = Path(tempfile.mkdtemp())
        >>> for sub in ("images", "ground-truth"):
        ...     (root / "train_data" / sub).mkdir(parents=True)
        >>> Image.new("RGB", (30, 20)).save(root / "train_data/images/IMG_1.jpg")
        >>> info = np.zeros((1, 1), dtype=[("location", object), ("number", object)])
        >>> info[0, 0]["location"] = np.array([[1.0, 1.0], [12.5, 7.5]])
        >>> cell = np.empty((1, 1), dtype=object)
        >>> cell[0, 0] = info
        >>> savemat(root / "train_data/ground-truth/GT_IMG_1.mat", {"image_info": cell})
        >>> ds = read_shanghaitech(root, "train")
        >>> ds[0][1]["points"].tolist()
        [[0.5, 0.5], [12.0, 7.0]]
""",
)

read_ucf_qnrf = split_reader(
    "ucf-qnrf",
    _mat_parser(
        "ucf-qnrf",
        {"train": "Train", "test": "Test"},
        lambda split_dir: split_dir,
        lambda split_dir, img: split_dir / f"{img.stem}_ann.mat",
        lambda data: data["annPoints"],
        "'annPoints'",
    ),
    doc="""UCF-QNRF: ``root`` holds ``Train/`` and ``Test/``; ``split`` is ``"train"`` or
    ``"test"``.

    Points come from ``img_k_ann.mat``'s ``annPoints``, shifted by -0.5 from MATLAB's
    1-based pixel centres unless ``one_based=False``.
"""
    + _READER_OPTIONS_DOC
    + """
        one_based: see :func:`read_shanghaitech`.
"""
    + _POINTS_RETURNS
    + """
    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from scipy.io import savemat
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "Train").mkdir()
        >>> Image.new("RGB", (30, 20)).save(root / "Train/img_0001.jpg")
        >>> savemat(root / "Train/img_0001_ann.mat", {"annPoints": [[3.0, 4.0]]})
        >>> read_ucf_qnrf(root, "train", one_based=False)[0][1]["points"].tolist()
        [[3.0, 4.0]]
""",
)


#: The per-head values of JHU-Crowd++ kept next to ``points`` in its targets.
JHU_KEYS = ("sizes", "occlusion", "blur")


def read_jhu_gt(path: str | Path) -> dict[str, Tensor]:
    """One JHU-Crowd++ ``gt`` file, one head per line as ``x y w h o b``.

    Returns:
        ``{"points": float64[n, 2] (x, y), "sizes": float32[n, 2] (w, h of the head box,
        pixels), "occlusion": int64[n] (o), "blur": bool[n] (b)}`` in file order. Heads
        annotated with ``w = h = 0`` (no box drawn) keep their point, with size 0.

    Raises:
        AnnotationError: a line that is not six finite numbers, a negative ``w`` or
            ``h``, an occlusion level that is not a whole number >= 0 or a blur flag that
            is not 0 or 1; the one-line message names the file and the line.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> gt = Path(tempfile.mkdtemp()) / "0001.txt"
        >>> _ = gt.write_text("10 5 4 6 1 0\\n12.5 7 0 0 3 1\\n")
        >>> heads = read_jhu_gt(gt)
        >>> heads["points"].tolist(), heads["sizes"].tolist()
        ([[10.0, 5.0], [12.5, 7.0]], [[4.0, 6.0], [0.0, 0.0]])
        >>> heads["occlusion"].tolist(), heads["blur"].tolist()
        ([1, 3], [False, True])
    """
    path = Path(path)
    heads = []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if len(values) != 6 or not all(math.isfinite(v) for v in values):
            raise AnnotationError(
                f"{path}: line {n}: expected 6 numbers 'x y w h o b', got {line.strip()!r}"
            )
        _, _, w, h, occlusion, blur = values
        if w < 0 or h < 0:
            raise AnnotationError(
                f"{path}: line {n}: negative head box width or height, got {line.strip()!r}"
            )
        if occlusion != int(occlusion) or occlusion < 0 or blur not in (0, 1):
            raise AnnotationError(
                f"{path}: line {n}: expected a whole occlusion level o >= 0 and a blur flag b "
                f"of 0 or 1, got {line.strip()!r}"
            )
        heads.append(values)
    table = torch.tensor(heads, dtype=torch.float64).reshape(-1, 6)
    return {
        "points": table[:, :2],
        "sizes": table[:, 2:4].float(),
        "occlusion": table[:, 4].long(),
        "blur": table[:, 5].bool(),
    }


def _parse_jhu(root: Path, split: str, options: ReadOptions) -> ParsedSplit:
    split_dir = _split_dir(
        root, split, {"train": "train", "val": "val", "test": "test"}, "jhu-crowd"
    )
    image_dir = split_dir / "images"
    images = list_images(image_dir)
    rows = [read_jhu_gt(split_dir / "gt" / f"{img.stem}.txt") for img in images]
    return _points_split(image_dir, images, rows, split_dir / "gt", options)


read_jhu_crowd = split_reader(
    "jhu-crowd",
    _parse_jhu,
    doc="""JHU-Crowd++: ``root/<split>/images/k.jpg`` with ``root/<split>/gt/k.txt``, one
    head per line as ``x y w h o b`` (head centre, head box width and height, occlusion
    level, blur flag; read by :func:`read_jhu_gt`). An empty ``gt`` file is an image
    without heads; a missing one is an error.
"""
    + _READER_OPTIONS_DOC
    + """

    Returns:
        :class:`~detloss.app.data.base.AnnotatedImages` of points: items ``(image
        float32[3, H, W], target)`` with ``target`` ``{"points": float32[n, 2], "labels":
        int64[n], "sizes": float32[n, 2], "occlusion": int64[n], "blur": bool[n]}``
        (``sizes`` is each head box's ``(w, h)`` in pixels; a point dropped or clipped
        takes its values along). Consumers of points alone read ``points`` and
        ``labels`` as for every other crowd set.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for sub in ("images", "gt"):
        ...     (root / "train" / sub).mkdir(parents=True)
        >>> Image.new("RGB", (30, 20)).save(root / "train/images/0001.jpg")
        >>> _ = (root / "train/gt/0001.txt").write_text("10 5 4 6 1 0\\n")
        >>> _, target = read_jhu_crowd(root, "train")[0]
        >>> target["points"].tolist(), target["sizes"].tolist(), target["occlusion"].tolist()
        ([[10.0, 5.0]], [[4.0, 6.0]], [1])
""",
)


def _parse_nwpu(root: Path, split: str, options: ReadOptions) -> ParsedSplit:
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: split {split!r} not found for nwpu-crowd")
    image_dir = root / "images"
    images, rows = [], []
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
        images.append(image_dir / f"{ident}.jpg")
        rows.append(_points_rows(check_points(data["points"], f"{ann}: 'points'")))
    return _points_split(image_dir, images, rows, listing, options)


read_nwpu_crowd = split_reader(
    "nwpu-crowd",
    _parse_nwpu,
    doc="""NWPU-Crowd: the ids of ``root/<split>.txt`` (first field of each line), each with
    ``root/images/<id>.jpg`` and ``root/jsons/<id>.json`` holding ``"points": [[x, y],
    ...]``. The test split's annotations are not public: its missing JSON files are an
    error.
"""
    + _READER_OPTIONS_DOC
    + """
"""
    + _POINTS_RETURNS
    + """
    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for sub in ("images", "jsons"):
        ...     (root / sub).mkdir()
        >>> Image.new("RGB", (30, 20)).save(root / "images/0001.jpg")
        >>> _ = (root / "jsons/0001.json").write_text(json.dumps({"points": [[3.5, 4.5]]}))
        >>> _ = (root / "train.txt").write_text("0001 1 1\\n")
        >>> read_nwpu_crowd(root, "train")[0][1]["points"].tolist()
        [[3.5, 4.5]]
""",
)
