"""NaN, +inf and -inf in every tensor argument of every public loss, matcher, decoder,
target builder, cost term and metric (the names of ``detloss.__all__`` and of the
``__all__`` of ``detloss.losses``, ``detloss.match``, ``detloss.costs`` and
``detloss.postprocess`` that take tensors).

The rule (docs/index.md, "Non-finite inputs"): with validation on (the default on the
CPU), a non-finite value where only finite ones make sense is a ``ValueError`` that names
the argument the caller passed (``pred_logits``, ``boxes``, ...), says that finite values
were expected and what was received; where a non-finite value has a documented meaning
(``+inf`` cost = forbidden pair) the result is finite, and so are its gradients.
Element-wise geometry (box and point conversions, IoUs, distances, encodings, cost
terms) does not scan: like any torch operation a non-finite coordinate gives non-finite
values in the entries computed from it, never in every entry. A validated name must
raise: a finite result computed from a NaN (a NaN score ranked first) is as silent as a
NaN.

A public name that takes tensors and has no entry in :data:`TABLE` fails the test, so new
API is covered from its first commit.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import torch

import detloss
import detloss.costs
import detloss.losses
import detloss.match
import detloss.postprocess
from detloss._checks import check_finite, should_validate
from detloss.anchors import ssd_priors
from detloss.heatmap import centernet_targets
from detloss.match.matching import Matching

BAD_VALUES = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}

# Rejected: the message names the argument and the expected range, and shows the value.
REJECT = "reject"
# Documented finite result (and finite gradients).
FINITE = "finite"
# Element-wise geometry: non-finite only where the output depends on the bad entry.
ELEMENTWISE = "elementwise"


@dataclass
class Case:
    """Valid keyword arguments of one public callable and what each bad value must do.

    ``call(**kwargs)`` must succeed with finite results as given. ``policy`` is the rule
    for every (argument, bad value) pair unless ``overrides`` names the pair as
    ``(leaf label, bad value name)``.
    """

    call: Callable[..., object]
    kwargs: Callable[[], dict[str, object]]
    policy: str = REJECT
    overrides: dict[tuple[str, str], str] = field(default_factory=dict)
    grad: bool = True  # False for arguments written in place (no gradient through them)


def _boxes(n: int, offset: float = 0.0) -> torch.Tensor:
    """``n`` ordinary xyxy boxes in the unit square."""
    xy = torch.linspace(0.05, 0.45, n)[:, None].expand(n, 2) + offset
    return torch.cat([xy, xy + torch.tensor([0.3, 0.4])], dim=1)


def _det_targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": _boxes(2, 0.02), "labels": torch.tensor([0, 1])},
        {"boxes": _boxes(1, 0.1), "labels": torch.tensor([1])},
    ]


def _det_outputs(classes: int = 3) -> dict[str, torch.Tensor]:
    logits = torch.linspace(-1.0, 1.0, 2 * 3 * classes).reshape(2, 3, classes)
    return {"pred_logits": logits, "pred_boxes": _boxes(3).expand(2, 3, 4).clone()}


PRIORS = ssd_priors(64, (2,), (32,), (24,), (40,), ((2,),))  # 2 x 2 cells x 4 = 16 priors


def _ssd_kwargs() -> dict[str, object]:
    p = PRIORS.shape[0]
    return {
        "loc": torch.linspace(-0.5, 0.5, 2 * p * 4).reshape(2, p, 4),
        "conf": torch.linspace(-1.0, 1.0, 2 * p * 3).reshape(2, p, 3),
        "priors": PRIORS.clone(),
        "targets": _det_targets(),
    }


def _points_kwargs() -> dict[str, object]:
    return {
        "pred_points": torch.tensor([[[1.0, 2.0], [3.0, 1.0], [0.0, 0.5]]]).expand(2, 3, 2) * 1,
        "pred_logits": torch.tensor([[0.5, -0.2, 1.0], [0.1, 0.3, -0.4]]),
        "targets": [torch.tensor([[1.0, 1.5], [2.0, 2.0]]), torch.tensor([[0.5, 0.5]])],
    }


def _centernet_targets() -> dict[str, torch.Tensor]:
    return centernet_targets(
        [{"boxes": torch.tensor([[2.0, 2.0, 12.0, 10.0]]), "labels": torch.tensor([1])}] * 2,
        num_classes=2,
        output_size=(4, 4),
    )


def _centernet_predictions() -> dict[str, torch.Tensor]:
    return {
        "heatmap": torch.linspace(-2.0, 2.0, 2 * 2 * 16).reshape(2, 2, 4, 4),
        "size": torch.full((2, 2, 4, 4), 2.0),
        "offset": torch.full((2, 2, 4, 4), 0.25),
    }


def _cost() -> torch.Tensor:
    return torch.tensor([[[0.1, 0.9], [0.5, 0.2], [0.7, 0.4]]]).expand(2, 3, 2).clone()


def _iou() -> torch.Tensor:
    return torch.tensor([[[0.7, 0.1], [0.2, 0.6], [0.3, 0.45]]]).expand(2, 3, 2).clone()


def _ranking_logits() -> torch.Tensor:
    return torch.tensor([0.3, -1.0, 2.0, 0.5, -0.2, 1.1])


def _ranking_labels() -> torch.Tensor:
    return torch.tensor([1, 0, 1, -1, 0, 0])


def _crowd_kwargs() -> dict[str, object]:
    return {
        "pred_points": torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]]),
        "pred_scores": torch.tensor([0.9, 0.4, 0.7]),
        "target_points": torch.tensor([[0.1, 0.2], [1.8, 0.6]]),
    }


def _pair(n: int = 3) -> dict[str, torch.Tensor]:
    return {"boxes1": _boxes(n), "boxes2": _boxes(n, 0.1)}


L = detloss.losses
M = detloss.match
C = detloss.costs


def _target_boxes() -> torch.Tensor:
    return torch.stack([_boxes(2, 0.02), _boxes(2, 0.1)])


_TARGET_LABELS = torch.tensor([[0, 1], [1, 0]])

# Matchers whose '+inf' cost marks a forbidden pair: a documented, finite result.
_FORBIDDEN_PAIR = {("cost", "+inf"): FINITE}
# centernet_loss reads the dense target maps only: the sparse keys it does not read.
_UNREAD_SPARSE = {
    (key, bad): FINITE for key in ("size_target", "offset_target") for bad in BAD_VALUES
}

TABLE: dict[str, Case] = {
    # losses: functions
    "sigmoid_focal_loss": Case(
        L.sigmoid_focal_loss,
        lambda: {"inputs": torch.randn(2, 3), "targets": torch.rand(2, 3), "reduction": "sum"},
    ),
    "smooth_l1_loss": Case(
        L.smooth_l1_loss, lambda: {"input": torch.randn(2, 3), "target": torch.randn(2, 3)}
    ),
    "iou_loss": Case(L.iou_loss, _pair),
    "giou_loss": Case(L.giou_loss, _pair),
    "diou_loss": Case(L.diou_loss, _pair),
    "ciou_loss": Case(L.ciou_loss, _pair),
    "negative_prob": Case(
        L.negative_prob, lambda: {"logits": torch.randn(4, 3), "labels": torch.tensor([0, 2, 1, 0])}
    ),
    "gaussian_focal_loss": Case(
        L.gaussian_focal_loss,
        lambda: {
            "pred": torch.rand(2, 3) * 0.8 + 0.1,
            "target": torch.tensor([[1.0, 0.5, 0.0]] * 2),
        },
    ),
    "gaussian_focal_loss_with_logits": Case(
        L.gaussian_focal_loss_with_logits,
        lambda: {"logits": torch.randn(2, 3), "target": torch.tensor([[1.0, 0.5, 0.0]] * 2)},
    ),
    "detection_loss": Case(
        L.detection_loss,
        lambda: {
            "outputs": _det_outputs(),
            "targets": _det_targets(),
            "matching": Matching(torch.tensor([[0, 1, -1], [-1, 0, -1]]), torch.ones(2, 2).bool()),
        },
    ),
    "multibox_loss": Case(L.multibox_loss, _ssd_kwargs),
    "point_loss": Case(L.point_loss, _points_kwargs),
    "centernet_loss": Case(
        L.centernet_loss,
        lambda: {"predictions": _centernet_predictions(), "targets": _centernet_targets()},
        overrides=_UNREAD_SPARSE,
    ),
    "ap_loss": Case(L.ap_loss, lambda: {"logits": _ranking_logits(), "labels": _ranking_labels()}),
    "alrp_loss": Case(
        L.alrp_loss,
        lambda: {
            "logits": _ranking_logits(),
            "labels": _ranking_labels(),
            "regression_losses": torch.tensor([0.2, 0.4]),
        },
    ),
    "rank_sort_loss": Case(
        L.rank_sort_loss,
        lambda: {"logits": _ranking_logits(), "targets": torch.tensor([0.8, 0, 0.3, -1, 0, 0])},
    ),
    # losses: modules (forward arguments)
    "SigmoidFocalLoss": Case(
        lambda **kw: L.SigmoidFocalLoss()(**kw),
        lambda: {"inputs": torch.randn(2, 3), "targets": torch.rand(2, 3).round()},
    ),
    "GaussianFocalLoss": Case(
        lambda **kw: L.GaussianFocalLoss()(**kw),
        lambda: {
            "pred": torch.rand(2, 3) * 0.8 + 0.1,
            "target": torch.tensor([[1.0, 0.5, 0.0]] * 2),
        },
    ),
    "IoULoss": Case(lambda **kw: L.IoULoss()(**kw), _pair),
    "GIoULoss": Case(lambda **kw: L.GIoULoss()(**kw), _pair),
    "DIoULoss": Case(lambda **kw: L.DIoULoss()(**kw), _pair),
    "CIoULoss": Case(lambda **kw: L.CIoULoss()(**kw), _pair),
    "SmoothL1Loss": Case(
        lambda **kw: L.SmoothL1Loss()(**kw),
        lambda: {"input": torch.randn(2, 3), "target": torch.randn(2, 3)},
    ),
    "NegativeProbLoss": Case(
        lambda **kw: L.NegativeProbLoss()(**kw),
        lambda: {"logits": torch.randn(4, 3), "labels": torch.tensor([0, 2, 1, 0])},
    ),
    "GaussianFocalLossWithLogits": Case(
        lambda **kw: L.GaussianFocalLossWithLogits()(**kw),
        lambda: {"logits": torch.randn(2, 3), "target": torch.tensor([[1.0, 0.5, 0.0]] * 2)},
    ),
    "DetectionLoss": Case(
        lambda **kw: L.DetectionLoss(M.HungarianMatcher())(**kw),
        lambda: {"outputs": _det_outputs(), "targets": _det_targets()},
    ),
    "SetCriterion": Case(
        lambda **kw: sum(
            L.SetCriterion(2, M.HungarianMatcher(box_format="cxcywh"), {"loss_ce": 1.0})(
                **kw
            ).values()
        ),
        lambda: {"outputs": _det_outputs(), "targets": _det_targets()},
    ),
    "MultiBoxLoss": Case(lambda **kw: L.MultiBoxLoss(3)(**kw), _ssd_kwargs),
    "PointLoss": Case(lambda **kw: L.PointLoss()(**kw), _points_kwargs),
    "CenterNetLoss": Case(
        lambda **kw: L.CenterNetLoss()(**kw),
        lambda: {"predictions": _centernet_predictions(), "targets": _centernet_targets()},
        overrides=_UNREAD_SPARSE,
    ),
    "APLoss": Case(
        lambda **kw: L.APLoss()(**kw),
        lambda: {"logits": _ranking_logits(), "labels": _ranking_labels()},
    ),
    "ALRPLoss": Case(
        lambda **kw: L.ALRPLoss()(**kw),
        lambda: {
            "logits": _ranking_logits(),
            "labels": _ranking_labels(),
            "regression_losses": torch.tensor([0.2, 0.4]),
        },
    ),
    "RankSortLoss": Case(
        lambda **kw: L.RankSortLoss()(**kw),
        lambda: {"logits": _ranking_logits(), "targets": torch.tensor([0.8, 0, 0.3, -1, 0, 0])},
    ),
    # matchers: functions
    "hungarian": Case(M.hungarian, lambda: {"cost": _cost()}, overrides=_FORBIDDEN_PAIR),
    "max_iou": Case(M.max_iou, lambda: {"iou": _iou()}),
    "max_iou_boxes": Case(
        M.max_iou_boxes,
        lambda: {
            "priors": torch.tensor(
                [[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [0.0, 1.0, 2.0, 4.0]]
            ),
            "boxes": torch.tensor([[[0.0, 0.0, 2.0, 2.5], [1.0, 1.5, 3.0, 3.0]]])
            .expand(2, 2, 4)
            .clone(),
        },
    ),
    "sinkhorn": Case(
        M.sinkhorn, lambda: {"cost": _cost(), "max_iter": 20, "tol": 0.0}, overrides=_FORBIDDEN_PAIR
    ),
    "closest_target": Case(
        M.closest_target,
        lambda: {"cost": _cost(), "background_cost": torch.tensor(0.6)},
        # +inf background: never the background.
        overrides=_FORBIDDEN_PAIR | {("background_cost", "+inf"): FINITE},
    ),
    "closest_prediction": Case(
        M.closest_prediction,
        lambda: {"cost": _cost(), "cost_threshold": torch.tensor(0.6)},
        # +inf threshold: every target takes its cheapest prediction.
        overrides=_FORBIDDEN_PAIR | {("cost_threshold", "+inf"): FINITE},
    ),
    "softmin": Case(M.softmin, lambda: {"cost": _cost()}, overrides=_FORBIDDEN_PAIR),
    "combine": Case(
        lambda matchings, plan: M.combine(
            [*matchings, Matching(torch.tensor([[0, -1, 1]] * 2), torch.ones(2, 2).bool(), plan)]
        ),
        lambda: {
            "matchings": [Matching(torch.tensor([[0, 1, -1]] * 2), torch.ones(2, 2).bool())],
            "plan": torch.full((2, 3, 3), 1 / 3),
        },
    ),
    # The result type stores a plan; its consumers check it (detection_loss, combine).
    "Matching": Case(
        Matching,
        lambda: {
            "pred_to_target": torch.tensor([[0, 1, -1]] * 2),
            "target_mask": torch.ones(2, 2).bool(),
            "plan": torch.full((2, 3, 3), 1 / 3),
        },
        ELEMENTWISE,
    ),
    "match_points": Case(
        M.match_points,
        lambda: {
            "pred_points": _points_kwargs()["pred_points"],
            "pred_logits": _points_kwargs()["pred_logits"],
            "target_points": _points_kwargs()["targets"],
        },
    ),
    "crowd_assignment": Case(M.crowd_assignment, _crowd_kwargs),
    "certify_assignment": Case(
        M.certify_assignment,
        lambda: {
            **_crowd_kwargs(),
            "pred_idx": torch.tensor([0, 2]),
            "target_idx": torch.tensor([0, 1]),
        },
    ),
    # matchers: modules
    "HungarianMatcher": Case(
        lambda **kw: M.HungarianMatcher()(**kw),
        lambda: {"outputs": _det_outputs(), "targets": _det_targets()},
    ),
    "BoxCostMatcher": Case(
        lambda **kw: M.HungarianMatcher()(**kw),  # the base's cost, through its subclass
        lambda: {"outputs": _det_outputs(), "targets": _det_targets()},
    ),
    "SinkhornMatcher": Case(
        lambda **kw: M.SinkhornMatcher(max_iter=20, tol=0.0)(**kw),
        lambda: {"outputs": _det_outputs(), "targets": _det_targets()},
    ),
    "MaxIoUMatcher": Case(
        lambda **kw: M.MaxIoUMatcher(0.5, 0.4)(**kw),
        lambda: {"outputs": _det_outputs(), "targets": _det_targets()},
        # It matches boxes by IoU; the logits are not read.
        overrides={("pred_logits", bad): FINITE for bad in BAD_VALUES},
    ),
    # targets, decoding, metrics
    "centernet_targets": Case(
        lambda boxes, labels: centernet_targets(boxes, labels, num_classes=2, output_size=(4, 4)),
        lambda: {"boxes": torch.tensor([[[2.0, 2.0, 12.0, 10.0]]]), "labels": torch.tensor([[1]])},
    ),
    "draw_gaussians": Case(
        detloss.draw_gaussians,
        lambda: {
            "heatmap": torch.zeros(2, 4, 4),
            "centers": torch.tensor([[1, 2], [3, 0]]),
            "radii": torch.tensor([1, 1]),
            "labels": torch.tensor([0, 1]),
        },
        # Drawn into by an element-wise max: what the heatmap held stays where it was.
        overrides={("heatmap", bad): ELEMENTWISE for bad in BAD_VALUES},
        grad=False,
    ),
    "gaussian_radius": Case(
        detloss.gaussian_radius,
        lambda: {"height": torch.tensor([4.0, 8.0]), "width": torch.tensor([6.0, 3.0])},
        ELEMENTWISE,
    ),
    "nms": Case(
        detloss.nms,
        lambda: {"boxes": _boxes(3), "scores": torch.tensor([0.9, 0.5, 0.7]), "iou_threshold": 0.5},
    ),
    "batched_nms": Case(
        detloss.batched_nms,
        lambda: {
            "boxes": _boxes(3),
            "scores": torch.tensor([0.9, 0.5, 0.7]),
            "idxs": torch.tensor([0, 1, 0]),
            "iou_threshold": 0.5,
        },
    ),
    "ssd_detect": Case(
        detloss.ssd_detect,
        lambda: {k: v for k, v in _ssd_kwargs().items() if k != "targets"},
    ),
    "centernet_decode": Case(
        detloss.centernet_decode,
        lambda: {k: v for k, v in _centernet_predictions().items()} | {"k": 5},
    ),
    "decode_points": Case(
        detloss.decode_points,
        lambda: {
            "points": _points_kwargs()["pred_points"],
            "logits": _points_kwargs()["pred_logits"],
        },
    ),
    "coco_box_ap": Case(
        detloss.coco_box_ap,
        lambda: {
            "predictions": [
                {
                    "boxes": _boxes(2),
                    "scores": torch.tensor([0.9, 0.3]),
                    "labels": torch.tensor([0, 1]),
                }
            ],
            "targets": [{"boxes": _boxes(2, 0.01), "labels": torch.tensor([0, 1])}],
        },
    ),
    "voc_box_ap": Case(
        detloss.voc_box_ap,
        lambda: {
            "predictions": [
                {
                    "boxes": _boxes(2),
                    "scores": torch.tensor([0.9, 0.3]),
                    "labels": torch.tensor([0, 1]),
                }
            ],
            "targets": [{"boxes": _boxes(2, 0.01), "labels": torch.tensor([0, 1])}],
        },
    ),
    "point_metrics": Case(
        detloss.point_metrics,
        lambda: {
            "predictions": [torch.tensor([[1.0, 1.0], [5.0, 5.0]])],
            "targets": [torch.tensor([[1.5, 1.0]])],
        },
    ),
    "count_metrics": Case(
        detloss.count_metrics,
        lambda: {"pred_counts": torch.tensor([3.0, 5.0]), "true_counts": torch.tensor([4.0, 5.0])},
    ),
    # element-wise geometry
    **{
        name: Case(getattr(detloss, name), _pair, ELEMENTWISE)
        for name in (
            "box_iou",
            "generalized_box_iou",
            "distance_box_iou",
            "complete_box_iou",
            "aligned_box_iou",
            "aligned_generalized_box_iou",
            "aligned_distance_box_iou",
            "aligned_complete_box_iou",
        )
    },
    "box_area": Case(detloss.box_area, lambda: {"boxes": _boxes(3)}, ELEMENTWISE),
    "box_convert": Case(
        detloss.box_convert,
        lambda: {"boxes": _boxes(3), "in_fmt": "xyxy", "out_fmt": "cxcywh"},
        ELEMENTWISE,
    ),
    "pairwise_distance": Case(
        detloss.pairwise_distance,
        lambda: {"points1": torch.rand(3, 2), "points2": torch.rand(2, 2)},
        ELEMENTWISE,
    ),
    "encode_boxes": Case(
        detloss.encode_boxes, lambda: {"boxes": _boxes(3), "priors": _boxes(3, 0.1)}, ELEMENTWISE
    ),
    "decode_boxes": Case(
        detloss.decode_boxes,
        lambda: {"offsets": torch.randn(3, 4) * 0.1, "priors": _boxes(3, 0.1)},
        ELEMENTWISE,
    ),
    "BoxCoder": Case(
        lambda **kw: detloss.BoxCoder().encode(**kw),
        lambda: {"boxes": _boxes(3), "priors": _boxes(3, 0.1)},
        ELEMENTWISE,
    ),
    # cost terms: one entry per (prediction, target), built like the geometry; the matchers
    # check the predictions and targets they build a cost from
    "class_cost": Case(
        lambda logits: C.class_cost(logits, _TARGET_LABELS),
        lambda: {"logits": _det_outputs()["pred_logits"]},
        ELEMENTWISE,
    ),
    "box_l1_cost": Case(
        C.box_l1_cost,
        lambda: {"pred_boxes": _det_outputs()["pred_boxes"], "target_boxes": _target_boxes()},
        ELEMENTWISE,
    ),
    "giou_cost": Case(
        C.giou_cost,
        lambda: {"pred_boxes": _det_outputs()["pred_boxes"], "target_boxes": _target_boxes()},
        ELEMENTWISE,
    ),
    "point_distance_cost": Case(
        C.point_distance_cost,
        lambda: {
            "pred_points": _points_kwargs()["pred_points"],
            "target_points": torch.rand(2, 2, 2),
        },
        ELEMENTWISE,
    ),
    "p2p_cost": Case(
        C.p2p_cost,
        lambda: {
            "pred_points": _points_kwargs()["pred_points"],
            "pred_logits": _points_kwargs()["pred_logits"],
            "target_points": torch.rand(2, 2, 2),
        },
        ELEMENTWISE,
    ),
    "detection_cost": Case(
        lambda pred_logits, pred_boxes, target_boxes: C.detection_cost(
            pred_logits, pred_boxes, _TARGET_LABELS, target_boxes
        ),
        lambda: {**_det_outputs(), "target_boxes": _target_boxes()},
        ELEMENTWISE,
    ),
    "weighted_cost": Case(
        lambda class_term, box_term: C.weighted_cost(
            {"class": (1.0, class_term), "box": (5.0, box_term)}
        ),
        lambda: {"class_term": torch.rand(2, 3, 2), "box_term": torch.rand(2, 3, 2)},
        ELEMENTWISE,
    ),
    # padding moves values, it does not compute with them
    "pad_targets": Case(
        detloss.pad_targets, lambda: {"targets": [torch.rand(2, 2), torch.rand(1, 2)]}, ELEMENTWISE
    ),
    "unpad_targets": Case(
        detloss.unpad_targets,
        lambda: {"padded": {"points": torch.rand(2, 2, 2), "mask": torch.ones(2, 2).bool()}},
        ELEMENTWISE,
    ),
}

# Public names that take no tensor.
NO_TENSORS = {
    "BACKGROUND",
    "CLASS_COSTS",
    "IGNORED",
    "SinkhornConvergenceWarning",
    "SinkhornOptions",
    "__version__",
    "anchor_points",
    "gaussian_kernel",
    "ssd_priors",
}


def _public_names() -> list[str]:
    names = set()
    for module in (detloss, detloss.losses, detloss.match, detloss.costs, detloss.postprocess):
        for name in module.__all__:
            if not inspect.ismodule(getattr(module, name)):
                names.add(name)
    return sorted(names)


def test_every_public_name_is_in_the_table():
    missing = [n for n in _public_names() if n not in TABLE and n not in NO_TENSORS]
    assert not missing, f"add these public names to TABLE (their NaN / inf behaviour): {missing}"


# --------------------------------------------------------------------------------------
# walking the arguments


def _leaves(kwargs: dict[str, object]) -> Iterator[tuple[tuple[object, ...], str]]:
    """``(path, label)`` of each floating tensor: ``label`` is the name the caller knows it
    by (the argument, or the key of a dict holding it). Lists: their first element."""
    for name, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            if value.is_floating_point():
                yield (name,), name
        elif isinstance(value, dict):
            for key, v in value.items():
                if isinstance(v, torch.Tensor) and v.is_floating_point():
                    yield (name, key), key
        elif isinstance(value, list) and value:
            first = value[0]
            if isinstance(first, torch.Tensor) and first.is_floating_point():
                yield (name, 0), name
            elif isinstance(first, dict):
                for key, v in first.items():
                    if isinstance(v, torch.Tensor) and v.is_floating_point():
                        yield (name, 0, key), key


def _get(kwargs: dict[str, object], path: tuple[object, ...]) -> torch.Tensor:
    value: object = kwargs
    for step in path:
        value = value[step]  # type: ignore[index]
    return value  # type: ignore[return-value]


def _set(kwargs: dict[str, object], path: tuple[object, ...], tensor: torch.Tensor) -> None:
    container: object = kwargs
    for step in path[:-1]:
        container = container[step]  # type: ignore[index]
    container[path[-1]] = tensor  # type: ignore[index]


def _outputs(out: object) -> Iterator[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (list, tuple)):
        for o in out:
            yield from _outputs(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _outputs(o)
    elif isinstance(out, Matching):
        if out.plan is not None:
            yield out.plan
    elif hasattr(out, "__dataclass_fields__"):
        for f in out.__dataclass_fields__:
            yield from _outputs(getattr(out, f))


def _floats(out: object) -> list[torch.Tensor]:
    return [t for t in _outputs(out) if t.is_floating_point()]


def _cases() -> Iterator[tuple[str, tuple[object, ...], str, str]]:
    for name in sorted(TABLE):
        for path, label in _leaves(TABLE[name].kwargs()):
            for bad in BAD_VALUES:
                yield name, path, label, bad


CASES = list(_cases())


def _run(name: str, path: tuple[object, ...], bad: str) -> tuple[object, Exception | None, list]:
    """Call ``name`` with a ``bad`` first entry at ``path``; returns (result, error,
    gradient leaves)."""
    case = TABLE[name]
    kwargs = case.kwargs()
    grads = []
    for leaf_path, _ in _leaves(kwargs):
        leaf = _get(kwargs, leaf_path).detach().clone()
        if leaf_path == path:
            leaf.view(-1)[0] = BAD_VALUES[bad]
        leaf.requires_grad_(TABLE[name].grad)
        grads.append(leaf)
        _set(kwargs, leaf_path, leaf)
    try:
        return case.call(**kwargs), None, grads
    except Exception as err:  # anything but a ValueError is reported as a failure
        return None, err, grads


def _outcome(name: str, path: tuple[object, ...], label: str, bad: str) -> str | None:
    """None when the rule holds, else what went wrong (one line)."""
    case = TABLE[name]
    policy = case.overrides.get((label, bad), case.policy)
    out, err, leaves = _run(name, path, bad)
    if err is not None:
        message = str(err)
        if not isinstance(err, ValueError):
            return f"{type(err).__name__}: {message}"
        if policy == FINITE:
            return f"rejected a documented value: {message}"
        if label not in message:
            return f"message does not name {label!r}: {message}"
        if "expected" not in message and "must" not in message:
            return f"message does not say what was expected: {message}"
        if "nan" not in message.lower() and "inf" not in message.lower():
            return f"message does not show the value received: {message}"
        return None
    floats = _floats(out)
    if policy == ELEMENTWISE:
        bad_entries = sum(int((~torch.isfinite(t)).sum()) for t in floats)
        total = sum(t.numel() for t in floats)
        if bad_entries >= total > 1:
            return f"every output entry is non-finite ({bad_entries} of {total})"
        return None
    if not all(bool(torch.isfinite(t).all()) for t in floats):
        return "silent non-finite result"
    if policy == REJECT:
        # Finite numbers computed from a NaN (a NaN score ranked first, a clamped
        # probability) are silently wrong all the same.
        return "accepted: a finite result from a non-finite input"
    parts = [t.float().sum() for t in floats if t.requires_grad]
    if parts:
        torch.stack(parts).sum().backward()
        for leaf in leaves:
            if leaf.grad is not None and not bool(torch.isfinite(leaf.grad).all()):
                return "non-finite gradient"
    return None


@pytest.mark.parametrize("name", sorted(TABLE))
def test_table_inputs_are_valid(name):
    """Every entry's arguments, as given, are accepted with finite results."""
    case = TABLE[name]
    out = case.call(**case.kwargs())
    assert all(bool(torch.isfinite(t).all()) for t in _floats(out)), name
    assert list(_leaves(case.kwargs())), f"{name}: no floating tensor argument to probe"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_nonfinite_inputs(name):
    failures = [
        f"{label} = {bad}: {problem}"
        for n, path, label, bad in CASES
        if n == name and (problem := _outcome(n, path, label, bad)) is not None
    ]
    assert not failures, f"{name}:\n" + "\n".join(failures)


