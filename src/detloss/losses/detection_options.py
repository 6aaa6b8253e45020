"""The options of :func:`~detloss.losses.detection_loss` and
:class:`~detloss.losses.DetectionLoss`, declared and validated once."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import Tensor

from .._checks import check_choice, check_reduction
from ..boxes import BOX_FORMATS

__all__ = [
    "BACKGROUNDS",
    "CLS_LOSSES",
    "DEFAULT_LOC_LOSSES",
    "LOC_LOSSES",
    "LOC_NORMALIZERS",
    "DetectionOptions",
]

#: Built-in classification losses (a callable is accepted too, see :func:`detection_loss`).
CLS_LOSSES = ("ce", "focal", "bce", "negative_prob")
#: Localisation losses that ``loc_losses`` may name.
LOC_LOSSES = ("l1", "smooth_l1", "iou", "giou", "diou", "ciou")
#: ``loc_losses`` when None is given: DETR's weights.
DEFAULT_LOC_LOSSES: Mapping[str, float] = MappingProxyType({"l1": 5.0, "giou": 2.0})
#: Where the background logit sits: last (DETR), first (SSD), or no background logit.
BACKGROUNDS = ("last", "first", "none")
#: What ``reduction="mean"`` divides the localisation sums by: the matched predictions
#: (plan mass on real targets), or the real target boxes (DETR's ``num_boxes``).
LOC_NORMALIZERS = ("matched", "targets")

ClassLoss = str | Callable[[Tensor, Tensor], Tensor]


def _check_weight(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


@dataclass(frozen=True)
class DetectionOptions:
    """The settings of :func:`~detloss.losses.detection_loss` (see there for each one),
    checked when built; :class:`~detloss.losses.DetectionLoss` builds one in its
    constructor and passes it at every call, so each option is declared here once.

    ``loc_losses=None`` becomes DETR's ``{"l1": 5.0, "giou": 2.0}``, ``l1_format=None``
    the ``box_format``, and numbers become floats.

    Shape:
        - no tensors: a frozen record of Python values

    Example:
        >>> options = DetectionOptions(cls_loss="focal", background="none")
        >>> options.loc_losses, options.l1_format
        ({'l1': 5.0, 'giou': 2.0}, 'xyxy')
        >>> DetectionOptions(reduction="avg")
        Traceback (most recent call last):
        ...
        ValueError: reduction must be one of 'none', 'mean', 'sum', got 'avg'
    """

    cls_loss: ClassLoss = "ce"
    loc_losses: Mapping[str, float] | None = None
    background: str = "last"
    no_object_weight: float = 0.1
    hard_negative_ratio: float | None = None
    reduction: str = "mean"
    box_format: str = "xyxy"
    l1_format: str | None = None
    distributed: bool = True
    cls_weight: float = 1.0
    focal_alpha: float | None = 0.25
    focal_gamma: float = 2.0
    smooth_l1_beta: float = 1.0
    loc_normalizer: str = "matched"

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> DetectionOptions:
        """The options among a function's ``arguments`` (e.g. its ``locals()``)."""
        return cls(**{f.name: arguments[f.name] for f in _FIELDS if f.name in arguments})

    def __post_init__(self) -> None:
        def store(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        check_choice(self.background, "background", BACKGROUNDS)
        cls_loss = self.cls_loss
        if isinstance(cls_loss, str):
            check_choice(cls_loss, "cls_loss", CLS_LOSSES)
        elif not callable(cls_loss):
            raise TypeError(
                f"cls_loss must be one of {CLS_LOSSES} or a callable, got {type(cls_loss).__name__}"
            )
        softmax_like = not isinstance(cls_loss, str) or cls_loss in ("ce", "negative_prob")
        if softmax_like and self.background == "none":
            shown = repr(cls_loss) if isinstance(cls_loss, str) else "a callable"
            raise ValueError(
                f"background: cls_loss={shown} trains unmatched predictions on a background "
                "logit, so background must be 'first' or 'last', got 'none'"
            )
        loc_losses = DEFAULT_LOC_LOSSES if self.loc_losses is None else self.loc_losses
        if not isinstance(loc_losses, Mapping):
            raise TypeError(
                f"loc_losses must be a dict of name -> weight, got {type(loc_losses).__name__}"
            )
        checked: dict[str, float] = {}
        for name, weight in loc_losses.items():
            check_choice(name, "loc_losses key", LOC_LOSSES)
            checked[name] = _check_weight(weight, f"loc_losses[{name!r}]")
        store("loc_losses", checked)
        store("no_object_weight", _check_weight(self.no_object_weight, "no_object_weight"))
        store("cls_weight", _check_weight(self.cls_weight, "cls_weight"))
        if self.hard_negative_ratio is not None:
            ratio = _check_weight(self.hard_negative_ratio, "hard_negative_ratio")
            if ratio == 0:
                raise ValueError(
                    f"hard_negative_ratio must be > 0 (or None to disable mining), got {ratio}"
                )
            store("hard_negative_ratio", ratio)
        check_reduction(self.reduction)
        check_choice(self.box_format, "box_format", BOX_FORMATS)
        if self.l1_format is None:
            store("l1_format", self.box_format)
        check_choice(self.l1_format, "l1_format", BOX_FORMATS)
        if self.focal_alpha is not None and not 0 <= self.focal_alpha <= 1:
            raise ValueError(f"focal_alpha must be in [0, 1] or None, got {self.focal_alpha}")
        store("focal_gamma", _check_weight(self.focal_gamma, "focal_gamma"))
        store("smooth_l1_beta", _check_weight(self.smooth_l1_beta, "smooth_l1_beta"))
        check_choice(self.loc_normalizer, "loc_normalizer", LOC_NORMALIZERS)
        store("distributed", bool(self.distributed))


_FIELDS = tuple(f for f in dataclasses.fields(DetectionOptions) if not f.name.startswith("_"))
