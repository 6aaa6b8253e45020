"""Input validation and dtype helpers shared by every module.

Messages follow one pattern: the argument, what was expected, what was received.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from numbers import Real

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "check_box_values",
    "check_broadcastable",
    "check_choice",
    "check_finite",
    "check_nonnegative",
    "check_reduction",
    "check_shape",
    "check_tensor",
    "compute_dtype",
    "named_entries",
    "named_list_entries",
    "shape_str",
    "should_validate",
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


def check_broadcastable(a: Tensor, b: Tensor, names: str, expected: str) -> torch.Size:
    """The broadcast shape of ``a`` and ``b``; otherwise a ValueError naming ``names``
    (e.g. ``"boxes1 and boxes2"``) with the ``expected`` shapes and the received ones."""
    try:
        return torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(
            f"{names}: expected broadcastable shapes {expected}, "
            f"got {shape_str(a.shape)} and {shape_str(b.shape)}"
        ) from None


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


def should_validate(validate: bool | None, like: object) -> bool:
    """``validate`` resolved: None (the default of every ``validate=`` argument that accepts
    it) means True on the CPU, where a value scan costs no device synchronisation, and
    False on other devices."""
    if validate is None:
        device = getattr(like, "device", None)
        return device is None or device.type == "cpu"
    return bool(validate)


def check_finite(
    *named: tuple[str, object] | tuple[str, object, Tensor | None], allow_posinf: bool = False
) -> None:
    """Raise ValueError naming the first argument that holds NaN, +inf or -inf (``+inf``
    passes with ``allow_posinf``: a cost's forbidden pair).

    Each item is ``(name, tensor)`` or ``(name, tensor, mask)``: ``name`` is the argument
    as the caller passed it (``"pred_logits"``, ``"targets['boxes']"``); ``mask``, a bool
    tensor over the leading dimensions of ``tensor``, limits the check to the real entries
    (padding may hold anything). Integer and bool tensors are finite by construction;
    floating NumPy arrays are checked like tensors; other values, or None, are skipped
    (their own checks name them).

    All tensors are scanned with one host synchronisation; call it only when validating
    (see :func:`should_validate`). The message gives the first bad value and its index.
    """
    items = [(item[0], _as_tensor(item[1]), item[2] if len(item) > 2 else None) for item in named]
    items = [
        (name, x, mask)
        for name, x, mask in items
        if isinstance(x, Tensor) and (x.is_floating_point() or x.is_complex())
    ]
    if not items:
        return
    # A sum is finite when every entry is, and it is one fast reduction (torch.isfinite
    # takes several passes on the CPU); a sum that overflows, or an allowed +inf, falls
    # through to the exact test below, which only a rejected input pays for otherwise.
    sums = [_real_entries(x, mask).sum(dtype=_sum_dtype(x)) for _, x, mask in items]
    device = sums[0].device
    if bool(torch.stack([t.to(device) for t in sums]).isfinite().all()):
        return
    for name, x, mask in items:
        if bool(_masked_finite(x, mask, allow_posinf).all()):
            continue
        index = [int(i) for i in (~_masked_finite(x, mask, allow_posinf)).nonzero()[0].tolist()]
        value = x[tuple(index)].item()
        where = f" at index {index}" if x.ndim else ""
        expected = "finite values or +inf" if allow_posinf else "finite values"
        raise ValueError(f"{name}: expected {expected}, got {value}{where}")


def _as_tensor(x: object) -> object:
    if isinstance(x, np.ndarray) and x.dtype.kind in "fc":
        return torch.from_numpy(x)
    return x


def named_list_entries(items: object, keys: Sequence[str], name: str) -> list[tuple[str, object]]:
    """:func:`named_entries` of each dict in a list (``name[i]['key']``), e.g. per-image
    predictions; anything that is not a list of dicts gives nothing."""
    if not isinstance(items, Sequence) or isinstance(items, str):
        return []
    return [e for i, item in enumerate(items) for e in named_entries(item, keys, f"{name}[{i}]")]


def named_entries(mapping: object, keys: Sequence[str], name: str) -> list[tuple[str, object]]:
    """``(f"{name}[{key!r}]", value)`` for each of ``keys`` that ``mapping`` holds: the
    dict entries to pass to :func:`check_finite`, named as the caller wrote them."""
    if not isinstance(mapping, Mapping):
        return []
    return [(f"{name}[{key!r}]", mapping[key]) for key in keys if key in mapping]


def _real_entries(x: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return x
    return x.masked_fill(~_leading(mask, x), 0)


def _sum_dtype(x: Tensor) -> torch.dtype | None:
    """Half precision sums in float32 (fewer overflows to fall back on); others as they are."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None


def _leading(mask: Tensor, x: Tensor) -> Tensor:
    """``mask`` over the leading dimensions of ``x``, shaped to broadcast against it."""
    mask = mask.to(device=x.device, dtype=torch.bool)
    return mask.reshape(*mask.shape, *([1] * (x.ndim - mask.ndim)))


def _masked_finite(x: Tensor, mask: Tensor | None, allow_posinf: bool = False) -> Tensor:
    """``isfinite(x)`` (``+inf`` too with ``allow_posinf``) with the entries outside
    ``mask`` (over the leading dimensions) counted finite."""
    ok = torch.isfinite(x)
    if allow_posinf:
        ok = ok | (x == torch.inf)
    return ok if mask is None else ok | ~_leading(mask, x)


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
