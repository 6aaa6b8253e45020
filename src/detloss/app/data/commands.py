"""``detloss data check`` and ``detloss data convert``.

``check`` opens every split of a data folder as training would, counts images,
annotations, classes and problems, and draws a few annotated images so that a user sees
the points or boxes sit where they should. ``convert`` writes the folder as our points
JSON or COCO JSON layout.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from ._common import DEFAULT_MAX_PIXELS, AnnotationError, exif_orientation
from .base import AnnotatedImages
from .convert import CONVERT_TARGETS, write_split
from .formats import FORMATS, available_splits, detect_format, open_split

__all__ = ["add_data_parser", "check_data", "convert_data", "draw_samples", "run_data"]

_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data check`` and ``data convert`` on the CLI's subparsers.

    Returns:
        The ``data`` parser (its subcommands set ``data_command``).

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser(prog="detloss")
        >>> _ = add_data_parser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["data", "convert", "--data", "d", "--to", "coco", "--out", "o"])
        >>> args.data_command, args.to, args.split, args.no_images
        ('convert', 'coco', None, False)
    """
    data = subparsers.add_parser(
        "data",
        help="check a data folder or convert it (detloss data check|convert --help)",
        description="Check a data folder in any supported format, or convert it.",
    )
    sub = data.add_subparsers(dest="data_command", required=True, help="what to do")
    check = sub.add_parser(
        "check",
        help="count images, annotations, classes and problems per split; draw samples",
        description="Open every split as training would; print counts and problems and "
        "write check_<split>.png with a few annotated images.",
    )
    convert = sub.add_parser(
        "convert",
        help="write a data folder as points JSON or COCO JSON",
        description="Write every split (or --split) of a data folder as "
        "OUT/<split>/images + points.json (--to points-json) or instances.json (--to coco).",
    )
    for command in (check, convert):
        command.add_argument("--data", required=True, help="the data folder")
        command.add_argument(
            "--format",
            choices=sorted(FORMATS),
            default=None,
            help="the folder's format (None: detected from its layout)",
        )
        command.add_argument(
            "--split", action="append", default=None, help="only this split (repeatable)"
        )
        command.add_argument(
            "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="pixel budget of one image"
        )
        command.add_argument(
            "--debug", action="store_true", help="show the full traceback of an error"
        )
    check.add_argument(
        "--out",
        default=None,
        help="folder for the pictures and check.json (None: runs/data-check)",
    )
    check.add_argument("--samples", type=int, default=8, help="images drawn per split")
    convert.add_argument("--to", required=True, choices=CONVERT_TARGETS, help="the output format")
    convert.add_argument("--out", required=True, help="output folder")
    convert.add_argument("--no-images", action="store_true", help="write the annotations only")
    return data


def run_data(args: argparse.Namespace) -> int:
    """The handler of ``detloss data ...``: the exit status.

    Example:
        >>> import argparse, tempfile
        >>> from detloss.app.data import make_crowds
        >>> root = make_crowds(f"{tempfile.mkdtemp()}/data/train", 2).parents[2]
        >>> parser = argparse.ArgumentParser(prog="detloss")
        >>> _ = add_data_parser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["data", "convert", "--data", str(root / "data"), "--to",
        ...                           "points-json", "--out", str(root / "out")])
        >>> run_data(args) # doctest: +ELLIPSIS
        /...: format points-json (detected)
        [train] 2 images, ... points -> /.../out/train/points.json
        0
    """
    if args.data_command == "check":
        return check_data(
            args.data,
            args.format,
            splits=args.split,
            out=args.out or "runs/data-check",
            samples=args.samples,
            max_pixels=args.max_pixels,
        )
    return convert_data(
        args.data,
        args.to,
        args.out,
        args.format,
        splits=args.split,
        copy_images=not args.no_images,
        max_pixels=args.max_pixels,
    )


