"""A small, complete trainer for the reference detectors.

Two tasks share one loop:

* ``points``: :class:`~detloss.models.P2PNet` trained with
  :class:`~detloss.losses.points.PointLoss`, decoded by
  :func:`~detloss.postprocess.points.decode_points`, scored by point F1 at a distance
  threshold and counting MAE / RMSE;
* ``boxes``: the CenterNet-style :class:`~detloss.models.CenterNet` trained with
  :class:`~detloss.losses.centernet.CenterNetLoss` on
  :func:`~detloss.heatmap.centernet_targets`, decoded by
  :func:`~detloss.postprocess.centernet.centernet_decode`, scored by COCO box AP.

Data layout under ``data``: one folder per split, ``<split>/images/`` plus
``<split>/points.json`` (points, see :mod:`detloss.data.points`) or
``<split>/instances.json`` (COCO boxes).

The loop: AdamW with a one-cycle learning rate per step, a tqdm bar showing the loss
terms, learning rate and images per second, evaluation after every epoch, ``last.pt``
and ``best.pt`` checkpoints (everything needed to resume: model, optimiser, scheduler,
AMP scaler, RNG states, history), automatic mixed precision on CUDA, and DDP when
launched by ``torchrun`` (``WORLD_SIZE > 1``: gloo on CPU, nccl on CUDA, a
``DistributedSampler`` per rank; rank 0 evaluates and writes).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .data.coco import CocoDetection
from .data.collate import RandomHorizontalFlip, collate_detection
from .data.points import PointDataset
from .metrics import coco_box_ap, count_metrics, point_metrics, voc_box_ap
from .models.centernet import CenterNet
from .models.p2pnet import P2PNet, TwoStageFinetune

__all__ = [
    "BoxTask",
    "PointTask",
    "TrainConfig",
    "build_task",
    "evaluate",
    "load_checkpoint",
    "load_dataset",
    "predict",
    "train",
]

TASKS = ("points", "boxes")
ANNOTATION_FILES = {"points": "points.json", "boxes": "instances.json"}


@dataclass
class TrainConfig:
    """Settings of :func:`train` (the ``detloss train`` options).

    Attributes:
        task: ``"points"`` or ``"boxes"``.
        data: directory holding the ``train_split`` and ``val_split`` folders.
        out: output directory (checkpoints, ``history.json``, ``metrics.json``).
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
        resume: checkpoint to resume from (``"auto"``: ``out/last.pt`` if it exists).
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
    """

    task: str = "points"
    data: str | Path = "data"
    out: str | Path = "runs/train"
    train_split: str = "train"
    val_split: str = "val"
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

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# ----------------------------------------------------------------------------- tasks


class PointTask:
    """P2PNet + PointLoss; metrics ``point_f1@<t>px``, precision, recall, count errors."""

    name = "points"

    def __init__(self, cfg: TrainConfig, num_classes: int = 1) -> None:
        from .losses.points import PointLoss

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

    def decode(self, outputs: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
        from .postprocess.points import decode_points

        return decode_points(
            outputs["pred_points"], outputs["pred_logits"], self.cfg.score_threshold
        )

    def metrics(
        self, preds: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]]
    ) -> dict[str, float]:
        pm = point_metrics(
            [p["points"] for p in preds], [t["points"] for t in targets], self.cfg.point_threshold
        )
        cm = count_metrics([len(p["points"]) for p in preds], [len(t["points"]) for t in targets])
        t = f"{self.cfg.point_threshold:g}px"
        return {
            self.f1_key: pm["f1"],
            f"point_precision@{t}": pm["precision"],
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
        from .losses.centernet import CenterNetLoss

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
        from .heatmap import centernet_targets

        heat = outputs["heatmap"]
        boxes = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        dense = centernet_targets(
            boxes,
            num_classes=self.num_classes,
            output_size=(heat.shape[-2], heat.shape[-1]),
            stride=CenterNet.stride,
        )
        return self.criterion(outputs, dense, return_terms=True)  # type: ignore[return-value]

    def decode(self, outputs: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
        from .postprocess.centernet import centernet_decode

        boxes, scores, labels = centernet_decode(
            outputs["heatmap"],
            outputs["size"],
            outputs["offset"],
            k=self.cfg.max_detections,
            stride=CenterNet.stride,
        )
        # Non-peak cells fill the tail of the top-k with score 0.
        keep = scores > 0
        return [
            {"boxes": b[m], "scores": s[m], "labels": lab[m]}
            for b, s, lab, m in zip(boxes, scores, labels, keep, strict=True)
        ]

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
    transform = RandomHorizontalFlip() if flip else None
    ds: Dataset
    if task == "points":
        ds = PointDataset(root / "images", ann, transform)
    else:
        ds = CocoDetection(root / "images", ann, transform)
    if limit is not None and limit < len(ds):  # type: ignore[arg-type]
        ds = Subset(ds, range(limit))
    return ds


def _base(ds: Dataset) -> Dataset:
    return ds.dataset if isinstance(ds, Subset) else ds


# ----------------------------------------------------------------------------- set-up


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's global generator and torch (user transforms may draw from any)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global state is what transforms use
    torch.manual_seed(seed)


def _setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """``(rank, world size, device)``: an existing process group is used as it is;
    otherwise one is initialised from torchrun's environment when ``WORLD_SIZE > 1``
    (nccl for CUDA, gloo for the CPU)."""
    dev = torch.device(device)
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 0, 1, dev
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
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
def predict(
    model: nn.Module,
    task: Task,
    loader: DataLoader,
    device: torch.device,
    amp: bool = False,
) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """Predictions and targets (on the CPU) of every image of ``loader``."""
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
    preds, targets = predict(model, task, loader, device, amp)
    return task.metrics(preds, targets)


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Task, dict]:
    """Rebuild the model and task of a :func:`train` checkpoint -> ``(model, task, ckpt)``.

    Checkpoints are pickles (they hold optimiser and random-number states): load only
    files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {str(path)!r}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"checkpoint: {str(path)!r} is not a detloss training checkpoint")
    cfg = TrainConfig.from_dict(ckpt["config"])
    task = build_task(cfg, ckpt.get("num_classes", 1))
    model = task.build_model(ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model"])
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
    start_epoch: int = 0
    history: list[dict[str, object]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _prepare(cfg: TrainConfig) -> _Run:
    rank, world, device = _setup_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed + rank)
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    train_ds = load_dataset(
        cfg.task, cfg.data, cfg.train_split, flip=cfg.flip, limit=cfg.max_train_images
    )
    val_ds = load_dataset(cfg.task, cfg.data, cfg.val_split, limit=cfg.max_val_images)
    num_classes = getattr(_base(train_ds), "num_classes", 1)
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
        categories=getattr(_base(train_ds), "categories", None),
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
    )


