"""``nn.Module`` matchers: they hold cost weights, build the cost from a model's outputs
and the targets, and call a matcher function."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_finite, check_shape, shape_str, should_validate
from ..batching import as_padded
from ..boxes import BOX_FORMATS, box_iou
from ..costs import BACKGROUNDS, CLASS_COSTS, detection_cost
from .hungarian import SOLVERS, hungarian
from .matching import Matching
from .threshold import max_iou

__all__ = ["BoxCostMatcher", "HungarianMatcher", "MaxIoUMatcher", "Targets", "box_targets"]

Targets = Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor]


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


def box_targets(targets: Targets, batch_size: int, device: torch.device) -> dict[str, Tensor]:
    """Padded ``boxes [B, N, 4]``, ``labels [B, N]`` and ``mask [B, N]`` from any target form."""
    padded = as_padded(targets, ("boxes", "labels"), batch_size=batch_size, device=device)
    check_shape(padded["boxes"], "targets['boxes']", ndim=3, last=4, expected="[B, N, 4]")
    if padded["labels"].is_floating_point():
        raise TypeError(f"targets['labels'] must be integers, got {padded['labels'].dtype}")
    return padded


class BoxCostMatcher(nn.Module):
    """Base of the matchers on the DETR box cost; subclasses implement :meth:`solve`.

    Args:
        cost_class, cost_bbox, cost_giou: weights of the class cost, the L1 box cost and
            the negative-GIoU cost (DETR: 1, 5, 2).
        box_format: format of ``pred_boxes`` and the target boxes.
        l1_format: format in which the L1 cost compares boxes (default ``box_format``).
        class_cost: ``"softmax"``, ``"sigmoid"`` or ``"focal"`` (see :func:`class_cost`).
        background: position of a softmax head's background logit.
        validate: scan the real predictions and target boxes for NaN and inf before
            building the cost (a ValueError naming ``pred_logits``, ``pred_boxes`` or the
            target ``boxes``; one host synchronisation). None (default) scans on the CPU
            only; elsewhere the solver's own check of the cost still rejects NaN, and the
            inputs are then scanned to name the one to blame.
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        box_format: str = "xyxy",
        *,
        l1_format: str | None = None,
        class_cost: str = "softmax",
        background: str = "last",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        check_choice(box_format, "box_format", BOX_FORMATS)
        self.validate = validate
        if l1_format is not None:
            check_choice(l1_format, "l1_format", BOX_FORMATS)
        check_choice(class_cost, "class_cost", CLASS_COSTS)
        check_choice(background, "background", BACKGROUNDS)
        for name, w in (
            ("cost_class", cost_class),
            ("cost_bbox", cost_bbox),
            ("cost_giou", cost_giou),
        ):
            if w < 0:
                raise ValueError(f"{name} must be >= 0, got {w}")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.box_format = box_format
        self.l1_format = l1_format
        self.class_cost = class_cost
        self.background = background
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def cost(self, outputs: Mapping[str, Tensor], targets: Targets) -> tuple[Tensor, Tensor]:
        """The ``[B, M, N]`` cost and the ``[B, N]`` target mask."""
        logits, boxes = _outputs(outputs)
        padded = box_targets(targets, logits.shape[0], logits.device)
        if should_validate(self.validate, logits):
            _check_finite_inputs(outputs, logits, boxes, padded)
        cost = detection_cost(
            logits.detach(),
            boxes.detach(),
            padded["labels"],
            padded["boxes"],
            cost_class=self.cost_class,
            cost_bbox=self.cost_bbox,
            cost_giou=self.cost_giou,
            box_format=self.box_format,
            l1_format=self.l1_format,
            class_cost_kind=self.class_cost,
            background=self.background,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
        )
        return cost, padded["mask"]

    def solve(self, cost: Tensor, target_mask: Tensor, pred_mask: Tensor | None) -> Matching:
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
            f"class_cost={self.class_cost!r}"
        )


class HungarianMatcher(BoxCostMatcher):
    """DETR's matcher: the exact minimum-cost one-to-one matching on the box cost.

    Called as ``matcher(outputs, targets)`` with ``outputs = {"pred_logits": [B, M, C],
    "pred_boxes": [B, M, 4]}`` (optionally ``"pred_mask": bool[B, M]``) and targets a list
    of ``{"boxes", "labels"}`` dicts or the padded form; returns a :class:`Matching`.

    Takes :class:`BoxCostMatcher`'s arguments and ``solver`` (``"auto"``, ``"scipy"`` or
    ``"triton"``), passed to :func:`hungarian`: by default the GPU solves where the
    outputs are on one and Triton is installed.
    """

    def __init__(self, *args: object, solver: str = "auto", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        check_choice(solver, "solver", SOLVERS)
        self.solver = solver

    def solve(self, cost: Tensor, target_mask: Tensor, pred_mask: Tensor | None) -> Matching:
        return hungarian(cost, target_mask, pred_mask, solver=self.solver)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", solver={self.solver!r}"


class MaxIoUMatcher(nn.Module):
    """The IoU-threshold matcher (SSD / RetinaNet) as a module.

    Matches ``anchors`` (``[M, 4]`` or ``[B, M, 4]``) when given, else the predicted boxes,
    to the target boxes with :func:`max_iou`.
    """

    def __init__(
        self,
        pos_threshold: float = 0.5,
        neg_threshold: float | None = None,
        force_best: bool = True,
        allow_low_quality: bool = False,
        box_format: str = "xyxy",
        *,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        check_choice(box_format, "box_format", BOX_FORMATS)
        self.validate = validate
        self.pos_threshold = pos_threshold
        self.neg_threshold = neg_threshold
        self.force_best = force_best
        self.allow_low_quality = allow_low_quality
        self.box_format = box_format

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
            self.pos_threshold,
            self.neg_threshold,
            self.force_best,
            allow_low_quality=self.allow_low_quality,
            target_mask=padded["mask"],
            pred_mask=outputs.get("pred_mask"),
            validate=False,  # finite boxes (scanned above when validating) give finite IoUs
        )
