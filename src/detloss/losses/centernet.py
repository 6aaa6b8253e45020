"""CenterNet losses: the gaussian (penalty-reduced) focal loss and the CenterNet objective.

The gaussian focal loss of CornerNet / CenterNet compares a predicted heatmap ``p`` with a
gaussian target ``g`` element-wise:

- positives (``g == 1`` exactly): ``-(1 - p)^alpha log(p)``
- every other cell: ``-(1 - g)^gamma p^alpha log(1 - p)``

so a cell near an object centre (``g`` close to 1) is barely penalised for firing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import (
    check_finite,
    check_reduction,
    check_shape,
    check_tensor,
    output_dtype,
    shape_str,
    should_validate,
)
from ..distributed import normalizer as global_normalizer
from ._module import FunctionLoss
from ._reduction import reduce_loss

__all__ = [
    "CenterNetLoss",
    "GaussianFocalLoss",
    "GaussianFocalLossWithLogits",
    "centernet_loss",
    "gaussian_focal_loss",
    "gaussian_focal_loss_with_logits",
]

#: CenterNet clamps sigmoid outputs to ``[1e-4, 1 - 1e-4]`` before the logs.
PROB_EPS = 1e-4


def _check_pair(x: Tensor, target: Tensor, name: str) -> None:
    check_tensor(x, name)
    check_tensor(target, "target")
    if x.shape != target.shape:
        raise ValueError(
            f"target: expected shape {shape_str(x.shape)} (the {name}'), got {shape_str(target.shape)}"
        )


def _check_exponents(alpha: float, gamma: float) -> None:
    for value, name in ((alpha, "alpha"), (gamma, "gamma")):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a float, got {type(value).__name__}")
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def _normalizer(normalizer: Tensor | float | None, reduction: str) -> Tensor | float | None:
    """``normalizer`` checked: a number or a one-element tensor, only with ``"mean"``."""
    if normalizer is None:
        return None
    if reduction != "mean":
        raise ValueError(
            f"normalizer divides the sum of reduction='mean'; got it with reduction={reduction!r}"
        )
    if isinstance(normalizer, Tensor):
        if normalizer.numel() != 1:
            raise ValueError(
                f"normalizer: expected a number or a one-element tensor, "
                f"got shape {shape_str(normalizer.shape)}"
            )
        return normalizer.reshape(())
    if isinstance(normalizer, bool) or not isinstance(normalizer, (int, float)):
        raise TypeError(
            f"normalizer must be a number, a tensor or None, got {type(normalizer).__name__}"
        )
    return normalizer


def _focal_prologue(
    x: Tensor,
    target: Tensor,
    name: str,
    alpha: float,
    gamma: float,
    reduction: str,
    normalizer: Tensor | float | None,
    validate: bool | None,
) -> Tensor | float | None:
    """The checks both gaussian focal losses run first; returns the checked normalizer."""
    if should_validate(validate, x):
        check_finite((name, x), ("target", target))
    _check_pair(x, target, name)
    check_reduction(reduction)
    _check_exponents(alpha, gamma)
    return _normalizer(normalizer, reduction)


def _reduce_focal(
    loss: Tensor,
    target: Tensor,
    reduction: str,
    normalizer: Tensor | float | None,
    out: torch.dtype,
) -> Tensor:
    """``"mean"``: the sum over the number of positive cells (clamped to >= 1) or over
    ``normalizer``; ``"sum"`` and ``"none"`` as :func:`reduce_loss`."""
    if reduction != "mean":
        return reduce_loss(loss, reduction).to(out)
    if normalizer is None:
        normalizer = (target == 1).sum().clamp(min=1)
    if isinstance(normalizer, Tensor):
        normalizer = normalizer.to(device=loss.device, dtype=loss.dtype)
    return (loss.sum() / normalizer).to(out)


def _compute(x: Tensor) -> Tensor:
    """``x`` in the dtype to compute in: float64 stays, everything else becomes float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _logits_focal(x: Tensor, t: Tensor, alpha: float, gamma: float) -> Tensor:
    """Element-wise gaussian focal loss of logits ``x`` (already in the compute dtype)."""
    t = t.to(x.dtype)
    log_p = F.logsigmoid(x)
    log_q = F.logsigmoid(-x)  # log(1 - p), exact for large logits where 1 - p underflows
    pos = -log_p * torch.exp(alpha * log_q)
    neg = -log_q * torch.exp(alpha * log_p) * (1 - t) ** gamma
    # Both branches are finite for finite logits, so the unused one contributes an exact
    # zero gradient through the where.
    return torch.where(t == 1, pos, neg)


