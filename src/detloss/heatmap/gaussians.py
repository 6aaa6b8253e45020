"""Gaussian peaks of CenterNet heatmaps: the radius, the kernel and the drawing.

Coordinate rules are those of :mod:`detloss.heatmap`.
"""

from __future__ import annotations

import math
import operator
from types import ModuleType
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._checks import check_shape, check_tensor, compute_dtype, output_dtype, shape_str
from .._kernels import fast_path

__all__ = ["draw_gaussians", "gaussian_kernel", "gaussian_radius"]

# Radii are grouped into power-of-two classes before drawing; 32 classes cover every radius
# below 2**31, far beyond any heatmap. The first class holds the radii below
# 2**_SMALL_CLASSES.
_RADIUS_CLASSES = 32
_SMALL_CLASSES = 2


def _sparse_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A zero tensor for a map that drawing leaves mostly zero.

    ``torch.zeros`` on a CPU memsets fresh memory page by page: for a batch of 80-class
    heatmaps (84 MB) that is 20,000 page faults, about 30 ms, more than the drawing.
    NumPy's allocator takes large blocks as fresh, already-zero memory (``calloc``) and
    asks for huge pages, so the kernel zeroes only the 2 MiB regions that a gaussian
    touches, once. Other devices and dtypes use ``torch.zeros``.
    """
    np_dtype = _NUMPY_FLOATS.get(dtype)
    if device.type == "cpu" and np_dtype is not None:
        return torch.from_numpy(np.zeros(shape, dtype=np_dtype))
    return torch.zeros(shape, dtype=dtype, device=device)


_NUMPY_FLOATS = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


# --------------------------------------------------------------------------------------
# radius
# --------------------------------------------------------------------------------------


def _radius_cases(
    h: Tensor | float, w: Tensor | float, o: float, legacy: bool, sqrt, clamp0
) -> tuple[Tensor | float, Tensor | float, Tensor | float]:
    """The three candidate radii for height ``h`` and width ``w`` (both >= 0).

    Case 1: one corner shifted inside the box and the other outside by ``r``;
    case 2: both corners shifted inwards; case 3: both shifted outwards. Each is a
    quadratic ``a r^2 + b r + c = 0`` whose admissible root bounds ``r``.
    """
    s = h + w
    p = h * w
    if legacy:
        # The CornerNet / CenterNet expressions: the larger root in cases 1 and 2 and a
        # missing ``1 / a`` factor in every case.
        r1 = (s + sqrt(clamp0(s * s - 4 * p * (1 - o) / (1 + o)))) / 2
        r2 = (2 * s + sqrt(clamp0(4 * s * s - 16 * (1 - o) * p))) / 2
        r3 = (-2 * o * s + sqrt(clamp0(4 * o * o * s * s + 16 * o * (1 - o) * p))) / 2
        return r1, r2, r3
    # The admissible root is the smaller one in cases 1 and 2 and the positive one in
    # case 3. Written as 2c / (|b| + sqrt(disc)) it avoids the cancellation of
    # (|b| - sqrt(disc)) for elongated boxes and needs no division by ``a``.
    c1 = p * (1 - o) / (1 + o)  # r^2 - s r + c1 = 0
    c2 = (1 - o) * p  # 4 r^2 - 2 s r + c2 = 0
    c3 = (1 - o) * p  # 4 o r^2 + 2 o s r - c3 = 0
    r1 = 2 * c1 / _positive(s + sqrt(clamp0(s * s - 4 * c1)))
    r2 = 2 * c2 / _positive(2 * s + sqrt(clamp0(4 * s * s - 16 * c2)))
    r3 = 2 * c3 / _positive(2 * o * s + sqrt(clamp0(4 * o * o * s * s + 16 * o * c3)))
    return r1, r2, r3


def _positive(x: Tensor | float) -> Tensor | float:
    # The denominators vanish only for a box of zero height and width, whose numerators
    # vanish too: clamping gives 0 / tiny = 0 instead of 0 / 0.
    if isinstance(x, Tensor):
        return x.clamp(min=torch.finfo(x.dtype).tiny)
    return max(x, 1e-300)


def gaussian_radius(
    height: Tensor | float,
    width: Tensor | float,
    min_overlap: float = 0.3,
    legacy: bool = False,
) -> Tensor | float:
    """Largest corner displacement ``r`` that keeps a box's IoU with the original box at
    least ``min_overlap``.

    A box of ``height x width`` is compared with boxes whose corners move by ``r`` in
    three ways (one corner in and one out, both in, both out); each case gives a
    quadratic in ``r`` and the radius is the smallest of the three bounds.

    Args:
        height, width: box sizes (on the output grid when used for CenterNet targets);
            Python numbers or broadcastable tensors. Negative sizes count as zero.
        min_overlap: the IoU to guarantee, in (0, 1].
        legacy: False (default) uses the corrected roots. True reproduces the formula of
            the original CornerNet / CenterNet code, which takes the wrong root of the
            first two quadratics and drops the ``1 / (2a)`` factor: its radius is not the
            one that guarantees ``min_overlap`` (at ``min_overlap = 0.3`` it is about
            twice too large for square boxes). Use it only to reproduce published
            results.

    Returns:
        A float for number inputs; otherwise a tensor of the broadcast shape, computed in
        float32 (float64 when an input is float64) and returned in the floating input
        dtype. The radius is real-valued: CenterNet truncates it to an integer.

    Shape:
        - height, width: numbers or broadcastable tensors ``[...]``.
        - output: a float, or the broadcast ``[...]``.

    Example:
        >>> round(gaussian_radius(10.0, 10.0), 4)
        2.2614
        >>> gaussian_radius(torch.tensor([10.0, 20.0]), torch.tensor([10.0, 20.0]))
        tensor([2.2614, 4.5228])
    """
    if isinstance(min_overlap, bool) or not isinstance(min_overlap, (int, float)):
        raise TypeError(f"min_overlap must be a float, got {type(min_overlap).__name__}")
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
    o = float(min_overlap)
    for value, name in ((height, "height"), (width, "width")):
        if isinstance(value, Tensor):
            check_tensor(value, name)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    tensors = [t for t in (height, width) if isinstance(t, Tensor)]
    if not tensors:
        h, w = max(float(height), 0.0), max(float(width), 0.0)
        scale = max(h, w)
        if scale == 0:
            return 0.0
        r = _radius_cases(h / scale, w / scale, o, legacy, math.sqrt, lambda v: max(v, 0.0))
        return min(r) * scale
    try:
        torch.broadcast_shapes(*(t.shape for t in tensors))
    except RuntimeError:
        raise ValueError(
            "height and width: expected broadcastable shapes, got "
            f"{shape_str(torch.as_tensor(height).shape)} and {shape_str(torch.as_tensor(width).shape)}"
        ) from None
    dtype = compute_dtype(*tensors)
    out = output_dtype(*tensors)
    device = tensors[0].device
    # A Python number must not pass through the default dtype on its way in.
    h = torch.as_tensor(height, dtype=dtype, device=device).clamp(min=0)
    w = torch.as_tensor(width, dtype=dtype, device=device).clamp(min=0)
    # The radius is homogeneous of degree 1 in (h, w): solving for the box scaled to a
    # longest side of 1 keeps the squares in the discriminants from overflowing.
    scale = torch.maximum(h, w)
    safe = scale.clamp(min=torch.finfo(dtype).tiny)
    r1, r2, r3 = _radius_cases(h / safe, w / safe, o, legacy, torch.sqrt, lambda v: v.clamp(min=0))
    return (torch.minimum(torch.minimum(r1, r2), r3) * scale).to(out)


# --------------------------------------------------------------------------------------
# kernel
# --------------------------------------------------------------------------------------


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None


def gaussian_kernel(
    radius: int,
    sigma: float | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The ``(2r + 1) x (2r + 1)`` CenterNet kernel ``exp(-(dx^2 + dy^2) / (2 sigma^2))``.

    Args:
        radius: integer ``r >= 0``; ``r = 0`` gives ``[[1]]``.
        sigma: standard deviation in cells, > 0; default ``(2r + 1) / 6`` (a sixth of the
            diameter, so the window spans three sigmas each side).
        dtype: a floating dtype. Values are computed in float64 and rounded once to it.
        device: where the kernel is created.

    Returns:
        ``Tensor[2r + 1, 2r + 1]`` with 1 at the centre; entries below ``eps x max``
        (``eps = torch.finfo(dtype).eps``; the maximum is 1) are set to exactly 0.

    Shape:
        - output: ``[2r + 1, 2r + 1]``.

    Example:
        >>> gaussian_kernel(1)
        tensor([[0.0183, 0.1353, 0.0183],
                [0.1353, 1.0000, 0.1353],
                [0.0183, 0.1353, 0.0183]])
    """
    r = _as_int(radius, "radius")
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    if sigma is None:
        sigma = (2 * r + 1) / 6
    elif isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise TypeError(f"sigma must be a float or None, got {type(sigma).__name__}")
    elif not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    offsets = torch.arange(-r, r + 1, dtype=torch.float64, device=device)
    d2 = offsets[:, None] * offsets[:, None] + offsets[None, :] * offsets[None, :]
    values = torch.exp(-d2 / (2 * float(sigma) * float(sigma)))
    values = values.masked_fill(values < torch.finfo(dtype).eps * values.max(), 0)
    return values.to(dtype)


