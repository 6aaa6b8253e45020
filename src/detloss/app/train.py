"""A small, complete trainer for the reference detectors.

Two tasks share one loop:

* ``points``: :class:`~detloss.app.models.P2PNet` trained with
  :class:`~detloss.losses.points.PointLoss`, decoded by
  :func:`~detloss.postprocess.points.decode_points`, scored by point F1 at a distance
  threshold and counting MAE / RMSE;
* ``boxes``: the CenterNet-style :class:`~detloss.app.models.CenterNet` trained with
  :class:`~detloss.losses.centernet.CenterNetLoss` on
  :func:`~detloss.heatmap.centernet_targets`, decoded by
  :func:`~detloss.postprocess.centernet.centernet_decode`, scored by COCO box AP.

Data: any folder :func:`detloss.app.data.open_train_val` reads (our points JSON, COCO,
ShanghaiTech, UCF-QNRF, JHU-Crowd++, NWPU-Crowd, YOLO, Pascal VOC), its format detected
from the layout unless named (``format``); without a validation split, ``val_fraction``
carves one from the training split.

Beside the checkpoints a run writes ``metrics.csv`` (one row per epoch),
``loss_curves.png`` (after every evaluation) and ``val_predictions.png`` (a few validation
images, each time the best checkpoint improves), and logs to TensorBoard on request.

The loop: AdamW with a one-cycle learning rate per step, a tqdm bar showing the loss
terms, learning rate and images per second, evaluation after every epoch, ``last.pt``
and ``best.pt`` checkpoints (everything needed to resume: model, optimiser, scheduler,
AMP scaler, every rank's RNG states, history), automatic mixed precision on CUDA, and DDP
when launched by ``torchrun`` (``WORLD_SIZE > 1``: gloo on CPU, nccl on CUDA, a
``DistributedSampler`` per rank; rank 0 evaluates and writes).

Checkpoints are written atomically (a temporary file in the same folder, flushed to disk,
then renamed) and read with ``torch.load(weights_only=True)``: they hold only tensors and
plain containers, so a received file cannot run code when it is loaded.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pickle
import random
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..metrics import coco_box_ap, count_metrics, point_metrics, voc_box_ap
from .data._common import DEFAULT_MAX_PIXELS
from .data.base import AnnotatedImages
from .data.coco import CocoDetection
from .data.collate import RandomHorizontalFlip, collate_detection, pad_images
from .data.points import PointDataset
from .models.centernet import CenterNet
from .models.p2pnet import P2PNet, TwoStageFinetune

__all__ = [
    "BoxTask",
    "CheckpointError",
    "NonFiniteLossError",
    "PeerTimeoutError",
    "PointTask",
    "TrainConfig",
    "build_task",
    "evaluate",
    "load_checkpoint",
    "load_dataset",
    "predict",
    "predict_loader",
    "read_checkpoint",
    "save_checkpoint",
    "train",
]

TASKS = ("points", "boxes")
ANNOTATION_FILES = {"points": "points.json", "boxes": "instances.json"}
#: The files a run writes into its output folder (``--overwrite`` removes these only).
RUN_FILES = (
    "last.pt",
    "best.pt",
    "history.json",
    "metrics.json",
    "metrics.csv",
    "loss_curves.png",
    "val_predictions.png",
)
#: Seconds a collective may wait for the other ranks before the job ends (``--dist-timeout``).
DEFAULT_DIST_TIMEOUT = 600.0


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated or corrupt, refused by the safe loader
    (it holds objects other than tensors and plain containers), not a detloss training
    checkpoint, or made for another task. The message is one line naming the file."""


class NonFiniteLossError(FloatingPointError):
    """A training step produced a non-finite loss or gradient; raised before the optimiser
    applies it, so no saved checkpoint holds a non-finite weight."""


class PeerTimeoutError(RuntimeError):
    """Under DDP, a collective operation waited longer than ``dist_timeout`` for another
    rank (stopped, hung or dead). The message names the rank(s) that stopped answering
    where it can tell."""


