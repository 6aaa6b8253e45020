"""The GPU assignment solver (``detloss._kernels.assignment_cuda``) against scipy.

The kernel's logic is checked on the CPU under Triton's interpreter
(tests/interpreted/assignment_kernel.py, skipped where Triton is not installed); the
compiled kernel and ``hungarian``'s GPU path are checked on CUDA
(tests marked ``cuda``, skipped without a device). Optimal assignments can tie, so the
checks compare optimal totals, computed in float64 from the returned pairs, and require
every real row to be assigned exactly once; where the optimum is unique (continuous random
costs) the pairs themselves are compared too.
"""

from __future__ import annotations

import pytest
import torch

from _triton import run_interpreted
from detloss.match import hungarian
from detloss.match.matching import IGNORED


def test_kernel_under_triton_interpreter():
    run_interpreted("assignment_kernel.py")


# -- the compiled kernel and hungarian's GPU path -------------------------------------------


def _batch(gen, b, m, counts, dtype=torch.float32):
    cost = torch.rand(b, m, max(counts), generator=gen, dtype=dtype)
    mask = torch.arange(max(counts))[None, :] < torch.tensor(counts)[:, None]
    return cost, mask


def _totals(cost, matching):
    p2t = matching.pred_to_target
    pairs = p2t >= 0
    picked = cost.double().gather(2, p2t.clamp_min(0)[:, :, None]).squeeze(2)
    return torch.where(pairs, picked, 0.0).sum(1)


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("b", "m", "counts"),
    [(16, 900, None), (4, 300, (30, 1, 7, 0)), (3, 5, (9, 2, 5)), (2, 2000, (100, 300))],
)
def test_gpu_hungarian_equals_scipy(b, m, counts):
    gen = torch.Generator().manual_seed(b * m)
    if counts is None:
        counts = torch.randint(1, 101, (b,), generator=gen).tolist()
    cost, mask = _batch(gen, b, m, counts)
    pred_mask = torch.rand(b, m, generator=gen) < 0.95
    host = hungarian(cost, target_mask=mask, pred_mask=pred_mask, solver="scipy")
    gpu = hungarian(
        cost.cuda(), target_mask=mask.cuda(), pred_mask=pred_mask.cuda(), solver="triton"
    )
    # Continuous random costs: the optimum is unique, so the pairs agree.
    torch.testing.assert_close(gpu.pred_to_target.cpu(), host.pred_to_target)
    torch.testing.assert_close(
        _totals(cost, gpu.to("cpu")), _totals(cost, host), rtol=1e-12, atol=0
    )


@pytest.mark.cuda
def test_gpu_hungarian_ties_and_fallback_images():
    gen = torch.Generator().manual_seed(5)
    cost = torch.randint(0, 3, (4, 12, 8), generator=gen).float()
    pred_mask = torch.ones(4, 12, dtype=torch.bool)
    pred_mask[2, 3:] = False  # 3 real predictions, 8 targets: solved on the host
    cost[3, :, 0] = torch.inf  # target 0 unreachable... but only if every pair is inf
    cost[3, 5, 0] = 1.0
    host = hungarian(cost, pred_mask=pred_mask, solver="scipy")
    gpu = hungarian(cost.cuda(), pred_mask=pred_mask.cuda()).to("cpu")
    torch.testing.assert_close(_totals(cost, gpu), _totals(cost, host), rtol=1e-12, atol=0)
    assert ((gpu.pred_to_target == IGNORED) == ~pred_mask).all()


@pytest.mark.cuda
def test_gpu_hungarian_errors_read_as_on_the_host():
    cost = torch.rand(3, 6, 4)
    cost[1, 2, 3] = torch.nan
    with pytest.raises(ValueError, match="image 1 contains NaN"):
        hungarian(cost.cuda())
    cost = torch.rand(2, 6, 4)
    cost[1, :, 2] = torch.inf
    with pytest.raises(ValueError, match="image 1 is infeasible"):
        hungarian(cost.cuda())


def test_solver_argument_is_checked():
    with pytest.raises(
        ValueError, match="solver must be one of 'auto', 'scipy', 'triton', got 'jv'"
    ):
        hungarian(torch.rand(3, 2), solver="jv")
    with pytest.raises(ValueError, match="solver='triton': cost is on cpu, not a CUDA device"):
        hungarian(torch.rand(3, 2), solver="triton")


@pytest.mark.cuda
@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_gpu_point_matching_equals_the_host(head):
    from detloss.match import match_points

    gen = torch.Generator().manual_seed(3)
    b, m, n = 4, 1024, 60  # P2PNet's 128 x 128 training crops: 1024 proposals
    points = torch.rand(b, m, 2, generator=gen) * 128
    logits = torch.randn((b, m, 2) if head == "softmax" else (b, m), generator=gen)
    targets = torch.rand(b, n, 2, generator=gen) * 128
    mask = torch.rand(b, n, generator=gen) < 0.8
    mask[1] = False  # an image without people
    host = match_points(points, logits, targets, target_mask=mask)
    gpu = match_points(points.cuda(), logits.cuda(), targets.cuda(), target_mask=mask.cuda())
    assert gpu.pred_to_target.is_cuda
    torch.testing.assert_close(gpu.pred_to_target.cpu(), host.pred_to_target)


@pytest.mark.cuda
def test_gpu_point_matching_errors_read_as_on_the_host():
    from detloss.match import match_points

    points = torch.rand(2, 8, 2)
    points[1, 3, 0] = torch.nan
    with pytest.raises(ValueError, match="pred_points: expected finite values"):
        match_points(points.cuda(), torch.zeros(2, 8, device="cuda"), torch.rand(2, 3, 2).cuda())


def test_matcher_passes_its_solver():
    from detloss.match import HungarianMatcher

    with pytest.raises(ValueError, match="solver must be one of 'auto', 'scipy', 'triton'"):
        HungarianMatcher(solver="gpu")
    matcher = HungarianMatcher(1.0, 5.0, 2.0, solver="scipy")
    assert "solver='scipy'" in repr(matcher) and matcher.cost_bbox == 5.0
    gen = torch.Generator().manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(2, 6, 4, generator=gen),
        "pred_boxes": torch.rand(2, 6, 4),
    }
    targets = [{"boxes": torch.tensor([[0.1, 0.1, 0.5, 0.5]]), "labels": torch.tensor([1])}] * 2
    expected = hungarian(matcher.cost(outputs, targets)[0])
    assert torch.equal(matcher(outputs, targets).pred_to_target, expected.pred_to_target)
