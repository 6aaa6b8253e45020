"""SetCriterion against a slow reference of DETR's criterion, written from its published
algorithm: per image a Hungarian matching on 1 * (-softmax prob) + 5 * L1 + 2 * (-GIoU)
(scipy), then weighted cross-entropy with ``eos_coef`` on "no object", L1 and 1 - GIoU of
the matched pairs divided by the number of target boxes (clamped at 1), auxiliary layers
suffixed ``_i``, ``class_error`` and ``cardinality_error`` for logging. Deformable DETR's
variant replaces the cross-entropy by the sigmoid focal loss summed over queries and
classes, divided by the same count."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment

import detloss
from detloss import DetectionLoss, HungarianMatcher, MaxIoUMatcher, SetCriterion
from detloss.losses import SetCriterion as SetCriterionFromLosses

# --- the slow reference -------------------------------------------------------------


def ref_xyxy(box: list[float]) -> list[float]:
    cx, cy, w, h = box
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def ref_giou(a: list[float], b: list[float]) -> float:
    a, b = ref_xyxy(a), ref_xyxy(b)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = area_a + area_b - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def ref_matcher(outputs: dict, targets: list[dict], focal: bool = False) -> list[tuple]:
    """DETR's matching, one image at a time; returns (query_idx, target_idx) pairs."""
    result = []
    logits_all, boxes_all = outputs["pred_logits"].detach(), outputs["pred_boxes"].detach()
    for logits, boxes, target in zip(logits_all, boxes_all, targets):
        labels, tboxes = target["labels"].tolist(), target["boxes"].tolist()
        q = logits.shape[0]
        if not labels:
            result.append((torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)))
            continue
        prob = logits.sigmoid() if focal else logits.softmax(-1)
        cost = [[0.0] * len(labels) for _ in range(q)]
        for i in range(q):
            for j, (label, tbox) in enumerate(zip(labels, tboxes)):
                l1 = sum(abs(p - t) for p, t in zip(boxes[i].tolist(), tbox))
                cost[i][j] = -float(prob[i, label]) + 5 * l1 - 2 * ref_giou(boxes[i].tolist(), tbox)
        rows, cols = linear_sum_assignment(cost)
        result.append((torch.as_tensor(rows), torch.as_tensor(cols)))
    return result


def ref_focal(x: float, t: float, alpha: float) -> float:
    p = 1 / (1 + math.exp(-x))
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    return (alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - p_t) ** 2


def ref_layer(layer, targets, pairs, num_classes, eos, num_boxes, focal_alpha, log, suffix):
    logits, boxes = layer["pred_logits"].detach(), layer["pred_boxes"].detach()
    b, q, k = logits.shape
    out = {}
    # classification
    weighted_sum, weight_total, correct, matched = 0.0, 0.0, 0, 0
    for image in range(b):
        assigned = {int(i): int(j) for i, j in zip(*pairs[image])}
        for i in range(q):
            cls = targets[image]["labels"][assigned[i]].item() if i in assigned else num_classes
            row = logits[image, i].tolist()
            if focal_alpha is None:
                lse = math.log(sum(math.exp(v) for v in row))
                w = eos if cls == num_classes else 1.0
                weighted_sum += w * (lse - row[cls])
                weight_total += w
            else:
                weighted_sum += sum(
                    ref_focal(row[c], 1.0 if c == cls else 0.0, focal_alpha) for c in range(k)
                )
            if i in assigned:
                matched += 1
                correct += int(max(range(k), key=lambda c: row[c]) == cls)
    out["loss_ce"] = weighted_sum / (weight_total if focal_alpha is None else num_boxes)
    if log:
        out["class_error"] = 100.0 - (100.0 * correct / matched if matched else 0.0)
    # boxes
    l1, giou = 0.0, 0.0
    for image in range(b):
        for i, j in zip(*pairs[image]):
            p, t = boxes[image, int(i)].tolist(), targets[image]["boxes"][int(j)].tolist()
            l1 += sum(abs(a - c) for a, c in zip(p, t))
            giou += 1 - ref_giou(p, t)
    out["loss_bbox"] = l1 / num_boxes
    out["loss_giou"] = giou / num_boxes
    # cardinality
    card = 0.0
    for image in range(b):
        predicted = sum(int(int(logits[image, i].argmax()) != k - 1) for i in range(q))
        card += abs(predicted - len(targets[image]["labels"]))
    out["cardinality_error"] = card / b
    return {key + suffix: value for key, value in out.items()}


