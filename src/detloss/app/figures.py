"""Figures of training runs (needs matplotlib): loss curves, matchings, and the
comparison of the SSD objectives. Each function writes a PNG and returns nothing or its
path; matplotlib is imported only when one is called.

* :func:`plot_losses`: training loss per step (with a moving average) and a validation
  metric per epoch, one panel per run.
* :func:`plot_matching`: the exact one-to-one matching of a P2PNet on one image.
* :func:`plot_compare`: AP and time per step of each SSD objective, and its loss curve.
* :func:`plot_matchings`: the default boxes each object receives under max-IoU,
  Hungarian and Sinkhorn matchings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from ..boxes import box_convert
from .models.ssd import SSD
from .plot import outline_effect, palette, pyplot, save_figure, show_image
from .training.objectives import match_priors, pad_box_targets

if TYPE_CHECKING:
    from .compare import CompareImages

__all__ = ["plot_compare", "plot_losses", "plot_matching", "plot_matchings"]


def _default_metric(history: Sequence[Mapping[str, object]]) -> str | None:
    for rec in history:
        val = rec.get("val")
        if isinstance(val, Mapping) and val:
            for key in val:
                if key.startswith("point_f1") or key == "box_ap50":
                    return str(key)
            return str(next(iter(val)))
    return None


def plot_losses(
    histories: Sequence[Sequence[Mapping[str, object]]],
    path: str | Path,
    *,
    titles: Sequence[str] | None = None,
    metrics: Sequence[str | None] | None = None,
) -> Path:
    """Training loss per step (log scale, with a moving average over half an epoch) and
    a validation metric per epoch (right axis), one panel per run.

    Args:
        histories: per run, the ``history`` :func:`detloss.app.training.loop.train` returns (records
            with ``"epoch"``, ``"step_loss"`` and, when evaluated, ``"val"``).
        path: the PNG to write.
        titles: one title per panel.
        metrics: the validation metric of each panel (default: the point F1 or box AP50).
    """
    plt = pyplot()
    n = len(histories)
    if n == 0:
        raise ValueError("histories: expected at least one run's history, got none")
    fig, axes = plt.subplots(1, n, figsize=(5.6 * n, 4), squeeze=False)
    for k, (ax, history) in enumerate(zip(axes[0], histories, strict=True)):
        steps = [float(v) for rec in history for v in rec.get("step_loss", [])]  # type: ignore[union-attr]
        per_epoch = max((len(rec.get("step_loss", [])) for rec in history), default=1) or 1  # type: ignore[arg-type]
        first_epoch = int(history[0]["epoch"]) - 1 if history else 0  # type: ignore[call-overload]
        x = [first_epoch + i / per_epoch for i in range(len(steps))]
        ax.plot(x, steps, lw=0.6, color="tab:blue", alpha=0.35, label="training loss (per step)")
        window = max(per_epoch // 2, 1)
        if len(steps) > window > 1:
            smooth = np.convolve(steps, np.ones(window) / window, mode="valid")
            ax.plot(x[window - 1 :], smooth, lw=1.5, color="tab:blue", label="moving average")
        if steps and min(steps) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if titles is not None and k < len(titles):
            ax.set_title(titles[k], fontsize=10)
        metric = metrics[k] if metrics is not None and k < len(metrics) else None
        metric = metric or _default_metric(history)
        lines = ax.get_lines()
        if metric is not None:
            evaluated = [rec for rec in history if isinstance(rec.get("val"), Mapping)]
            epochs = [int(rec["epoch"]) for rec in evaluated]  # type: ignore[call-overload]
            values = [rec["val"].get(metric, float("nan")) for rec in evaluated]  # type: ignore[union-attr]
            values = [float("nan") if v is None else float(v) for v in values]
            twin = ax.twinx()
            twin.plot(epochs, values, "o-", color="tab:orange", label=f"validation {metric}")
            finite = [v for v in values if np.isfinite(v)]
            if finite and 0 <= min(finite) and max(finite) <= 1:
                twin.set_ylim(0, 1)
            twin.set_ylabel(metric)
            lines = lines + twin.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, plt, path)


@torch.no_grad()
def plot_matching(
    model: nn.Module, dataset: object, path: str | Path, tau: float = 0.2, index: int = 0
) -> Path:
    """One P2PNet matching on an image of ``dataset`` (``(image, {"points"})`` items):
    each annotated point joined by a line to the proposal the exact one-to-one matching
    of :func:`detloss.match_points` assigns to it."""
    from ..match.points import match_points

    plt = pyplot()
    image, target = dataset[index]  # type: ignore[index]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = {k: v.float().cpu() for k, v in model(image[None].to(device)).items()}
    model.train(was_training)
    matching = match_points(out["pred_points"], out["pred_logits"], [target["points"]], tau=tau)
    pred_idx, tgt_idx = matching.pairs()[0]
    pts = out["pred_points"][0]
    gt = target["points"]
    outline = outline_effect(image, 2.0)
    colors = palette([image])
    fig, ax = plt.subplots(figsize=(6.5, 6.8))
    show_image(ax, image)
    for p, t in zip(pts[pred_idx].tolist(), gt[tgt_idx].tolist(), strict=True):
        ax.plot([t[0], p[0]], [t[1], p[1]], color=colors["miss"][0], lw=1,
                path_effects=outline)  # fmt: skip
    ax.scatter(gt[:, 0], gt[:, 1], s=30, facecolors="none", edgecolors=colors["truth"][0], lw=1.4,
               label="annotated point", path_effects=outline)  # fmt: skip
    ax.scatter(pts[pred_idx, 0], pts[pred_idx, 1], s=16, c=colors["false_positive"][0], marker="x",
               lw=1.3, label="matched proposal", path_effects=outline)  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"P2PNet matching: {len(tgt_idx)} targets, each joined to its proposal")
    fig.tight_layout()
    return save_figure(fig, plt, path)


def plot_compare(
    results: Mapping[str, Mapping[str, float]],
    curves: Mapping[str, list[float]],
    path: Path,
    goals: Mapping[str, float],
) -> None:
    """AP50 and AP per objective against ``goals`` (``each_box_ap50``,
    ``best_box_ap50``), the objective's time per step, and the loss curves."""
    plt = pyplot()
    names = list(results)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ap50 = [results[n]["box_ap50"] for n in names]
    ap = [results[n]["box_ap"] for n in names]
    ax.bar(x - 0.2, ap50, 0.4, label="AP50")
    ax.bar(x + 0.2, ap, 0.4, label="AP@[.5:.95]")
    ax.axhline(goals["each_box_ap50"], color="gray", ls="--", lw=1, label="AP50 goal")
    ax.axhline(goals["best_box_ap50"], color="gray", ls=":", lw=1, label="best AP50 goal")
    for i, (a, b) in enumerate(zip(ap50, ap, strict=True)):
        ax.text(i - 0.2, a + 0.01, f"{a:.2f}", ha="center", fontsize=8)
        ax.text(i + 0.2, b + 0.01, f"{b:.2f}", ha="center", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.2)
    ax.set_title("held-out test images: box AP (COCO)")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    ax = axes[1]
    ms = [results[n]["objective_ms_per_step"] for n in names]
    ax.bar(x, ms, 0.5, color="tab:green")
    for i, v in enumerate(ms):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylabel("ms per training step")
    ax.set_title("time of the loss (matching included)")
    ax = axes[2]
    for n in names:
        c = np.asarray(curves.get(n, []), dtype=float)
        if c.size:
            w = max(1, c.size // 30)
            smooth = np.convolve(c, np.ones(w) / w, mode="valid")
            ax.plot(smooth / max(smooth[0], 1e-12), label=n)
    ax.set_xlabel("step")
    ax.set_ylabel("loss / first loss")
    ax.set_title("training loss (moving average)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_matchings(
    train: CompareImages,
    path: Path,
    image_size: int,
    index: int | None = None,
    priors: Tensor | None = None,
) -> None:
    """For one training image: the default boxes each object receives under max-IoU,
    Hungarian and Sinkhorn, drawn in the object's colour with the plan's mass as opacity
    (``priors``: the detector's, ``[P, 4]`` normalised ``cxcywh``; default: those of
    ``SSD(1, image_size=image_size)``)."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    if index is None:  # the first image with several objects shows the differences best
        counts = [len(t["labels"]) for t in train.targets]
        index = next((i for i, c in enumerate(counts) if c >= 3), 0)
    image = train.images[index]
    target = train.targets[index]
    if priors is None:
        priors = SSD(1, image_size=image_size).priors
    padded = pad_box_targets([target], torch.device("cpu"))
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 3, figsize=(14, 5))
    titles = {
        "max_iou": "max-IoU (SSD, 0.5, best prior forced)",
        "hungarian": "Hungarian (one prior per object)",
        "sinkhorn": "unbalanced Sinkhorn (plan mass)",
    }
    prior_boxes = box_convert(priors, "cxcywh", "xyxy") * image_size
    gt = target["boxes"] * image_size
    for ax, method in zip(axes, titles, strict=True):
        plan = match_priors(method, priors, padded).dense_plan()[0, :, :-1]  # [P, N]
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), extent=(0, image_size, image_size, 0))
        counts = []
        for j in range(gt.shape[0]):
            colour = colours(j % 10)
            mass = plan[:, j]
            chosen = (mass > 0.02).nonzero().squeeze(1)
            counts.append(f"{float(mass.sum()):.1f}")
            for p in chosen.tolist():
                x0, y0, x1, y1 = prior_boxes[p].tolist()
                alpha = float(mass[p].clamp(0, 1))
                ax.add_patch(
                    Rectangle(
                        (x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=1.2, alpha=alpha
                    )
                )
            x0, y0, x1, y1 = gt[j].tolist()
            ax.add_patch(
                Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=2.5, ls="--")
            )
        ax.set_xlim(0, image_size)
        ax.set_ylim(image_size, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{titles[method]}\nmass per object: {', '.join(counts)}", fontsize=9)
    fig.suptitle(
        "Default boxes each ground truth (dashed) receives; opacity = plan mass", fontsize=11
    )
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)
