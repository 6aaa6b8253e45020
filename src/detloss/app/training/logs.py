"""What a run writes beside its checkpoints: ``metrics.csv`` (one row per epoch),
TensorBoard scalars on request, ``loss_curves.png`` after every evaluation and
``val_predictions.png`` each time the best checkpoint improves."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from .formatting import format_value, write_text_atomic

if TYPE_CHECKING:
    from .run import TrainingRun

__all__ = [
    "PLOTTED_VAL_IMAGES",
    "draw_progress",
    "flat_record",
    "log_tensorboard",
    "tensorboard_writer_class",
    "write_metrics_csv",
]


def flat_record(record: Mapping[str, object]) -> dict[str, object]:
    """One ``metrics.csv`` row: ``epoch``, ``lr``, ``images_per_s``, ``seconds``, the
    training loss terms as ``train_<term>`` and the validation metrics as ``val_<name>``."""
    row: dict[str, object] = {"epoch": record["epoch"]}
    for key in ("lr", "images_per_s", "seconds", "skipped_steps"):
        if key in record:
            row[key] = record[key]
    for group in ("train", "val"):
        for name, value in dict(record.get(group, {})).items():  # type: ignore[call-overload]
            row[f"{group}_{name}"] = value
    return row


def write_metrics_csv(path: Path, history: Sequence[Mapping[str, object]]) -> None:
    """The whole history, one row per epoch (rewritten atomically: a resumed run gets the
    same file as an uninterrupted one). Missing values (no evaluation that epoch) and
    undefined ones (NaN) are empty cells."""
    import csv
    import io

    rows = [flat_record(rec) for rec in history]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: ("" if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in row.items()
            }
        )
    write_text_atomic(path, buffer.getvalue())


def tensorboard_writer_class() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(
            "tensorboard: the tensorboard package is not installed (pip install tensorboard), "
            "or run without --tensorboard"
        ) from None
    return SummaryWriter


def log_tensorboard(writer: object, record: Mapping[str, object]) -> None:
    step = int(record["epoch"])  # type: ignore[call-overload]
    for key, value in flat_record(record).items():
        if key == "epoch" or not isinstance(value, int | float):
            continue
        group, _, name = key.partition("_")
        tag = f"{group}/{name}" if group in ("train", "val") else key
        writer.add_scalar(tag, float(value), step)  # type: ignore[attr-defined]
    writer.flush()  # type: ignore[attr-defined]


#: Validation images drawn in ``val_predictions.png``.
PLOTTED_VAL_IMAGES = 4


def draw_progress(run: TrainingRun, preds: list[dict[str, Tensor]] | None) -> None:
    """``loss_curves.png`` now; ``val_predictions.png`` too when ``preds`` (the
    validation predictions of a new best checkpoint) are given."""
    if run.plots_off:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        run.plots_off = "matplotlib is not installed"
        print(
            "warning: no loss_curves.png / val_predictions.png: matplotlib is not installed "
            "(pip install matplotlib)",
            file=sys.stderr,
        )
        return
    from .. import figures, plot

    task = run.task
    figures.plot_losses(
        [run.history],
        run.out / "loss_curves.png",
        titles=[f"{run.cfg.task}: {type(run.model).__name__} on {run.cfg.data}"],
        metrics=[task.main_metric],
    )
    if preds is None:
        return
    dataset = run.val_loader.dataset
    count = min(PLOTTED_VAL_IMAGES, len(dataset))  # type: ignore[arg-type]
    samples = [dataset[i] for i in range(count)]
    epoch = run.best_epoch
    score = run.best.get(task.main_metric, float("nan"))
    title = f"validation, epoch {epoch} ({task.main_metric} {format_value(score)})"
    if task.name == "points":
        plot.plot_points(
            samples,
            preds[:count],
            run.out / "val_predictions.png",
            threshold=run.cfg.point_threshold,
            title=title,
        )
    else:
        plot.plot_boxes(
            samples,
            preds[:count],
            run.categories or [str(i) for i in range(run.num_classes)],
            run.out / "val_predictions.png",
            title=title,
        )
