"""Point geometry: pairwise distances and the P2PNet reference points.

Points are ``Tensor[..., 2]`` as (x, y) in pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_shape, compute_dtype, output_dtype

__all__ = ["anchor_points", "pairwise_distance"]


def pairwise_distance(points1: Tensor, points2: Tensor) -> Tensor:
    """Euclidean distances ``[..., N, 2] x [..., M, 2] -> [..., N, M]``.

    Computed from coordinate differences, not the ``|a|^2 + |b|^2 - 2ab`` expansion, so
    distances between nearby points keep full precision. The gradient at a zero distance
    is zero.

    Args:
        points1: ``Tensor[..., N, 2]``.
        points2: ``Tensor[..., M, 2]``, leading dimensions broadcastable with ``points1``'s.

    Shape:
        - points1: ``[..., N, 2]``; points2: ``[..., M, 2]``.
        - output: ``[..., N, M]``.

    Example:
        >>> pairwise_distance(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        tensor([[5., 1.]])
    """
    check_shape(points1, "points1", min_ndim=2, last=2, expected="[..., N, 2]")
    check_shape(points2, "points2", min_ndim=2, last=2, expected="[..., M, 2]")
    dtype = compute_dtype(points1, points2)
    a = points1.to(dtype)
    b = points2.to(dtype)
    if a.shape[:-2] != b.shape[:-2]:
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        a = a.expand(*batch, *a.shape[-2:])
        b = b.expand(*batch, *b.shape[-2:])
    dist = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
    return dist.to(output_dtype(points1, points2))


def anchor_points(
    height: int,
    width: int,
    stride: int = 8,
    rows: int = 2,
    cols: int = 2,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The P2PNet reference points of an image -> ``Tensor[ceil(H/s) * ceil(W/s) * rows * cols, 2]``.

    The image is cut into ``stride x stride`` cells (a partial cell at the right or bottom
    edge counts, as a feature map of ``ceil(H / stride)`` rows does). Each cell holds a
    ``rows x cols`` lattice of points at the centres of its sub-cells.

    Order: cells row-major (y outer, x inner); inside a cell the points row-major too
    (x fastest). This is the order in which a ``[B, rows * cols * A, H', W']`` head output
    flattens after ``permute(0, 2, 3, 1)``: for a 128 x 128 image at stride 8 with 2 x 2
    points, the first four are (2, 2), (6, 2), (2, 6), (6, 6).

    Args:
        height, width: image size in pixels (>= 0).
        stride: cell side in pixels.
        rows, cols: the lattice of points in each cell.
        device, dtype: of the result.

    Shape:
        - output: ``[ceil(H / stride) * ceil(W / stride) * rows * cols, 2]``.

    Example:
        >>> anchor_points(8, 16, stride=8, rows=1, cols=2)
        tensor([[ 2.,  4.],
                [ 6.,  4.],
                [10.,  4.],
                [14.,  4.]])
    """
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    for name, value in (("stride", stride), ("rows", rows), ("cols", cols)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    cells_y = -(-height // stride)
    cells_x = -(-width // stride)
    sub_x = (torch.arange(cols, device=device, dtype=dtype) + 0.5) * (stride / cols)
    sub_y = (torch.arange(rows, device=device, dtype=dtype) + 0.5) * (stride / rows)
    cell_x = torch.arange(cells_x, device=device, dtype=dtype) * stride
    cell_y = torch.arange(cells_y, device=device, dtype=dtype) * stride
    # Axes: cell_y, cell_x, sub_y, sub_x.
    x = cell_x[None, :, None, None] + sub_x[None, None, None, :]
    y = cell_y[:, None, None, None] + sub_y[None, None, :, None]
    x, y = torch.broadcast_tensors(x, y)
    return torch.stack((x, y), dim=-1).reshape(-1, 2)
