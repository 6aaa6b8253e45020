"""Write a dataset read by any reader as our points JSON or as COCO JSON, in the layout
``detloss train`` reads (``out/<split>/images/`` + ``points.json`` or ``instances.json``).

The annotations written are exactly those read (float32 values written as JSON numbers,
which read back bit for bit); images are copied byte for byte. An image the reader rotates
by its EXIF tag (YOLO's default) is written rotated, without the tag, so that its pixels
are in the frame of the annotations as COCO tools expect.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

from ._common import exif_orientation, open_regular_file
from .base import AnnotatedImages

__all__ = ["CONVERT_TARGETS", "write_coco", "write_points_json", "write_split"]

CONVERT_TARGETS = ("coco", "points-json")


def _copy_images(ds: AnnotatedImages, image_out: Path) -> None:
    image_out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(ds.names):
        src = ds.image_path(i)
        dst = image_out / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        where = f"{ds.where(i)} of {ds.source}"
        if ds.exif and exif_orientation(src, where, root=ds.image_dir) != 1:
            from PIL import Image, ImageOps

            with open_regular_file(src, ds.image_dir, where) as f, Image.open(f) as img:
                upright = ImageOps.exif_transpose(img)
                upright.info.pop("exif", None)
                upright.save(dst, format=img.format, quality=95)
            continue
        with open_regular_file(src, ds.image_dir, where) as f, open(dst, "wb") as out:
            shutil.copyfileobj(f, out)


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _prepare(ds: AnnotatedImages, out: str | Path, to: str, copy_images: bool) -> Path:
    """Check that ``to`` holds the dataset's kind; create ``out`` (and copy the images)."""
    holds, other = ("points", "coco") if to == "points-json" else ("boxes", "points-json")
    if ds.kind != holds:
        raise ValueError(
            f"{to} holds {holds}; the {ds.format or 'given'} dataset has {ds.kind} "
            f"(convert it to {other})"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if copy_images:
        _copy_images(ds, out / "images")
    return out


def write_points_json(ds: AnnotatedImages, out: str | Path, copy_images: bool = True) -> Path:
    """``out/images/`` and ``out/points.json`` from a points dataset; returns the JSON path.

    Points JSON holds ``[x, y]`` only: per-point values beyond ``points`` and ``labels``
    (JHU-Crowd++'s ``sizes``, ``occlusion`` and ``blur``) are dropped, with one warning
    naming them and counting the points that had them.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from detloss.app.data import PointDataset
        >>> src = Path(tempfile.mkdtemp())
        >>> (src / "images").mkdir()
        >>> Image.new("RGB", (8, 6)).save(src / "images/a.png")
        >>> _ = (src / "points.json").write_text('{"a.png": [[1.5, 2.0]]}')
        >>> path = write_points_json(PointDataset(src / "images", src / "points.json"), src / "out")
        >>> path.read_text().split()
        ['{', '"a.png":', '[', '[', '1.5,', '2.0', ']', ']', '}']
    """
    out = _prepare(ds, out, "points-json", copy_images)
    data = {name: t["points"].tolist() for name, t in zip(ds.names, ds.target_list)}
    _write_json(out / "points.json", data)
    extra = [
        k for k in (ds.target_list[0] if ds.target_list else {}) if k not in ("points", "labels")
    ]
    carrying = sum(len(t["points"]) for t in ds.target_list) if extra else 0
    if carrying:
        warnings.warn(
            f"{out / 'points.json'}: dropped the per-point {', '.join(map(repr, extra))} of "
            f"{carrying} points (points JSON holds [x, y] only)",
            UserWarning,
            stacklevel=2,
        )
    return out / "points.json"


def write_coco(ds: AnnotatedImages, out: str | Path, copy_images: bool = True) -> Path:
    """``out/images/`` and ``out/instances.json`` from a boxes dataset; returns the JSON
    path. Category ids are ``label + 1``; an ``"ignore"`` flag is written as ``ignore: 1``.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> import torch
        >>> from PIL import Image
        >>> from detloss.app.data import AnnotatedImages
        >>> src = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (8, 6)).save(src / "a.png")
        >>> target = {"boxes": torch.tensor([[1.0, 1.0, 4.0, 5.0]]), "labels": torch.tensor([0])}
        >>> ds = AnnotatedImages(src, ["a.png"], [target], kind="boxes", categories=["cat"],
        ...                      source=src)
        >>> path = write_coco(ds, src / "out", copy_images=False)
        >>> json.loads(path.read_text())["annotations"][0]["bbox"]
        [1.0, 1.0, 3.0, 4.0]
    """
    out = _prepare(ds, out, "coco", copy_images)
    images, annotations = [], []
    for i, (name, t) in enumerate(zip(ds.names, ds.target_list)):
        h, w = ds.sizes[i] if ds.sizes[i] is not None else ds.read_size(i)
        images.append({"id": i + 1, "file_name": name, "width": int(w), "height": int(h)})
        ignore = t.get("ignore")
        for k, (box, label) in enumerate(zip(t["boxes"].tolist(), t["labels"].tolist())):
            x0, y0, x1, y1 = box
            ann = {
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": int(label) + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0,
            }
            if ignore is not None:
                ann["ignore"] = int(bool(ignore[k]))
            annotations.append(ann)
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(ds.categories)]
    data = {"images": images, "annotations": annotations, "categories": categories}
    _write_json(out / "instances.json", data)
    return out / "instances.json"


def write_split(ds: AnnotatedImages, out: str | Path, to: str, copy_images: bool = True) -> Path:
    """:func:`write_coco` or :func:`write_points_json` by name (``to``).

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from detloss.app.data import CrowdSpec, make_crowds, open_split
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = make_crowds(root / "data/train", 1, CrowdSpec(image_size=32, count_range=(2, 2)))
        >>> path = write_split(open_split(root / "data", "train"), root / "out/train", "points-json")
        >>> path.relative_to(root).as_posix(), [len(p) for p in json.loads(path.read_text()).values()]
        ('out/train/points.json', [2])
    """
    if to == "coco":
        return write_coco(ds, out, copy_images)
    if to == "points-json":
        return write_points_json(ds, out, copy_images)
    raise ValueError(f"to: expected one of {CONVERT_TARGETS}, got {to!r}")
