"""The optimal-transport matcher on the DETR box cost: :func:`sinkhorn` as an ``nn.Module``."""

from __future__ import annotations

import dataclasses

from torch import Tensor

from .._signatures import keyword_option
from .matching import Matching
from .modules import BoxCostMatcher, matcher_signature
from .sinkhorn import SinkhornOptions, sinkhorn

__all__ = ["SinkhornMatcher"]

_OPTION_NAMES = tuple(field.name for field in dataclasses.fields(SinkhornOptions))


class SinkhornMatcher(BoxCostMatcher):
    """Optimal-transport matcher on the DETR box cost: :func:`sinkhorn` of
    ``cost_class * class + cost_bbox * L1 + cost_giou * (-GIoU)`` with a background column.

    Takes :class:`BoxCostMatcher`'s arguments (the cost weights, box formats, class cost)
    and, by keyword, the options of :func:`sinkhorn` with its names and defaults (``reg``,
    ``reg_dimless``, ``tau_pred``, ``tau_target``, ``background_cost``, ``normalize``,
    ``max_iter``, ``tol``, ``check_every``, ``eps_scaling``, ``validate``), checked here
    and stored once as :attr:`options` (a :class:`SinkhornOptions`). ``background_cost``
    is in units of the weighted cost; ``validate`` also scans the predictions and target
    boxes, as :class:`BoxCostMatcher` does.

    Called as ``matcher(outputs, targets)`` like :class:`HungarianMatcher` (``outputs``
    may carry ``"pred_mask": bool[B, M]``); returns a :class:`Matching` whose ``plan`` a
    matched loss uses as soft weights.

    Shape:
        - outputs: ``pred_logits [B, M, C]``, ``pred_boxes [B, M, 4]``, optionally
          ``pred_mask bool[B, M]``
        - targets: a list of ``{"boxes": [N_i, 4], "labels": [N_i]}`` or the padded form
        - output: ``plan [B, M, N + 1]``, ``pred_to_target [B, M]``

    Example:
        >>> import torch
        >>> matcher = SinkhornMatcher(tau_pred=1.0, tau_target=0.1, background_cost=0.5)
        >>> outputs = {"pred_logits": torch.zeros(1, 3, 2),
        ...            "pred_boxes": torch.tensor([[[0.0, 0.0, 0.2, 0.2],
        ...                                         [0.5, 0.5, 0.9, 0.9],
        ...                                         [0.0, 0.6, 0.1, 0.7]]])}
        >>> targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.9, 0.9]]), "labels": torch.tensor([1])}]
        >>> matcher(outputs, targets).pred_to_target
        tensor([[-1,  0, -1]])
        >>> matcher.options.tau_pred
        1.0
    """

    options: SinkhornOptions
    __signature__ = matcher_signature(
        *(keyword_option(f.name, f.default, f.type) for f in dataclasses.fields(SinkhornOptions))
    )

    def __init__(self, *args: object, **kwargs: object) -> None:
        # Checked now (one SinkhornOptions), not at the first batch.
        options = SinkhornOptions(**{k: kwargs.pop(k) for k in _OPTION_NAMES if k in kwargs})
        super().__init__(*args, validate=options.validate, **kwargs)  # type: ignore[arg-type]
        self.options = options

    def solve(self, cost: Tensor, target_mask: Tensor, pred_mask: Tensor | None) -> Matching:
        return sinkhorn(cost, target_mask=target_mask, pred_mask=pred_mask, **self.options.kwargs())

    def extra_repr(self) -> str:
        default = SinkhornOptions()
        changed = [
            f"{name}={value!r}"
            for name, value in self.options.kwargs().items()
            if isinstance(value, Tensor) or value != getattr(default, name)
        ]
        return ", ".join([super().extra_repr(), *changed])