@dataclass
class TrainConfig:
    """Settings of :func:`train` (the ``detloss train`` options).

    Attributes:
        task: ``"points"`` or ``"boxes"``.
        data: the data folder, in any format of :data:`detloss.app.data.FORMATS`.
        format: its format's name; None detects it from the layout
            (:func:`detloss.app.data.detect_format`). The format's kind (points or boxes) must
            be ``task``'s.
        out: output directory (checkpoints, ``history.json``, ``metrics.json``,
            ``metrics.csv``, pictures).
        train_split, val_split: split names (the format's, e.g. ``trainval`` for VOC).
        val_fraction: carve the validation set from ``train_split`` (this fraction of its
            images, drawn by ``seed``) instead of reading ``val_split``.
        epochs, batch_size, lr, weight_decay: optimisation; ``lr`` is the one-cycle peak.
        warmup: fraction of the steps spent warming the learning rate up.
        model: ``"tiny"`` (few channels, CPU-friendly) or ``"full"`` (VGG16-BN P2PNet /
            wider CenterNet).
        backbone_weights: local file of pretrained VGG16-BN weights (points, full model).
        freeze_epochs: two-stage fine-tuning, backbone frozen for this many epochs then
            every learning rate times ``finetune_lr_scale`` (points only; 0 = off).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (under DDP each rank uses its
            ``LOCAL_RANK`` GPU).
        amp: mixed precision when the device is CUDA (ignored on CPU).
        seed: seeds Python, numpy and torch (rank-offset under DDP) and the loader.
        workers: DataLoader worker processes.
        threads: ``torch.set_num_threads`` (None leaves torch's default).
        resume: checkpoint to resume from (``"auto"``: ``out/last.pt`` if it exists). An
            unreadable checkpoint is skipped with a warning for the newest intact one in
            its folder (``last.pt``, ``best.pt``). A finished run resumed with a larger
            ``epochs`` is extended.
        overwrite: allow a new run (``resume`` None) into an ``out`` folder that is not
            empty; the previous run's files (:data:`RUN_FILES`) are removed first. Without
            it such a run is refused, so a good ``best.pt`` is never replaced by a worse
            one from another run.
        skip_nonfinite: skip a step whose loss or gradient is not finite (counted and
            reported) instead of stopping with :class:`NonFiniteLossError`.
        dist_timeout: seconds a collective waits for the other ranks under DDP before the
            job ends with :class:`PeerTimeoutError` (rank 0's evaluation must fit in it).
        max_train_images, max_val_images: use only the first images of a split.
        flip: random horizontal flips during training.
        progress: show the tqdm bar.
        eval_every: evaluate every this many epochs (and after the last).
        head, tau, neg_weight, loc_weight: P2PNet head and :class:`PointLoss` settings.
            The defaults (tau 0.2, loc_weight 0.05) differ from P2PNet's (0.05, 2e-4):
            short trainings of small models localise far better with a matching that
            weighs distance more and a stronger localisation term.
        reg_lr_scale: learning-rate factor of P2PNet's regression head (its offsets are
            scaled by gamma = 100 pixels, so full-rate Adam steps move proposals too far).
        point_threshold: distance (pixels) of the point F1.
        score_threshold: probability above which a proposal counts (P2PNet: 0.5).
        size_weight, offset_weight: :class:`CenterNetLoss` weights.
        max_detections: detections kept per image for box AP.
        plots: write ``loss_curves.png`` and ``val_predictions.png`` (needs matplotlib;
            skipped with a warning without it).
        tensorboard: log the losses, learning rate and metrics to ``out/tensorboard``
            (needs the ``tensorboard`` package).
    """

    task: str = "points"
    data: str | Path = "data"
    format: str | None = None
    out: str | Path = "runs/train"
    train_split: str = "train"
    val_split: str = "val"
    val_fraction: float | None = None
    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1
    grad_clip: float = 10.0
    model: str = "tiny"
    backbone_weights: str | None = None
    freeze_epochs: int = 0
    finetune_lr_scale: float = 0.1
    device: str = "cpu"
    amp: bool = True
    seed: int = 0
    workers: int = 0
    threads: int | None = None
    resume: str | None = None
    overwrite: bool = False
    skip_nonfinite: bool = False
    dist_timeout: float = DEFAULT_DIST_TIMEOUT
    max_train_images: int | None = None
    max_val_images: int | None = None
    flip: bool = True
    progress: bool = True
    eval_every: int = 1
    head: str = "sigmoid"
    reg_lr_scale: float = 0.1
    tau: float = 0.2
    neg_weight: float = 0.5
    loc_weight: float = 0.05
    point_threshold: float = 4.0
    score_threshold: float = 0.5
    size_weight: float = 0.1
    offset_weight: float = 1.0
    max_detections: int = 100
    plots: bool = True
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.model not in ("tiny", "full"):
            raise ValueError(f"model must be 'tiny' or 'full', got {self.model!r}")
        for name in ("epochs", "batch_size", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")
        if not self.dist_timeout > 0:
            raise ValueError(f"dist_timeout must be > 0 seconds, got {self.dist_timeout}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.format is not None:
            from .data.formats import FORMATS

            if self.format not in FORMATS:
                raise ValueError(
                    f"format must be one of {sorted(FORMATS)} (or None: detected), "
                    f"got {self.format!r}"
                )

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# ----------------------------------------------------------------------------- tasks


class PointTask:
    """P2PNet + PointLoss; metrics ``point_f1@<t>px``, precision, recall, count errors."""

    name = "points"

    def __init__(self, cfg: TrainConfig, num_classes: int = 1) -> None:
        from ..losses.points import PointLoss

        self.cfg = cfg
        self.criterion = PointLoss(
            tau=cfg.tau, neg_weight=cfg.neg_weight, loc_weight=cfg.loc_weight, head=cfg.head
        )
        self.f1_key = f"point_f1@{cfg.point_threshold:g}px"
        self.main_metric = self.f1_key

    def model_kwargs(self) -> dict[str, object]:
        kwargs: dict[str, object] = {"head": self.cfg.head}
        if self.cfg.model == "full" and self.cfg.backbone_weights:
            kwargs["backbone_weights"] = self.cfg.backbone_weights
        return kwargs

    def build_model(self, kwargs: Mapping[str, object]) -> nn.Module:
        if self.cfg.model == "tiny":
            return P2PNet.tiny(**kwargs)
        return P2PNet(**kwargs)  # type: ignore[arg-type]

    def param_groups(self, model: nn.Module) -> list[dict[str, object]]:
        # Adam's step size ignores the gradient's scale, so gamma (100 px per unit of
        # offset) multiplies how far a proposal jumps per step: the regression head
        # trains at a smaller rate to keep those jumps around a pixel.
        reg = [p for n, p in model.named_parameters() if n.startswith("reg_head.")]
        other = [p for n, p in model.named_parameters() if not n.startswith("reg_head.")]
        return [
            {"params": other, "lr": self.cfg.lr},
            {"params": reg, "lr": self.cfg.lr * self.cfg.reg_lr_scale},
        ]

    def loss(
        self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        points = [{"points": t["points"]} for t in targets]
        return self.criterion(outputs, points, return_terms=True)  # type: ignore[return-value]

    def decode(
        self, outputs: Mapping[str, Tensor], score_threshold: float | None = None
    ) -> list[dict[str, Tensor]]:
        """``{"points": [n, 2], "scores": [n]}`` per image, probability above
        ``score_threshold`` (default: the config's)."""
        from ..postprocess.points import decode_points

        threshold = self.cfg.score_threshold if score_threshold is None else score_threshold
        return decode_points(outputs["pred_points"], outputs["pred_logits"], threshold)

    def metrics(
        self, preds: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]]
    ) -> dict[str, float]:
        pm = point_metrics(
            [p["points"] for p in preds], [t["points"] for t in targets], self.cfg.point_threshold
        )
        cm = count_metrics([len(p["points"]) for p in preds], [len(t["points"]) for t in targets])
        t = f"{self.cfg.point_threshold:g}px"
        # Precision without a single prediction is 0 / 0: reported as NaN (shown "n/a",
        # written null) rather than the perfect 1 that would flatter an empty model.
        no_predictions = pm["tp"] + pm["fp"] == 0
        return {
            self.f1_key: pm["f1"],
            f"point_precision@{t}": float("nan") if no_predictions else pm["precision"],
            f"point_recall@{t}": pm["recall"],
            "count_mae": cm["mae"],
            "count_rmse": cm["rmse"],
            "mean_count": cm["mean_count"],
            "count_relative_mae": cm["relative_mae"],
        }


class BoxTask:
    """CenterNet + CenterNetLoss; metrics ``box_ap`` (COCO), ``box_ap50``, ``box_ap75``,
    ``box_voc_ap50``."""

    name = "boxes"
    main_metric = "box_ap50"

    def __init__(self, cfg: TrainConfig, num_classes: int) -> None:
        from ..losses.centernet import CenterNetLoss

        self.cfg = cfg
        self.num_classes = num_classes
        self.criterion = CenterNetLoss(size_weight=cfg.size_weight, offset_weight=cfg.offset_weight)

    def model_kwargs(self) -> dict[str, object]:
        return {"num_classes": self.num_classes}

    def build_model(self, kwargs: Mapping[str, object]) -> nn.Module:
        if self.cfg.model == "tiny":
            return CenterNet.tiny(**kwargs)  # type: ignore[arg-type]
        return CenterNet(**kwargs)  # type: ignore[arg-type]

    def param_groups(self, model: nn.Module) -> list[dict[str, object]]:
        return [{"params": list(model.parameters()), "lr": self.cfg.lr}]

    def loss(
        self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        from ..heatmap import centernet_targets

        heat = outputs["heatmap"]
        boxes = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        dense = centernet_targets(
            boxes,
            num_classes=self.num_classes,
            output_size=(heat.shape[-2], heat.shape[-1]),
            stride=CenterNet.stride,
        )
        return self.criterion(outputs, dense, return_terms=True)  # type: ignore[return-value]

    def decode(
        self, outputs: Mapping[str, Tensor], score_threshold: float | None = None
    ) -> list[dict[str, Tensor]]:
        """``{"boxes": [n, 4] xyxy, "scores": [n], "labels": [n]}`` per image: the top
        ``max_detections`` peaks with a positive score (at least ``score_threshold``)."""
        from ..postprocess.centernet import centernet_decode

        detections = centernet_decode(
            outputs["heatmap"],
            outputs["size"],
            outputs["offset"],
            k=self.cfg.max_detections,
            stride=CenterNet.stride,
        )
        if score_threshold is None:
            return detections
        return [{k: v[d["scores"] >= score_threshold] for k, v in d.items()} for d in detections]

    def metrics(
        self, preds: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]]
    ) -> dict[str, float]:
        coco = coco_box_ap(preds, targets, max_detections=self.cfg.max_detections)
        voc = voc_box_ap(preds, targets)
        return {
            "box_ap": coco["ap"],  # type: ignore[dict-item]
            "box_ap50": coco["ap50"],  # type: ignore[dict-item]
            "box_ap75": coco["ap75"],  # type: ignore[dict-item]
            "box_voc_ap50": voc["ap"],  # type: ignore[dict-item]
        }


