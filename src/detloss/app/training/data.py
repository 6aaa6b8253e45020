"""The datasets of a training run: the splits of ``cfg.data`` read through the data
readers (:mod:`detloss.app.data`), with the task's transforms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..data.base import AnnotatedImages
from ..data.collate import RandomHorizontalFlip
from .config import TrainConfig

__all__ = [
    "ANNOTATION_FILES",
    "ResizedImages",
    "base_dataset",
    "check_task_format",
    "load_dataset",
    "open_task_split",
    "open_training_data",
    "with_input_size",
]

ANNOTATION_FILES = {"points": "points.json", "boxes": "instances.json"}


def load_dataset(
    task: str, data: str | Path, split: str, *, flip: bool = False, limit: int | None = None
) -> Dataset:
    """The ``split`` of ``data`` in our own layouts (``points-json`` for points, ``coco``
    for boxes), with random flips if ``flip``, its first ``limit`` images if given.
    :func:`open_task_split` reads every format."""
    fmt = "points-json" if task == "points" else "coco"
    transform = RandomHorizontalFlip() if flip else None
    return open_task_split(task, data, split, fmt, limit=limit, transform=transform)[0]


def base_dataset(ds: Dataset) -> Dataset:
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds


_KIND_WORDS = {"points": "point annotations", "boxes": "box annotations"}


def _empty(ds: AnnotatedImages, split: str) -> ValueError:
    return ValueError(f"the {split!r} split is empty: {ds.source} lists no images")


def check_task_format(task: str, data: str | Path, format: str | None, who: str) -> str:
    """The format of the folder ``data`` (``format``, or detected from its layout), after
    checking that it holds ``task``'s annotations. ``who`` starts the error, e.g.
    ``"task: --task boxes trains on"``, which goes on with ``"box annotations, but
    'data' holds point annotations (format ...)"``."""
    from ..data.formats import detect_format, format_kind

    if not Path(data).is_dir():
        raise FileNotFoundError(f"data: no such folder {str(data)!r}")
    fmt = format or detect_format(data)
    kind = format_kind(fmt)
    if kind != task:
        raise ValueError(
            f"{who} {_KIND_WORDS[task]}, but {str(data)!r} holds {_KIND_WORDS[kind]} "
            f"(format {fmt}): the data of the other task"
        )
    return fmt


def open_task_split(
    task: str,
    data: str | Path,
    split: str,
    format: str | None = None,
    *,
    who: str | None = None,
    limit: int | None = None,
    transform: Callable | None = None,
) -> tuple[AnnotatedImages | Subset, str]:
    """``(dataset, format)``: the ``split`` of ``data`` in any format of the data readers,
    checked to hold ``task``'s annotations (:func:`check_task_format`, ``who`` starting
    its error) and not to be empty; its first ``limit`` images if given, each through
    ``transform`` (``(image, target) -> (image, target)``) if given."""
    from ..data.formats import open_split

    fmt = check_task_format(task, data, format, who or f"{task}: expected")
    ds = open_split(data, split, fmt, transform=transform)
    if len(ds) == 0:
        raise _empty(ds, split)
    if limit is not None and limit < len(ds):
        return Subset(ds, range(limit)), fmt
    return ds, fmt


class ResizedImages(Dataset):
    """The items of ``dataset`` resized to ``size x size``
    (:func:`~detloss.app.training.tasks.resize_sample`), for detectors of a fixed input."""

    def __init__(self, dataset: Dataset, size: int) -> None:
        self.dataset = dataset
        self.size = size

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        from .tasks import resize_sample

        image, target = self.dataset[index]
        return resize_sample(image, target, self.size)


def with_input_size(dataset: Dataset, size: int | None) -> Dataset:
    """``dataset`` as a detector of input side ``size`` takes it (unchanged for None)."""
    return dataset if size is None else ResizedImages(dataset, size)


def open_training_data(cfg: TrainConfig) -> tuple[Dataset, Dataset, AnnotatedImages, str]:
    """``(train, val, base, format)`` of ``cfg.data`` as :func:`train` reads it.

    The format is ``cfg.format`` or detected; its kind must be ``cfg.task``'s. ``base`` is
    the opened training split (categories, number of classes). Errors are one line:
    :class:`FileNotFoundError` (no folder, no validation split: the message lists the
    folder's splits and suggests ``val_fraction``) or :class:`ValueError` (unknown layout,
    another task's data, an empty split).
    """
    from ..data.formats import open_split, open_train_val

    data = Path(cfg.data)
    fmt = check_task_format(cfg.task, data, cfg.format, f"task: --task {cfg.task} trains on")

    try:
        train_ds, val_ds, base = open_train_val(
            data,
            fmt,
            train_split=cfg.train_split,
            val_split=cfg.val_split,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
            train_transform=RandomHorizontalFlip() if cfg.flip else None,
        )
    except FileNotFoundError:
        # An empty training split says more than a missing validation split.
        train_only = open_split(data, cfg.train_split, fmt)
        if len(train_only) == 0:
            raise _empty(train_only, cfg.train_split) from None
        raise
    if len(base) == 0:
        raise _empty(base, cfg.train_split)
    if len(val_ds) == 0:  # type: ignore[arg-type]
        raise _empty(base_dataset(val_ds), cfg.val_split)  # type: ignore[arg-type]
    if cfg.max_train_images is not None and cfg.max_train_images < len(train_ds):  # type: ignore[arg-type]
        train_ds = Subset(train_ds, range(cfg.max_train_images))
    if cfg.max_val_images is not None and cfg.max_val_images < len(val_ds):  # type: ignore[arg-type]
        val_ds = Subset(val_ds, range(cfg.max_val_images))
    return train_ds, val_ds, base, fmt