def _state(run: _Run, epoch: int) -> dict[str, object]:
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(run.cfg).items()}
    return {
        "model": run.model.state_dict(),
        "model_kwargs": run.model_kwargs,
        "num_classes": run.num_classes,
        "categories": run.categories,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "finetune": run.finetune.state_dict() if run.finetune is not None else None,
        "epoch": epoch,
        "history": run.history,
        "best": run.best,
        "config": cfg,
        "rng": {
            "torch": torch.get_rng_state(),
            "loader": run.generator.get_state(),
            "numpy": np.random.get_state(),  # noqa: NPY002 - see seed_everything
            "python": random.getstate(),
        },
    }


def _restore(run: _Run, path: str, log: Callable[[str], None]) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    made_for = int(ckpt["config"]["epochs"])
    if made_for != run.cfg.epochs:
        # The learning-rate schedule spans the whole run, so it cannot be stretched.
        raise ValueError(
            f"resume: the checkpoint {path} was made for {made_for} epochs, "
            f"got epochs={run.cfg.epochs}; resume with the same number of epochs"
        )
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    if run.finetune is not None and ckpt.get("finetune"):
        run.finetune.load_state_dict(ckpt["finetune"])
    run.start_epoch = int(ckpt["epoch"])
    run.history = list(ckpt["history"])
    run.best = dict(ckpt.get("best", {}))
    torch.set_rng_state(ckpt["rng"]["torch"])
    run.generator.set_state(ckpt["rng"]["loader"])
    np.random.set_state(ckpt["rng"]["numpy"])  # noqa: NPY002 - see seed_everything
    random.setstate(ckpt["rng"]["python"])
    if run.is_main:
        log(f"resumed from {path} at epoch {run.start_epoch}")


