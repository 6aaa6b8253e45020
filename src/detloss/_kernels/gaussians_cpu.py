"""Compiled CPU drawing of CenterNet gaussians (Numba; optional).

On the CPU, :func:`detloss.heatmap.draw_gaussians` and ``centernet_targets`` draw through
:func:`draw_into` when Numba is installed: each object's window is visited once, with no
candidate cells beyond its radius (the torch path pads each object to the largest window
of its radius class and max-scatters them all). The kernel of each distinct radius is
computed once, by the float64 expression of :func:`detloss.heatmap.gaussian_kernel`.
"""

from __future__ import annotations

import math

import numpy as np

from ._numba import jit

__all__ = ["draw_into"]


@jit
def _kernel(radius: int, rows: int, columns: int, eps: float) -> np.ndarray:
    """``exp(-(dx^2 + dy^2) / (2 sigma^2))`` with ``sigma = (2 r + 1) / 6`` for
    ``|dy| <= rows``, ``|dx| <= columns``, values below ``eps`` set to 0 (float64: the
    map's rounding of a value is above a map value exactly when the value is)."""
    sigma = np.float64(2 * radius + 1) / 6
    out = np.empty((2 * rows + 1, 2 * columns + 1))
    for dy in range(-rows, rows + 1):
        for dx in range(-columns, columns + 1):
            value = math.exp(-np.float64(dx * dx + dy * dy) / (2 * sigma * sigma))
            out[dy + rows, dx + columns] = 0.0 if value < eps else value
    return out


@jit
def draw_into(
    flat: np.ndarray,
    plane: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    valid: np.ndarray,
    height: int,
    width: int,
    eps: float,
) -> None:
    """Max the gaussian of every valid object with ``radius >= 0`` into ``flat``.

    ``flat`` holds ``[H, W]`` planes one after another; object ``k`` is centred on cell
    ``(cx[k], cy[k])`` of the plane starting at offset ``plane[k]``. Like the torch path,
    a kernel reaches at most ``H - 1`` rows and ``W - 1`` columns from its centre, and
    cells outside the map are skipped.
    """
    order = np.argsort(radius)
    i, n = 0, radius.size
    while i < n:
        r = radius[order[i]]
        end = i
        while end < n and radius[order[end]] == r:
            end += 1
        if r >= 0:
            rows, columns = min(r, height - 1), min(r, width - 1)
            kernel = _kernel(r, rows, columns, eps)
            for k in order[i:end]:
                if not valid[k]:
                    continue
                x0, y0 = cx[k], cy[k]
                left, right = max(0, x0 - columns), min(width - 1, x0 + columns)
                for y in range(max(0, y0 - rows), min(height - 1, y0 + rows) + 1):
                    row = plane[k] + y * width
                    kernel_row = y - y0 + rows
                    for x in range(left, right + 1):
                        value = kernel[kernel_row, x - x0 + columns]
                        if value > flat[row + x]:
                            flat[row + x] = value
        i = end
