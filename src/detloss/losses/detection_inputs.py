"""Reading the inputs of :func:`~detloss.losses.detection_loss`: the model outputs, the
targets in either form, the class weights and the matching, with errors that name the
argument."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .._checks import check_shape, shape_str
from ..match.matching import Matching
from ..match.targets import box_targets

__all__: list[str] = []


def _read_outputs(outputs: object, name: str) -> tuple[Tensor, Tensor]:
    if not isinstance(outputs, Mapping):
        raise TypeError(
            f"{name} must be a dict with 'pred_logits' and 'pred_boxes', "
            f"got {type(outputs).__name__}"
        )
    missing = [k for k in ("pred_logits", "pred_boxes") if k not in outputs]
    if missing:
        raise ValueError(f"{name}: missing keys {missing}; got {sorted(outputs)}")
    logits = check_shape(
        outputs["pred_logits"], f"{name}['pred_logits']", ndim=3, expected="[B, M, C]"
    )
    boxes = check_shape(
        outputs["pred_boxes"], f"{name}['pred_boxes']", ndim=3, last=4, expected="[B, M, 4]"
    )
    if logits.shape[:2] != boxes.shape[:2]:
        raise ValueError(
            f"{name}['pred_boxes']: expected shape [{logits.shape[0]}, {logits.shape[1]}, 4] "
            f"(pred_logits' [B, M]), got {shape_str(boxes.shape)}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"{name}['pred_logits'] must be a floating tensor, got {logits.dtype}")
    return logits, boxes


def _padded_targets(targets: object, batch_size: int, device: torch.device) -> dict[str, Tensor]:
    """``boxes [B, N, 4]``, ``labels [B, N]``, ``mask [B, N]`` from either target form.

    Per-image dicts may carry other keys (``image_id``, ``orig_size`` ...); only the boxes
    and labels are padded, so those need not share the objects' first dimension.
    """
    if isinstance(targets, Sequence) and not isinstance(targets, (str, Tensor)):
        targets = [
            {k: t[k] for k in ("boxes", "labels") if k in t} if isinstance(t, Mapping) else t
            for t in targets
        ]
    padded = box_targets(targets, batch_size, device)  # type: ignore[arg-type]
    mask = padded["mask"]
    if padded["labels"].shape != mask.shape:
        raise ValueError(
            f"targets['labels']: expected shape {shape_str(mask.shape)} ([B, N]), "
            f"got {shape_str(padded['labels'].shape)}"
        )
    # Padded slots may hold anything (NaN boxes, label -1): zero them so that gathers
    # and plan-weighted sums, which multiply them by 0, stay finite.
    return {
        "boxes": torch.where(mask.unsqueeze(-1), padded["boxes"], 0),
        "labels": torch.where(mask, padded["labels"], 0),
        "mask": mask,
    }


def _num_classes(logits: Tensor, background: str) -> int:
    k = logits.shape[-1]
    if background == "none":
        if k < 1:
            raise ValueError(
                f"outputs['pred_logits']: expected at least 1 class logit, got shape "
                f"{shape_str(logits.shape)}"
            )
        return k
    if k < 2:
        raise ValueError(
            f"outputs['pred_logits']: expected C + 1 >= 2 logits (classes and the background, "
            f"background={background!r}), got shape {shape_str(logits.shape)}"
        )
    return k - 1


def _class_weight_vector(
    class_weights: Tensor | Sequence[float] | None, num_classes: int, like: Tensor, validate: bool
) -> Tensor | None:
    if class_weights is None:
        return None
    w = torch.as_tensor(class_weights)
    if w.ndim != 1 or w.shape[0] != num_classes:
        raise ValueError(
            f"class_weights: expected shape [{num_classes}] (one weight per foreground class, "
            f"the background's is no_object_weight), got {shape_str(w.shape)}"
        )
    w = w.to(device=like.device, dtype=like.dtype)
    if validate:
        _check_class_weight_values(w)
    return w


def _check_class_weight_values(w: Tensor) -> None:
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise ValueError(f"class_weights: expected finite weights >= 0, got {w.tolist()}")


def _check_matching(matching: object, b: int, m: int, n: int, name: str) -> Matching:
    if not isinstance(matching, Matching):
        raise TypeError(f"{name} must be a Matching, got {type(matching).__name__}")
    if tuple(matching.pred_to_target.shape) != (b, m):
        raise ValueError(
            f"{name}.pred_to_target: expected shape [{b}, {m}] (the predictions' [B, M]), "
            f"got {shape_str(matching.pred_to_target.shape)}"
        )
    if tuple(matching.target_mask.shape) != (b, n):
        raise ValueError(
            f"{name}.target_mask: expected shape [{b}, {n}] (the padded targets' [B, N]), "
            f"got {shape_str(matching.target_mask.shape)}"
        )
    return matching


def _aux_outputs(outputs: Mapping[str, object]) -> list[Mapping[str, Tensor]]:
    aux = outputs.get("aux_outputs")
    if aux is None:
        return []
    if isinstance(aux, Mapping) or not isinstance(aux, Sequence):
        raise TypeError(f"outputs['aux_outputs'] must be a list of dicts, got {type(aux).__name__}")
    return list(aux)
