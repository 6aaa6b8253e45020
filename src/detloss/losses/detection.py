"""The generic matched detection loss (DETR's set criterion, uotod's DetectionLoss).

A matching of ``M`` predictions to ``N`` targets per image weights two kinds of terms:

* classification, over every prediction that is not ignored: a matched prediction is
  trained towards its target's class, an unmatched one towards the background (the
  background logit, or all-zero sigmoid targets with ``background="none"``);
* localisation, over the matched pairs only: each named box loss between the predicted
  box and its target box.

A soft transport plan ``[B, M, N + 1]`` weights the same terms by its entries, so a hard
matching and its 0/1 plan give the same value. See ``docs/detection_loss.md`` for the
normalisation rules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import (
    check_box_values,
    check_choice,
    check_finite,
    compute_dtype,
    named_entries,
    shape_str,
    should_validate,
)
from .._signatures import bind_options, constructor_signature, options_signature
from ..boxes import BOX_FORMATS
from ..distributed import normalizer, world_size
from ..match.matching import Matching
from .detection_inputs import (
    _aux_outputs,
    _check_class_weight_values,
    _check_matching,
    _class_weight_vector,
    _num_classes,
    _padded_targets,
    _read_outputs,
)
from .detection_options import (
    _FIELDS,
    CLS_LOSSES,
    DEFAULT_LOC_LOSSES,
    LOC_LOSSES,
    ClassLoss,
    DetectionOptions,
)
from .detection_terms import _hard_sums, _soft_sums

__all__ = [
    "CLS_LOSSES",
    "DEFAULT_LOC_LOSSES",
    "LOC_LOSSES",
    "DetectionLoss",
    "DetectionOptions",
    "detection_loss",
]

# Guards a classification normaliser that is exactly zero (every prediction ignored or of
# weight zero, so the numerator is zero too) without changing any positive value.
_TINY = torch.finfo(torch.float32).tiny


def _validate(
    padded: dict[str, Tensor], matching: Matching, num_classes: int, box_format: str
) -> None:
    labels, mask = padded["labels"], padded["mask"]
    # Inverted boxes are data the losses take (finite values); a warning says they are
    # probably boxes of another format.
    check_box_values(padded["boxes"], "targets['boxes']", box_format, mask, inverted="warn")
    bad = mask & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(
            f"targets['labels']: expected class indices in [0, {num_classes - 1}] "
            f"(C = {num_classes} foreground classes), got {labels[bad].tolist()}"
        )
    plan = matching.plan
    if plan is not None and not bool(((plan >= 0) & torch.isfinite(plan)).all()):
        raise ValueError("matching.plan: expected finite entries >= 0, got negative or non-finite")


def _layer_terms(
    outputs: Mapping[str, Tensor],
    padded: dict[str, Tensor],
    matching: Matching,
    class_weights: Tensor | Sequence[float] | None,
    opts: DetectionOptions,
    validate: bool | None,
    name: str,
    suffix: str,
) -> dict[str, Tensor]:
    logits, pred_boxes = _read_outputs(outputs, name)
    b, m, _ = logits.shape
    num_classes = _num_classes(logits, opts.background)
    _check_matching(matching, b, m, padded["mask"].shape[1], "matching" + suffix)
    validate = should_validate(validate, logits)
    if validate:
        _validate(padded, matching, num_classes, opts.box_format)
    dtype = compute_dtype(logits, pred_boxes)
    x = logits.to(dtype)
    weights = _class_weight_vector(class_weights, num_classes, x, validate)
    pred_boxes = pred_boxes.to(dtype)
    if matching.plan is None:
        sums = _hard_sums(x, pred_boxes, padded, matching, num_classes, weights, opts)
    else:
        sums = _soft_sums(x, pred_boxes, padded, matching.plan, num_classes, weights, opts)

    terms: dict[str, Tensor] = {}
    if opts.reduction == "none":
        terms["cls" + suffix] = opts.cls_weight * sums.cls
        for key, w in opts.loc_losses.items():
            terms[key + suffix] = w * sums.loc[key]
        return terms
    cls, loc = sums.cls.sum(), {k: v.sum() for k, v in sums.loc.items()}
    if opts.reduction == "mean":
        # One all-reduce for both counts; the clamps follow the normalisation rules.
        loc_count = (
            sums.matched.sum()
            if opts.loc_normalizer == "matched"
            else padded["mask"].sum().to(sums.matched.dtype)
        )
        norms = normalizer(
            torch.stack((sums.cls_norm.sum(), loc_count)), opts.distributed, minimum=0.0
        ).to(dtype)
        counts_only_positives = opts.background == "none" or opts.hard_negative_ratio is not None
        # norms are global counts / W: clamping them at minimum / W clamps the global
        # counts at minimum, which keeps the ranks' mean equal to the whole-batch loss.
        world = world_size() if opts.distributed else 1
        cls_min = 1.0 if counts_only_positives else _TINY
        cls = cls / norms[0].clamp(min=cls_min / world)
        loc = {k: v / norms[1].clamp(min=1.0 / world) for k, v in loc.items()}
    terms["cls" + suffix] = opts.cls_weight * cls
    for key, w in opts.loc_losses.items():
        terms[key + suffix] = w * loc[key]
    return terms


def _check_finite_inputs(
    outputs: Mapping[str, Tensor],
    padded: dict[str, Tensor],
    with_aux: bool,
    anchors: Tensor | None = None,
) -> None:
    """One scan for NaN / inf of the predictions (and those of ``outputs["aux_outputs"]``
    when ``with_aux``), the real target boxes and the ``anchors``."""
    keys = ("pred_logits", "pred_boxes")
    layers = [(outputs, "outputs")]
    if with_aux:
        layers += [(a, f"outputs['aux_outputs'][{i}]") for i, a in enumerate(_aux_outputs(outputs))]
    check_finite(
        *(e for layer, name in layers for e in named_entries(layer, keys, name)),
        ("targets['boxes']", padded["boxes"], padded["mask"]),
        ("anchors", anchors),
    )


def detection_loss(
    outputs: Mapping[str, Tensor],
    targets: Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor],
    matching: Matching,
    *,
    cls_loss: ClassLoss = "ce",
    loc_losses: Mapping[str, float] | None = None,
    background: str = "last",
    no_object_weight: float = 0.1,
    class_weights: Tensor | Sequence[float] | None = None,
    hard_negative_ratio: float | None = None,
    reduction: str = "mean",
    box_format: str = "xyxy",
    l1_format: str | None = None,
    distributed: bool = True,
    cls_weight: float = 1.0,
    focal_alpha: float | None = 0.25,
    focal_gamma: float = 2.0,
    smooth_l1_beta: float = 1.0,
    loc_normalizer: str = "matched",
    aux_matchings: Sequence[Matching] | None = None,
    return_terms: bool = False,
    validate: bool | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Classification and localisation losses weighted by a precomputed matching.

    Args:
        outputs: ``{"pred_logits": Tensor[B, M, K], "pred_boxes": Tensor[B, M, 4]}``, and
            optionally ``"aux_outputs"``: a list of such dicts (decoder layers). ``K`` is
            ``C + 1`` with ``background="first"`` or ``"last"`` and ``C`` with ``"none"``.
        targets: a list of ``{"boxes": [n_i, 4], "labels": int64[n_i]}`` dicts (other keys
            are ignored) or the padded form ``{"boxes": [B, N, 4], "labels": [B, N],
            "mask": bool[B, N]}``. Labels are ``0..C-1`` whatever the background position.
        matching: the :class:`~detloss.match.Matching` of ``outputs`` to ``targets``.
            Without a plan, ``pred_to_target`` decides: ``>= 0`` matched, ``-1``
            background, ``-2`` in no term. With a ``plan [B, M, N + 1]`` the plan alone
            weights the terms (``pred_to_target`` is not read).
        cls_loss: ``"ce"`` softmax cross-entropy; ``"negative_prob"`` minus the softmax
            probability of the class; ``"focal"`` sigmoid focal loss and ``"bce"`` sigmoid
            binary cross-entropy, both summed over the ``K`` logits of a prediction with a
            one-hot target (all zeros for the background when ``background="none"``; a
            background logit, if any, is trained as one more sigmoid class); or a callable
            ``f(logits [P, K], index int64[P]) -> [P]`` giving each row's loss for the
            logit column ``index`` (e.g. ``partial(F.cross_entropy, reduction="none")``).
            Softmax losses and callables need a background logit.
        loc_losses: ``{name: weight}`` over ``"l1"``, ``"smooth_l1"`` (both summed over
            the 4 coordinates, compared in ``l1_format``), ``"iou"``, ``"giou"``,
            ``"diou"``, ``"ciou"`` (``1 - score``, in ``box_format``). None means
            ``{"l1": 5.0, "giou": 2.0}`` (DETR); ``{}`` keeps only the classification.
        background: the background logit's position: ``"last"`` (index C, DETR),
            ``"first"`` (index 0, SSD) or ``"none"`` (no background logit).
        no_object_weight: weight of the classification term of a background prediction
            (DETR's ``eos_coef``; 1.0 for SSD, RetinaNet and Deformable DETR).
        class_weights: ``[C]`` weights of the foreground classes (default all 1).
        hard_negative_ratio: when set, only the ``ceil(ratio * P)`` hardest background
            predictions of each image (highest classification loss, equal losses in
            prediction order; ``P`` the image's matched count) enter the classification
            term: the rounding of :func:`~detloss.losses.multibox_loss` too, ratio 1.5
            with one matched prediction keeps 2. See the notes.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-image sums, ``Tensor[B]``).
        box_format: format of ``pred_boxes`` and the target boxes.
        l1_format: format in which ``"l1"`` and ``"smooth_l1"`` compare boxes (default
            ``box_format``; DETR regresses normalised ``cxcywh``).
        distributed: normalise by counts summed over ranks (divided by the world size)
            when a process group is initialised.
        cls_weight: weight of the classification term.
        focal_alpha, focal_gamma: the focal loss's alpha (None: no weighting) and gamma.
        smooth_l1_beta: the Smooth-L1 transition point (0 gives L1).
        loc_normalizer: with ``reduction="mean"``, divide the localisation sums by the
            ``"matched"`` predictions (default) or by the real ``"targets"`` boxes (DETR's
            ``num_boxes``; the two differ when an image has more objects than queries).
        aux_matchings: matchings of ``outputs["aux_outputs"]``, one per layer; their terms
            are added with the suffix ``_aux{i}``. Without them the auxiliary outputs are
            not read.
        return_terms: also return ``{name: weighted term}`` (``"cls"``, each loc name),
            whose sum is the total.
        validate: check label ranges, the plan's entries and that the predictions and
            the real target boxes hold no NaN or inf, and warn once about inverted target
            boxes (``x2 < x1`` in ``xyxy``, negative sizes otherwise: boxes of another
            format?); one device synchronisation each;
            None checks on the CPU only.

    Returns:
        The weighted total, a scalar (``Tensor[B]`` with ``reduction="none"``), in float64
        when the logits or boxes are float64 and in float32 otherwise (half inputs
        included); with ``return_terms`` the pair ``(total, terms)``.

    Notes:
        With ``reduction="mean"`` the classification sum is divided by the summed class
        weight of the predictions it covers, as torch's weighted cross-entropy: matched
        predictions count their class weight, background ones ``no_object_weight``,
        ignored ones nothing. With ``background="none"`` or hard negative mining only the
        matched predictions count, and the divisor is clamped at 1. Each localisation sum
        is divided by the number of matched predictions (plan mass on real targets),
        clamped at 1 (``loc_normalizer="targets"``: by the number of real target boxes,
        clamped at 1). ``"sum"`` divides by nothing.

    Anchors only serve the matcher: ``pred_boxes`` are absolute boxes, not offsets. The
    options are checked into a :class:`DetectionOptions`, the record
    :class:`DetectionLoss` builds once and reuses.

    Shape:
        - outputs: ``pred_logits [B, M, K]``, ``pred_boxes [B, M, 4]``
        - matching: ``pred_to_target [B, M]`` (or ``plan [B, M, N + 1]``)
        - output: ``[]`` (``[B]`` with ``reduction="none"``)

    Example:
        >>> from detloss.match import Matching
        >>> outputs = {
        ...     "pred_logits": torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]]]),
        ...     "pred_boxes": torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]]),
        ... }
        >>> targets = [{"boxes": torch.tensor([[0.0, 0.0, 0.5, 0.5]]), "labels": torch.tensor([0])}]
        >>> matching = Matching(torch.tensor([[0, -1]]), torch.tensor([[True]]))
        >>> loss, terms = detection_loss(outputs, targets, matching, return_terms=True)
        >>> {name: round(float(value), 4) for name, value in terms.items()}
        {'cls': 0.2395, 'l1': 0.0, 'giou': 0.0}
    """
    options = DetectionOptions.from_arguments(locals())
    return _matched_loss(
        outputs, targets, matching, options, class_weights, aux_matchings, return_terms, validate
    )


