"""The four training objectives of the SSD-style detector (``--detector ssd``).

* ``multibox``: :class:`~detloss.losses.ssd.MultiBoxLoss` (max-IoU matching at 0.5 with
  each object forced onto its best prior, Smooth-L1 on encoded offsets, 3:1 hard
  negatives, divided by the positives);
* ``hungarian``: the matched detection loss (:func:`~detloss.losses.detection.detection_loss`)
  with an exact one-to-one :func:`~detloss.match.hungarian` matching of priors to objects
  on the cost ``1 - IoU(prior, object)``, 3:1 hard negatives;
* ``sinkhorn``: the same loss with the unbalanced :func:`~detloss.match.sinkhorn` plan on
  the same cost, with a background cost (the optimal-transport detection loss's SSD
  recipe), 3:1 hard negatives weighted by the plan;
* ``ap_loss``: :func:`~detloss.losses.ranking.ap_loss` over every prior x class of the
  batch (priors labelled by max-IoU: positive at 0.5, ignored between 0.4 and 0.5),
  Smooth-L1 on the positives' offsets.

Every objective localises the same way: Smooth-L1 (beta 1) on SSD's encoded offsets of
the priors that answer for an object, weighted by the matching's plan (0/1 for the hard
matchings) and divided by the plan's mass on objects. The objectives differ only in which
priors answer for which object and in how the classification is trained.

``detloss train --task boxes --detector ssd --objective NAME`` trains one of them
(:class:`~detloss.app.training.tasks.SsdTask`); ``detloss compare`` trains them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ...anchors import decode_boxes, encode_boxes
from ...batching import pad_targets
from ...boxes import box_convert, box_iou
from ...losses.detection import detection_loss
from ...losses.ranking import ap_loss
from ...losses.regression import smooth_l1_loss
from ...losses.ssd import MultiBoxLoss
from ...match import Matching, hungarian, max_iou, sinkhorn

__all__ = [
    "DETECTORS",
    "OBJECTIVES",
    "SINKHORN_OPTIONS",
    "Objective",
    "build_objective",
    "check_choices",
    "match_priors",
    "pad_box_targets",
    "prior_iou",
]

#: The objectives of the SSD head, in the order of the comparison's table.
OBJECTIVES: tuple[str, ...] = ("multibox", "hungarian", "sinkhorn", "ap_loss")
#: The detectors the objectives are defined for.
DETECTORS: tuple[str, ...] = ("ssd",)

#: Sinkhorn settings of the ``sinkhorn`` objective (see docs/compare.md for the choice
#: of ``reg``): the priors' marginal nearly hard, the objects' nearly free.
SINKHORN_OPTIONS: dict[str, float] = {
    "reg": 0.03,
    "tau_pred": 1e3,
    "tau_target": 1e-3,
    "background_cost": 0.5,
}

Targets = Sequence[Mapping[str, Tensor]]


def check_choices(objectives: Sequence[str], detector: str = "ssd") -> tuple[str, ...]:
    """Validate the objective and detector names -> the objectives as a tuple.

    Raises:
        ValueError: one line naming the unknown value and the choices.
    """
    if detector not in DETECTORS:
        raise ValueError(
            f"--detector: unknown detector {detector!r}; choose from {', '.join(DETECTORS)}"
        )
    out = tuple(objectives)
    for name in out:
        if name not in OBJECTIVES:
            raise ValueError(
                f"--objective: unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}"
            )
    if not out:
        raise ValueError(f"--objective: expected at least one of {', '.join(OBJECTIVES)}")
    return out


# ----------------------------------------------------------------------------- objectives


def pad_box_targets(targets: Targets, device: torch.device) -> dict[str, Tensor]:
    """``{"boxes": [B, N, 4], "labels": int64[B, N], "mask": bool[B, N]}``."""
    return pad_targets(
        [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets], device=device
    )


def prior_iou(priors: Tensor, boxes: Tensor) -> Tensor:
    """IoU of the ``cxcywh`` priors ``[P, 4]`` with each image's ``xyxy`` objects
    ``[B, N, 4]`` -> ``Tensor[B, P, N]``."""
    prior_boxes = box_convert(priors, "cxcywh", "xyxy")
    return box_iou(prior_boxes.expand(boxes.shape[0], -1, -1), boxes)


def match_priors(method: str, priors: Tensor, padded: Mapping[str, Tensor]) -> Matching:
    """The matching of priors to objects under ``method``: ``"max_iou"`` (SSD's rule at
    0.5 with each object's best prior forced), ``"hungarian"`` (exact one-to-one on
    ``1 - IoU``) or ``"sinkhorn"`` (the unbalanced plan of :data:`SINKHORN_OPTIONS` on
    ``1 - IoU`` with a background cost)."""
    iou = prior_iou(priors, padded["boxes"])
    mask = padded["mask"]
    if method == "max_iou":
        return max_iou(iou, 0.5, target_mask=mask)
    if method == "hungarian":
        return hungarian(1.0 - iou, target_mask=mask)
    if method == "sinkhorn":
        return sinkhorn(1.0 - iou, target_mask=mask, tol=0, max_iter=20, **SINKHORN_OPTIONS)
    raise ValueError(f"method: expected 'max_iou', 'hungarian' or 'sinkhorn', got {method!r}")


def _offset_loss(loc: Tensor, priors: Tensor, boxes: Tensor, weights: Tensor) -> Tensor:
    """Smooth-L1 between ``loc [B, P, 4]`` and the offsets of every object ``[B, N, 4]``
    from every prior, weighted by ``weights [B, P, N]`` (a plan's object columns) and
    divided by their sum (clamped at 1)."""
    # Plan entries below 1e-3 carry a negligible share of the mass; leaving them out
    # spares the offsets of every prior x object pair of a soft plan.
    pairs = weights > 1e-3
    image, prior, obj = pairs.nonzero(as_tuple=True)
    target = encode_boxes(boxes[image, obj], priors[prior])
    per_pair = smooth_l1_loss(loc[image, prior], target, beta=1.0, reduction="none").sum(dim=-1)
    w = weights[image, prior, obj]
    return (w * per_pair).sum() / weights.sum().clamp(min=1.0)


class Objective:
    """A training objective of the SSD head: ``objective(outputs, priors, targets)`` ->
    scalar loss, with ``outputs = {"loc": [B, P, 4], "conf": [B, P, C + 1]}``, priors
    ``[P, 4]`` normalised ``cxcywh`` and targets per-image ``{"boxes": [n, 4] normalised
    xyxy, "labels": int64[n]}``. :meth:`detection_logits` gives the logits
    :func:`~detloss.postprocess.ssd.ssd_detect` ranks, keeping those whose probability
    exceeds :attr:`detection_threshold`."""

    name = ""
    detection_threshold = 0.01

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def __call__(self, outputs: Mapping[str, Tensor], priors: Tensor, targets: Targets) -> Tensor:
        raise NotImplementedError

    def detection_logits(self, conf: Tensor) -> Tensor:
        return conf


class MultiBoxObjective(Objective):
    """SSD's MultiBox loss."""

    name = "multibox"

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.loss = MultiBoxLoss(num_classes + 1, distributed=False)

    def __call__(self, outputs: Mapping[str, Tensor], priors: Tensor, targets: Targets) -> Tensor:
        return self.loss(outputs["loc"], outputs["conf"], priors, targets)  # type: ignore[return-value]


class MatchedObjective(Objective):
    """The matched detection loss with an anchor-based matching (``"hungarian"`` or
    ``"sinkhorn"``): cross-entropy over the matched priors and the 3:1 hardest background
    priors (weighted by the plan for Sinkhorn), plus the plan-weighted offset loss."""

    def __init__(self, num_classes: int, method: str) -> None:
        super().__init__(num_classes)
        self.name = method
        self.method = method

    def __call__(self, outputs: Mapping[str, Tensor], priors: Tensor, targets: Targets) -> Tensor:
        loc, conf = outputs["loc"], outputs["conf"]
        padded = pad_box_targets(targets, loc.device)
        with torch.no_grad():
            matching = match_priors(self.method, priors, padded)
            plan = matching.dense_plan()  # [B, P, N + 1]
        boxes = decode_boxes(loc, priors)
        cls = detection_loss(
            {"pred_logits": conf, "pred_boxes": boxes},
            padded,
            matching,
            background="first",
            no_object_weight=1.0,
            hard_negative_ratio=3.0,
            loc_losses={},
            distributed=False,
        )
        weights = plan[..., :-1] * padded["mask"][:, None, :]
        return cls + _offset_loss(loc, priors, padded["boxes"], weights)  # type: ignore[operator]


class APLossObjective(Objective):
    """AP-Loss on every prior x class of the batch plus Smooth-L1 on the positives.

    Priors are labelled by max-IoU (positive at IoU >= 0.5, each object's best prior
    forced; ignored between 0.4 and 0.5; background below). The head's background logit
    takes no part: detections rank the class logits against a fixed background logit 0.
    """

    name = "ap_loss"
    # Ranking scores are not calibrated probabilities: every ranked prior may count.
    detection_threshold = 0.0

    def __call__(self, outputs: Mapping[str, Tensor], priors: Tensor, targets: Targets) -> Tensor:
        loc, conf = outputs["loc"], outputs["conf"]
        padded = pad_box_targets(targets, loc.device)
        with torch.no_grad():
            iou = prior_iou(priors, padded["boxes"])
            matching = max_iou(iou, 0.5, neg_threshold=0.4, target_mask=padded["mask"])
            assigned = matching.pred_to_target  # [B, P]
            positive = assigned >= 0
            label_of = padded["labels"].gather(1, assigned.clamp(min=0))
            labels = torch.zeros((*conf.shape[:2], self.num_classes), dtype=torch.int64)
            labels = labels.to(conf.device)
            labels[positive, label_of[positive]] = 1
            labels[assigned == -2] = -1
        cls = ap_loss(conf[..., 1:], labels, distributed=False)
        weights = F.one_hot(assigned.clamp(min=0), padded["boxes"].shape[1] or 1)
        weights = (weights * positive[..., None]).to(loc.dtype)[..., : padded["boxes"].shape[1]]
        return cls + _offset_loss(loc, priors, padded["boxes"], weights)

    def detection_logits(self, conf: Tensor) -> Tensor:
        return torch.cat((torch.zeros_like(conf[..., :1]), conf[..., 1:]), dim=-1)


def build_objective(name: str, num_classes: int) -> Objective:
    """The objective ``name`` (one of :data:`OBJECTIVES`) for ``num_classes`` classes."""
    check_choices([name])
    if name == "multibox":
        return MultiBoxObjective(num_classes)
    if name == "ap_loss":
        return APLossObjective(num_classes)
    return MatchedObjective(num_classes, name)