Task = PointTask | BoxTask


def build_task(cfg: TrainConfig, num_classes: int = 1) -> Task:
    return PointTask(cfg) if cfg.task == "points" else BoxTask(cfg, num_classes)


def load_dataset(
    task: str, data: str | Path, split: str, *, flip: bool = False, limit: int | None = None
) -> Dataset:
    """The dataset of ``data/split`` for ``task`` (first ``limit`` images if given)."""
    root = Path(data) / split
    ann = root / ANNOTATION_FILES[task]
    if not Path(data).is_dir():
        raise FileNotFoundError(f"data: no such folder {str(data)!r}")
    if not ann.is_file():
        other = next((f for t, f in ANNOTATION_FILES.items() if t != task), "")
        hint = (
            f" (it holds {other}: the data of the other task)" if (root / other).is_file() else ""
        )
        raise FileNotFoundError(
            f"the {split!r} split of the {task} task needs {ann}, which does not exist{hint}"
        )
    transform = RandomHorizontalFlip() if flip else None
    ds: Dataset
    if task == "points":
        ds = PointDataset(root / "images", ann, transform)
    else:
        ds = CocoDetection(root / "images", ann, transform)
    if len(ds) == 0:  # type: ignore[arg-type]
        raise ValueError(f"the {split!r} split is empty: {ann} lists no images")
    if limit is not None and limit < len(ds):  # type: ignore[arg-type]
        ds = Subset(ds, range(limit))
    return ds


def _base(ds: Dataset) -> Dataset:
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds


_KIND_WORDS = {"points": "point annotations", "boxes": "box annotations"}


def open_training_data(cfg: TrainConfig) -> tuple[Dataset, Dataset, AnnotatedImages, str]:
    """``(train, val, base, format)`` of ``cfg.data`` as :func:`train` reads it.

    The format is ``cfg.format`` or detected; its kind must be ``cfg.task``'s. ``base`` is
    the opened training split (categories, number of classes). Errors are one line:
    :class:`FileNotFoundError` (no folder, no validation split: the message lists the
    folder's splits and suggests ``val_fraction``) or :class:`ValueError` (unknown layout,
    another task's data, an empty split).
    """
    from .data.formats import detect_format, format_kind, open_split, open_train_val

    data = Path(cfg.data)
    if not data.is_dir():
        raise FileNotFoundError(f"data: no such folder {str(data)!r}")
    fmt = cfg.format or detect_format(data)
    kind = format_kind(fmt)
    if kind != cfg.task:
        raise ValueError(
            f"task: --task {cfg.task} trains on {_KIND_WORDS[cfg.task]}, but {str(data)!r} "
            f"holds {_KIND_WORDS[kind]} (format {fmt}): the data of the other task"
        )

    def empty(ds: AnnotatedImages, split: str) -> ValueError:
        return ValueError(f"the {split!r} split is empty: {ds.source} lists no images")

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
            raise empty(train_only, cfg.train_split) from None
        raise
    if len(base) == 0:
        raise empty(base, cfg.train_split)
    if len(val_ds) == 0:  # type: ignore[arg-type]
        raise empty(_base(val_ds), cfg.val_split)  # type: ignore[arg-type]
    if cfg.max_train_images is not None and cfg.max_train_images < len(train_ds):  # type: ignore[arg-type]
        train_ds = Subset(train_ds, range(cfg.max_train_images))
    if cfg.max_val_images is not None and cfg.max_val_images < len(val_ds):  # type: ignore[arg-type]
        val_ds = Subset(val_ds, range(cfg.max_val_images))
    return train_ds, val_ds, base, fmt


# ----------------------------------------------------------------------------- set-up


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's global generator and torch (user transforms may draw from any)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global state is what transforms use
    torch.manual_seed(seed)


def _setup_distributed(
    device: str, timeout: float = DEFAULT_DIST_TIMEOUT
) -> tuple[int, int, torch.device]:
    """``(rank, world size, device)``: an existing process group is used as it is;
    otherwise one is initialised from torchrun's environment when ``WORLD_SIZE > 1``
    (nccl for CUDA, gloo for the CPU) with ``timeout`` seconds for every collective."""
    dev = torch.device(device)
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 0, 1, dev
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout),
        )
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    return dist.get_rank(), dist.get_world_size(), dev


def _to_device(
    images: Tensor, targets: Sequence[Mapping[str, Tensor]], device: torch.device
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    non_blocking = device.type == "cuda"
    return images.to(device, non_blocking=non_blocking), [
        {k: v.to(device, non_blocking=non_blocking) for k, v in t.items()} for t in targets
    ]


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    task: Task,
    loader: DataLoader,
    device: torch.device,
    amp: bool = False,
) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """Predictions and targets (on the CPU) of every image of ``loader`` (a loader of
    ``(images, targets)`` batches, as :func:`~detloss.app.data.collate_detection` makes)."""
    was_training = model.training
    model.eval()
    preds: list[dict[str, Tensor]] = []
    targets: list[dict[str, Tensor]] = []
    for images, tgts in loader:
        images = images.to(device)
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            outputs = model(images)
        outputs = {k: v.float() for k, v in outputs.items()}
        preds += [{k: v.cpu() for k, v in p.items()} for p in task.decode(outputs)]
        targets += [dict(t) for t in tgts]
    model.train(was_training)
    return preds, targets


def evaluate(
    model: nn.Module, task: Task, loader: DataLoader, device: torch.device, amp: bool = False
) -> dict[str, float]:
    """The task's metrics of ``model`` on ``loader``."""
    preds, targets = predict_loader(model, task, loader, device, amp)
    return task.metrics(preds, targets)


ImageSource = str | Path | Tensor | Sequence[str | Path | Tensor]


