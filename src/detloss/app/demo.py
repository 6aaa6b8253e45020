"""The end-to-end demonstration behind ``detloss demo`` (and ``make demo``).

1. Generates the synthetic crowds and shapes sets into ``data/demo/`` (real PNG files
   with ``points.json`` / COCO ``instances.json``) unless they are already there with
   the same settings.
2. Trains the tiny P2PNet with :class:`~detloss.losses.points.PointLoss` and the tiny
   CenterNet-style detector with :class:`~detloss.losses.centernet.CenterNetLoss`, using
   :func:`detloss.app.training.loop.train` (progress bars, per-epoch validation, checkpoints).
3. Evaluates both on held-out test images, prints a results table against the goals,
   and writes ``runs/demo/metrics.json`` plus pictures: predictions against ground
   truth (points and boxes), the loss curves, and one P2PNet matching.
4. Trains the small SSD under four objectives on the shapes and compares them
   (:func:`detloss.app.compare.run_compare`: the ``"compare"`` key, ``compare.png``,
   ``matchings.png``).

Every number is printed as measured, goals met or not.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .data.collate import collate_detection
from .data.synthetic import SHAPE_CLASSES, CrowdSpec, ShapeSpec, make_crowds, make_shapes
from .figures import plot_losses, plot_matching
from .plot import plot_boxes, plot_points
from .training.config import TrainConfig
from .training.data import open_task_split
from .training.evaluation import predict_loader
from .training.formatting import format_value, json_safe
from .training.loop import train

# The pictures are drawn by detloss.app.plot; its functions stay importable from here.
__all__ = [
    "GOALS",
    "DemoSettings",
    "plot_boxes",
    "plot_losses",
    "plot_matching",
    "plot_points",
    "run_demo",
]

#: Goals of the demo on held-out images: (metric, comparison, value).
GOALS: tuple[tuple[str, str, float], ...] = (
    ("point_f1@4px", ">=", 0.9),
    ("count_relative_mae", "<=", 0.1),
    ("box_ap50", ">=", 0.7),
)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and schedules of the demo (tuned for two CPU cores)."""

    crowd_spec: CrowdSpec = field(
        default_factory=lambda: CrowdSpec(image_size=128, count_range=(0, 300))
    )
    shape_spec: ShapeSpec = field(default_factory=lambda: ShapeSpec(image_size=128))
    crowd_images: tuple[int, int, int] = (600, 30, 100)  # train, val, test
    shape_images: tuple[int, int, int] = (600, 30, 100)
    point_epochs: int = 12
    point_lr: float = 3e-3
    point_batch: int = 8
    box_epochs: int = 18
    box_lr: float = 3e-3
    box_batch: int = 16
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        """A smoke-sized demo (a minute or so): the pipeline, not the goals."""
        return cls(
            crowd_spec=CrowdSpec(image_size=64, count_range=(0, 60)),
            shape_spec=ShapeSpec(image_size=64, size_range=(10.0, 24.0), count_range=(1, 3)),
            crowd_images=(48, 8, 8),
            shape_images=(48, 8, 8),
            point_epochs=2,
            box_epochs=2,
        )


def _generate(
    root: Path, kind: str, spec: object, sizes: tuple[int, ...], seed: int, workers: int
) -> None:
    """Write the train / val / test splits unless ``root`` already holds this exact set."""
    stamp = root / "settings.json"
    wanted = {"kind": kind, "spec": asdict(spec), "sizes": list(sizes), "seed": seed}  # type: ignore[call-overload]
    wanted = json.loads(json.dumps(wanted))
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return
    make = make_crowds if kind == "crowds" else make_shapes
    for k, (split, n) in enumerate(zip(("train", "val", "test"), sizes, strict=True)):
        make(root / split, n, spec, seed=seed * 1000 + k, workers=workers)  # type: ignore[arg-type]
    stamp.write_text(json.dumps(wanted, indent=1))


def _loader(task: str, data: Path, split: str) -> DataLoader:
    dataset, _ = open_task_split(task, data, split)
    return DataLoader(dataset, batch_size=16, collate_fn=collate_detection)


def _check(value: float, op: str, goal: float) -> bool:
    return value >= goal if op == ">=" else value <= goal


