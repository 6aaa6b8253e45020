import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from _distributed import run_distributed
from detloss._kernels import reference_path
from detloss.anchors import ssd_priors
from detloss.batching import pad_targets
from detloss.boxes import box_convert, box_iou
from detloss.losses import ssd as ssd_module
from detloss.losses.regression import smooth_l1_loss
from detloss.losses.ssd import MultiBoxLoss, multibox_loss
from detloss.match import threshold_boxes
from detloss.match.threshold import max_iou
from detloss.match.threshold_boxes import max_iou_boxes

SMALL = {
    "image_size": 100,
    "feature_maps": (4, 2, 1),
    "steps": (25, 50, 100),
    "min_sizes": (20, 45, 70),
    "max_sizes": (45, 70, 95),
    "aspect_ratios": ((2,), (2, 3), (2,)),
}
PRIORS = ssd_priors(**SMALL, dtype=torch.float64)  # 92 priors
NUM_CLASSES = 5


def _match(priors, boxes, mask, threshold, sparse):
    """``pred_to_target [B, P]`` of the matching MultiBoxLoss runs, on the CPU strategy
    (``sparse``) or the reference one."""
    with reference_path(not sparse):
        return max_iou_boxes(
            priors, boxes, pos_threshold=threshold, target_mask=mask, validate=False
        ).pred_to_target