def list_images(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files of ``source``: a folder (its image files, not recursing, in natural
    order: ``img_2`` before ``img_10``), one file, or a list of files and folders.

    Raises :class:`FileNotFoundError` naming a path that does not exist and
    :class:`ValueError` when no image file is found.
    """
    from .data.crowd import IMAGE_SUFFIXES, natural_key

    items = [source] if isinstance(source, str | Path) else list(source)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
            files += sorted((p for p in found if p.is_file()), key=natural_key)
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"images: no such file or folder {str(path)!r}")
    if not files:
        shown = ", ".join(repr(str(i)) for i in items[:3]) + (", ..." if len(items) > 3 else "")
        raise ValueError(
            f"images: no image file ({', '.join(IMAGE_SUFFIXES)}) in {shown or 'an empty list'}"
        )
    return files


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Tensor:
    """``float32[3, H, W]`` in [0, 1] through the data readers' loader: a regular file
    only (no FIFO or device), its pixel budget checked from the header before decoding,
    errors naming the file."""
    path = Path(path)
    from .data._common import load_image

    return load_image(path, f"image {path.name!r}", root=path.parent, max_pixels=max_pixels)


@torch.no_grad()
def predict(
    model: nn.Module,
    task: Task,
    images: ImageSource | DataLoader,
    device: str | torch.device | None = None,
    amp: bool = False,
    *,
    score_threshold: float | None = None,
    batch_size: int = 8,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> list[dict[str, Tensor]] | tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """Detections of a trained model (from :func:`load_checkpoint`) on images.

    Args:
        model, task: as :func:`load_checkpoint` returns them.
        images: an image file, a folder of images (see :func:`list_images`), a list of
            files, an image ``Tensor[3, H, W]`` (RGB in [0, 1]), a batch
            ``Tensor[B, 3, H, W]`` or a list of image tensors. Files are read with
            :func:`read_image` (regular files only, ``max_pixels`` checked first).
            A ``DataLoader`` of ``(images, targets)`` batches returns
            ``(predictions, targets)`` as :func:`predict_loader` does.
        device: where the model runs (default: where its parameters are).
        amp: mixed precision on CUDA.
        score_threshold: keep detections scoring above it (points: probability above it,
            default the checkpoint's ``score_threshold``; boxes: score at least it,
            default every decoded peak with a positive score).
        batch_size: images per forward pass (images of different sizes are zero-padded
            at the right and bottom; detections in the padding are dropped).

    Returns:
        One dict per image, on the CPU, in pixel coordinates of that image: points
        ``{"points": Tensor[n, 2] (x, y), "scores": Tensor[n]}``; boxes ``{"boxes":
        Tensor[n, 4] (x1, y1, x2, y2), "scores": Tensor[n], "labels": Tensor[n]}``
        (labels index the checkpoint's ``categories``).
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if isinstance(images, DataLoader):
        return predict_loader(model, task, images, dev, amp)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if score_threshold is not None and not 0 <= score_threshold < 1:
        raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}")
    tensors: list[Tensor] | None = None
    if isinstance(images, Tensor):
        if images.ndim not in (3, 4) or images.shape[-3] != 3:
            raise ValueError(
                f"images: expected a Tensor[3, H, W] or Tensor[B, 3, H, W], got "
                f"{list(images.shape)}"
            )
        tensors = list(images) if images.ndim == 4 else [images]
    elif (
        isinstance(images, Sequence)
        and not isinstance(images, str)
        and images
        and all(isinstance(i, Tensor) for i in images)
    ):
        tensors = list(images)  # type: ignore[arg-type]
    files = list_images(images) if tensors is None else []  # type: ignore[arg-type]
    count = len(tensors) if tensors is not None else len(files)
    was_training = model.training
    model.eval()
    preds: list[dict[str, Tensor]] = []
    try:
        for start in range(0, count, batch_size):
            if tensors is not None:
                batch = tensors[start : start + batch_size]
            else:
                batch = [read_image(f, max_pixels) for f in files[start : start + batch_size]]
            stacked = pad_images(batch).to(dev)
            with torch.autocast(dev.type, enabled=amp and dev.type == "cuda"):
                outputs = model(stacked)
            outputs = {k: v.float() for k, v in outputs.items()}
            decoded = task.decode(outputs, score_threshold)
            for image, pred in zip(batch, decoded, strict=True):
                pred = {k: v.cpu() for k, v in pred.items()}
                preds.append(_inside(pred, image.shape[-2], image.shape[-1]))
    finally:
        model.train(was_training)
    return preds


def _inside(pred: dict[str, Tensor], height: int, width: int) -> dict[str, Tensor]:
    """Drop the detections that lie in the padding of a smaller image of a batch; boxes
    are clipped to the image."""
    if "points" in pred:
        pts = pred["points"]
        keep = (pts[:, 0] <= width) & (pts[:, 1] <= height)
        return {k: v[keep] for k, v in pred.items()}
    boxes = pred["boxes"]
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    keep = (centre_x <= width) & (centre_y <= height)
    out = {k: v[keep] for k, v in pred.items()}
    b = out["boxes"].clone()
    b[:, 0::2] = b[:, 0::2].clamp(0, width)
    b[:, 1::2] = b[:, 1::2].clamp(0, height)
    # An untrained size head can predict negative sizes: empty boxes, never inverted.
    b[:, 2] = torch.maximum(b[:, 2], b[:, 0])
    b[:, 3] = torch.maximum(b[:, 3], b[:, 1])
    out["boxes"] = b
    return out


def predictions_json(
    preds: Sequence[Mapping[str, Tensor]],
    names: Sequence[str],
    ckpt: Mapping[str, object],
    image_ids: Sequence[int] | None = None,
) -> object:
    """The JSON of ``detloss predict``.

    Boxes: a COCO results list, ``[{"image_id", "category_id", "bbox": [x, y, w, h],
    "score", "file_name"}, ...]`` with the category ids of the training data (COCO's own
    ids; the class index for the other formats) -- what ``COCO.loadRes`` reads. Points:
    ``{"task": "points", "images": [{"file_name", "count", "points": [[x, y], ...],
    "scores": [...]}, ...]}``. ``image_ids`` default to 1, 2, ... in the order of
    ``names``.
    """
    ids = list(image_ids) if image_ids is not None else list(range(1, len(names) + 1))
    if len(ids) != len(names) or len(preds) != len(names):
        raise ValueError(
            f"predictions_json: expected as many predictions and image ids as names "
            f"({len(names)}), got {len(preds)} and {len(ids)}"
        )
    if preds and "points" in preds[0]:
        return {
            "task": "points",
            "images": [
                {
                    "file_name": name,
                    "count": len(p["points"]),
                    "points": [[round(x, 3), round(y, 3)] for x, y in p["points"].tolist()],
                    "scores": [round(v, 5) for v in p["scores"].tolist()],
                }
                for name, p in zip(names, preds, strict=True)
            ],
        }
    category_ids = list(ckpt.get("category_ids") or range(int(ckpt.get("num_classes", 1))))  # type: ignore[call-overload]
    results: list[dict[str, object]] = []
    for name, image_id, p in zip(names, ids, preds, strict=True):
        for (x1, y1, x2, y2), score, label in zip(
            p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category_ids[label],
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(score, 5),
                    "file_name": name,
                }
            )
    return results