# --------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------


class _Objects(NamedTuple):
    """The ``n`` objects to draw: each one's flat plane offset inside the map (``plane``,
    its channel's ``[H, W]`` plane), centre cell (``cx``, ``cy``), radius, and whether it
    is drawn at all (``valid``); ``int64[n]`` each but ``valid: bool[n]``."""

    plane: Tensor
    cx: Tensor
    cy: Tensor
    radius: Tensor
    valid: Tensor

    def take(self, index: Tensor) -> _Objects:
        """The objects at ``index``."""
        return _Objects(*(field[index] for field in self))


def _draw_window(
    flat: Tensor, objects: _Objects, lowest: int, window: int, height: int, width: int
) -> None:
    """Max-scatter the default-sigma kernels of ``m`` objects whose radii lie in
    ``[lowest, window]``.

    Each object gets a ``(2 * window + 1)^2`` block of candidate cells (cropped to the map size);
    cells outside its own radius, outside the map, or of an invalid object carry ``-inf``
    and a clamped in-range index, so they leave the map unchanged.
    """
    plane, cx, cy, radius, valid = objects
    device = flat.device
    wy = min(window, height - 1)
    wx = min(window, width - 1)
    dy = torch.arange(-wy, wy + 1, device=device)[:, None]  # [h, 1]
    dx = torch.arange(-wx, wx + 1, device=device)[None, :]  # [1, w]
    x = cx[:, None, None] + dx  # [m, 1, w]
    y = cy[:, None, None] + dy  # [m, h, 1]
    # Same float64 expression as gaussian_kernel, so drawing equals pasting its kernel:
    # once per radius of the class when there are fewer radii than objects.
    per_radius = window - lowest + 1 < radius.numel()
    r = torch.arange(lowest, window + 1, device=device) if per_radius else radius
    r = r[:, None, None]
    sigma = (2 * r + 1).to(torch.float64) / 6
    d2 = (dx * dx + dy * dy).to(torch.float64)
    values = torch.exp_(-d2 / (2 * sigma * sigma))
    values = values.masked_fill_(values < torch.finfo(flat.dtype).eps, 0).to(flat.dtype)
    values = values.masked_fill_((dx.abs() > r) | (dy.abs() > r), -math.inf)
    if per_radius:
        values = values.index_select(0, radius - lowest)
    # Rows and columns outside the map are rejected separately; only their union is
    # window-sized.
    out_x = (x < 0) | (x >= width)
    out_y = (y < 0) | (y >= height) | ~valid[:, None, None]
    values = values.masked_fill_(out_y | out_x, -math.inf)
    index = plane[:, None, None] + y.clamp(0, height - 1) * width + x.clamp(0, width - 1)
    flat.scatter_reduce_(0, index.reshape(-1), values.reshape(-1), "amax", include_self=True)


