"""Reader of YOLO txt box annotations (the Darknet / Ultralytics layout).

Layout, one of::

    root/images/<split>/x.jpg   root/labels/<split>/x.txt      (Ultralytics)
    root/<split>/images/x.jpg   root/<split>/labels/x.txt      (Roboflow exports)

or the folders named by ``train:`` / ``val:`` / ``test:`` in ``root/data.yaml``, or a
``.txt`` file named there that lists one image path per line, relative to ``root`` (as
Ultralytics' ``coco.yaml`` does with ``train2017.txt``); the labels of an image are found by
replacing the last ``images`` folder of its path by ``labels``.
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

from ._common import DEFAULT_MAX_PIXELS, AnnotationError, image_size, read_text, warn_dropped
from .base import AnnotatedImages, Transform, boxes_target
from .crowd import IMAGE_SUFFIXES, natural_key

__all__ = [
    "find_yolo_config",
    "parse_simple_yaml",
    "read_yolo",
    "yolo_class_names",
    "yolo_split_dirs",
    "yolo_split_list",
]

CONFIG_NAMES = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")


# ----------------------------------------------------------------------------- tiny YAML


def _strip_comment(line: str) -> str:
    quote = ""
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1] in " \t"):
            return line[:k]
    return line


def _scalar(text: str) -> object:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text in ("", "~", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _split_flow(body: str) -> list[str]:
    parts, quote, current = [], "", ""
    for ch in body:
        if quote:
            current += ch
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            current += ch
        elif ch == ",":
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


def _value(text: str, where: str) -> object:
    text = text.strip()
    if text.startswith("["):
        if not text.endswith("]"):
            raise AnnotationError(f"{where}: unterminated list {text!r}")
        return [_scalar(p) for p in _split_flow(text[1:-1])]
    if text.startswith("{"):
        if not text.endswith("}"):
            raise AnnotationError(f"{where}: unterminated mapping {text!r}")
        out = {}
        for p in _split_flow(text[1:-1]):
            key, sep, val = p.partition(":")
            if not sep:
                raise AnnotationError(f"{where}: expected 'key: value' in {text!r}")
            out[_scalar(key)] = _scalar(val)
        return out
    return _scalar(text)


def parse_simple_yaml(path: str | Path) -> dict[str, object]:
    """The subset of YAML that dataset files use: top-level ``key: value`` pairs whose
    values are scalars, flow lists / mappings (``[a, b]``, ``{0: a}``), or one level of
    block list (``- a``) or block mapping (``0: a``) items.

    Raises:
        AnnotationError: anything else, naming the file and line.
    """
    path = Path(path)
    out: dict[str, object] = {}
    block: str | None = None
    for n, raw in enumerate(read_text(path, "dataset file").splitlines(), start=1):
        line = _strip_comment(raw).rstrip()
        stripped = line.strip()
        where = f"{path}: line {n}"
        if not stripped or stripped in ("---", "..."):
            continue
        if line[0] in " \t":
            if block is None:
                raise AnnotationError(f"{where}: unexpected indented line {raw.strip()!r}")
            current = out[block]
            if stripped.startswith("- ") or stripped == "-":
                if current is None:
                    current = out[block] = []
                if not isinstance(current, list):
                    raise AnnotationError(f"{where}: a list item inside a mapping")
                current.append(_value(stripped[1:], where))
            else:
                key, sep, val = stripped.partition(":")
                if not sep:
                    raise AnnotationError(f"{where}: expected 'key: value', got {stripped!r}")
                if current is None:
                    current = out[block] = {}
                if not isinstance(current, dict):
                    raise AnnotationError(f"{where}: a mapping item inside a list")
                current[_scalar(key)] = _value(val, where)
            continue
        key, sep, val = stripped.partition(":")
        if not sep or not key.strip():
            raise AnnotationError(f"{where}: expected 'key: value', got {stripped!r}")
        key = str(_scalar(key))
        if key in out:
            raise AnnotationError(f"{where}: key {key!r} appears twice")
        if val.strip():
            out[key] = _value(val, where)
            block = None
        else:
            out[key] = None
            block = key
    return out


def find_yolo_config(root: Path) -> Path | None:
    for name in CONFIG_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def yolo_class_names(root: str | Path) -> list[str]:
    """The class names of a YOLO folder, in class-index order (see the module)."""
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


def _labels_dir(image_dir: Path, root: Path) -> Path:
    parts = list(image_dir.parts)
    for k in range(len(parts) - 1, -1, -1):
        if parts[k] == "images":
            return Path(*parts[:k], "labels", *parts[k + 1 :])
    return image_dir.parent / "labels"


def _split_aliases(split: str) -> list[str]:
    return [split] + (["valid"] if split == "val" else ["val"] if split == "valid" else [])


def yolo_split_list(root: str | Path, split: str) -> tuple[Path, list[Path]] | None:
    """``(list file, image paths)`` where ``data.yaml`` names a ``.txt`` file listing the
    images of ``split``; None where it names a folder or nothing. Every listed path must stay
    inside ``root``."""
    root = Path(root)
    config = find_yolo_config(root)
    if config is None:
        return None
    data = parse_simple_yaml(config)
    for key in _split_aliases(split):
        value = data.get(key)
        if not (isinstance(value, str) and value.endswith(".txt")):
            continue
        listing = root / value
        if Path(value).is_absolute() or not listing.resolve().is_relative_to(root.resolve()):
            raise AnnotationError(f"{config}: '{key}': {value!r} is outside the data folder {root}")
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
        return listing, images
    return None


def yolo_split_dirs(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(image folder, label folder)`` of ``split`` (see the module for the layouts)."""
    root = Path(root)
    aliases = _split_aliases(split)
    candidates: list[Path] = []
    config = find_yolo_config(root)
    if config is not None:
        data = parse_simple_yaml(config)
        base = data.get("path")
        for key in aliases:
            value = data.get(key)
            if isinstance(value, str) and value:
                rel = Path(value)
                if rel.is_absolute():
                    raise AnnotationError(
                        f"{config}: '{key}': {value!r} is absolute; expected a folder inside {root}"
                    )
                candidates.append(root / rel)
                if isinstance(base, str) and base and not Path(base).is_absolute():
                    candidates.append(root / base / rel)
                stripped = value
                while stripped.startswith("../"):
                    stripped = stripped[3:]
                candidates.append(root / stripped)
    for key in aliases:
        candidates += [root / "images" / key, root / key / "images"]
    real_root = root.resolve()
    for folder in candidates:
        if folder.is_dir():
            if not folder.resolve().is_relative_to(real_root):
                raise AnnotationError(f"{folder}: split folder outside the data folder {root}")
            return folder, _labels_dir(folder, root)
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