@pytest.mark.parametrize("key", ["pred_logits", "pred_boxes"])
def test_unscanned_matcher_still_names_the_input(key):
    """Without the scan on the way in (``validate=False``, the default off the CPU), the
    Hungarian solver still rejects the NaN cost, and the error is traced back to the input
    that caused it (a scan on the error path only)."""
    outputs = _det_outputs()
    outputs[key][1, 2, 0] = math.nan
    expected = rf"outputs\['{key}'\]: expected finite values, got nan at index \[1, 2, 0\]"
    with pytest.raises(ValueError, match=expected):
        M.HungarianMatcher(validate=False)(outputs, _det_targets())


def test_check_finite_masks_padding_and_names_the_first_bad_entry():
    x = torch.zeros(2, 3, 4)
    x[1, 2] = math.nan  # a padding slot
    mask = torch.tensor([[True, True, True], [True, True, False]])
    check_finite(("boxes", x, mask))  # padding may hold anything
    x[0, 1, 3] = -math.inf
    with pytest.raises(
        ValueError, match=r"^boxes: expected finite values, got -inf at index \[0, 1, 3\]$"
    ):
        check_finite(("logits", torch.ones(3)), ("boxes", x, mask))
    cost = torch.tensor([[0.5, math.inf]])
    check_finite(("cost", cost), allow_posinf=True)  # a forbidden pair
    with pytest.raises(ValueError, match=r"^cost: expected finite values or \+inf, got nan"):
        check_finite(("cost", cost * math.nan), allow_posinf=True)
    # Integers are finite; values that are not tensors are left to their own checks.
    check_finite(("labels", torch.tensor([1, 2])), ("targets", [math.nan]), ("offset", None))


def test_validate_none_scans_on_the_cpu_only():
    assert should_validate(None, torch.zeros(1))
    assert not should_validate(None, torch.zeros(1, device="meta"))
    assert should_validate(True, torch.zeros(1, device="meta"))
    assert not should_validate(False, torch.zeros(1))
    # Off the CPU the default does not scan, so a NaN is not looked for (no sync) ...
    loss = L.sigmoid_focal_loss(
        torch.full((2,), math.nan, device="meta"), torch.zeros(2, device="meta")
    )
    assert loss.device.type == "meta"
    # ... and validate=False skips the scan on the CPU too.
    assert torch.isnan(
        L.smooth_l1_loss(torch.tensor([math.nan]), torch.zeros(1), validate=False)
    ).all()
