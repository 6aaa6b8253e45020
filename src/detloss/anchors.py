"""SSD default boxes (priors) and the variance-scaled box coder.

Coordinate rules: priors are ``Tensor[P, 4]`` in ``cxcywh`` normalised to the image
(0..1 on both axes); ground-truth and decoded boxes are ``xyxy`` in the same normalised
units. Offsets are ``Tensor[..., 4]`` ``(dx, dy, dw, dh)``:

    dx = (cx_g - cx_p) / (v_xy * w_p)        dw = log(w_g / w_p) / v_wh
    dy = (cy_g - cy_p) / (v_xy * h_p)        dh = log(h_g / h_p) / v_wh

with ``variances = (v_xy, v_wh)`` (SSD: 0.1 and 0.2). Priors must have positive width
and height.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import check_broadcastable, check_shape, compute_dtype, output_dtype, shape_str

# check_ssd_inputs and check_variances are shared with the SSD loss and decoder, not
# re-exported: they are input checks, not part of the user-facing API.
__all__ = ["BoxCoder", "decode_boxes", "encode_boxes", "ssd_priors"]

#: Lower clamp of the ground-truth / prior size ratio in :func:`encode_boxes`. A box of
#: zero (or negative) width or height encodes to ``log(1e-6) / v_wh`` (about -69 with
#: ``v_wh = 0.2``) instead of ``-inf``.
MIN_SIZE_RATIO = 1e-6

#: Upper clamp of the scaled size offset ``dw * v_wh`` in :func:`decode_boxes`: a decoded
#: box is at most 1000 / 16 = 62.5 times its prior (torchvision's limit), so extreme
#: offsets give large but finite boxes instead of ``inf``.
MAX_SIZE_LOG = math.log(1000.0 / 16)


def _positive_ints(value: object, name: str) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"{name} must be a sequence of ints, got {type(value).__name__}")
    out = tuple(value)
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected positive ints, got {out}")
    return out


def _positive_numbers(value: object, name: str) -> tuple[float, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(value).__name__}")
    out = tuple(value)
    for v in out:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name}: expected positive numbers, got {out}")
    return tuple(float(v) for v in out)


def ssd_priors(
    image_size: float = 300,
    feature_maps: Sequence[int] = (38, 19, 10, 5, 3, 1),
    steps: Sequence[float] = (8, 16, 32, 64, 100, 300),
    min_sizes: Sequence[float] = (30, 60, 111, 162, 213, 264),
    max_sizes: Sequence[float] | None = (60, 111, 162, 213, 264, 315),
    aspect_ratios: Sequence[Sequence[float]] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    clip: bool = True,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The SSD default boxes -> ``Tensor[P, 4]`` in normalised ``cxcywh``.

    The defaults are SSD300 (VOC): 8732 priors. Level ``k`` is a square
    ``feature_maps[k] x feature_maps[k]`` grid whose cell ``(i, j)`` (row ``i``, column
    ``j``) has its centre at ``((j + 0.5) * steps[k], (i + 0.5) * steps[k]) / image_size``.
    Each cell holds, in this order:

    1. a square of side ``s = min_sizes[k] / image_size``;
    2. a square of side ``sqrt(s * max_sizes[k] / image_size)`` (skipped when
       ``max_sizes`` is None);
    3. for each ratio ``r`` of ``aspect_ratios[k]``: a box ``(s * sqrt(r), s / sqrt(r))``
       then its transpose ``(s / sqrt(r), s * sqrt(r))``.

    Levels are concatenated in order, cells row-major inside a level: the order in which a
    head output ``[B, A * 4, H, W]`` flattens after ``permute(0, 2, 3, 1)``, as in the
    original SSD. With ``clip`` every component is clamped to ``[0, 1]`` (as the original
    implementation does: sizes above 1, e.g. the 1.24-wide ratio-2 box of the last SSD300
    level, become 1; centres already lie in the image). The values are computed in float64
    and returned in ``dtype``.

    Args:
        image_size: side of the (square) input image, in the units of ``steps`` and sizes.
        feature_maps: grid side of each level.
        steps: distance between neighbouring cell centres of each level.
        min_sizes, max_sizes: sizes of the small and big squares of each level.
        aspect_ratios: the ratios ``r > 0`` of each level (each adds two boxes).
        clip: clamp the components to ``[0, 1]``.
        device, dtype: of the result.

    Shape:
        - output: ``[P, 4]``, ``P = sum_k feature_maps[k]**2 * boxes per cell``.

    Example:
        >>> ssd_priors().shape
        torch.Size([8732, 4])
        >>> ssd_priors(100, (1,), (100,), (50,), None, ((),))  # one centred square
        tensor([[0.5000, 0.5000, 0.5000, 0.5000]])
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, float)) or image_size <= 0:
        raise ValueError(f"image_size: expected a positive number, got {image_size!r}")
    fmaps = _positive_ints(feature_maps, "feature_maps")
    levels = len(fmaps)
    lists: dict[str, tuple[float, ...]] = {
        "steps": _positive_numbers(steps, "steps"),
        "min_sizes": _positive_numbers(min_sizes, "min_sizes"),
    }
    if max_sizes is not None:
        lists["max_sizes"] = _positive_numbers(max_sizes, "max_sizes")
    if not isinstance(aspect_ratios, Sequence) or isinstance(aspect_ratios, str):
        raise TypeError(
            f"aspect_ratios must be a sequence of sequences, got {type(aspect_ratios).__name__}"
        )
    ratios = [_positive_numbers(r, f"aspect_ratios[{k}]") for k, r in enumerate(aspect_ratios)]
    for name, values in (*lists.items(), ("aspect_ratios", ratios)):
        if len(values) != levels:
            raise ValueError(
                f"{name}: expected {levels} entries (one per feature map), got {len(values)}"
            )

    parts = []
    for k, f in enumerate(fmaps):
        s = lists["min_sizes"][k] / image_size
        sizes = [(s, s)]
        if max_sizes is not None:
            big = math.sqrt(s * lists["max_sizes"][k] / image_size)
            sizes.append((big, big))
        for r in ratios[k]:
            sizes.append((s * math.sqrt(r), s / math.sqrt(r)))
            sizes.append((s / math.sqrt(r), s * math.sqrt(r)))
        wh = torch.tensor(sizes, dtype=torch.float64, device=device)  # [A, 2]
        centres = (torch.arange(f, dtype=torch.float64, device=device) + 0.5) * (
            lists["steps"][k] / image_size
        )
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        xy = torch.stack((cx, cy), dim=-1).reshape(f * f, 1, 2).expand(-1, len(sizes), -1)
        parts.append(torch.cat((xy, wh.expand(f * f, -1, -1)), dim=-1).reshape(-1, 4))
    priors = torch.cat(parts)
    if clip:
        priors = priors.clamp(0.0, 1.0)
    return priors.to(dtype)


def check_ssd_inputs(loc: Tensor, conf: Tensor, priors: Tensor) -> None:
    """Shapes of SSD head outputs ``loc [B, P, 4]``, ``conf [B, P, C >= 2]`` and their
    ``priors [P, 4]``, for the loss and the detector."""
    check_shape(loc, "loc", ndim=3, last=4, expected="[B, P, 4]")
    check_shape(conf, "conf", ndim=3, expected="[B, P, C]")
    check_shape(priors, "priors", ndim=2, last=4, expected="[P, 4]")
    b, p = loc.shape[:2]
    if conf.shape[:2] != loc.shape[:2] or conf.shape[2] < 2:
        raise ValueError(
            f"conf: expected shape [{b}, {p}, C] with C >= 2 (background + classes), "
            f"got {shape_str(conf.shape)}"
        )
    if priors.shape[0] != p:
        raise ValueError(
            f"priors: expected shape [{p}, 4] (one per prediction), got {shape_str(priors.shape)}"
        )


def check_variances(variances: object) -> tuple[float, float]:
    """``variances`` as the pair ``(v_xy, v_wh)`` of positive finite floats, for the box
    coder, the SSD loss and the detector; a TypeError or ValueError naming it otherwise."""
    if not isinstance(variances, Sequence) or isinstance(variances, str):
        raise TypeError(
            f"variances must be a pair of numbers (v_xy, v_wh), got {type(variances).__name__}"
        )
    values = tuple(variances)
    if len(values) != 2 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise ValueError(f"variances: expected two positive numbers (v_xy, v_wh), got {values}")
    return float(values[0]), float(values[1])


def _coder_inputs(
    x: Tensor, priors: Tensor, name: str, variances: object
) -> tuple[Tensor, Tensor, float, float]:
    """What encoding and decoding both check first: ``x`` (named ``name``) and the priors
    as broadcastable ``[..., 4]`` tensors in the compute dtype, and the variances."""
    check_shape(x, name, min_ndim=1, last=4, expected="[..., 4]")
    check_shape(priors, "priors", min_ndim=1, last=4, expected="[..., 4]")
    check_broadcastable(x, priors, f"{name} and priors", "[..., 4]")
    v_xy, v_wh = check_variances(variances)
    dtype = compute_dtype(x, priors)
    return x.to(dtype), priors.to(dtype), v_xy, v_wh


def encode_boxes(boxes: Tensor, priors: Tensor, variances: Sequence[float] = (0.1, 0.2)) -> Tensor:
    """Offsets of ``xyxy`` boxes relative to ``cxcywh`` priors (see the module docstring).

    Args:
        boxes: ``Tensor[..., 4]`` ground truth in ``xyxy``.
        priors: ``Tensor[..., 4]`` in ``cxcywh``, broadcastable with ``boxes`` (e.g.
            ``[B, P, 4]`` boxes with ``[P, 4]`` priors).
        variances: ``(v_xy, v_wh)``.

    Returns:
        ``Tensor[broadcast, 4]`` offsets ``(dx, dy, dw, dh)``. A box of zero or negative
        width (height) has its size ratio clamped at ``MIN_SIZE_RATIO = 1e-6``, so the
        offset is finite (and its gradient zero) instead of ``-inf``. Integer and half
        inputs are computed in float32.

    Shape:
        - boxes: ``[..., 4]``; priors: ``[..., 4]``, broadcastable.
        - output: the broadcast ``[..., 4]``.

    Example:
        >>> priors = torch.tensor([[0.5, 0.5, 0.25, 0.25]])
        >>> encode_boxes(torch.tensor([[0.5, 0.375, 0.75, 0.625]]), priors)
        tensor([[5., 0., 0., 0.]])
    """
    b, p, v_xy, v_wh = _coder_inputs(boxes, priors, "boxes", variances)
    centre = (b[..., :2] + b[..., 2:]) / 2
    size = b[..., 2:] - b[..., :2]
    d_xy = (centre - p[..., :2]) / (v_xy * p[..., 2:])
    d_wh = torch.log((size / p[..., 2:]).clamp(min=MIN_SIZE_RATIO)) / v_wh
    return torch.cat((d_xy, d_wh), dim=-1).to(output_dtype(boxes, priors))


def decode_boxes(
    offsets: Tensor, priors: Tensor, variances: Sequence[float] = (0.1, 0.2)
) -> Tensor:
    """Invert :func:`encode_boxes`: offsets and ``cxcywh`` priors -> ``xyxy`` boxes.

    Args:
        offsets: ``Tensor[..., 4]`` ``(dx, dy, dw, dh)``, e.g. a head's ``[B, P, 4]``.
        priors: ``Tensor[..., 4]`` in ``cxcywh``, broadcastable with ``offsets``.
        variances: ``(v_xy, v_wh)``.

    The scaled size offset ``dw * v_wh`` is clamped at ``MAX_SIZE_LOG = log(1000 / 16)``
    (a box at most 62.5 times its prior), so huge offsets stay finite; below that the
    decode is the exact inverse of the encode. Integer and half inputs are computed in
    float32 and returned in the floating input dtype.

    Shape:
        - offsets: ``[..., 4]``; priors: ``[..., 4]``, broadcastable.
        - output: the broadcast ``[..., 4]`` (``xyxy``).

    Example:
        >>> priors = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
        >>> decode_boxes(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), priors)
        tensor([[0.4200, 0.4000, 0.6200, 0.6000]])
    """
    d, p, v_xy, v_wh = _coder_inputs(offsets, priors, "offsets", variances)
    centre = p[..., :2] + d[..., :2] * v_xy * p[..., 2:]
    size = p[..., 2:] * torch.exp((d[..., 2:] * v_wh).clamp(max=MAX_SIZE_LOG))
    return torch.cat((centre - size / 2, centre + size / 2), dim=-1).to(
        output_dtype(offsets, priors)
    )


class BoxCoder:
    """SSD's box coder: stores the variances and calls :func:`encode_boxes` /
    :func:`decode_boxes`.

    ``encode(boxes_xyxy, priors_cxcywh)`` and ``decode(offsets, priors_cxcywh)``
    broadcast over leading dimensions (a batch ``[B, P, 4]`` against ``[P, 4]`` priors).

    Args:
        variances: ``(v_xy, v_wh)``, SSD's ``(0.1, 0.2)`` by default.

    Shape:
        - encode: boxes ``[..., 4]``, priors ``[..., 4]`` -> offsets ``[..., 4]``.
        - decode: offsets ``[..., 4]``, priors ``[..., 4]`` -> boxes ``[..., 4]``.

    Example:
        >>> coder = BoxCoder()
        >>> priors = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
        >>> boxes = torch.tensor([[0.4, 0.4, 0.6, 0.7]])
        >>> coder.decode(coder.encode(boxes, priors), priors)
        tensor([[0.4000, 0.4000, 0.6000, 0.7000]])
    """

    def __init__(self, variances: Sequence[float] = (0.1, 0.2)) -> None:
        self.variances = check_variances(variances)

    def encode(self, boxes: Tensor, priors: Tensor) -> Tensor:
        """``xyxy`` boxes -> offsets ``Tensor[..., 4]``."""
        return encode_boxes(boxes, priors, self.variances)

    def decode(self, offsets: Tensor, priors: Tensor) -> Tensor:
        """Offsets -> ``xyxy`` boxes ``Tensor[..., 4]``."""
        return decode_boxes(offsets, priors, self.variances)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(variances={self.variances})"
