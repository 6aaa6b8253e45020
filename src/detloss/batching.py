"""Per-image target lists <-> padded batches with a validity mask.

Targets come as a list of per-image dicts (``{"boxes": [n_i, 4], "labels": [n_i]}`` or
``{"points": [n_i, 2]}``), a list of bare ``[n_i, D]`` tensors (points), or already
padded: a dict of ``[B, N, ...]`` tensors plus ``mask: bool[B, N]`` (True = real; the
mask need not be a prefix). Images without objects are ordinary data.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ._checks import check_tensor, shape_str

__all__ = ["as_padded", "pad_targets", "unpad_targets"]


def pad_targets(
    targets: Sequence[Mapping[str, Tensor] | Tensor],
    *,
    key: str = "points",
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Pad a list of per-image targets into ``[B, N_max, ...]`` tensors plus ``mask``.

    Every dict must have the same keys; each value's first dimension is the object
    count ``n_i``. Bare tensors are stored under ``key``. Padding is zero (labels 0,
    boxes 0): always read it through ``mask``. ``N_max`` is 0 when every image is empty.

    Args:
        targets: ``B`` dicts of ``Tensor[n_i, ...]`` (e.g. ``boxes [n_i, 4]``, ``labels
            [n_i]``) or ``B`` tensors ``[n_i, ...]``.
        key: the key of bare tensors.
        device: of the result (default: the targets').

    Shape:
        - targets: ``B`` entries of ``[n_i, ...]``.
        - output: each key ``[B, N_max, ...]``, ``mask: bool[B, N_max]``.

    Example:
        >>> out = pad_targets([torch.tensor([[1.0, 2.0]]), torch.zeros(0, 2)])
        >>> out["points"].shape, out["mask"].tolist()
        (torch.Size([2, 1, 2]), [[True], [False]])
    """
    if isinstance(targets, (Tensor, Mapping)) or not isinstance(targets, Sequence):
        raise TypeError(
            f"targets must be a list of per-image dicts or tensors, got {type(targets).__name__}"
        )
    dicts: list[Mapping[str, Tensor]] = [{key: t} if isinstance(t, Tensor) else t for t in targets]
    if not dicts:
        raise ValueError("targets: expected at least one image, got an empty list")
    for i, d in enumerate(dicts):
        if not isinstance(d, Mapping):
            raise TypeError(f"targets[{i}] must be a dict or a tensor, got {type(d).__name__}")
    keys = [k for k in dicts[0] if k != "mask"]
    counts: list[int] = []
    for i, d in enumerate(dicts):
        if sorted(k for k in d if k != "mask") != sorted(keys):
            raise ValueError(f"targets[{i}]: expected keys {sorted(keys)}, got {sorted(d)}")
        sizes = set()
        for k in keys:
            value = check_tensor(d[k], f"targets[{i}][{k!r}]")
            if value.ndim == 0:
                raise ValueError(f"targets[{i}][{k!r}]: expected shape [n, ...], got a scalar")
            sizes.add(value.shape[0])
        if len(sizes) > 1:
            raise ValueError(
                f"targets[{i}]: every value must have the same first dimension, got "
                + ", ".join(f"{k}: {shape_str(d[k].shape)}" for k in keys)
            )
        counts.append(sizes.pop() if sizes else 0)
    if device is None:
        device = next((d[k].device for d in dicts for k in keys), torch.device("cpu"))
    device = torch.device(device)
    out: dict[str, Tensor] = {}
    for k in keys:
        values = [d[k] for d in dicts]
        tail = values[0].shape[1:]
        for i, value in enumerate(values):
            if value.shape[1:] != tail:
                raise ValueError(
                    f"targets[{i}][{k!r}]: expected shape [n, {', '.join(map(str, tail))}] "
                    f"like targets[0], got {shape_str(value.shape)}"
                )
        dtype = functools.reduce(torch.promote_types, {v.dtype for v in values})
        out[k] = _pad(values, dtype, device)
    # The mask pads rows of ones cut from one fill: no host-to-device copy of the counts
    # (a blocking copy on a GPU).
    ones = torch.ones(sum(counts), dtype=torch.bool, device=device)
    out["mask"] = _pad(list(ones.split(counts)), torch.bool, device)
    return out


def _pad(values: list[Tensor], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[B, max n, ...]``, zero-padded, in ``dtype`` on ``device``: one ``pad_sequence``
    (its copies loop in C++), on the values' own device when they share one, then a
    single transfer."""
    if any(v.device != values[0].device for v in values):
        values = [v.to(device) for v in values]
    padded = pad_sequence([v.to(dtype) for v in values], batch_first=True)
    return padded.to(device)


def unpad_targets(padded: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
    """The inverse of :func:`pad_targets`: one dict per image with only the real objects.

    Args:
        padded: ``{key: Tensor[B, N, ...], "mask": bool[B, N]}``.

    Shape:
        - padded: each key ``[B, N, ...]``, ``mask [B, N]``.
        - output: ``B`` dicts of ``[n_i, ...]``.

    Example:
        >>> padded = {"labels": torch.tensor([[3, 0], [1, 2]]),
        ...           "mask": torch.tensor([[True, False], [True, True]])}
        >>> unpad_targets(padded)
        [{'labels': tensor([3])}, {'labels': tensor([1, 2])}]
    """
    if "mask" not in padded:
        raise ValueError(f"padded: expected a 'mask' entry, got keys {sorted(padded)}")
    mask = padded["mask"]
    keys = [k for k in padded if k != "mask"]
    return [{k: padded[k][i][mask[i]] for k in keys} for i in range(mask.shape[0])]


def as_padded(
    targets: Sequence[Mapping[str, Tensor] | Tensor] | Mapping[str, Tensor],
    required: Sequence[str],
    *,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Accept any target form and return the padded dict with a boolean ``mask``.

    ``required`` names the keys the caller needs; a list of bare tensors is stored under
    ``required[0]``. ``batch_size``, when given, must match the number of images.
    """
    if isinstance(targets, Mapping):
        missing = [k for k in (*required, "mask") if k not in targets]
        if missing:
            raise ValueError(
                f"targets: a padded target dict needs keys {[*required, 'mask']}, missing {missing}"
            )
        out = {k: check_tensor(v, f"targets[{k!r}]") for k, v in targets.items()}
        mask = out["mask"]
        if mask.ndim != 2:
            raise ValueError(f"targets['mask']: expected shape [B, N], got {shape_str(mask.shape)}")
        if mask.dtype != torch.bool:
            out["mask"] = mask.bool()
        for k in required:
            if tuple(out[k].shape[:2]) != tuple(mask.shape):
                raise ValueError(
                    f"targets[{k!r}]: expected leading shape {shape_str(mask.shape)} "
                    f"(the mask's), got {shape_str(out[k].shape)}"
                )
        if device is not None:
            out = {k: v.to(device) for k, v in out.items()}
    else:
        out = pad_targets(targets, key=required[0], device=device)
        missing = [k for k in required if k not in out]
        if missing:
            raise ValueError(f"targets: each image needs keys {list(required)}, missing {missing}")
    if batch_size is not None and out["mask"].shape[0] != batch_size:
        raise ValueError(
            f"targets: expected {batch_size} images (the predictions' batch size), "
            f"got {out['mask'].shape[0]}"
        )
    return out
