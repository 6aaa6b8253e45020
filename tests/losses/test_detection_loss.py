"""DetectionLoss / detection_loss against slow per-image float64 references."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from _distributed import run_distributed
from _references import iou_family_reference
from detloss.losses.detection import DetectionLoss, detection_loss
from detloss.match.matching import Matching
from detloss.match.modules import HungarianMatcher, MaxIoUMatcher

DEFAULT_LOC = {"l1": 5.0, "giou": 2.0}
ALL_LOC = {"l1": 5.0, "smooth_l1": 0.5, "iou": 1.0, "giou": 2.0, "diou": 0.7, "ciou": 0.3}
DTYPE = torch.float64


# --------------------------------------------------------------------------------------
# data


def random_boxes(gen: torch.Generator, *shape: int) -> torch.Tensor:
    xy = torch.rand(*shape, 2, generator=gen, dtype=DTYPE)
    wh = 0.05 + 0.4 * torch.rand(*shape, 2, generator=gen, dtype=DTYPE)
    return torch.cat((xy, xy + wh), dim=-1)


def make_batch(seed=0, counts=(3, 0, 2), m=6, c=4, background="last", dtype=DTYPE):
    gen = torch.Generator().manual_seed(seed)
    b = len(counts)
    k = c if background == "none" else c + 1
    outputs = {
        "pred_logits": torch.randn(b, m, k, generator=gen, dtype=DTYPE).to(dtype),
        "pred_boxes": random_boxes(gen, b, m).to(dtype),
    }
    targets = [
        {
            "boxes": random_boxes(gen, n).to(dtype),
            "labels": torch.randint(0, c, (n,), generator=gen),
        }
        for n in counts
    ]
    return outputs, targets


def padded_of(targets):
    n = max(len(t["labels"]) for t in targets)
    b = len(targets)
    boxes = torch.zeros(b, n, 4, dtype=targets[0]["boxes"].dtype)
    labels = torch.zeros(b, n, dtype=torch.long)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for i, t in enumerate(targets):
        k = len(t["labels"])
        boxes[i, :k], labels[i, :k], mask[i, :k] = t["boxes"], t["labels"], True
    return {"boxes": boxes, "labels": labels, "mask": mask}


def hungarian_matching(outputs, targets):
    return HungarianMatcher()(outputs, targets)


def iou_matching(outputs, targets, anchors):
    return MaxIoUMatcher(pos_threshold=0.5, neg_threshold=0.3)(outputs, targets, anchors)


def anchor_batch(seed=0):
    """Anchors near the targets so that the max-IoU matching (0.5 / 0.3) has positive,
    background and ignored predictions."""
    gen = torch.Generator().manual_seed(seed)
    outputs, targets = make_batch(seed, counts=(3, 2, 0), m=12)
    anchors = random_boxes(gen, 12)
    anchors[0:3] = targets[0]["boxes"] + 0.001
    anchors[3:5] = targets[1]["boxes"] - 0.001
    # The target widened 2.5 times: IoU 0.4, inside the ignored band.
    for row, box in ((5, targets[0]["boxes"][1]), (6, targets[1]["boxes"][0])):
        anchors[row] = box
        anchors[row, 2] = box[0] + 2.5 * (box[2] - box[0])
    return outputs, targets, anchors


# --------------------------------------------------------------------------------------
# slow references (plain Python floats, one prediction at a time)


def convert(box, fmt_in, fmt_out):
    if fmt_in == "xyxy":
        x1, y1, x2, y2 = box
    elif fmt_in == "xywh":
        x1, y1, x2, y2 = box[0], box[1], box[0] + box[2], box[1] + box[3]
    else:
        x1, y1 = box[0] - box[2] / 2, box[1] - box[3] / 2
        x2, y2 = box[0] + box[2] / 2, box[1] + box[3] / 2
    if fmt_out == "xyxy":
        return [x1, y1, x2, y2]
    if fmt_out == "xywh":
        return [x1, y1, x2 - x1, y2 - y1]
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def ref_loc(name, pred, target, box_format, l1_format, beta):
    if name in ("l1", "smooth_l1"):
        p, t = convert(pred, box_format, l1_format), convert(target, box_format, l1_format)
        diffs = [abs(u - v) for u, v in zip(p, t)]
        if name == "l1":
            return sum(diffs)
        return sum(0.5 * d * d / beta if d < beta else d - 0.5 * beta for d in diffs)
    a, b = convert(pred, box_format, "xyxy"), convert(target, box_format, "xyxy")
    return 1 - iou_family_reference(a, b, name)


def ref_cls(x, cls, opts):
    """Loss of logit row ``x`` (a list) for class ``cls`` (None = background)."""
    k, bg = len(x), opts["background"]
    if bg == "last":
        col = k - 1 if cls is None else cls
    elif bg == "first":
        col = 0 if cls is None else cls + 1
    else:
        col = None if cls is None else cls
    kind = opts["cls_loss"]
    if kind in ("ce", "negative_prob"):
        top = max(x)
        logz = top + math.log(sum(math.exp(v - top) for v in x))
        logp = x[col] - logz
        return -logp if kind == "ce" else -math.exp(logp)
    total = 0.0
    for j, v in enumerate(x):
        t = 1.0 if j == col else 0.0
        p = 1 / (1 + math.exp(-v))
        bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        if kind == "bce":
            total += bce
            continue
        pt = p * t + (1 - p) * (1 - t)
        alpha = opts["focal_alpha"]
        weight = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
        total += weight * (1 - pt) ** opts["focal_gamma"] * bce
    return total


REF_DEFAULTS = {
    "cls_loss": "ce",
    "loc_losses": DEFAULT_LOC,
    "background": "last",
    "no_object_weight": 0.1,
    "class_weights": None,
    "hard_negative_ratio": None,
    "reduction": "mean",
    "box_format": "xyxy",
    "l1_format": None,
    "cls_weight": 1.0,
    "focal_alpha": 0.25,
    "focal_gamma": 2.0,
    "smooth_l1_beta": 1.0,
}


def ref_loss(outputs, targets, plans, **kwargs):
    """Slow reference. ``plans[b][i]`` is the list of N_b + 1 weights of prediction i
    (real targets of image b in order, then the background); hard matchings are turned
    into 0/1 rows by :func:`rows_of`. Returns ``(total, terms)`` as floats (per-image
    lists with reduction "none")."""
    opts = {**REF_DEFAULTS, **kwargs}
    l1_format = opts["l1_format"] or opts["box_format"]
    loc_names = list(opts["loc_losses"])
    ratio = opts["hard_negative_ratio"]
    no_obj = opts["no_object_weight"]
    per_image = []
    cls_norm_total = matched_total = 0.0
    for b, target in enumerate(targets):
        logits = outputs["pred_logits"][b].tolist()
        boxes = outputs["pred_boxes"][b].tolist()
        labels = target["labels"].tolist()
        tboxes = target["boxes"].tolist()
        n = len(labels)
        cls_sum = pos_weight = matched = bg_mass_total = 0.0
        loc = dict.fromkeys(loc_names, 0.0)
        bg_terms = []
        for i, row in enumerate(plans[b]):
            for j in range(n):
                w = row[j]
                if w == 0:
                    continue
                cw = 1.0 if opts["class_weights"] is None else opts["class_weights"][labels[j]]
                cls_sum += w * cw * ref_cls(logits[i], labels[j], opts)
                pos_weight += w * cw
                matched += w
                for name in loc_names:
                    loc[name] += w * ref_loc(
                        name,
                        boxes[i],
                        tboxes[j],
                        opts["box_format"],
                        l1_format,
                        opts["smooth_l1_beta"],
                    )
            if row[n] > 0:
                bg_terms.append((row[n] * ref_cls(logits[i], None, opts), row[n], i))
                bg_mass_total += row[n]
        if ratio is not None:
            # Visit by decreasing background term (ties: lower index first); keep while the
            # mass already taken is below ratio * matched.
            bg_terms.sort(key=lambda t: (-t[0], t[2]))
            kept, taken = [], 0.0
            for term, mass, _ in bg_terms:
                if taken < ratio * matched:
                    kept.append(term)
                taken += mass
        else:
            kept = [t[0] for t in bg_terms]
        cls_sum += no_obj * sum(kept)
        cls_norm = pos_weight
        if ratio is None and opts["background"] != "none":
            cls_norm += no_obj * bg_mass_total
        per_image.append((cls_sum, loc, cls_norm, matched))
        cls_norm_total += cls_norm
        matched_total += matched
    lw, cw_ = opts["loc_losses"], opts["cls_weight"]
    if opts["reduction"] == "none":
        terms = {"cls": [cw_ * p[0] for p in per_image]}
        for name in loc_names:
            terms[name] = [lw[name] * p[1][name] for p in per_image]
        total = [sum(terms[k][i] for k in terms) for i in range(len(targets))]
        return total, terms
    cls = sum(p[0] for p in per_image)
    loc = {name: sum(p[1][name] for p in per_image) for name in loc_names}
    if opts["reduction"] == "mean":
        positives_only = opts["background"] == "none" or ratio is not None
        cls = (
            cls / max(cls_norm_total, 1.0)
            if positives_only
            else (cls / cls_norm_total if cls_norm_total > 0 else 0.0)
        )
        loc = {k: v / max(matched_total, 1.0) for k, v in loc.items()}
    terms = {"cls": cw_ * cls, **{k: lw[k] * v for k, v in loc.items()}}
    return sum(terms.values()), terms


def rows_of(matching: Matching, targets):
    """0/1 plan rows over each image's real targets (+ background) from pred_to_target."""
    plans = []
    for b, target in enumerate(targets):
        n = len(target["labels"])
        real = torch.nonzero(matching.target_mask[b]).flatten().tolist()
        rows = []
        for t in matching.pred_to_target[b].tolist():
            row = [0.0] * (n + 1)
            if t >= 0:
                row[real.index(t)] = 1.0
            elif t == -1:
                row[n] = 1.0
            rows.append(row)
        plans.append(rows)
    return plans


