"""Numbers as the application prints them, JSON without NaN, and atomic text writes."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["format_value", "json_safe", "one_line", "write_json", "write_text_atomic"]


def format_value(value: object) -> str:
    """A metric for a log line: floats with 4 significant digits, NaN and inf as ``n/a``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def json_safe(value: object) -> object:
    """``value`` with its non-finite floats as None (JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def one_line(text: str) -> str:
    """``text`` with its runs of white space (newlines included) as single spaces."""
    return " ".join(str(text).split())


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: a
    reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, value: object, indent: int | None = 1) -> None:
    """``value`` as JSON (non-finite floats as null), written atomically."""
    write_text_atomic(path, json.dumps(json_safe(value), indent=indent))
