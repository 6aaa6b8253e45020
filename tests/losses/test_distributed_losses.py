"""The distributed contract of every loss, on 2 gloo CPU processes.

With a batch split across W ranks (``distributed=True``, the default):

* the mean of the ranks' losses equals the single-process loss of the whole batch;
* each rank's gradient with respect to its inputs, divided by W, equals the
  single-process gradient of its part of the batch.

So DDP, which averages parameter gradients over ranks, reproduces single-process training
exactly. Every loss is checked on even and uneven splits, a rank without objects, a
batch with fewer objects than ranks and a batch without any object. All cases of all
losses run in one pair of processes (spawning costs more than computing); a failure in a
worker is returned as text and reported by the test of its case.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from _distributed import run_distributed
from detloss.anchors import ssd_priors
from detloss.distributed import normalizer
from detloss.heatmap import centernet_targets
from detloss.losses.centernet import CenterNetLoss
from detloss.losses.detection import DetectionLoss
from detloss.losses.points import PointLoss
from detloss.losses.ranking import APLoss, ap_loss
from detloss.losses.ssd import MultiBoxLoss
from detloss.match.modules import HungarianMatcher

WORLD = 2
DTYPE = torch.float64
Inputs = dict[str, object]


@dataclass(frozen=True)
class Case:
    """Objects per image and the number of images held by rank 0 (rank 1 the rest)."""

    counts: tuple[int, ...]
    split: int


CASES = {
    "even": Case((2, 1, 3, 2), 2),
    "uneven_3_1": Case((2, 1, 3, 2), 3),
    "rank_without_objects": Case((2, 1, 3, 0), 3),
    "fewer_objects_than_ranks": Case((0, 1, 0, 0), 2),
    "no_objects": Case((0, 0, 0, 0), 3),
}


def _boxes(gen: torch.Generator, n: int, scale: float = 1.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen, dtype=DTYPE) * 0.6
    wh = 0.1 + 0.3 * torch.rand(n, 2, generator=gen, dtype=DTYPE)
    return torch.cat((xy, xy + wh), dim=-1) * scale


# Each loss: a builder of whole-batch inputs (tensors batched on dim 0, or per-image
# lists, or "shared" values used by every rank as they are), the names of the inputs
# that receive gradients, and the call.


def _detection_inputs(case: Case, seed: int) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    b, m, c = len(case.counts), 5, 3
    return {
        "pred_logits": torch.randn(b, m, c + 1, generator=gen, dtype=DTYPE),
        "pred_boxes": torch.stack([_boxes(gen, m) for _ in range(b)]),
        "targets": [
            {"boxes": _boxes(gen, n), "labels": torch.randint(0, c, (n,), generator=gen)}
            for n in case.counts
        ],
    }


def _detection(distributed: bool, **kwargs: object) -> Callable[[Inputs], torch.Tensor]:
    def call(x: Inputs) -> torch.Tensor:
        loss = DetectionLoss(HungarianMatcher(), distributed=distributed, **kwargs)
        logits = x["pred_logits"]
        if kwargs.get("background") == "none":
            logits = logits[..., :-1]
        return loss({"pred_logits": logits, "pred_boxes": x["pred_boxes"]}, x["targets"])

    return call


def _point_inputs(case: Case, seed: int, head: str) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    b, m = len(case.counts), 6
    shape = (b, m, 2) if head == "softmax" else (b, m)
    return {
        "pred_points": torch.rand(b, m, 2, generator=gen, dtype=DTYPE) * 16,
        "pred_logits": torch.randn(shape, generator=gen, dtype=DTYPE),
        "targets": [torch.rand(n, 2, generator=gen, dtype=DTYPE) * 16 for n in case.counts],
    }


def _point(head: str, distributed: bool) -> Callable[[Inputs], torch.Tensor]:
    def call(x: Inputs) -> torch.Tensor:
        loss = PointLoss(head=head, loc_weight=0.01, distributed=distributed)
        return loss(x["pred_points"], x["pred_logits"], x["targets"])

    return call


# A small SSD head: 4 x 4 and 2 x 2 cells, 4 priors each (80 priors).
_PRIOR_ARGS = {
    "image_size": 64,
    "feature_maps": (4, 2),
    "steps": (16, 32),
    "min_sizes": (16, 32),
    "max_sizes": (32, 48),
    "aspect_ratios": ((2,), (2,)),
}


def _ssd_inputs(case: Case, seed: int) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    priors = ssd_priors(**_PRIOR_ARGS, dtype=DTYPE)
    b, p, c = len(case.counts), priors.shape[0], 4
    return {
        "loc": torch.randn(b, p, 4, generator=gen, dtype=DTYPE),
        "conf": torch.randn(b, p, c, generator=gen, dtype=DTYPE),
        "targets": [
            {"boxes": _boxes(gen, n), "labels": torch.randint(0, c - 1, (n,), generator=gen)}
            for n in case.counts
        ],
        "shared:priors": priors,
    }


def _ssd(distributed: bool, **kwargs: object) -> Callable[[Inputs], torch.Tensor]:
    def call(x: Inputs) -> torch.Tensor:
        loss = MultiBoxLoss(4, distributed=distributed, **kwargs)
        return loss(x["loc"], x["conf"], x["shared:priors"], x["targets"])

    return call


def _centernet_inputs(case: Case, seed: int) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = len(case.counts), 2, 8, 8
    targets = centernet_targets(
        [
            {
                "boxes": _boxes(gen, n, scale=32.0),
                "labels": torch.randint(0, c, (n,), generator=gen),
            }
            for n in case.counts
        ],
        num_classes=c,
        output_size=(h, w),
        stride=4,
    )
    return {
        "heatmap": torch.randn(b, c, h, w, generator=gen, dtype=DTYPE),
        "size": torch.rand(b, 2, h, w, generator=gen, dtype=DTYPE) * 4,
        "offset": torch.rand(b, 2, h, w, generator=gen, dtype=DTYPE),
        **{f"target:{k}": targets[k] for k in ("heatmap", "size", "offset", "weight")},
    }


def _centernet(distributed: bool) -> Callable[[Inputs], torch.Tensor]:
    def call(x: Inputs) -> torch.Tensor:
        predictions = {k: x[k] for k in ("heatmap", "size", "offset")}
        targets = {k.split(":")[1]: v for k, v in x.items() if k.startswith("target:")}
        return CenterNetLoss(distributed=distributed)(predictions, targets)

    return call


def _ap_inputs(case: Case, seed: int) -> Inputs:
    """Logits ``[B, A, C]``; image ``b`` holds ``counts[b]`` positives, the rest are
    negatives with a few ignored (-1)."""
    gen = torch.Generator().manual_seed(seed)
    b, a, c = len(case.counts), 6, 2
    labels = torch.where(torch.rand(b, a, c, generator=gen) < 0.15, -1, 0)
    for i, n in enumerate(case.counts):
        labels[i].view(-1)[torch.randperm(a * c, generator=gen)[:n]] = 1
    # Quarter steps: ties and exact zone boundaries (|x_i - x_j| = delta) occur.
    logits = torch.randint(-6, 7, (b, a, c), generator=gen).to(DTYPE) / 4
    return {"logits": logits, "labels": labels}


def _ap(distributed: bool, module: bool = False) -> Callable[[Inputs], torch.Tensor]:
    def call(x: Inputs) -> torch.Tensor:
        if module:
            return APLoss(distributed=distributed)(x["logits"], x["labels"])
        return ap_loss(x["logits"], x["labels"], distributed=distributed)

    return call


@dataclass(frozen=True)
class Spec:
    build: Callable[[Case, int], Inputs]
    grad_keys: tuple[str, ...]
    loss: Callable[[bool], Callable[[Inputs], torch.Tensor]]


SPECS: dict[str, Spec] = {
    "DetectionLoss": Spec(
        _detection_inputs,
        ("pred_logits", "pred_boxes"),
        lambda d: _detection(d, loc_losses={"l1": 5.0, "giou": 2.0, "ciou": 1.0}),
    ),
    "DetectionLoss_focal_no_background": Spec(
        _detection_inputs,
        ("pred_logits", "pred_boxes"),
        lambda d: _detection(d, cls_loss="focal", background="none"),
    ),
    "DetectionLoss_hard_negatives": Spec(
        _detection_inputs,
        ("pred_logits", "pred_boxes"),
        lambda d: _detection(d, hard_negative_ratio=1.0, no_object_weight=1.0),
    ),
    "PointLoss_sigmoid": Spec(
        lambda case, seed: _point_inputs(case, seed, "sigmoid"),
        ("pred_points", "pred_logits"),
        lambda d: _point("sigmoid", d),
    ),
    "PointLoss_softmax": Spec(
        lambda case, seed: _point_inputs(case, seed, "softmax"),
        ("pred_points", "pred_logits"),
        lambda d: _point("softmax", d),
    ),
    "MultiBoxLoss": Spec(_ssd_inputs, ("loc", "conf"), lambda d: _ssd(d)),
    "MultiBoxLoss_min_negatives": Spec(
        _ssd_inputs, ("loc", "conf"), lambda d: _ssd(d, min_negatives=3)
    ),
    "CenterNetLoss": Spec(_centernet_inputs, ("heatmap", "size", "offset"), _centernet),
    "ap_loss": Spec(_ap_inputs, ("logits",), lambda d: _ap(d)),
    "APLoss": Spec(_ap_inputs, ("logits",), lambda d: _ap(d, module=True)),
}


def _inputs(name: str, case_name: str) -> Inputs:
    return SPECS[name].build(CASES[case_name], seed=sorted(CASES).index(case_name) + 7)


def _part(inputs: Inputs, part: slice) -> Inputs:
    return {k: v if k.startswith("shared:") else v[part] for k, v in inputs.items()}


def _loss_and_grads(name: str, inputs: Inputs, distributed: bool):
    spec = SPECS[name]
    leaves = {k: inputs[k].clone().requires_grad_() for k in spec.grad_keys}
    loss = spec.loss(distributed)({**inputs, **leaves})
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    grads = [torch.zeros_like(v) if g is None else g for v, g in zip(leaves.values(), grads)]
    return loss.detach(), grads


def _rank_slice(rank: int, case: Case) -> slice:
    return slice(0, case.split) if rank == 0 else slice(case.split, None)


def _worker(rank: int, world: int) -> dict[tuple[str, str], object]:
    # One object in the whole batch, on rank 0: the clamp applies to the global count.
    results: dict[tuple[str, str], object] = {
        ("normalizer", "one_object"): normalizer(torch.tensor([1.0, 0.0][rank])),
        ("normalizer", "no_object"): normalizer(torch.tensor(0.0)),
        ("normalizer", "tiny_minimum"): normalizer(torch.tensor(0.0), minimum=1e-30),
    }
    for name in SPECS:
        for case_name, case in CASES.items():
            try:
                part = _part(_inputs(name, case_name), _rank_slice(rank, case))
                results[name, case_name] = {
                    "global": _loss_and_grads(name, part, True),
                    "local": _loss_and_grads(name, part, False)[0],
                }
            except Exception:  # reported by the test of this case
                results[name, case_name] = traceback.format_exc()
    return results


@pytest.fixture(scope="module")
def rank_results() -> list[dict[tuple[str, str], object]]:
    return run_distributed(_worker, world=WORLD)


def _check_contract(rank_results, name: str, case_name: str) -> None:
    case = CASES[case_name]
    per_rank = [r[name, case_name] for r in rank_results]
    for rank, result in enumerate(per_rank):
        if isinstance(result, str):
            pytest.fail(f"rank {rank} raised:\n{result}")
    whole = _inputs(name, case_name)
    loss, grads = _loss_and_grads(name, whole, distributed=False)

    losses = torch.stack([r["global"][0] for r in per_rank])
    torch.testing.assert_close(losses.mean(), loss, rtol=1e-10, atol=1e-12)
    for rank, result in enumerate(per_rank):
        part = _rank_slice(rank, case)
        for key, got, expected in zip(SPECS[name].grad_keys, result["global"][1], grads):
            torch.testing.assert_close(
                got / WORLD,
                expected[part],
                rtol=1e-10,
                atol=1e-12,
                msg=lambda m, k=key, r=rank: f"rank {r}, d loss / d {k}: {m}",
            )
    # distributed=False is this rank's loss alone, as if it were the only process.
    for rank, result in enumerate(per_rank):
        alone, _ = _loss_and_grads(name, _part(whole, _rank_slice(rank, case)), False)
        torch.testing.assert_close(result["local"], alone, rtol=1e-12, atol=1e-14)


def _sensitive(rank_results, name: str, case_name: str) -> None:
    """Per-rank normalisation breaks the contract on an uneven split: the test can tell."""
    local = torch.stack([r[name, case_name]["local"] for r in rank_results])
    whole, _ = _loss_and_grads(name, _inputs(name, case_name), distributed=False)
    assert not torch.allclose(local.mean(), whole, rtol=1e-6)


@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize(
    "name",
    [
        "DetectionLoss",
        "DetectionLoss_focal_no_background",
        "DetectionLoss_hard_negatives",
        "PointLoss_sigmoid",
        "PointLoss_softmax",
        "MultiBoxLoss",
        "MultiBoxLoss_min_negatives",
        "CenterNetLoss",
        "ap_loss",
        "APLoss",
    ],
)
def test_ranks_reproduce_the_whole_batch(rank_results, name, case_name):
    _check_contract(rank_results, name, case_name)
    if case_name == "uneven_3_1":
        _sensitive(rank_results, name, case_name)


@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("name", ["ap_loss", "APLoss"])
def test_ap_loss_ranks_each_return_the_global_loss(rank_results, name, case_name):
    # Every rank ranks the whole batch: each returns the global loss itself.
    losses = [r[name, case_name]["global"][0] for r in rank_results]
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)


def test_normalizer_clamps_the_global_count_before_dividing(rank_results):
    """``max(G, 1) / W``: with G = 1 object on W = 2 ranks each rank divides by 0.5, so the
    ranks' mean is the single-process loss / 1. DETR's ``max(G / W, 1)`` would give 1 and
    halve it."""
    for results in rank_results:
        assert results["normalizer", "one_object"].item() == 0.5
        assert results["normalizer", "no_object"].item() == 0.5
        assert results["normalizer", "tiny_minimum"].item() == pytest.approx(0.5e-30, rel=1e-6)