def read_yolo(
    root: str | Path,
    split: str = "train",
    *,
    tolerance: float = 1e-3,
    keep_duplicates: bool = False,
    exif: bool = True,
    transform: Transform | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> AnnotatedImages:
    """The ``split`` of a YOLO folder as :class:`~detloss.app.data.base.AnnotatedImages` of
    boxes (``xyxy`` pixels; see the module for the layout and rules). Image sizes are read
    from the headers when the dataset is built."""
    root = Path(root)
    names = yolo_class_names(root)
    listed = yolo_split_list(root, split)
    if listed is None:
        image_dir, label_dir = yolo_split_dirs(root, split)
        images = sorted(
            (p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: tuple(natural_key(Path(part)) for part in p.relative_to(image_dir).parts),
        )
        label_files = [label_dir / p.relative_to(image_dir).with_suffix(".txt") for p in images]
    else:
        # Listed images keep their order; names are relative to the data folder.
        image_dir, (label_dir, images) = root, listed
        label_files = [_labels_dir(p.parent, root) / (p.stem + ".txt") for p in images]
    counts = {"boxes of zero width or height": 0, "repeated label lines": 0}
    targets, sizes, rel_names = [], [], []
    for img, label_file in zip(images, label_files, strict=True):
        rel = img.relative_to(image_dir)
        h, w = image_size(
            img, f"image {rel.as_posix()!r}", root=image_dir, max_pixels=max_pixels, exif=exif
        )
        boxes, labels, seen = [], [], set()
        if label_file.exists():
            for n, line in enumerate(read_text(label_file).splitlines(), start=1):
                if not line.strip():
                    continue
                cls, box = _parse_line(line, label_file, n, len(names), tolerance)
                key = (cls, *box)
                if key in seen:
                    counts["repeated label lines"] += 1
                    if not keep_duplicates:
                        continue
                seen.add(key)
                x0, y0 = min(max(box[0], 0.0), 1.0) * w, min(max(box[1], 0.0), 1.0) * h
                x1, y1 = min(max(box[2], 0.0), 1.0) * w, min(max(box[3], 0.0), 1.0) * h
                if x1 <= x0 or y1 <= y0:
                    counts["boxes of zero width or height"] += 1
                    continue
                boxes.append([x0, y0, x1, y1])
                labels.append(cls)
        targets.append(boxes_target(boxes, labels))
        sizes.append((h, w))
        rel_names.append(rel.as_posix())
    if keep_duplicates:
        counts["repeated label lines (kept)"] = counts.pop("repeated label lines")
    warn_dropped(label_dir, counts)
    return AnnotatedImages(
        image_dir,
        rel_names,
        targets,
        kind="boxes",
        categories=names,
        source=label_dir,
        sizes=sizes,
        transform=transform,
        max_pixels=max_pixels,
        exif=exif,
        format="yolo",
    )