def assert_matches_reference(got, ref, atol=1e-9):
    total, terms = got
    ref_total, ref_terms = ref
    assert set(terms) == set(ref_terms)
    for key, value in terms.items():
        assert torch.allclose(value, torch.tensor(ref_terms[key], dtype=value.dtype), atol=atol), (
            key
        )
    assert torch.allclose(total, torch.tensor(ref_total, dtype=total.dtype), atol=atol)


def strip(outputs, background):
    """Drop the background logit for background="none"."""
    if background != "none":
        return outputs
    return {**outputs, "pred_logits": outputs["pred_logits"][..., 1:]}


# --------------------------------------------------------------------------------------
# the reference, in every mode


CLS_MODES = [
    (cls_loss, background)
    for cls_loss in ("ce", "negative_prob", "focal", "bce")
    for background in ("last", "first", "none")
    if not (cls_loss in ("ce", "negative_prob") and background == "none")
]


@pytest.mark.parametrize("cls_loss, background", CLS_MODES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_hungarian_matching_matches_reference(background, cls_loss, reduction):
    outputs, targets = make_batch(1, background=background)
    matching = hungarian_matching(outputs, targets)
    kwargs = {"cls_loss": cls_loss, "background": background, "reduction": reduction}
    got = detection_loss(outputs, targets, matching, return_terms=True, **kwargs)
    assert_matches_reference(got, ref_loss(outputs, targets, rows_of(matching, targets), **kwargs))


@pytest.mark.parametrize("background", ["last", "first", "none"])
@pytest.mark.parametrize("ratio", [None, 1.0, 2.5])
@pytest.mark.parametrize("weighted", [False, True])
def test_max_iou_matching_with_ignored_matches_reference(background, ratio, weighted):
    outputs, targets, anchors = anchor_batch(2)
    outputs = strip(outputs, background)
    matching = iou_matching(outputs, targets, anchors)
    states = set(matching.pred_to_target.flatten().clamp(min=0).tolist()) | set(
        matching.pred_to_target.flatten().clamp(max=0).tolist()
    )
    assert {-2, -1, 0}.issubset(states)  # the fixture covers all three states
    kwargs = {
        "cls_loss": "focal" if background == "none" else "ce",
        "background": background,
        "hard_negative_ratio": ratio,
        "class_weights": [0.5, 2.0, 1.0, 3.0] if weighted else None,
        "no_object_weight": 0.3,
        "loc_losses": {"smooth_l1": 1.0, "iou": 2.0},
    }
    got = detection_loss(outputs, targets, matching, return_terms=True, **kwargs)
    assert_matches_reference(got, ref_loss(outputs, targets, rows_of(matching, targets), **kwargs))


@pytest.mark.parametrize(
    "box_format, l1_format",
    [("xyxy", None), ("cxcywh", None), ("xyxy", "cxcywh"), ("xywh", "xyxy")],
)
def test_every_loc_loss_and_format_matches_reference(box_format, l1_format):
    outputs, targets = make_batch(3)
    # Boxes stay valid in every format: reinterpret xyxy numbers as (x, y, w, h) etc.
    outputs["pred_boxes"] = outputs["pred_boxes"].clone()
    if box_format != "xyxy":
        outputs["pred_boxes"][..., 2:] = (
            outputs["pred_boxes"][..., 2:] - outputs["pred_boxes"][..., :2]
        )
        for t in targets:
            t["boxes"][..., 2:] = t["boxes"][..., 2:] - t["boxes"][..., :2]
    matching = hungarian_matching(outputs, targets)
    kwargs = {
        "loc_losses": ALL_LOC,
        "box_format": box_format,
        "l1_format": l1_format,
        "smooth_l1_beta": 0.2,
        "cls_weight": 2.0,
    }
    got = detection_loss(outputs, targets, matching, return_terms=True, **kwargs)
    assert_matches_reference(got, ref_loss(outputs, targets, rows_of(matching, targets), **kwargs))


def test_class_weights_and_focal_options_match_reference():
    outputs, targets = make_batch(4, counts=(4, 3), c=5, background="none")
    matching = hungarian_matching(outputs, targets)
    kwargs = {
        "cls_loss": "focal",
        "background": "none",
        "class_weights": torch.tensor([1.0, 0.5, 2.0, 0.0, 1.5]),
        "no_object_weight": 1.0,
        "focal_alpha": None,
        "focal_gamma": 0.5,
    }
    got = detection_loss(outputs, targets, matching, return_terms=True, **kwargs)
    ref_kwargs = {**kwargs, "class_weights": kwargs["class_weights"].tolist()}
    assert_matches_reference(
        got, ref_loss(outputs, targets, rows_of(matching, targets), **ref_kwargs)
    )


def test_weighted_mean_is_torch_weighted_cross_entropy():
    """No localisation: the mean classification term is F.cross_entropy with a weight vector."""
    outputs, targets = make_batch(5, counts=(2, 3), c=3)
    matching = hungarian_matching(outputs, targets)
    weights = [0.5, 2.0, 1.5]
    loss = detection_loss(
        outputs, targets, matching, loc_losses={}, class_weights=weights, no_object_weight=0.25
    )
    classes = torch.full((2, 6), 3)
    for b, (pred, tgt) in enumerate(matching.pairs()):
        classes[b, pred] = targets[b]["labels"][tgt]
    weight = torch.tensor([*weights, 0.25], dtype=DTYPE)
    expected = F.cross_entropy(outputs["pred_logits"].transpose(1, 2), classes, weight=weight)
    assert torch.allclose(loss, expected, atol=1e-12)


# --------------------------------------------------------------------------------------
# hard negative mining


def test_hard_negative_mining_keeps_the_ceil_of_ratio_times_positives():
    # One image, one positive (prediction 0) and five negatives of known background loss.
    bg_logits = torch.tensor([0.0, 3.0, -1.0, 2.0, -3.0, 1.0], dtype=DTYPE)
    logits = torch.stack((torch.zeros(6, dtype=DTYPE), bg_logits), dim=-1)[None]  # [1, 6, 2]
    outputs = {"pred_logits": logits, "pred_boxes": random_boxes(torch.Generator(), 1, 6)}
    targets = [{"boxes": outputs["pred_boxes"][0, :1], "labels": torch.tensor([0])}]
    matching = Matching(torch.tensor([[0, -1, -1, -1, -1, -1]]), torch.ones(1, 1, dtype=torch.bool))
    ce_bg = -F.log_softmax(logits[0], dim=-1)[:, 1]
    ce_pos = -F.log_softmax(logits[0], dim=-1)[0, 0]
    # The hardest negatives have the lowest background logit: 4 (-3), 2 (-1), 5 (1), 3, 1.
    for ratio, kept in [(1.0, [4]), (2.5, [4, 2, 5]), (3.0, [4, 2, 5]), (10.0, [4, 2, 5, 3, 1])]:
        options = {"loc_losses": {}, "no_object_weight": 1.0, "hard_negative_ratio": ratio}
        loss = detection_loss(outputs, targets, matching, **options, reduction="sum")
        assert torch.allclose(loss, ce_pos + ce_bg[kept].sum()), ratio
        # SSD's normalisation: divided by the number of positives (1) only.
        mean = detection_loss(outputs, targets, matching, **options)
        assert torch.allclose(mean, loss)


def test_hard_negative_mining_is_per_image_and_without_positives_keeps_nothing():
    outputs, targets = make_batch(6, counts=(2, 0, 1), m=8)
    matching = hungarian_matching(outputs, targets)
    terms = detection_loss(
        outputs, targets, matching, hard_negative_ratio=2.0, reduction="none", return_terms=True
    )[1]
    assert terms["cls"][1] == 0  # no positive in image 1, so no negative either
    ref = ref_loss(
        outputs, targets, rows_of(matching, targets), hard_negative_ratio=2.0, reduction="none"
    )
    assert torch.allclose(terms["cls"], torch.tensor(ref[1]["cls"], dtype=DTYPE))


# --------------------------------------------------------------------------------------
# soft plans


def soft_plan(matching: Matching, seed: int, sharp: float = 3.0) -> torch.Tensor:
    """A random row-stochastic plan over the real targets and the background."""
    gen = torch.Generator().manual_seed(seed)
    b, m = matching.pred_to_target.shape
    n = matching.target_mask.shape[1]
    scores = sharp * torch.randn(b, m, n + 1, generator=gen, dtype=DTYPE)
    allowed = torch.cat((matching.target_mask, torch.ones(b, 1, dtype=torch.bool)), dim=1)
    plan = scores.masked_fill(~allowed[:, None, :], -math.inf).softmax(-1)
    return plan


def plan_rows(plan, targets):
    rows = []
    for b, t in enumerate(targets):
        n = len(t["labels"])
        rows.append([[*r[:n], r[-1]] for r in plan[b].tolist()])
    return rows


def test_hand_made_plan():
    # One image, two predictions, two targets; prediction 0 is split 0.6 / 0.4 between
    # target 0 and the background, prediction 1 split 0.5 / 0.5 between both targets.
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]]], dtype=DTYPE)
    pred_boxes = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]]], dtype=DTYPE)
    targets = [
        {
            "boxes": torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0]], dtype=DTYPE),
            "labels": torch.tensor([0, 1]),
        }
    ]
    plan = torch.tensor([[[0.6, 0.0, 0.4], [0.5, 0.5, 0.0]]], dtype=DTYPE)
    matching = Matching(torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool), plan)
    outputs = {"pred_logits": logits, "pred_boxes": pred_boxes}
    loss, terms = detection_loss(
        outputs, targets, matching, loc_losses={"giou": 1.0}, return_terms=True
    )
    ce = -F.log_softmax(logits[0], dim=-1)
    cls_num = 0.6 * ce[0, 0] + 0.1 * 0.4 * ce[0, 2] + 0.5 * ce[1, 0] + 0.5 * ce[1, 1]
    cls_den = 0.6 + 0.1 * 0.4 + 0.5 + 0.5
    # GIoU losses of the REFERENCES table: [0,0,2,2] vs [1,1,3,3] 1.0793651;
    # [0,0,1,1] vs [1,1,3,3]: IoU 0, enclosing 9, union 5 -> 1 + 4/9;
    # [0,0,1,1] vs [2,0,3,1]: 1.3333333.
    giou_num = 0.6 * 1.0793651 + 0.5 * (1 + 4 / 9) + 0.5 * (4 / 3)
    assert torch.allclose(terms["cls"], cls_num / cls_den)
    assert torch.allclose(terms["giou"], torch.tensor(giou_num / 1.6, dtype=DTYPE), atol=1e-7)
    assert torch.allclose(loss, terms["cls"] + terms["giou"])


