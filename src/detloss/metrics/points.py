"""Point localisation (precision, recall, F1 at a distance) and counting errors.
Inputs are described in :mod:`detloss.metrics`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .._api import renamed
from .._checks import check_finite
from ._arrays import array_of, dict_entry

__all__ = ["count_metrics", "match_points_within", "point_metrics"]


def _points(x: object, name: str) -> np.ndarray:
    if isinstance(x, Mapping):
        x = dict_entry(x, "points", name)
        name = f"{name}['points']"
    points = array_of(x, name, (2,))  # type: ignore[arg-type]
    if not np.isfinite(points).all():
        bad = points[~np.isfinite(points)][0]
        raise ValueError(f"{name}: expected finite coordinates, got {bad}")
    return points


@renamed(threshold="distance_threshold")
def match_points_within(
    pred: Tensor | np.ndarray, target: Tensor | np.ndarray, distance_threshold: float
) -> int:
    """The largest number of one-to-one pairs (prediction, target) at distance
    ``<= distance_threshold``: a maximum-cardinality bipartite matching on the within-threshold
    graph (Hopcroft-Karp via ``scipy.sparse.csgraph.maximum_bipartite_matching``).

    Greedy nearest-first matching can find fewer pairs: a prediction that takes the
    target nearest to it may leave another prediction whose only candidate was that
    target without a partner.

    Args:
        pred: ``Tensor[d, 2]`` predicted points.
        target: ``Tensor[n, 2]`` true points.
        distance_threshold: the largest distance of a pair (inclusive), in the points' unit.

    Shape:
        - pred: ``[d, 2]``; target: ``[n, 2]``.
        - output: an int in ``0..min(d, n)``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
        >>> match_points_within(pred, torch.tensor([[2.0, 0.0], [5.0, 0.0]]), distance_threshold=2.0)
        2
    """
    if distance_threshold < 0:
        raise ValueError(f"distance_threshold must be >= 0, got {distance_threshold}")
    p = _points(pred, "pred")
    t = _points(target, "target")
    if len(p) == 0 or len(t) == 0:
        return 0
    from scipy.sparse import csr_matrix  # on first use: scipy loads slowly
    from scipy.sparse.csgraph import maximum_bipartite_matching
    from scipy.spatial import cKDTree

    pairs = cKDTree(p).query_ball_tree(cKDTree(t), r=distance_threshold)
    rows = np.repeat(np.arange(len(p)), [len(c) for c in pairs])
    cols = np.fromiter((j for c in pairs for j in c), dtype=np.int64, count=len(rows))
    if len(rows) == 0:
        return 0
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(p), len(t)))
    match = maximum_bipartite_matching(graph, perm_type="column")
    return int((match >= 0).sum())


@renamed(threshold="distance_threshold")
def point_metrics(
    predictions: Sequence[Tensor | Mapping[str, Tensor]],
    targets: Sequence[Tensor | Mapping[str, Tensor]],
    distance_threshold: float = 4.0,
) -> dict[str, float]:
    """Localisation precision, recall and F1 at a distance threshold (pixels), summed over
    images (micro-averaged), with the one-to-one matching of :func:`match_points_within`.

    Returns ``{"precision", "recall", "f1", "tp", "fp", "fn"}``. The undefined ratios
    ``0 / 0`` are 1: precision with no prediction (no false claim) and recall with no
    target (nothing missed); so both empty gives F1 1, and F1 is 0 as soon as one side
    is empty and the other not.

    Args:
        predictions: ``B`` entries ``Tensor[d_i, 2]`` or ``{"points": [d_i, 2]}``.
        targets: ``B`` entries ``Tensor[n_i, 2]`` or ``{"points": [n_i, 2]}``.
        distance_threshold: the largest distance of a true positive, in pixels (inclusive).

    Shape:
        - predictions: ``B`` point sets ``[d_i, 2]``; targets: ``B`` sets ``[n_i, 2]``.
        - output: a dict of floats.

    Example:
        >>> pred = [torch.tensor([[0.0, 0.0], [10.0, 10.0]])]
        >>> point_metrics(pred, [torch.tensor([[1.0, 1.0]])], distance_threshold=4.0)
        {'precision': 0.5, 'recall': 1.0, 'f1': 0.6666666666666666, 'tp': 1.0, 'fp': 1.0, 'fn': 0.0}
    """
    if len(predictions) != len(targets):
        raise ValueError(
            f"predictions: expected one entry per image ({len(targets)} targets), "
            f"got {len(predictions)}"
        )
    tp = n_pred = n_gt = 0
    for i, (p, t) in enumerate(zip(predictions, targets, strict=True)):
        pa, ta = _points(p, f"predictions[{i}]"), _points(t, f"targets[{i}]")
        tp += match_points_within(pa, ta, distance_threshold)
        n_pred += len(pa)
        n_gt += len(ta)
    precision = tp / n_pred if n_pred else 1.0
    recall = tp / n_gt if n_gt else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": float(tp),
        "fp": float(n_pred - tp),
        "fn": float(n_gt - tp),
    }


def count_metrics(
    pred_counts: Sequence[float] | Tensor | np.ndarray,
    true_counts: Sequence[float] | Tensor | np.ndarray,
) -> dict[str, float]:
    """Counting errors over images: ``mae`` = mean |pred - true|, ``rmse`` = sqrt(mean
    (pred - true)^2) (crowd-counting papers often print this under the name "MSE"),
    ``mean_count`` = mean true count, and ``relative_mae`` = mae / mean_count (NaN when
    ``mean_count`` is 0). Counts may also be lists of point sets, counted by length.

    Args:
        pred_counts: one count per image (numbers, a tensor, or point sets).
        true_counts: the same, as many.

    Shape:
        - pred_counts, true_counts: ``[B]``.
        - output: a dict of floats.

    Example:
        >>> count_metrics([3, 5], [4, 5])
        {'mae': 0.5, 'rmse': 0.7071067811865476, 'mean_count': 4.5, 'relative_mae': 0.1111111111111111}
    """
    p = _counts(pred_counts, "pred_counts")
    t = _counts(true_counts, "true_counts")
    check_finite(("pred_counts", p), ("true_counts", t))
    if len(p) != len(t):
        raise ValueError(
            f"pred_counts: expected {len(t)} counts (one per image, as true_counts), got {len(p)}"
        )
    if len(t) == 0:
        raise ValueError("true_counts: expected at least one image, got none")
    err = p - t
    mean_count = float(t.mean())
    mae = float(np.abs(err).mean())
    return {
        "mae": mae,
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mean_count": mean_count,
        "relative_mae": mae / mean_count if mean_count > 0 else float("nan"),
    }


def _counts(x: object, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        arr = x.detach().to("cpu", torch.float64).reshape(-1).numpy()
    elif isinstance(x, Sequence) and x and not isinstance(x[0], (int, float, np.number)):
        arr = np.array([len(_points(v, f"{name}[{i}]")) for i, v in enumerate(x)], dtype=float)
    else:
        arr = np.asarray(x, dtype=np.float64).reshape(-1)
    return arr
