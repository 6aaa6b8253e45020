"""What every folder reader shares: the options common to all formats, the counting of
dropped and repeated records, and the building of the dataset from what a format's
parser found.

A format supplies one parser ``parse(root, split, options, **format_options) ->
ParsedSplit``; :func:`split_reader` turns it into the public reader ``read(root, split,
*, tolerance, keep_duplicates, transform, max_pixels, exif, **format_options)``, which
checks the options, warns once about what the parser dropped, and returns
:class:`~detloss.app.data.base.AnnotatedImages`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ._common import DEFAULT_MAX_PIXELS, warn_dropped
from .base import AnnotatedImages, Transform

__all__ = ["ParsedSplit", "ReadOptions", "Repeats", "split_reader"]


@dataclass(frozen=True)
class ReadOptions:
    """The options of every reader that a format's parser needs."""

    tolerance: float
    keep_duplicates: bool
    max_pixels: int | None
    exif: bool


class Repeats:
    """Counts exactly repeated records; drops them unless ``keep`` is set.

    Example:
        >>> repeats = Repeats(keep=False)
        >>> [repeats.skip(key) for key in ("a", "b", "a", "a")]
        [False, False, True, True]
        >>> repeats.count
        2
    """

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.count = 0
        self._seen: set[Hashable] = set()

    def skip(self, key: Hashable) -> bool:
        """Whether the record ``key`` is a repeat to drop (every repeat is counted)."""
        if key in self._seen:
            self.count += 1
            return not self.keep
        self._seen.add(key)
        return False


@dataclass
class ParsedSplit:
    """What a format's parser found in one split (the arguments of
    :class:`~detloss.app.data.base.AnnotatedImages`, and what it dropped).

    ``dropped`` maps a reason to the number of records dropped for it; ``repeated`` names
    the records counted by ``repeats`` (listed as kept under ``keep_duplicates``).
    """

    image_dir: Path
    names: list[str]
    targets: list[dict[str, Tensor]]
    kind: str
    categories: list[str]
    source: Path
    dropped: dict[str, int]
    repeats: Repeats
    repeated: str
    warn_source: Path | None = None
    sizes: Sequence[tuple[int, int] | None] | None = None
    wheres: Sequence[str] | None = None


def check_tolerance(tolerance: float) -> None:
    """Raise ``ValueError`` unless ``tolerance`` is a finite number >= 0."""
    if isinstance(tolerance, bool) or not (
        isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0
    ):
        raise ValueError(f"tolerance: expected a finite number >= 0, got {tolerance!r}")


def split_reader(
    format: str,
    parse: Callable[..., ParsedSplit],
    *,
    tolerance: float = 1.0,
    exif: bool = False,
    doc: str = "",
) -> Callable[..., AnnotatedImages]:
    """The public reader of ``format`` built on its ``parse`` function, with the format's
    default ``tolerance`` and ``exif``; ``doc`` becomes its docstring."""
    default_tolerance, default_exif = tolerance, exif

    def read(
        root: str | Path,
        split: str = "train",
        *,
        tolerance: float = default_tolerance,
        keep_duplicates: bool = False,
        transform: Transform | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        exif: bool = default_exif,
        **format_options: object,
    ) -> AnnotatedImages:
        check_tolerance(tolerance)
        options = ReadOptions(tolerance, keep_duplicates, max_pixels, exif)
        found = parse(Path(root), split, options, **format_options)
        why = found.repeated + (" (kept)" if keep_duplicates else "")
        warn_dropped(found.warn_source or found.source, {**found.dropped, why: found.repeats.count})
        return AnnotatedImages(
            found.image_dir,
            found.names,
            found.targets,
            kind=found.kind,
            categories=found.categories,
            source=found.source,
            wheres=found.wheres,
            sizes=found.sizes,
            transform=transform,
            max_pixels=max_pixels,
            exif=exif,
            format=format,
        )

    # help() and IDEs show the format's own options in place of **format_options.
    shared = inspect.signature(read).parameters.values()
    own = inspect.signature(parse).parameters.values()
    read.__signature__ = inspect.signature(read).replace(  # type: ignore[attr-defined]
        parameters=[p for p in shared if p.kind is not p.VAR_KEYWORD]
        + [p for p in own if p.kind is p.KEYWORD_ONLY]
    )
    read.__name__ = read.__qualname__ = "read_" + format.replace("-", "_")
    read.__doc__ = doc
    read.__module__ = parse.__module__
    return read