@pytest.mark.parametrize("background", ["last", "first", "none"])
@pytest.mark.parametrize("ratio", [None, 0.5, 2.0])
def test_soft_plan_matches_reference(background, ratio):
    outputs, targets = make_batch(7, counts=(3, 0, 2), m=7, background=background)
    matching = hungarian_matching(outputs, targets)
    plan = soft_plan(matching, 7)
    soft = Matching(matching.pred_to_target, matching.target_mask, plan)
    kwargs = {
        "cls_loss": "bce" if background == "none" else "ce",
        "background": background,
        "hard_negative_ratio": ratio,
        "class_weights": [1.0, 2.0, 0.5, 1.0],
        "loc_losses": ALL_LOC,
    }
    got = detection_loss(outputs, targets, soft, return_terms=True, **kwargs)
    assert_matches_reference(got, ref_loss(outputs, targets, plan_rows(plan, targets), **kwargs))


def test_soft_plan_in_target_blocks_equals_one_block(monkeypatch):
    # A plan over many targets is computed in blocks of targets, each recomputed in the
    # backward pass: the loss and the gradients equal the one-block computation.
    from detloss.losses import detection_terms as detection_module

    outputs, targets = make_batch(3, counts=(5, 0, 4), m=6)
    matching = hungarian_matching(outputs, targets)
    soft = Matching(matching.pred_to_target, matching.target_mask, soft_plan(matching, 3))
    kwargs = {"loc_losses": ALL_LOC, "hard_negative_ratio": 1.5, "class_weights": [1, 2, 1, 1]}

    def run():
        leaves = {k: v.detach().clone().requires_grad_() for k, v in outputs.items()}
        loss = detection_loss(leaves, targets, soft, **kwargs)
        loss.backward()
        return loss, leaves["pred_logits"].grad, leaves["pred_boxes"].grad

    whole = run()
    monkeypatch.setattr(detection_module, "_PAIR_BLOCK", 3 * 6 * 4 * 2)  # 2 targets a block
    for got, expected in zip(run(), whole, strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "cls_loss, background", [*CLS_MODES, ("callable", "last"), ("callable", "first")]
)
def test_hard_plan_equals_hard_path(cls_loss, background):
    if cls_loss == "callable":
        cls_loss = partial(F.multi_margin_loss, reduction="none")
    outputs, targets, anchors = anchor_batch(8)
    outputs = strip(outputs, background)
    matching = iou_matching(outputs, targets, anchors)
    planned = Matching(matching.pred_to_target, matching.target_mask, matching.hard_plan(DTYPE))
    for ratio in (None, 1.5):
        kwargs = {
            "cls_loss": cls_loss,
            "background": background,
            "hard_negative_ratio": ratio,
            "loc_losses": ALL_LOC,
            "class_weights": [1.0, 0.5, 2.0, 1.0],
        }
        hard = detection_loss(outputs, targets, matching, return_terms=True, **kwargs)
        soft = detection_loss(outputs, targets, planned, return_terms=True, **kwargs)
        for key in hard[1]:
            assert torch.allclose(hard[1][key], soft[1][key], rtol=1e-12, atol=1e-12), key


