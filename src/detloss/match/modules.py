"""``nn.Module`` matchers: they hold cost weights, build the cost from a model's outputs
and the targets, and call a matcher function."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._api import renamed
from .._checks import check_choice, check_finite, check_shape, shape_str, should_validate
from .._signatures import bind_options, keyword_option, options_signature
from ..boxes import BOX_FORMATS, box_iou
from ..costs import DetectionCostOptions, detection_cost
from .hungarian import SOLVERS, hungarian
from .matching import Matching
from .targets import Targets, box_targets
from .threshold import max_iou

__all__ = ["BoxCostMatcher", "HungarianMatcher", "MaxIoUMatcher"]


def _outputs(outputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    if not isinstance(outputs, Mapping):
        raise TypeError(
            f"outputs must be a dict with 'pred_logits' and 'pred_boxes', got {type(outputs).__name__}"
        )
    missing = [k for k in ("pred_logits", "pred_boxes") if k not in outputs]
    if missing:
        raise ValueError(f"outputs: missing keys {missing}; got {sorted(outputs)}")
    logits = check_shape(
        outputs["pred_logits"], "outputs['pred_logits']", ndim=3, expected="[B, M, C]"
    )
    boxes = check_shape(
        outputs["pred_boxes"], "outputs['pred_boxes']", ndim=3, last=4, expected="[B, M, 4]"
    )
    if logits.shape[:2] != boxes.shape[:2]:
        raise ValueError(
            f"outputs['pred_boxes']: expected shape [{logits.shape[0]}, {logits.shape[1]}, 4] "
            f"to match pred_logits, got {shape_str(boxes.shape)}"
        )
    return logits, boxes


def _check_finite_inputs(
    outputs: Mapping[str, Tensor],
    logits: Tensor | None,
    boxes: Tensor,
    padded: dict[str, Tensor],
    boxes_name: str = "outputs['pred_boxes']",
) -> None:
    """NaN / inf in the real predictions (``pred_mask``) or real target boxes: a ValueError
    naming them, raised before a cost would hide where the value came from."""
    pred_mask = outputs.get("pred_mask")
    if not (isinstance(pred_mask, Tensor) and pred_mask.shape == boxes.shape[:2]):
        pred_mask = None  # the solver checks a malformed mask
    check_finite(
        ("outputs['pred_logits']", logits, pred_mask),
        (boxes_name, boxes, pred_mask),
        ("targets['boxes']", padded["boxes"], padded["mask"]),
    )


#: A box-cost matcher's constructor: :func:`detection_cost`'s options, read from its
#: signature; the weights and ``box_format`` also by position, as DETR's
#: ``HungarianMatcher(cost_class, cost_bbox, cost_giou)`` takes them.
COST_OPTIONS = options_signature(
    detection_cost,
    ("pred_logits", "pred_boxes", "target_labels", "target_boxes"),
    positional=4,
)
_VALIDATE = keyword_option("validate", None, "bool | None")


def matcher_signature(*extra: inspect.Parameter) -> inspect.Signature:
    """The constructor signature of a box-cost matcher with its own keyword-only
    ``extra`` options after :data:`COST_OPTIONS`."""
    return COST_OPTIONS.replace(parameters=[*COST_OPTIONS.parameters.values(), *extra])


class BoxCostMatcher(nn.Module):
    """Base of the matchers on the DETR box cost; subclasses implement :meth:`solve`.

    Args:
        cost_class, cost_bbox, cost_giou, box_format, l1_format, class_cost_kind,
            background, focal_alpha, focal_gamma: the options of
            :func:`detloss.costs.detection_cost` (DETR's weights: 1, 5, 2), with its names
            and defaults, checked once here (a :class:`~detloss.costs.DetectionCostOptions`)
            and stored under the same names. ``class_cost_kind`` was ``class_cost``
            (the old name raises a TypeError naming the new one).
        validate: scan the real predictions and target boxes for NaN and inf before
            building the cost (a ValueError naming ``pred_logits``, ``pred_boxes`` or the
            target ``boxes``; one host synchronisation). None (default) scans on the CPU
            only; elsewhere the solver's own check of the cost still rejects NaN, and the
            inputs are then scanned to name the one to blame.

    Shape:
        - outputs["pred_logits"]: ``[B, M, C]``; outputs["pred_boxes"]: ``[B, M, 4]``
        - targets: ``n_i`` boxes per image, padded to ``[B, N, 4]``
        - cost: ``[B, M, N]``

    Example:
        >>> matcher = BoxCostMatcher(cost_giou=0.0)
        >>> outputs = {"pred_logits": torch.zeros(1, 2, 3),
        ...            "pred_boxes": torch.tensor([[[0.0, 0, 1, 1], [2, 2, 3, 3]]])}
        >>> cost, mask = matcher.cost(outputs, [{"boxes": torch.tensor([[2.0, 2, 3, 3]]),
        ...                                      "labels": torch.tensor([0])}])
        >>> cost.squeeze(-1)
        tensor([[39.6667, -0.3333]])
    """

    # What inspect.signature and help() show; __init__ binds its arguments to it.
    __signature__ = matcher_signature(_VALIDATE)

    @renamed(class_cost="class_cost_kind")
    def __init__(self, *args: Any, validate: bool | None = None, **kwargs: Any) -> None:
        super().__init__()
        arguments = bind_options(COST_OPTIONS, type(self).__name__, args, kwargs)
        # Checked once, here; each option is then an attribute of the same name.
        options = DetectionCostOptions(**arguments)
        for name, value in options.kwargs().items():
            setattr(self, name, value)
        self.validate = validate

    def cost_options(self) -> dict[str, Any]:
        """The keyword options this matcher passes to :func:`detloss.costs.detection_cost`.

        Example:
            >>> BoxCostMatcher(class_cost_kind="focal").cost_options()["class_cost_kind"]
            'focal'
        """
        return {name: getattr(self, name) for name in COST_OPTIONS.parameters}

    def cost(self, outputs: Mapping[str, Tensor], targets: Targets) -> tuple[Tensor, Tensor]:
        """The ``[B, M, N]`` cost and the ``[B, N]`` target mask (see the class example)."""
        logits, boxes = _outputs(outputs)
        padded = box_targets(targets, logits.shape[0], logits.device)
        if should_validate(self.validate, logits):
            _check_finite_inputs(outputs, logits, boxes, padded)
        cost = detection_cost(
            logits.detach(),
            boxes.detach(),
            padded["labels"],
            padded["boxes"],
            **self.cost_options(),
        )
        return cost, padded["mask"]

    def solve(self, cost: Tensor, target_mask: Tensor, pred_mask: Tensor | None) -> Matching:
        """The matching of a ``[B, M, N]`` cost (subclasses)."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(
        self, outputs: Mapping[str, Tensor], targets: Targets, anchors: Tensor | None = None
    ) -> Matching:
        cost, target_mask = self.cost(outputs, targets)
        try:
            return self.solve(cost, target_mask, outputs.get("pred_mask"))
        except ValueError:
            if not should_validate(self.validate, cost):
                # The inputs were not scanned (no sync on the way in): on the way out of an
                # invalid cost, name the input it came from where one is to blame.
                logits, boxes = _outputs(outputs)
                padded = box_targets(targets, logits.shape[0], logits.device)
                _check_finite_inputs(outputs, logits, boxes, padded)
            raise

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, box_format={self.box_format!r}, "
            f"class_cost_kind={self.class_cost_kind!r}"
        )