_COMPILED_DTYPES = (torch.float32, torch.float64)


def _compiled_kernel(flat: Tensor) -> ModuleType | None:
    """The compiled drawing loop for a CPU float32 / float64 map outside autograd, or None."""
    if flat.dtype not in _COMPILED_DTYPES or flat.requires_grad:
        return None
    return fast_path("gaussians", flat.device)


def _scatter_gaussians(flat: Tensor, objects: _Objects, height: int, width: int) -> None:
    """Draw ``n`` objects into ``flat`` in place, grouping radii into power-of-two classes.

    One window size for all objects would cost ``n (2 r_max + 1)^2`` cells: a single large
    object would make every small one pay for its window. Classes ``[2^(k-1), 2^k - 1]``
    bound the waste to about 4x per object at the price of one host read of the histogram.
    Radii up to 3 share one class: their windows are tiny, and each class costs a fixed
    number of operations.
    """
    if objects.radius.numel() == 0:
        return
    kernel = _compiled_kernel(flat)
    if kernel is not None:
        kernel.draw_into(
            flat.numpy(),
            *(t.numpy() for t in objects),
            height,
            width,
            torch.finfo(flat.dtype).eps,
        )
        return
    valid = objects.valid & (objects.radius >= 0)  # a negative radius draws nothing
    r = torch.where(valid, objects.radius, 0)
    objects = objects._replace(radius=r, valid=valid)
    powers = torch.pow(2, torch.arange(_SMALL_CLASSES, _RADIUS_CLASSES - 1, device=r.device))
    cls = (r[:, None] >= powers).sum(dim=1)  # 0 for r < 4, k for 2^(k+1) <= r < 2^(k+2)
    counts = torch.bincount(cls, minlength=_RADIUS_CLASSES)
    largest = torch.zeros(_RADIUS_CLASSES, dtype=r.dtype, device=r.device)
    largest = largest.scatter_reduce(0, cls, r, "amax", include_self=True)
    order = torch.argsort(cls, stable=True)
    host_counts, host_largest = torch.stack((counts, largest)).tolist()
    start = 0
    for k, (count, window) in enumerate(zip(host_counts, host_largest)):
        if count == 0:
            continue
        sel = order[start : start + count]
        start += count
        lowest = 0 if k == 0 else 2 ** (k + _SMALL_CLASSES - 1)
        _draw_window(flat, objects.take(sel), lowest, window, height, width)