def test_plan_mass_on_padded_slots_counts_nowhere():
    outputs, targets = make_batch(9, counts=(3, 1))
    matching = hungarian_matching(outputs, targets)
    plan = soft_plan(matching, 9)
    leaky = plan.clone()
    leaky[1, :, 1:3] = 5.0  # padded slots of image 1
    a = detection_loss(
        outputs, targets, Matching(matching.pred_to_target, matching.target_mask, plan)
    )
    b = detection_loss(
        outputs, targets, Matching(matching.pred_to_target, matching.target_mask, leaky)
    )
    assert torch.allclose(a, b)


# --------------------------------------------------------------------------------------
# DETR's SetCriterion


def detr_reference(outputs, targets, pairs, num_classes, eos_coef=0.1):
    """DETR's criterion as published: CE with a no-object weight, L1 and GIoU on cxcywh
    boxes over the number of target boxes (clamped at 1)."""
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    classes = torch.full(logits.shape[:2], num_classes)
    src, tgt = [], []
    for b, (pred, target) in enumerate(pairs):
        classes[b, pred] = targets[b]["labels"][target]
        src.append(boxes[b, pred])
        tgt.append(targets[b]["boxes"][target])
    weight = torch.ones(num_classes + 1, dtype=logits.dtype)
    weight[-1] = eos_coef
    loss_ce = F.cross_entropy(logits.transpose(1, 2), classes, weight)
    src, tgt = torch.cat(src), torch.cat(tgt)
    num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
    loss_bbox = (src - tgt).abs().sum() / num_boxes

    def xyxy(b):
        return torch.cat((b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2), dim=-1)

    giou = torch.tensor(
        [
            iou_family_reference(a, c, "giou")
            for a, c in zip(xyxy(src).tolist(), xyxy(tgt).tolist())
        ],
        dtype=logits.dtype,
    )
    loss_giou = (1 - giou).sum() / num_boxes
    return {"cls": loss_ce, "l1": 5 * loss_bbox, "giou": 2 * loss_giou}


def test_detr_set_criterion():
    outputs, targets = make_batch(10, counts=(3, 1, 4), m=8, c=5)
    # DETR's boxes are normalised cxcywh.
    outputs["pred_boxes"] = torch.cat(
        (
            outputs["pred_boxes"][..., :2] + 0.2,
            outputs["pred_boxes"][..., 2:] - outputs["pred_boxes"][..., :2],
        ),
        -1,
    )
    for t in targets:
        t["boxes"] = torch.cat((t["boxes"][:, :2] + 0.2, t["boxes"][:, 2:] - t["boxes"][:, :2]), -1)
    loss_fn = DetectionLoss(HungarianMatcher(box_format="cxcywh"), box_format="cxcywh")
    total, terms = loss_fn(outputs, targets, return_terms=True)
    matching = HungarianMatcher(box_format="cxcywh")(outputs, targets)
    expected = detr_reference(outputs, targets, matching.pairs(), num_classes=5)
    for key, value in expected.items():
        assert torch.allclose(terms[key], value, atol=1e-12), key
    assert torch.allclose(total, sum(expected.values()))


