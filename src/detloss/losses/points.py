"""The P2PNet point loss: one-to-one matching, then point classification and localisation.

Song et al., "Rethinking Counting and Localization in Crowds: A Purely Point-Based
Framework" (ICCV 2021).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import (
    check_choice,
    check_finite,
    check_nonnegative,
    check_reduction,
    compute_dtype,
    output_dtype,
    shape_str,
    should_validate,
)
from ..distributed import normalizer
from ..match.matching import Matching
from ..match.points import (
    PointTargets,
    check_point_inputs,
    check_tau,
    match_points,
    point_targets,
)
from ._module import FunctionLoss

__all__ = ["HEADS", "PointLoss", "point_loss"]

HEADS = ("sigmoid", "softmax")


def _check_head(head: object, pred_logits: Tensor) -> None:
    check_choice(head, "head", HEADS)
    b, m = pred_logits.shape[:2]
    if head == "sigmoid" and pred_logits.ndim != 2:
        raise ValueError(
            f"pred_logits: expected shape [{b}, {m}] for head='sigmoid', "
            f"got {shape_str(pred_logits.shape)}"
        )
    if head == "softmax" and pred_logits.ndim != 3:
        raise ValueError(
            f"pred_logits: expected shape [{b}, {m}, 2] for head='softmax', "
            f"got {shape_str(pred_logits.shape)}"
        )


def _check_matching(matching: object, b: int, m: int, n: int) -> Matching:
    if not isinstance(matching, Matching):
        raise TypeError(f"matching must be a Matching, got {type(matching).__name__}")
    if tuple(matching.pred_to_target.shape) != (b, m) or matching.num_target_slots != n:
        raise ValueError(
            f"matching: expected pred_to_target [{b}, {m}] over {n} target slots, got "
            f"{shape_str(matching.pred_to_target.shape)} over {matching.num_target_slots}"
        )
    return matching


def _check_magnitude(
    pred_points: Tensor, target_xy: Tensor, target_mask: Tensor, dtype: torch.dtype
) -> None:
    """Coordinates whose squared distances would overflow the compute dtype (beyond about
    6.5e18 in float32) are rejected: the loss would be inf."""
    # Two squared coordinate differences of at most twice the limit stay finite.
    limit = math.sqrt(torch.finfo(dtype).max / 8)
    for name, values in (
        ("pred_points", pred_points.detach()),
        ("targets' points", target_xy[target_mask]),
    ):
        largest = values.abs().amax() if values.numel() else None
        if largest is not None and bool(largest > limit) and bool(torch.isfinite(largest)):
            raise ValueError(
                f"{name}: expected coordinates of magnitude <= {limit:.3g} (squared "
                f"distances must stay finite in {dtype}), got {float(largest):.3g}"
            )


def _check_options(
    tau: float, neg_weight: float, loc_weight: float, reduction: str
) -> tuple[float, float, float]:
    check_reduction(reduction)
    return (
        check_tau(tau),
        check_nonnegative(neg_weight, "neg_weight"),
        check_nonnegative(loc_weight, "loc_weight"),
    )


def point_loss(
    pred_points: Tensor,
    pred_logits: Tensor,
    targets: PointTargets | Tensor,
    *,
    tau: float = 0.05,
    neg_weight: float = 0.5,
    loc_weight: float = 2e-4,
    head: str = "sigmoid",
    reduction: str = "mean",
    distributed: bool = True,
    matching: Matching | None = None,
    return_terms: bool = False,
    validate: bool | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """The P2PNet loss ``cls + loc_weight * loc`` on the exact point matching.

    Args:
        pred_points: ``Tensor[B, M, 2]`` proposal coordinates (x, y), in the targets' units.
        pred_logits: ``Tensor[B, M]`` for ``head="sigmoid"``, ``Tensor[B, M, 2]`` for
            ``head="softmax"`` (index 0 background, index 1 person).
        targets: a list of ``Tensor[n_i, 2]``, a list of ``{"points": [n_i, 2]}`` dicts,
            padded ``{"points": [B, N, 2], "mask": bool[B, N]}``, or a ``Tensor[B, N, 2]``
            whose slots are all real.
        tau: distance weight of the matching cost ``tau * ||p - t|| - prob`` (>= 0).
        neg_weight: classification weight of unmatched proposals (>= 0); matched ones
            weigh 1.
        loc_weight: weight of the localisation term (>= 0).
        head: ``"sigmoid"`` (binary cross-entropy, per image) or ``"softmax"`` (the
            official P2PNet code: 2-way cross-entropy over the batch).
        reduction: ``"mean"`` (default) the loss below; ``"sum"`` the sum before the
            cross-image division (by ``B`` for the sigmoid head, by the class weight sum
            and ``K`` for the softmax head); ``"none"`` those sums per image,
            ``Tensor[B]``.
        distributed: normalise the cross-image counts by their global value over ranks
            (:func:`detloss.distributed.normalizer`); without a process group it changes
            nothing.
        matching: a precomputed matching (e.g. from :func:`match_points`) to use instead
            of matching here.
        return_terms: also return ``{"cls": ..., "loc": ...}``, the unweighted terms
            (``total = cls + loc_weight * loc``).
        validate: scan predictions and the real target points for NaN and inf first (a
            ValueError naming the argument; one host synchronisation); None (default)
            scans on the CPU only. Without a ``matching``, the matcher rejects non-finite
            inputs in any case (it solves on the host).

    ``head="sigmoid"`` (default). Per image ``b`` with ``M`` proposals and ``K_b`` matched
    pairs ``(j, i)``::

        cls_b = (1 / M) * sum_j w_j * BCE(logit_j, y_j)     w_j = 1 if matched else neg_weight
        loc_b = (1 / K_b) * sum_(j, i) ||p_j - t_i||^2       (0 when K_b = 0)

    and ``cls``, ``loc`` are their means over the images. ``loc`` is the mean *squared
    Euclidean distance* of a pair (the paper's and the official code's form): twice the
    per-coordinate mean that ``F.mse_loss(p, t)`` returns. ``M`` and ``K_b`` are per-image
    normalisers; only the image count ``B`` crosses images and goes through
    :func:`~detloss.distributed.normalizer`.

    ``head="softmax"``. Over the whole batch, as the official code::

        cls = sum_bj w_bj * CE(logits_bj, y_bj) / sum_bj w_bj   (torch's weighted mean)
        loc = sum_pairs ||p_j - t_i||^2 / K                      (K: matched pairs of the batch)

    Both denominators cross images and go through the normaliser (``K`` clamped to >= 1).
    The official code divides by the number of annotated points, equal to ``K`` whenever
    no image has more points than proposals.

    Coordinates beyond ``sqrt(max / 8)`` of the compute dtype (about 6.5e18 in float32),
    whose squared distances would overflow, raise a ``ValueError`` naming the argument on
    the CPU (elsewhere, where the check would cost a host synchronisation, the loss is
    inf). An image without points gives ``loc_b = 0`` and pushes every proposal down. Values
    and gradients stay finite for empty images and empty batches. Half precision is
    computed in float32; the result has the inputs' floating dtype. The matching is
    computed without gradient; the loss itself gathers each proposal's matched target, so
    it needs no ``[M, N]`` tensor.

    Shape:
        - pred_points: ``[B, M, 2]``.
        - pred_logits: ``[B, M]`` (sigmoid head) or ``[B, M, 2]`` (softmax head).
        - targets: ``B`` point sets ``[n_i, 2]`` or padded ``[B, N, 2]``.
        - output: ``[]``, or ``[B]`` with ``reduction="none"``.

    Example:
        >>> pred_points = torch.tensor([[[0.0, 0.0], [10.0, 10.0]]])
        >>> pred_logits = torch.tensor([[0.0, 0.0]])
        >>> total, terms = point_loss(
        ...     pred_points, pred_logits, [torch.tensor([[1.0, 0.0]])], return_terms=True
        ... )
        >>> terms["loc"]  # the matched pair is 1 pixel apart
        tensor(1.)
    """
    check_point_inputs(pred_points, pred_logits)
    _check_head(head, pred_logits)
    tau, neg_weight, loc_weight = _check_options(tau, neg_weight, loc_weight, reduction)
    b, m = pred_points.shape[:2]
    device = pred_points.device
    target_xy, target_mask = point_targets(targets, None, b, device)
    if should_validate(validate, pred_points):
        check_finite(
            ("pred_points", pred_points),
            ("pred_logits", pred_logits),
            ("targets", target_xy, target_mask),
        )
    n = target_xy.shape[1]
    if device.type == "cpu":  # a host read costs nothing here
        _check_magnitude(
            pred_points, target_xy, target_mask, compute_dtype(pred_points, pred_logits)
        )
    if matching is None:
        matching = match_points(
            pred_points.detach(), pred_logits.detach(), target_xy, target_mask=target_mask, tau=tau
        )
    else:
        matching = _check_matching(matching, b, m, n).to(device)

    out = output_dtype(pred_points, pred_logits)
    dtype = compute_dtype(pred_points, pred_logits)
    xy = pred_points.to(dtype)
    logits = pred_logits.to(dtype)
    positive = matching.positive_mask
    num_pos = positive.sum(dim=1)

    if n == 0:
        matched_xy = torch.zeros_like(xy)
    else:
        index = matching.matched_targets().unsqueeze(-1).expand(b, m, 2)
        matched_xy = target_xy.to(dtype).gather(1, index)
    # Unmatched proposals are compared with themselves: a zero difference with a zero
    # gradient, so whatever a padded slot holds (even NaN) reaches neither the loss nor
    # its gradient, as it would through a product with the mask.
    matched_xy = torch.where(positive.unsqueeze(-1), matched_xy, xy.detach())
    sq_dist = (xy - matched_xy).square().sum(dim=-1)

    weight = torch.where(positive, 1.0, neg_weight).to(dtype)
    weight = weight.masked_fill(matching.ignored_mask, 0.0)

    if head == "sigmoid":
        bce = F.binary_cross_entropy_with_logits(logits, positive.to(dtype), reduction="none")
        cls = (weight * bce).sum(dim=1) / max(m, 1)
        loc = sq_dist.sum(dim=1) / num_pos.clamp(min=1).to(dtype)
        if reduction != "none":
            cls, loc = cls.sum(), loc.sum()
        if reduction == "mean":
            images = normalizer(torch.full((), b, dtype=dtype, device=device), distributed)
            cls, loc = cls / images.to(dtype), loc / images.to(dtype)
    else:
        labels = positive.long().unsqueeze(-1)
        ce = -logits.log_softmax(dim=-1).gather(-1, labels).squeeze(-1)
        cls = (weight * ce).sum(dim=1)
        loc = sq_dist.sum(dim=1)
        if reduction != "none":
            cls, loc = cls.sum(), loc.sum()
        if reduction == "mean":
            # The weight sum may be 0 (neg_weight = 0, nothing matched): the numerator is
            # then 0 too, and a tiny clamp keeps 0 / 0 at 0.
            tiny = torch.finfo(dtype).tiny
            cls = cls / normalizer(weight.sum(), distributed, minimum=tiny).to(dtype)
            loc = loc / normalizer(num_pos.sum(), distributed).to(dtype)

    total = (cls + loc_weight * loc).to(out)
    if return_terms:
        return total, {"cls": cls.to(out), "loc": loc.to(out)}
    return total


class PointLoss(
    FunctionLoss,
    function=point_loss,
    call_args=("pred_points", "pred_logits", "targets", "matching", "return_terms"),
):
    """Module form of :func:`point_loss`: stores ``tau``, ``neg_weight``, ``loc_weight``,
    ``head``, ``reduction``, ``distributed`` and ``validate`` (P2PNet's defaults 0.05,
    0.5, 2e-4).

    Called as ``loss(pred_points, pred_logits, targets)`` or, with the model's output
    dict, ``loss({"pred_points": ..., "pred_logits": ...}, targets)``; keyword arguments
    ``matching`` and ``return_terms`` as in :func:`point_loss`.

    Shape:
        - pred_points: ``[B, M, 2]``; pred_logits: ``[B, M]`` or ``[B, M, 2]``.
        - output: ``[]``, or ``[B]`` with ``reduction="none"``.

    Example:
        >>> loss = PointLoss(loc_weight=1.0)
        >>> outputs = {"pred_points": torch.tensor([[[0.0, 0.0]]]),
        ...            "pred_logits": torch.tensor([[0.0]])}
        >>> loss(outputs, [torch.tensor([[0.0, 1.0]])], return_terms=True)[1]["loc"]
        tensor(1.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_choice(self.head, "head", HEADS)
        self.tau, self.neg_weight, self.loc_weight = _check_options(
            self.tau, self.neg_weight, self.loc_weight, self.reduction
        )

    def forward(
        self,
        pred_points: Tensor | Mapping[str, Tensor],
        pred_logits: Tensor | PointTargets | None = None,
        targets: PointTargets | Tensor | None = None,
        *,
        matching: Matching | None = None,
        return_terms: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        if isinstance(pred_points, Mapping):
            if targets is not None:
                raise TypeError(
                    "PointLoss: called with an output dict, expected loss(outputs, targets), "
                    "got a third positional argument"
                )
            outputs, targets = pred_points, pred_logits
            missing = [k for k in ("pred_points", "pred_logits") if k not in outputs]
            if missing:
                raise ValueError(
                    f"outputs: expected keys ['pred_logits', 'pred_points'], missing {missing}"
                )
            pred_points, pred_logits = outputs["pred_points"], outputs["pred_logits"]
        if targets is None or pred_logits is None:
            raise TypeError(
                "PointLoss: expected loss(pred_points, pred_logits, targets) or "
                "loss(outputs, targets), got too few arguments"
            )
        return super().forward(
            pred_points, pred_logits, targets, matching=matching, return_terms=return_terms
        )
