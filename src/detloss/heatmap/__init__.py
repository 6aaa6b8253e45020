"""CenterNet targets: gaussian radius, gaussian kernels, heatmap drawing and batched targets.

Coordinate rules: a heatmap is ``Tensor[H, W]`` or ``Tensor[C, H, W]``; a cell is addressed
by integer ``(x, y)`` = (column, row), and its flat index inside one ``[H, W]`` plane is
``y * W + x``. Boxes given to :func:`centernet_targets` are ``xyxy`` in input-image pixels;
the output grid is the input divided by ``stride``, so an object whose centre is at pixel
``(cx, cy)`` lands in cell ``(floor(cx / stride), floor(cy / stride))``.

Every function is vectorised over objects (and over images for :func:`centernet_targets`):
no Python loop visits an object. On the CPU, float32 and float64 maps are drawn by a
compiled loop where Numba is installed (``detloss._kernels.gaussians_cpu``), with the same
numbers. The only host synchronisations are the optional value checks
(``validate=True``) and one small read of the radius histogram that sizes the drawing
windows (torch path).
"""

from .gaussians import draw_gaussians, gaussian_kernel, gaussian_radius
from .targets import centernet_targets

__all__ = [
    "centernet_targets",
    "draw_gaussians",
    "gaussian_kernel",
    "gaussian_radius",
]
