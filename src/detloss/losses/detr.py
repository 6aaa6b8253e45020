"""``SetCriterion``: a drop-in for the criterion of DETR and Deformable DETR training
scripts, computed by detloss's matchers and :func:`~detloss.losses.detection_loss`.

It keeps DETR's contract, names and numbers: ``criterion(outputs, targets)`` with
``outputs = {"pred_logits": [B, Q, K], "pred_boxes": [B, Q, 4], "aux_outputs": [...]}``
(boxes normalised ``cxcywh``) and targets DETR's list of ``{"labels", "boxes"}`` dicts
returns DETR's dict of unweighted terms; the training script weights them with
``criterion.weight_dict`` as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._checks import check_box_values, shape_str
from ..distributed import is_distributed
from ..match.matching import BACKGROUND, Matching
from .detection import _padded_targets, _read_outputs, detection_loss

__all__ = ["SET_CRITERION_LOSSES", "SetCriterion"]

#: The terms ``SetCriterion`` computes (DETR's ``masks`` term is not supported).
SET_CRITERION_LOSSES = ("labels", "boxes", "cardinality")

DetrTargets = Sequence[Mapping[str, Tensor]]


def _num_boxes(mask: Tensor, distributed: bool) -> Tensor:
    """DETR's ``num_boxes``: the real target boxes of the batch, summed over ranks,
    divided by the world size, then clamped at 1 (DETR clamps after dividing; see
    :mod:`detloss.distributed` for the other order the rest of detloss uses)."""
    count = mask.sum().to(torch.float32)
    if distributed and is_distributed():
        count = count.clone()
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=1.0)


def _as_matching(result: object, mask: Tensor, num_queries: int, name: str) -> Matching:
    """A matcher's answer as a :class:`Matching`: detloss matchers return one, DETR's
    ``HungarianMatcher`` a list of ``(query_idx, target_idx)`` pairs per image."""
    if isinstance(result, Matching):
        return result
    b = mask.shape[0]
    if not isinstance(result, Sequence) or len(result) != b:
        raise TypeError(
            f"{name}: the matcher must return a Matching or one (query_idx, target_idx) pair "
            f"per image ({b}), got {type(result).__name__}"
        )
    pairs = [tuple(torch.as_tensor(i, dtype=torch.int64).cpu() for i in pair) for pair in result]
    counts = torch.tensor([len(query_idx) for query_idx, _ in pairs], dtype=torch.int64)
    image = torch.repeat_interleave(torch.arange(b), counts)
    pred_to_target = torch.full((b, num_queries), BACKGROUND, dtype=torch.int64)
    if pairs:
        query_idx = torch.cat([query_idx for query_idx, _ in pairs])
        target_idx = torch.cat([target_idx for _, target_idx in pairs])
        pred_to_target[image, query_idx] = target_idx
    return Matching(pred_to_target.to(mask.device), mask)


class SetCriterion(nn.Module):
    """DETR's ``SetCriterion`` (and Deformable DETR's, with ``focal_alpha``).

    Args:
        num_classes: ``C``, the number of object classes. With ``focal_alpha=None``
            (DETR) ``pred_logits`` has ``C + 1`` logits, the last one "no object"; with
            ``focal_alpha`` set (Deformable DETR) it has ``C`` sigmoid logits.
        matcher: a matcher called as ``matcher(outputs, targets)``: detloss's
            :class:`~detloss.match.HungarianMatcher` built with ``box_format="cxcywh"``
            (the recipe in ``docs/detection_loss.md``), or DETR's own, which returns
            ``(query_idx, target_idx)`` pairs per image.
        weight_dict: the weight of each term, stored for the training script (which
            computes ``sum(loss_dict[k] * weight_dict[k])``); not applied here.
        eos_coef: the classification weight of the "no object" class (DETR: 0.1). Unused
            with ``focal_alpha``.
        losses: the terms to compute, among ``"labels"`` (``loss_ce`` and, for the last
            layer, ``class_error``), ``"boxes"`` (``loss_bbox``, ``loss_giou``) and
            ``"cardinality"`` (``cardinality_error``, for logging).
        focal_alpha: None for DETR's softmax cross-entropy; a number for Deformable DETR's
            sigmoid focal loss (alpha, gamma 2) summed over queries and classes and divided
            by ``num_boxes``.
        distributed: sum ``num_boxes`` over ranks when a process group is initialised.
        validate: check the targets (labels in range; boxes normalised ``cxcywh`` with
            coordinates <= 1 and sizes >= 0, which catches pixel or ``xyxy`` boxes); one
            device synchronisation; None checks on the CPU only.

    ``forward(outputs, targets)`` returns, as DETR: ``loss_ce`` (softmax cross-entropy
    weighted by ``eos_coef`` on "no object", divided by the weight sum), ``loss_bbox`` (L1
    on the normalised ``cxcywh`` boxes of matched pairs) and ``loss_giou`` (``1 - GIoU``),
    both summed and divided by ``num_boxes`` (the batch's target boxes, all-reduced, divided
    by the world size, clamped at 1); ``class_error`` (100 minus the top-1 accuracy of the
    matched queries, in percent) and ``cardinality_error`` (mean absolute difference of
    the number of non-"no object" predictions and of targets per image). Each entry of
    ``outputs["aux_outputs"]`` is matched again and adds the same terms suffixed ``_0``,
    ``_1``, ... (without ``class_error``); ``outputs["enc_outputs"]`` (two-stage
    Deformable DETR) is matched against the targets with every label set to 0 and adds
    them suffixed ``_enc``. Logging terms carry no gradient.

    Shape:
        - outputs: ``pred_logits [B, Q, C + 1]`` (``[B, Q, C]`` with ``focal_alpha``),
          ``pred_boxes [B, Q, 4]``.
        - targets: ``B`` dicts of ``labels [n_i]``, ``boxes [n_i, 4]``.
        - output: a dict of scalars.

    Example:
        >>> from detloss.match import HungarianMatcher
        >>> criterion = SetCriterion(
        ...     1, HungarianMatcher(box_format="cxcywh"), {"loss_ce": 1, "loss_bbox": 5}
        ... )
        >>> outputs = {"pred_logits": torch.tensor([[[2.0, 0.0], [0.0, 2.0]]]),
        ...            "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])}
        >>> targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
        >>> losses = criterion(outputs, targets)
        >>> sorted(losses), losses["loss_bbox"]
        (['class_error', 'loss_bbox', 'loss_ce', 'loss_giou'], tensor(0.))
    """

    def __init__(
        self,
        num_classes: int,
        matcher: Callable[..., object],
        weight_dict: Mapping[str, float],
        eos_coef: float = 0.1,
        losses: Sequence[str] = ("labels", "boxes"),
        *,
        focal_alpha: float | None = None,
        distributed: bool = True,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if not callable(matcher):
            raise TypeError(f"matcher must be callable, got {type(matcher).__name__}")
        if not isinstance(weight_dict, Mapping):
            raise TypeError(f"weight_dict must be a dict, got {type(weight_dict).__name__}")
        if isinstance(eos_coef, (list, tuple)):
            raise TypeError(
                f"eos_coef must be a number, got {eos_coef!r}: Deformable DETR's order "
                "(num_classes, matcher, weight_dict, losses, focal_alpha) differs; pass "
                "losses=... and focal_alpha=... by name"
            )
        if isinstance(eos_coef, bool) or not isinstance(eos_coef, (int, float)) or eos_coef < 0:
            raise ValueError(f"eos_coef must be a number >= 0, got {eos_coef!r}")
        if isinstance(losses, str):
            raise TypeError(f"losses must be a list of names, got the string {losses!r}")
        for name in losses:
            if name == "masks":
                raise ValueError("losses: 'masks' (segmentation) is not supported by detloss")
            if name not in SET_CRITERION_LOSSES:
                raise ValueError(
                    f"losses: expected names among {SET_CRITERION_LOSSES}, got {name!r}"
                )
        if focal_alpha is not None and not 0 <= focal_alpha <= 1:
            raise ValueError(f"focal_alpha must be in [0, 1] or None, got {focal_alpha}")
        matcher_format = getattr(matcher, "box_format", "cxcywh")
        if matcher_format != "cxcywh":
            raise ValueError(
                f"matcher: DETR's boxes are normalised cxcywh, but the matcher reads them as "
                f"{matcher_format!r}; build it with box_format='cxcywh'"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = float(eos_coef)
        self.losses = list(losses)
        self.focal_alpha = focal_alpha
        self.distributed = distributed
        self.validate = validate

    def _match(
        self,
        layer: Mapping[str, Tensor],
        targets: DetrTargets,
        padded: dict[str, Tensor],
        name: str,
    ) -> Matching:
        # detloss's matchers take the padded targets (DETR's dicts carry image_id, size
        # ... beside the boxes); any other matcher, e.g. DETR's own, gets the list as is.
        own = type(self.matcher).__module__.startswith("detloss.")
        with torch.no_grad():
            result = self.matcher(layer, padded if own else targets)
        return _as_matching(result, padded["mask"], layer["pred_logits"].shape[1], name)

    def _layer(
        self,
        layer: Mapping[str, Tensor],
        padded: dict[str, Tensor],
        matching: Matching,
        num_boxes: Tensor,
        suffix: str,
        log: bool,
        name: str,
    ) -> dict[str, Tensor]:
        logits, _ = _read_outputs(layer, name)
        expected = self.num_classes + (0 if self.focal_alpha is not None else 1)
        if logits.shape[-1] != expected:
            raise ValueError(
                f"{name}['pred_logits']: expected {expected} logits per query (num_classes "
                f"= {self.num_classes}"
                + (")" if self.focal_alpha is not None else " and the no-object class)")
                + f", got shape {shape_str(logits.shape)}"
            )
        out: dict[str, Tensor] = {}
        want_labels, want_boxes = "labels" in self.losses, "boxes" in self.losses
        if want_labels or want_boxes:
            focal = self.focal_alpha is not None
            _, terms = detection_loss(
                layer,
                padded,
                matching,
                cls_loss="focal" if focal else "ce",
                loc_losses={"l1": 1.0, "giou": 1.0} if want_boxes else {},
                background="none" if focal else "last",
                no_object_weight=1.0 if focal else self.eos_coef,
                reduction="none",  # per-image sums, normalised below as DETR does
                box_format="cxcywh",
                distributed=False,
                focal_alpha=self.focal_alpha,
                return_terms=True,
                validate=self.validate,
            )
            positive = matching.pred_to_target >= 0
            if want_labels:
                if focal:
                    loss_ce = terms["cls"].sum() / num_boxes
                else:
                    # torch's weighted cross-entropy: divided by the summed class weights.
                    matched = positive.sum().to(terms["cls"].dtype)
                    unmatched = (matching.pred_to_target == BACKGROUND).sum().to(matched.dtype)
                    loss_ce = terms["cls"].sum() / (matched + self.eos_coef * unmatched)
                out["loss_ce"] = loss_ce
                if log:
                    out["class_error"] = self._class_error(logits, padded, matching)
            if want_boxes:
                out["loss_bbox"] = terms["l1"].sum() / num_boxes
                out["loss_giou"] = terms["giou"].sum() / num_boxes
        if "cardinality" in self.losses:
            out["cardinality_error"] = self._cardinality_error(logits, padded["mask"])
        return {key + suffix: value for key, value in out.items()}

    @torch.no_grad()
    def _class_error(self, logits: Tensor, padded: dict[str, Tensor], matching: Matching) -> Tensor:
        """100 - top-1 accuracy (percent) of the matched queries; 100 with none matched."""
        positive = matching.pred_to_target >= 0
        labels = padded["labels"]
        if labels.shape[1] == 0:  # no target in the batch: keep the gather valid
            labels = labels.new_zeros((labels.shape[0], 1))
        target_labels = labels.gather(1, matching.pred_to_target.clamp(min=0))
        correct = ((logits.argmax(-1) == target_labels) & positive).sum().to(logits.dtype)
        total = positive.sum().to(logits.dtype)
        accuracy = correct * (100.0 / total.clamp(min=1))  # DETR: correct * (100 / total)
        return torch.where(total > 0, 100.0 - accuracy, 100.0)

    @torch.no_grad()
    def _cardinality_error(self, logits: Tensor, mask: Tensor) -> Tensor:
        """Mean over images of |predicted objects - target objects|; a query counts as an
        object when its top logit is not the last one (DETR's rule, kept for Deformable
        DETR too)."""
        predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
        return (predicted - mask.sum(1)).abs().to(torch.float32).mean()

    def forward(self, outputs: Mapping[str, object], targets: DetrTargets) -> dict[str, Tensor]:
        """DETR's loss dict for ``outputs`` against ``targets`` (see the class)."""
        if not isinstance(outputs, Mapping):
            raise TypeError(
                f"outputs must be a dict with 'pred_logits' and 'pred_boxes', got "
                f"{type(outputs).__name__}"
            )
        main = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "enc_outputs")}
        logits, _ = _read_outputs(main, "outputs")
        if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
            raise TypeError(
                f"targets must be a list of {{'labels', 'boxes'}} dicts (DETR's form), got "
                f"{type(targets).__name__}"
            )
        padded = _padded_targets(targets, logits.shape[0], logits.device)
        validate = logits.device.type == "cpu" if self.validate is None else self.validate
        if validate:
            check_box_values(
                padded["boxes"], "targets['boxes']", "cxcywh", padded["mask"], normalized=True
            )
        num_boxes = _num_boxes(padded["mask"], self.distributed).to(logits.device)
        matching = self._match(main, targets, padded, "outputs")
        losses = self._layer(main, padded, matching, num_boxes, "", True, "outputs")
        aux = outputs.get("aux_outputs") or []
        for i, layer in enumerate(aux):  # type: ignore[arg-type]
            name = f"outputs['aux_outputs'][{i}]"
            layer_matching = self._match(layer, targets, padded, name)
            losses.update(
                self._layer(layer, padded, layer_matching, num_boxes, f"_{i}", False, name)
            )
        encoder = outputs.get("enc_outputs")
        if encoder is not None:
            # Two-stage Deformable DETR: the encoder's proposals learn objectness only, so
            # every target counts as class 0.
            binary = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            binary_padded = {**padded, "labels": torch.zeros_like(padded["labels"])}
            name = "outputs['enc_outputs']"
            enc_matching = self._match(encoder, binary, binary_padded, name)  # type: ignore[arg-type]
            losses.update(
                self._layer(encoder, binary_padded, enc_matching, num_boxes, "_enc", False, name)  # type: ignore[arg-type]
            )
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
            f"focal_alpha={self.focal_alpha}"
        )
