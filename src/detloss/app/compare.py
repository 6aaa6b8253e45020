"""Four training objectives on one SSD-style detector, compared side by side.

``detloss compare`` (and the last step of ``detloss demo``) trains the same
:class:`~detloss.app.models.SSD`, from the same initial weights, on the same images, with the
same schedule and seed, under each objective of :data:`OBJECTIVES`:

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

Each trained detector is evaluated on the held-out test split (COCO box AP); the results
go to ``metrics.json`` under ``"compare"`` (other keys kept), with ``compare.png`` and
``matchings.png``, and a table is printed with a MISSED mark on every goal not reached.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Subset

from ..anchors import decode_boxes, encode_boxes
from ..batching import pad_targets
from ..boxes import box_convert, box_iou
from ..losses.detection import detection_loss
from ..losses.ranking import ap_loss
from ..losses.regression import smooth_l1_loss
from ..losses.ssd import MultiBoxLoss
from ..match import Matching, hungarian, max_iou, sinkhorn
from ..metrics import coco_box_ap
from .models.ssd import SSD

__all__ = [
    "COMPARE_GOALS",
    "DETECTORS",
    "OBJECTIVES",
    "CompareSettings",
    "build_objective",
    "check_choices",
    "run_compare",
]

#: The objectives :func:`run_compare` trains, in the order of the table.
OBJECTIVES: tuple[str, ...] = ("multibox", "hungarian", "sinkhorn", "ap_loss")
#: The detectors the objectives are defined for.
DETECTORS: tuple[str, ...] = ("ssd",)
#: Goals on the held-out test split: every objective's AP50, and the best one's.
COMPARE_GOALS: dict[str, float] = {"each_box_ap50": 0.6, "best_box_ap50": 0.75}

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


def _padded(targets: Targets, device: torch.device) -> dict[str, Tensor]:
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
        return hungarian(1.0 - iou, mask)
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
    per_pair = smooth_l1_loss(loc[image, prior], target, beta=1.0).sum(dim=-1)
    w = weights[image, prior, obj]
    return (w * per_pair).sum() / weights.sum().clamp(min=1.0)


class Objective:
    """A training objective of the SSD head: ``objective(outputs, priors, targets)`` ->
    scalar loss, with ``outputs = {"loc": [B, P, 4], "conf": [B, P, C + 1]}``, priors
    ``[P, 4]`` normalised ``cxcywh`` and targets per-image ``{"boxes": [n, 4] normalised
    xyxy, "labels": int64[n]}``. :meth:`detection_logits` gives the logits
    :func:`~detloss.postprocess.ssd.ssd_detect` ranks."""

    name = ""

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
        padded = _padded(targets, loc.device)
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

    def __call__(self, outputs: Mapping[str, Tensor], priors: Tensor, targets: Targets) -> Tensor:
        loc, conf = outputs["loc"], outputs["conf"]
        padded = _padded(targets, loc.device)
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


# ----------------------------------------------------------------------------- data


@dataclass
class _Images:
    """A split resized to the detector's square input: images ``[n, 3, S, S]``, targets
    with normalised ``xyxy`` boxes, and each image's original ``(width, height)``."""

    images: Tensor
    targets: list[dict[str, Tensor]]
    sizes: Tensor  # [n, 2] (width, height)
    pixel_targets: list[dict[str, Tensor]]


def _load_split(
    data: Path,
    split: str,
    image_size: int,
    num_classes: int | None,
    limit: int | None,
    data_format: str = "coco",
) -> tuple[_Images, int, list[str]]:
    from .data import format_kind, open_split
    from .train import load_dataset

    if data_format == "coco":
        ds = load_dataset("boxes", data, split, limit=limit)
    else:
        if format_kind(data_format) != "boxes":
            raise ValueError(
                f"data: {str(data)!r} holds points ({data_format}); compare trains box detectors"
            )
        ds = open_split(data, split, data_format)
        if limit is not None and limit < len(ds):
            ds = Subset(ds, range(limit))
    base = ds.dataset if hasattr(ds, "dataset") else ds
    categories = list(getattr(base, "categories", []))
    classes = num_classes if num_classes is not None else max(len(categories), 1)
    images, targets, sizes, pixel = [], [], [], []
    for i in range(len(ds)):  # type: ignore[arg-type]
        image, target = ds[i]
        labels = target["labels"].to(torch.int64)
        if labels.numel() and int(labels.max()) >= classes:
            bad = int(labels.max())
            where = base.where(i) if hasattr(base, "where") else f"image {i}"
            source = getattr(base, "source", data / split)
            raise ValueError(
                f"{source}: {where}: label {bad} exceeds the detector's {classes} classes "
                f"(labels 0..{classes - 1})"
            )
        h, w = image.shape[-2:]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        images.append(
            F.interpolate(image[None], size=(image_size, image_size), mode="bilinear")[0]
            if (h, w) != (image_size, image_size)
            else image
        )
        boxes = target["boxes"].to(torch.float32)
        targets.append({"boxes": boxes / scale, "labels": labels})
        pixel.append({"boxes": boxes, "labels": labels})
        sizes.append((w, h))
    return (
        _Images(torch.stack(images), targets, torch.tensor(sizes, dtype=torch.float32), pixel),
        classes,
        categories,
    )


