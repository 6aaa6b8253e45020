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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
from ._reduction import reduce_loss

__all__ = [
    "CenterNetLoss",
    "GaussianFocalLoss",
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


def _finish(
    loss: Tensor, reduction: str, normalizer: Tensor | float | None, out: torch.dtype
) -> Tensor:
    loss = reduce_loss(loss, reduction)
    if normalizer is not None:
        if isinstance(normalizer, Tensor):
            if normalizer.numel() != 1:
                raise ValueError(
                    f"normalizer: expected a number or a one-element tensor, "
                    f"got shape {shape_str(normalizer.shape)}"
                )
            normalizer = normalizer.reshape(()).to(device=loss.device, dtype=loss.dtype)
        elif isinstance(normalizer, bool) or not isinstance(normalizer, (int, float)):
            raise TypeError(
                f"normalizer must be a number, a tensor or None, got {type(normalizer).__name__}"
            )
        loss = loss / normalizer
    return loss.to(out)


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
    reduction: str = "sum",
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
        reduction: ``"none" | "mean" | "sum"`` (default ``"sum"``).
        normalizer: when given, the reduced loss is divided by it (CenterNet divides the
            sum by the number of objects).
        eps: ``pred`` is clamped to ``[eps, 1 - eps]`` (CenterNet's 1e-4), which keeps the
            logs finite but also zeroes the gradient of predictions outside that range;
            train from logits with :func:`gaussian_focal_loss_with_logits` instead.
        validate: scan the inputs for NaN and inf first (a ValueError naming the argument;
            one host synchronisation); None (default) scans on the CPU only.

    Float16/bfloat16 inputs are computed in float32 and returned in their dtype.
    """
    if should_validate(validate, pred):
        check_finite(("pred", pred), ("target", target))
    _check_pair(pred, target, "pred")
    check_reduction(reduction)
    _check_exponents(alpha, gamma)
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    out = output_dtype(pred)
    p = _compute(pred)
    t = target.to(p.dtype)
    p = p.clamp(eps, 1 - eps)
    positive = t == 1
    pos = -torch.log(p) * (1 - p) ** alpha
    neg = -torch.log1p(-p) * p**alpha * (1 - t) ** gamma
    loss = torch.where(positive, pos, neg)
    return _finish(loss, reduction, normalizer, out)


def gaussian_focal_loss_with_logits(
    logits: Tensor,
    target: Tensor,
    alpha: float = 2.0,
    gamma: float = 4.0,
    reduction: str = "sum",
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
    """
    if should_validate(validate, logits):
        check_finite(("logits", logits), ("target", target))
    _check_pair(logits, target, "logits")
    check_reduction(reduction)
    _check_exponents(alpha, gamma)
    out = output_dtype(logits)
    loss = _logits_focal(_compute(logits), target, alpha, gamma)
    return _finish(loss, reduction, normalizer, out)


class GaussianFocalLoss(nn.Module):
    """Module form of :func:`gaussian_focal_loss` (``logits=False``) and
    :func:`gaussian_focal_loss_with_logits` (``logits=True``, default)."""

    def __init__(
        self,
        alpha: float = 2.0,
        gamma: float = 4.0,
        reduction: str = "sum",
        logits: bool = True,
        eps: float = PROB_EPS,
        *,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        _check_exponents(alpha, gamma)
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction
        self.logits, self.eps = logits, eps
        self.validate = validate

    def forward(
        self, input: Tensor, target: Tensor, normalizer: Tensor | float | None = None
    ) -> Tensor:
        if should_validate(self.validate, input):
            check_finite(("input", input), ("target", target))
        if self.logits:
            return gaussian_focal_loss_with_logits(
                input,
                target,
                self.alpha,
                self.gamma,
                self.reduction,
                normalizer,
                validate=False,
            )
        return gaussian_focal_loss(
            input,
            target,
            self.alpha,
            self.gamma,
            self.reduction,
            normalizer,
            self.eps,
            validate=False,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}, logits={self.logits}"


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
    distributed: bool = True,
    return_terms: bool = False,
    validate: bool | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """The CenterNet objective: heatmap focal loss + L1 on size and offset at object cells.

    ``N`` = number of object cells in the batch (``targets["weight"].sum()``; two objects
    sharing a cell count once), summed over ranks and divided by the world size when
    ``distributed`` and a process group is initialised, clamped to >= 1
    (:func:`detloss.distributed.normalizer`). Then

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
        distributed: normalise by the global object count under ``torch.distributed``.
        return_terms: also return ``{"heatmap", "size", "offset"}`` (unweighted terms).
        validate: scan predictions and targets for NaN and inf first (a ValueError naming
            the entry; one host synchronisation); None (default) scans on the CPU only.

    Returns:
        The weighted total as a scalar, in the heatmap's dtype; with ``return_terms`` a
        tuple ``(total, terms)``.
    """
    _check_exponents(alpha, gamma)
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
    for value, name in ((size, "predictions['size']"), (offset, "predictions['offset']")):
        if value.shape != reg_shape:
            raise ValueError(
                f"{name}: expected shape {shape_str(reg_shape)}, got {shape_str(value.shape)}"
            )
    for value, name, shape in (
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
    count = global_normalizer(w.sum(), distributed=distributed).to(x.dtype)
    heat_term = _logits_focal(x, t_heat, alpha, gamma).sum() / count

    def l1(pred: Tensor, target: Tensor) -> Tensor:
        diff = (_compute(pred) - target.to(x.dtype)).abs() * w
        return diff.sum() / (2 * count)

    size_term = l1(size, t_size)
    offset_term = l1(offset, t_offset)
    total = heatmap_weight * heat_term + size_weight * size_term + offset_weight * offset_term
    total = total.to(out)
    if not return_terms:
        return total
    terms = {"heatmap": heat_term.to(out), "size": size_term.to(out), "offset": offset_term.to(out)}
    return total, terms


class CenterNetLoss(nn.Module):
    """Module form of :func:`centernet_loss`: stores the weights, exponents and the
    ``distributed`` flag; ``forward(predictions, targets, return_terms=False)``."""

    def __init__(
        self,
        heatmap_weight: float = 1.0,
        size_weight: float = 0.1,
        offset_weight: float = 1.0,
        distributed: bool = True,
        *,
        alpha: float = 2.0,
        gamma: float = 4.0,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        _check_exponents(alpha, gamma)
        self.validate = validate
        self.heatmap_weight = heatmap_weight
        self.size_weight = size_weight
        self.offset_weight = offset_weight
        self.distributed = distributed
        self.alpha, self.gamma = alpha, gamma

    def forward(
        self,
        predictions: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        return_terms: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        return centernet_loss(
            predictions,
            targets,
            self.heatmap_weight,
            self.size_weight,
            self.offset_weight,
            alpha=self.alpha,
            gamma=self.gamma,
            distributed=self.distributed,
            return_terms=return_terms,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        return (
            f"heatmap_weight={self.heatmap_weight}, size_weight={self.size_weight}, "
            f"offset_weight={self.offset_weight}, distributed={self.distributed}"
        )
