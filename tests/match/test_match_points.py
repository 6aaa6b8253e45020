import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from _references import brute_force_assignment
from detloss.batching import pad_targets
from detloss.costs import p2p_cost
from detloss.match.matching import BACKGROUND, Matching
from detloss.match.points import match_points


def numpy_cost(pred, logits, target, tau):
    """The P2PNet cost [M, n] built in float64 numpy from the definition."""
    pred = np.asarray(pred, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    if logits.ndim == 2:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob = e[:, 1] / e.sum(axis=1)
    else:
        prob = 1.0 / (1.0 + np.exp(-logits))
    dist = np.sqrt(((pred[:, None, :] - target[None, :, :]) ** 2).sum(axis=-1))
    return tau * dist - prob[:, None]


def reference_pairs(pred, logits, target, tau):
    """{pred index: target index} of scipy on the numpy cost."""
    cost = numpy_cost(pred, logits, target, tau)
    if cost.size == 0:
        return {}
    rows, cols = linear_sum_assignment(cost)
    return dict(zip(rows.tolist(), cols.tolist()))


def as_dict(matching, image):
    p2t = matching.pred_to_target[image]
    return {j: int(p2t[j]) for j in range(p2t.shape[0]) if p2t[j] >= 0}


def random_batch(counts, m, seed, head="sigmoid", scale=64.0):
    g = torch.Generator().manual_seed(seed)
    b = len(counts)
    pred = torch.rand(b, m, 2, generator=g) * scale
    shape = (b, m, 2) if head == "softmax" else (b, m)
    logits = torch.randn(shape, generator=g) * 2
    targets = [torch.rand(n, 2, generator=g) * scale for n in counts]
    return pred, logits, targets


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_matches_scipy_reference(head, tau):
    counts = [7, 0, 3, 25, 1]
    pred, logits, targets = random_batch(counts, 20, seed=1, head=head)
    matching = match_points(pred, logits, targets, tau=tau)
    assert isinstance(matching, Matching)
    assert matching.pred_to_target.dtype == torch.int64
    assert matching.num_matched.tolist() == [min(n, 20) for n in counts]
    for i, n in enumerate(counts):
        expected = reference_pairs(pred[i], logits[i], targets[i], tau)
        assert as_dict(matching, i) == expected
        unmatched = [j for j in range(20) if j not in expected]
        assert (matching.pred_to_target[i, unmatched] == BACKGROUND).all()
        assert matching.target_mask[i].sum() == n


def test_optimal_cost_of_p2p_cost():
    """The matching minimises the library's p2p_cost (summed over pairs)."""
    pred, logits, targets = random_batch([4, 6], 9, seed=2)
    padded = pad_targets(targets)
    cost = p2p_cost(pred.double(), logits.double(), padded["points"].double(), tau=0.05)
    matching = match_points(pred, logits, padded)
    for i, n in enumerate([4, 6]):
        block = cost[i, :, :n].numpy()
        rows, cols = linear_sum_assignment(block)
        pairs = as_dict(matching, i)
        ours = sum(block[j, t] for j, t in pairs.items())
        assert ours == pytest.approx(block[rows, cols].sum(), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(0, 5),
    n=st.integers(0, 5),
    tau=st.sampled_from([0.0, 0.05, 1.0]),
    softmax=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_brute_force(m, n, tau, softmax, seed):
    head = "softmax" if softmax else "sigmoid"
    pred, logits, targets = random_batch([n], m, seed=seed, head=head, scale=10.0)
    matching = match_points(pred, logits, targets, tau=tau)
    cost = numpy_cost(pred[0], logits[0], targets[0], tau)
    pairs = as_dict(matching, 0)
    assert len(pairs) == min(m, n)
    assert len(set(pairs.values())) == len(pairs)
    ours = sum(cost[j, t] for j, t in pairs.items())
    assert ours == pytest.approx(brute_force_assignment(cost), abs=1e-9)


def test_tau_zero_picks_most_confident():
    pred, logits, targets = random_batch([3], 10, seed=3)
    matching = match_points(pred, logits, targets, tau=0.0)
    top = set(logits[0].topk(3).indices.tolist())
    assert set(as_dict(matching, 0)) == top


def test_target_forms_agree():
    pred, logits, targets = random_batch([3, 0, 5], 12, seed=4)
    padded = pad_targets(targets)
    expected = match_points(pred, logits, targets).pred_to_target
    as_dicts = match_points(pred, logits, [{"points": t} for t in targets]).pred_to_target
    from_padded = match_points(pred, logits, padded).pred_to_target
    from_tensor = match_points(
        pred, logits, padded["points"], target_mask=padded["mask"]
    ).pred_to_target
    for other in (as_dicts, from_padded, from_tensor):
        assert torch.equal(other, expected)


def test_non_prefix_mask_and_target_permutation():
    pred, logits, targets = random_batch([4, 2], 10, seed=5)
    padded = pad_targets(targets)
    expected = match_points(pred, logits, padded)
    # Scatter the real targets to other slots: the matching follows the slots.
    perm = torch.tensor([3, 0, 2, 1])
    points = padded["points"][:, perm]
    mask = padded["mask"][:, perm]
    moved = match_points(pred, logits, points, target_mask=mask)
    inverse = torch.argsort(perm)
    for i in range(2):
        for j, t in as_dict(expected, i).items():
            assert int(moved.pred_to_target[i, j]) == int(inverse[t])
        assert moved.num_matched[i] == expected.num_matched[i]


@pytest.mark.parametrize("n", [0, 2])
def test_empty_inputs(n):
    pred, logits, targets = random_batch([n, 0], 6, seed=6)
    matching = match_points(pred, logits, targets)
    assert matching.num_matched.tolist() == [n, 0]
    # No proposals.
    matching = match_points(pred[:, :0], logits[:, :0], targets)
    assert matching.pred_to_target.shape == (2, 0)
    # No images.
    matching = match_points(pred[:0], logits[:0], [])
    assert matching.pred_to_target.shape == (0, 6)
    # A padded tensor without slots.
    matching = match_points(pred, logits, torch.zeros(2, 0, 2))
    assert (matching.pred_to_target == BACKGROUND).all()
    assert matching.target_mask.shape == (2, 0)


def test_more_targets_than_proposals():
    pred, logits, targets = random_batch([8], 3, seed=7)
    matching = match_points(pred, logits, targets)
    assert as_dict(matching, 0) == reference_pairs(pred[0], logits[0], targets[0], 0.05)
    assert matching.num_matched.tolist() == [3]


def test_thread_pool_path_matches_serial():
    # 4 images x 3000 proposals x 12 targets is above the pool threshold.
    counts = [12, 5, 12, 9]
    pred, logits, targets = random_batch(counts, 3000, seed=8, scale=256.0)
    matching = match_points(pred, logits, targets)
    for i in range(len(counts)):
        single = match_points(pred[i : i + 1], logits[i : i + 1], targets[i : i + 1])
        assert torch.equal(matching.pred_to_target[i], single.pred_to_target[0])
        assert as_dict(matching, i) == reference_pairs(pred[i], logits[i], targets[i], 0.05)


def test_no_gradient_and_dtypes():
    pred, logits, targets = random_batch([3, 2], 8, seed=9)
    expected = match_points(pred, logits, targets).pred_to_target
    grad = match_points(pred.requires_grad_(), logits.requires_grad_(), targets)
    assert not grad.pred_to_target.requires_grad
    assert torch.equal(grad.pred_to_target, expected)
    double = match_points(pred.double(), logits.double(), [t.double() for t in targets])
    assert torch.equal(double.pred_to_target, expected)
    # Half inputs are rounded but still matched, in float64 on the host.
    half = match_points(pred.detach().half(), logits.detach().half(), targets)
    assert half.num_matched.tolist() == [3, 2]
    # Integer coordinates are upcast.
    ints = [t.round().long() for t in targets]
    got = match_points(pred.detach().round().long(), logits.detach(), ints)
    ref = [
        reference_pairs(pred[i].detach().round(), logits[i].detach(), ints[i].double(), 0.05)
        for i in range(2)
    ]
    assert [as_dict(got, i) for i in range(2)] == ref


def test_errors():
    pred, logits, targets = random_batch([2], 4, seed=10)
    with pytest.raises(ValueError, match=r"pred_points: expected shape \[B, M, 2\], got \[4, 2\]"):
        match_points(pred[0], logits, targets)
    with pytest.raises(
        ValueError, match=r"pred_points: expected shape \[B, M, 2\], got \[1, 4, 3\]"
    ):
        match_points(torch.zeros(1, 4, 3), logits, targets)
    with pytest.raises(
        ValueError, match=r"pred_logits: expected shape \[1, 4\] or \[1, 4, 2\].*got \[1, 5\]"
    ):
        match_points(pred, torch.zeros(1, 5), targets)
    with pytest.raises(ValueError, match=r"pred_logits: expected shape .*got \[1, 4, 3\]"):
        match_points(pred, torch.zeros(1, 4, 3), targets)
    with pytest.raises(TypeError, match=r"pred_logits must be a torch.Tensor, got list"):
        match_points(pred, [0.0] * 4, targets)
    with pytest.raises(TypeError, match=r"pred_points must be a real .* got torch.bool"):
        match_points(pred > 0, logits, targets)
    with pytest.raises(ValueError, match=r"tau: expected a finite number >= 0, got -0.1"):
        match_points(pred, logits, targets, tau=-0.1)
    with pytest.raises(ValueError, match=r"tau: expected a finite number >= 0, got nan"):
        match_points(pred, logits, targets, tau=math.nan)
    with pytest.raises(TypeError, match="tau must be a real number, got bool"):
        match_points(pred, logits, targets, tau=True)
    with pytest.raises(ValueError, match=r"target_mask: expected None unless target_points"):
        match_points(pred, logits, targets, target_mask=torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"target_mask: expected shape \[1, 2\].*got \[1, 3\]"):
        match_points(
            pred, logits, torch.zeros(1, 2, 2), target_mask=torch.ones(1, 3, dtype=torch.bool)
        )
    with pytest.raises(
        ValueError, match=r"target_points: expected shape \[B, N, 2\], got \[2, 2\]"
    ):
        match_points(pred, logits, torch.zeros(2, 2))
    with pytest.raises(
        ValueError, match=r"target_points: expected 1 images .* got shape \[2, 2, 2\]"
    ):
        match_points(pred, logits, torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match=r"targets: expected 1 images .* got 2"):
        match_points(pred, logits, targets * 2)
    with pytest.raises(ValueError, match=r"targets\['points'\]: expected shape \[B, N, 2\]"):
        match_points(pred, logits, [torch.zeros(2, 3)])
    with pytest.raises(
        TypeError, match=r"targets must be a list of per-image dicts or tensors, got int"
    ):
        match_points(pred, logits, 3)


def test_non_finite_inputs_name_the_argument():
    pred, logits, targets = random_batch([2, 2], 4, seed=11)
    bad = pred.clone()
    bad[1, 2, 0] = math.nan
    with pytest.raises(ValueError, match=r"pred_points: expected finite values, .* image 1"):
        match_points(bad, logits, targets)
    bad = logits.clone()
    bad[0, 0] = math.inf
    with pytest.raises(ValueError, match=r"pred_logits: expected finite values, .* image 0"):
        match_points(pred, bad, targets)
    padded = pad_targets([targets[0], targets[1][:1]])
    padded["points"][1, 1] = math.nan  # a padded slot: ignored
    match_points(pred, logits, padded)
    padded["points"][1, 0] = math.inf
    with pytest.raises(ValueError, match=r"target_points: expected finite values, .* image 1"):
        match_points(pred, logits, padded)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    pred, logits, targets = random_batch([5, 0, 9], 50, seed=12)
    cpu = match_points(pred, logits, targets)
    gpu = match_points(pred.cuda(), logits.cuda(), [t.cuda() for t in targets])
    assert gpu.pred_to_target.device.type == "cuda"
    assert torch.equal(gpu.pred_to_target.cpu(), cpu.pred_to_target)


def test_large_images_take_the_certified_sparse_path_and_stay_optimal():
    from detloss.match.crowd import DENSE_BELOW

    g = torch.Generator().manual_seed(11)
    m, n = 6000, 200
    assert m * n >= DENSE_BELOW
    pts = torch.rand(2, m, 2, generator=g, dtype=torch.float64) * 400
    logits = torch.randn(2, m, generator=g, dtype=torch.float64)
    targets = [torch.rand(n, 2, generator=g, dtype=torch.float64) * 400, torch.zeros(0, 2)]
    matching = match_points(pts, logits, targets)
    cost = p2p_cost(pts[:1], logits[:1], targets[0][None])[0].numpy()
    rows, cols = linear_sum_assignment(cost)
    p2t = matching.pred_to_target[0]
    idx = (p2t >= 0).nonzero().flatten()
    assert len(idx) == n and len(set(p2t[idx].tolist())) == n
    got = cost[idx.numpy(), p2t[idx].numpy()].sum()
    assert got == pytest.approx(cost[rows, cols].sum(), rel=1e-9)
    assert (matching.pred_to_target[1] == -1).all()