def _matched_loss(
    outputs: Mapping[str, Tensor],
    targets: Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor],
    matching: Matching,
    opts: DetectionOptions,
    class_weights: Tensor | Sequence[float] | None,
    aux_matchings: Sequence[Matching] | None,
    return_terms: bool,
    validate: bool | None,
    scanned: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """:func:`detection_loss` with its options built; ``scanned``: the caller has already
    scanned the inputs for NaN and inf."""
    logits, _ = _read_outputs(outputs, "outputs")
    padded = _padded_targets(targets, logits.shape[0], logits.device)
    if not scanned and should_validate(validate, logits):
        _check_finite_inputs(outputs, padded, aux_matchings is not None)
    terms = _layer_terms(outputs, padded, matching, class_weights, opts, validate, "outputs", "")
    if aux_matchings is not None:
        aux = _aux_outputs(outputs)
        if isinstance(aux_matchings, Matching) or len(aux_matchings) != len(aux):
            got = "a Matching" if isinstance(aux_matchings, Matching) else len(aux_matchings)
            raise ValueError(
                f"aux_matchings: expected a list of {len(aux)} matchings (one per "
                f"outputs['aux_outputs'] entry), got {got}"
            )
        for i, (layer, layer_matching) in enumerate(zip(aux, aux_matchings, strict=True)):
            terms.update(
                _layer_terms(
                    layer,
                    padded,
                    layer_matching,
                    class_weights,
                    opts,
                    validate,
                    f"outputs['aux_outputs'][{i}]",
                    f"_aux{i}",
                )
            )
    total = torch.stack(list(terms.values())).sum(0)
    return (total, terms) if return_terms else total


