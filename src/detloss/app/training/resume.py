"""What a checkpoint holds to resume a run exactly, and the resuming itself.

A checkpoint holds the model, optimiser, scheduler, AMP scaler, history and every rank's
random states (Python, numpy, torch, CUDA and the loader's generator), so that a resumed
run continues as an uninterrupted one would. An unreadable checkpoint is skipped, with a
warning, for the newest intact one beside it.
"""

from __future__ import annotations

import random
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .checkpoints import CheckpointError, read_checkpoint
from .formatting import one_line
from .run import TrainingRun, seed_everything

__all__ = ["checkpoint_state", "gather_rng_states", "restore_run"]


def _rng_state(run: TrainingRun) -> dict[str, object]:
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


def _set_rng_state(run: TrainingRun, state: Mapping[str, object]) -> None:
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


def gather_rng_states(run: TrainingRun) -> list[dict[str, object]] | None:
    """Every rank's random states on rank 0 (a list indexed by rank); None elsewhere."""
    mine = _rng_state(run)
    if run.world == 1:
        return [mine]
    gathered: list[object] | None = [None] * run.world if run.is_main else None
    dist.gather_object(mine, gathered, dst=0)
    return gathered  # type: ignore[return-value]


def checkpoint_state(
    run: TrainingRun, epoch: int, rng: list[dict[str, object]]
) -> dict[str, object]:
    """What ``last.pt`` / ``best.pt`` hold after ``epoch`` epochs: tensors and plain
    containers only (``rng``: every rank's random states, from :func:`gather_rng_states`)."""
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


def _resume_candidates(run: TrainingRun) -> tuple[Path, list[Path]] | None:
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


def restore_run(run: TrainingRun, log: Callable[[str], None]) -> bool:
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
    made_with = (made.get("detector", "centernet"), made.get("objective"))
    if run.cfg.task == "boxes" and made_with != (run.cfg.detector, run.cfg.objective):
        raise CheckpointError(
            f"resume: checkpoint {str(path)!r} was trained with detector {made_with[0]}, "
            f"objective {made_with[1]}; this run asks for detector {run.cfg.detector}, "
            f"objective {run.cfg.objective}"
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
            f"resume: checkpoint {str(path)!r} does not fit this model ({one_line(str(exc))[:200]})"
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
