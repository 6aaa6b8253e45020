"""CenterNet training targets of a batch (:func:`centernet_targets`).

Coordinate rules are those of :mod:`detloss.heatmap`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .._api import keyword_only_masks, renamed
from .._checks import check_shape, check_tensor, compute_dtype, shape_str
from ..batching import as_padded
from .gaussians import (
    _as_int,
    _int_tensor,
    _Objects,
    _scatter_gaussians,
    _sparse_zeros,
    gaussian_radius,
)

__all__ = ["centernet_targets"]

Targets = Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor]


def _positive_int(value: object, name: str) -> int:
    v = _as_int(value, name)
    if v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v}")
    return v


def _inputs(
    boxes: Tensor | Targets, labels: Tensor | None, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    if not isinstance(boxes, Tensor):
        if labels is not None or mask is not None:
            raise ValueError(
                "labels and target_mask: pass them only with a boxes tensor; a target list or dict "
                "already carries them"
            )
        if not isinstance(boxes, (Mapping, Sequence)) or isinstance(boxes, str):
            raise TypeError(
                f"boxes must be a tensor, a list of per-image dicts or a padded dict, "
                f"got {type(boxes).__name__}"
            )
        padded = as_padded(boxes, ("boxes", "labels"))
        boxes, labels, mask = padded["boxes"], padded["labels"], padded["mask"]
    check_shape(boxes, "boxes", ndim=3, last=4, expected="[B, n, 4]")
    if labels is None:
        raise ValueError("labels: required with a boxes tensor, got None")
    labels = _int_tensor(labels, "labels")
    if labels.shape != boxes.shape[:2]:
        raise ValueError(
            f"labels: expected shape {shape_str(boxes.shape[:2])} (the boxes'), got {shape_str(labels.shape)}"
        )
    if mask is None:
        mask = torch.ones(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
    else:
        mask = check_tensor(mask, "target_mask")
        if mask.shape != boxes.shape[:2]:
            raise ValueError(
                f"target_mask: expected shape {shape_str(boxes.shape[:2])} (the boxes'), got {shape_str(mask.shape)}"
            )
        mask = mask.to(device=boxes.device, dtype=torch.bool)
    return boxes, labels.to(boxes.device), mask


@renamed(mask="target_mask")
@keyword_only_masks(2, ("target_mask",))
def centernet_targets(
    boxes: Tensor | Targets,
    labels: Tensor | None = None,
    *,
    target_mask: Tensor | None = None,
    num_classes: int,
    output_size: tuple[int, int],
    stride: float = 4,
    min_overlap: float = 0.3,
    legacy_radius: bool = False,
    validate: bool = True,
) -> dict[str, Tensor]:
    """CenterNet training targets for a batch, in a dense and an index form.

    For every real object: centre ``c = ((x1 + x2) / 2, (y1 + y2) / 2) / stride`` on the
    output grid, cell ``floor(c)``, size ``(w, h) = (x2 - x1, y2 - y1) / stride`` (negative
    extents count as 0), radius ``max(0, floor(gaussian_radius(h, w, min_overlap)))``. The
    heatmap of the object's class gets its gaussian (:func:`draw_gaussians`); the size and
    sub-cell offset ``c - floor(c)`` are regressed at its cell.

    Collision rule: when several objects (of any classes) fall into the same cell, all of
    them draw their gaussians, but only the **last** one (highest index along ``n``) owns
    the cell's size and offset, as when objects are written one after another. The dense
    maps hold the owner's values and ``index_mask`` is True only for owners, so both forms
    describe the same regression targets and ``weight.sum() == index_mask.sum()``.

    Args:
        boxes: ``Tensor[B, n, 4]`` xyxy in input pixels; or a list of per-image dicts
            ``{"boxes": [n_i, 4], "labels": [n_i]}`` or a padded dict with ``mask`` (then
            ``labels`` and ``target_mask`` are not passed).
        labels: ``int[B, n]`` in ``0..num_classes-1``.
        target_mask: ``bool[B, n]``, True = real object (default: all real); need not be
            a prefix. Keyword-only (by position it still works, with a FutureWarning, for
            one release; ``mask=`` is an error naming ``target_mask``).
        num_classes: ``C``.
        output_size: ``(H, W)`` of the output grid.
        stride: input pixels per output cell (> 0).
        min_overlap: passed to :func:`gaussian_radius`.
        legacy_radius: reproduce the original CenterNet radius: box sizes rounded up to
            whole cells and the legacy formula (CenterNet used ``min_overlap=0.7``).
        validate: check (one host synchronisation) that real boxes are finite, labels in
            range and centres inside the output grid, raising ValueError otherwise. With
            False, objects whose centre cell is outside the grid are silently dropped.

    Returns:
        A dict, all on the boxes' device, floats in float32 (float64 for float64 boxes):

        - ``heatmap``: ``[B, C, H, W]`` gaussian peaks (exactly 1 at each object's cell).
        - ``size``: ``[B, 2, H, W]`` owner's ``(w, h)`` in output cells, 0 elsewhere.
        - ``offset``: ``[B, 2, H, W]`` owner's ``(dx, dy)`` in ``[0, 1)``, 0 elsewhere.
        - ``weight``: ``[B, 1, H, W]`` 1 at owned cells, 0 elsewhere.
        - ``index``: ``int64[B, n]`` flat cell ``y * W + x`` (0 for padding and dropped
          objects).
        - ``index_mask``: ``bool[B, n]`` True for real, in-grid objects that own their cell.
        - ``size_target``: ``[B, n, 2]`` and ``offset_target``: ``[B, n, 2]`` per object,
          filled for every real in-grid object (owner or not; 0 for padding and dropped
          objects): read them through ``index_mask``.

    Shape:
        - boxes: ``[B, n, 4]``; labels, target_mask: ``[B, n]``.
        - output: ``heatmap [B, C, H, W]``, ``size``/``offset [B, 2, H, W]``, ``weight
          [B, 1, H, W]``, ``index``/``index_mask [B, n]``, ``size_target``/``offset_target
          [B, n, 2]``.

    Example:
        >>> boxes = torch.tensor([[[4.0, 4.0, 12.0, 8.0]]])  # centre (8, 6) px: cell (2, 1)
        >>> t = centernet_targets(boxes, torch.tensor([[0]]), num_classes=1, output_size=(4, 4))
        >>> t["heatmap"][0, 0]
        tensor([[0., 0., 0., 0.],
                [0., 0., 1., 0.],
                [0., 0., 0., 0.],
                [0., 0., 0., 0.]])
        >>> t["size"][0, :, 1, 2], t["offset"][0, :, 1, 2], t["index"]
        (tensor([2., 1.]), tensor([0.0000, 0.5000]), tensor([[6]]))
    """
    boxes, labels, mask = _inputs(boxes, labels, target_mask)
    num_classes = _positive_int(num_classes, "num_classes")
    if not isinstance(output_size, Sequence) or len(output_size) != 2:
        raise ValueError(f"output_size: expected (H, W), got {output_size!r}")
    height = _positive_int(output_size[0], "output_size[0]")
    width = _positive_int(output_size[1], "output_size[1]")
    if isinstance(stride, bool) or not isinstance(stride, (int, float)):
        raise TypeError(f"stride must be a number, got {type(stride).__name__}")
    if not (stride > 0 and math.isfinite(stride)):
        raise ValueError(f"stride must be a finite number > 0, got {stride}")

    device = boxes.device
    dtype = compute_dtype(boxes)
    batch, n = boxes.shape[:2]
    b = boxes.detach().to(dtype)  # targets are constants for the loss
    center = torch.stack(((b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2), -1) / stride
    size = torch.stack((b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]), -1).clamp(min=0) / stride
    # Non-finite padding would poison floor().long(); real boxes are checked below.
    center = torch.where(mask[..., None], center, 0)
    size = torch.where(mask[..., None], size, 0)
    cell_f = center.floor()
    in_grid = (
        (cell_f[..., 0] >= 0)
        & (cell_f[..., 0] < width)
        & (cell_f[..., 1] >= 0)
        & (cell_f[..., 1] < height)
    )
    if validate and batch * n:
        finite = torch.isfinite(b).all(-1) | ~mask
        good_label = ((labels >= 0) & (labels < num_classes)) | ~mask
        bad = torch.stack(((~finite).any(), (~good_label).any(), (~in_grid & mask).any())).tolist()
        if bad[0]:
            i, j = (~finite).nonzero()[0].tolist()
            raise ValueError(
                f"boxes: expected finite coordinates, got {b[i, j].tolist()} at [{i}, {j}]"
            )
        if bad[1]:
            i, j = (~good_label).nonzero()[0].tolist()
            raise ValueError(
                f"labels: expected values in [0, {num_classes - 1}], got {int(labels[i, j])} at [{i}, {j}]"
            )
        if bad[2]:
            i, j = (~in_grid & mask).nonzero()[0].tolist()
            raise ValueError(
                f"boxes: expected centres inside the {height} x {width} output grid "
                f"(input {height * stride:g} x {width * stride:g} px at stride {stride:g}), "
                f"got box {b[i, j].tolist()} at [{i}, {j}] with centre cell "
                f"{cell_f[i, j].long().tolist()}; filter such boxes or pass validate=False "
                f"to drop them"
            )
    valid = mask & in_grid
    cell = torch.where(valid[..., None], cell_f, 0).long()
    offset = center - cell_f
    index = cell[..., 1] * width + cell[..., 0]

    if legacy_radius:
        radius_f = gaussian_radius(
            size[..., 1].ceil(), size[..., 0].ceil(), min_overlap, legacy=True
        )
    else:
        radius_f = gaussian_radius(size[..., 1], size[..., 0], min_overlap)
    # The upper clamp only keeps absurd (but finite) sizes from overflowing int64; such a
    # radius still covers the whole grid.
    radius = radius_f.floor().clamp(0, 2**40).long()  # type: ignore[union-attr]

    hw = height * width
    size = torch.where(valid[..., None], size, 0)
    offset = torch.where(valid[..., None], offset, 0)
    index = torch.where(valid, index, 0)

    # The last object in a cell owns it. Sorting the cell keys (stable, so objects of one
    # cell stay in index order) puts each cell's owner at the end of its run; dropped and
    # padded objects get unique negative keys and so own only themselves.
    flat_pos = torch.arange(batch * n, device=device)
    key = torch.arange(batch, device=device)[:, None] * hw + index
    key = torch.where(valid, key, -1 - flat_pos.view(batch, n)).reshape(-1)
    sorted_key, order = torch.sort(key, stable=True)
    owner = order[torch.searchsorted(sorted_key, key, right=True) - 1]
    index_mask = (valid.reshape(-1) & (owner == flat_pos)).view(batch, n)

    # Dense maps: every object writes its cell owner's values, so duplicates agree and the
    # result does not depend on the scatter order. Padding writes zeros to cell 0, which
    # the max leaves alone because every target is >= 0.
    fill = valid[..., None].to(dtype)
    owner_size = size.reshape(-1, 2)[owner].view(batch, n, 2) * fill
    owner_offset = offset.reshape(-1, 2)[owner].view(batch, n, 2) * fill
    where2 = index[:, None, :].expand(batch, 2, n)
    size_dense = torch.zeros(batch, 2, hw, dtype=dtype, device=device)
    size_dense.scatter_reduce_(2, where2, owner_size.transpose(1, 2), "amax")
    offset_dense = torch.zeros(batch, 2, hw, dtype=dtype, device=device)
    offset_dense.scatter_reduce_(2, where2, owner_offset.transpose(1, 2), "amax")
    weight = torch.zeros(batch, 1, hw, dtype=dtype, device=device)
    weight.scatter_reduce_(2, index[:, None, :], fill.transpose(1, 2), "amax")

    heatmap = _sparse_zeros((batch * num_classes * hw,), dtype, device)
    channel = labels.clamp(0, num_classes - 1)
    plane = (torch.arange(batch, device=device)[:, None] * num_classes + channel) * hw
    objects = _Objects(plane, cell[..., 0], cell[..., 1], radius, valid)
    _scatter_gaussians(heatmap, _Objects(*(t.reshape(-1) for t in objects)), height, width)
    return {
        "heatmap": heatmap.view(batch, num_classes, height, width),
        "size": size_dense.view(batch, 2, height, width),
        "offset": offset_dense.view(batch, 2, height, width),
        "weight": weight.view(batch, 1, height, width),
        "index": index,
        "index_mask": index_mask,
        "size_target": size,
        "offset_target": offset,
    }