class HungarianMatcher(BoxCostMatcher):
    """DETR's matcher: the exact minimum-cost one-to-one matching on the box cost.

    Called as ``matcher(outputs, targets)`` with ``outputs = {"pred_logits": [B, M, C],
    "pred_boxes": [B, M, 4]}`` (optionally ``"pred_mask": bool[B, M]``) and targets a list
    of ``{"boxes", "labels"}`` dicts or the padded form; returns a :class:`Matching`.

    Takes :class:`BoxCostMatcher`'s arguments and ``solver`` (``"auto"``, ``"scipy"`` or
    ``"triton"``), passed to :func:`hungarian`: by default the GPU solves where the
    outputs are on one and Triton is installed.

    Shape:
        - outputs["pred_logits"]: ``[B, M, C]``; outputs["pred_boxes"]: ``[B, M, 4]``
        - result: a :class:`Matching` with ``pred_to_target [B, M]``

    Example:
        >>> matcher = HungarianMatcher()
        >>> outputs = {"pred_logits": torch.zeros(1, 3, 2),
        ...            "pred_boxes": torch.tensor([[[0.0, 0, 1, 1], [2, 2, 3, 3], [5, 5, 6, 6]]])}
        >>> targets = [{"boxes": torch.tensor([[5.0, 5, 6, 6], [0, 0, 1, 1]]),
        ...             "labels": torch.tensor([0, 1])}]
        >>> matcher(outputs, targets).pred_to_target
        tensor([[ 1, -1,  0]])
    """

    __signature__ = matcher_signature(_VALIDATE, keyword_option("solver", "auto", "str"))

    def __init__(self, *args: object, solver: str = "auto", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        check_choice(solver, "solver", SOLVERS)
        self.solver = solver

    def solve(self, cost: Tensor, target_mask: Tensor, pred_mask: Tensor | None) -> Matching:
        return hungarian(cost, target_mask=target_mask, pred_mask=pred_mask, solver=self.solver)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", solver={self.solver!r}"


#: :func:`max_iou`'s options as :class:`MaxIoUMatcher` takes them (all four by position).
_MAX_IOU_OPTIONS = options_signature(
    max_iou, ("iou", "target_mask", "pred_mask", "validate"), positional=4
)


class MaxIoUMatcher(nn.Module):
    """The IoU-threshold matcher (SSD / RetinaNet) as a module.

    Matches ``anchors`` (``[M, 4]`` or ``[B, M, 4]``) when given, else the predicted boxes,
    to the target boxes with :func:`max_iou`, whose options it takes.

    Shape:
        - outputs["pred_boxes"]: ``[B, M, 4]``; anchors: ``[M, 4]`` or ``[B, M, 4]``
        - result: a :class:`Matching` with ``pred_to_target [B, M]``

    Example:
        >>> matcher = MaxIoUMatcher(pos_threshold=0.5)
        >>> outputs = {"pred_logits": torch.zeros(1, 2, 2),
        ...            "pred_boxes": torch.tensor([[[0.0, 0, 1, 1], [5, 5, 6, 6]]])}
        >>> targets = [{"boxes": torch.tensor([[0.0, 0, 1, 1.2]]), "labels": torch.tensor([0])}]
        >>> matcher(outputs, targets).pred_to_target
        tensor([[ 0, -1]])
    """

    __signature__ = _MAX_IOU_OPTIONS.replace(
        parameters=[
            *_MAX_IOU_OPTIONS.parameters.values(),
            inspect.Parameter(
                "box_format",
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default="xyxy",
                annotation="str",
            ),
            _VALIDATE,
        ]
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        arguments = bind_options(self.__signature__, type(self).__name__, args, kwargs)
        check_choice(arguments["box_format"], "box_format", BOX_FORMATS)
        for name, value in arguments.items():
            setattr(self, name, value)

    def extra_repr(self) -> str:
        return ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self.__signature__.parameters
        )

    @torch.no_grad()
    def forward(
        self, outputs: Mapping[str, Tensor], targets: Targets, anchors: Tensor | None = None
    ) -> Matching:
        logits, boxes = _outputs(outputs)
        padded = box_targets(targets, logits.shape[0], logits.device)
        if anchors is not None:
            check_shape(anchors, "anchors", ndim=(2, 3), last=4, expected="[M, 4] or [B, M, 4]")
            if anchors.shape[-2] != boxes.shape[1]:
                raise ValueError(
                    f"anchors: expected {boxes.shape[1]} anchors (one per prediction), "
                    f"got shape {shape_str(anchors.shape)}"
                )
            boxes = anchors.expand(boxes.shape[0], -1, -1) if anchors.ndim == 2 else anchors
        if should_validate(self.validate, boxes):
            # Only the boxes enter the IoU; the logits are not read.
            name = "outputs['pred_boxes']" if anchors is None else "anchors"
            _check_finite_inputs(outputs, None, boxes, padded, name)
        iou = box_iou(boxes.detach(), padded["boxes"], box_format=self.box_format)
        return max_iou(
            iou,
            **{name: getattr(self, name) for name in _MAX_IOU_OPTIONS.parameters},
            target_mask=padded["mask"],
            pred_mask=outputs.get("pred_mask"),
            validate=False,  # finite boxes (scanned above when validating) give finite IoUs
        )