def ref_criterion(outputs, targets, num_classes, eos=0.1, focal_alpha=None):
    num_boxes = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
    focal = focal_alpha is not None
    main = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "enc_outputs")}
    losses = ref_layer(
        main,
        targets,
        ref_matcher(main, targets, focal),
        num_classes,
        eos,
        num_boxes,
        focal_alpha,
        True,
        "",
    )
    for i, layer in enumerate(outputs.get("aux_outputs", [])):
        pairs = ref_matcher(layer, targets, focal)
        losses.update(
            ref_layer(
                layer, targets, pairs, num_classes, eos, num_boxes, focal_alpha, False, f"_{i}"
            )
        )
    if "enc_outputs" in outputs:
        binary = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
        layer = outputs["enc_outputs"]
        pairs = ref_matcher(layer, binary, focal)
        losses.update(
            ref_layer(layer, binary, pairs, num_classes, eos, num_boxes, focal_alpha, False, "_enc")
        )
    return losses


# --- random DETR batches ------------------------------------------------------------


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    size = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 0.3 + 0.02
    return torch.cat((centre, size), -1)


def random_batch(seed: int, queries: int, counts: list[int], logits_per_query: int, aux: int):
    g = torch.Generator().manual_seed(seed)

    def layer() -> dict:
        return {
            "pred_logits": torch.randn(
                len(counts), queries, logits_per_query, generator=g, dtype=torch.float64
            ).requires_grad_(),
            "pred_boxes": torch.stack([random_boxes(queries, g) for _ in counts]).requires_grad_(),
        }

    outputs = layer()
    if aux:
        outputs["aux_outputs"] = [layer() for _ in range(aux)]
    num_classes = logits_per_query - 1
    targets = [
        {
            "labels": torch.randint(0, num_classes, (n,), generator=g),
            "boxes": random_boxes(n, g),
            "image_id": torch.tensor(i),
        }
        for i, n in enumerate(counts)
    ]
    return outputs, targets


# Empty images, an image with more objects than queries, an all-empty batch.
CASES = [
    (0, 6, [3, 0, 9, 1], 2),
    (1, 4, [0, 0], 1),
    (2, 5, [5, 7, 0], 0),
    (3, 8, [1, 2, 3], 3),
]


def assert_same(ours: dict, reference: dict) -> None:
    assert sorted(ours) == sorted(reference)
    for key, value in reference.items():
        # cardinality_error is float32, as DETR's (.float()); it counts whole objects.
        float32 = key.startswith("cardinality_error")
        assert ours[key].dtype == (torch.float32 if float32 else torch.float64), key
        rel = 1e-6 if float32 else 1e-12
        assert float(ours[key].detach()) == pytest.approx(value, rel=rel, abs=1e-12), key


@pytest.mark.parametrize(("seed", "queries", "counts", "aux"), CASES)
def test_set_criterion_equals_detr_reference(seed, queries, counts, aux):
    outputs, targets = random_batch(seed, queries, counts, 6, aux)
    losses = ("labels", "boxes", "cardinality")
    reference = ref_criterion(outputs, targets, num_classes=5, eos=0.1)
    # detloss's own matcher, and DETR's matcher (the reference) passed in as is.
    matcher = HungarianMatcher(1.0, 5.0, 2.0, box_format="cxcywh")
    for m in (matcher, ref_matcher):
        criterion = SetCriterion(5, m, {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}, 0.1, losses)
        assert_same(criterion(outputs, targets), reference)


@pytest.mark.parametrize(("seed", "queries", "counts", "aux"), CASES[:3])
def test_set_criterion_focal_equals_deformable_detr_reference(seed, queries, counts, aux):
    outputs, targets = random_batch(seed, queries, counts, 5, aux)
    # Two-stage: the encoder's proposals, matched to the targets as one class.
    outputs["enc_outputs"] = random_batch(seed + 100, queries, counts, 5, 0)[0]
    reference = ref_criterion(outputs, targets, num_classes=5, focal_alpha=0.25)
    focal_matcher = lambda o, t: ref_matcher(o, t, focal=True)  # noqa: E731
    criterion = SetCriterion(
        5, focal_matcher, {}, losses=["labels", "boxes", "cardinality"], focal_alpha=0.25
    )
    assert_same(criterion(outputs, targets), reference)


def test_set_criterion_default_terms_gradients_and_exports():
    assert detloss.SetCriterion is SetCriterionFromLosses
    outputs, targets = random_batch(4, 6, [2, 0, 8], 4, 2)
    criterion = SetCriterion(3, HungarianMatcher(box_format="cxcywh"), {"loss_ce": 1.0}, 0.1)
    losses = criterion(outputs, targets)
    assert sorted(losses) == sorted(
        ["loss_ce", "class_error", "loss_bbox", "loss_giou"]
        + [f"{k}_{i}" for i in range(2) for k in ("loss_ce", "loss_bbox", "loss_giou")]
    )
    weighted = sum(
        losses[k] * criterion.weight_dict.get(k.rsplit("_", 1)[0], 1.0)
        for k in losses
        if k != "class_error"
    )
    weighted.backward()
    for tensor in (outputs["pred_logits"], outputs["pred_boxes"]):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
    assert not losses["class_error"].requires_grad