def gaussian_focal_loss(
    pred: Tensor,
    target: Tensor,
    alpha: float = 2.0,
    gamma: float = 4.0,
    reduction: str = "mean",
    normalizer: Tensor | float | None = None,
    eps: float = PROB_EPS,
    *,
    validate: bool | None = None,
) -> Tensor:
    """Gaussian focal loss on probabilities (CenterNet's ``_neg_loss``).

    Args:
        pred: probabilities of any shape, e.g. ``Tensor[B, C, H, W]`` after a sigmoid.
        target: same shape, gaussian heatmap in [0, 1]; cells equal to exactly 1 are the
            positives.
        alpha: exponent of the prediction modulating factor (default 2).
        gamma: exponent of the ``(1 - target)`` penalty reduction (default 4).
        reduction: ``"mean"`` (default) divides the sum by the number of positive cells
            (clamped to >= 1), as CenterNet; ``"sum"`` is that sum; ``"none"`` the
            per-cell values.
        normalizer: with ``reduction="mean"``, what divides the sum instead of the number
            of positive cells (e.g. a count over ranks); an error with the other
            reductions.
        eps: ``pred`` is clamped to ``[eps, 1 - eps]`` (CenterNet's 1e-4), which keeps the
            logs finite but also zeroes the gradient of predictions outside that range;
            train from logits with :func:`gaussian_focal_loss_with_logits` instead.
        validate: scan the inputs for NaN and inf, and ``pred`` for values outside
            [0, 1] (logits passed by mistake), first (a ValueError naming the argument;
            one host synchronisation); None (default) scans on the CPU only.

    Float16/bfloat16 inputs are computed in float32 and returned in their dtype.

    Shape:
        - pred: any shape, e.g. ``[B, C, H, W]``.
        - target: the shape of ``pred``.
        - output: ``[]``, or the shape of ``pred`` with ``reduction="none"``.

    Example:
        >>> pred = torch.tensor([0.5, 0.5, 0.1])
        >>> target = torch.tensor([1.0, 0.5, 0.0])
        >>> gaussian_focal_loss(pred, target)  # one positive cell
        tensor(0.1852)
        >>> gaussian_focal_loss(pred, target, reduction="none")
        tensor([0.1733, 0.0108, 0.0011])
    """
    normalizer = _focal_prologue(
        pred, target, "pred", alpha, gamma, reduction, normalizer, validate
    )
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    if should_validate(validate, pred) and pred.numel() and bool(((pred < 0) | (pred > 1)).any()):
        raise ValueError(
            f"pred: expected probabilities in [0, 1], got values in "
            f"[{float(pred.min()):.3g}, {float(pred.max()):.3g}]; for logits use "
            f"gaussian_focal_loss_with_logits"
        )
    out = output_dtype(pred)
    p = _compute(pred)
    t = target.to(p.dtype)
    p = p.clamp(eps, 1 - eps)
    pos = -torch.log(p) * (1 - p) ** alpha
    neg = -torch.log1p(-p) * p**alpha * (1 - t) ** gamma
    loss = torch.where(t == 1, pos, neg)
    return _reduce_focal(loss, t, reduction, normalizer, out)


def gaussian_focal_loss_with_logits(
    logits: Tensor,
    target: Tensor,
    alpha: float = 2.0,
    gamma: float = 4.0,
    reduction: str = "mean",
    normalizer: Tensor | float | None = None,
    *,
    validate: bool | None = None,
) -> Tensor:
    """Gaussian focal loss on logits, ``p = sigmoid(logits)``, without clamping.

    ``log p``, ``log(1 - p)``, ``p^alpha`` and ``(1 - p)^alpha`` are all taken from
    ``logsigmoid(±logits)``, so the value and its gradient are finite for every finite
    logit (a confident wrong logit of ±1e4 gives a loss of about 1e4, not inf or NaN) and
    saturated predictions still receive a gradient, unlike the clamped probability form.

    Args: as :func:`gaussian_focal_loss`, with ``logits`` of any shape instead of ``pred``.

    Shape:
        - logits: any shape, e.g. ``[B, C, H, W]``.
        - target: the shape of ``logits``.
        - output: ``[]``, or the shape of ``logits`` with ``reduction="none"``.

    Example:
        >>> logits = torch.tensor([0.0, 0.0, -2.1972])  # probabilities 0.5, 0.5, 0.1
        >>> gaussian_focal_loss_with_logits(logits, torch.tensor([1.0, 0.5, 0.0]))
        tensor(0.1852)
    """
    normalizer = _focal_prologue(
        logits, target, "logits", alpha, gamma, reduction, normalizer, validate
    )
    out = output_dtype(logits)
    x = _compute(logits)
    loss = _logits_focal(x, target, alpha, gamma)
    return _reduce_focal(loss, target.to(x.dtype), reduction, normalizer, out)