# --------------------------------------------------------------------------------------
# structure: batching, permutations, module, aux outputs, anchors


def test_sum_over_batch_is_sum_of_images_and_none_is_per_image():
    outputs, targets = make_batch(11, counts=(3, 0, 2, 1))
    matching = hungarian_matching(outputs, targets)
    kwargs = {"loc_losses": ALL_LOC, "hard_negative_ratio": 2.0}
    batch = detection_loss(outputs, targets, matching, reduction="sum", **kwargs)
    per_image = detection_loss(outputs, targets, matching, reduction="none", **kwargs)
    singles = []
    for b in range(4):
        one = {k: v[b : b + 1] for k, v in outputs.items()}
        one_matching = hungarian_matching(one, targets[b : b + 1])
        singles.append(
            detection_loss(one, targets[b : b + 1], one_matching, reduction="sum", **kwargs)
        )
    assert per_image.shape == (4,)
    assert torch.allclose(per_image, torch.stack(singles))
    assert torch.allclose(batch, per_image.sum())


def test_permuting_targets_changes_nothing():
    outputs, targets = make_batch(12, counts=(4, 3))
    loss_fn = DetectionLoss(
        HungarianMatcher(), loc_losses=ALL_LOC, class_weights=[1.0, 2.0, 3.0, 0.5]
    )
    base = loss_fn(outputs, targets)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        permuted = []
        for t in targets:
            order = torch.randperm(len(t["labels"]), generator=gen)
            permuted.append({"boxes": t["boxes"][order], "labels": t["labels"][order]})
        assert torch.allclose(loss_fn(outputs, permuted), base, atol=1e-12)


def test_padded_targets_with_non_prefix_mask_equal_list():
    outputs, targets = make_batch(13, counts=(2, 3))
    padded = padded_of(targets)
    # Move image 0's objects to slots 1 and 2 and put garbage in its empty slot 0.
    padded["boxes"][0] = torch.cat(
        (torch.full((1, 4), float("nan"), dtype=DTYPE), padded["boxes"][0, :2])
    )
    padded["labels"][0] = torch.tensor([99, *padded["labels"][0, :2].tolist()])
    padded["mask"][0] = torch.tensor([False, True, True])
    loss_fn = DetectionLoss(HungarianMatcher(), loc_losses=ALL_LOC)
    assert torch.allclose(loss_fn(outputs, padded), loss_fn(outputs, targets))
    matching = hungarian_matching(outputs, padded)
    plan = Matching(matching.pred_to_target, matching.target_mask, matching.hard_plan(DTYPE))
    soft = detection_loss(outputs, padded, plan, loc_losses=ALL_LOC)
    assert torch.allclose(soft, loss_fn(outputs, targets))


def test_extra_target_keys_are_ignored():
    outputs, targets = make_batch(14, counts=(2, 1))
    extended = [
        {**t, "image_id": torch.tensor([7]), "orig_size": torch.tensor([480, 640])} for t in targets
    ]
    loss_fn = DetectionLoss(HungarianMatcher())
    assert torch.allclose(loss_fn(outputs, extended), loss_fn(outputs, targets))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_module_equals_function(reduction):
    outputs, targets = make_batch(15)
    matcher = HungarianMatcher()
    settings = {
        "cls_loss": "focal",
        "loc_losses": {"giou": 1.0, "ciou": 0.5},
        "background": "last",
        "no_object_weight": 0.5,
        "class_weights": [1.0, 2.0, 1.0, 0.5],
        "hard_negative_ratio": 3.0,
        "reduction": reduction,
        "cls_weight": 2.0,
    }
    module = DetectionLoss(matcher, **settings)
    expected = detection_loss(outputs, targets, matcher(outputs, targets), **settings)
    assert torch.allclose(module(outputs, targets), expected)


def test_aux_outputs_are_matched_again_and_suffixed():
    outputs, targets = make_batch(16)
    layers = [make_batch(17 + i)[0] for i in range(2)]
    outputs = {**outputs, "aux_outputs": layers}
    calls = []
    matcher = HungarianMatcher()

    def counting_matcher(out, tgt):
        calls.append(out["pred_logits"])
        return matcher(out, tgt)

    loss_fn = DetectionLoss(counting_matcher, loc_losses={"l1": 5.0, "giou": 2.0})
    total, terms = loss_fn(outputs, targets, return_terms=True)
    assert len(calls) == 3
    assert sorted(terms) == sorted(
        [
            "cls",
            "l1",
            "giou",
            "cls_aux0",
            "l1_aux0",
            "giou_aux0",
            "cls_aux1",
            "l1_aux1",
            "giou_aux1",
        ]
    )
    for suffix, layer in [("", outputs), ("_aux0", layers[0]), ("_aux1", layers[1])]:
        plain = {k: layer[k] for k in ("pred_logits", "pred_boxes")}
        _, expected = detection_loss(plain, targets, matcher(plain, targets), return_terms=True)
        for key, value in expected.items():
            assert torch.allclose(terms[key + suffix], value), key + suffix
    assert torch.allclose(total, sum(terms.values()))
    # The function form reads aux_outputs only when given their matchings.
    main = detection_loss(outputs, targets, matcher(outputs, targets))
    assert torch.allclose(main, terms["cls"] + terms["l1"] + terms["giou"])
    with_aux = detection_loss(
        outputs,
        targets,
        matcher(outputs, targets),
        aux_matchings=[matcher(layer, targets) for layer in layers],
    )
    assert torch.allclose(with_aux, total)


def test_anchors_feed_the_matcher_only():
    outputs, targets, anchors = anchor_batch(18)
    loss_fn = DetectionLoss(MaxIoUMatcher(0.5, 0.3), loc_losses={"l1": 1.0, "giou": 1.0})
    matching = iou_matching(outputs, targets, anchors)
    expected = detection_loss(outputs, targets, matching, loc_losses={"l1": 1.0, "giou": 1.0})
    assert torch.allclose(loss_fn(outputs, targets, anchors), expected)
    batched = anchors.expand(3, -1, -1)
    assert torch.allclose(loss_fn(outputs, targets, batched), expected)
    # Ignored predictions enter no term: scrambling them changes nothing.
    ignored = matching.pred_to_target == -2
    assert bool(ignored.any())
    scrambled = {k: v.clone() for k, v in outputs.items()}
    scrambled["pred_logits"][ignored] = 100.0
    scrambled["pred_boxes"][ignored] = torch.tensor([5.0, 5.0, 9.0, 9.0], dtype=DTYPE)
    assert torch.allclose(loss_fn(scrambled, targets, anchors), expected)


