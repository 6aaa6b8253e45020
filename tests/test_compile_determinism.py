"""torch.compile (CPU) and run-to-run determinism of the losses and matchers.

Compile: each loss module compiled (inductor, or aot_eager for the heavy ones: see
``compile_backend``) with ``torch._dynamo.config`` defaults gives the eager values
(atol 1e-5) and gradients. The host steps (scipy's
assignment, numpy sorts, ``.tolist()`` / ``bool()`` reads of data-dependent sizes) are
graph breaks: ``fullgraph=False``. Shapes are small because inductor compiles a C++
kernel per graph.

Determinism: the same inputs give bit-identical matchings, losses and gradients across
calls at a given thread count, and bit-identical matchings at 1 or 2 intra-op threads.
Losses and gradients are bit-identical across thread counts too while the tensors are
smaller than PyTorch's parallel grain (32768 elements). Above it PyTorch splits work into
per-thread chunks: a float sum is then added in another order, and at a chunk boundary
an element may take the scalar instead of the vectorised path of a kernel (atan2, pow),
which rounds differently. Such values change in their last bits with the thread count
(measured: at most 5e-6 relative, in a few elements at the boundary).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch

from detloss.anchors import ssd_priors
from detloss.heatmap import centernet_targets
from detloss.losses.centernet import CenterNetLoss
from detloss.losses.detection import DetectionLoss
from detloss.losses.focal import SigmoidFocalLoss
from detloss.losses.iou import ciou_loss, diou_loss, giou_loss
from detloss.losses.points import PointLoss
from detloss.losses.ranking import APLoss
from detloss.losses.ssd import MultiBoxLoss
from detloss.match.closest import closest_prediction, closest_target
from detloss.match.hungarian import hungarian
from detloss.match.modules import HungarianMatcher, MaxIoUMatcher
from detloss.match.points import match_points
from detloss.match.sinkhorn import SinkhornMatcher, sinkhorn
from detloss.match.softmin import softmin
from detloss.match.threshold import max_iou

# PyTorch's grain for parallel CPU loops and reductions (at::internal::GRAIN_SIZE).
GRAIN = 32768


def boxes(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    xy = torch.rand(*shape, 2, generator=gen) * 0.7
    wh = 0.05 + 0.25 * torch.rand(*shape, 2, generator=gen)
    return torch.cat((xy, xy + wh), dim=-1) * scale


def box_targets(gen: torch.Generator, counts: tuple[int, ...], classes: int, scale: float = 1.0):
    return [
        {
            "boxes": boxes(gen, n, scale=scale),
            "labels": torch.randint(0, classes, (n,), generator=gen),
        }
        for n in counts
    ]


# --------------------------------------------------------------------------------------
# Problems: a module, its inputs (the floating tensors that get gradients first), and how
# to call it. ``size`` scales the problem: small for compile, realistic for determinism.


def detection_problem(size: str):
    gen = torch.Generator().manual_seed(1)
    b, m, c, n = (2, 5, 3, 2) if size == "small" else (4, 100, 91, 20)
    grads = [torch.randn(b, m, c + 1, generator=gen), boxes(gen, b, m)]
    targets = box_targets(gen, (n, 0, n // 2 + 1, n)[:b], c)

    def call(module, logits, pred):
        return module({"pred_logits": logits, "pred_boxes": pred}, targets)

    return DetectionLoss(HungarianMatcher()), grads, call


def multibox_problem(size: str):
    gen = torch.Generator().manual_seed(2)
    if size == "small":
        priors = ssd_priors(64, (4, 2), (16, 32), (16, 32), (32, 48), ((2,), (2,)))
        b, c = 2, 4
    else:
        priors, b, c = ssd_priors(), 2, 21
    p = priors.shape[0]
    grads = [torch.randn(b, p, 4, generator=gen), torch.randn(b, p, c, generator=gen)]
    targets = box_targets(gen, (3, 1), c - 1)

    def call(module, loc, conf):
        return module(loc, conf, priors, targets)

    return MultiBoxLoss(c), grads, call


def point_problem(size: str):
    gen = torch.Generator().manual_seed(3)
    b, m, n = (2, 6, 3) if size == "small" else (2, 1024, 100)
    grads = [torch.rand(b, m, 2, generator=gen) * 128, torch.randn(b, m, generator=gen)]
    targets = [torch.rand(n, 2, generator=gen) * 128, torch.rand(n // 3, 2, generator=gen) * 128]

    def call(module, points, logits):
        return module(points, logits, targets)

    return PointLoss(), grads, call


def centernet_problem(size: str):
    gen = torch.Generator().manual_seed(4)
    b, c, h = (2, 2, 8) if size == "small" else (2, 8, 64)
    targets = centernet_targets(
        box_targets(gen, (3, 2), c, scale=4.0 * h * 0.9),
        num_classes=c,
        output_size=(h, h),
        stride=4,
    )
    grads = [
        torch.randn(b, c, h, h, generator=gen),
        torch.rand(b, 2, h, h, generator=gen) * 4,
        torch.rand(b, 2, h, h, generator=gen),
    ]

    def call(module, heat, size_, offset):
        return module({"heatmap": heat, "size": size_, "offset": offset}, targets)

    return CenterNetLoss(), grads, call


def ap_problem(size: str):
    gen = torch.Generator().manual_seed(5)
    shape = (2, 6, 2) if size == "small" else (2, 8732, 20)
    labels = torch.where(torch.rand(shape, generator=gen) < 0.01, 1, 0)
    labels = torch.where(torch.rand(shape, generator=gen) < 0.05, -1, labels)
    # Ties: logits on a grid of quarters.
    grads = [torch.randint(-8, 9, shape, generator=gen).float() / 4]

    def call(module, logits):
        return module(logits, labels)

    return APLoss(), grads, call


def focal_problem(size: str):
    gen = torch.Generator().manual_seed(6)
    shape = (3, 4) if size == "small" else (4, 100, 91)
    targets = (torch.rand(shape, generator=gen) < 0.1).float()

    def call(module, logits):
        return module(logits, targets)

    return SigmoidFocalLoss(), [torch.randn(shape, generator=gen) * 3], call


def iou_problem(fn: Callable) -> Callable[[str], tuple]:
    def problem(size: str):
        gen = torch.Generator().manual_seed(7)
        n = 5 if size == "small" else 50_000
        target = boxes(gen, n)

        def call(module, pred):
            return module(pred, target, "mean")

        return fn, [boxes(gen, n)], call

    return problem


PROBLEMS: dict[str, Callable[[str], tuple]] = {
    "DetectionLoss+HungarianMatcher": detection_problem,
    "MultiBoxLoss": multibox_problem,
    "PointLoss": point_problem,
    "CenterNetLoss": centernet_problem,
    "APLoss": ap_problem,
    "SigmoidFocalLoss": focal_problem,
    "giou_loss": iou_problem(giou_loss),
    "diou_loss": iou_problem(diou_loss),
    "ciou_loss": iou_problem(ciou_loss),
}


def loss_and_grads(module, grads: list[torch.Tensor], call) -> list[torch.Tensor]:
    leaves = [g.clone().requires_grad_() for g in grads]
    loss = call(module, *leaves)
    return [loss.detach(), *torch.autograd.grad(loss, leaves)]


# --------------------------------------------------------------------------------------
# torch.compile


@pytest.fixture(scope="module", autouse=True)
def quiet_dynamo() -> Iterator[None]:
    """Graph breaks at the host steps are expected; their warnings are noise here. The
    compiled code is dropped afterwards so no other test module runs into it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
    torch._dynamo.reset()


