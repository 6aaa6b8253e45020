"""Reader of Pascal VOC XML box annotations, as the VOC devkit lays them out::

    root/Annotations/<id>.xml
    root/JPEGImages/<id>.jpg
    root/ImageSets/Main/<split>.txt      (one id per line: train, val, trainval, test)

Each ``<object>`` has a ``<name>``, an optional ``<difficult>`` flag and a ``<bndbox>`` of
``xmin ymin xmax ymax`` in VOC's 1-based, inclusive pixel indices: a box from pixel 1 to
pixel ``W`` covers the whole image. detloss's continuous frame has the image at
``[0, W]``, so the box read is ``[xmin - 1, ymin - 1, xmax, ymax]`` (the convention of
Detectron2's VOC reader).

Rules:

* ``difficult`` objects are kept, flagged in the target's ``"ignore": bool[n]`` (VOC's
  evaluation neither rewards nor penalises them).
* Class labels: ``classes`` if given, else the names in ``root/classes.txt`` or
  ``root/labels.txt``, else VOC's 20 classes in their usual (alphabetical) order when every
  name in ``Annotations/`` is one of them, else all those names sorted -- the same labels
  whatever the split (every XML file is read once to decide).
* XML with a ``DOCTYPE`` or an entity declaration is refused before parsing (this blocks
  entity-expansion attacks, as defusedxml does).
* The image file is ``JPEGImages/<id>.jpg``, or the ``<filename>`` of the XML when only
  that one exists; ``<size>`` is checked against the file when it is read. Images are
  read in their stored pixel frame (no EXIF rotation).
* A box more than ``tolerance`` pixels outside its image, or with ``xmax < xmin - 1``, is
  an error naming the file and object; boxes within it are clipped, boxes of zero size are
  dropped and exactly repeated objects are dropped, with one warning counting them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree

from ._common import AnnotationError, check_image_name, open_regular_file
from ._reader import ParsedSplit, ReadOptions, Repeats, split_reader
from .base import boxes_target
from .crowd import natural_key

__all__ = ["VOC_CLASSES", "parse_voc_xml", "read_voc", "voc_class_names"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

_UNSAFE_XML = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_MAX_XML_BYTES = 16 * 1024 * 1024


def _text(node: ElementTree.Element, tag: str) -> str | None:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text is not None else None


def _number(node: ElementTree.Element, tag: str, path: Path, where: str) -> float:
    text = _text(node, tag)
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise AnnotationError(f"{path}: {where}: expected a number in <{tag}>, got {text!r}")
    return value


def parse_voc_xml(path: str | Path) -> dict:
    """One VOC annotation file -> ``{"filename", "width", "height", "objects": [{"name",
    "difficult", "box": [xmin, ymin, xmax, ymax] as written}]}``; every failure is an
    :class:`AnnotationError` naming the file and, where known, the object.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> xml = Path(tempfile.mkdtemp()) / "a.xml"
        >>> _ = xml.write_text("<annotation><filename>a.jpg</filename><size><width>30</width>"
        ...     "<height>20</height></size><object><name>cat</name><bndbox><xmin>1</xmin>"
        ...     "<ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object></annotation>")
        >>> parse_voc_xml(xml)["objects"]
        [{'name': 'cat', 'difficult': False, 'box': [1.0, 2.0, 10.0, 20.0]}]
    """
    path = Path(path)
    with open_regular_file(path, what="annotation file") as f:
        raw = f.read(_MAX_XML_BYTES + 1)
    if len(raw) > _MAX_XML_BYTES:
        raise AnnotationError(f"{path}: larger than {_MAX_XML_BYTES} bytes, not a VOC annotation")
    if _UNSAFE_XML.search(raw):
        raise AnnotationError(
            f"{path}: XML with a DOCTYPE or an entity declaration is refused (VOC files "
            "have neither)"
        )
    try:
        root = ElementTree.fromstring(raw)
    except ElementTree.ParseError as err:
        raise AnnotationError(f"{path}: not valid XML ({err})") from None
    if root.tag != "annotation":
        raise AnnotationError(f"{path}: expected an <annotation> root element, got <{root.tag}>")
    size = root.find("size")
    width = height = 0
    if size is not None:
        width = int(_number(size, "width", path, "<size>"))
        height = int(_number(size, "height", path, "<size>"))
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")
        where = f"object {k}" + (f" ({name!r})" if name else "")
        if not name:
            raise AnnotationError(f"{path}: {where}: expected a non-empty <name>")
        difficult = _text(obj, "difficult")
        if difficult not in (None, "", "0", "1"):
            raise AnnotationError(
                f"{path}: {where}: expected <difficult> 0 or 1, got {difficult!r}"
            )
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise AnnotationError(f"{path}: {where}: missing <bndbox>")
        box = [_number(bndbox, t, path, where) for t in ("xmin", "ymin", "xmax", "ymax")]
        objects.append({"name": name, "difficult": difficult == "1", "box": box})
    return {
        "filename": _text(root, "filename"),
        "width": width,
        "height": height,
        "objects": objects,
    }


def _read_ids(listing: Path) -> list[str]:
    from ._common import read_text

    ids = []
    for n, line in enumerate(read_text(listing).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        ident = fields[0]
        if "/" in ident or "\\" in ident or ident in (".", ".."):
            raise AnnotationError(f"{listing}: line {n}: expected an image id, got {ident!r}")
        ids.append(ident)
    return ids


def voc_class_names(root: str | Path) -> list[str]:
    """The class names of a VOC folder in label order: ``classes.txt`` / ``labels.txt``,
    else VOC's 20 classes when every name in ``Annotations/`` is one of them, else all those
    names sorted. Decided from the whole folder, so every split has the same labels.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "Annotations").mkdir()  # no names beyond VOC's: its 20 classes
        >>> voc_class_names(root)[:3], len(voc_class_names(root))
        (['aeroplane', 'bicycle', 'bird'], 20)
        >>> _ = (root / "classes.txt").write_text("cat\\ndog\\n")
        >>> voc_class_names(root)
        ['cat', 'dog']
    """
    from ._common import read_text

    root = Path(root)
    for name in ("classes.txt", "labels.txt"):
        if (root / name).is_file():
            return [ln.strip() for ln in read_text(root / name).splitlines() if ln.strip()]
    names: set[str] = set()
    for xml in sorted((root / "Annotations").glob("*.xml"), key=natural_key):
        names.update(obj["name"] for obj in parse_voc_xml(xml)["objects"])
    if names <= set(VOC_CLASSES):
        return list(VOC_CLASSES)
    return sorted(names)


def _parse_voc(
    root: Path, split: str, options: ReadOptions, *, classes: Sequence[str] | None = None
) -> ParsedSplit:
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: split {split!r} not found for voc")
    ids = _read_ids(listing)
    parsed = [parse_voc_xml(root / "Annotations" / f"{i}.xml") for i in ids]
    names = list(classes) if classes is not None else voc_class_names(root)
    label_of = {n: k for k, n in enumerate(names)}
    image_dir = root / "JPEGImages"
    zero_size = 0
    repeats = Repeats(options.keep_duplicates)
    tolerance = options.tolerance
    files, targets, sizes, wheres = [], [], [], []
    for i, (ident, ann) in enumerate(zip(ids, parsed)):
        xml = root / "Annotations" / f"{ident}.xml"
        file = f"{ident}.jpg"
        if not (image_dir / file).exists() and ann["filename"]:
            named = check_image_name(ann["filename"], f"{xml}: <filename>")
            file = named if (image_dir / named).exists() else file
        w, h = ann["width"], ann["height"]
        boxes, labels, ignore = [], [], []
        for k, obj in enumerate(ann["objects"]):
            where = f"{xml}: object {k} ({obj['name']!r})"
            if obj["name"] not in label_of:
                raise AnnotationError(f"{where}: class not in the class list {names}")
            xmin, ymin, xmax, ymax = obj["box"]
            x0, y0, x1, y1 = xmin - 1.0, ymin - 1.0, xmax, ymax
            if x1 < x0 or y1 < y0:
                raise AnnotationError(
                    f"{where}: <bndbox> has xmax < xmin - 1 or ymax < ymin - 1, got {obj['box']}"
                )
            if w > 0 and h > 0:
                if x0 < -tolerance or y0 < -tolerance or x1 > w + tolerance or y1 > h + tolerance:
                    raise AnnotationError(
                        f"{where}: <bndbox> {obj['box']} lies outside the image (width {w}, "
                        f"height {h})"
                    )
                x0, x1 = min(max(x0, 0.0), w), min(max(x1, 0.0), w)
                y0, y1 = min(max(y0, 0.0), h), min(max(y1, 0.0), h)
            if repeats.skip((i, obj["name"], obj["difficult"], x0, y0, x1, y1)):
                continue
            if x1 <= x0 or y1 <= y0:
                zero_size += 1
                continue
            boxes.append([x0, y0, x1, y1])
            labels.append(label_of[obj["name"]])
            ignore.append(obj["difficult"])
        files.append(file)
        targets.append(boxes_target(boxes, labels, ignore))
        sizes.append((h, w) if w > 0 and h > 0 else None)
        wheres.append(f"image {ident!r} ({xml.name})")
    return ParsedSplit(
        image_dir,
        files,
        targets,
        kind="boxes",
        categories=names,
        source=root / "Annotations",
        dropped={"boxes of zero width or height": zero_size},
        repeats=repeats,
        repeated="repeated objects",
        warn_source=listing,
        sizes=sizes,
        wheres=wheres,
    )


read_voc = split_reader(
    "voc",
    _parse_voc,
    doc="""The ``split`` (``ImageSets/Main/<split>.txt``: ``train``, ``val``, ``trainval``,
    ``test``) of a VOC folder, with an ``"ignore"`` flag per box (see the module for the
    conventions).

    Args:
        root: the folder holding ``Annotations/``, ``JPEGImages/`` and ``ImageSets/``.
        split: the split's name.
        classes: the class names in label order (default: see the module).
        tolerance: how far (pixels) a box may reach outside its image before it is an
            error; boxes within it are clipped (default 1).
        keep_duplicates: keep exactly repeated objects (default: drop them, counted).
        transform: optional ``(image, target) -> (image, target)`` applied to every item.
        max_pixels: pixel budget of one image, checked from its header before decoding.
        exif: apply EXIF orientation tags (default ``False``: the stored pixels).

    Returns:
        :class:`~detloss.app.data.base.AnnotatedImages` of boxes: items ``(image
        float32[3, H, W], {"boxes": float32[n, 4] (xyxy, pixels), "labels": int64[n],
        "ignore": bool[n]})``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        ...     (root / sub).mkdir(parents=True)
        >>> Image.new("RGB", (30, 20)).save(root / "JPEGImages/a.jpg")
        >>> _ = (root / "Annotations/a.xml").write_text(
        ...     "<annotation><size><width>30</width><height>20</height></size><object>"
        ...     "<name>dog</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>2</ymin>"
        ...     "<xmax>10</xmax><ymax>20</ymax></bndbox></object></annotation>")
        >>> _ = (root / "ImageSets/Main/train.txt").write_text("a\\n")
        >>> _, target = read_voc(root, "train")[0]
        >>> target["boxes"].tolist(), target["labels"].tolist(), target["ignore"].tolist()
        ([[0.0, 1.0, 10.0, 20.0]], [11], [True])
""",
)