def test_set_criterion_empty_batch_is_finite():
    outputs, targets = random_batch(5, 4, [0, 0], 4, 1)
    losses = SetCriterion(
        3, HungarianMatcher(box_format="cxcywh"), {}, 0.1, ["labels", "boxes", "cardinality"]
    )(outputs, targets)
    assert float(losses["loss_bbox"].detach()) == 0.0 and float(losses["class_error"]) == 100.0
    assert all(torch.isfinite(v) for v in losses.values())


def test_set_criterion_rejects_bad_settings():
    m = HungarianMatcher(box_format="cxcywh")
    with pytest.raises(ValueError, match="box_format='cxcywh'"):
        SetCriterion(3, HungarianMatcher(), {}, 0.1)
    with pytest.raises(ValueError, match="masks"):
        SetCriterion(3, m, {}, 0.1, ["labels", "masks"])
    with pytest.raises(ValueError, match="losses"):
        SetCriterion(3, m, {}, 0.1, ["label"])
    with pytest.raises(TypeError, match=r"focal_alpha=\.\.\. by name"):
        SetCriterion(3, m, {}, ["labels", "boxes"])
    with pytest.raises(ValueError, match="num_classes"):
        SetCriterion(0, m, {}, 0.1)
    outputs, targets = random_batch(6, 4, [1], 4, 0)
    with pytest.raises(ValueError, match=r"outputs\['pred_logits'\]: expected 6 logits"):
        SetCriterion(5, m, {}, 0.1)(outputs, targets)


# --- DetectionLoss: DETR's normaliser and the matcher's box format --------------------


def test_detection_loss_targets_normaliser_divides_by_target_boxes():
    """With more objects than queries, DETR divides by the target boxes (here 1 + 9 = 10),
    detloss's default by the matched queries (1 + 4 = 5)."""
    outputs, targets = random_batch(7, 4, [1, 9], 4, 0)
    matcher = HungarianMatcher(box_format="cxcywh")
    kwargs = {"loc_losses": {"l1": 1.0}, "distributed": False}
    _, matched = DetectionLoss(matcher, **kwargs)(outputs, targets, return_terms=True)
    _, by_targets = DetectionLoss(matcher, loc_normalizer="targets", **kwargs)(
        outputs, targets, return_terms=True
    )
    assert float(by_targets["l1"].detach()) == pytest.approx(
        float(matched["l1"].detach()) * 5 / 10, rel=1e-12
    )
    assert float(by_targets["cls"].detach()) == pytest.approx(
        float(matched["cls"].detach()), rel=1e-12
    )
    reference = ref_criterion(outputs, targets, num_classes=3)
    assert float(by_targets["l1"].detach()) == pytest.approx(reference["loss_bbox"], rel=1e-9)
    with pytest.raises(ValueError, match="loc_normalizer"):
        DetectionLoss(matcher, loc_normalizer="boxes")


def test_detection_loss_inherits_or_rejects_the_matchers_box_format():
    assert DetectionLoss(HungarianMatcher(box_format="cxcywh")).box_format == "cxcywh"
    assert DetectionLoss(MaxIoUMatcher(box_format="xywh")).box_format == "xywh"
    assert DetectionLoss(lambda o, t: None).box_format == "xyxy"
    assert DetectionLoss(HungarianMatcher(), box_format="xyxy").box_format == "xyxy"
    with pytest.raises(ValueError, match="box_format: the loss reads boxes as 'xyxy'"):
        DetectionLoss(HungarianMatcher(box_format="cxcywh"), box_format="xyxy")


def _rank_num_boxes(rank: int, world: int, counts: list[int]) -> tuple[float, float]:
    outputs, targets = random_batch(10 + rank, 4, [counts[rank]], 4, 0)
    criterion = SetCriterion(3, HungarianMatcher(box_format="cxcywh"), {}, 0.1)
    losses = criterion(outputs, targets)
    local_sum = ref_criterion(outputs, targets, num_classes=3)["loss_bbox"] * max(counts[rank], 1)
    return float(losses["loss_bbox"].detach()), local_sum


@pytest.mark.parametrize(("counts", "num_boxes"), [([1, 2], 1.5), ([1, 0], 1.0)])
def test_set_criterion_num_boxes_over_ranks_as_detr(counts, num_boxes):
    """num_boxes = max(all-reduced count / world size, 1): 3 boxes on 2 ranks give 1.5;
    1 box gives 1 (DETR clamps after dividing by the world size)."""
    from _distributed import run_distributed

    for ours, local_sum in run_distributed(_rank_num_boxes, counts):
        assert ours == pytest.approx(local_sum / num_boxes, rel=1e-9)