def _augment(images: Tensor, targets: list[dict[str, Tensor]], moves: Tensor) -> list[dict]:
    """Mirror the square images in place and their normalised boxes: ``moves [b, 3]``
    (bool) says, per image, whether to flip left-right, flip top-bottom and transpose
    (in that order; the last two only where the data allows them)."""
    hflip, vflip, transpose = moves.bool().unbind(1)
    images[hflip] = images[hflip].flip(-1)
    images[vflip] = images[vflip].flip(-2)
    images[transpose] = images[transpose].transpose(-1, -2)
    out = []
    for t, (h, v, tr) in zip(targets, moves.tolist(), strict=True):
        x0, y0, x1, y1 = t["boxes"].unbind(1)
        if h:
            x0, x1 = 1 - x1, 1 - x0
        if v:
            y0, y1 = 1 - y1, 1 - y0
        if tr:
            x0, y0, x1, y1 = y0, x0, y1, x1
        out.append({"boxes": torch.stack((x0, y0, x1, y1), dim=1), "labels": t["labels"]})
    return out


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class CompareSettings:
    """Sizes and schedule shared by every objective of the comparison.

    ``dihedral``: augment with top-bottom flips and transpositions as well as the
    left-right flips (``--dihedral``; label-preserving only for data without a preferred
    orientation, such as the synthetic shapes drawn at any angle)."""

    objectives: tuple[str, ...] = OBJECTIVES
    image_size: int = 128
    epochs: int = 14
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    max_train_images: int | None = None
    max_test_images: int | None = None
    dihedral: bool = False
    model_kwargs: dict[str, object] = field(default_factory=dict)

    @classmethod
    def quick(cls) -> CompareSettings:
        """A smoke-sized comparison: the pipeline, not the goals."""
        return cls(epochs=1, max_train_images=16, max_test_images=8, batch_size=8)


def _train_one(
    objective: Objective,
    model: SSD,
    train: _Images,
    settings: CompareSettings,
    log: Callable[[str], None],
) -> dict[str, object]:
    """Train ``model`` in place under ``objective``; returns losses and timings."""
    generator = torch.Generator().manual_seed(settings.seed)
    n = train.images.shape[0]
    steps_per_epoch = max(1, math.ceil(n / settings.batch_size))
    total = steps_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=settings.lr,
        total_steps=total,
        pct_start=0.15,
        anneal_strategy="cos",
        div_factor=10.0,
    )
    priors = model.priors
    model.train()
    losses: list[float] = []
    objective_seconds = 0.0
    t_start = time.perf_counter()
    for epoch in range(settings.epochs):
        order = torch.randperm(n, generator=generator)
        moves = torch.zeros(n, 3, dtype=torch.bool)
        moves[:, 0] = torch.rand(n, generator=generator) < 0.5
        if settings.dihedral:
            moves[:, 1:] = torch.rand(n, 2, generator=generator) < 0.5
        epoch_losses = []
        for s in range(steps_per_epoch):
            index = order[s * settings.batch_size : (s + 1) * settings.batch_size]
            images = train.images[index].clone()
            targets = _augment(images, [train.targets[i] for i in index.tolist()], moves[index])
            outputs = model(images)
            t0 = time.perf_counter()
            loss = objective(outputs, priors, targets)
            if epoch or s:  # the first call may compile kernels: not a step's cost
                objective_seconds += time.perf_counter() - t0
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            scheduler.step()
            epoch_losses.append(float(loss.detach()))
        losses += epoch_losses
        log(
            f"[compare] {objective.name:<9} epoch {epoch + 1:>2}/{settings.epochs} "
            f"loss {np.mean(epoch_losses):.4f}"
        )
    return {
        "losses": losses,
        "train_seconds": time.perf_counter() - t_start,
        "objective_ms_per_step": 1000.0 * objective_seconds / max(total - 1, 1),
    }