# ----------------------------------------------------------------------------- checkpoints


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def save_checkpoint(state: Mapping[str, object], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically.

    The bytes go to a temporary file in the same folder, which is flushed to disk and
    then renamed over ``path``: a crash at any moment leaves either the previous file or
    the new one, never a truncated mixture.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # The rename itself is durable only once the folder's entry is on disk.
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - folders cannot be opened on some systems
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def read_checkpoint(path: str | Path) -> dict:
    """The contents of a :func:`train` checkpoint, read safely.

    ``torch.load(weights_only=True)``: only tensors and plain containers are accepted, so
    loading a received file runs no code. Raises :class:`FileNotFoundError` for a missing
    file and :class:`CheckpointError` (one line naming the file) for a truncated,
    corrupt or refused one, or one that is not a detloss training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {str(path)!r}")
    try:
        with warnings.catch_warnings():
            # The safe unpickler warns about the protocol of foreign pickles before
            # refusing them: the refusal below says it in one line.
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if text.startswith("Weights only load failed"):
            found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported [\w ]+", text)
            detail = ""
            if found is not None:
                detail = f" (it asks for {found.group(1)})" if found.lastindex else f" ({found[0]})"
            raise CheckpointError(
                f"checkpoint {str(path)!r} refused: it holds objects other than tensors "
                f"and plain containers{detail}; detloss reads only checkpoints written by "
                "its trainer"
            ) from None
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt ({_one_line(str(exc))[:200]})"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
        reason = _one_line(str(exc).split(". ")[0]) or type(exc).__name__
        if isinstance(exc, EOFError):
            reason = "the file is empty or cut short"
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt ({reason[:200]})"
        ) from None
    if not isinstance(ckpt, dict) or not {"model", "config", "model_kwargs"} <= set(ckpt):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a detloss training checkpoint")
    return ckpt


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Task, dict]:
    """Rebuild the model and task of a :func:`train` checkpoint -> ``(model, task, ckpt)``.

    The file is read with :func:`read_checkpoint` (``weights_only=True``: no code runs
    while loading); errors are :class:`FileNotFoundError` or :class:`CheckpointError`.
    """
    ckpt = read_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(ckpt["config"])
        task = build_task(cfg, ckpt.get("num_classes", 1))
        model = task.build_model(ckpt["model_kwargs"])
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit its model ({_one_line(str(exc))[:200]})"
        ) from None
    return model.to(device).eval(), task, ckpt


class _Meter:
    """Running means of the loss terms, kept as tensors to avoid a sync per step."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, terms: Mapping[str, Tensor]) -> None:
        for k, v in terms.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1

    def means(self) -> dict[str, float]:
        return {k: float(v) / max(self.count, 1) for k, v in self.sums.items()}


# ----------------------------------------------------------------------------- train


@dataclass
class _Run:
    """Everything a training run holds between epochs."""

    cfg: TrainConfig
    task: Task
    model: nn.Module
    wrapped: nn.Module  # the DDP wrapper, or the model itself
    model_kwargs: dict[str, object]
    num_classes: int
    categories: list[str] | None
    category_ids: list[int]
    data_format: str
    train_loader: DataLoader
    val_loader: DataLoader
    sampler: DistributedSampler | None
    generator: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    finetune: TwoStageFinetune | None
    device: torch.device
    rank: int
    world: int
    out: Path
    amp: bool
    watch: _PeerWatch
    start_epoch: int = 0
    history: list[dict[str, object]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    skipped_steps: int = 0
    writer: object | None = None  # TensorBoard's SummaryWriter (rank 0, --tensorboard)
    plots_off: str = ""  # why pictures are not drawn (matplotlib missing), said once

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class _PeerWatch:
    """Tells which rank stopped answering when a collective times out.

    Under DDP a daemon thread of every rank writes a heartbeat (a counter and the rank's
    epoch and step) to the process group's key-value store twice a second. A stopped or
    dead process stops beating; a rank blocked in a collective keeps beating (the wait
    releases the GIL). The rank that sees the timeout reads the beats twice, a moment
    apart, and names the ranks whose beat did not move. The training loop only updates
    two integers: no store traffic, no synchronisation per step.
    """

    interval = 0.5

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.epoch, self.step = 0, -1
        self.store = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if world > 1:
            try:
                self.store = dist.distributed_c10d._get_default_store()
            except Exception:  # a private helper; without it the ranks go unnamed
                self.store = None

    def mark(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step

    def start(self) -> None:
        if self.store is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._beat, name="detloss-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        count = 0
        while not self._stop.is_set():
            count += 1
            try:
                self.store.set(  # type: ignore[union-attr]
                    f"detloss/beat/{self.rank}", f"{count} {self.epoch} {self.step}"
                )
            except Exception:  # the store's host (rank 0) is gone: nothing left to tell
                return
            self._stop.wait(self.interval)

    def _read(self) -> dict[int, tuple[int, int, int]]:
        beats: dict[int, tuple[int, int, int]] = {}
        for r in range(self.world):
            key = f"detloss/beat/{r}"
            if self.store.check([key]):  # type: ignore[union-attr]
                count, epoch, step = self.store.get(key).decode().split()  # type: ignore[union-attr]
                beats[r] = (int(count), int(epoch), int(step))
        return beats

    def describe(self, timeout: float) -> str:
        """One line naming the ranks that stopped answering, where it can tell."""
        prefix = (
            f"rank {self.rank}: no answer from another rank within the "
            f"{timeout:g} s process-group timeout (--dist-timeout)"
        )
        if self.store is None:
            return f"{prefix}; a rank stalled or died"
        try:
            self.store.set_timeout(datetime.timedelta(seconds=min(timeout, 5.0)))
            before = self._read()
            time.sleep(3 * self.interval)
            after = self._read()
        except Exception:  # rank 0 hosts the store: no answer from it names it
            if self.rank != 0:
                return f"{prefix}; rank 0 stalled or died (its key-value store does not answer)"
            return f"{prefix}; a rank stalled or died"
        silent = [
            r
            for r in range(self.world)
            if r != self.rank and (r not in after or before.get(r) == after.get(r))
        ]
        if not silent:
            return f"{prefix}; a rank stalled or died"
        where = ", ".join(
            f"rank {r} (last seen at epoch {after[r][1] + 1} step {after[r][2] + 1})"
            if r in after
            else f"rank {r} (never seen)"
            for r in silent
        )
        return f"{prefix}; stalled or died: {where}"


def _is_peer_failure(exc: BaseException) -> bool:
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return any(
        word in text
        for word in (
            "timed out",
            "timeout",
            "connection reset",
            "connection closed",
            "pair closure",
        )
    )


def _check_out_folder(cfg: TrainConfig, out: Path) -> bool:
    """A new run never replaces another run's files unless asked to: True when the
    previous run's files are to be removed (``overwrite``). Resuming a checkpoint of
    another folder into ``out`` counts as a new run there."""
    if not out.exists():
        return False
    if cfg.resume == "auto":
        return False
    if cfg.resume is not None and Path(cfg.resume).resolve().parent == out.resolve():
        return False
    if not out.is_dir():
        raise NotADirectoryError(f"out: {str(out)!r} is a file, not a folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return False
    if not cfg.overwrite:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise FileExistsError(
            f"out: {str(out)!r} is not empty ({shown}); continue that run with --resume, "
            "replace it with --overwrite, or choose another --out"
        )
    return True


def _prepare(cfg: TrainConfig) -> _Run:
    rank, world, device = _setup_distributed(cfg.device, cfg.dist_timeout)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed + rank)
    out = Path(cfg.out)
    replace = _check_out_folder(cfg, out)
    train_ds, val_ds, base, fmt = open_training_data(cfg)
    if cfg.tensorboard:
        _tensorboard_writer_class()  # a missing package is reported before any work
    if rank == 0:
        # Only once the data has loaded: a mistyped --data keeps the previous run.
        if replace:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        # Temporary files of a write that was killed half-way.
        for stale in [
            *out.glob(".*.pt.*.tmp"),
            *out.glob(".*.json.*.tmp"),
            *out.glob(".*.csv.*.tmp"),
        ]:
            stale.unlink(missing_ok=True)
    num_classes = base.num_classes if cfg.task == "boxes" else 1
    task = build_task(cfg, num_classes)
    model_kwargs = task.model_kwargs()
    model = task.build_model(model_kwargs).to(device)

    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = (
        DistributedSampler(train_ds, num_replicas=world, rank=rank, seed=cfg.seed)
        if world > 1
        else None
    )
    train_loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collate_detection,
        num_workers=cfg.workers,
        generator=generator,
        # A last batch of one image would break batch norm.
        drop_last=len(train_ds) > cfg.batch_size * world,  # type: ignore[arg-type]
        pin_memory=device.type == "cuda",
    )
    val_loader = DataLoader(
        val_ds, batch_size=cfg.batch_size, collate_fn=collate_detection, num_workers=cfg.workers
    )

    groups = task.param_groups(model)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in groups],
        total_steps=cfg.epochs * max(len(train_loader), 1),
        pct_start=max(cfg.warmup, 1e-3),
        anneal_strategy="cos",
        div_factor=10.0,
        final_div_factor=100.0,
    )
    amp = cfg.amp and device.type == "cuda"
    finetune = (
        TwoStageFinetune(model, optimizer, cfg.freeze_epochs, cfg.finetune_lr_scale)
        if cfg.task == "points" and cfg.freeze_epochs > 0
        else None
    )
    wrapped = model
    if world > 1:
        if device.type == "cuda":
            # Per-rank batches are small; SyncBatchNorm (CUDA only) pools their statistics.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return _Run(
        cfg=cfg,
        task=task,
        model=model,
        wrapped=wrapped,
        model_kwargs=model_kwargs,
        num_classes=num_classes,
        categories=list(base.categories),
        category_ids=list(getattr(base, "category_ids", range(base.num_classes))),
        data_format=fmt,
        train_loader=train_loader,
        val_loader=val_loader,
        sampler=sampler,
        generator=generator,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda", enabled=amp),
        finetune=finetune,
        device=device,
        rank=rank,
        world=world,
        out=out,
        amp=amp,
        watch=_PeerWatch(rank, world),
    )