# Inductor generates and builds C++ for every graph; from a cold cache that takes minutes
# for the modules with many graphs, too long for every CI run. Those are traced by dynamo
# and AOTAutograd (the "aot_eager" backend: same graphs, same decompositions, no codegen)
# unless DETLOSS_COMPILE_BACKEND=inductor asks for the full check.
HEAVY = {"DetectionLoss+HungarianMatcher", "MultiBoxLoss", "PointLoss", "CenterNetLoss"}


def compile_backend(name: str) -> str:
    return os.environ.get("DETLOSS_COMPILE_BACKEND") or (
        "aot_eager" if name in HEAVY else "inductor"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_compiled_module_equals_eager(name):
    module, grads, call = PROBLEMS[name]("small")
    eager = loss_and_grads(module, grads, call)
    compiled = torch.compile(module, fullgraph=False, backend=compile_backend(name))
    got = loss_and_grads(compiled, grads, call)
    for what, a, b in zip(["loss", *(f"grad {i}" for i in range(len(grads)))], got, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, w=what: f"{w}: {m}")


# --------------------------------------------------------------------------------------
# determinism


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# Thread counts in a shuffled order; each count is used twice, not back to back.
THREAD_ORDER = (2, 1, 1, 2)


def runs(fn: Callable[[], list[torch.Tensor]]) -> dict[int, list[list[torch.Tensor]]]:
    out: dict[int, list[list[torch.Tensor]]] = {}
    for threads in THREAD_ORDER:
        torch.set_num_threads(threads)
        out.setdefault(threads, []).append(fn())
    return out


def assert_bit_identical(a: list[torch.Tensor], b: list[torch.Tensor], what: str) -> None:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.dtype == y.dtype and torch.equal(x, y), f"{what}: output {i} differs"


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_losses_are_deterministic(name, restore_threads):
    module, grads, call = PROBLEMS[name]("realistic")
    results = runs(lambda: loss_and_grads(module, grads, call))
    for threads, (first, second) in results.items():
        assert_bit_identical(first, second, f"{name}, two runs on {threads} thread(s)")
    # Across thread counts: the last bits only (see the module docstring).
    for i, (x, y) in enumerate(zip(results[1][0], results[2][0], strict=True)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-12, msg=f"{name}: output {i}")


def test_small_losses_are_bit_identical_across_thread_counts(restore_threads):
    """Below the grain nothing is split across threads: bit-identical at any count."""
    for name, problem in PROBLEMS.items():
        module, grads, call = problem("small")
        assert all(g.numel() < GRAIN for g in grads)
        results = runs(lambda m=module, g=grads, c=call: loss_and_grads(m, g, c))
        reference = results[1][0]
        for outputs in (*results[1], *results[2]):
            assert_bit_identical(outputs, reference, name)


def matching_tensors(matching) -> list[torch.Tensor]:
    out = [matching.pred_to_target, matching.target_mask]
    if matching.plan is not None:
        out.append(matching.plan)
    return out


def matcher_problems() -> dict[str, Callable[[], list[torch.Tensor]]]:
    gen = torch.Generator().manual_seed(8)
    b, m, n = 4, 300, 40
    # Costs with many exact ties: the tie-breaking must not depend on anything but data.
    cost = torch.randint(0, 50, (b, m, n), generator=gen).float() / 7
    mask = torch.rand(b, n, generator=gen) < 0.8
    iou = torch.randint(0, 9, (b, m, n), generator=gen).float() / 8
    outputs = {
        "pred_logits": torch.randn(2, 100, 92, generator=gen),
        "pred_boxes": boxes(gen, 2, 100),
    }
    targets = box_targets(gen, (20, 7), 91)
    points = torch.rand(2, 1024, 2, generator=gen) * 128
    point_logits = torch.randn(2, 1024, generator=gen)
    point_targets = [torch.rand(150, 2, generator=gen) * 128, torch.rand(3, 2, generator=gen) * 128]
    return {
        "hungarian": lambda: matching_tensors(hungarian(cost, target_mask=mask)),
        "max_iou": lambda: matching_tensors(max_iou(iou, 0.5, 0.4, target_mask=mask)),
        "closest_target": lambda: matching_tensors(closest_target(cost, 3.0, target_mask=mask)),
        "closest_prediction": lambda: matching_tensors(
            closest_prediction(cost, 3.0, target_mask=mask)
        ),
        "sinkhorn": lambda: matching_tensors(
            sinkhorn(cost, target_mask=mask, max_iter=50, tol=0.0)
        ),
        "softmin": lambda: matching_tensors(softmin(cost, 0.1, target_mask=mask)),
        "HungarianMatcher": lambda: matching_tensors(HungarianMatcher()(outputs, targets)),
        "MaxIoUMatcher": lambda: matching_tensors(MaxIoUMatcher()(outputs, targets)),
        "SinkhornMatcher": lambda: matching_tensors(
            SinkhornMatcher(max_iter=50, tol=0.0)(outputs, targets)
        ),
        "match_points": lambda: matching_tensors(match_points(points, point_logits, point_targets)),
    }


@pytest.mark.parametrize("name", list(matcher_problems()))
def test_matchers_are_deterministic(name, restore_threads):
    results = runs(matcher_problems()[name])
    reference = results[1][0]
    for threads, outputs in results.items():
        for out in outputs:
            # Discrete matchings are identical at any thread count; the soft plans of
            # Sinkhorn and softmin are too (their reductions are shorter than the grain).
            assert_bit_identical(out, reference, f"{name} on {threads} thread(s)")
