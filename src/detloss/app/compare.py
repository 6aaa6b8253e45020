"""Four training objectives on one SSD-style detector, compared side by side.

``detloss compare`` (and the last step of ``detloss demo``) trains the same
:class:`~detloss.app.models.SSD`, from the same initial weights, on the same images, with the
same schedule and seed, under each objective of
:data:`~detloss.app.training.objectives.OBJECTIVES` (``multibox``, ``hungarian``,
``sinkhorn``, ``ap_loss``; described there). Each run is built by the trainer's task code
(:class:`~detloss.app.training.tasks.SsdTask`), so ``detloss train --detector ssd
--objective NAME`` trains the same detector under the same objective.

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
from torch import Tensor, nn

from ..metrics import coco_box_ap
from .figures import plot_compare, plot_matchings
from .models.ssd import SSD
from .training.config import TrainConfig
from .training.data import base_dataset, open_task_split
from .training.objectives import OBJECTIVES, check_choices
from .training.tasks import SsdTask, resize_sample

__all__ = [
    "COMPARE_GOALS",
    "CompareImages",
    "CompareSettings",
    "mirror_batch",
    "run_compare",
    "ssd_task",
]

#: Goals on the held-out test split: every objective's AP50, and the best one's.
COMPARE_GOALS: dict[str, float] = {"each_box_ap50": 0.6, "best_box_ap50": 0.75}


# ----------------------------------------------------------------------------- data


@dataclass
class CompareImages:
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
    data_format: str | None = None,
) -> tuple[CompareImages, int, list[str]]:
    """A split in any box format, read as the trainer reads it
    (:func:`~detloss.app.training.data.open_task_split`), resized to the detector's input."""
    ds, _ = open_task_split(
        "boxes", data, split, data_format, who="compare trains box detectors on", limit=limit
    )
    base = base_dataset(ds)
    categories = list(getattr(base, "categories", []))
    classes = num_classes if num_classes is not None else max(len(categories), 1)
    images, targets, sizes, pixel = [], [], [], []
    for i in range(len(ds)):
        image, target = ds[i]
        labels = target["labels"].to(torch.int64)
        if labels.numel() and int(labels.max()) >= classes:
            raise ValueError(
                f"{base.source}: {base.where(i)}: label {int(labels.max())} exceeds the "  # type: ignore[union-attr]
                f"detector's {classes} classes (labels 0..{classes - 1})"
            )
        pixel.append({"boxes": target["boxes"].to(torch.float32), "labels": labels})
        resized, moved = resize_sample(image, pixel[-1], image_size)
        images.append(resized)
        targets.append({"boxes": moved["boxes"] / image_size, "labels": labels})
        sizes.append((image.shape[-1], image.shape[-2]))  # (width, height)
    return (
        CompareImages(
            torch.stack(images), targets, torch.tensor(sizes, dtype=torch.float32), pixel
        ),
        classes,
        categories,
    )


def mirror_batch(images: Tensor, targets: list[dict[str, Tensor]], moves: Tensor) -> list[dict]:
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
    task: SsdTask,
    model: SSD,
    train: CompareImages,
    settings: CompareSettings,
    log: Callable[[str], None],
) -> dict[str, object]:
    """Train ``model`` in place under ``task``'s objective; returns losses and timings."""
    objective = task.objective
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
            targets = mirror_batch(images, [train.targets[i] for i in index.tolist()], moves[index])
            outputs = model(images)
            t0 = time.perf_counter()
            loss = objective(outputs, priors, targets)  # the targets are normalised
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
def _evaluate(model: SSD, task: SsdTask, test: CompareImages, batch: int = 32) -> dict[str, float]:
    """COCO box AP on ``test``, the detections scaled back to each original image."""
    model.eval()
    preds: list[dict[str, Tensor]] = []
    for start in range(0, test.images.shape[0], batch):
        dets = task.decode(model(test.images[start : start + batch]))
        for d, (w, h) in zip(dets, test.sizes[start : start + batch].tolist(), strict=True):
            scale = torch.tensor([w, h, w, h], dtype=d["boxes"].dtype) / task.input_size
            preds.append({**d, "boxes": d["boxes"] * scale})
    model.train()
    coco = coco_box_ap(preds, test.pixel_targets, max_detections=100)
    return {"box_ap50": float(coco["ap50"]), "box_ap": float(coco["ap"])}  # type: ignore[arg-type]


def ssd_task(name: str, num_classes: int, settings: CompareSettings) -> SsdTask:
    """The trainer's task for the SSD under objective ``name`` at the comparison's sizes
    (what ``detloss train --task boxes --detector ssd --objective NAME`` builds)."""
    cfg = TrainConfig(
        task="boxes",
        detector="ssd",
        objective=name,
        image_size=settings.image_size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        seed=settings.seed,
    )
    return SsdTask(cfg, num_classes)


def train_objective(
    name: str,
    train: CompareImages,
    num_classes: int,
    settings: CompareSettings,
    log: Callable[[str], None] = print,
) -> tuple[SSD, SsdTask, dict[str, object]]:
    """One detector trained under objective ``name`` from the seed's initial weights."""
    task = ssd_task(name, num_classes, settings)
    torch.manual_seed(settings.seed)
    model = task.build_model({**task.model_kwargs(), **settings.model_kwargs})
    result = _train_one(task, model, train, settings, log)  # type: ignore[arg-type]
    return model, task, result  # type: ignore[return-value]


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
        model, task, run = train_objective(name, train, classes, settings, log)
        metrics = _evaluate(model, task, test)
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
        plot_compare(results, curves, out_dir / "compare.png", COMPARE_GOALS)
        plot_matchings(train, out_dir / "matchings.png", settings.image_size, priors=task.priors)
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
        help="box data folder (COCO, YOLO or VOC; see docs/data.md) with train and test splits",
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
