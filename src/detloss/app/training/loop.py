"""The training loop of :func:`train`.

AdamW with a one-cycle learning rate per step, a tqdm bar showing the loss terms,
learning rate and images per second, evaluation after every ``eval_every`` epochs,
``last.pt`` and ``best.pt`` checkpoints, automatic mixed precision on CUDA, and DDP when
launched by ``torchrun`` (``WORLD_SIZE > 1``: gloo on CPU, nccl on CUDA, a
``DistributedSampler`` per rank; rank 0 evaluates and writes).

A step whose loss or gradient is not finite never reaches the weights: it stops the run
with :class:`NonFiniteLossError`, or is skipped and counted (``skip_nonfinite``).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .checkpoints import save_checkpoint
from .config import TrainConfig
from .ddp import PeerTimeoutError, is_peer_failure
from .evaluation import predict_loader
from .formatting import format_value, write_json
from .logs import draw_progress, log_tensorboard, tensorboard_writer_class, write_metrics_csv
from .resume import checkpoint_state, gather_rng_states, restore_run
from .run import TrainingRun, prepare_run

__all__ = ["NonFiniteLossError", "train", "train_epoch"]


class NonFiniteLossError(FloatingPointError):
    """A training step produced a non-finite loss or gradient; raised before the optimiser
    applies it, so no saved checkpoint holds a non-finite weight."""


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


def _to_device(
    images: Tensor, targets: Sequence[Mapping[str, Tensor]], device: torch.device
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    non_blocking = device.type == "cuda"
    return images.to(device, non_blocking=non_blocking), [
        {k: v.to(device, non_blocking=non_blocking) for k, v in t.items()} for t in targets
    ]


def _nonfinite_message(
    run: TrainingRun,
    epoch: int,
    step: int,
    loss: Tensor,
    terms: Mapping[str, Tensor],
    norm: Tensor | None,
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


def train_epoch(run: TrainingRun, epoch: int) -> dict[str, object]:
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


def _dataset_sizes(run: TrainingRun) -> str:
    cfg = run.cfg
    n_train = len(run.train_loader.dataset)  # type: ignore[arg-type]
    n_val = len(run.val_loader.dataset)  # type: ignore[arg-type]
    classes = f"{run.num_classes} class" + ("es" if run.num_classes != 1 else "")
    procs = f" x {run.world} processes" if run.world > 1 else ""
    if cfg.val_fraction is not None:
        val = f"val {n_val} images ({cfg.val_fraction:g} of {cfg.train_split})"
    else:
        val = f"{cfg.val_split} {n_val} images"
    detector = ""
    if cfg.task == "boxes" and cfg.detector != "centernet":
        detector = (
            f"{cfg.detector} detector ({cfg.objective or 'multibox'} objective, "
            f"{cfg.image_size} px input), "
        )
    return (
        f"{detector}format {run.data_format}, {cfg.train_split} {n_train} images, {val}, "
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
        run = prepare_run(cfg)
    except RuntimeError as exc:
        # Setting up DDP (the rendezvous, the first broadcast) can time out too.
        if dist.is_available() and dist.is_initialized() and is_peer_failure(exc):
            raise PeerTimeoutError(
                f"rank {dist.get_rank()}: no answer from another rank within the "
                f"{cfg.dist_timeout:g} s process-group timeout (--dist-timeout) while "
                "setting up; a rank stalled or died"
            ) from exc
        raise
    if run.is_main:
        log(f"[{cfg.task}] {_dataset_sizes(run)}")
    if cfg.resume:
        restore_run(run, log)
    if run.is_main and cfg.tensorboard:
        run.writer = tensorboard_writer_class()(log_dir=str(run.out / "tensorboard"))

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
        if run.world > 1 and not isinstance(exc, PeerTimeoutError) and is_peer_failure(exc):
            raise PeerTimeoutError(run.watch.describe(cfg.dist_timeout)) from exc
        raise
    finally:
        run.watch.stop()
        if run.writer is not None:
            run.writer.close()  # type: ignore[attr-defined]

    ran = run.start_epoch < cfg.epochs
    if run.is_main and ran:
        write_json(run.out / "history.json", run.history)
        write_json(run.out / "metrics.json", metrics)
    if run.is_main and run.skipped_steps:
        log(f"[{cfg.task}] skipped {run.skipped_steps} non-finite step(s) (--skip-nonfinite)")
    if run.is_main and run.best:
        log(
            f"[{cfg.task}] best: {run.out / 'best.pt'} (epoch {run.best_epoch}, "
            f"{main_key} {format_value(run.best.get(main_key, float('nan')))})"
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
    run: TrainingRun, epoch: int, metrics: dict[str, float], log: Callable[[str], None]
) -> dict[str, float]:
    """Train one epoch, evaluate (rank 0) when due, save the checkpoints."""
    cfg = run.cfg
    main_key = run.task.main_metric
    record = train_epoch(run, epoch)
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
        shown = "  |  " + ", ".join(f"{k} {format_value(v)}" for k, v in metrics.items())
    if run.is_main:
        train_loss = record["train"].get("loss", float("nan"))  # type: ignore[attr-defined]
        skipped = f"  {record['skipped_steps']} skipped" if "skipped_steps" in record else ""
        log(
            f"[{cfg.task}] epoch {epoch + 1}/{cfg.epochs}  loss {format_value(train_loss)}  "
            f"{record['images_per_s']:.1f} img/s{skipped}{shown}"
        )
    run.history.append(record)
    # Every rank's random states, taken where an uninterrupted run would continue.
    rng = gather_rng_states(run)
    if run.is_main:
        state = checkpoint_state(run, epoch + 1, rng)  # type: ignore[arg-type]
        save_checkpoint(state, run.out / "last.pt")
        if is_best:
            save_checkpoint(state, run.out / "best.pt")
        write_metrics_csv(run.out / "metrics.csv", run.history)
        if run.writer is not None:
            log_tensorboard(run.writer, record)
        if cfg.plots and "val" in record:
            draw_progress(run, preds if is_best else None)
    if run.world > 1:
        dist.barrier()
    return metrics