# ----------------------------------------------------------------------------- state


def _rng_state(run: _Run) -> dict[str, object]:
    """This rank's random states, as tensors and plain values (``weights_only`` loads)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - see seed_everything
    version, internal, gauss_next = random.getstate()
    state: dict[str, object] = {
        "torch": torch.get_rng_state(),
        "loader": run.generator.get_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss_next},
    }
    if run.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(run.device)
    return state


def _set_rng_state(run: _Run, state: Mapping[str, object]) -> None:
    torch.set_rng_state(state["torch"])  # type: ignore[arg-type]
    run.generator.set_state(state["loader"])  # type: ignore[arg-type]
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002 - see seed_everything
        (
            npy["name"],  # type: ignore[index]
            npy["keys"].numpy().astype(np.uint32),  # type: ignore[index]
            npy["pos"],  # type: ignore[index]
            npy["has_gauss"],  # type: ignore[index]
            npy["gauss"],  # type: ignore[index]
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))  # type: ignore[index]
    if run.device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], run.device)  # type: ignore[arg-type]


def _gather_rng(run: _Run) -> list[dict[str, object]] | None:
    """Every rank's random states on rank 0 (a list indexed by rank); None elsewhere."""
    mine = _rng_state(run)
    if run.world == 1:
        return [mine]
    gathered: list[object] | None = [None] * run.world if run.is_main else None
    dist.gather_object(mine, gathered, dst=0)
    return gathered  # type: ignore[return-value]


def _state(run: _Run, epoch: int, rng: list[dict[str, object]]) -> dict[str, object]:
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(run.cfg).items()}
    return {
        "model": run.model.state_dict(),
        "model_kwargs": run.model_kwargs,
        "num_classes": run.num_classes,
        "categories": run.categories,
        "category_ids": run.category_ids,
        "data_format": run.data_format,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "finetune": run.finetune.state_dict() if run.finetune is not None else None,
        "epoch": epoch,
        "steps_per_epoch": len(run.train_loader),
        "history": run.history,
        "best": run.best,
        "best_epoch": run.best_epoch,
        "skipped_steps": run.skipped_steps,
        "config": cfg,
        "world_size": run.world,
        "rng": rng,
    }


_RESUME_KEYS = ("epoch", "optimizer", "scheduler", "scaler", "history", "rng")


def _resume_candidates(run: _Run) -> tuple[Path, list[Path]] | None:
    """The checkpoint asked for, then the others of its folder, newest first."""
    asked = run.cfg.resume
    if asked == "auto":
        primary = run.out / "last.pt"
        if not any((run.out / name).is_file() for name in ("last.pt", "best.pt")):
            return None
    else:
        primary = Path(str(asked))
        if not primary.is_file():
            raise FileNotFoundError(f"resume: no such checkpoint {str(primary)!r}")
    others = {primary.parent / "last.pt", primary.parent / "best.pt"} - {primary}
    fallbacks = sorted(
        (p for p in others if p.is_file()), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )
    return primary, fallbacks