def _open(root: Path, split: str, format: str, max_pixels: int | None):
    """``(dataset or None, problems)``: the warnings of the reader become problems."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = open_split(root, split, format, max_pixels=max_pixels)
        except (AnnotationError, FileNotFoundError, ValueError) as err:
            return None, [str(err)]
    return ds, [f"warning: {w.message}" for w in caught]


def check_data(
    data: str | Path,
    format: str | None = None,
    *,
    splits: list[str] | None = None,
    out: str | Path = "runs/data-check",
    samples: int = 8,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    print_fn=print,
) -> int:
    """Check every split of ``data``; writes ``out/check.json`` and ``out/check_<split>.png``.

    Returns 0 when no split has a problem, 1 otherwise.

    Example:
        >>> import tempfile
        >>> from detloss.app.data import ShapeSpec, make_shapes
        >>> spec = ShapeSpec(image_size=32, size_range=(8, 12))
        >>> root = make_shapes(f"{tempfile.mkdtemp()}/data/val", 2, spec).parents[2]
        >>> lines = []
        >>> check_data(root / "data", out=root / "check", samples=2, print_fn=lines.append)
        0
        >>> lines[0].endswith("format coco (detected)"), lines[-2], sorted(p.name for p in (root / "check").iterdir())
        (True, '[val] 0 problems', ['check.json', 'check_val.png'])
    """
    root = Path(data)
    detected = format is None
    format = format or detect_format(root)
    splits = splits or available_splits(root, format)
    print_fn(f"{root}: format {format}" + (" (detected)" if detected else ""))
    if not splits:
        print_fn("no split found")
        return 1
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {"data": str(root), "format": format, "splits": {}}
    failed = False
    for split in splits:
        ds, problems = _open(root, split, format, max_pixels)
        entry: dict[str, object] = {"problems": problems}
        if ds is not None:
            problems += ds.problems()
            counts = ds.num_annotations()
            per_class = [0] * ds.num_classes
            for t in ds.target_list:
                for label in t["labels"].tolist():
                    per_class[label] += 1
            rotated = 0
            if not ds.exif:
                for i in range(len(ds)):
                    try:
                        rotated += exif_orientation(ds.image_path(i), "", root=ds.image_dir) != 1
                    except (AnnotationError, FileNotFoundError):
                        pass  # already a problem above
            entry.update(
                images=len(ds),
                images_without_annotations=int((counts == 0).sum()),
                annotations=int(counts.sum()),
                kind=ds.kind,
                classes=dict(zip(ds.categories, per_class)),
                images_with_exif_rotation_not_applied=rotated,
            )
            if samples > 0 and len(ds):
                picture = out / f"check_{split}.png"
                draw_samples(ds, picture, samples)
                entry["picture"] = str(picture)
        report["splits"][split] = entry  # type: ignore[index]
        failed |= bool(problems)
        _print_split(split, entry, print_fn)
    (out / "check.json").write_text(json.dumps(report, indent=1) + "\n")
    print_fn(f"report: {out / 'check.json'}")
    return 1 if failed else 0


def _print_split(split: str, entry: dict, print_fn) -> None:
    if "images" in entry:
        classes = entry["classes"]
        present = sorted(((v, k) for k, v in classes.items() if v), key=lambda p: -p[0])
        shown = ", ".join(f"{k} {v}" for v, k in present[:10]) or "none"
        more = ", ..." if len(present) > 10 else ""
        if len(present) < len(classes) or len(present) > 10:
            more += f" ({len(classes)} classes, {len(classes) - len(present)} without annotations)"
        print_fn(
            f"[{split}] {entry['images']} images ({entry['images_without_annotations']} without "
            f"annotations), {entry['annotations']} {entry['kind']}; classes: {shown}{more}"
        )
        if entry["images_with_exif_rotation_not_applied"]:
            print_fn(
                f"[{split}] note: {entry['images_with_exif_rotation_not_applied']} images carry "
                "an EXIF rotation that is not applied (annotations are read in the stored "
                "pixel frame)"
            )
        if "picture" in entry:
            print_fn(f"[{split}] picture: {entry['picture']}")
    problems = entry["problems"]
    print_fn(f"[{split}] {len(problems)} problems")
    for line in problems[:20]:
        print_fn(f"  {line}")
    if len(problems) > 20:
        print_fn(f"  ... {len(problems) - 20} more in check.json")


def draw_samples(ds: AnnotatedImages, path: str | Path, samples: int = 8, tile: int = 256) -> Path:
    """A grid of up to ``samples`` images (spread over the split) with their points
    (dots) or boxes (rectangles coloured by class; ignored boxes grey), as the reader
    returns them -- the frame training sees.

    Returns:
        ``path``, the PNG written.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from detloss.app.data import make_crowds, open_split
        >>> root = make_crowds(f"{tempfile.mkdtemp()}/train", 3).parents[1]
        >>> picture = draw_samples(open_split(root, "train"), root / "grid.png", samples=3, tile=64)
        >>> Image.open(picture).size  # 3 tiles of 64 pixels in a row
        (192, 64)
    """
    from PIL import Image, ImageDraw

    n = min(samples, len(ds))
    picks = sorted({round(k * (len(ds) - 1) / max(n - 1, 1)) for k in range(n)})
    tiles = []
    for i in picks:
        try:
            image, target = ds[i]
        except (AnnotationError, FileNotFoundError):
            continue
        h, w = image.shape[1:]
        scale = min(tile / max(h, w), 4.0)
        pil = Image.fromarray(
            (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
        ).resize((max(1, round(w * scale)), max(1, round(h * scale))))
        draw = ImageDraw.Draw(pil)
        if "points" in target:
            for x, y in (target["points"] * scale).tolist():
                draw.ellipse(
                    [x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=(255, 0, 0), outline=(255, 255, 255)
                )
        else:
            ignore = target.get("ignore")
            for k, (box, label) in enumerate(
                zip((target["boxes"] * scale).tolist(), target["labels"].tolist())
            ):
                colour = (
                    (128, 128, 128)
                    if ignore is not None and bool(ignore[k])
                    else _PALETTE[label % len(_PALETTE)]
                )
                draw.rectangle(box, outline=colour, width=2)
                draw.text((box[0] + 2, box[1] + 1), ds.categories[label], fill=colour)
        draw.text((3, 3), f"{ds.names[i]} ({len(target['labels'])})", fill=(255, 255, 0))
        tiles.append(pil)
    cols = min(4, max(1, len(tiles)))
    rows = max(1, -(-len(tiles) // cols))
    sheet = Image.new("RGB", (cols * tile, rows * tile), (32, 32, 32))
    for k, t in enumerate(tiles):
        sheet.paste(t, ((k % cols) * tile, (k // cols) * tile))
    path = Path(path)
    sheet.save(path)
    return path


def convert_data(
    data: str | Path,
    to: str,
    out: str | Path,
    format: str | None = None,
    *,
    splits: list[str] | None = None,
    copy_images: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    print_fn=print,
) -> int:
    """Write every split (or ``splits``) of ``data`` under ``out/<split>/``; returns 0.

    Example:
        >>> import tempfile
        >>> from detloss.app.data import CrowdSpec, make_crowds, open_split
        >>> spec = CrowdSpec(image_size=32, count_range=(1, 1))
        >>> root = make_crowds(f"{tempfile.mkdtemp()}/data/train", 2, spec).parents[2]
        >>> convert_data(root / "data", "points-json", root / "out", print_fn=lambda line: None)
        0
        >>> open_split(root / "out", "train").num_annotations().tolist()
        [1, 1]
    """
    root = Path(data)
    detected = format is None
    format = format or detect_format(root)
    print_fn(f"{root}: format {format}" + (" (detected)" if detected else ""))
    splits = splits or available_splits(root, format)
    if not splits:
        raise FileNotFoundError(f"{root}: no split found for {format}")
    for split in splits:
        ds = open_split(root, split, format, max_pixels=max_pixels)
        written = write_split(ds, Path(out) / split, to, copy_images)
        print_fn(
            f"[{split}] {len(ds)} images, {int(ds.num_annotations().sum())} {ds.kind} -> {written}"
        )
    return 0
