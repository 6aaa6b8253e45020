"""Per-image metric inputs as float64 NumPy arrays, with messages naming the entry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["array_of", "dict_entry"]


def array_of(
    x: Tensor | np.ndarray | Sequence, name: str, shape_tail: tuple[int, ...]
) -> np.ndarray:
    if isinstance(x, Tensor):
        arr = x.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape((0, *shape_tail))
    if arr.ndim != 1 + len(shape_tail) or tuple(arr.shape[1:]) != shape_tail:
        want = "[n" + "".join(f", {s}" for s in shape_tail) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {list(arr.shape)}")
    return arr


def dict_entry(d: object, key: str, name: str) -> object:
    if not isinstance(d, Mapping):
        raise TypeError(f"{name} must be a dict, got {type(d).__name__}")
    if key not in d:
        raise ValueError(f"{name}: missing key {key!r}, got keys {sorted(d)}")
    return d[key]
