"""What the three ranking losses share besides the rank engine: their input checks, the
lookup of the compiled CPU loops, and the meaning of ``reduction``.

Every ranking loss has one value per positive (its error, in [0, 1]). ``reduction``:

- ``"mean"`` (default): the sum over positives divided by their number P (the paper's
  normaliser; 0 without a positive);
- ``"sum"``: the same sum, undivided;
- ``"none"``: a tensor of the logits' shape holding each positive's value at its place
  and 0 at the other elements, so that ``.sum()`` is the ``"sum"`` result.

The backward is the paper's error-driven update of the mean, scaled by the incoming
gradient; for ``"sum"`` it is the update without the division by P, and for ``"none"``
each positive's update (its own step and the shares it hands to other elements) is
scaled by the incoming gradient at that positive.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..._checks import check_reduction, check_tensor, shape_str, should_validate
from ..._kernels import fast_path

__all__ = [
    "RankingLossModule",
    "check_delta",
    "check_finite",
    "check_inputs",
    "check_pair",
    "check_reduction",
    "default_compact",
    "kernel_for",
    "kernel_weights",
    "label_array",
    "reduce_positives",
    "should_validate",
]


def kernel_for(x: Tensor, compact: bool | None) -> ModuleType | None:
    """The compiled CPU loops (``detloss._kernels.ranking_cpu``) for a problem on ``x``'s
    device, or None: not the CPU, Numba missing, the reference path forced, or the static
    torch path asked for (``compact=False``)."""
    return None if compact is False else fast_path("ranking", x.device)


def default_compact(x: Tensor, compact: bool | None) -> bool:
    """Gather the participants (free on the CPU) unless told; keep static shapes elsewhere
    (gathering costs a device sync)."""
    return x.device.type == "cpu" if compact is None else compact


def label_array(labels: Tensor) -> np.ndarray:
    """CPU labels or targets as a NumPy array for the compiled loops; half-precision floats
    (which NumPy or Numba lack) as float32."""
    if labels.dtype in (torch.float16, torch.bfloat16):
        labels = labels.float()
    return labels.detach().numpy()


def kernel_weights(weights: Tensor | None) -> np.ndarray:
    """Per-element weights of the positives' updates for the compiled loops: float64, or
    empty for "every positive 1"."""
    if weights is None:
        return np.empty(0)
    return weights.detach().to(torch.float64).reshape(-1).numpy()


def reduce_positives(
    values: np.ndarray, where: np.ndarray, n: int, reduction: str, dtype: torch.dtype
) -> Tensor:
    """The compiled loops' per-positive ``values`` (``where``: their elements) as
    ``reduction`` says, like :meth:`._engine.Ranking.reduce`."""
    if reduction == "none":
        out = torch.zeros(n, dtype=dtype)
        out[torch.from_numpy(where)] = torch.from_numpy(values).to(dtype)
        return out
    total = values.sum()
    return torch.tensor(total / max(where.size, 1) if reduction == "mean" else total, dtype=dtype)


def check_delta(delta: object) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)):
        raise TypeError(f"delta must be a float, got {type(delta).__name__}")
    if not 0 < delta < float("inf"):
        raise ValueError(f"delta must be a finite number > 0, got {delta}")
    return float(delta)


def check_pair(logits: object, labels: object, name: str) -> None:
    """``labels`` (named ``name``) matches ``logits`` in shape and device; both real."""
    check_tensor(logits, "logits")
    check_tensor(labels, name)
    if logits.shape != labels.shape:  # type: ignore[union-attr]
        raise ValueError(
            f"{name}: expected shape {shape_str(logits.shape)} (the logits'), "  # type: ignore[union-attr]
            f"got {shape_str(labels.shape)}"  # type: ignore[union-attr]
        )
    if labels.device != logits.device:  # type: ignore[union-attr]
        raise ValueError(
            f"{name}: expected device {logits.device} (the logits'), got {labels.device}"  # type: ignore[union-attr]
        )
    if logits.is_complex() or labels.is_complex():  # type: ignore[union-attr]
        raise TypeError(f"logits and {name} must be real tensors, got a complex dtype")


def check_finite(x: Tensor, name: str) -> None:
    if not x.is_floating_point():
        return
    # A finite sum (one fast reduction) means finite entries; only a sum that overflowed
    # or a rejected input pays for the exact scan.
    if bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all()):
        return
    raise ValueError(f"{name}: expected finite values, got NaN or inf")


def _check_labels(labels: Tensor) -> None:
    if labels.dtype == torch.bool or labels.numel() == 0:
        return
    if labels.is_floating_point():
        allowed = bool(((labels == 0) | (labels.abs() == 1)).all())
    else:  # integers: the extremes decide
        low, high = torch.aminmax(labels)
        allowed = bool((low >= -1) & (high <= 1))
    if not allowed:
        ok = (labels == 1) | (labels == 0) | (labels == -1)
        bad = labels[~ok].reshape(-1)[0].item()
        raise ValueError(f"labels: expected values in {{-1, 0, 1}}, got {bad}")


def check_inputs(
    logits: Tensor, labels: Tensor, delta: object, reduction: object, validate: bool | None
) -> float:
    """The checks of AP-Loss and aLRP Loss; returns ``delta`` as a float. The value scans
    (labels in {-1, 0, 1}, finite logits) run when ``validate`` resolves to True."""
    check_pair(logits, labels, "labels")
    delta = check_delta(delta)
    check_reduction(reduction)
    if should_validate(validate, logits):
        _check_labels(labels)
        check_finite(logits, "logits")
    return delta


class RankingLossModule(nn.Module):
    """Base of the ranking losses' modules. Each keeps its function's options as
    attributes of the same names, checked once when built, and lists them in
    ``options``: :meth:`options` hands them to the function and the repr shows them."""

    #: The names of the function's options that the module stores.
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, delta: float, reduction: str, validate: bool | None) -> None:
        super().__init__()
        self.delta = check_delta(delta)
        self.reduction = check_reduction(reduction)
        self.validate = validate

    def options(self) -> dict[str, Any]:
        """The function's keyword arguments, from the attributes."""
        return {name: getattr(self, name) for name in self.option_names}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self.options().items())
