"""Box targets in any accepted form, padded for the box matchers and the box losses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .._checks import check_shape
from ..batching import as_padded

__all__ = ["Targets", "box_targets"]

#: Box targets: a list of per-image ``{"boxes": [n_i, 4], "labels": [n_i]}`` dicts, or the
#: padded ``{"boxes": [B, N, 4], "labels": [B, N], "mask": bool[B, N]}``.
Targets = Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor]


def box_targets(targets: Targets, batch_size: int, device: torch.device) -> dict[str, Tensor]:
    """Padded ``boxes``, ``labels`` and ``mask`` from any accepted target form.

    Args:
        targets: a list of ``{"boxes": Tensor[n_i, 4], "labels": int64[n_i]}`` dicts (one
            per image) or the padded dict with ``"mask"``.
        batch_size: the number of images ``B`` the predictions have.
        device: where the padded tensors go.

    Returns:
        ``{"boxes": Tensor[B, N, 4], "labels": int64[B, N], "mask": bool[B, N]}`` (padded
        slots are zero; read them through ``mask``).

    Raises:
        ValueError: a box tensor not ``[n, 4]``, or not ``batch_size`` images.
        TypeError: float labels.

    Shape:
        - targets[i]["boxes"]: ``[n_i, 4]``; targets[i]["labels"]: ``[n_i]``
        - boxes: ``[B, N, 4]``; labels, mask: ``[B, N]`` with ``N = max n_i``

    Example:
        >>> padded = box_targets(
        ...     [{"boxes": torch.ones(2, 4), "labels": torch.tensor([3, 1])},
        ...      {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}],
        ...     batch_size=2, device=torch.device("cpu"))
        >>> tuple(padded["boxes"].shape), padded["mask"].tolist()
        ((2, 2, 4), [[True, True], [False, False]])
    """
    padded = as_padded(targets, ("boxes", "labels"), batch_size=batch_size, device=device)
    check_shape(padded["boxes"], "targets['boxes']", ndim=3, last=4, expected="[B, N, 4]")
    if padded["labels"].is_floating_point():
        raise TypeError(f"targets['labels'] must be integers, got {padded['labels'].dtype}")
    return padded
