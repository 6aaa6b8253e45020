"""A training run's state (:class:`TrainingRun`) and its preparation: the process group,
seeds, output folder, data loaders, model, optimiser, one-cycle schedule and AMP scaler."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..data.collate import collate_detection
from ..models.p2pnet import TwoStageFinetune
from .config import RUN_FILES, TrainConfig
from .data import open_training_data, with_input_size
from .ddp import PeerWatch, setup_distributed
from .logs import tensorboard_writer_class
from .tasks import Task, build_task

__all__ = ["TrainingRun", "prepare_run", "seed_everything"]


@dataclass
class TrainingRun:
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
    watch: PeerWatch
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


def prepare_run(cfg: TrainConfig) -> TrainingRun:
    """Set up everything ``cfg`` asks for, before the first epoch (and before resuming)."""
    rank, world, device = setup_distributed(cfg.device, cfg.dist_timeout)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed + rank)
    out = Path(cfg.out)
    replace = _check_out_folder(cfg, out)
    train_ds, val_ds, base, fmt = open_training_data(cfg)
    if cfg.tensorboard:
        tensorboard_writer_class()  # a missing package is reported before any work
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
    train_ds = with_input_size(train_ds, task.input_size)
    val_ds = with_input_size(val_ds, task.input_size)
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
    return TrainingRun(
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
        watch=PeerWatch(rank, world),
    )


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's global generator and torch (user transforms may draw from any)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global state is what transforms use
    torch.manual_seed(seed)
