"""One entry to every reader: detect a folder's format, open one of its splits, carve a
validation split.

Formats (names accepted by ``format=`` and ``--format``):

================  ======  =========================================================
name              kind    layout of ``root``
================  ======  =========================================================
``points-json``   points  ``<split>/images/`` + ``<split>/points.json``
``coco``          boxes   ``<split>/images/`` + ``<split>/instances.json``
``shanghaitech``  points  ``train_data/``, ``test_data/`` (``images/``, ``ground-truth/``)
``ucf-qnrf``      points  ``Train/``, ``Test/`` (``img_k.jpg`` + ``img_k_ann.mat``)
``jhu-crowd``     points  ``train/``, ``val/``, ``test/`` (``images/``, ``gt/``)
``nwpu-crowd``    points  ``images/``, ``jsons/``, ``train.txt``, ``val.txt``
``yolo``          boxes   ``images/<split>/`` + ``labels/<split>/`` (or ``data.yaml``)
``voc``           boxes   ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``
================  ======  =========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from ._common import DEFAULT_MAX_PIXELS
from .base import AnnotatedImages, Transform
from .coco import CocoDetection
from .crowd import read_jhu_crowd, read_nwpu_crowd, read_shanghaitech, read_ucf_qnrf
from .points import PointDataset
from .voc import read_voc
from .yolo import find_yolo_config, read_yolo, yolo_split

__all__ = [
    "FORMATS",
    "available_splits",
    "detect_format",
    "format_kind",
    "open_split",
    "open_train_val",
    "split_dataset",
]


def _points_json(root: Path, split: str, **kw) -> AnnotatedImages:
    return PointDataset(root / split / "images", root / split / "points.json", **kw)


def _coco(root: Path, split: str, **kw) -> AnnotatedImages:
    return CocoDetection(root / split / "images", root / split / "instances.json", **kw)


#: name -> (reader(root, split, **options), kind)
FORMATS: dict[str, tuple[Callable[..., AnnotatedImages], str]] = {
    "points-json": (_points_json, "points"),
    "coco": (_coco, "boxes"),
    "shanghaitech": (read_shanghaitech, "points"),
    "ucf-qnrf": (read_ucf_qnrf, "points"),
    "jhu-crowd": (read_jhu_crowd, "points"),
    "nwpu-crowd": (read_nwpu_crowd, "points"),
    "yolo": (read_yolo, "boxes"),
    "voc": (read_voc, "boxes"),
}

_SPLITS = ("train", "val", "valid", "test", "trainval")


def _check_format(format: str) -> str:
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {sorted(FORMATS)}, got {format!r}")
    return format


def format_kind(format: str) -> str:
    """``"points"`` or ``"boxes"``: what the items of ``format`` carry.

    Example:
        >>> format_kind("jhu-crowd"), format_kind("voc")
        ('points', 'boxes')
    """
    return FORMATS[_check_format(format)][1]


def _subdirs(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []


def detect_format(root: str | Path) -> str:
    """The format of a data folder, from its layout (see the module's table).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no known layout; the message lists what was looked for.

    Returns:
        The name of one of :data:`FORMATS`.

    Example:
        >>> import tempfile
        >>> from detloss.app.data import make_crowds
        >>> points_json = make_crowds(f"{tempfile.mkdtemp()}/train", 1)
        >>> detect_format(points_json.parents[1])
        'points-json'
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    if any((root / d / "ground-truth").is_dir() for d in ("train_data", "test_data")):
        return "shanghaitech"
    if any(
        next((root / d).glob("*_ann.mat"), None) for d in ("Train", "Test") if (root / d).is_dir()
    ):
        return "ucf-qnrf"
    if (root / "jsons").is_dir() and (root / "images").is_dir():
        return "nwpu-crowd"
    if (root / "Annotations").is_dir() and (root / "ImageSets" / "Main").is_dir():
        return "voc"
    if any((d / "gt").is_dir() and (d / "images").is_dir() for d in _subdirs(root)):
        return "jhu-crowd"
    if (
        find_yolo_config(root) is not None
        or (root / "labels").is_dir()
        or any((d / "labels").is_dir() and (d / "images").is_dir() for d in _subdirs(root))
    ):
        return "yolo"
    for d in _subdirs(root):
        if (d / "points.json").is_file():
            return "points-json"
        if (d / "instances.json").is_file():
            return "coco"
    raise ValueError(
        f"{root}: no known data layout (looked for: <split>/points.json, "
        "<split>/instances.json, train_data/ground-truth (ShanghaiTech), Train/*_ann.mat "
        "(UCF-QNRF), <split>/gt + <split>/images (JHU-Crowd++), jsons/ + images/ "
        "(NWPU-Crowd), data.yaml or labels/ (YOLO), Annotations/ + ImageSets/Main (VOC)); "
        "pass the format by name"
    )


def available_splits(root: str | Path, format: str | None = None) -> list[str]:
    """The split names of ``root`` that :func:`open_split` can open.

    Returns:
        ``list[str]``, the usual names (``train``, ``val``, ``test``) first.

    Example:
        >>> from tempfile import mkdtemp
        >>> from detloss.app.data import ShapeSpec, make_shapes
        >>> root = mkdtemp()
        >>> for split in ("val", "train"):
        ...     _ = make_shapes(f"{root}/{split}", 1, ShapeSpec(image_size=32, size_range=(8, 12)))
        >>> available_splits(root)
        ['train', 'val']
    """
    root = Path(root)
    format = _check_format(format) if format is not None else detect_format(root)
    if format in ("points-json", "coco"):
        ann = "points.json" if format == "points-json" else "instances.json"
        found = sorted(d.name for d in _subdirs(root) if (d / ann).is_file())
        return sorted(found, key=lambda s: (_SPLITS.index(s) if s in _SPLITS else 9, s))
    if format == "shanghaitech":
        return [s for s in ("train", "test") if (root / f"{s}_data").is_dir()]
    if format == "ucf-qnrf":
        return [s for s, d in (("train", "Train"), ("test", "Test")) if (root / d).is_dir()]
    if format == "jhu-crowd":
        return [s for s in ("train", "val", "test") if (root / s / "gt").is_dir()]
    if format == "nwpu-crowd":
        return [s for s in ("train", "val", "test") if (root / f"{s}.txt").is_file()]
    if format == "voc":
        main = root / "ImageSets" / "Main"
        return [s for s in ("train", "val", "trainval", "test") if (main / f"{s}.txt").is_file()]
    splits = []
    for s in ("train", "val", "test"):
        try:
            yolo_split(root, s)
        except FileNotFoundError:
            continue
        splits.append(s)
    return splits


def open_split(
    root: str | Path,
    split: str,
    format: str | None = None,
    *,
    transform: Transform | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    **options: object,
) -> AnnotatedImages:
    """The ``split`` of the data folder ``root`` as a dataset of ``(image, target)`` pairs.

    Args:
        root: the data folder, as its authors publish it (see the module's table).
        split: ``"train"``, ``"val"``, ``"test"`` (or the format's own names, e.g.
            ``"trainval"`` for VOC).
        format: a name of :data:`FORMATS`; ``None`` detects it (:func:`detect_format`).
        transform: ``(image, target) -> (image, target)`` applied to every item.
        max_pixels: pixel budget of one image, checked before decoding.
        **options: passed to the format's reader (``tolerance``, ``keep_duplicates``,
            ``one_based`` for the MATLAB formats, ``exif``, ``classes`` for VOC, ...).

    Returns:
        An :class:`~detloss.app.data.base.AnnotatedImages`: items ``image float32[3, H, W]``
        in [0, 1] and ``target`` ``{"points": [n, 2], "labels": [n]}`` or ``{"boxes":
        [n, 4] xyxy, "labels": [n]}`` (VOC adds ``"ignore": bool[n]``); ``.format``,
        ``.kind``, ``.categories``, ``.num_classes``.

    Example:
        >>> import tempfile
        >>> from detloss.app.data import CrowdSpec, make_crowds
        >>> spec = CrowdSpec(image_size=32, count_range=(2, 2))
        >>> root = make_crowds(f"{tempfile.mkdtemp()}/train", 3, spec).parents[1]
        >>> ds = open_split(root, "train")
        >>> ds.format, ds.kind, len(ds)
        ('points-json', 'points', 3)
        >>> image, target = ds[0]
        >>> image.shape, target["points"].shape, target["labels"].tolist()
        (torch.Size([3, 32, 32]), torch.Size([2, 2]), [0, 0])
    """
    root = Path(root)
    format = _check_format(format) if format is not None else detect_format(root)
    reader = FORMATS[format][0]
    return reader(root, split, transform=transform, max_pixels=max_pixels, **options)


def split_dataset(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Subset, Subset]:
    """Carve ``(train, val)`` subsets from ``dataset``: ``round(fraction * n)`` items (at
    least one of each when ``n >= 2``) drawn by a seeded permutation, each part in the
    dataset's order. The same ``(n, fraction, seed)`` gives the same parts on any machine.

    Returns:
        ``(train, val)``: two :class:`torch.utils.data.Subset` of ``dataset``.

    Example:
        >>> train, val = split_dataset(list(range(10)), 0.2, seed=0)
        >>> len(train), len(val), sorted(train.indices + val.indices) == list(range(10))
        (8, 2, True)
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a number in (0, 1), got {fraction!r}")
    n = len(dataset)  # type: ignore[arg-type]
    if n < 2:
        raise ValueError(f"dataset: expected at least 2 items to carve a split, got {n}")
    n_val = min(max(round(fraction * n), 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return Subset(dataset, train), Subset(dataset, val)


def open_train_val(
    root: str | Path,
    format: str | None = None,
    *,
    train_split: str = "train",
    val_split: str = "val",
    val_fraction: float | None = None,
    seed: int = 0,
    train_transform: Transform | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    **options: object,
) -> tuple[Dataset, Dataset, AnnotatedImages]:
    """The training and validation sets of a folder -> ``(train, val, base)``.

    With ``val_fraction``, the validation set is carved from ``train_split`` by
    :func:`split_dataset` (the split is opened twice, so ``train_transform`` -- random
    flips -- reaches the training part only); otherwise it is ``val_split``. ``base`` is
    the opened training split: its ``format``, ``kind``, ``categories`` and
    ``num_classes`` describe both parts.

    Raises:
        FileNotFoundError: ``val_split`` does not exist and no ``val_fraction`` was given
            (the message suggests one).

    Example:
        >>> from tempfile import mkdtemp
        >>> from detloss.app.data import make_crowds
        >>> root = make_crowds(mkdtemp() + "/train", 5).parents[1]
        >>> train, val, base = open_train_val(root, val_fraction=0.2, seed=0)
        >>> len(train), len(val), base.kind
        (4, 1, 'points')
    """
    root = Path(root)
    format = _check_format(format) if format is not None else detect_format(root)
    base = open_split(
        root, train_split, format, transform=train_transform, max_pixels=max_pixels, **options
    )
    if val_fraction is None:
        try:
            val = open_split(root, val_split, format, max_pixels=max_pixels, **options)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{err}; this folder has the splits {available_splits(root, format)}: pass a "
                "validation fraction (--val-fraction) to carve one from the training split"
            ) from None
        return base, val, base
    plain = open_split(root, train_split, format, max_pixels=max_pixels, **options)
    train_part, _ = split_dataset(base, val_fraction, seed)
    _, val_part = split_dataset(plain, val_fraction, seed)
    return train_part, val_part, base
