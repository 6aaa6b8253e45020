"""File access and error reporting shared by every reader.

The guarantees (documented in docs/data.md):

* an image name from an annotation file is a relative path that stays inside the image
  folder, also after symlinks are resolved;
* only regular files are opened, without blocking (a FIFO or a device is an error);
* an image larger than a pixel budget is refused from its header, before decoding;
* every malformed annotation file is one :class:`AnnotationError` naming the file and,
  where known, the record.
"""

from __future__ import annotations

import math
import os
import posixpath
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from ..._optional import required_module

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "AnnotationError",
    "ImageAccess",
    "check_image_name",
    "check_points",
    "is_number",
    "load_image",
    "open_regular_file",
    "read_json",
    "read_text",
    "require_pil",
    "unique_rows",
    "warn_dropped",
]

#: Default pixel budget of one image: 8192 x 8192 = 64 megapixels (768 MiB as float32 RGB).
DEFAULT_MAX_PIXELS = 8192 * 8192

#: EXIF orientations that swap width and height.
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


class AnnotationError(ValueError):
    """A malformed annotation file or record; the message names the file and the record."""


# ----------------------------------------------------------------------------- text files


def _check_regular(path: Path, what: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except OSError as err:
        raise AnnotationError(f"{path}: {what} cannot be read ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise AnnotationError(f"{path}: {what} is not a regular file")


def read_text(path: Path, what: str = "annotation file") -> str:
    """The UTF-8 text of a regular file; a FIFO, a folder or bad bytes is an error."""
    path = Path(path)
    _check_regular(path, what)
    with open_regular_file(path, what=what) as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text ({err})") from None


class _DuplicateKey(Exception):
    pass


class _BadConstant(Exception):
    pass


def _pairs_without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key, [k for k, _ in pairs][:5])
        out[key] = value
    return out


def _reject_constant(name: str) -> object:
    raise _BadConstant(name)


def read_json(path: Path) -> object:
    """Parse a JSON file strictly: every failure is one :class:`AnnotationError` naming it.

    Rejected besides syntax errors: a key repeated in one object, the non-standard
    constants ``NaN`` / ``Infinity``, nesting deeper than Python's recursion limit and
    integers longer than Python's digit limit.
    """
    import json

    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(
            text,
            object_pairs_hook=_pairs_without_duplicates,
            parse_constant=_reject_constant,
        )
    except _DuplicateKey as err:
        key, keys = err.args
        raise AnnotationError(
            f"{path}: not valid JSON: key {key!r} appears twice in one object "
            f"(the object's keys start with {keys})"
        ) from None
    except _BadConstant as err:
        raise AnnotationError(
            f"{path}: not valid JSON: non-standard constant {err.args[0]} (expected finite numbers)"
        ) from None
    except RecursionError:
        raise AnnotationError(
            f"{path}: not valid JSON: nested deeper than the parser's limit"
        ) from None
    except ValueError as err:  # JSONDecodeError, and the integer digit limit
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None


# ----------------------------------------------------------------------------- records


def is_number(value: object) -> bool:
    """Whether ``value`` is a finite int or float from a parsed file (``True`` is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_points(value: object, where: str) -> list:
    """``value`` itself when it is a list of ``[x, y]`` pairs of finite numbers.

    Raises:
        AnnotationError: anything else; ``where`` names the record (``"f.json: image
            'a.png'"``), and a bad pair is named by its index.

    Example:
        >>> check_points([[1, 2.5]], "f.json: image 'a.png'")
        [[1, 2.5]]
        >>> check_points([[1]], "f.json: image 'a.png'")
        Traceback (most recent call last):
        ...
        detloss.app.data._common.AnnotationError: f.json: image 'a.png', point 0: expected [x, y] with finite numbers, got [1]
    """
    if not isinstance(value, list):
        raise AnnotationError(
            f"{where}: expected a list of [x, y] points, got {type(value).__name__}"
        )
    for k, p in enumerate(value):
        if not (isinstance(p, list) and len(p) == 2 and all(is_number(v) for v in p)):
            raise AnnotationError(
                f"{where}, point {k}: expected [x, y] with finite numbers, got {p!r}"
            )
    return value


# ----------------------------------------------------------------------------- image paths


def check_image_name(name: object, where: str) -> str:
    """The normalised relative POSIX path of an image name read from an annotation.

    Raises:
        AnnotationError: ``name`` is not a non-empty string, is absolute (``/x``,
            ``C:\\x``, ``\\\\server``), or leaves its folder through ``..``.
    """
    if not isinstance(name, str) or not name:
        raise AnnotationError(f"{where}: expected a non-empty image path, got {name!r}")
    if "\x00" in name:
        raise AnnotationError(f"{where}: image path {name!r} contains a NUL character")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise AnnotationError(
            f"{where}: image path {name!r} is absolute; expected a path relative to the "
            "image folder"
        )
    norm = posixpath.normpath(posix)
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise AnnotationError(
            f"{where}: image path {name!r} leaves the image folder; expected a path inside it"
        )
    return norm


def open_regular_file(
    path: Path, root: Path | None = None, where: str = "", what: str = "image"
) -> BinaryIO:
    """Open ``path`` for reading, refusing what is not a regular file without blocking.

    With ``root``, the path after resolving symlinks must lie inside ``root`` (resolved
    too). The file is opened non-blocking and checked with ``fstat`` on the opened
    descriptor, so a FIFO is refused at once and a file swapped after a check cannot be
    read instead.
    """
    path = Path(path)
    suffix = f" ({where})" if where else ""
    real = os.path.realpath(path)
    if root is not None:
        real_root = os.path.realpath(root)
        if os.path.commonpath([real_root, real]) != real_root:
            raise AnnotationError(
                f"{path}: resolves to {real}, outside the image folder {real_root}{suffix}"
            )
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found{suffix}") from None
    except OSError as err:
        raise AnnotationError(f"{path}: {what} cannot be opened{suffix}: {err.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a device or socket"
            if stat.S_ISFIFO(mode):
                kind = "a FIFO"
            elif stat.S_ISDIR(mode):
                kind = "a folder"
            raise AnnotationError(f"{path}: {what} is {kind}, not a regular file{suffix}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# ----------------------------------------------------------------------------- images


def require_pil():
    """``(PIL.Image, PIL.ImageDraw)``, or an ``ImportError`` saying how to install Pillow."""
    required_module(
        "PIL.ImageDraw",
        "detloss.app.data needs Pillow to read and write images: pip install 'detloss[demo]'",
    )
    from PIL import Image, ImageDraw

    return Image, ImageDraw


def _exif_orientation(img) -> int:
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block: the stored frame, as viewers do
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


class _OpenImage:
    """``with _OpenImage(...) as img``: a header-checked, lazily decoded Pillow image."""

    def __init__(self, path: Path, root: Path | None, where: str, max_pixels: int | None):
        self.path, self.root, self.where, self.max_pixels = Path(path), root, where, max_pixels

    def __enter__(self):
        Image, _ = require_pil()
        from PIL import UnidentifiedImageError

        self.file = open_regular_file(self.path, self.root, self.where)
        try:
            self.img = Image.open(self.file)
        except Image.DecompressionBombError as err:
            self.file.close()
            raise AnnotationError(
                f"{self.path}: image too large ({self.where}): {err}; Pillow refuses "
                "it before decoding (raise PIL.Image.MAX_IMAGE_PIXELS to allow it)"
            ) from None
        except UnidentifiedImageError:
            self.file.close()
            raise AnnotationError(
                f"{self.path}: unreadable image ({self.where}): not an image format Pillow reads"
            ) from None
        except (OSError, ValueError, SyntaxError) as err:
            self.file.close()
            raise AnnotationError(f"{self.path}: unreadable image ({self.where}): {err}") from None
        w, h = self.img.size
        if self.max_pixels is not None and w * h > self.max_pixels:
            self.__exit__()
            raise AnnotationError(
                f"{self.path}: image of width {w} and height {h} ({w * h:,} pixels) is above "
                f"the pixel budget max_pixels={self.max_pixels:,} ({self.where}); pass a "
                "larger max_pixels to read it"
            )
        return self.img

    def __exit__(self, *exc: object) -> None:
        self.img.close()
        self.file.close()


def exif_orientation(path: Path, where: str, *, root: Path | None = None) -> int:
    """The EXIF orientation tag of an image (1 when absent), read from the header."""
    with _OpenImage(path, root, where, None) as img:
        return _exif_orientation(img)


def _to_float_rgb(img) -> np.ndarray:
    """``uint8[H, W, 3]`` (8-bit modes) or ``float32[H, W, 3]`` in [0, 1] (16-bit and float
    modes, keeping their precision) from any Pillow mode."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grayscale (PNG, TIFF); Pillow gives some 16-bit PNGs as 32-bit "I".
        gray = np.asarray(img).astype(np.float32) / 65535.0
        gray = np.clip(gray, 0.0, 1.0)
    elif mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    else:
        return np.array(img.convert("RGB"))  # writable uint8, scaled once in torch
    return np.repeat(gray[:, :, None], 3, axis=2)


@dataclass(frozen=True)
class ImageAccess:
    """How a dataset opens its images: confined to a folder, within a pixel budget, in the
    stored or the EXIF-rotated frame. Paths, file types and the budget are checked from
    the header before any pixel is decoded; every failure is one :class:`AnnotationError`
    naming the image and ``where`` (the record that names it).

    Attributes:
        root: when given, the resolved file must lie inside this folder.
        max_pixels: refuse images with more pixels than this (checked from the header,
            before decoding); ``None``: no budget beyond Pillow's own limit.
        exif: rotate and flip by the EXIF orientation tag (the frame photo viewers show);
            ``False``: the stored pixels, as COCO tools and MATLAB read them.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> folder = Path(tempfile.mkdtemp())
        >>> Image.new("L", (30, 20), 255).save(folder / "a.png")
        >>> access = ImageAccess(root=folder, max_pixels=1000)
        >>> access.size(folder / "a.png", "image 'a.png'")
        (20, 30)
        >>> image = access.load(folder / "a.png", "image 'a.png'")
        >>> image.shape, image.dtype, float(image.max())
        (torch.Size([3, 20, 30]), torch.float32, 1.0)
    """

    root: Path | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    exif: bool = False

    def size(self, path: Path, where: str) -> tuple[int, int]:
        """``(height, width)`` from the image header only (after the EXIF rotation if
        :attr:`exif`)."""
        with _OpenImage(path, self.root, where, self.max_pixels) as img:
            w, h = img.size
            if self.exif and _exif_orientation(img) in _TRANSPOSING_ORIENTATIONS:
                w, h = h, w
        return h, w

    def load(self, path: Path, where: str) -> Tensor:
        """An RGB image as ``float32[3, H, W]`` in [0, 1]. 8-bit images are divided by
        255, 16-bit grayscale by 65535; grayscale and palette images are repeated to
        three channels."""
        from PIL import Image, ImageOps

        with _OpenImage(path, self.root, where, self.max_pixels) as img:
            try:
                if self.exif:
                    img = ImageOps.exif_transpose(img)
                pixels = _to_float_rgb(img)
            except Image.DecompressionBombError as err:
                raise AnnotationError(f"{path}: image too large ({where}): {err}") from None
            except (OSError, ValueError, SyntaxError) as err:
                raise AnnotationError(f"{path}: unreadable image ({where}): {err}") from None
        image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        return image.float().div_(255.0) if image.dtype == torch.uint8 else image


def load_image(
    path: Path,
    where: str,
    *,
    root: Path | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    exif: bool = False,
) -> Tensor:
    """An RGB image as ``float32[3, H, W]`` in [0, 1] (see :class:`ImageAccess`, whose
    attributes the keywords are); ``where`` names the record in errors.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> path = Path(tempfile.mkdtemp()) / "a.png"
        >>> Image.new("RGB", (3, 2), (255, 0, 0)).save(path)
        >>> load_image(path, "test")[:, 0, 0].tolist()
        [1.0, 0.0, 0.0]
    """
    return ImageAccess(root, max_pixels, exif).load(path, where)


# ----------------------------------------------------------------------------- counting


def unique_rows(rows: list[tuple]) -> list[int]:
    """Indices of the first occurrence of every distinct row, in order."""
    seen: set[tuple] = set()
    keep: list[int] = []
    for k, row in enumerate(rows):
        if row not in seen:
            seen.add(row)
            keep.append(k)
    return keep


def warn_dropped(path: Path | str, counts: dict[str, int], stacklevel: int = 3) -> None:
    """One warning listing how many records were dropped and why; a reason ending in
    ``" (kept)"`` is listed as kept instead."""
    dropped = [f"{n} {why}" for why, n in counts.items() if n and not why.endswith(" (kept)")]
    kept = [f"{n} {why[:-7]}" for why, n in counts.items() if n and why.endswith(" (kept)")]
    parts = (["dropped " + ", ".join(dropped)] if dropped else []) + (
        ["kept " + ", ".join(kept)] if kept else []
    )
    if parts:
        warnings.warn(f"{path}: " + "; ".join(parts), UserWarning, stacklevel=stacklevel)