def run_demo(
    data_dir: str | Path = "data/demo",
    out_dir: str | Path = "runs/demo",
    *,
    settings: DemoSettings | None = None,
    quick: bool = False,
    threads: int | None = 2,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, float]:
    """Run the demonstration; returns the metrics written to ``out_dir/metrics.json``."""
    t_start = time.perf_counter()
    settings = settings or (DemoSettings.quick() if quick else DemoSettings())
    if threads:
        torch.set_num_threads(threads)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    crowds, shapes = data_dir / "crowds", data_dir / "shapes"

    print(f"[demo] data in {data_dir}/ (generated if missing)")
    t0 = time.perf_counter()
    workers = max(threads or 1, 1)
    _generate(crowds, "crowds", settings.crowd_spec, settings.crowd_images, settings.seed, workers)
    _generate(shapes, "shapes", settings.shape_spec, settings.shape_images, settings.seed, workers)
    t_data = time.perf_counter() - t0

    if quick:
        print(
            "[demo] --quick: toy sizes that check the pipeline; they are not meant to meet the goals"
        )
    # The demo owns its output folder: a rerun replaces the previous results.
    base = TrainConfig(
        seed=settings.seed,
        threads=threads,
        progress=progress,
        val_split="val",
        device="cpu",
        overwrite=True,
    )
    runs, seconds = {}, {}
    for task, data, epochs, lr, batch in (
        ("points", crowds, settings.point_epochs, settings.point_lr, settings.point_batch),
        ("boxes", shapes, settings.box_epochs, settings.box_lr, settings.box_batch),
    ):
        t0 = time.perf_counter()
        runs[task] = train(
            replace(
                base,
                task=task,
                data=str(data),
                out=str(out_dir / task),
                epochs=epochs,
                lr=lr,
                batch_size=batch,
            )
        )
        seconds[task] = time.perf_counter() - t0
    points_run, boxes_run = runs["points"], runs["boxes"]

    # Held-out test images, never seen in training or model selection.
    device = torch.device("cpu")
    p_model, p_task = points_run["model"], points_run["task"]
    b_model, b_task = boxes_run["model"], boxes_run["task"]
    p_test, b_test = _loader("points", crowds, "test"), _loader("boxes", shapes, "test")
    p_preds, p_targets = predict_loader(p_model, p_task, p_test, device)  # type: ignore[arg-type]
    b_preds, b_targets = predict_loader(b_model, b_task, b_test, device)  # type: ignore[arg-type]
    metrics: dict[str, float] = {}
    metrics.update(p_task.metrics(p_preds, p_targets))  # type: ignore[union-attr]
    metrics.update(b_task.metrics(b_preds, b_targets))  # type: ignore[union-attr]
    metrics["test_images_points"] = float(len(p_targets))
    metrics["test_images_boxes"] = float(len(b_targets))
    metrics["seconds_data"] = round(t_data, 1)
    metrics["seconds_train_points"] = round(seconds["points"], 1)
    metrics["seconds_train_boxes"] = round(seconds["boxes"], 1)

    if plots:
        t0 = time.perf_counter()
        plot_points(
            p_test.dataset,
            p_preds,
            out_dir / "points_predictions.png",
            threshold=p_task.cfg.point_threshold,  # type: ignore[union-attr]
            title="P2PNet on held-out crowds",
        )
        plot_boxes(
            b_test.dataset,
            b_preds,
            SHAPE_CLASSES,
            out_dir / "boxes_predictions.png",
            title="CenterNet on held-out shapes",
        )
        plot_losses(
            [points_run["history"], boxes_run["history"]],  # type: ignore[list-item]
            out_dir / "loss_curves.png",
            titles=["P2PNet (PointLoss)", "CenterNet (CenterNetLoss)"],
            metrics=["point_f1@4px", "box_ap50"],
        )
        plot_matching(
            p_model,  # type: ignore[arg-type]
            p_test.dataset,
            out_dir / "matching.png",
            tau=p_task.cfg.tau,  # type: ignore[union-attr]
        )
        metrics["seconds_plots"] = round(time.perf_counter() - t0, 1)
    metrics["seconds_total"] = round(time.perf_counter() - t_start, 1)

    goals = {}
    for key, op, goal in GOALS:
        goals[key] = {"goal": f"{op} {goal:g}", "met": _check(metrics[key], op, goal)}
    (out_dir / "metrics.json").write_text(
        json.dumps(json_safe({**metrics, "goals": goals}), indent=1, default=_json_default)
    )
    _print_table(metrics, goals, out_dir)
    # The SSD objectives side by side, on the same shapes; adds "compare" to metrics.json.
    from .compare import CompareSettings, run_compare

    side = settings.shape_spec.image_size
    base = CompareSettings.quick() if quick else CompareSettings()
    run_compare(
        shapes,
        out_dir,
        settings=replace(base, image_size=side if isinstance(side, int) else max(side)),
        threads=threads,
        plots=plots,
    )
    return metrics


def _json_default(x: object) -> object:
    if isinstance(x, Tensor):
        return x.tolist()
    raise TypeError(type(x).__name__)


def _print_table(metrics: dict[str, float], goals: dict[str, dict], out_dir: Path) -> None:
    rows = [
        ("point F1 @ 4 px", "point_f1@4px", ">= 0.9"),
        ("point precision @ 4 px", "point_precision@4px", ""),
        ("point recall @ 4 px", "point_recall@4px", ""),
        ("count MAE", "count_mae", ""),
        ("count MAE / mean count", "count_relative_mae", "<= 0.1"),
        ("count RMSE", "count_rmse", ""),
        ("mean count", "mean_count", ""),
        ("box AP50 (COCO)", "box_ap50", ">= 0.7"),
        ("box AP@[.5:.95] (COCO)", "box_ap", ""),
        ("box AP75 (COCO)", "box_ap75", ""),
        ("box AP50 (VOC all-point)", "box_voc_ap50", ""),
    ]
    print()
    print(f"{'held-out metric':<28}{'value':>10}  {'goal':<8} status")
    print("-" * 56)
    for label, key, goal in rows:
        status = ""
        if key in goals:
            status = "met" if goals[key]["met"] else "MISSED"
        value = metrics[key]
        shown = f"{value:.4f}" if value == value else format_value(value)  # NaN: "n/a"
        print(f"{label:<28}{shown:>10}  {goal:<8} {status}")
    print("-" * 56)
    print(
        f"time: data {metrics['seconds_data']:.0f} s, points {metrics['seconds_train_points']:.0f} s, "
        f"boxes {metrics['seconds_train_boxes']:.0f} s, total {metrics['seconds_total']:.0f} s"
    )
    print(f"results and pictures in {out_dir}/")
