"""Reader of YOLO txt box annotations (the Darknet / Ultralytics layout).

Layout, one of::

    root/images/<split>/x.jpg   root/labels/<split>/x.txt      (Ultralytics)
    root/<split>/images/x.jpg   root/<split>/labels/x.txt      (Roboflow exports)

or the folders named by ``train:`` / ``val:`` / ``test:`` in ``root/data.yaml``, or a
``.txt`` file named there that lists one image path per line, relative to ``root`` (as
Ultralytics' ``coco.yaml`` does with ``train2017.txt``), or a YAML list of such folders and
files (``train: [images/a, images/b]``), read in order and concatenated; nothing named
there may lie outside ``root``. The labels of an image are found by replacing the last
``images`` folder of its path by ``labels``.
Each label line is ``class cx cy w h`` with the centre and size normalised by the image's
width and height; a line ``class x1 y1 x2 y2 ...`` (a polygon) is read as its bounding box.
Class names come from ``names:`` in ``data.yaml`` (a list or an ``index: name`` mapping,
read by a small parser of that subset of YAML, no dependency), else ``classes.txt`` or
``obj.names`` (one name per line).

Rules:

* An image without a label file, or with an empty one, has no objects.
* Images are read with their EXIF orientation applied, as Ultralytics does when it measures
  an image to un-normalise its labels (``exif=False`` reads the stored pixels).
* A coordinate outside ``[0, 1]`` by more than ``tolerance`` (normalised units) is an
  error naming the file and line; within it the box is clipped to the image. Boxes of zero
  width or height and repeated lines are dropped, with one warning counting them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

from ._common import AnnotationError, ImageAccess, read_text
from ._reader import ParsedSplit, ReadOptions, Repeats, split_reader
from ._yaml import parse_simple_yaml
from .base import boxes_target
from .crowd import IMAGE_SUFFIXES, natural_key

__all__ = [
    "YoloSplit",
    "find_yolo_config",
    "parse_simple_yaml",
    "read_yolo",
    "yolo_class_names",
    "yolo_split",
]

CONFIG_NAMES = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")


def find_yolo_config(root: Path) -> Path | None:
    """The dataset file of a YOLO folder: the first of ``data.yaml``, ``data.yml``,
    ``dataset.yaml``, ``dataset.yml`` in ``root``; ``None`` when there is none.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> find_yolo_config(root) is None
        True
        >>> _ = (root / "dataset.yaml").write_text("names: [cat]\\n")
        >>> find_yolo_config(root).name
        'dataset.yaml'
    """
    for name in CONFIG_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def yolo_class_names(root: str | Path) -> list[str]:
    """The class names of a YOLO folder, in class-index order (see the module).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "data.yaml").write_text("names:\\n  0: cat\\n  1: dog\\n")
        >>> yolo_class_names(root)
        ['cat', 'dog']
    """
    root = Path(root)
    config = find_yolo_config(root)
    if config is not None:
        names = parse_simple_yaml(config).get("names")
        if isinstance(names, list) and all(n is not None for n in names):
            return [str(n) for n in names]
        if isinstance(names, dict):
            keys = sorted(names, key=lambda k: (not isinstance(k, int), k))
            if keys != list(range(len(keys))):
                raise AnnotationError(
                    f"{config}: 'names': expected the indices 0..{len(keys) - 1}, got {keys}"
                )
            return [str(names[k]) for k in keys]
        if names is not None:
            raise AnnotationError(
                f"{config}: 'names': expected a list or an 'index: name' mapping, got {names!r}"
            )
    for name in ("classes.txt", "obj.names"):
        if (root / name).is_file():
            return [ln.strip() for ln in read_text(root / name).splitlines() if ln.strip()]
    raise FileNotFoundError(
        f"{root}: no class names for the YOLO layout (expected 'names:' in one of "
        f"{list(CONFIG_NAMES)}, or classes.txt / obj.names)"
    )


# ----------------------------------------------------------------------------- layout


def _labels_dir(image_dir: Path) -> Path:
    """The label folder of an image folder: its last ``images`` part replaced by ``labels``."""
    parts = list(image_dir.parts)
    for k in range(len(parts) - 1, -1, -1):
        if parts[k] == "images":
            return Path(*parts[:k], "labels", *parts[k + 1 :])
    return image_dir.parent / "labels"


def _split_aliases(split: str) -> list[str]:
    return [split] + (["valid"] if split == "val" else ["val"] if split == "valid" else [])


class YoloSplit(NamedTuple):
    """The images of one YOLO split and their label files (a missing one: no objects).

    Example:
        >>> from pathlib import Path
        >>> split = YoloSplit(Path("d/images/train"), Path("d/labels/train"), [Path("d/images/train/a.jpg")],
        ...                   [Path("d/labels/train/a.txt")])
        >>> split.image_dir.name, len(split.images)
        ('train', 1)
    """

    image_dir: Path  #: the folder the image names are relative to
    source: Path  #: named in warnings: the label folder, the list file or data.yaml
    images: list[Path]
    label_files: list[Path]


def _folder_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """The images below ``folder`` in natural order, and their label files."""
    label_dir = _labels_dir(folder)
    images = sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: tuple(natural_key(Path(part)) for part in p.relative_to(folder).parts),
    )
    return images, [label_dir / p.relative_to(folder).with_suffix(".txt") for p in images]


def _listed_images(root: Path, listing: Path) -> tuple[list[Path], list[Path]]:
    """The images a ``.txt`` file lists (relative to ``root``, in listed order) and their
    label files."""
    images = []
    for n, line in enumerate(read_text(listing).splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        path = Path(name)
        if path.is_absolute() or ".." in path.parts:
            raise AnnotationError(
                f"{listing}: line {n}: image path {name!r} leaves the data folder {root}"
            )
        images.append(root / path)
    return images, [_labels_dir(p.parent) / (p.stem + ".txt") for p in images]


def _list_file(root: Path, value: str, where: str) -> Path:
    """The ``.txt`` file a ``data.yaml`` entry names, which must lie inside ``root``."""
    listing = root / value
    if Path(value).is_absolute() or not listing.resolve().is_relative_to(root.resolve()):
        raise AnnotationError(f"{where}: {value!r} is outside the data folder {root}")
    return listing


def _folder_candidates(root: Path, value: str, base: object, where: str) -> list[Path]:
    """Where a folder named in ``data.yaml`` may be: relative to ``root``, to its ``path:``
    entry, or (Roboflow's ``../train/images``) with leading ``../`` removed."""
    rel = Path(value)
    if rel.is_absolute():
        raise AnnotationError(f"{where}: {value!r} is absolute; expected a folder inside {root}")
    candidates = [root / rel]
    if isinstance(base, str) and base and not Path(base).is_absolute():
        candidates.append(root / base / rel)
    stripped = value
    while stripped.startswith("../"):
        stripped = stripped[3:]
    return [*candidates, root / stripped]


def _split_of_list(root: Path, config: Path, key: str, entries: list, base: object) -> YoloSplit:
    """A split given as a YAML list of folders and ``.txt`` files, read in order."""
    images: list[Path] = []
    label_files: list[Path] = []
    real_root = root.resolve()
    for k, entry in enumerate(entries):
        where = f"{config}: '{key}' item {k}"
        if not (isinstance(entry, str) and entry):
            raise AnnotationError(
                f"{where}: expected a folder or a .txt file inside {root}, got {entry!r}"
            )
        if entry.endswith(".txt"):
            found = _listed_images(root, _list_file(root, entry, where))
        else:
            candidates = _folder_candidates(root, entry, base, where)
            folder = next((c for c in candidates if c.is_dir()), None)
            if folder is None:
                raise FileNotFoundError(
                    f"{where}: folder {entry!r} not found (looked for "
                    f"{[str(c.relative_to(root)) for c in candidates]})"
                )
            if not folder.resolve().is_relative_to(real_root):
                raise AnnotationError(f"{where}: {entry!r} is outside the data folder {root}")
            found = _folder_images(folder)
        images += found[0]
        label_files += found[1]
    return YoloSplit(root, config, images, label_files)


def yolo_split(root: str | Path, split: str) -> YoloSplit:
    """The images and label files of ``split`` (see the module for the layouts).

    ``data.yaml`` may name the split by a folder, a ``.txt`` file listing image paths, or a
    YAML list of either (read in order and concatenated); without it the folders
    ``images/<split>`` and ``<split>/images`` are looked for. With a list or a ``.txt``
    file, the image names are relative to ``root``; with one folder, to that folder.

    Raises:
        AnnotationError: a folder or file named in ``data.yaml`` lies outside ``root``
            (the message names ``data.yaml`` and the key), or a listed image path leaves it.
        FileNotFoundError: no such split.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> for folder in ("images/a", "images/b"):
        ...     (root / folder).mkdir(parents=True)
        ...     (root / folder / "x.jpg").touch()
        >>> _ = (root / "data.yaml").write_text("train: [images/b, images/a]\\nnames: [cat]\\n")
        >>> s = yolo_split(root, "train")
        >>> [p.relative_to(root).as_posix() for p in s.images]
        ['images/b/x.jpg', 'images/a/x.jpg']
        >>> [p.relative_to(root).as_posix() for p in s.label_files]
        ['labels/b/x.txt', 'labels/a/x.txt']
    """
    root = Path(root)
    aliases = _split_aliases(split)
    config = find_yolo_config(root)
    data = parse_simple_yaml(config) if config is not None else {}
    for key in aliases:
        value = data.get(key)
        if isinstance(value, list):
            return _split_of_list(root, config, key, value, data.get("path"))  # type: ignore[arg-type]
        if isinstance(value, str) and value.endswith(".txt"):
            listing = _list_file(root, value, f"{config}: '{key}'")
            return YoloSplit(root, listing, *_listed_images(root, listing))
    candidates: list[Path] = []
    for key in aliases:
        value = data.get(key)
        if isinstance(value, str) and value:
            candidates += _folder_candidates(root, value, data.get("path"), f"{config}: '{key}'")
    for key in aliases:
        candidates += [root / "images" / key, root / key / "images"]
    real_root = root.resolve()
    for folder in candidates:
        if folder.is_dir():
            if not folder.resolve().is_relative_to(real_root):
                raise AnnotationError(f"{folder}: split folder outside the data folder {root}")
            return YoloSplit(folder, _labels_dir(folder), *_folder_images(folder))
    raise FileNotFoundError(
        f"{root}: split {split!r} not found for yolo (looked for "
        f"{[str(c.relative_to(root)) if c.is_relative_to(root) else str(c) for c in candidates]})"
    )


def _parse_line(line: str, label_file: Path, n: int, num_classes: int, tolerance: float):
    fields = line.split()
    where = f"{label_file}: line {n}"
    try:
        values = [float(v) for v in fields]
    except ValueError:
        raise AnnotationError(
            f"{where}: expected numbers 'class cx cy w h', got {line.strip()!r}"
        ) from None
    if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
        raise AnnotationError(
            f"{where}: expected 'class cx cy w h' (5 values) or a polygon 'class x1 y1 x2 y2 "
            f"x3 y3 ...', got {len(values)} values"
        )
    if not all(math.isfinite(v) for v in values):
        raise AnnotationError(f"{where}: not finite, got {line.strip()!r}")
    cls = values[0]
    if cls != int(cls) or not 0 <= cls < num_classes:
        raise AnnotationError(
            f"{where}: class {fields[0]!r} is not an index in 0..{num_classes - 1} "
            f"({num_classes} class names)"
        )
    if len(values) == 5:
        cx, cy, w, h = values[1:]
        if w < 0 or h < 0:
            raise AnnotationError(f"{where}: negative width or height, got {line.strip()!r}")
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    else:
        xs, ys = values[1::2], values[2::2]
        box = [min(xs), min(ys), max(xs), max(ys)]
    if min(box) < -tolerance or max(box) > 1 + tolerance:
        raise AnnotationError(
            f"{where}: coordinates outside [0, 1] (YOLO labels are normalised by the image "
            f"size), got {line.strip()!r}"
        )
    return int(cls), box


def _parse_yolo(root: Path, split: str, options: ReadOptions) -> ParsedSplit:
    names = yolo_class_names(root)
    image_dir, source, images, label_files = yolo_split(root, split)
    zero_size = 0
    repeats = Repeats(options.keep_duplicates)
    targets, sizes, rel_names = [], [], []
    access = ImageAccess(image_dir, options.max_pixels, options.exif)
    for i, (img, label_file) in enumerate(zip(images, label_files, strict=True)):
        rel = img.relative_to(image_dir)
        h, w = access.size(img, f"image {rel.as_posix()!r}")
        boxes, labels = [], []
        if label_file.exists():
            for n, line in enumerate(read_text(label_file).splitlines(), start=1):
                if not line.strip():
                    continue
                cls, box = _parse_line(line, label_file, n, len(names), options.tolerance)
                if repeats.skip((i, cls, *box)):
                    continue
                x0, y0 = min(max(box[0], 0.0), 1.0) * w, min(max(box[1], 0.0), 1.0) * h
                x1, y1 = min(max(box[2], 0.0), 1.0) * w, min(max(box[3], 0.0), 1.0) * h
                if x1 <= x0 or y1 <= y0:
                    zero_size += 1
                    continue
                boxes.append([x0, y0, x1, y1])
                labels.append(cls)
        targets.append(boxes_target(boxes, labels))
        sizes.append((h, w))
        rel_names.append(rel.as_posix())
    return ParsedSplit(
        image_dir,
        rel_names,
        targets,
        kind="boxes",
        categories=names,
        source=source,
        dropped={"boxes of zero width or height": zero_size},
        repeats=repeats,
        repeated="repeated label lines",
        sizes=sizes,
    )


read_yolo = split_reader(
    "yolo",
    _parse_yolo,
    tolerance=1e-3,
    exif=True,
    doc="""The ``split`` of a YOLO folder (see the module for the layouts and rules; the
    split is found by :func:`yolo_split`). Image sizes are read from the headers when the
    dataset is built.

    Args:
        root: the data folder (holding ``data.yaml``, or ``images/`` and ``labels/``).
        split: ``"train"``, ``"val"`` (or ``"valid"``), ``"test"``.
        tolerance: how far (normalised units) a coordinate may lie outside ``[0, 1]``
            before it is an error (default 0.001); boxes within it are clipped.
        keep_duplicates: keep exactly repeated label lines (default: drop them, counted).
        transform: optional ``(image, target) -> (image, target)`` applied to every item.
        max_pixels: pixel budget of one image, checked from its header before decoding.
        exif: apply EXIF orientation tags (default ``True``, as Ultralytics does).

    Returns:
        :class:`~detloss.app.data.base.AnnotatedImages` of boxes: items ``(image
        float32[3, H, W], {"boxes": float32[n, 4] (xyxy, pixels), "labels": int64[n]})``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> files = {"classes.txt": "cat\\ndog\\n", "labels/train/a.txt": "1 0.5 0.5 0.2 0.4\\n"}
        >>> for name, content in files.items():
        ...     (root / name).parent.mkdir(parents=True, exist_ok=True)
        ...     _ = (root / name).write_text(content)
        >>> (root / "images/train").mkdir(parents=True)
        >>> Image.new("RGB", (30, 20)).save(root / "images/train/a.jpg")
        >>> ds = read_yolo(root, "train")
        >>> ds.categories, ds[0][1]["boxes"].tolist(), ds[0][1]["labels"].tolist()
        (['cat', 'dog'], [[12.0, 6.0, 18.0, 14.0]], [1])
""",
)