def test_callable_cls_loss_equals_ce():
    outputs, targets = make_batch(19)
    matching = hungarian_matching(outputs, targets)
    ce = partial(F.cross_entropy, reduction="none")
    for background in ("last", "first"):
        a = detection_loss(outputs, targets, matching, cls_loss=ce, background=background)
        b = detection_loss(outputs, targets, matching, cls_loss="ce", background=background)
        assert torch.allclose(a, b)
        soft = Matching(matching.pred_to_target, matching.target_mask, soft_plan(matching, 1))
        a = detection_loss(outputs, targets, soft, cls_loss=ce, background=background)
        b = detection_loss(outputs, targets, soft, cls_loss="ce", background=background)
        assert torch.allclose(a, b)


def test_class_weights_buffer_follows_module():
    loss_fn = DetectionLoss(HungarianMatcher(), class_weights=[1.0, 2.0, 1.0, 1.0])
    assert "class_weights" in loss_fn.state_dict()
    loss_fn = loss_fn.to(torch.float64)
    assert loss_fn.class_weights.dtype == torch.float64
    assert "HungarianMatcher" in repr(loss_fn) and "loc_losses={'l1': 5.0, 'giou': 2.0}" in repr(
        loss_fn
    )


def test_default_loc_losses_cannot_be_mutated_through_a_module():
    loss_fn = DetectionLoss(HungarianMatcher())
    loss_fn.loc_losses["l1"] = 0.0
    assert DetectionLoss(HungarianMatcher()).loc_losses == {"l1": 5.0, "giou": 2.0}


# --------------------------------------------------------------------------------------
# edge cases: empty images, all padding, degenerate boxes, half precision, gradients


def finite_loss_and_grads(outputs, targets, matching, **kwargs):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in outputs.items()}
    loss = detection_loss(leaves, targets, matching, **kwargs)
    loss.sum().backward()
    assert loss.grad_fn is not None
    assert bool(torch.isfinite(loss).all())
    for v in leaves.values():
        assert v.grad is not None and bool(torch.isfinite(v.grad).all())
    return loss


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"cls_loss": "focal", "background": "none"},
        {"hard_negative_ratio": 3.0},
        {"loc_losses": ALL_LOC},
    ],
)
def test_all_padding_batch_is_finite(kwargs):
    outputs, targets = make_batch(20, counts=(0, 0), background=kwargs.get("background", "last"))
    matching = hungarian_matching(outputs, targets)
    assert matching.target_mask.shape == (2, 0)
    loss = finite_loss_and_grads(outputs, targets, matching, **kwargs)
    if kwargs.get("hard_negative_ratio"):
        assert loss.item() == 0.0  # no positive, so no negative is kept
    soft = Matching(matching.pred_to_target, matching.target_mask, matching.hard_plan(DTYPE))
    assert torch.allclose(finite_loss_and_grads(outputs, targets, soft, **kwargs), loss)


def test_everything_ignored_is_a_zero_in_the_graph():
    outputs, targets = make_batch(21)
    matching = Matching(torch.full((3, 6), -2), hungarian_matching(outputs, targets).target_mask)
    for reduction in ("mean", "sum"):
        loss = finite_loss_and_grads(
            outputs, targets, matching, reduction=reduction, loc_losses=ALL_LOC
        )
        assert loss.item() == 0.0


def test_no_predictions():
    outputs, targets = make_batch(22, m=0)
    matching = hungarian_matching(outputs, targets)
    loss = finite_loss_and_grads(outputs, targets, matching)
    assert loss.item() == 0.0


def test_degenerate_boxes_have_finite_values_and_gradients():
    outputs, targets = make_batch(23, counts=(3, 2))
    boxes = outputs["pred_boxes"].clone()
    boxes[0, 0] = torch.tensor([0.5, 0.5, 0.5, 0.5])  # a point
    boxes[0, 1] = torch.tensor([0.6, 0.2, 0.4, 0.1])  # inverted
    boxes[1, 0] = torch.tensor([0.1, 0.1, 0.1, 0.9])  # a line
    outputs["pred_boxes"] = boxes
    targets[0]["boxes"][0] = torch.tensor([0.3, 0.3, 0.3, 0.3])
    matching = hungarian_matching(outputs, targets)
    finite_loss_and_grads(outputs, targets, matching, loc_losses=ALL_LOC)
    forced = Matching(
        torch.tensor([[0, 1, 2, -1, -1, -1], [0, 1, -1, -1, -1, -1]]), matching.target_mask
    )
    finite_loss_and_grads(outputs, targets, forced, loc_losses=ALL_LOC)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    outputs, targets = make_batch(24, dtype=torch.float32)
    matching = hungarian_matching(outputs, targets)
    half = {k: v.to(dtype) for k, v in outputs.items()}
    rounded = {k: v.float() for k, v in half.items()}
    loss = detection_loss(half, targets, matching, loc_losses=ALL_LOC)
    assert loss.dtype == torch.float32
    expected = detection_loss(rounded, targets, matching, loc_losses=ALL_LOC)
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert detection_loss(outputs, targets, matching).dtype == torch.float32