def _restore(run: _Run, log: Callable[[str], None]) -> bool:
    """Load the resume checkpoint into ``run``; False when there is nothing to resume."""
    found = _resume_candidates(run)
    if found is None:
        if run.is_main:
            log(f"[{run.cfg.task}] no checkpoint in {run.out}: starting a new run")
        return False
    primary, fallbacks = found
    problems: list[str] = []
    ckpt: dict | None = None
    path = primary
    for path in [primary, *fallbacks]:
        try:
            candidate = read_checkpoint(path)
        except (CheckpointError, FileNotFoundError) as exc:
            problems.append(str(exc))
            continue
        missing = sorted(set(_RESUME_KEYS) - set(candidate))
        if missing:
            problems.append(f"checkpoint {str(path)!r} cannot be resumed (no {', '.join(missing)})")
            continue
        ckpt = candidate
        break
    if ckpt is None:
        raise CheckpointError("resume: no intact checkpoint (" + "; ".join(problems) + ")")
    if problems and run.is_main:
        print(
            f"warning: resume: {'; '.join(problems)}; using {path} (epoch {ckpt.get('epoch')}) "
            "instead",
            file=sys.stderr,
        )

    made = ckpt["config"]
    if made.get("task") != run.cfg.task:
        raise CheckpointError(
            f"resume: checkpoint {str(path)!r} is a {made.get('task')} model, "
            f"not a {run.cfg.task} one"
        )
    if int(ckpt.get("num_classes", 1)) != run.num_classes:
        raise CheckpointError(
            f"resume: checkpoint {str(path)!r} has {ckpt.get('num_classes')} classes, "
            f"the data has {run.num_classes}"
        )
    done = int(ckpt["epoch"])
    if done > run.cfg.epochs:
        raise CheckpointError(
            f"resume: checkpoint {str(path)!r} has trained {done} epochs already, "
            f"more than epochs={run.cfg.epochs}"
        )
    try:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"resume: checkpoint {str(path)!r} does not fit this model "
            f"({_one_line(str(exc))[:200]})"
        ) from None
    made_for = int(made["epochs"])
    if made_for == run.cfg.epochs:
        run.scheduler.load_state_dict(ckpt["scheduler"])
    else:
        # Extending (or shortening an unfinished run): the one-cycle schedule spans the
        # whole run, so it is recomputed for the new length and continues from the steps
        # already taken.
        steps_done = done * len(run.train_loader)
        run.scheduler.last_epoch = steps_done - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run.scheduler.step()
        if run.is_main:
            log(
                f"[{run.cfg.task}] run of {made_for} epochs continued to {run.cfg.epochs}: "
                "the learning-rate schedule is recomputed for the new length"
            )
    run.scaler.load_state_dict(ckpt["scaler"])
    if run.finetune is not None and ckpt.get("finetune"):
        run.finetune.load_state_dict(ckpt["finetune"])
    run.start_epoch = done
    run.history = list(ckpt["history"])
    run.best = dict(ckpt.get("best", {}))
    run.best_epoch = int(ckpt.get("best_epoch", 0))
    run.skipped_steps = int(ckpt.get("skipped_steps", 0))
    states = ckpt["rng"]
    if isinstance(states, Mapping):  # one state for all ranks (older checkpoints)
        states = [states]
    if len(states) == run.world:
        _set_rng_state(run, states[run.rank])
    else:
        # Another number of processes: the data shards differ anyway, exactness is lost.
        seed_everything(run.cfg.seed + run.rank + 1000 * done)
        if run.is_main:
            print(
                f"warning: resume: {path} was written by {len(states)} process(es), this run "
                f"has {run.world}: the random states are re-seeded, so the result will "
                "differ from an uninterrupted run",
                file=sys.stderr,
            )
    if run.is_main:
        log(f"[{run.cfg.task}] resumed from {path} at epoch {done}")
    return True


# ----------------------------------------------------------------------------- train


def _fmt(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _json_safe(value: object) -> object:
    """Non-finite floats as null (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path: Path, value: object) -> None:
    """Atomically, as the checkpoints: a temporary file renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_json_safe(value), indent=1))
    os.replace(tmp, path)


def _nonfinite_message(
    run: _Run, epoch: int, step: int, loss: Tensor, terms: Mapping[str, Tensor], norm: Tensor | None
) -> str:
    where = f"at epoch {epoch + 1}, step {step + 1} of {len(run.train_loader)}"
    if not bool(torch.isfinite(loss)):
        bad = [k for k, v in terms.items() if not bool(torch.isfinite(v).all())]
        what = f"non-finite loss ({float(loss.detach())}" + (
            f"; terms {', '.join(bad)})" if bad else ")"
        )
    elif norm is not None and not bool(torch.isfinite(norm)):
        what = f"non-finite gradient (norm {float(norm.detach())})"
    else:
        what = "non-finite loss or gradient on another rank"
    kept = f"; {run.out / 'last.pt'} holds epoch {epoch}" if epoch > 0 else ""
    return (
        f"{what} {where}: training stopped before the step was applied{kept} "
        "(--skip-nonfinite skips such steps instead)"
    )


