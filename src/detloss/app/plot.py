"""Pictures of detections on their images (needs matplotlib).

Every function writes a PNG and returns its path; matplotlib is imported only when one is
called (with its non-interactive ``Agg`` backend), so ``import detloss.app.plot`` is cheap.

* :func:`plot_points`: point predictions against annotated points, each drawn as a hit
  (a prediction matched one-to-one to an annotation within ``threshold`` pixels, the
  matching of :func:`detloss.metrics.point_metrics`), a false positive or a miss.
* :func:`plot_boxes`: boxes, ground truth (solid, labelled below the box) apart from
  detections (dashed, labelled above with their score); detections are true or false
  positives by the COCO rule at ``iou_threshold`` (greedy by score, same class), and
  annotated boxes no detection found are marked as missed.
* :func:`draw_predictions`: one picture per image of detections alone (``detloss
  predict --draw``).

The figures of training runs (loss curves, matchings, the comparison) are in
:mod:`detloss.app.figures`, drawn with the helpers here (:func:`pyplot`,
:func:`save_figure`, :func:`show_image`, :func:`outline_effect`).

Labels are placed so that they do not overlap (each tries a few positions around its
object and is nudged until it is clear of the labels already placed), and every mark has
an outline of the colour opposite to the image's brightness, so it stands out on dark and
light images alike; the colours themselves are chosen per figure away from the
images' mean colours (:func:`palette`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._optional import required_module

__all__ = [
    "COLORS",
    "LabelPlacer",
    "classify_boxes",
    "classify_points",
    "draw_predictions",
    "outline_effect",
    "palette",
    "plot_boxes",
    "plot_points",
    "pyplot",
    "save_figure",
    "show_image",
]

#: The preferred colours of the marks (see :func:`palette` for the choice per figure):
#: hits / true positives, false positives, misses, ground truth, bare predictions.
COLORS = {
    "hit": "#00e676",  # green
    "false_positive": "#ff1744",  # red
    "miss": "#ffea00",  # yellow
    "truth": "#00b0ff",  # light blue
    "prediction": "#ff9100",  # orange (detections without ground truth to judge them)
}


#: Per role, colours to choose from (hex, name), the first preferred: a figure uses the
#: first one far enough from the mean colour of every image it shows.
_CANDIDATES: dict[str, list[tuple[str, str]]] = {
    "hit": [("#00e676", "green"), ("#00e5ff", "cyan"), ("#ffffff", "white")],
    "false_positive": [("#ff1744", "red"), ("#d500f9", "magenta"), ("#2979ff", "blue")],
    "miss": [("#ffea00", "yellow"), ("#ff9100", "orange"), ("#ffffff", "white")],
    "truth": [("#00b0ff", "blue"), ("#00e5ff", "cyan"), ("#ffffff", "white")],
    "prediction": [("#ff9100", "orange"), ("#d500f9", "magenta"), ("#ffffff", "white")],
}
#: Below this RGB distance (colours in [0, 1]) a colour is too close to an image's mean.
_MIN_COLOR_DISTANCE = 0.6


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)])


def palette(images: Sequence[Tensor]) -> dict[str, tuple[str, str]]:
    """``role -> (hex colour, name)`` for pictures of ``images`` (``Tensor[3, H, W]`` in
    [0, 1]): per role the first candidate colour at least some distance from the mean
    colour of every image, no two roles alike (green hits move to cyan on green
    images, and so on)."""
    means = [img.float().clamp(0, 1).mean(dim=(1, 2)).numpy() for img in images]
    chosen: dict[str, tuple[str, str]] = {}
    taken: set[str] = set()
    for role, candidates in _CANDIDATES.items():
        free = [c for c in candidates if c[0] not in taken] or candidates

        def margin(c: tuple[str, str]) -> float:
            rgb = _rgb(c[0])
            return min((float(np.linalg.norm(rgb - m)) for m in means), default=1.0)

        good = [c for c in free if margin(c) >= _MIN_COLOR_DISTANCE]
        pick = good[0] if good else max(free, key=margin)
        chosen[role] = pick
        taken.add(pick[0])
    return chosen


def pyplot():
    """``matplotlib.pyplot`` with the ``Agg`` backend, or an ``ImportError`` saying how to
    install matplotlib."""
    matplotlib = required_module(
        "matplotlib",
        "detloss.app.plot needs matplotlib: pip install 'detloss[demo]' (or matplotlib)",
    )
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- matching


def classify_points(
    pred: Tensor | np.ndarray, target: Tensor | np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(pred_hit bool[N], target_hit bool[M])``: a maximum one-to-one matching of the
    predictions ``[N, 2]`` to the targets ``[M, 2]`` within ``threshold`` pixels (the
    pairs :func:`detloss.metrics.match_points_within` counts). Unmatched predictions
    are false positives, unmatched targets misses."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    t = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    pred_hit = np.zeros(len(p), dtype=bool)
    target_hit = np.zeros(len(t), dtype=bool)
    if len(p) == 0 or len(t) == 0:
        return pred_hit, target_hit
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching
    from scipy.spatial import cKDTree

    pairs = cKDTree(p).query_ball_tree(cKDTree(t), r=threshold)
    rows = np.repeat(np.arange(len(p)), [len(c) for c in pairs])
    cols = np.fromiter((j for c in pairs for j in c), dtype=np.int64, count=len(rows))
    if len(rows) == 0:
        return pred_hit, target_hit
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(p), len(t)))
    match = maximum_bipartite_matching(graph, perm_type="column")  # target per prediction
    pred_hit = match >= 0
    target_hit[match[pred_hit]] = True
    return pred_hit, target_hit


def classify_boxes(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    target_boxes: Tensor,
    target_labels: Tensor,
    iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """``(pred_hit bool[N], target_hit bool[M])`` by COCO's rule: detections in
    decreasing score each take the unmatched annotated box of their class with the
    highest IoU, if it is at least ``iou_threshold``. Boxes are ``[N, 4]`` xyxy."""
    from ..boxes import box_iou

    n, m = len(boxes), len(target_boxes)
    pred_hit = np.zeros(n, dtype=bool)
    target_hit = np.zeros(m, dtype=bool)
    if n == 0 or m == 0:
        return pred_hit, target_hit
    iou = box_iou(boxes.float(), target_boxes.float()).numpy()
    same = labels.reshape(-1, 1).numpy() == target_labels.reshape(1, -1).numpy()
    iou = np.where(same, iou, -1.0)
    for i in np.argsort(-scores.numpy(), kind="stable"):
        candidates = np.where(target_hit, -1.0, iou[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou_threshold:
            pred_hit[i] = True
            target_hit[j] = True
    return pred_hit, target_hit


# ----------------------------------------------------------------------------- drawing


def _brightness(image: Tensor) -> float:
    """Mean luminance in [0, 1] (Rec. 601 weights)."""
    rgb = image.float().clamp(0, 1)
    return float((0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).mean())


def outline_effect(image: Tensor, width: float = 2.5) -> list:
    """A stroke under every mark, dark on light images and light on dark ones."""
    from matplotlib import patheffects

    edge = "black" if _brightness(image) > 0.5 else "white"
    return [patheffects.withStroke(linewidth=width, foreground=edge)]


def show_image(ax: object, image: Tensor) -> None:
    ax.imshow(  # type: ignore[attr-defined]
        image.permute(1, 2, 0).clamp(0, 1).numpy(), extent=(0, image.shape[2], image.shape[1], 0)
    )
    ax.set_xticks([])  # type: ignore[attr-defined]
    ax.set_yticks([])  # type: ignore[attr-defined]
    ax.set_xlim(0, image.shape[2])  # type: ignore[attr-defined]
    ax.set_ylim(image.shape[1], 0)  # type: ignore[attr-defined]


class LabelPlacer:
    """Places the text labels of a figure so that no two overlap.

    Labels are collected with :meth:`add` and placed by :meth:`place` once the layout is
    final (after ``tight_layout``): each tries its candidate anchor points in order, is
    measured with the figure's renderer and kept at the first place clear of the labels
    already placed; when every candidate collides it is moved down, then up, in steps of
    its own height until it is clear.
    """

    def __init__(self, fig: object) -> None:
        self.fig = fig
        self.pending: list[tuple[object, object, list[tuple[float, float, str]]]] = []
        self.placed: list = []  # window extents (display pixels)

    def add(self, ax: object, candidates: Sequence[tuple[float, float, str]], text: str,
            **style: object) -> object:  # fmt: skip
        """``candidates``: ``(x, y, verticalalignment)`` in data coordinates."""
        x, y, va = candidates[0]
        label = ax.text(x, y, text, va=va, clip_on=False, **style)  # type: ignore[attr-defined]
        self.pending.append((ax, label, list(candidates)))
        return label

    def _clear(self, box) -> bool:
        return not any(box.overlaps(other) for other in self.placed)

    def _extent(self, label, renderer):
        return label.get_window_extent(renderer).expanded(1.04, 1.08)

    def place(self) -> list:
        """Place every pending label; returns their final window extents."""
        if not self.pending:
            return list(self.placed)
        self.fig.canvas.draw()  # type: ignore[attr-defined]
        renderer = self.fig.canvas.get_renderer()  # type: ignore[attr-defined]
        for ax, label, candidates in self.pending:
            for x, y, va in candidates:
                label.set_position((x, y))  # type: ignore[attr-defined]
                label.set_va(va)  # type: ignore[attr-defined]
                box = self._extent(label, renderer)
                if self._clear(box):
                    self.placed.append(box)
                    break
            else:
                x, y, va = candidates[0]
                label.set_position((x, y))  # type: ignore[attr-defined]
                label.set_va(va)  # type: ignore[attr-defined]
                box = self._extent(label, renderer)
                origin = ax.transData.transform((x, y))  # type: ignore[attr-defined]
                to_data = ax.transData.inverted()  # type: ignore[attr-defined]
                step = box.height
                done = False
                for k in range(1, 400):
                    for sign in (-1, 1):  # display y grows upwards: down first
                        moved = box.translated(0, sign * k * step)
                        if self._clear(moved):
                            shifted = (origin[0], origin[1] + sign * k * step)
                            label.set_position(tuple(to_data.transform(shifted)))  # type: ignore[attr-defined]
                            self.placed.append(moved)
                            done = True
                            break
                    if done:
                        break
                if not done:  # pragma: no cover - a canvas full of labels
                    self.placed.append(box)
        self.pending = []
        return list(self.placed)


def _samples(samples: object, count: int) -> list[tuple[Tensor, Mapping[str, Tensor] | None]]:
    """The first ``count`` items of a dataset / sequence of ``(image, target)`` pairs or
    of bare images, as ``(image, target or None)``."""
    out: list[tuple[Tensor, Mapping[str, Tensor] | None]] = []
    for i in range(min(count, len(samples))):  # type: ignore[arg-type]
        item = samples[i]  # type: ignore[index]
        if isinstance(item, Tensor):
            out.append((item, None))
        else:
            out.append((item[0], item[1]))
    return out


def _grid(plt, count: int, columns: int):
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.4 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[count:]:
        ax.axis("off")
    return fig, flat[:count]


def _layout(fig, title: str | None) -> None:
    """``tight_layout`` leaving room above the panels for the (multi-line) suptitle."""
    if not title:
        fig.tight_layout()
        return
    fig.suptitle(title, fontsize=10)
    lines = title.count("\n") + 1
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.2 * lines + 0.08) / height))


def _panels(samples, preds, count: int, columns: int, roles: Sequence[str], draw):
    """A grid of the first ``count`` samples, ``draw(ax, placer, image, pred, target,
    colors)`` drawing each panel and returning its title; ``roles`` are the marks a
    judged panel shows (a panel without target shows bare predictions).
    -> ``(plt, fig, placer, shared palette or None, judged)``."""
    plt = pyplot()
    items = _samples(samples, count)
    palettes, shared = _palettes(items)
    fig, axes = _grid(plt, len(items), columns)
    placer = LabelPlacer(fig)
    judged = any(t is not None for _, t in items)
    shown = roles if judged else ("prediction",)
    for ax, (image, target), pred, colors in zip(axes, items, preds, palettes, strict=False):
        show_image(ax, image)
        text = draw(ax, placer, image, pred, target, colors)
        ax.set_title(text + ("" if shared else _color_line(colors, shown)), fontsize=9)
    return plt, fig, placer, (palettes[0] if shared and palettes else None), judged


def _finish(plt, fig, placer: LabelPlacer, title: str | None, legend: str, path) -> Path:
    """Lay out the panels under ``title`` and ``legend``, place the labels, save."""
    _layout(fig, (title + "\n" if title else "") + legend)
    placer.place()
    return save_figure(fig, plt, path)


def save_figure(fig, plt, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (its folder made) at 110 dpi, close it -> ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_ROLE_WORDS = {
    "hit": "hits",
    "false_positive": "false pos.",
    "miss": "missed",
    "truth": "found",
    "prediction": "predicted",
}


def _palettes(items) -> tuple[list[dict[str, tuple[str, str]]], bool]:
    """One palette per image (see :func:`palette`), and whether they are all alike."""
    palettes = [palette([image]) for image, _ in items]
    return palettes, all(p == palettes[0] for p in palettes)


def _name(colors: dict | None, role: str) -> str:
    """``"<colour> "`` for the shared legend; empty when each picture names its own."""
    return f"{colors[role][1]} " if colors is not None else ""


def _color_line(colors: dict, roles: Sequence[str]) -> str:
    return "\n" + ", ".join(f"{_ROLE_WORDS[r]} {colors[r][1]}" for r in roles)


def _draw_points_on(
    ax, image: Tensor, pred: Mapping[str, Tensor], target, threshold: float, colors: dict
) -> str:
    outline = outline_effect(image, 2.0)
    points = pred["points"].detach().cpu().reshape(-1, 2).numpy()
    if target is None:
        ax.scatter(points[:, 0], points[:, 1], s=22, c=colors["prediction"][0], marker="x",
                   linewidths=1.3, path_effects=outline)  # fmt: skip
        return f"predicted {len(points)}"
    truth = target["points"].detach().cpu().reshape(-1, 2).numpy()
    pred_hit, target_hit = classify_points(points, truth, threshold)
    miss = truth[~target_hit]
    ax.scatter(miss[:, 0], miss[:, 1], s=40, facecolors="none", edgecolors=colors["miss"][0],
               linewidths=1.5, path_effects=outline)  # fmt: skip
    hit = points[pred_hit]
    ax.scatter(hit[:, 0], hit[:, 1], s=20, c=colors["hit"][0], marker="o", linewidths=0,
               path_effects=outline)  # fmt: skip
    fp = points[~pred_hit]
    ax.scatter(fp[:, 0], fp[:, 1], s=26, c=colors["false_positive"][0], marker="x",
               linewidths=1.5, path_effects=outline)  # fmt: skip
    return (
        f"true {len(truth)}  predicted {len(points)}\n"
        f"hits {int(pred_hit.sum())}  false pos. {int((~pred_hit).sum())}  "
        f"missed {int((~target_hit).sum())}"
    )


def plot_points(
    samples: object,
    preds: Sequence[Mapping[str, Tensor]],
    path: str | Path,
    count: int = 4,
    *,
    threshold: float = 4.0,
    title: str | None = None,
    columns: int = 4,
) -> Path:
    """Point predictions on the first ``count`` images.

    Args:
        samples: a dataset or sequence of ``(image Tensor[3, H, W], target {"points":
            Tensor[M, 2]})`` pairs, or of bare images (predictions alone).
        preds: per image ``{"points": Tensor[N, 2]}`` (as :func:`detloss.decode_points`).
        path: the PNG to write.
        threshold: distance (pixels) within which a prediction hits an annotation.

    Hits are green dots, false positives red crosses, missed annotations yellow rings.
    """

    def draw(ax, placer, image, pred, target, colors) -> str:
        return _draw_points_on(ax, image, pred, target, threshold, colors)

    roles = ("hit", "false_positive", "miss")
    plt, fig, placer, named, judged = _panels(samples, preds, count, columns, roles, draw)
    legend = (
        f"hits within {threshold:g} px ({_name(named, 'hit')}dots), false positives "
        f"({_name(named, 'false_positive')}x), missed annotations ({_name(named, 'miss')}rings)"
        if judged
        else f"predicted points ({_name(named, 'prediction')}x)"
    )
    return _finish(plt, fig, placer, title, legend, path)


def _draw_boxes_on(
    ax,
    placer: LabelPlacer,
    image: Tensor,
    pred: Mapping[str, Tensor],
    target,
    categories: Sequence[str],
    score_threshold: float,
    iou_threshold: float,
    colors: dict,
) -> str:
    from matplotlib.patches import Rectangle

    outline = outline_effect(image, 3.0)
    keep = pred["scores"] > score_threshold
    boxes = pred["boxes"].detach().cpu()[keep]
    scores = pred["scores"].detach().cpu()[keep]
    labels = pred["labels"].detach().cpu()[keep]
    font = {"fontsize": 7, "color": "black"}

    def name(label: int) -> str:
        return categories[label] if 0 <= label < len(categories) else str(label)

    if target is None:
        pred_hit = np.zeros(len(boxes), dtype=bool)
        kinds = ["prediction"] * len(boxes)
        target_hit = np.zeros(0, dtype=bool)
        truth = torch.zeros(0, 4)
        truth_labels = torch.zeros(0, dtype=torch.int64)
    else:
        truth = target["boxes"].detach().cpu().reshape(-1, 4)
        truth_labels = target["labels"].detach().cpu().reshape(-1)
        pred_hit, target_hit = classify_boxes(
            boxes, scores, labels, truth, truth_labels, iou_threshold
        )
        kinds = ["hit" if h else "false_positive" for h in pred_hit]
    w = image.shape[2]
    # Ground truth first (solid), labelled below the box; missed ones in the miss colour.
    for (x0, y0, x1, y1), label, found in zip(
        truth.tolist(), truth_labels.tolist(), target_hit.tolist(), strict=True
    ):
        color = colors["truth"][0] if found else colors["miss"][0]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color,
                               lw=2.0 if found else 2.4, path_effects=outline))  # fmt: skip
        text = f"GT {name(label)}" + ("" if found else " MISSED")
        placer.add(
            ax,
            [(x0, y1, "top"), (x0, y0, "top"), (x0, y0, "bottom"), (max(x1 - 30, 0), y1, "top")],
            text,
            bbox={"facecolor": color, "alpha": 0.85, "pad": 1, "lw": 0},
            **font,
        )
    for (x0, y0, x1, y1), score, label, kind in zip(
        boxes.tolist(), scores.tolist(), labels.tolist(), kinds, strict=True
    ):
        color = colors[kind][0]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, lw=1.4,
                               ls="--", path_effects=outline))  # fmt: skip
        placer.add(
            ax,
            [(x0, y0, "bottom"), (x0, y0, "top"), (x0, y1, "bottom"), (min(x1, w), y0, "bottom")],
            f"{name(label)} {score:.2f}",
            bbox={"facecolor": color, "alpha": 0.85, "pad": 1, "lw": 0},
            **font,
        )
    if target is None:
        return f"{len(boxes)} detections > {score_threshold:g}"
    return (
        f"true {len(truth)}  detected {len(boxes)}\n"
        f"correct {int(pred_hit.sum())}  false pos. {int((~pred_hit).sum())}  "
        f"missed {int((~target_hit).sum())}"
    )


def plot_boxes(
    samples: object,
    preds: Sequence[Mapping[str, Tensor]],
    categories: Sequence[str],
    path: str | Path,
    count: int = 4,
    score_threshold: float = 0.3,
    *,
    iou_threshold: float = 0.5,
    title: str | None = None,
    columns: int = 4,
) -> Path:
    """Box detections on the first ``count`` images.

    Args:
        samples: a dataset or sequence of ``(image Tensor[3, H, W], target {"boxes":
            Tensor[M, 4] xyxy, "labels": Tensor[M]})`` pairs, or of bare images.
        preds: per image ``{"boxes": Tensor[N, 4] xyxy, "scores": Tensor[N], "labels":
            Tensor[N]}``; those scoring above ``score_threshold`` are drawn.
        categories: class names by label.
        path: the PNG to write.
        iou_threshold: IoU at which a detection finds an annotated box of its class.

    Ground truth: solid blue boxes labelled ``GT <class>`` (below the box); those no
    detection found are yellow and labelled ``MISSED``. Detections: dashed boxes labelled
    ``<class> <score>`` (above the box), green when correct and red when false.
    """

    def draw(ax, placer, image, pred, target, colors) -> str:
        return _draw_boxes_on(
            ax, placer, image, pred, target, categories, score_threshold, iou_threshold, colors
        )

    roles = ("truth", "miss", "hit", "false_positive")
    plt, fig, placer, named, judged = _panels(samples, preds, count, columns, roles, draw)
    legend = (
        f"ground truth (solid, 'GT'; {_name(named, 'truth')}found, {_name(named, 'miss')}"
        f"missed), detections > {score_threshold:g} (dashed; {_name(named, 'hit')}correct at "
        f"IoU {iou_threshold:g}, {_name(named, 'false_positive')}false)"
        if judged
        else f"detections > {score_threshold:g} (dashed {_name(named, 'prediction')})"
    )
    return _finish(plt, fig, placer, title, legend, path)


def draw_predictions(
    images: Sequence[str | Path | Tensor],
    preds: Sequence[Mapping[str, Tensor]],
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    categories: Sequence[str] = (),
    score_threshold: float = 0.3,
) -> list[Path]:
    """One picture per image of its detections (points, or boxes above
    ``score_threshold`` labelled with class and score): ``out_dir/<name>.png``.

    ``images`` are files (read through :func:`detloss.app.training.evaluation.read_image`) or tensors;
    ``names`` default to the files' names (``image_<k>`` for tensors).
    """
    from .training.evaluation import read_image

    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for k, (item, pred) in enumerate(zip(images, preds, strict=True)):
        image = item if isinstance(item, Tensor) else read_image(item)
        if names is not None:
            stem = Path(names[k]).with_suffix("").as_posix().replace("/", "__")
        elif isinstance(item, Tensor):
            stem = f"image_{k}"
        else:
            stem = Path(item).stem
        h, w = image.shape[1], image.shape[2]
        scale = 6.0 / max(h, w)
        fig, ax = plt.subplots(figsize=(max(w * scale, 3.0), max(h * scale, 3.0) + 0.4))
        placer = LabelPlacer(fig)
        colors = palette([image])
        show_image(ax, image)
        if "points" in pred:
            ax.set_title(_draw_points_on(ax, image, pred, None, 0.0, colors), fontsize=9)
        else:
            title = _draw_boxes_on(
                ax, placer, image, pred, None, categories, score_threshold, 0.5, colors
            )
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        placer.place()
        written.append(save_figure(fig, plt, out_dir / f"{stem}.png"))
    return written