def _train_epoch(run: _Run, epoch: int) -> dict[str, object]:
    """One pass over the training data; returns the epoch's record."""
    cfg, optimizer = run.cfg, run.optimizer
    run.wrapped.train()
    if run.finetune is not None:
        run.finetune.step(epoch)
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a demo dependency
        tqdm = None
    steps = len(run.train_loader)
    bar = None
    if tqdm is not None and cfg.progress and run.is_main:
        bar = tqdm(
            total=steps,
            desc=f"{cfg.task} {epoch + 1}/{cfg.epochs}",
            leave=False,
            dynamic_ncols=True,
        )
    meter = _Meter()
    step_losses: list[Tensor] = []
    seen = 0
    t0 = time.perf_counter()
    for step, (images, targets) in enumerate(run.train_loader):
        images, targets = _to_device(images, targets, run.device)
        with torch.autocast(run.device.type, enabled=run.amp):
            outputs = run.wrapped(images)
        # The losses run in float32 whatever the autocast dtype of the heads.
        outputs = {k: v.float() for k, v in outputs.items()}
        loss, terms = run.task.loss(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            run.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
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
    return {
        "epoch": epoch + 1,
        "train": meter.means(),
        "step_loss": [float(v) for v in step_losses],
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": seen / max(elapsed, 1e-9),
        "seconds": elapsed,
    }


def train(
    cfg: TrainConfig,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Train ``cfg.task`` on ``cfg.data``.

    Returns ``{"metrics": last evaluation, "best": best evaluation, "history": per-epoch
    records, "checkpoint": path of last.pt, "model": the trained model, "task": the
    task object (loss, decoding, metrics)}``.

    Writes to ``cfg.out`` (rank 0 only): ``last.pt`` every epoch, ``best.pt`` at the best
    main metric (point F1 / box AP50), ``history.json`` and ``metrics.json``. ``log``
    receives one line per evaluated epoch.
    """
    run = _prepare(cfg)
    resume = cfg.resume
    if resume == "auto":
        resume = str(run.out / "last.pt") if (run.out / "last.pt").is_file() else None
    if resume:
        _restore(run, resume, log)

    metrics: dict[str, float] = {}
    main_key = run.task.main_metric
    for epoch in range(run.start_epoch, cfg.epochs):
        record = _train_epoch(run, epoch)
        is_best = False
        last = epoch + 1 == cfg.epochs
        if run.is_main and ((epoch + 1) % cfg.eval_every == 0 or last):
            metrics = evaluate(run.model, run.task, run.val_loader, run.device, run.amp)
            record["val"] = metrics
            score = metrics.get(main_key, float("nan"))
            if not run.best or (math.isfinite(score) and score > run.best.get(main_key, -1.0)):
                run.best = dict(metrics)
                is_best = True
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            train_loss = record["train"]["loss"]  # type: ignore[index]
            log(
                f"[{cfg.task}] epoch {epoch + 1}/{cfg.epochs}  loss {train_loss:.4g}  "
                f"{record['images_per_s']:.1f} img/s  |  {shown}"
            )
        run.history.append(record)
        if run.is_main:
            state = _state(run, epoch + 1)
            torch.save(state, run.out / "last.pt")
            if is_best:
                torch.save(state, run.out / "best.pt")
        if run.world > 1:
            dist.barrier()

    if run.is_main:
        (run.out / "history.json").write_text(json.dumps(run.history, indent=1))
        (run.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return {
        "metrics": metrics,
        "best": run.best,
        "history": run.history,
        "checkpoint": str(run.out / "last.pt"),
        "model": run.model,
        "task": run.task,
    }
