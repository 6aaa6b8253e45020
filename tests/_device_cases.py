"""Inputs and calls of every public loss and matcher, for the device tests.

``CASES`` maps a name to a :class:`Case`: ``build(generator)`` returns ``(call, inputs)``,
where ``inputs["grad"]`` holds the tensors whose gradients are compared. ``known_sync``
says why a call still reads the device from the host (or None); ``host_step`` marks the
matchers that solve on the host by design (scipy). Used by ``test_cuda.py`` (CUDA against
the CPU, under the CUDA sync guard) and ``test_meta_device.py`` (the same calls on the
``meta`` device, where any read of a tensor's values raises).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from detloss.anchors import ssd_priors
from detloss.batching import pad_targets
from detloss.heatmap import centernet_targets
from detloss.losses.centernet import (
    CenterNetLoss,
    centernet_loss,
    gaussian_focal_loss,
    gaussian_focal_loss_with_logits,
)
from detloss.losses.classification import negative_prob
from detloss.losses.detection import DetectionLoss, detection_loss
from detloss.losses.focal import SigmoidFocalLoss, sigmoid_focal_loss
from detloss.losses.iou import ciou_loss, diou_loss, giou_loss, iou_loss
from detloss.losses.points import PointLoss, point_loss
from detloss.losses.ranking import APLoss, alrp_loss, ap_loss, rank_sort_loss
from detloss.losses.regression import smooth_l1_loss
from detloss.losses.ssd import MultiBoxLoss, multibox_loss
from detloss.match.closest import closest_prediction, closest_target
from detloss.match.hungarian import hungarian
from detloss.match.matching import Matching
from detloss.match.modules import HungarianMatcher, MaxIoUMatcher
from detloss.match.points import match_points
from detloss.match.sinkhorn import SinkhornMatcher, sinkhorn
from detloss.match.softmin import combine, softmin
from detloss.match.threshold import max_iou
from detloss.postprocess.centernet import centernet_decode

Inputs = dict[str, object]


def move(value: object, device: torch.device | str) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Matching):
        return value.to(device)
    if isinstance(value, dict):
        return {k: move(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(move(v, device) for v in value)
    return value


# --------------------------------------------------------------------------------------
# data


def boxes(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    xy = torch.rand(*shape, 2, generator=gen) * 0.7
    wh = 0.05 + 0.25 * torch.rand(*shape, 2, generator=gen)
    return torch.cat((xy, xy + wh), dim=-1) * scale


def box_target_list(gen, counts, classes, scale=1.0):
    return [
        {
            "boxes": boxes(gen, n, scale=scale),
            "labels": torch.randint(0, classes, (n,), generator=gen),
        }
        for n in counts
    ]


def padded(targets) -> dict[str, torch.Tensor]:
    """The padded form: on the device it needs no host-to-device copy of counts."""
    return pad_targets(targets)


# --------------------------------------------------------------------------------------
# cases: build(gen) -> (call, inputs); ``inputs["grad"]`` holds the tensors whose
# gradients are compared, the rest are constants.


@dataclass(frozen=True)
class Case:
    build: Callable[[torch.Generator], tuple[Callable[[Inputs], object], Inputs]]
    # Why the call synchronises (xfail of test_no_host_sync), or None.
    known_sync: str | None = None
    # The documented host step: no sync test at all.
    host_step: bool = False


def _elementwise(fn, shape=(4, 7), targets="binary"):
    def build(gen):
        x = torch.randn(shape, generator=gen) * 2
        if targets == "binary":
            t = (torch.rand(shape, generator=gen) < 0.3).float()
        elif targets == "gaussian":
            t = torch.rand(shape, generator=gen)
            t[0, 0] = 1.0
        else:
            t = torch.randn(shape, generator=gen)
        return (lambda i: fn(i["grad"][0], i["t"])), {"grad": [x], "t": t}

    return build


def _iou(fn):
    def build(gen):
        return (lambda i: fn(i["grad"][0], i["t"], "mean")), {
            "grad": [boxes(gen, 9)],
            "t": boxes(gen, 9),
        }

    return build


def _negative_prob(gen):
    logits = torch.randn(3, 5, 4, generator=gen)
    labels = torch.randint(0, 4, (3, 5), generator=gen)
    return (lambda i: negative_prob(i["grad"][0], i["labels"], "mean")), {
        "grad": [logits],
        "labels": labels,
    }


def _gaussian_focal_prob(gen):
    p = torch.rand(2, 3, 5, 5, generator=gen)
    t = torch.rand(2, 3, 5, 5, generator=gen) ** 4
    t[:, :, 2, 2] = 1.0
    return (lambda i: gaussian_focal_loss(i["grad"][0], i["t"], normalizer=2.0)), {
        "grad": [p],
        "t": t,
    }


def _centernet(module: bool):
    def build(gen):
        b, c, h = 2, 3, 16
        targets = centernet_targets(
            box_target_list(gen, (3, 0), c, scale=60.0), num_classes=c, output_size=(h, h)
        )
        targets = {k: targets[k] for k in ("heatmap", "size", "offset", "weight")}
        grads = [
            torch.randn(b, c, h, h, generator=gen),
            torch.rand(b, 2, h, h, generator=gen) * 4,
            torch.rand(b, 2, h, h, generator=gen),
        ]
        fn = CenterNetLoss() if module else centernet_loss

        def call(i):
            heat, size, offset = i["grad"]
            return fn({"heatmap": heat, "size": size, "offset": offset}, i["targets"])

        return call, {"grad": grads, "targets": targets}

    return build


def _detection_inputs(gen, m=6, c=3):
    logits = torch.randn(2, m, c + 1, generator=gen)
    pred = torch.stack([boxes(gen, m), boxes(gen, m)])
    targets = box_target_list(gen, (3, 1), c)
    return logits, pred, targets


def _detection_loss_with(matching_kind: str, **kwargs):
    """detection_loss on a matching computed beforehand (the host step, for Hungarian)."""

    def build(gen):
        logits, pred, targets = _detection_inputs(gen)
        outputs = {"pred_logits": logits, "pred_boxes": pred}
        if matching_kind == "hungarian":
            matching = HungarianMatcher()(outputs, targets)
        else:
            matching = SinkhornMatcher(max_iter=50, tol=0.0)(outputs, targets)
        loc = {"l1": 5.0, "smooth_l1": 1.0, "giou": 2.0, "diou": 1.0, "ciou": 1.0}

        def call(i):
            lg, pb = i["grad"]
            return detection_loss(
                {"pred_logits": lg, "pred_boxes": pb},
                i["targets"],
                i["matching"],
                loc_losses=loc,
                **kwargs,
            )

        return call, {"grad": [logits, pred], "targets": padded(targets), "matching": matching}

    return build


def _detection_module(matcher_factory, **kwargs):
    def build(gen):
        logits, pred, targets = _detection_inputs(gen)
        loss = DetectionLoss(matcher_factory(), **kwargs)

        def call(i):
            lg, pb = i["grad"]
            return loss({"pred_logits": lg, "pred_boxes": pb}, i["targets"])

        return call, {"grad": [logits, pred], "targets": padded(targets)}

    return build


def _multibox(module: bool):
    def build(gen):
        priors = ssd_priors(64, (4, 2), (16, 32), (16, 32), (32, 48), ((2,), (2,)))
        p, c = priors.shape[0], 4
        grads = [torch.randn(2, p, 4, generator=gen), torch.randn(2, p, c, generator=gen)]
        targets = padded(box_target_list(gen, (3, 1), c - 1))
        fn = MultiBoxLoss(c) if module else multibox_loss

        def call(i):
            loc, conf = i["grad"]
            return fn(loc, conf, i["priors"], i["targets"])

        return call, {"grad": grads, "priors": priors, "targets": targets}

    return build


def _point_inputs(gen, head):
    m = 12
    points = torch.rand(2, m, 2, generator=gen) * 32
    logits = torch.randn((2, m, 2) if head == "softmax" else (2, m), generator=gen)
    targets = padded([torch.rand(n, 2, generator=gen) * 32 for n in (4, 0)])
    return points, logits, {"points": targets["points"], "mask": targets["mask"]}


def _point_loss_with_matching(head):
    def build(gen):
        points, logits, targets = _point_inputs(gen, head)
        matching = match_points(points, logits, targets)  # the host step, beforehand

        def call(i):
            pp, lg = i["grad"]
            return point_loss(pp, lg, i["targets"], head=head, matching=i["matching"])

        return call, {"grad": [points, logits], "targets": targets, "matching": matching}

    return build


def _point_module(head):
    def build(gen):
        points, logits, targets = _point_inputs(gen, head)
        loss = PointLoss(head=head)
        return (lambda i: loss(*i["grad"], i["targets"])), {
            "grad": [points, logits],
            "targets": targets,
        }

    return build


def _ranking(kind: str):
    def build(gen):
        shape = (2, 30, 3)
        # Quarter steps: ties, which the CPU and CUDA sorts order differently.
        x = torch.randint(-8, 9, shape, generator=gen).float() / 4
        labels = torch.where(torch.rand(shape, generator=gen) < 0.1, 1, 0)
        labels = torch.where(torch.rand(shape, generator=gen) < 0.1, -1, labels)
        inputs = {"grad": [x], "labels": labels}
        if kind == "ap":
            return (lambda i: ap_loss(i["grad"][0], i["labels"])), inputs
        if kind == "APLoss":
            return (lambda i: APLoss()(i["grad"][0], i["labels"])), inputs
        if kind == "alrp":
            reg = torch.rand(int((labels == 1).sum()), generator=gen)
            inputs["grad"].append(reg)
            return (lambda i: sum(alrp_loss(i["grad"][0], i["labels"], i["grad"][1]))), inputs
        iou = torch.where(labels == 1, 0.1 + 0.9 * torch.rand(shape, generator=gen), 0.0)
        inputs["iou"] = torch.where(labels == -1, -1.0, iou)
        return (lambda i: sum(rank_sort_loss(i["grad"][0], i["iou"]))), inputs

    return build


def _cost_problem(gen, b=2, m=7, n=4):
    cost = torch.rand(b, m, n, generator=gen) * 3
    mask = torch.tensor([[True, False, True, True], [False, False, False, False]])
    return cost, mask[:, :n]


def _matcher(kind: str):
    def build(gen):
        cost, mask = _cost_problem(gen)
        bg = torch.full((2, 7), 1.5)
        inputs = {"cost": cost, "mask": mask, "bg": bg, "thr": torch.full((2, 4), 1.5)}
        calls = {
            "hungarian": lambda i: hungarian(i["cost"], target_mask=i["mask"]),
            "max_iou": lambda i: max_iou(i["cost"] / 3, 0.5, 0.3, target_mask=i["mask"]),
            "max_iou_no_force": lambda i: max_iou(
                i["cost"] / 3, 0.5, 0.3, force_best=False, target_mask=i["mask"]
            ),
            "closest_target": lambda i: closest_target(i["cost"], i["bg"], target_mask=i["mask"]),
            "closest_target_float": lambda i: closest_target(i["cost"], 1.5, target_mask=i["mask"]),
            "closest_prediction": lambda i: closest_prediction(
                i["cost"], i["thr"], target_mask=i["mask"]
            ),
            "softmin": lambda i: softmin(i["cost"], 0.5, "target", i["bg"], target_mask=i["mask"]),
            "softmin_float": lambda i: softmin(
                i["cost"], 0.5, "prediction", 1.5, target_mask=i["mask"]
            ),
            "combine": lambda i: combine(
                [
                    softmin(i["cost"], 0.5, "prediction", i["bg"], target_mask=i["mask"]),
                    closest_target(i["cost"], i["bg"], target_mask=i["mask"]),
                ],
                [1.0, 2.0],
            ),
            "sinkhorn": lambda i: sinkhorn(i["cost"], i["mask"], max_iter=50, tol=0.0),
        }
        return calls[kind], inputs

    return build


def _matcher_module(kind: str):
    def build(gen):
        logits, pred, targets = _detection_inputs(gen)
        matcher = {
            "HungarianMatcher": HungarianMatcher,
            "MaxIoUMatcher": MaxIoUMatcher,
            "SinkhornMatcher": lambda: SinkhornMatcher(max_iter=50, tol=0.0),
        }[kind]()
        return (lambda i: matcher(i["outputs"], i["targets"])), {
            "outputs": {"pred_logits": logits, "pred_boxes": pred},
            "targets": padded(targets),
        }

    return build


def _match_points(gen):
    points, logits, targets = _point_inputs(gen, "sigmoid")
    return (lambda i: match_points(i["points"], i["logits"], i["targets"])), {
        "points": points,
        "logits": logits,
        "targets": targets,
    }


def _decode(gen):
    heat = torch.randn(2, 3, 8, 8, generator=gen)
    size = torch.rand(2, 2, 8, 8, generator=gen) * 4
    offset = torch.rand(2, 2, 8, 8, generator=gen)

    def call(i):
        out = centernet_decode(i["heat"], i["size"], i["offset"], k=10)
        return tuple(value for image in out for value in image.values())

    return call, {
        "heat": heat,
        "size": size,
        "offset": offset,
    }


FORCE_BEST = "max_iou's force-best loop reads bool(unresolved.any()) once per round"
SSD_MATCH = (
    "multibox_loss's matching reads bool(shared.any()) once per batch to find images where "
    "two ground truths share a best prior (losses/ssd.py), then max_iou's rounds there"
)
SINKHORN = "sinkhorn checks its scalings' range on the host once per block (documented)"

CASES: dict[str, Case] = {
    "sigmoid_focal_loss": Case(
        _elementwise(lambda x, t: sigmoid_focal_loss(x, t, reduction="mean"))
    ),
    "SigmoidFocalLoss": Case(_elementwise(SigmoidFocalLoss())),
    "smooth_l1_loss": Case(
        _elementwise(lambda x, t: smooth_l1_loss(x, t, 0.5, "sum"), targets="any")
    ),
    "gaussian_focal_loss_with_logits": Case(
        _elementwise(
            lambda x, t: gaussian_focal_loss_with_logits(x, t, reduction="sum"),
            targets="gaussian",
        )
    ),
    "gaussian_focal_loss": Case(_gaussian_focal_prob),
    "iou_loss": Case(_iou(iou_loss)),
    "giou_loss": Case(_iou(giou_loss)),
    "diou_loss": Case(_iou(diou_loss)),
    "ciou_loss": Case(_iou(ciou_loss)),
    "negative_prob": Case(_negative_prob),
    "centernet_loss": Case(_centernet(False)),
    "CenterNetLoss": Case(_centernet(True)),
    "detection_loss[hungarian matching]": Case(_detection_loss_with("hungarian")),
    "detection_loss[focal]": Case(_detection_loss_with("hungarian", cls_loss="focal")),
    "detection_loss[hard negatives]": Case(
        _detection_loss_with("hungarian", hard_negative_ratio=1.0)
    ),
    "detection_loss[sinkhorn plan]": Case(_detection_loss_with("sinkhorn")),
    "DetectionLoss+HungarianMatcher": Case(_detection_module(HungarianMatcher), host_step=True),
    "DetectionLoss+MaxIoUMatcher": Case(_detection_module(MaxIoUMatcher), known_sync=FORCE_BEST),
    "multibox_loss": Case(_multibox(False), known_sync=SSD_MATCH),
    "MultiBoxLoss": Case(_multibox(True), known_sync=SSD_MATCH),
    "point_loss[sigmoid, matching]": Case(_point_loss_with_matching("sigmoid")),
    "point_loss[softmax, matching]": Case(_point_loss_with_matching("softmax")),
    "PointLoss[sigmoid]": Case(_point_module("sigmoid"), host_step=True),
    "PointLoss[softmax]": Case(_point_module("softmax"), host_step=True),
    "ap_loss": Case(_ranking("ap")),
    "APLoss": Case(_ranking("APLoss")),
    "alrp_loss": Case(_ranking("alrp")),
    "rank_sort_loss": Case(
        _ranking("rank_sort"), known_sync="rank_sort_loss gathers its positives (documented)"
    ),
    "hungarian": Case(_matcher("hungarian"), host_step=True),
    "match_points": Case(_match_points, host_step=True),
    "HungarianMatcher": Case(_matcher_module("HungarianMatcher"), host_step=True),
    "max_iou": Case(_matcher("max_iou"), known_sync=FORCE_BEST),
    "max_iou[force_best=False]": Case(_matcher("max_iou_no_force")),
    "MaxIoUMatcher": Case(_matcher_module("MaxIoUMatcher"), known_sync=FORCE_BEST),
    "closest_target": Case(_matcher("closest_target")),
    "closest_target[float background]": Case(_matcher("closest_target_float")),
    "closest_prediction": Case(_matcher("closest_prediction")),
    "softmin": Case(_matcher("softmin")),
    "softmin[float background]": Case(_matcher("softmin_float")),
    "combine": Case(_matcher("combine")),
    "sinkhorn": Case(_matcher("sinkhorn"), known_sync=SINKHORN),
    "SinkhornMatcher": Case(_matcher_module("SinkhornMatcher"), known_sync=SINKHORN),
    "centernet_decode": Case(
        _decode, known_sync="centernet_decode reads the per-image counts once (documented)"
    ),
}