@pytest.fixture(autouse=True)
def one_thread():
    """Many small calls (gradcheck, references): a second intra-op thread only adds
    wake-up latency here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["sparse", "dense"])
def path(request):
    """Run a test through both implementations of the loss terms (the CPU one gathers
    the selected priors, the accelerator one masks every prior)."""
    with reference_path(request.param == "dense"):
        yield request.param


# --- the slow reference: the original SSD formulation, one image at a time -------------------


def reference_loss(loc, conf, priors, targets, threshold=0.5, ratio=3, variances=(0.1, 0.2)):
    """Per image: IoU, threshold, each ground truth forced onto its best prior in index
    order; offsets from the formula; Smooth-L1 on positives; background loss of every
    prior, positives zeroed, ranked by a double argsort; the top
    ``min(ratio * num_pos, P - num_pos)`` are the negatives; CE on both; / total
    positives (clamped at 1). Float64 throughout."""
    batch, num_priors, _ = conf.shape
    prior_xyxy = torch.cat(
        (priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2), 1
    )
    loc_total = conf_total = 0.0
    positives = 0
    for i in range(batch):
        boxes = targets[i]["boxes"].double()
        labels = targets[i]["labels"]
        target_class = torch.zeros(num_priors, dtype=torch.int64)
        matched = torch.zeros(num_priors, 4, dtype=torch.float64)
        if boxes.shape[0]:
            iou = box_iou(boxes, prior_xyxy)  # [n, P]
            best_prior = iou.argmax(dim=1)
            best_iou, best_gt = iou.max(dim=0)
            best_iou[best_prior] = 2.0
            for j in range(boxes.shape[0]):
                best_gt[best_prior[j]] = j
            target_class = torch.where(best_iou >= threshold, labels[best_gt] + 1, 0)
            matched = boxes[best_gt]
        pos = target_class > 0
        n_pos = int(pos.sum())
        positives += n_pos
        # Localisation.
        g, p = matched[pos], priors[pos]
        g_centre = (g[:, :2] + g[:, 2:]) / 2
        g_size = g[:, 2:] - g[:, :2]
        offsets = torch.cat(
            (
                (g_centre - p[:, :2]) / (variances[0] * p[:, 2:]),
                torch.log(g_size / p[:, 2:]) / variances[1],
            ),
            dim=1,
        )
        d = (loc[i][pos] - offsets).abs()
        loc_total += torch.where(d < 1, 0.5 * d**2, d - 0.5).sum()
        # Confidence with hard negative mining.
        lse = torch.logsumexp(conf[i], dim=1)
        ce = lse - conf[i].gather(1, target_class[:, None]).squeeze(1)
        rank_key = (lse - conf[i][:, 0]).detach().clone()
        rank_key[pos] = 0
        order = rank_key.argsort(descending=True)
        rank = order.argsort()
        n_neg = min(ratio * n_pos, num_priors - n_pos)
        neg = rank < n_neg
        conf_total += ce[pos | neg].sum()
    n = max(positives, 1)
    return loc_total / n, conf_total / n


def random_targets(g, batch, max_objects, priors=PRIORS, num_classes=NUM_CLASSES, distinct=True):
    """Random boxes; with ``distinct``, images where two boxes share their best prior are
    redrawn (the original rule and max_iou then agree)."""
    prior_xyxy = box_convert(priors, "cxcywh", "xyxy")
    targets = []
    while len(targets) < batch:
        n = int(torch.randint(0, max_objects + 1, (1,), generator=g))
        centre = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1
        size = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.5 + 0.1
        boxes = torch.cat((centre - size / 2, centre + size / 2), dim=1).clamp(0, 1)
        if distinct and n and box_iou(boxes, prior_xyxy).argmax(dim=1).unique().numel() < n:
            continue
        labels = torch.randint(0, num_classes - 1, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
    return targets


def count_positives(target, priors=PRIORS, threshold=0.5):
    """Priors matched to some box of one image (best priors distinct)."""
    if target["boxes"].shape[0] == 0:
        return 0
    iou = box_iou(target["boxes"], box_convert(priors, "cxcywh", "xyxy"))
    positive = iou.max(dim=0).values >= threshold
    positive[iou.argmax(dim=1)] = True
    return int(positive.sum())


def random_predictions(g, batch, priors=PRIORS, num_classes=NUM_CLASSES, dtype=torch.float64):
    loc = torch.randn(batch, priors.shape[0], 4, generator=g, dtype=torch.float64).to(dtype)
    conf = torch.randn(batch, priors.shape[0], num_classes, generator=g, dtype=torch.float64)
    return loc, conf.to(dtype)


# --- smooth L1 ------------------------------------------------------------------------------


def test_smooth_l1_hand_checked():
    d = torch.tensor([0.5, -2.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(
        smooth_l1_loss(d, torch.zeros(3, dtype=torch.float64), reduction="none"),
        torch.tensor([0.125, 1.5, 0.0], dtype=torch.float64),
    )
    assert smooth_l1_loss(torch.tensor(0.5), torch.tensor(0.0), beta=1 / 9).item() == pytest.approx(
        0.4444444, abs=1e-7
    )
    l1 = smooth_l1_loss(torch.tensor([0.5, -2.0]), torch.zeros(1), beta=0.0, reduction="none")
    torch.testing.assert_close(l1, torch.tensor([0.5, 2.0]))
    assert smooth_l1_loss(d, torch.zeros(3, dtype=torch.float64), reduction="sum").item() == 1.625
    mean = smooth_l1_loss(torch.zeros(0), torch.zeros(0), reduction="mean")
    assert mean.item() == 0.0
    half = smooth_l1_loss(
        torch.tensor([0.5, 2.0], dtype=torch.float16), torch.zeros(2, dtype=torch.float16)
    )
    assert half.dtype == torch.float16


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"beta": -1.0}, ValueError, r"beta must be a number >= 0, got -1.0"),
        (
            {"reduction": "avg"},
            ValueError,
            r"reduction must be one of 'none', 'mean', 'sum', got 'avg'",
        ),
        (
            {"target": torch.zeros(3)},
            ValueError,
            r"target: expected a shape broadcastable with input \[2\], got \[3\]",
        ),
        ({"input": [1.0, 2.0]}, TypeError, r"input must be a torch.Tensor, got list"),
    ],
)
def test_smooth_l1_errors(kwargs, error, match):
    args = {"input": torch.zeros(2), "target": torch.zeros(2), **kwargs}
    with pytest.raises(error, match=match):
        smooth_l1_loss(**args)


# --- matching -----------------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("block", [1 << 17, 37])
def test_match_equals_max_iou(sparse, block, monkeypatch):
    """The blocked, separable matching is max_iou on the full IoU, shared best priors,
    degenerate boxes, garbage in padded slots and threshold 0 included."""
    monkeypatch.setattr(threshold_boxes, "_CPU_BLOCK", block)
    g = torch.Generator().manual_seed(1)
    prior_xyxy = box_convert(PRIORS, "cxcywh", "xyxy")
    shared_seen = 0
    for trial in range(60):
        batch, slots = 3, int(torch.randint(0, 7, (1,), generator=g))
        centre = torch.rand(batch, slots, 2, generator=g, dtype=torch.float64)
        size = torch.rand(batch, slots, 2, generator=g, dtype=torch.float64) * 0.6
        if trial % 4 == 0:
            size[..., 0] *= torch.rand(batch, slots, generator=g) > 0.3  # zero widths
        boxes = torch.cat((centre - size / 2, centre + size / 2), dim=-1)
        if trial % 3 == 0 and slots > 1:
            boxes[:, 1] = boxes[:, 0] + 0.01  # shares the best prior of slot 0
        mask = torch.rand(batch, slots, generator=g) > 0.25
        garbage = torch.where(mask[..., None], boxes, torch.full_like(boxes, float("nan")))
        threshold = (0.5, 0.35, 0.0)[trial % 3]
        clean = torch.where(mask[..., None], boxes, 0.0)
        expected = max_iou(box_iou(prior_xyxy, clean), threshold, target_mask=mask).pred_to_target
        got = _match(prior_xyxy, garbage, mask, threshold, sparse)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        best = box_iou(prior_xyxy, clean).argmax(dim=1)
        shared_seen += int(
            any(len(set(best[b][mask[b]].tolist())) < int(mask[b].sum()) for b in range(batch))
        )
    assert shared_seen > 5


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("window", [2, 32])
def test_match_with_more_targets_than_priors_equals_brute_force(sparse, window, monkeypatch):
    """150 targets on 92 priors: most share a best prior, contested targets run out of
    candidates (short windows recompute their columns) and, with no positive IoU left,
    take the lowest free priors; checked against the one-claim-at-a-time reference."""
    from _references import forced_reference
    from detloss.match import threshold as threshold_module

    monkeypatch.setattr(threshold_module, "_WINDOW", window)
    g = torch.Generator().manual_seed(4)
    prior_xyxy = box_convert(PRIORS, "cxcywh", "xyxy")
    centre = torch.rand(1, 150, 2, generator=g, dtype=torch.float64)
    size = torch.rand(1, 150, 2, generator=g, dtype=torch.float64) * 0.3 + 0.02
    boxes = torch.cat((centre - size / 2, centre + size / 2), dim=-1)
    mask = torch.rand(1, 150, generator=g) > 0.1
    got = _match(prior_xyxy, boxes, mask, 0.5, sparse)[0]
    iou = box_iou(prior_xyxy, boxes[0]).masked_fill(~mask[0], -1.0)
    best_iou, best_target = iou.max(dim=1)
    expected = torch.where(best_iou >= 0.5, best_target, -1)
    forced = forced_reference(
        box_iou(prior_xyxy, boxes[0]).numpy(), mask[0].numpy(), np.ones(92, dtype=bool)
    )
    expected = torch.where(torch.from_numpy(forced) >= 0, torch.from_numpy(forced), expected)
    assert bool((got >= 0).all())  # more real targets than priors: every prior is forced
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_two_targets_sharing_a_best_prior_both_keep_a_prior(path):
    """ssd.pytorch's loop hands a shared best prior to the later target, and the earlier
    one can end with no prior at all; max_iou hands it to the higher IoU and moves the
    other target to its best free prior."""
    priors = ssd_priors(
        image_size=100,
        feature_maps=(2,),
        steps=(50,),
        min_sizes=(50,),
        max_sizes=None,
        aspect_ratios=((),),
        dtype=torch.float64,
    )  # four 0.5-wide squares, prior 0 at the top left
    # Both boxes lie inside prior 0 only: IoU 0.81 and 0.64 with it, 0 with the others.
    boxes = torch.tensor([[0.05, 0.05, 0.5, 0.5], [0.0, 0.0, 0.4, 0.4]], dtype=torch.float64)
    prior_xyxy = box_convert(priors, "cxcywh", "xyxy")
    iou = box_iou(boxes, prior_xyxy)
    torch.testing.assert_close(iou[:, 0], torch.tensor([0.81, 0.64], dtype=torch.float64))
    # The original rule: prior 0 goes to target 1; target 0 keeps nothing.
    best_iou, best_gt = iou.max(dim=0)
    best_iou[iou.argmax(dim=1)] = 2.0
    for j in range(2):
        best_gt[iou.argmax(dim=1)[j]] = j
    assert torch.where(best_iou >= 0.5, best_gt, -1).tolist() == [1, -1, -1, -1]
    # Ours: target 0 (higher IoU) keeps prior 0, target 1 takes its best free prior, 1.
    mask = torch.ones(1, 2, dtype=torch.bool)
    for sparse in (True, False):
        assigned = _match(prior_xyxy, boxes[None], mask, 0.5, sparse)
        assert assigned.tolist() == [[0, 1, -1, -1]]
    targets = [{"boxes": boxes, "labels": torch.tensor([0, 1])}]
    loc, conf = random_predictions(torch.Generator().manual_seed(0), 1, priors)
    _, terms = multibox_loss(loc, conf, priors, targets, return_terms=True)
    # Two positives (each target has its prior), so both sums are divided by 2.
    log_prob = conf[0].log_softmax(dim=-1)
    negatives = -log_prob[2:, 0]  # 2 non-positives, fewer than 3 * 2: both are mined
    expected_conf = (-log_prob[0, 1] - log_prob[1, 2] + negatives.sum()) / 2
    torch.testing.assert_close(terms["conf"], expected_conf)


# --- the loss against the slow reference ----------------------------------------------------


def test_loss_equals_slow_reference(path):
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        targets = random_targets(g, batch=4, max_objects=5)
        loc, conf = random_predictions(g, 4)
        ref_loc, ref_conf = reference_loss(loc, conf, PRIORS, targets)
        total, terms = multibox_loss(loc, conf, PRIORS, targets, return_terms=True)
        torch.testing.assert_close(terms["loc"], ref_loc, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(terms["conf"], ref_conf, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(total, ref_loc + ref_conf, rtol=1e-6, atol=1e-6)


def test_gradients_equal_slow_reference(path):
    g = torch.Generator().manual_seed(3)
    targets = random_targets(g, batch=3, max_objects=4)
    loc, conf = random_predictions(g, 3)
    loc_a, conf_a = loc.clone().requires_grad_(), conf.clone().requires_grad_()
    loc_b, conf_b = loc.clone().requires_grad_(), conf.clone().requires_grad_()
    multibox_loss(loc_a, conf_a, PRIORS, targets, loc_weight=0.7).backward()
    ref_loc, ref_conf = reference_loss(loc_b, conf_b, PRIORS, targets)
    (ref_conf + 0.7 * ref_loc).backward()
    torch.testing.assert_close(loc_a.grad, loc_b.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(conf_a.grad, conf_b.grad, rtol=1e-6, atol=1e-9)


def test_negative_cap_is_non_positive_count(path):
    """With few priors, 3 * num_pos exceeds the non-positives: every non-positive is a
    negative (the cap is P - num_pos), and the loss still equals the reference."""
    priors = ssd_priors(
        image_size=100,
        feature_maps=(2,),
        steps=(50,),
        min_sizes=(50,),
        max_sizes=None,
        aspect_ratios=((2,),),
        dtype=torch.float64,
    )  # 12 priors
    g = torch.Generator().manual_seed(5)
    targets = random_targets(g, batch=2, max_objects=3, priors=priors)
    loc, conf = random_predictions(g, 2, priors)
    _, terms = multibox_loss(loc, conf, priors, targets, return_terms=True)
    ref_loc, ref_conf = reference_loss(loc, conf, priors, targets)
    torch.testing.assert_close(terms["conf"], ref_conf, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["loc"], ref_loc, rtol=1e-6, atol=1e-6)


def test_batch_is_the_positive_weighted_sum_of_images(path):
    g = torch.Generator().manual_seed(7)
    targets = random_targets(g, batch=4, max_objects=4)
    targets[2] = {
        "boxes": torch.zeros(0, 4, dtype=torch.float64),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    loc, conf = random_predictions(g, 4)
    batch_total = multibox_loss(loc, conf, PRIORS, targets)
    sums, positives = [], 0
    for i in range(4):
        one = multibox_loss(loc[i : i + 1], conf[i : i + 1], PRIORS, targets[i : i + 1])
        n_i = count_positives(targets[i])
        sums.append(one * max(n_i, 1))
        positives += n_i
    torch.testing.assert_close(batch_total, sum(sums) / positives)


def test_permuting_targets_or_images_changes_nothing(path):
    g = torch.Generator().manual_seed(11)
    targets = random_targets(g, batch=3, max_objects=5)
    loc, conf = random_predictions(g, 3)
    base = multibox_loss(loc, conf, PRIORS, targets)
    shuffled = []
    for t in targets:
        perm = torch.randperm(t["boxes"].shape[0], generator=g)
        shuffled.append({"boxes": t["boxes"][perm], "labels": t["labels"][perm]})
    torch.testing.assert_close(multibox_loss(loc, conf, PRIORS, shuffled), base)
    order = [2, 0, 1]
    torch.testing.assert_close(
        multibox_loss(loc[order], conf[order], PRIORS, [targets[i] for i in order]), base
    )


@given(st.integers(0, 10_000))
def test_property_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    targets = random_targets(g, batch=2, max_objects=4)
    loc, conf = random_predictions(g, 2)
    ratio = [1, 2, 3][seed % 3]
    threshold = [0.5, 0.4][seed % 2]
    ref_loc, ref_conf = reference_loss(loc, conf, PRIORS, targets, threshold=threshold, ratio=ratio)
    _, terms = multibox_loss(
        loc,
        conf,
        PRIORS,
        targets,
        pos_threshold=threshold,
        hard_negative_ratio=ratio,
        return_terms=True,
    )
    torch.testing.assert_close(terms["loc"], ref_loc, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["conf"], ref_conf, rtol=1e-6, atol=1e-6)


def test_padded_targets_equal_list_targets(path):
    g = torch.Generator().manual_seed(13)
    targets = random_targets(g, batch=3, max_objects=4)
    loc, conf = random_predictions(g, 3)
    padded = pad_targets(targets, key="boxes")
    # Move the real objects to the end (the mask need not be a prefix) and fill the
    # padding with garbage.
    flipped = {k: v.flip(1) for k, v in padded.items()}
    flipped["boxes"] = torch.where(flipped["mask"][..., None], flipped["boxes"], 7.0)
    expected = multibox_loss(loc, conf, PRIORS, targets)
    torch.testing.assert_close(multibox_loss(loc, conf, PRIORS, padded), expected)
    torch.testing.assert_close(multibox_loss(loc, conf, PRIORS, flipped), expected)


# --- images without objects, degenerate boxes, dtypes ---------------------------------------


def empty_targets(batch):
    return [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
        for _ in range(batch)
    ]


def test_batch_without_objects_is_a_zero_in_the_graph(path):
    g = torch.Generator().manual_seed(0)
    loc, conf = random_predictions(g, 2, dtype=torch.float32)
    loc.requires_grad_()
    conf.requires_grad_()
    total, terms = multibox_loss(loc, conf, PRIORS.float(), empty_targets(2), return_terms=True)
    assert total.item() == 0.0 and terms["loc"].item() == 0.0 and terms["conf"].item() == 0.0
    assert total.requires_grad
    total.backward()
    assert bool((loc.grad == 0).all()) and bool((conf.grad == 0).all())


def test_min_negatives_learns_background_without_objects(path):
    g = torch.Generator().manual_seed(0)
    loc, conf = random_predictions(g, 2)
    _, terms = multibox_loss(
        loc, conf, PRIORS, empty_targets(2), min_negatives=5, return_terms=True
    )
    background = torch.logsumexp(conf, dim=-1) - conf[..., 0]
    expected = background.topk(5, dim=1).values.sum()  # normaliser clamped at 1
    torch.testing.assert_close(terms["conf"], expected)
    assert terms["loc"].item() == 0.0


def test_empty_image_in_a_batch_gets_no_gradient(path):
    g = torch.Generator().manual_seed(2)
    targets = random_targets(g, batch=2, max_objects=3)
    targets[0] = {
        "boxes": torch.zeros(0, 4, dtype=torch.float64),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    targets[1] = (
        random_targets(g, batch=1, max_objects=3)[0]
        if targets[1]["boxes"].shape[0] == 0
        else targets[1]
    )
    loc, conf = random_predictions(g, 2)
    loc.requires_grad_()
    conf.requires_grad_()
    multibox_loss(loc, conf, PRIORS, targets).backward()
    assert bool((conf.grad[0] == 0).all()) and bool((loc.grad[0] == 0).all())
    assert bool(conf.grad[1].abs().sum() > 0)


def test_degenerate_boxes_give_finite_loss_and_gradients(path):
    targets = [
        {
            "boxes": torch.tensor(
                [[0.3, 0.3, 0.3, 0.6], [0.5, 0.5, 0.5, 0.5], [0.7, 0.7, 0.6, 0.6]]
            ),
            "labels": torch.tensor([0, 1, 2]),
        },
        {"boxes": torch.tensor([[0.1, 0.1, 0.6, 0.6]]), "labels": torch.tensor([3])},
    ]
    g = torch.Generator().manual_seed(0)
    loc, conf = random_predictions(g, 2, dtype=torch.float32)
    loc.requires_grad_()
    conf.requires_grad_()
    total = multibox_loss(loc, conf, PRIORS.float(), targets)
    assert bool(torch.isfinite(total))
    total.backward()
    assert bool(torch.isfinite(loc.grad).all()) and bool(torch.isfinite(conf.grad).all())


def test_half_precision_is_computed_in_float32(path):
    g = torch.Generator().manual_seed(4)
    targets = random_targets(g, batch=2, max_objects=3)
    loc, conf = random_predictions(g, 2, dtype=torch.float32)
    expected = multibox_loss(loc, conf, PRIORS.float(), targets)
    half = multibox_loss(loc.half(), conf.half(), PRIORS.half(), targets)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), expected, rtol=2e-2, atol=2e-2)
    bf = multibox_loss(loc.bfloat16(), conf.bfloat16(), PRIORS.float(), targets)
    assert bf.dtype == torch.bfloat16


def test_gradcheck(path):
    priors = ssd_priors(
        image_size=100,
        feature_maps=(2,),
        steps=(50,),
        min_sizes=(40,),
        max_sizes=(70,),
        aspect_ratios=((2,),),
        dtype=torch.float64,
    )  # 16 priors keep the numerical Jacobian small
    g = torch.Generator().manual_seed(9)
    targets = random_targets(g, batch=2, max_objects=2, priors=priors, num_classes=3)
    loc, conf = random_predictions(g, 2, priors, num_classes=3)
    loc.requires_grad_()
    conf.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: multibox_loss(a, b, priors, targets), (loc, conf))


# --- settings, module, errors ---------------------------------------------------------------


def test_loc_weight_and_float_ratio():
    g = torch.Generator().manual_seed(6)
    targets = random_targets(g, batch=2, max_objects=4)
    loc, conf = random_predictions(g, 2)
    total, terms = multibox_loss(loc, conf, PRIORS, targets, loc_weight=2.5, return_terms=True)
    torch.testing.assert_close(total, terms["conf"] + 2.5 * terms["loc"])
    # A float ratio is rounded up per image (ceil): 1.0 equals the integer 1.
    torch.testing.assert_close(
        multibox_loss(loc, conf, PRIORS, targets, hard_negative_ratio=1.0),
        multibox_loss(loc, conf, PRIORS, targets, hard_negative_ratio=1),
    )
    without_negatives = multibox_loss(
        loc, conf, PRIORS, targets, hard_negative_ratio=0, return_terms=True
    )[1]
    assert without_negatives["conf"] < terms["conf"]


def test_module_equals_function():
    g = torch.Generator().manual_seed(8)
    targets = random_targets(g, batch=3, max_objects=4)
    loc, conf = random_predictions(g, 3)
    module = MultiBoxLoss(
        NUM_CLASSES, pos_threshold=0.4, hard_negative_ratio=2, loc_weight=0.5, min_negatives=1
    )
    got = module(loc, conf, PRIORS, targets, return_terms=True)
    expected = multibox_loss(
        loc,
        conf,
        PRIORS,
        targets,
        pos_threshold=0.4,
        hard_negative_ratio=2,
        loc_weight=0.5,
        min_negatives=1,
        return_terms=True,
    )
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
    assert "num_classes=5" in repr(module)
    # Without a process group the distributed normaliser is the local count.
    torch.testing.assert_close(
        MultiBoxLoss(NUM_CLASSES, distributed=False)(loc, conf, PRIORS, targets),
        MultiBoxLoss(NUM_CLASSES)(loc, conf, PRIORS, targets),
    )


def _distributed_batch():
    g = torch.Generator().manual_seed(21)
    targets = random_targets(g, batch=4, max_objects=4)
    loc, conf = random_predictions(g, 4)
    return loc, conf, targets


def _rank_loss(rank, world):
    loc, conf, targets = _distributed_batch()
    half = slice(2 * rank, 2 * rank + 2)
    loc = loc[half].clone().requires_grad_()
    conf = conf[half].clone().requires_grad_()
    loss = multibox_loss(loc, conf, PRIORS, targets[half])
    loss.backward()
    return loss.item(), loc.grad, conf.grad


def test_distributed_normaliser_reproduces_the_whole_batch():
    """Two ranks with half the batch each: the mean of their losses is the loss of the
    whole batch, and their gradients averaged (as DDP does) are its gradients."""
    (loss0, loc0, conf0), (loss1, loc1, conf1) = run_distributed(_rank_loss)
    loc, conf, targets = _distributed_batch()
    loc.requires_grad_()
    conf.requires_grad_()
    full = multibox_loss(loc, conf, PRIORS, targets)
    full.backward()
    assert (loss0 + loss1) / 2 == pytest.approx(full.item(), rel=1e-12)
    torch.testing.assert_close(torch.cat((loc0, loc1)) / 2, loc.grad)
    torch.testing.assert_close(torch.cat((conf0, conf1)) / 2, conf.grad)


def _targets(labels=(0,), boxes=((0.1, 0.1, 0.5, 0.5),)):
    return [{"boxes": torch.tensor(boxes, dtype=torch.float64), "labels": torch.tensor(labels)}]


P = PRIORS.shape[0]


def _zero_inputs(
    *, targets=None, batch=1, loc_priors=P, loc_last=4, conf_priors=P, classes=5, priors=PRIORS
):
    """``(loc, conf, priors, targets)`` of an error case: zero predictions ``loc [batch,
    loc_priors, loc_last]`` and ``conf [batch, conf_priors, classes]``, and one box by
    default."""
    return (
        torch.zeros(batch, loc_priors, loc_last),
        torch.zeros(batch, conf_priors, classes),
        priors,
        _targets() if targets is None else targets,
    )


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: multibox_loss(*_zero_inputs(loc_last=3)),
            ValueError,
            rf"loc: expected shape \[B, P, 4\], got \[1, {P}, 3\]",
        ),
        (
            lambda: multibox_loss(*_zero_inputs(conf_priors=P - 1)),
            ValueError,
            rf"conf: expected shape \[1, {P}, C\] with C >= 2 \(background \+ classes\), got \[1, {P - 1}, 5\]",
        ),
        (
            lambda: multibox_loss(*_zero_inputs(classes=1)),
            ValueError,
            r"with C >= 2",
        ),
        (
            lambda: multibox_loss(*_zero_inputs(priors=PRIORS[:-1])),
            ValueError,
            rf"priors: expected shape \[{P}, 4\] \(one per prediction\), got \[{P - 1}, 4\]",
        ),
        (
            lambda: multibox_loss(*_zero_inputs(priors=PRIORS[None])),
            ValueError,
            r"priors: expected shape \[P, 4\], got \[1, ",
        ),
        (
            lambda: multibox_loss(*_zero_inputs(targets=_targets(labels=(4,)))),
            ValueError,
            r"targets\['labels'\]: expected values in 0..3 \(C - 2 with C = 5 logits, logit 0 the background\), got values in 4..4",
        ),
        (
            lambda: multibox_loss(*_zero_inputs(targets=_targets(labels=(-1,)))),
            ValueError,
            r"expected values in 0..3 .* got values in -1..-1",
        ),
        (
            lambda: multibox_loss(
                *_zero_inputs(targets=[{"boxes": torch.zeros(1, 4), "labels": torch.zeros(1)}]),
            ),
            TypeError,
            r"targets\['labels'\] must be integers",
        ),
        (
            lambda: multibox_loss(
                *_zero_inputs(targets=_targets(boxes=((0.1, float("nan"), 0.5, 0.5),)))
            ),
            ValueError,
            r"targets\['boxes'\]: expected finite values, got nan at index \[0, 0, 1\]",
        ),
        (
            lambda: multibox_loss(*_zero_inputs(batch=2)),
            ValueError,
            r"targets: expected 2 images \(the predictions' batch size\), got 1",
        ),
        (
            lambda: multibox_loss(*_zero_inputs(), pos_threshold=1.5),
            ValueError,
            r"pos_threshold must be in \[0, 1\], got 1.5",
        ),
        (
            lambda: multibox_loss(*_zero_inputs(), hard_negative_ratio=-1),
            ValueError,
            r"hard_negative_ratio must be a finite number >= 0, got -1",
        ),
        (
            lambda: multibox_loss(*_zero_inputs(), loc_weight="1"),
            ValueError,
            r"loc_weight must be a number >= 0, got '1'",
        ),
        (
            lambda: multibox_loss(*_zero_inputs(), min_negatives=1.5),
            ValueError,
            r"min_negatives must be an int >= 0, got 1.5",
        ),
        (
            lambda: multibox_loss(
                *_zero_inputs(),
                variances=(0.1, -0.2),
            ),
            ValueError,
            r"variances: expected two positive numbers",
        ),
        (
            lambda: MultiBoxLoss(1),
            ValueError,
            r"num_classes must be an int >= 2 \(background \+ classes\), got 1",
        ),
        (
            lambda: MultiBoxLoss(21)(*_zero_inputs()),
            ValueError,
            rf"conf: expected shape \[B, P, 21\] \(num_classes=21\), got \[1, {P}, 5\]",
        ),
        (
            lambda: MultiBoxLoss(5, pos_threshold=-0.1),
            ValueError,
            r"pos_threshold must be in \[0, 1\], got -0.1",
        ),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_validate_false_skips_the_host_checks():
    # Out-of-range labels are not looked for (no host synchronisation); in-range ones work.
    loc, conf = random_predictions(torch.Generator().manual_seed(0), 1)
    a = multibox_loss(loc, conf, PRIORS, _targets(labels=(3,)), validate=False)
    b = multibox_loss(loc, conf, PRIORS, _targets(labels=(3,)), validate=True)
    torch.testing.assert_close(a, b)
    assert math.isfinite(a.item())


def test_non_contiguous_predictions_give_the_same_loss_and_gradients(path):
    # The loss gathers rows from flattened predictions: strided inputs must agree too.
    g = torch.Generator().manual_seed(11)
    targets = random_targets(g, batch=3, max_objects=4)
    loc, conf = random_predictions(g, 3)
    loc_a, conf_a = loc.clone().requires_grad_(), conf.clone().requires_grad_()
    # The same values, laid out [P, B, ...] and viewed as [B, P, ...].
    loc_t = loc.transpose(0, 1).contiguous().requires_grad_()
    conf_t = conf.transpose(0, 1).contiguous().requires_grad_()
    expected = multibox_loss(loc_a, conf_a, PRIORS, targets)
    got = multibox_loss(loc_t.transpose(0, 1), conf_t.transpose(0, 1), PRIORS, targets)
    expected.backward()
    got.backward()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(loc_t.grad.transpose(0, 1), loc_a.grad, rtol=0, atol=0)
    torch.testing.assert_close(conf_t.grad.transpose(0, 1), conf_a.grad, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_background_loss_equals_log_softmax_even_for_extreme_logits(dtype):
    # The mining key skips log-softmax's max shift; rows whose plain sum of exponentials
    # overflows or underflows must fall back to it and agree.
    g = torch.Generator().manual_seed(3)
    conf = torch.randn(2, 300, 6, generator=g, dtype=dtype) * 3
    conf[0, :5] += 1e4  # exp overflows in both dtypes
    conf[0, 5:10] -= 1e4  # exp underflows to zero
    conf[1, 7, 2] = 200.0  # overflows float32 only
    conf[1, 8] = -120.0  # underflows float32 only
    expected = -conf.log_softmax(dim=-1)[..., 0]
    got = ssd_module._background_loss(conf)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)


def test_equal_background_losses_are_mined_in_prior_order(path):
    # Identical logits everywhere: every non-positive ties, and the first ones by prior
    # index are taken (the selection of a stable sort), in both implementations.
    targets = _targets(labels=(1,))
    loc = torch.zeros(1, PRIORS.shape[0], 4, dtype=torch.float64)
    conf = torch.zeros(1, PRIORS.shape[0], NUM_CLASSES, dtype=torch.float64, requires_grad=True)
    multibox_loss(loc, conf, PRIORS, targets).backward()
    touched = (conf.grad[0] != 0).any(dim=1)
    assigned = _match(
        box_convert(PRIORS, "cxcywh", "xyxy"),
        targets[0]["boxes"][None].double(),
        torch.ones(1, 1, dtype=torch.bool),
        0.5,
        path == "sparse",
    )[0]
    positive = assigned >= 0
    candidates = (~positive).nonzero().squeeze(1)
    mined = candidates[: 3 * int(positive.sum())]
    expected = positive.clone()
    expected[mined] = True
    assert torch.equal(touched, expected)


def test_prior_intervals_follow_the_priors():
    # The CPU matching works on the distinct intervals of the priors it is given:
    # alternating two prior sets (and modifying one in place) always matches on those.
    other = ssd_priors(**{**SMALL, "feature_maps": (5, 3, 1)}, dtype=torch.float64)
    boxes = torch.tensor([[[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    shifted = PRIORS.clone()
    for priors in (PRIORS, other, PRIORS, shifted, other):
        prior_xyxy = box_convert(priors, "cxcywh", "xyxy")
        expected = max_iou(box_iou(prior_xyxy, boxes[0])[None], 0.5).pred_to_target
        got = _match(prior_xyxy, boxes, mask, 0.5, True)
        assert torch.equal(got, expected)
        shifted[:, 0] += 0.05  # in place, after its use: the next call must not reuse it


def test_fractional_ratio_rounds_up_like_detection_loss(path):
    # One positive (a target equal to prior 7, threshold 1) and ratio 1.5: both losses
    # keep ceil(1.5 * 1) = 2 negatives, the two highest background losses.
    prior_box = box_convert(PRIORS[7:8], "cxcywh", "xyxy")
    targets = [{"boxes": prior_box, "labels": torch.tensor([0])}]
    g = torch.Generator().manual_seed(3)
    loc = torch.zeros(1, PRIORS.shape[0], 4, dtype=torch.float64)
    conf = torch.randn(1, PRIORS.shape[0], NUM_CLASSES, generator=g, dtype=torch.float64)
    got = multibox_loss(loc, conf, PRIORS, targets, pos_threshold=1.0, hard_negative_ratio=1.5)
    log_prob = conf[0].log_softmax(dim=-1)
    background = -log_prob[:, 0]
    background[7] = -math.inf
    hardest = background.topk(2).indices
    loc_term = smooth_l1_loss(
        loc[0, 7], torch.zeros(4, dtype=torch.float64), beta=1.0, reduction="none"
    ).sum()
    expected = -log_prob[7, 1] - log_prob[hardest, 0].sum() + loc_term
    torch.testing.assert_close(got, expected)

    from detloss.losses import detection_loss
    from detloss.match.matching import Matching

    p2t = torch.full((1, PRIORS.shape[0]), -1)
    p2t[0, 7] = 0
    outputs = {"pred_logits": conf, "pred_boxes": box_convert(PRIORS, "cxcywh", "xyxy")[None]}
    other = detection_loss(
        outputs,
        targets,
        Matching(p2t, torch.ones(1, 1, dtype=torch.bool)),
        loc_losses={},
        background="first",
        no_object_weight=1.0,
        hard_negative_ratio=1.5,
        reduction="sum",
    )
    torch.testing.assert_close(other, -log_prob[7, 1] - log_prob[hardest, 0].sum())


# --- names, reductions, unit warning ---------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [("overlap_threshold", "pos_threshold"), ("neg_pos_ratio", "hard_negative_ratio")],
)
def test_renamed_options_raise_naming_the_new_name(old, new):
    loc, conf = random_predictions(torch.Generator().manual_seed(0), 1)
    with pytest.raises(TypeError, match=f"'{old}' was renamed '{new}'"):
        multibox_loss(loc, conf, PRIORS, _targets(), **{old: 0.5})
    with pytest.raises(TypeError, match=f"'{old}' was renamed '{new}'"):
        MultiBoxLoss(NUM_CLASSES, **{old: 0.5})


def test_function_and_module_share_names_and_defaults():
    import inspect

    function = inspect.signature(inspect.unwrap(multibox_loss)).parameters
    module = inspect.signature(MultiBoxLoss).parameters
    shared = set(module) - {"num_classes"}
    assert shared <= set(function)
    for name in shared:
        assert module[name].default == function[name].default, name


def test_reductions(path):
    # "sum" is "mean" times the positive count; "none" gives per-image sums adding to "sum".
    g = torch.Generator().manual_seed(5)
    loc, conf = random_predictions(g, 3)
    targets = [
        {
            "boxes": torch.tensor([[0.1, 0.1, 0.5, 0.6]], dtype=torch.float64),
            "labels": torch.tensor([1]),
        },
        {
            "boxes": torch.zeros(0, 4, dtype=torch.float64),
            "labels": torch.zeros(0, dtype=torch.int64),
        },
        {
            "boxes": torch.tensor(
                [[0.2, 0.3, 0.9, 0.8], [0.0, 0.0, 0.3, 0.3]], dtype=torch.float64
            ),
            "labels": torch.tensor([0, 3]),
        },
    ]
    mean, mean_terms = multibox_loss(loc, conf, PRIORS, targets, return_terms=True, loc_weight=0.5)
    total, sum_terms = multibox_loss(
        loc, conf, PRIORS, targets, return_terms=True, loc_weight=0.5, reduction="sum"
    )
    per_image, none_terms = multibox_loss(
        loc, conf, PRIORS, targets, return_terms=True, loc_weight=0.5, reduction="none"
    )
    assigned = _match(
        box_convert(PRIORS, "cxcywh", "xyxy"),
        pad_targets(targets)["boxes"],
        pad_targets(targets)["mask"],
        0.5,
        path == "sparse",
    )
    num_pos = int((assigned >= 0).sum())
    torch.testing.assert_close(total, mean * num_pos)
    assert per_image.shape == (3,) and float(per_image[1]) == 0.0  # no object, no negatives
    torch.testing.assert_close(per_image.sum(), total)
    for key in ("loc", "conf"):
        torch.testing.assert_close(sum_terms[key], mean_terms[key] * num_pos)
        torch.testing.assert_close(none_terms[key].sum(), sum_terms[key])
    torch.testing.assert_close(per_image, none_terms["conf"] + 0.5 * none_terms["loc"])
    module = MultiBoxLoss(NUM_CLASSES, loc_weight=0.5, reduction="none")
    assert torch.equal(module(loc, conf, PRIORS, targets), per_image)
    with pytest.raises(ValueError, match="reduction"):
        multibox_loss(loc, conf, PRIORS, targets, reduction="avg")


def test_pixel_boxes_with_normalised_priors_warn_once():
    loc, conf = random_predictions(torch.Generator().manual_seed(0), 1)
    pixels = _targets(boxes=((30.0, 40.0, 150.0, 220.0),))
    with pytest.warns(UserWarning, match=r"targets\['boxes'\].*priors' units") as caught:
        total = multibox_loss(loc, conf, PRIORS, pixels)
    assert len([w for w in caught if issubclass(w.category, UserWarning)]) == 1
    assert torch.isfinite(total)  # still data: the loss is computed
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        multibox_loss(loc, conf, PRIORS, _targets(boxes=((-0.2, 0.1, 1.2, 1.1),)))  # in range
        multibox_loss(loc, conf, PRIORS, pixels, validate=False)  # not scanned