def _train_epoch(run: _Run, epoch: int) -> dict[str, object]:
    """One pass over the training data; returns the epoch's record."""
    cfg, optimizer = run.cfg, run.optimizer
    run.wrapped.train()
    if run.finetune is not None:
        run.finetune.step(epoch)
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    tqdm = None
    if cfg.progress and run.is_main and sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is a demo dependency
            tqdm = None
    steps = len(run.train_loader)
    bar = None
    if tqdm is not None:
        bar = tqdm(
            total=steps,
            desc=f"{cfg.task} {epoch + 1}/{cfg.epochs}",
            leave=False,
            dynamic_ncols=True,
        )
    meter = _Meter()
    step_losses: list[Tensor] = []
    skipped = 0
    seen = 0
    t0 = time.perf_counter()
    for step, (images, targets) in enumerate(run.train_loader):
        run.watch.mark(epoch, step)
        images, targets = _to_device(images, targets, run.device)
        with torch.autocast(run.device.type, enabled=run.amp):
            outputs = run.wrapped(images)
        # The losses run in float32 whatever the autocast dtype of the heads.
        outputs = {k: v.float() for k, v in outputs.items()}
        loss, terms = run.task.loss(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        norm = None
        if cfg.grad_clip > 0:
            run.scaler.unscale_(optimizer)
            norm = nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        # One host synchronisation per step, in the trainer (never inside the losses):
        # a non-finite step must not reach the weights. Under AMP an overflowing gradient
        # is the scaler's business (it skips the step itself), so only the loss counts.
        bad = ~torch.isfinite(loss.detach())
        if norm is not None and not run.amp:
            bad = bad | ~torch.isfinite(norm)
        if run.world > 1:
            # Every rank takes the same decision, or the next collective would hang.
            flag = bad.to(torch.int32).reshape(1)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = flag[0].bool()
        if bool(bad):
            if not cfg.skip_nonfinite:
                raise NonFiniteLossError(_nonfinite_message(run, epoch, step, loss, terms, norm))
            skipped += 1
            optimizer.zero_grad(set_to_none=True)
            if run.scaler.is_enabled() and cfg.grad_clip > 0:
                run.scaler.update()  # closes the unscale_ of this step
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
                run.scheduler.step()  # a skipped step still uses its place in the schedule
            if bar is not None:
                bar.update(1)
            continue
        run.scaler.step(optimizer)
        run.scaler.update()
        run.scheduler.step()
        meter.add({"loss": loss, **terms})
        step_losses.append(loss.detach())
        seen += images.shape[0] * run.world
        if bar is not None:
            bar.update(1)
            # A host synchronisation every few steps only, for the display.
            if step % 5 == 0 or step + 1 == steps:
                shown = {k: f"{v:.4g}" for k, v in meter.means().items()}
                shown["lr"] = f"{optimizer.param_groups[0]['lr']:.2e}"
                shown["img/s"] = f"{seen / (time.perf_counter() - t0):.1f}"
                bar.set_postfix(shown, refresh=False)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    run.skipped_steps += skipped
    record: dict[str, object] = {
        "epoch": epoch + 1,
        "train": meter.means(),
        "step_loss": [float(v) for v in step_losses],
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": seen / max(elapsed, 1e-9),
        "seconds": elapsed,
    }
    if skipped:
        record["skipped_steps"] = skipped
    return record


def _dataset_sizes(run: _Run) -> str:
    cfg = run.cfg
    n_train = len(run.train_loader.dataset)  # type: ignore[arg-type]
    n_val = len(run.val_loader.dataset)  # type: ignore[arg-type]
    classes = f"{run.num_classes} class" + ("es" if run.num_classes != 1 else "")
    procs = f" x {run.world} processes" if run.world > 1 else ""
    if cfg.val_fraction is not None:
        val = f"val {n_val} images ({cfg.val_fraction:g} of {cfg.train_split})"
    else:
        val = f"{cfg.val_split} {n_val} images"
    return (
        f"format {run.data_format}, {cfg.train_split} {n_train} images, {val}, "
        f"{classes}, device {run.device}{procs}, out {run.out}"
    )


def train(
    cfg: TrainConfig,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Train ``cfg.task`` on ``cfg.data``.

    Returns ``{"metrics": last evaluation, "best": best evaluation, "history": per-epoch
    records, "checkpoint": path of last.pt, "model": the trained model, "task": the
    task object (loss, decoding, metrics), "skipped_steps": non-finite steps skipped}``.

    Writes to ``cfg.out`` (rank 0 only): ``last.pt`` every epoch, ``best.pt`` at the best
    main metric (point F1 / box AP50), ``history.json`` and ``metrics.json``. ``log``
    receives a start line, one line per epoch and an end line naming ``best.pt`` (rank 0
    only).

    Raises :class:`FileExistsError` for a new run into a folder that is not empty (see
    ``resume`` / ``overwrite``), :class:`CheckpointError` for an unusable checkpoint,
    :class:`NonFiniteLossError` when a step is not finite (unless ``skip_nonfinite``) and
    :class:`PeerTimeoutError` when another rank stops answering under DDP.
    """
    try:
        run = _prepare(cfg)
    except RuntimeError as exc:
        # Setting up DDP (the rendezvous, the first broadcast) can time out too.
        if dist.is_available() and dist.is_initialized() and _is_peer_failure(exc):
            raise PeerTimeoutError(
                f"rank {dist.get_rank()}: no answer from another rank within the "
                f"{cfg.dist_timeout:g} s process-group timeout (--dist-timeout) while "
                "setting up; a rank stalled or died"
            ) from exc
        raise
    if run.is_main:
        log(f"[{cfg.task}] {_dataset_sizes(run)}")
    if cfg.resume:
        _restore(run, log)
    if run.is_main and cfg.tensorboard:
        run.writer = _tensorboard_writer_class()(log_dir=str(run.out / "tensorboard"))

    main_key = run.task.main_metric
    evaluated = [rec for rec in run.history if "val" in rec]
    metrics: dict[str, float] = dict(evaluated[-1]["val"]) if evaluated else {}  # type: ignore[arg-type]
    if run.start_epoch >= cfg.epochs:
        if run.is_main:
            log(
                f"[{cfg.task}] the run in {run.out} has finished its {cfg.epochs} epochs; "
                "nothing to do (pass a larger --epochs to extend it)"
            )
    run.watch.start()
    try:
        for epoch in range(run.start_epoch, cfg.epochs):
            metrics = _run_epoch(run, epoch, metrics, log)
    except RuntimeError as exc:
        if run.world > 1 and not isinstance(exc, PeerTimeoutError) and _is_peer_failure(exc):
            raise PeerTimeoutError(run.watch.describe(cfg.dist_timeout)) from exc
        raise
    finally:
        run.watch.stop()
        if run.writer is not None:
            run.writer.close()  # type: ignore[attr-defined]

    ran = run.start_epoch < cfg.epochs
    if run.is_main and ran:
        _write_json(run.out / "history.json", run.history)
        _write_json(run.out / "metrics.json", metrics)
    if run.is_main and run.skipped_steps:
        log(f"[{cfg.task}] skipped {run.skipped_steps} non-finite step(s) (--skip-nonfinite)")
    if run.is_main and run.best:
        log(
            f"[{cfg.task}] best: {run.out / 'best.pt'} (epoch {run.best_epoch}, "
            f"{main_key} {_fmt(run.best.get(main_key, float('nan')))})"
        )
    return {
        "metrics": metrics,
        "best": run.best,
        "history": run.history,
        "checkpoint": str(run.out / "last.pt"),
        "model": run.model,
        "task": run.task,
        "skipped_steps": run.skipped_steps,
    }


def _run_epoch(
    run: _Run, epoch: int, metrics: dict[str, float], log: Callable[[str], None]
) -> dict[str, float]:
    """Train one epoch, evaluate (rank 0) when due, save the checkpoints."""
    cfg = run.cfg
    main_key = run.task.main_metric
    record = _train_epoch(run, epoch)
    is_best = False
    last = epoch + 1 == cfg.epochs
    shown = ""
    preds: list[dict[str, Tensor]] = []
    if run.is_main and ((epoch + 1) % cfg.eval_every == 0 or last):
        preds, targets = predict_loader(run.model, run.task, run.val_loader, run.device, run.amp)
        metrics = run.task.metrics(preds, targets)
        record["val"] = metrics
        score = metrics.get(main_key, float("nan"))
        if not run.best or (math.isfinite(score) and score > run.best.get(main_key, -1.0)):
            run.best = dict(metrics)
            run.best_epoch = epoch + 1
            is_best = True
        shown = "  |  " + ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
    if run.is_main:
        train_loss = record["train"].get("loss", float("nan"))  # type: ignore[attr-defined]
        skipped = f"  {record['skipped_steps']} skipped" if "skipped_steps" in record else ""
        log(
            f"[{cfg.task}] epoch {epoch + 1}/{cfg.epochs}  loss {_fmt(train_loss)}  "
            f"{record['images_per_s']:.1f} img/s{skipped}{shown}"
        )
    run.history.append(record)
    # Every rank's random states, taken where an uninterrupted run would continue.
    rng = _gather_rng(run)
    if run.is_main:
        state = _state(run, epoch + 1, rng)  # type: ignore[arg-type]
        save_checkpoint(state, run.out / "last.pt")
        if is_best:
            save_checkpoint(state, run.out / "best.pt")
        _write_metrics_csv(run.out / "metrics.csv", run.history)
        if run.writer is not None:
            _log_tensorboard(run.writer, record)
        if cfg.plots and "val" in record:
            _draw_progress(run, preds if is_best else None)
    if run.world > 1:
        dist.barrier()
    return metrics


# ----------------------------------------------------------------------------- logs


def _flat_record(record: Mapping[str, object]) -> dict[str, object]:
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


def _write_metrics_csv(path: Path, history: Sequence[Mapping[str, object]]) -> None:
    """The whole history, one row per epoch (rewritten atomically: a resumed run gets the
    same file as an uninterrupted one). Missing values (no evaluation that epoch) and
    undefined ones (NaN) are empty cells."""
    import csv
    import io

    rows = [_flat_record(rec) for rec in history]
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, path)


def _tensorboard_writer_class() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(
            "tensorboard: the tensorboard package is not installed (pip install tensorboard), "
            "or run without --tensorboard"
        ) from None
    return SummaryWriter


def _log_tensorboard(writer: object, record: Mapping[str, object]) -> None:
    step = int(record["epoch"])  # type: ignore[call-overload]
    for key, value in _flat_record(record).items():
        if key == "epoch" or not isinstance(value, int | float):
            continue
        group, _, name = key.partition("_")
        tag = f"{group}/{name}" if group in ("train", "val") else key
        writer.add_scalar(tag, float(value), step)  # type: ignore[attr-defined]
    writer.flush()  # type: ignore[attr-defined]


#: Validation images drawn in ``val_predictions.png``.
PLOTTED_VAL_IMAGES = 4


def _draw_progress(run: _Run, preds: list[dict[str, Tensor]] | None) -> None:
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
    from . import plot

    task = run.task
    plot.plot_losses(
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
    title = f"validation, epoch {epoch} ({task.main_metric} {_fmt(score)})"
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
