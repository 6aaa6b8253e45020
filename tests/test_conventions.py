"""The rules of docs/conventions.md that a machine can check, over every public name."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator

import pytest
import torch

import detloss
from _public import public_names
from detloss.metrics import match_points_within, point_metrics
from detloss.postprocess import centernet_decode, decode_points, ssd_detect

PUBLIC = public_names()

# Each loss function, its Module, and the parameters given per call rather than stored
# (the tensors, and per-call options such as return_terms).
LOSSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "sigmoid_focal_loss": ("SigmoidFocalLoss", ("inputs", "targets")),
    "iou_loss": ("IoULoss", ("boxes1", "boxes2")),
    "giou_loss": ("GIoULoss", ("boxes1", "boxes2")),
    "diou_loss": ("DIoULoss", ("boxes1", "boxes2")),
    "ciou_loss": ("CIoULoss", ("boxes1", "boxes2")),
    "smooth_l1_loss": ("SmoothL1Loss", ("input", "target")),
    "negative_prob": ("NegativeProbLoss", ("logits", "labels")),
    "gaussian_focal_loss": ("GaussianFocalLoss", ("pred", "target", "normalizer")),
    "gaussian_focal_loss_with_logits": (
        "GaussianFocalLossWithLogits",
        ("logits", "target", "normalizer"),
    ),
    "centernet_loss": ("CenterNetLoss", ("predictions", "targets", "return_terms")),
    "point_loss": (
        "PointLoss",
        ("pred_points", "pred_logits", "targets", "matching", "return_terms"),
    ),
    "detection_loss": (
        "DetectionLoss",
        ("outputs", "targets", "matching", "aux_matchings", "return_terms"),
    ),
    "multibox_loss": ("MultiBoxLoss", ("loc", "conf", "priors", "targets", "return_terms")),
    "ap_loss": ("APLoss", ("logits", "labels")),
    "alrp_loss": ("ALRPLoss", ("logits", "labels", "regression_losses")),
    "rank_sort_loss": ("RankSortLoss", ("logits", "targets")),
}
# Options a Module has beyond its function's: the weights with which it adds up the terms
# that the function returns separately.
# A Module's constructor-only inputs (what it uses to produce the function's per-call
# arguments: the matcher that yields the matching, the class count that checks ``conf``) are
# theirs too.
MODULE_ONLY_OPTIONS: dict[str, tuple[str, ...]] = {
    "ALRPLoss": ("loc_weight",),
    "DetectionLoss": ("matcher",),
    "MultiBoxLoss": ("num_classes",),
}
# Module defaults that differ on purpose: DetectionLoss reads the box format of its matcher
# unless one is given.
MODULE_DEFAULTS: dict[str, dict[str, object]] = {"DetectionLoss": {"box_format": None}}
# Constructor arguments the tests give each Module that needs some.
MODULE_ARGS: dict[str, Callable[[], dict[str, object]]] = {
    "DetectionLoss": lambda: {"matcher": detloss.HungarianMatcher()},
    "MultiBoxLoss": lambda: {"num_classes": 3},
}
# SetCriterion is DETR's criterion class, kept with DETR's contract (a dict of unweighted
# terms, weighted by the training script); it has no function form.
NOT_LOSS_FUNCTIONS = {"SetCriterion"}


def _is_loss_name(name: str) -> bool:
    return name.endswith("_loss") or name.endswith("Loss") or name == "negative_prob"


def test_every_loss_is_listed():
    functions = {n for n, v in PUBLIC.items() if inspect.isfunction(v) and _is_loss_name(n)}
    functions.add("negative_prob")
    assert functions <= set(LOSSES), sorted(functions - set(LOSSES))
    classes = {n for n, v in PUBLIC.items() if inspect.isclass(v) and _is_loss_name(n)}
    listed = {module for module, _ in LOSSES.values()} | NOT_LOSS_FUNCTIONS
    assert classes <= listed, sorted(classes - listed)


def _options(signature: inspect.Signature, skip: tuple[str, ...]) -> list[tuple]:
    return [
        (p.name, p.default)
        for p in signature.parameters.values()
        if p.name not in skip and p.name != "self"
    ]


@pytest.mark.parametrize("name", list(LOSSES))
def test_module_options_equal_the_function_options(name):
    module_name, per_call = LOSSES[name]
    function, module = PUBLIC[name], PUBLIC[module_name]
    want = dict(_options(inspect.signature(function), per_call))
    want.update(MODULE_DEFAULTS.get(module_name, {}))
    got = dict(_options(inspect.signature(module), MODULE_ONLY_OPTIONS.get(module_name, ())))
    assert got == want


@pytest.mark.parametrize("name", list(LOSSES))
def test_reduction_defaults_to_mean(name):
    module_name, _ = LOSSES[name]
    for target in (PUBLIC[name], PUBLIC[module_name]):
        parameter = inspect.signature(target).parameters.get("reduction")
        assert parameter is not None, f"{target.__name__} has no reduction"
        assert parameter.default == "mean"


def _boxes() -> torch.Tensor:
    return torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 4.0]])


def _centernet_inputs() -> tuple[dict, dict]:
    zeros = torch.zeros(2, 2, 4, 4)
    heat = torch.zeros(2, 1, 4, 4)
    heat[0, 0, 1, 1] = 1.0
    predictions = {"heatmap": torch.randn(2, 1, 4, 4), "size": zeros + 1, "offset": zeros}
    targets = {"heatmap": heat, "size": zeros, "offset": zeros, "weight": heat.clone()}
    return predictions, targets


# Small valid inputs of each of our losses (per-call arguments, by name).
INPUTS: dict[str, Callable[[], dict[str, object]]] = {
    "sigmoid_focal_loss": lambda: {"inputs": torch.randn(3, 2), "targets": torch.rand(3, 2)},
    "iou_loss": lambda: {"boxes1": _boxes(), "boxes2": _boxes().flip(0)},
    "giou_loss": lambda: {"boxes1": _boxes(), "boxes2": _boxes().flip(0)},
    "diou_loss": lambda: {"boxes1": _boxes(), "boxes2": _boxes().flip(0)},
    "ciou_loss": lambda: {"boxes1": _boxes(), "boxes2": _boxes().flip(0)},
    "smooth_l1_loss": lambda: {"input": torch.randn(4), "target": torch.randn(4)},
    "negative_prob": lambda: {"logits": torch.randn(3, 4), "labels": torch.tensor([0, 3, 1])},
    "gaussian_focal_loss": lambda: {"pred": torch.rand(2, 5), "target": torch.rand(2, 5)},
    "gaussian_focal_loss_with_logits": lambda: {
        "logits": torch.randn(2, 5),
        "target": torch.tensor([[1.0, 0.5, 0.0, 0.2, 0.1], [0.0] * 5]),
    },
    "centernet_loss": lambda: dict(zip(("predictions", "targets"), _centernet_inputs())),
    "point_loss": lambda: {
        "pred_points": torch.rand(2, 4, 2) * 8,
        "pred_logits": torch.randn(2, 4),
        "targets": [torch.rand(2, 2) * 8, torch.zeros(0, 2)],
    },
    "ap_loss": lambda: {"logits": torch.randn(2, 5), "labels": torch.tensor([[1, 0, 0, 1, 0]] * 2)},
    "alrp_loss": lambda: {
        "logits": torch.randn(2, 5),
        "labels": torch.tensor([[1, 0, 0, 1, 0]] * 2),
        "regression_losses": torch.rand(4),  # one per positive
    },
    "rank_sort_loss": lambda: {
        "logits": torch.randn(2, 5),
        "targets": torch.tensor([[0.9, 0.0, 0.0, 0.4, 0.0]] * 2),
    },
}


def _detection_inputs() -> dict[str, object]:
    outputs = {"pred_logits": torch.randn(2, 5, 4), "pred_boxes": torch.rand(2, 5, 4) * 0.4}
    outputs["pred_boxes"][..., 2:] += 0.5
    targets = [
        {"boxes": torch.tensor([[0.1, 0.1, 0.6, 0.7]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    matching = detloss.HungarianMatcher()(outputs, targets)
    return {"outputs": outputs, "targets": targets, "matching": matching}


def _multibox_inputs() -> dict[str, object]:
    priors = detloss.ssd_priors(
        image_size=64,
        feature_maps=(2,),
        steps=(32,),
        min_sizes=(20,),
        max_sizes=(40,),
        aspect_ratios=((2,),),
    )
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.5, 0.4, 0.9, 0.9]])
    return {
        "loc": torch.randn(2, priors.shape[0], 4) * 0.1,
        "conf": torch.randn(2, priors.shape[0], 3),
        "priors": priors,
        "targets": [
            {"boxes": boxes, "labels": torch.tensor([0, 1])},
            {"boxes": boxes[:1], "labels": torch.tensor([1])},
        ],
    }


INPUTS["detection_loss"] = _detection_inputs
INPUTS["multibox_loss"] = _multibox_inputs
# Per-call arguments the function takes and the Module does not (it makes them itself).
FUNCTION_ONLY_INPUTS = {"detection_loss": ("matching",)}

# How a Module adds up the terms its function returns as a tuple.
MODULE_TOTALS: dict[str, Callable[[tuple], torch.Tensor]] = {
    "alrp_loss": lambda terms: terms[0] + 50.0 * terms[1],
    "rank_sort_loss": lambda terms: terms[0] + terms[1],
}


# Losses whose "none" keeps one value per element, so that "sum" is their sum.
ELEMENTWISE = {
    "sigmoid_focal_loss",
    "iou_loss",
    "giou_loss",
    "diou_loss",
    "ciou_loss",
    "smooth_l1_loss",
    "negative_prob",
    "gaussian_focal_loss",
    "gaussian_focal_loss_with_logits",
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_reduction_rejects_other_values(name):
    module_name, _ = LOSSES[name]
    with pytest.raises(ValueError, match="'avg'"):
        PUBLIC[name](**INPUTS[name](), reduction="avg")
    with pytest.raises(ValueError, match="'avg'"):
        PUBLIC[module_name](**MODULE_ARGS.get(module_name, dict)(), reduction="avg")


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_module_equals_function(name, reduction):
    module_name, _ = LOSSES[name]
    torch.manual_seed(0)
    inputs = INPUTS[name]()
    want = PUBLIC[name](**inputs, reduction=reduction)
    module = PUBLIC[module_name](**MODULE_ARGS.get(module_name, dict)(), reduction=reduction)
    skip = FUNCTION_ONLY_INPUTS.get(name, ())
    got = module(**{k: v for k, v in inputs.items() if k not in skip})
    if name in MODULE_TOTALS:
        want = MODULE_TOTALS[name](want)
    assert torch.equal(got, want)
    scalar = reduction != "none"
    assert (want.ndim == 0) == scalar
    if reduction == "sum" and name in ELEMENTWISE:
        # Element-wise losses: "sum" adds the "none" values, "mean" is their mean or,
        # for the gaussian focal losses, divides the sum by the positive cells.
        none = PUBLIC[name](**inputs, reduction="none")
        torch.testing.assert_close(want, none.sum())


# Result types (dataclasses whose fields are data, not options) are not checked.
RESULT_TYPES = {"Matching"}


def _callables() -> Iterator[str]:
    for name, value in PUBLIC.items():
        if name in RESULT_TYPES:
            continue
        if callable(value) and not isinstance(value, (int, float, str, tuple)):
            try:
                inspect.signature(value)
            except (TypeError, ValueError):
                continue
            yield name


@pytest.mark.parametrize("name", list(_callables()))
def test_masks_are_keyword_only_and_named_alike(name):
    for parameter in inspect.signature(PUBLIC[name]).parameters.values():
        if "mask" in parameter.name:
            assert parameter.name in ("target_mask", "pred_mask"), parameter.name
            assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, parameter.name


@pytest.mark.parametrize("name", list(_callables()))
def test_threshold_names(name):
    forbidden = {"threshold", "conf_threshold", "overlap_threshold", "nms_threshold"}
    names = set(inspect.signature(PUBLIC[name]).parameters)
    assert not names & forbidden, sorted(names & forbidden)


def _decoders() -> dict[str, tuple[Callable[[], list], str]]:
    heat = torch.zeros(2, 2, 4, 4)
    heat[0, 1, 1, 1], heat[0, 0, 3, 3], heat[1, 0, 0, 2] = 0.7, 0.9, 0.4
    priors = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    conf = torch.tensor([[[0.0, 3.0, 0.0], [0.0, 0.0, 4.0], [2.0, 0.0, 1.0]]] * 2)
    points = torch.rand(2, 5, 2, generator=torch.Generator().manual_seed(0))
    return {
        "centernet_decode": (
            lambda: centernet_decode(heat, torch.ones(2, 2, 4, 4), logits=False),
            "boxes",
        ),
        "ssd_detect": (lambda: ssd_detect(torch.zeros(2, 3, 4), conf, priors), "boxes"),
        "decode_points": (
            lambda: decode_points(points, torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]] * 2)),
            "points",
        ),
    }


@pytest.mark.parametrize("name", ["centernet_decode", "ssd_detect", "decode_points"])
def test_decoders_return_one_dict_per_image_sorted_by_score(name):
    call, geometry = _decoders()[name]
    out = call()
    assert isinstance(out, list) and len(out) == 2
    for image in out:
        assert isinstance(image, dict) and set(image) == {geometry, "scores", "labels"}
        k = len(image["scores"])
        assert k > 0 and image[geometry].shape[0] == k and image["labels"].shape == (k,)
        assert image["labels"].dtype == torch.int64
        assert (image["scores"][:-1] >= image["scores"][1:]).all()


RENAMED = {
    "ssd_detect(conf_threshold)": (
        lambda: ssd_detect(
            torch.zeros(1, 1, 4), torch.zeros(1, 1, 2), torch.ones(1, 4), conf_threshold=0.1
        ),
        "score_threshold",
    ),
    "ssd_detect(nms_threshold)": (
        lambda: ssd_detect(
            torch.zeros(1, 1, 4), torch.zeros(1, 1, 2), torch.ones(1, 4), nms_threshold=0.5
        ),
        "iou_threshold",
    ),
    "decode_points(threshold)": (
        lambda: decode_points(torch.zeros(1, 1, 2), torch.zeros(1, 1), threshold=0.5),
        "score_threshold",
    ),
    "point_metrics(threshold)": (
        lambda: point_metrics([torch.zeros(1, 2)], [torch.zeros(1, 2)], threshold=4.0),
        "distance_threshold",
    ),
    "match_points_within(threshold)": (
        lambda: match_points_within(torch.zeros(1, 2), torch.zeros(1, 2), threshold=4.0),
        "distance_threshold",
    ),
    "centernet_targets(mask)": (
        lambda: detloss.centernet_targets(
            torch.zeros(1, 1, 4),
            torch.zeros(1, 1, dtype=torch.long),
            mask=torch.ones(1, 1) > 0,
            num_classes=1,
            output_size=(4, 4),
        ),
        "target_mask",
    ),
}


@pytest.mark.parametrize("case", list(RENAMED))
def test_renamed_arguments_name_the_new_one(case):
    call, new = RENAMED[case]
    old = case[case.index("(") + 1 : -1]
    with pytest.raises(TypeError, match=f"'{old}' was renamed '{new}'"):
        call()


def test_new_names_give_the_old_results():
    points = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    got = decode_points(points, torch.tensor([[0.0, 2.0]]), score_threshold=0.4)
    assert len(got[0]["points"]) == 2
    assert point_metrics([points[0]], [points[0] + 3], distance_threshold=5.0)["tp"] == 2.0
    assert match_points_within(points[0], points[0] + 3, distance_threshold=4.0) == 1


def test_a_module_takes_its_options_once():
    loss = detloss.SigmoidFocalLoss(gamma=1.0)
    x, t = torch.zeros(2), torch.tensor([1.0, 0.0])
    with pytest.raises(TypeError, match="'reduction' is an option of the constructor"):
        loss(x, t, reduction="sum")
    with pytest.raises(TypeError, match="takes inputs, targets; got 3 positional"):
        loss(x, t, t)
    with pytest.raises(TypeError, match=r"SigmoidFocalLoss\(\): .*positional"):
        detloss.SigmoidFocalLoss(0.25, 2.0, "mean", None)
    assert repr(loss) == "SigmoidFocalLoss(alpha=0.25, gamma=1.0, reduction='mean', validate=None)"


def test_a_loss_module_can_be_subclassed():
    class Halved(detloss.GIoULoss):
        def forward(self, boxes1, boxes2):
            return super().forward(boxes1, boxes2) / 2

    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert torch.equal(Halved(reduction="sum")(a, b), detloss.giou_loss(a, b, "sum") / 2)
