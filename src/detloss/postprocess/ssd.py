"""SSD inference: decode the offsets, score every class, class-aware NMS, keep the best."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._api import renamed
from .._checks import check_finite, should_validate
from ..anchors import check_ssd_inputs, check_variances, decode_boxes
from .nms import batched_nms

__all__ = ["ssd_detect"]


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@renamed(conf_threshold="score_threshold", nms_threshold="iou_threshold")
@torch.no_grad()
def ssd_detect(
    loc: Tensor,
    conf: Tensor,
    priors: Tensor,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.45,
    top_k: int = 200,
    variances: Sequence[float] = (0.1, 0.2),
    *,
    candidates_per_class: int | None = None,
    validate: bool | None = None,
) -> list[dict[str, Tensor]]:
    """Detections of an SSD head, one dict per image.

    Steps, per image: decode ``loc`` against the priors (normalised ``xyxy``); softmax
    over ``conf``; for every class but the background (logit 0), keep the
    ``candidates_per_class`` highest-scoring priors whose probability is
    ``> score_threshold``; NMS per class at ``iou_threshold``; the ``top_k`` best of what
    remains, over all classes. The whole batch goes through one :func:`batched_nms` call
    (groups = image x class); no Python loop over images or classes.

    Args:
        loc: ``Tensor[B, P, 4]`` offsets.
        conf: ``Tensor[B, P, C]`` logits, index 0 = background, ``C >= 2``.
        priors: ``Tensor[P, 4]`` normalised ``cxcywh``.
        score_threshold: minimum class probability (strict), in ``[0, 1)``.
        iou_threshold: IoU above which a lower-scoring box of the same class is dropped.
        top_k: most detections returned per image.
        variances: ``(v_xy, v_wh)`` of the offset encoding.
        candidates_per_class: most candidates per class and image entering NMS; defaults
            to ``top_k`` (the original SSD keeps 200 per class before NMS). Equal scores
            are taken in prior order.
        validate: scan ``loc``, ``conf`` and ``priors`` for NaN and inf first (a
            ValueError naming the argument; one host synchronisation); None (default)
            scans on the CPU only.

    Returns:
        ``B`` dicts with ``"boxes"`` (``[K, 4]`` normalised ``xyxy``, not clipped to the
        image), ``"scores"`` (``[K]``, decreasing) and ``"labels"`` (``int64[K]`` in
        ``0..C-2``, the target convention: label ``l`` is logit ``l + 1``). Computed
        without gradients, in float32 for half inputs.

    Shape:
        - loc: ``[B, P, 4]``; conf: ``[B, P, C]``; priors: ``[P, 4]``.
        - output: ``B`` dicts of ``boxes [K, 4]``, ``scores [K]``, ``labels [K]``.

    Example:
        >>> priors = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])
        >>> conf = torch.tensor([[[0.0, 3.0], [3.0, 0.0]]])  # prior 0: class 0
        >>> out = ssd_detect(torch.zeros(1, 2, 4), conf, priors, score_threshold=0.5)
        >>> out[0]["boxes"], out[0]["labels"]
        (tensor([[0.0000, 0.0000, 0.5000, 0.5000]]), tensor([0]))
    """
    if should_validate(validate, loc):
        check_finite(("loc", loc), ("conf", conf), ("priors", priors))
    check_ssd_inputs(loc, conf, priors)
    batch, num_priors = loc.shape[:2]
    if (
        isinstance(score_threshold, bool)
        or not isinstance(score_threshold, (int, float))
        or not 0 <= score_threshold < 1
    ):
        raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold!r}")
    top_k = _check_positive_int(top_k, "top_k")
    per_class = top_k if candidates_per_class is None else candidates_per_class
    per_class = _check_positive_int(per_class, "candidates_per_class")
    variances = check_variances(variances)
    classes = conf.shape[2] - 1
    device = loc.device
    dtype = torch.float64 if torch.float64 in (loc.dtype, conf.dtype) else torch.float32

    boxes = decode_boxes(loc.to(dtype), priors.to(dtype), variances)  # [B, P, 4]
    scores = conf.to(dtype).softmax(dim=-1)[..., 1:].transpose(1, 2)  # [B, C - 1, P]
    # The `keep` best scores of each (image, class), equal scores taken in prior order:
    # the k-th largest value is the cut-off, and ties at it are admitted by position.
    keep = min(per_class, num_priors)
    cutoff = torch.topk(scores, keep, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    chosen = scores > cutoff
    tied = scores == cutoff
    room = keep - chosen.sum(dim=-1, keepdim=True)
    if bool((tied.sum(dim=-1, keepdim=True) > room).any()):  # more ties than room: rare
        tied &= tied.cumsum(dim=-1) <= room
    chosen |= tied
    chosen &= scores > score_threshold
    image, label, prior = chosen.nonzero(as_tuple=True)
    values = scores[image, label, prior]
    groups = image * classes + label
    kept = batched_nms(boxes[image, prior], values, groups, iou_threshold, validate=False)
    # ``kept`` is by decreasing score; a stable sort by image keeps that order per image.
    image_of, order = torch.sort(image[kept], stable=True)
    kept = kept[order]
    counts = torch.bincount(image_of, minlength=batch)
    rank_in_image = (
        torch.arange(kept.shape[0], device=device) - (counts.cumsum(0) - counts)[image_of]
    )
    kept = kept[rank_in_image < top_k]
    sizes = counts.clamp(max=top_k).tolist()
    out_boxes = boxes[image[kept], prior[kept]].split(sizes)
    out_scores = values[kept].split(sizes)
    out_labels = label[kept].split(sizes)
    return [
        {"boxes": b, "scores": s, "labels": c}
        for b, s, c in zip(out_boxes, out_scores, out_labels, strict=True)
    ]