def _int_tensor(x: object, name: str) -> Tensor:
    x = check_tensor(x, name)
    # An empty tensor carries no values to misread; torch.tensor([]) is float by default.
    if x.numel() and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
    return x.long()


def draw_gaussians(
    heatmap: Tensor,
    centers: Tensor,
    radii: Tensor | int,
    labels: Tensor | None = None,
    *,
    validate: bool = True,
) -> Tensor:
    """Draw one gaussian per object into ``heatmap`` **in place**, by element-wise max.

    Each object pastes :func:`gaussian_kernel` of its radius (default sigma) centred on its
    cell, cropped at the borders, keeping the larger of the kernel and what is already
    there. The result equals pasting the objects one after another in any order; all
    objects are drawn at once by a max-scatter into the flattened map.

    Args:
        heatmap: ``Tensor[H, W]`` or ``Tensor[C, H, W]``, floating, modified in place
            (float16/bfloat16 maps receive the float64 kernel rounded once).
        centers: ``int[n, 2]`` cells as ``(x, y)``.
        radii: ``int[n]`` (or one int for all), >= 0.
        labels: ``int[n]`` channel of each object, in ``0..C-1``; required for a
            ``[C, H, W]`` map and not allowed for ``[H, W]``.
        validate: check that radii are >= 0, centres inside the map and labels in range
            (one host synchronisation). With False nothing is checked: a negative radius
            draws nothing and a centre outside the map draws only the part of its kernel
            that falls inside.

    Returns:
        ``heatmap`` itself.

    Shape:
        - heatmap: ``[H, W]`` or ``[C, H, W]``.
        - centers: ``[n, 2]``; radii, labels: ``[n]``.
        - output: the heatmap's shape.

    Example:
        >>> heatmap = torch.zeros(3, 4)
        >>> draw_gaussians(heatmap, torch.tensor([[1, 1]]), 1)
        tensor([[0.0183, 0.1353, 0.0183, 0.0000],
                [0.1353, 1.0000, 0.1353, 0.0000],
                [0.0183, 0.1353, 0.0183, 0.0000]])
    """
    check_shape(heatmap, "heatmap", ndim=(2, 3), expected="[H, W] or [C, H, W]")
    if not heatmap.is_floating_point():
        raise TypeError(f"heatmap must be a floating tensor, got {heatmap.dtype}")
    centers = _int_tensor(
        check_shape(centers, "centers", ndim=2, last=2, expected="[n, 2]"), "centers"
    )
    n = centers.shape[0]
    if isinstance(radii, Tensor):
        radii = _int_tensor(radii, "radii")
        if radii.ndim == 0:
            radii = radii.expand(n)
        elif radii.shape != (n,):
            raise ValueError(
                f"radii: expected shape [{n}] (one per centre), got {shape_str(radii.shape)}"
            )
    else:
        radii = torch.full((n,), _as_int(radii, "radii"), dtype=torch.long)
    height, width = heatmap.shape[-2:]
    if heatmap.ndim == 3:
        if labels is None:
            raise ValueError("labels: required for a [C, H, W] heatmap, got None")
        labels = _int_tensor(labels, "labels")
        if labels.shape != (n,):
            raise ValueError(
                f"labels: expected shape [{n}] (one per centre), got {shape_str(labels.shape)}"
            )
    elif labels is not None:
        raise ValueError(
            f"labels: only allowed with a [C, H, W] heatmap, got heatmap shape {shape_str(heatmap.shape)}"
        )
    device = heatmap.device
    centers, radii = centers.to(device), radii.to(device)
    cx, cy = centers.unbind(-1)
    channels = heatmap.shape[0] if heatmap.ndim == 3 else 1
    if validate and n:
        checks = [(radii < 0).any(), ((cx < 0) | (cx >= width) | (cy < 0) | (cy >= height)).any()]
        if labels is not None:
            labels = labels.to(device)
            checks.append(((labels < 0) | (labels >= channels)).any())
        bad = torch.stack(checks).tolist()
        if bad[0]:
            raise ValueError(f"radii: expected values >= 0, got minimum {int(radii.min())}")
        if bad[1]:
            i = int(((cx < 0) | (cx >= width) | (cy < 0) | (cy >= height)).nonzero()[0, 0])
            raise ValueError(
                f"centers: expected (x, y) inside the {height} x {width} map "
                f"(0 <= x < {width}, 0 <= y < {height}), got {centers[i].tolist()} at index {i}"
            )
        if len(bad) > 2 and bad[2]:
            raise ValueError(
                f"labels: expected values in [0, {channels - 1}], "
                f"got range [{int(labels.min())}, {int(labels.max())}]"
            )
    if labels is None:
        plane = torch.zeros(n, dtype=torch.long, device=device)
    else:
        plane = labels.to(device).clamp(0, channels - 1) * (height * width)
    if n == 0 or heatmap.numel() == 0:
        return heatmap
    work = heatmap if heatmap.is_contiguous() else heatmap.contiguous()
    valid = torch.ones(n, dtype=torch.bool, device=device)
    _scatter_gaussians(work.view(-1), _Objects(plane, cx, cy, radii, valid), height, width)
    if work is not heatmap:
        heatmap.copy_(work)
    return heatmap