class GaussianFocalLoss(
    FunctionLoss, function=gaussian_focal_loss, call_args=("pred", "target", "normalizer")
):
    """Module form of :func:`gaussian_focal_loss` (probabilities): stores ``alpha``,
    ``gamma``, ``reduction``, ``eps`` and ``validate``; ``forward(pred, target,
    normalizer=None)``. For logits use :class:`GaussianFocalLossWithLogits`.

    Shape:
        - pred: any shape, e.g. ``[B, C, H, W]``; target: the same.
        - output: ``[]``, or the shape of ``pred`` with ``reduction="none"``.

    Example:
        >>> loss = GaussianFocalLoss()
        >>> loss(torch.tensor([0.5, 0.5, 0.1]), torch.tensor([1.0, 0.5, 0.0]))
        tensor(0.1852)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "logits" in kwargs:
            raise TypeError(
                "GaussianFocalLoss() takes probabilities; for logits (logits=True) use "
                "GaussianFocalLossWithLogits"
            )
        super().__init__(*args, **kwargs)
        _check_exponents(self.alpha, self.gamma)


class GaussianFocalLossWithLogits(
    FunctionLoss,
    function=gaussian_focal_loss_with_logits,
    call_args=("logits", "target", "normalizer"),
):
    """Module form of :func:`gaussian_focal_loss_with_logits`: stores ``alpha``,
    ``gamma``, ``reduction`` and ``validate``; ``forward(logits, target, normalizer=None)``.

    Shape:
        - logits: any shape, e.g. ``[B, C, H, W]``; target: the same.
        - output: ``[]``, or the shape of ``logits`` with ``reduction="none"``.

    Example:
        >>> loss = GaussianFocalLossWithLogits(reduction="sum")
        >>> loss(torch.tensor([0.0, 0.0, -2.1972]), torch.tensor([1.0, 0.5, 0.0]))
        tensor(0.1852)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_exponents(self.alpha, self.gamma)


_PRED_KEYS = ("heatmap", "size", "offset")
_TARGET_KEYS = ("heatmap", "size", "offset", "weight")