@torch.no_grad()
def _evaluate(model: SSD, objective: Objective, test: _Images, batch: int = 32) -> dict[str, float]:
    model.eval()
    preds: list[dict[str, Tensor]] = []
    for start in range(0, test.images.shape[0], batch):
        out = model(test.images[start : start + batch])
        out = {"loc": out["loc"], "conf": objective.detection_logits(out["conf"])}
        threshold = 0.0 if isinstance(objective, APLossObjective) else 0.01
        dets = model.detect(out, conf_threshold=threshold)
        for k, d in enumerate(dets):
            w, h = test.sizes[start + k].tolist()
            scale = torch.tensor([w, h, w, h], dtype=d["boxes"].dtype)
            preds.append(
                {"boxes": d["boxes"] * scale, "scores": d["scores"], "labels": d["labels"]}
            )
    model.train()
    coco = coco_box_ap(preds, test.pixel_targets, max_detections=100)
    return {"box_ap50": float(coco["ap50"]), "box_ap": float(coco["ap"])}  # type: ignore[arg-type]


def train_objective(
    name: str,
    train: _Images,
    num_classes: int,
    settings: CompareSettings,
    log: Callable[[str], None] = print,
) -> tuple[SSD, dict[str, object]]:
    """One detector trained under objective ``name`` from the seed's initial weights."""
    torch.manual_seed(settings.seed)
    model = SSD(num_classes, image_size=settings.image_size, **settings.model_kwargs)  # type: ignore[arg-type]
    objective = build_objective(name, num_classes)
    result = _train_one(objective, model, train, settings, log)
    return model, result


