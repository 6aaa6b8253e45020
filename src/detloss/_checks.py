"""Input validation and dtype helpers shared by every module.

Messages follow one pattern: the argument, what was expected, what was received.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor

__all__ = [
    "check_box_values",
    "check_choice",
    "check_nonnegative",
    "check_reduction",
    "check_shape",
    "check_tensor",
    "compute_dtype",
    "shape_str",
]

REDUCTIONS = ("none", "mean", "sum")


def shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    # Casting to a real dtype would silently drop the imaginary part.
    if x.is_complex():
        raise TypeError(f"{name} must be a real tensor, got {x.dtype}")
    return x


def check_shape(
    x: object,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    min_ndim: int | None = None,
    last: int | None = None,
    expected: str | None = None,
) -> Tensor:
    """Check rank and trailing size of ``x``; ``expected`` is the shape shown in the message."""
    x = check_tensor(x, name)
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    ok = True
    if ndims is not None and x.ndim not in ndims:
        ok = False
    if min_ndim is not None and x.ndim < min_ndim:
        ok = False
    if last is not None and (x.ndim == 0 or x.shape[-1] != last):
        ok = False
    if not ok:
        if expected is None:
            parts = []
            if ndims is not None:
                parts.append(" or ".join(f"{n}-D" for n in ndims))
            if min_ndim is not None:
                parts.append(f"at least {min_ndim}-D")
            if last is not None:
                parts.append(f"last dimension {last}")
            expected = ", ".join(parts)
        raise ValueError(f"{name}: expected shape {expected}, got {shape_str(x.shape)}")
    return x


def check_nonnegative(value: object, name: str) -> float:
    """A finite real number >= 0 (weights, temperatures), returned as a float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(float(value)) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value}")
    return float(value)


def check_choice(value: object, name: str, choices: Sequence[object]) -> None:
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def check_reduction(reduction: object) -> str:
    check_choice(reduction, "reduction", REDUCTIONS)
    return reduction  # type: ignore[return-value]


#: How far past 1 a normalised coordinate may go (rounding, boxes touching the border)
#: before it reads as a pixel coordinate.
NORMALIZED_SLACK = 0.01


# The box-order problems already reported by a warning: each is shown once per process.
_WARNED: set[str] = set()


def check_box_values(
    boxes: Tensor,
    name: str,
    box_format: str = "xyxy",
    mask: Tensor | None = None,
    normalized: bool = False,
    inverted: str = "raise",
) -> None:
    """Catch unit and format mistakes in target boxes ``[..., 4]`` (the real ones where
    ``mask`` says so): inverted ``xyxy`` boxes (``x2 < x1`` or ``y2 < y1``: often
    ``cxcywh`` / ``xywh`` boxes read as ``xyxy``), negative widths or heights in ``xywh``
    / ``cxcywh``, and, with ``normalized``, coordinates above 1 (pixel boxes given where
    normalised ones are expected). Degenerate boxes (zero width or height) pass.

    ``inverted="warn"`` reports inverted boxes by a ``UserWarning`` shown once per process
    (for losses that accept them as data) instead of a ``ValueError``; pixel coordinates
    always raise. It reads values, so it synchronises with the device: call it on validate
    paths only.
    """
    if mask is not None:
        index = mask.nonzero()
        real = boxes[mask]
    else:
        real = boxes.reshape(-1, 4)
        index = None
    if real.numel() == 0:
        return

    def where(bad: Tensor) -> str:
        first = int(bad.nonzero()[0, 0])
        at = f"box {first}" if index is None else "box " + str(index[first].tolist())
        values = [round(float(v), 4) for v in real[first].tolist()]
        return f"{int(bad.sum())} box(es), e.g. {at} = {values}"

    if box_format == "xyxy":
        bad = (real[:, 2] < real[:, 0]) | (real[:, 3] < real[:, 1])
        message = (
            f"{name}: expected xyxy boxes with x1 <= x2 and y1 <= y2 (box_format='xyxy'), "
            "got x2 < x1 or y2 < y1 in {}; if they are cxcywh or xywh boxes, pass that "
            "box_format"
        )
    else:
        bad = (real[:, 2] < 0) | (real[:, 3] < 0)
        message = (
            f"{name}: expected widths and heights >= 0 (box_format={box_format!r}), got a "
            "negative one in {}; if they are xyxy boxes, pass box_format='xyxy'"
        )
    if bool(bad.any()):
        text = message.format(where(bad))
        if inverted == "raise":
            raise ValueError(text)
        key = f"{name} {box_format}"
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(text + " (shown once)", UserWarning, stacklevel=4)
    if normalized:
        bad = (real > 1 + NORMALIZED_SLACK).any(-1)
        if bool(bad.any()):
            raise ValueError(
                f"{name}: expected coordinates normalised to [0, 1] (divided by the image "
                f"width and height), got values above 1 in {where(bad)}: pixel boxes?"
            )


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype to compute in: float64 if any input is float64, else float32.

    Integer, bool, float16 and bfloat16 inputs are computed in float32.
    """
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def output_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype results are returned in: the common floating input dtype, float32 for integers."""
    floats = [t.dtype for t in tensors if t.is_floating_point()]
    if not floats:
        return torch.float32
    dtype = floats[0]
    for d in floats[1:]:
        dtype = torch.promote_types(dtype, d)
    return dtype