def _get(d: Mapping[str, Tensor], keys: tuple[str, ...], name: str) -> list[Tensor]:
    if not isinstance(d, Mapping):
        raise TypeError(f"{name} must be a dict with keys {list(keys)}, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"{name}: missing keys {missing}; got {sorted(d)}")
    return [check_tensor(d[k], f"{name}[{k!r}]") for k in keys]


def centernet_loss(
    predictions: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    heatmap_weight: float = 1.0,
    size_weight: float = 0.1,
    offset_weight: float = 1.0,
    *,
    alpha: float = 2.0,
    gamma: float = 4.0,
    reduction: str = "mean",
    distributed: bool = True,
    return_terms: bool = False,
    validate: bool | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """The CenterNet objective: heatmap focal loss + L1 on size and offset at object cells.

    ``N`` = number of object cells in the batch (``targets["weight"].sum()``; two objects
    sharing a cell count once), summed over ranks and divided by the world size when
    ``distributed`` and a process group is initialised, clamped to >= 1
    (:func:`detloss.distributed.normalizer`). Then, with ``reduction="mean"``,

    - ``heatmap = sum(gaussian_focal_loss_with_logits(heatmap logits, target)) / N``
    - ``size = sum_cells weight * mean_xy |size - size target| / N`` (likewise ``offset``)
    - ``total = heatmap_weight * heatmap + size_weight * size + offset_weight * offset``

    The L1 of a cell averages its two coordinates, as the official CenterNet and mmdetection
    (which divide by twice the object count), so their weights 1 / 0.1 / 1 carry over.
    A batch without objects is valid: ``N`` clamps to 1, the heatmap term is the plain sum
    over the negatives and the size and offset terms are zeros that keep the graph.

    Args:
        predictions: ``{"heatmap": logits [B, C, H, W], "size": [B, 2, H, W],
            "offset": [B, 2, H, W]}``.
        targets: the dict of :func:`detloss.heatmap.centernet_targets` (only its dense keys
            ``heatmap``, ``size``, ``offset``, ``weight [B, 1, H, W]`` are read).
        heatmap_weight, size_weight, offset_weight: term weights.
        alpha, gamma: gaussian focal exponents.
        reduction: ``"mean"`` (default) divides the sums by ``N``; ``"sum"`` returns the
            sums; ``"none"`` one sum per image, ``Tensor[B]``.
        distributed: normalise by the global object count under ``torch.distributed``.
        return_terms: also return ``{"heatmap", "size", "offset"}`` (unweighted terms,
            reduced alike).
        validate: scan predictions and targets for NaN and inf first (a ValueError naming
            the entry; one host synchronisation); None (default) scans on the CPU only.

    Returns:
        The weighted total in the heatmap's dtype; with ``return_terms`` a tuple
        ``(total, terms)``.

    Shape:
        - predictions: ``heatmap [B, C, H, W]``, ``size`` and ``offset [B, 2, H, W]``.
        - targets: the same keys, plus ``weight [B, 1, H, W]``.
        - output: ``[]``, or ``[B]`` with ``reduction="none"``.

    Example:
        >>> heat = torch.full((1, 1, 2, 2), -4.0)
        >>> heat[0, 0, 0, 0] = 4.0
        >>> zeros = torch.zeros(1, 2, 2, 2)
        >>> target_heat = torch.zeros(1, 1, 2, 2)
        >>> target_heat[0, 0, 0, 0] = 1.0
        >>> weight = target_heat.clone()
        >>> predictions = {"heatmap": heat, "size": zeros + 1, "offset": zeros}
        >>> targets = {"heatmap": target_heat, "size": zeros, "offset": zeros, "weight": weight}
        >>> total, terms = centernet_loss(predictions, targets, return_terms=True)
        >>> terms["size"], terms["offset"]
        (tensor(1.), tensor(0.))
    """
    _check_exponents(alpha, gamma)
    check_reduction(reduction)
    heat, size, offset = _get(predictions, _PRED_KEYS, "predictions")
    t_heat, t_size, t_offset, weight = _get(targets, _TARGET_KEYS, "targets")
    if should_validate(validate, heat):
        named_targets = zip(_TARGET_KEYS, (t_heat, t_size, t_offset, weight))
        check_finite(
            *((f"predictions[{k!r}]", v) for k, v in zip(_PRED_KEYS, (heat, size, offset))),
            *((f"targets[{k!r}]", v) for k, v in named_targets),
        )
    check_shape(heat, "predictions['heatmap']", ndim=4, expected="[B, C, H, W]")
    batch, _, height, width = heat.shape
    reg_shape = (batch, 2, height, width)
    for value, name, shape in (
        (size, "predictions['size']", reg_shape),
        (offset, "predictions['offset']", reg_shape),
        (t_heat, "targets['heatmap']", heat.shape),
        (t_size, "targets['size']", reg_shape),
        (t_offset, "targets['offset']", reg_shape),
        (weight, "targets['weight']", (batch, 1, height, width)),
    ):
        if value.shape != shape:
            raise ValueError(
                f"{name}: expected shape {shape_str(shape)}, got {shape_str(value.shape)}"
            )

    out = output_dtype(heat)
    x = _compute(heat)
    w = weight.to(x.dtype)
    # Per-image sums first: "none" returns them, "sum" adds them, "mean" divides by N.
    per_image = {
        "heatmap": _logits_focal(x, t_heat, alpha, gamma).sum(dim=(1, 2, 3)),
        # The L1 of a cell averages its two coordinates.
        "size": ((_compute(size) - t_size.to(x.dtype)).abs() * w).sum(dim=(1, 2, 3)) / 2,
        "offset": ((_compute(offset) - t_offset.to(x.dtype)).abs() * w).sum(dim=(1, 2, 3)) / 2,
    }
    if reduction == "none":
        terms = per_image
    else:
        terms = {key: value.sum() for key, value in per_image.items()}
        if reduction == "mean":
            count = global_normalizer(w.sum(), distributed=distributed).to(x.dtype)
            terms = {key: value / count for key, value in terms.items()}
    total = (
        heatmap_weight * terms["heatmap"]
        + size_weight * terms["size"]
        + offset_weight * terms["offset"]
    ).to(out)
    if not return_terms:
        return total
    return total, {key: value.to(out) for key, value in terms.items()}


class CenterNetLoss(
    FunctionLoss,
    function=centernet_loss,
    call_args=("predictions", "targets", "return_terms"),
):
    """Module form of :func:`centernet_loss`: stores the weights, exponents,
    ``reduction``, ``distributed`` and ``validate``; ``forward(predictions, targets,
    return_terms=False)``.

    Shape:
        - predictions: ``heatmap [B, C, H, W]``, ``size`` and ``offset [B, 2, H, W]``.
        - targets: the same keys, plus ``weight [B, 1, H, W]``.
        - output: ``[]``, or ``[B]`` with ``reduction="none"``.

    Example:
        >>> zeros = torch.zeros(1, 2, 2, 2)
        >>> predictions = {"heatmap": torch.full((1, 1, 2, 2), -60.0), "size": zeros,
        ...                "offset": zeros}
        >>> targets = {"heatmap": torch.zeros(1, 1, 2, 2), "size": zeros, "offset": zeros,
        ...            "weight": torch.zeros(1, 1, 2, 2)}
        >>> CenterNetLoss(size_weight=0.1)(predictions, targets)  # nothing to find
        tensor(0.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_exponents(self.alpha, self.gamma)