# The constructor takes detection_loss's options (the first ten also by position), the
# box_format defaulting to None: the matcher's.
_MODULE_OPTIONS = options_signature(
    detection_loss,
    ("outputs", "targets", "matching", "aux_matchings", "return_terms"),
    positional=10,
    defaults={"box_format": None},
)


def _matcher_box_format(matcher: object, box_format: str | None) -> str:
    """The loss's box format: ``box_format``, else the matcher's, else ``"xyxy"``."""
    matcher_format = getattr(matcher, "box_format", None)
    if box_format is None:
        return matcher_format if isinstance(matcher_format, str) else "xyxy"
    check_choice(box_format, "box_format", BOX_FORMATS)
    if isinstance(matcher_format, str) and matcher_format != box_format:
        raise ValueError(
            f"box_format: the loss reads boxes as {box_format!r} but its matcher "
            f"({type(matcher).__name__}) reads them as {matcher_format!r}; give both the "
            "same box_format, or leave the loss's unset to inherit the matcher's"
        )
    return box_format


class DetectionLoss(nn.Module):
    """Match, then :func:`detection_loss`: DETR's set criterion and uotod's DetectionLoss.

    Args:
        matcher: any callable ``matcher(outputs, targets, anchors=None) -> Matching``
            (:class:`~detloss.match.HungarianMatcher`, :class:`~detloss.match.MaxIoUMatcher`,
            a Sinkhorn matcher ...). It receives the padded targets ``{"boxes", "labels",
            "mask"}`` and, only when given, ``anchors``.
        The other arguments are those of :func:`detection_loss`, with the same names and
        defaults, checked once here into a :class:`DetectionOptions` (``self.options``;
        each option also reads as an attribute of the module).

    ``box_format`` defaults to the matcher's own ``box_format`` (``"xyxy"`` for a matcher
    without one); one that disagrees with the matcher's is a ``ValueError``, since both
    read the same target boxes.

    Called as ``loss(outputs, targets, anchors=None, return_terms=False)``. Each entry of
    ``outputs["aux_outputs"]`` is matched again and its terms added under ``{name}_aux{i}``.
    ``anchors`` (``[M, 4]`` or ``[B, M, 4]``) are passed to the matcher only. When
    validating, the inputs are scanned for NaN and inf once, by the loss, before the
    matcher runs (a matcher with a ``validate`` attribute then skips its own scan).

    Shape:
        - outputs: ``pred_logits [B, M, K]``, ``pred_boxes [B, M, 4]``
        - targets: ``B`` dicts of ``boxes [n_i, 4]`` and ``labels [n_i]``
        - output: ``[]`` (``[B]`` with ``reduction="none"``)

    Example:
        >>> from detloss.match import HungarianMatcher
        >>> criterion = DetectionLoss(HungarianMatcher(), box_format="xyxy")
        >>> outputs = {
        ...     "pred_logits": torch.zeros(1, 3, 3),
        ...     "pred_boxes": torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.2, 0.2, 0.4, 0.4]]]),
        ... }
        >>> targets = [{"boxes": torch.tensor([[0.0, 0.0, 0.5, 0.5]]), "labels": torch.tensor([1])}]
        >>> loss, terms = criterion(outputs, targets, return_terms=True)
        >>> sorted(terms), criterion.no_object_weight
        (['cls', 'giou', 'l1'], 0.1)
    """

    def __init__(self, matcher: Callable[..., Matching], *args: Any, **kwargs: Any) -> None:
        super().__init__()
        if not callable(matcher):
            raise TypeError(f"matcher must be callable, got {type(matcher).__name__}")
        arguments = bind_options(_MODULE_OPTIONS, "DetectionLoss", args, kwargs)
        arguments["box_format"] = _matcher_box_format(matcher, arguments["box_format"])
        self.options = DetectionOptions.from_arguments(arguments)
        self.matcher = matcher
        self.validate = arguments["validate"]
        class_weights = arguments["class_weights"]
        weights = None
        if class_weights is not None:
            weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if weights.ndim != 1:
                raise ValueError(
                    f"class_weights: expected shape [C], got {shape_str(weights.shape)}"
                )
            _check_class_weight_values(weights)
        # A buffer follows the module's .to(device) and is saved in its state dict.
        self.register_buffer("class_weights", weights)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            options = self.__dict__.get("options")
            if options is not None and name in _OPTION_NAMES:
                return getattr(options, name)
            raise

    def match(
        self,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        anchors: Tensor | None = None,
    ) -> Matching:
        """Call the matcher (without gradient) and check that it returned a Matching."""
        with torch.no_grad():
            if anchors is None:
                matching = self.matcher(outputs, targets)
            else:
                matching = self.matcher(outputs, targets, anchors=anchors)
        if not isinstance(matching, Matching):
            raise TypeError(f"matcher must return a Matching, got {type(matching).__name__}")
        return matching

    def forward(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor],
        anchors: Tensor | None = None,
        return_terms: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        logits, _ = _read_outputs(outputs, "outputs")
        padded = _padded_targets(targets, logits.shape[0], logits.device)
        aux = _aux_outputs(outputs)
        scanned = should_validate(self.validate, logits)
        if scanned:
            _check_finite_inputs(outputs, padded, bool(aux), anchors)
        with _matcher_scan_off(self.matcher, scanned):
            matching = self.match(outputs, padded, anchors)
            aux_matchings = [self.match(layer, padded, anchors) for layer in aux] if aux else None
        return _matched_loss(
            outputs,
            padded,
            matching,
            self.options,
            self.class_weights,
            aux_matchings,
            return_terms,
            self.validate,
            scanned,
        )

    def extra_repr(self) -> str:
        opts = self.options
        cls = opts.cls_loss if isinstance(opts.cls_loss, str) else "<callable>"
        return (
            f"cls_loss={cls!r}, loc_losses={opts.loc_losses}, background={opts.background!r}, "
            f"no_object_weight={opts.no_object_weight}, "
            f"hard_negative_ratio={opts.hard_negative_ratio}, reduction={opts.reduction!r}, "
            f"box_format={opts.box_format!r}"
        )


_OPTION_NAMES = frozenset(f.name for f in _FIELDS)
DetectionLoss.__signature__ = constructor_signature(DetectionLoss, _MODULE_OPTIONS)  # type: ignore[attr-defined]


@contextlib.contextmanager
def _matcher_scan_off(matcher: object, scanned: bool) -> Iterator[None]:
    """Within the block, a matcher with a ``validate`` attribute does not scan its inputs
    for NaN and inf again when the loss has just scanned them (``scanned``)."""
    if not scanned or not hasattr(matcher, "validate"):
        yield
        return
    saved = matcher.validate  # type: ignore[attr-defined]
    matcher.validate = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        matcher.validate = saved  # type: ignore[attr-defined]