@pytest.mark.parametrize("soft", [False, True])
def test_gradcheck(soft):
    outputs, targets = make_batch(25, counts=(2, 1), m=4, c=3)
    matching = hungarian_matching(outputs, targets)
    if soft:
        matching = Matching(
            matching.pred_to_target, matching.target_mask, soft_plan(matching, 2, 1.0)
        )
    names = ("pred_logits", "pred_boxes")

    def fn(logits, boxes):
        return detection_loss(
            {"pred_logits": logits, "pred_boxes": boxes},
            targets,
            matching,
            cls_loss="focal",
            loc_losses={"l1": 1.0, "smooth_l1": 1.0, "giou": 1.0, "diou": 1.0},
            smooth_l1_beta=0.05,
            hard_negative_ratio=1.0,
        )

    inputs = tuple(outputs[k].detach().clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


@given(
    seed=st.integers(0, 10_000),
    counts=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    background=st.sampled_from(["last", "first", "none"]),
    ratio=st.sampled_from([None, 1.0, 3.0]),
    reduction=st.sampled_from(["mean", "sum"]),
)
def test_property_random_matchings_hard_equals_plan_equals_reference(
    seed, counts, background, ratio, reduction
):
    outputs, targets = make_batch(seed, counts=tuple(counts), m=5, c=3, background=background)
    gen = torch.Generator().manual_seed(seed)
    b, n = len(counts), max(counts)
    p2t = torch.randint(-2, max(n, 1), (b, 5), generator=gen)
    for i, count in enumerate(counts):  # only real target slots may be matched
        p2t[i] = torch.where(p2t[i] >= count, -1, p2t[i])
    mask = torch.arange(n)[None, :] < torch.tensor(counts)[:, None]
    matching = Matching(p2t, mask)
    kwargs = {
        "cls_loss": "focal" if background == "none" else "ce",
        "background": background,
        "hard_negative_ratio": ratio,
        "reduction": reduction,
    }
    hard = detection_loss(outputs, targets, matching, return_terms=True, **kwargs)
    planned = Matching(p2t, mask, matching.hard_plan(DTYPE))
    soft = detection_loss(outputs, targets, planned, return_terms=True, **kwargs)
    assert torch.allclose(hard[0], soft[0], atol=1e-12)
    assert_matches_reference(hard, ref_loss(outputs, targets, rows_of(matching, targets), **kwargs))


# --------------------------------------------------------------------------------------
# distributed normalisation


def _ranks_worker(rank, world, outputs, targets):
    half = {k: v[2 * rank : 2 * rank + 2] for k, v in outputs.items()}
    local = targets[2 * rank : 2 * rank + 2]
    loss_fn = DetectionLoss(HungarianMatcher(), loc_losses=ALL_LOC)
    return loss_fn(half, local).item(), DetectionLoss(HungarianMatcher(), distributed=False)(
        half, local
    ).item()


def test_distributed_mean_over_ranks_equals_whole_batch():
    outputs, targets = make_batch(26, counts=(3, 0, 1, 4))
    results = run_distributed(_ranks_worker, outputs, targets)
    whole = DetectionLoss(HungarianMatcher(), loc_losses=ALL_LOC)(outputs, targets).item()
    assert math.isclose(sum(r[0] for r in results) / 2, whole, rel_tol=1e-10)
    # Per-rank normalisation would not (rank 0 holds 3 boxes, rank 1 holds 5).
    local = [r[1] for r in results]
    assert not math.isclose(
        sum(local) / 2,
        DetectionLoss(HungarianMatcher(), distributed=False)(outputs, targets).item(),
        rel_tol=1e-6,
    )


# --------------------------------------------------------------------------------------
# errors


def _ok():
    return make_batch(27, counts=(2, 1))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"reduction": "avg"}, ValueError, "reduction must be one of .* got 'avg'"),
        ({"background": "middle"}, ValueError, "background must be one of .* got 'middle'"),
        ({"cls_loss": "hinge"}, ValueError, "cls_loss must be one of .* got 'hinge'"),
        ({"cls_loss": 3}, TypeError, "cls_loss must be one of .* or a callable, got int"),
        (
            {"cls_loss": "ce", "background": "none"},
            ValueError,
            "background: cls_loss='ce' .* got 'none'",
        ),
        ({"cls_loss": F.cross_entropy, "background": "none"}, ValueError, "cls_loss=a callable"),
        ({"loc_losses": {"l2": 1.0}}, ValueError, "loc_losses key must be one of .* got 'l2'"),
        (
            {"loc_losses": ["l1"]},
            TypeError,
            "loc_losses must be a dict of name -> weight, got list",
        ),
        (
            {"loc_losses": {"l1": -1.0}},
            ValueError,
            r"loc_losses\['l1'\] must be a finite number >= 0, got -1.0",
        ),
        ({"loc_losses": {"l1": "5"}}, TypeError, r"loc_losses\['l1'\] must be a number, got str"),
        (
            {"no_object_weight": -0.1},
            ValueError,
            "no_object_weight must be a finite number >= 0, got -0.1",
        ),
        (
            {"cls_weight": float("nan")},
            ValueError,
            "cls_weight must be a finite number >= 0, got nan",
        ),
        ({"hard_negative_ratio": 0}, ValueError, r"hard_negative_ratio must be > 0 \(or None"),
        (
            {"hard_negative_ratio": -2.0},
            ValueError,
            "hard_negative_ratio must be a finite number >= 0, got -2.0",
        ),
        ({"box_format": "xxyy"}, ValueError, "box_format must be one of .* got 'xxyy'"),
        ({"l1_format": "yxyx"}, ValueError, "l1_format must be one of .* got 'yxyx'"),
        ({"focal_alpha": 1.5}, ValueError, r"focal_alpha must be in \[0, 1\] or None, got 1.5"),
        ({"focal_gamma": -1.0}, ValueError, "focal_gamma must be a finite number >= 0, got -1.0"),
        (
            {"smooth_l1_beta": -1.0},
            ValueError,
            "smooth_l1_beta must be a finite number >= 0, got -1.0",
        ),
    ],
)
def test_option_errors(kwargs, error, match):
    outputs, targets = _ok()
    matching = hungarian_matching(outputs, targets)
    with pytest.raises(error, match=match):
        detection_loss(outputs, targets, matching, **kwargs)
    with pytest.raises(error, match=match):
        DetectionLoss(HungarianMatcher(), **kwargs)


def test_input_errors():
    outputs, targets = _ok()
    matching = hungarian_matching(outputs, targets)
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    cases = [
        (
            [logits, boxes],
            TypeError,
            "outputs must be a dict with 'pred_logits' and 'pred_boxes', got list",
        ),
        ({"pred_logits": logits}, ValueError, r"outputs: missing keys \['pred_boxes'\]"),
        (
            {"pred_logits": logits[0], "pred_boxes": boxes},
            ValueError,
            r"outputs\['pred_logits'\]: expected shape \[B, M, C\], got \[6, 5\]",
        ),
        (
            {"pred_logits": logits, "pred_boxes": boxes[..., :3]},
            ValueError,
            r"outputs\['pred_boxes'\]: expected shape \[B, M, 4\], got \[2, 6, 3\]",
        ),
        (
            {"pred_logits": logits, "pred_boxes": boxes[:, :5]},
            ValueError,
            r"outputs\['pred_boxes'\]: expected shape \[2, 6, 4\] \(pred_logits' \[B, M\]\), got \[2, 5, 4\]",
        ),
        (
            {"pred_logits": logits.long(), "pred_boxes": boxes},
            TypeError,
            r"outputs\['pred_logits'\] must be a floating tensor, got torch.int64",
        ),
        (
            {"pred_logits": logits[..., :1], "pred_boxes": boxes},
            ValueError,
            r"expected C \+ 1 >= 2 logits .* got shape \[2, 6, 1\]",
        ),
    ]
    for bad, error, match in cases:
        with pytest.raises(error, match=match):
            detection_loss(bad, targets, matching)