def run_compare(
    data_dir: str | Path = "data/demo/shapes",
    out_dir: str | Path = "runs/demo",
    *,
    settings: CompareSettings | None = None,
    quick: bool = False,
    objectives: Sequence[str] | None = None,
    detector: str = "ssd",
    num_classes: int | None = None,
    data_format: str | None = None,
    threads: int | None = 2,
    plots: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """Train every objective on ``data_dir/train``, evaluate on ``data_dir/test``.

    ``data_format`` is any box format of :mod:`detloss.app.data` (``coco``, ``yolo``, ``voc``),
    detected from the folder's layout when None.

    Writes ``out_dir/metrics.json`` (the key ``"compare"`` added to what is there),
    ``compare.png`` and ``matchings.png``; prints the table. Returns the ``"compare"``
    dict: ``{objective: {"box_ap50", "box_ap", "train_seconds",
    "objective_ms_per_step"}}``.

    Raises:
        ValueError: an unknown objective or detector (one line naming the choices), or a
            label outside the detector's classes (naming the file, image and label).
    """
    settings = settings or (CompareSettings.quick() if quick else CompareSettings())
    chosen = check_choices(objectives if objectives is not None else settings.objectives, detector)
    if threads:
        torch.set_num_threads(threads)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if data_format is None:
        from .data import detect_format

        data_format = detect_format(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, classes, _ = _load_split(
        data_dir,
        "train",
        settings.image_size,
        num_classes,
        settings.max_train_images,
        data_format,
    )
    test, _, _ = _load_split(
        data_dir, "test", settings.image_size, classes, settings.max_test_images, data_format
    )
    log(
        f"[compare] {len(chosen)} objectives on one SSD: {train.images.shape[0]} training and "
        f"{test.images.shape[0]} test images, {classes} classes, {settings.epochs} epochs each"
    )
    results: dict[str, dict[str, float]] = {}
    curves: dict[str, list[float]] = {}
    for name in chosen:
        model, run = train_objective(name, train, classes, settings, log)
        metrics = _evaluate(model, build_objective(name, classes), test)
        results[name] = {
            "box_ap50": round(metrics["box_ap50"], 4),
            "box_ap": round(metrics["box_ap"], 4),
            "train_seconds": round(float(run["train_seconds"]), 2),  # type: ignore[arg-type]
            "objective_ms_per_step": round(float(run["objective_ms_per_step"]), 2),  # type: ignore[arg-type]
        }
        curves[name] = run["losses"]  # type: ignore[assignment]
        log(
            f"[compare] {name}: AP50 {metrics['box_ap50']:.3f}, AP {metrics['box_ap']:.3f}, "
            f"{results[name]['train_seconds']:.0f} s"
        )

    path = out_dir / "metrics.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    existing["compare"] = results
    path.write_text(json.dumps(existing, indent=1))
    if plots:
        plot_compare(results, curves, out_dir / "compare.png")
        priors = SSD(classes, image_size=settings.image_size, **settings.model_kwargs).priors  # type: ignore[arg-type]
        plot_matchings(train, out_dir / "matchings.png", settings.image_size, priors=priors)
    print_compare_table(results, log)
    return results


def goals_met(results: Mapping[str, Mapping[str, float]]) -> dict[str, bool]:
    """Per objective whether its AP50 reaches the goal, and ``"best"`` for the best one."""
    met = {k: v["box_ap50"] >= COMPARE_GOALS["each_box_ap50"] for k, v in results.items()}
    best = max((v["box_ap50"] for v in results.values()), default=float("nan"))
    met["best"] = best >= COMPARE_GOALS["best_box_ap50"]
    return met


def print_compare_table(
    results: Mapping[str, Mapping[str, float]], log: Callable[[str], None] = print
) -> None:
    """The comparison table, with MISSED on every goal not reached."""
    met = goals_met(results)
    goal = COMPARE_GOALS["each_box_ap50"]
    log("")
    log(
        f"{'SSD objective':<14}{'AP50':>8}{'AP':>8}{'train s':>9}{'loss ms/step':>14}"
        f"  goal AP50 >= {goal:g}"
    )
    log("-" * 72)
    for name, r in results.items():
        log(
            f"{name:<14}{r['box_ap50']:>8.4f}{r['box_ap']:>8.4f}{r['train_seconds']:>9.1f}"
            f"{r['objective_ms_per_step']:>14.2f}  {'met' if met[name] else 'MISSED'}"
        )
    log("-" * 72)
    if results:
        best = max(results, key=lambda k: results[k]["box_ap50"])
        log(
            f"best: {best} (AP50 {results[best]['box_ap50']:.4f}), goal >= "
            f"{COMPARE_GOALS['best_box_ap50']:g}: {'met' if met['best'] else 'MISSED'}"
        )


# ----------------------------------------------------------------------------- pictures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_compare(
    results: Mapping[str, Mapping[str, float]], curves: Mapping[str, list[float]], path: Path
) -> None:
    """AP50 and AP per objective, the objective's time per step, and the loss curves."""
    plt = _pyplot()
    names = list(results)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ap50 = [results[n]["box_ap50"] for n in names]
    ap = [results[n]["box_ap"] for n in names]
    ax.bar(x - 0.2, ap50, 0.4, label="AP50")
    ax.bar(x + 0.2, ap, 0.4, label="AP@[.5:.95]")
    ax.axhline(COMPARE_GOALS["each_box_ap50"], color="gray", ls="--", lw=1, label="AP50 goal")
    ax.axhline(COMPARE_GOALS["best_box_ap50"], color="gray", ls=":", lw=1, label="best AP50 goal")
    for i, (a, b) in enumerate(zip(ap50, ap, strict=True)):
        ax.text(i - 0.2, a + 0.01, f"{a:.2f}", ha="center", fontsize=8)
        ax.text(i + 0.2, b + 0.01, f"{b:.2f}", ha="center", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.2)
    ax.set_title("held-out test images: box AP (COCO)")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    ax = axes[1]
    ms = [results[n]["objective_ms_per_step"] for n in names]
    ax.bar(x, ms, 0.5, color="tab:green")
    for i, v in enumerate(ms):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylabel("ms per training step")
    ax.set_title("time of the loss (matching included)")
    ax = axes[2]
    for n in names:
        c = np.asarray(curves.get(n, []), dtype=float)
        if c.size:
            w = max(1, c.size // 30)
            smooth = np.convolve(c, np.ones(w) / w, mode="valid")
            ax.plot(smooth / max(smooth[0], 1e-12), label=n)
    ax.set_xlabel("step")
    ax.set_ylabel("loss / first loss")
    ax.set_title("training loss (moving average)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_matchings(
    train: _Images,
    path: Path,
    image_size: int,
    index: int | None = None,
    priors: Tensor | None = None,
) -> None:
    """For one training image: the default boxes each object receives under max-IoU,
    Hungarian and Sinkhorn, drawn in the object's colour with the plan's mass as opacity
    (``priors``: the detector's, ``[P, 4]`` normalised ``cxcywh``; default: those of
    ``SSD(1, image_size=image_size)``)."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    if index is None:  # the first image with several objects shows the differences best
        counts = [len(t["labels"]) for t in train.targets]
        index = next((i for i, c in enumerate(counts) if c >= 3), 0)
    image = train.images[index]
    target = train.targets[index]
    if priors is None:
        priors = SSD(1, image_size=image_size).priors
    padded = _padded([target], torch.device("cpu"))
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 3, figsize=(14, 5))
    titles = {
        "max_iou": "max-IoU (SSD, 0.5, best prior forced)",
        "hungarian": "Hungarian (one prior per object)",
        "sinkhorn": "unbalanced Sinkhorn (plan mass)",
    }
    prior_boxes = box_convert(priors, "cxcywh", "xyxy") * image_size
    gt = target["boxes"] * image_size
    for ax, method in zip(axes, titles, strict=True):
        plan = match_priors(method, priors, padded).dense_plan()[0, :, :-1]  # [P, N]
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), extent=(0, image_size, image_size, 0))
        counts = []
        for j in range(gt.shape[0]):
            colour = colours(j % 10)
            mass = plan[:, j]
            chosen = (mass > 0.02).nonzero().squeeze(1)
            counts.append(f"{float(mass.sum()):.1f}")
            for p in chosen.tolist():
                x0, y0, x1, y1 = prior_boxes[p].tolist()
                alpha = float(mass[p].clamp(0, 1))
                ax.add_patch(
                    Rectangle(
                        (x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=1.2, alpha=alpha
                    )
                )
            x0, y0, x1, y1 = gt[j].tolist()
            ax.add_patch(
                Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=2.5, ls="--")
            )
        ax.set_xlim(0, image_size)
        ax.set_ylim(image_size, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{titles[method]}\nmass per object: {', '.join(counts)}", fontsize=9)
    fig.suptitle(
        "Default boxes each ground truth (dashed) receives; opacity = plan mass", fontsize=11
    )
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def with_objectives(settings: CompareSettings, objectives: Sequence[str]) -> CompareSettings:
    """``settings`` training only ``objectives`` (validated)."""
    return replace(settings, objectives=check_choices(objectives))


# ----------------------------------------------------------------------------- command line


def add_compare_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``detloss compare`` on the CLI's subparsers (their formatter appends each
    option's default to its help)."""
    d = CompareSettings()
    p = subparsers.add_parser(
        "compare",
        help="train one SSD under each objective, compare box AP and cost",
        description="Train the small SSD-style detector under the objectives multibox, "
        "hungarian, sinkhorn and ap_loss with the same data, schedule and seed, evaluate "
        "each on the test split and write metrics.json (key 'compare'), compare.png and "
        "matchings.png.",
    )
    p.add_argument(
        "--data",
        default="data/demo/shapes",
        help="COCO folder with train/ and test/ (<split>/images/, <split>/instances.json)",
    )
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument(
        "--objective",
        action="append",
        default=None,
        help=f"objective to train, repeated or a comma list (None: all of {', '.join(OBJECTIVES)})",
    )
    p.add_argument(
        "--format",
        default=None,
        help="the folder's box format: coco, yolo or voc (None: detected from its layout)",
    )
    p.add_argument("--detector", default="ssd", help="detector (choices: ssd)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per batch")
    p.add_argument("--lr", type=float, default=d.lr, help="one-cycle peak learning rate")
    p.add_argument("--image-size", type=int, default=d.image_size, help="detector input side")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of weights, batches, flips")
    p.add_argument(
        "--num-classes", type=int, default=None, help="classes (None: the data's categories)"
    )
    p.add_argument(
        "--max-train-images", type=int, default=None, help="use at most this many (None: all)"
    )
    p.add_argument(
        "--max-test-images", type=int, default=None, help="evaluate at most this many (None: all)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--dihedral",
        action="store_true",
        help="also flip top-bottom and transpose (otherwise left-right flips only)",
    )
    p.add_argument(
        "--quick", action="store_true", help="toy sizes: a smoke run, not meant to meet goals"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the pictures")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def run_compare_command(args: argparse.Namespace) -> int:
    """The ``detloss compare`` handler; a bad choice or label raises ValueError, which the
    CLI prints as one line."""
    names = None
    if args.objective:
        names = [n.strip() for item in args.objective for n in item.split(",") if n.strip()]
    base = CompareSettings.quick() if args.quick else CompareSettings()
    overrides: dict[str, object] = {
        "seed": args.seed,
        "image_size": args.image_size,
        "dihedral": args.dihedral,
    }
    if not args.quick:
        overrides.update(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            max_train_images=args.max_train_images,
            max_test_images=args.max_test_images,
        )
    check_choices(names if names is not None else OBJECTIVES, args.detector)
    run_compare(
        args.data,
        args.out,
        settings=replace(base, **overrides),  # type: ignore[arg-type]
        objectives=names,
        detector=args.detector,
        num_classes=args.num_classes,
        data_format=args.format,
        threads=args.threads,
        plots=not args.no_plots,
    )
    return 0
