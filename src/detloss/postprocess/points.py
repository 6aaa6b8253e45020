"""Decoding of point-proposal outputs (P2PNet) into per-image point sets."""

from __future__ import annotations

import torch
from torch import Tensor

from .._api import renamed
from .._checks import check_finite, check_shape, shape_str, should_validate

__all__ = ["decode_points", "point_scores"]


def point_scores(logits: Tensor) -> Tensor:
    """Person probabilities ``[B, M]`` from ``logits``: ``Tensor[B, M]`` (sigmoid head) or
    ``Tensor[B, M, 2]`` (softmax head, index 1 = person). Half precision is computed in
    float32."""
    check_shape(logits, "logits", ndim=(2, 3), expected="[B, M] or [B, M, 2]")
    if logits.ndim == 3 and logits.shape[2] != 2:
        raise ValueError(
            f"logits: expected shape [B, M] or [B, M, 2], got {shape_str(logits.shape)}"
        )
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if not x.is_floating_point():
        x = x.float()
    return x.softmax(dim=-1)[..., 1] if x.ndim == 3 else x.sigmoid()


@renamed(threshold="score_threshold")
@torch.no_grad()
def decode_points(
    points: Tensor, logits: Tensor, score_threshold: float = 0.5, *, validate: bool | None = None
) -> list[dict[str, Tensor]]:
    """Keep the proposals whose person probability is strictly greater than
    ``score_threshold``.

    This is P2PNet's counting rule (``p > 0.5``): the count of an image is the length of
    its kept points. No non-maximum suppression: the one-to-one matching of training
    already makes proposals compete for a head.

    Args:
        points: ``Tensor[B, M, 2]`` proposal coordinates (x, y).
        logits: ``Tensor[B, M]`` (sigmoid head) or ``Tensor[B, M, 2]`` (softmax head,
            index 1 = person).
        score_threshold: probability threshold in [0, 1).
        validate: scan the inputs for NaN and inf first (a ValueError naming the argument;
            one host synchronisation); None (default) scans on the CPU only.

    Returns:
        One dict per image, as every decoder: ``{"points": [n_i, 2], "scores": [n_i],
        "labels": int64[n_i]}`` sorted by decreasing score (equal scores in proposal
        order), on the inputs' device; ``labels`` are 0 (one class, person), ``points``
        keeps its dtype, ``scores`` is float32 or float64.

    Shape:
        - points: ``[B, M, 2]``; logits: ``[B, M]`` or ``[B, M, 2]``.
        - output: ``B`` dicts of ``points [n_i, 2]``, ``scores [n_i]``, ``labels [n_i]``.

    Example:
        >>> points = torch.tensor([[[1.0, 1.0], [5.0, 5.0], [9.0, 9.0]]])
        >>> out = decode_points(points, torch.tensor([[0.0, 3.0, 1.0]]))
        >>> out[0]["points"], out[0]["labels"]
        (tensor([[5., 5.],
                [9., 9.]]), tensor([0, 0]))
    """
    if should_validate(validate, points):
        check_finite(("points", points), ("logits", logits))
    check_shape(points, "points", ndim=3, last=2, expected="[B, M, 2]")
    scores = point_scores(logits)
    if tuple(scores.shape) != tuple(points.shape[:2]):
        raise ValueError(
            f"logits: expected shape [{points.shape[0]}, {points.shape[1]}] or "
            f"[{points.shape[0]}, {points.shape[1]}, 2] (points' B and M), "
            f"got {shape_str(logits.shape)}"
        )
    if not 0 <= score_threshold < 1:
        raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}")
    # Rejected proposals sort last (score -1); each image keeps its first `count` rows.
    ranked, order = torch.where(scores > score_threshold, scores, -1.0).sort(
        dim=1, descending=True, stable=True
    )
    keep = ranked >= 0
    counts = keep.sum(dim=1).tolist()  # one host synchronisation for the whole batch
    sorted_points = points.gather(1, order.unsqueeze(-1).expand(-1, -1, 2))
    kept_points = sorted_points[keep].split(counts)
    kept_scores = ranked[keep].split(counts)
    return [
        {
            "points": p,
            "scores": s,
            "labels": torch.zeros(len(s), dtype=torch.int64, device=s.device),
        }
        for p, s in zip(kept_points, kept_scores, strict=True)
    ]