def test_target_and_matching_errors():
    outputs, targets = _ok()
    matching = hungarian_matching(outputs, targets)
    bad_label = [targets[0], {"boxes": targets[1]["boxes"], "labels": torch.tensor([4])}]
    with pytest.raises(
        ValueError,
        match=r"targets\['labels'\]: expected class indices in \[0, 3\] \(C = 4 foreground classes\), got \[4\]",
    ):
        detection_loss(outputs, bad_label, matching)
    with pytest.raises(TypeError, match=r"targets\['labels'\] must be integers"):
        detection_loss(
            outputs,
            [{"boxes": t["boxes"], "labels": t["labels"].double()} for t in targets],
            matching,
        )
    with pytest.raises(ValueError, match="targets: expected 2 images"):
        detection_loss(outputs, targets[:1], matching)
    with pytest.raises(
        ValueError, match=r"class_weights: expected shape \[4\] \(one weight per foreground class"
    ):
        detection_loss(outputs, targets, matching, class_weights=[1.0, 1.0])
    with pytest.raises(
        ValueError,
        match=r"class_weights: expected finite weights >= 0, got \[1.0, -1.0, 1.0, 1.0\]",
    ):
        detection_loss(outputs, targets, matching, class_weights=[1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"class_weights: expected shape \[C\], got \[2, 2\]"):
        DetectionLoss(HungarianMatcher(), class_weights=[[1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(TypeError, match="matching must be a Matching, got tuple"):
        detection_loss(outputs, targets, matching.pairs()[0])
    short = Matching(matching.pred_to_target[:, :5], matching.target_mask)
    with pytest.raises(
        ValueError, match=r"matching.pred_to_target: expected shape \[2, 6\] .* got \[2, 5\]"
    ):
        detection_loss(outputs, targets, short)
    wide = Matching(matching.pred_to_target, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(
        ValueError, match=r"matching.target_mask: expected shape \[2, 2\] .* got \[2, 3\]"
    ):
        detection_loss(outputs, targets, wide)
    negative = Matching(matching.pred_to_target, matching.target_mask, -matching.hard_plan())
    with pytest.raises(ValueError, match=r"matching.plan: expected finite entries >= 0"):
        detection_loss(outputs, targets, negative)
    with pytest.raises(
        ValueError,
        match=r"cls_loss: a callable must return one loss per row, shape \[12\], got \[\]",
    ):
        detection_loss(outputs, targets, matching, cls_loss=F.cross_entropy)


def test_aux_and_matcher_errors():
    outputs, targets = _ok()
    matching = hungarian_matching(outputs, targets)
    with_aux = {**outputs, "aux_outputs": [outputs]}
    with pytest.raises(ValueError, match=r"aux_matchings: expected a list of 1 matchings .* got 2"):
        detection_loss(with_aux, targets, matching, aux_matchings=[matching, matching])
    with pytest.raises(
        ValueError, match=r"aux_matchings: expected a list of 1 matchings .* got a Matching"
    ):
        detection_loss(with_aux, targets, matching, aux_matchings=matching)
    with pytest.raises(
        TypeError, match=r"outputs\['aux_outputs'\] must be a list of dicts, got dict"
    ):
        DetectionLoss(HungarianMatcher())({**outputs, "aux_outputs": outputs}, targets)
    bad_layer = {**outputs, "aux_outputs": [{"pred_logits": outputs["pred_logits"]}]}
    with pytest.raises(
        ValueError, match=r"outputs\['aux_outputs'\]\[0\]: missing keys \['pred_boxes'\]"
    ):
        detection_loss(bad_layer, targets, matching, aux_matchings=[matching])
    with pytest.raises(TypeError, match="matcher must be callable, got str"):
        DetectionLoss("hungarian")
    with pytest.raises(TypeError, match="matcher must return a Matching, got list"):
        DetectionLoss(lambda o, t: hungarian_matching(o, t).pairs())(outputs, targets)


@pytest.mark.cuda
def test_cuda_follows_the_device():
    outputs, targets = make_batch(28, dtype=torch.float32)
    settings = {"loc_losses": ALL_LOC, "class_weights": [1.0, 2.0, 1.0, 0.5]}
    expected = DetectionLoss(HungarianMatcher(), **settings)(outputs, targets)
    loss_fn = DetectionLoss(HungarianMatcher(), **settings).cuda()
    on_device = {k: v.cuda() for k, v in outputs.items()}
    got = loss_fn(on_device, [{k: v.cuda() for k, v in t.items()} for t in targets])
    assert got.device.type == "cuda"
    assert torch.allclose(got.cpu(), expected, rtol=1e-5)
    matching = hungarian_matching(on_device, targets).to("cuda")
    soft = Matching(matching.pred_to_target, matching.target_mask, matching.hard_plan())
    assert torch.allclose(
        detection_loss(on_device, targets, soft, **settings).cpu(), expected, rtol=1e-5
    )


def test_function_module_and_options_share_names_and_defaults():
    import dataclasses
    import inspect

    from detloss.losses.detection_options import DetectionOptions

    function = inspect.signature(detection_loss).parameters
    module = inspect.signature(DetectionLoss).parameters
    fields = {f.name: f.default for f in dataclasses.fields(DetectionOptions)}
    for name, default in fields.items():
        assert function[name].default == default, name
        # The module's box_format defaults to its matcher's (None: inherit it).
        assert module[name].default == (None if name == "box_format" else default), name
    criterion = DetectionLoss(HungarianMatcher(), cls_loss="focal", background="none")
    assert isinstance(criterion.options, DetectionOptions)
    assert criterion.cls_loss == "focal" and criterion.focal_gamma == 2.0
    with pytest.raises(AttributeError):
        criterion.no_such_option  # noqa: B018


def test_module_scans_inputs_for_nan_once(monkeypatch):
    import detloss.losses.detection as detection_module
    import detloss.match.modules as modules_module

    calls = []

    def counting(original):
        def check(*named, **kwargs):
            calls.append([item[0] for item in named])
            return original(*named, **kwargs)

        return check

    monkeypatch.setattr(detection_module, "check_finite", counting(detection_module.check_finite))
    monkeypatch.setattr(modules_module, "check_finite", counting(modules_module.check_finite))
    g = torch.Generator().manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(2, 4, 3, generator=g),
        "pred_boxes": torch.rand(2, 4, 4, generator=g) * 0.5 + torch.tensor([0, 0, 0.5, 0.5]),
    }
    targets = [
        {"boxes": torch.tensor([[0.1, 0.1, 0.6, 0.7]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    matcher = HungarianMatcher()
    loss = DetectionLoss(matcher)(outputs, targets)
    assert torch.isfinite(loss)
    assert len(calls) == 1, calls
    assert matcher.validate is None  # restored after the call
    bad = dict(outputs, pred_boxes=outputs["pred_boxes"].clone())
    bad["pred_boxes"][1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"outputs\['pred_boxes'\]: expected finite"):
        DetectionLoss(matcher)(bad, targets)
