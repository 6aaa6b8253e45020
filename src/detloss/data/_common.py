"""Image loading and error reporting shared by the readers."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["AnnotationError", "image_size", "load_image", "read_json", "warn_dropped"]


class AnnotationError(ValueError):
    """A malformed annotation file or record; the message names the file and the record."""


def read_json(path: Path) -> object:
    import json

    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None


def load_image(path: Path, where: str) -> Tensor:
    """An RGB image as ``float32[3, H, W]`` in [0, 1]; ``where`` names the record in errors."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:  # pragma: no cover - pillow is a demo dependency
        raise ImportError(
            "detloss.data needs Pillow to read images: pip install 'detloss[demo]'"
        ) from err
    try:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image not found ({where})") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise AnnotationError(f"{path}: unreadable image ({where}): {err}") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)


def image_size(path: Path, where: str) -> tuple[int, int]:
    """``(height, width)`` from the image header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image not found ({where})") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise AnnotationError(f"{path}: unreadable image ({where}): {err}") from None
    return h, w


def warn_dropped(path: Path, counts: dict[str, int]) -> None:
    """One warning listing how many records were dropped and why."""
    parts = [f"{n} {why}" for why, n in counts.items() if n]
    if parts:
        warnings.warn(f"{path}: dropped " + ", ".join(parts), UserWarning, stacklevel=3)
