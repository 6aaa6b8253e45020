"""Checkpoints of :func:`~detloss.app.training.loop.train`: written atomically, read safely.

Checkpoints are written atomically (a temporary file in the same folder, flushed to disk,
then renamed) and read with ``torch.load(weights_only=True)``: they hold only tensors and
plain containers, so a received file cannot run code when it is loaded.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .config import TrainConfig
from .formatting import one_line
from .tasks import Task, build_task

__all__ = ["CheckpointError", "load_checkpoint", "read_checkpoint", "save_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated or corrupt, refused by the safe loader
    (it holds objects other than tensors and plain containers), not a detloss training
    checkpoint, or made for another task. The message is one line naming the file."""


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
            f"checkpoint {str(path)!r} is corrupt ({one_line(str(exc))[:200]})"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
        reason = one_line(str(exc).split(". ")[0]) or type(exc).__name__
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
            f"checkpoint {str(path)!r} does not fit its model ({one_line(str(exc))[:200]})"
        ) from None
    return model.to(device).eval(), task, ckpt
