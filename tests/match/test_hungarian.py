import importlib

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from _paths import PATHS, use_path
from _references import brute_force_assignment
from detloss.match import hungarian

assignment_module = importlib.import_module("detloss.match.assignment")


@pytest.fixture(scope="module", autouse=True, params=PATHS)
def cpu_path(request):
    """Every test on the compiled batch solver and on the scipy path."""
    yield from use_path(request.param)


def matched_cost(cost: torch.Tensor, p2t: torch.Tensor) -> float:
    rows = (p2t >= 0).nonzero().flatten()
    return float(cost[rows, p2t[rows]].double().sum())


@st.composite
def problems(draw):
    b = draw(st.integers(1, 3))
    m = draw(st.integers(0, 7))
    n = draw(st.integers(0, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    cost = rng.integers(-5, 6, size=(b, m, n)).astype(np.float64)  # integers: many ties
    forbid = rng.random((b, m, n)) < draw(st.sampled_from([0.0, 0.15]))
    cost[forbid] = np.inf
    pmask = rng.random((b, m)) < 0.8
    tmask = rng.random((b, n)) < 0.8
    return cost, pmask, tmask


@given(problems())
def test_optimal_against_brute_force_with_masks_and_forbidden_pairs(problem):
    cost, pmask, tmask = problem
    feasible = []
    for i in range(cost.shape[0]):
        block = cost[i][pmask[i]][:, tmask[i]]
        feasible.append(brute_force_assignment(block) if block.size else 0.0)
    if not all(np.isfinite(feasible)):
        with pytest.raises(ValueError, match="is infeasible"):
            hungarian(
                torch.from_numpy(cost),
                target_mask=torch.from_numpy(tmask),
                pred_mask=torch.from_numpy(pmask),
            )
        return
    result = hungarian(
        torch.from_numpy(cost),
        target_mask=torch.from_numpy(tmask),
        pred_mask=torch.from_numpy(pmask),
    )
    p2t = result.pred_to_target
    assert p2t.dtype == torch.int64
    for i in range(cost.shape[0]):
        real_p, real_t = int(pmask[i].sum()), int(tmask[i].sum())
        matched = p2t[i][p2t[i] >= 0]
        assert len(matched) == min(real_p, real_t)
        assert len(set(matched.tolist())) == len(matched)  # one-to-one
        assert all(tmask[i][t] for t in matched.tolist())  # only real targets
        assert (p2t[i][~torch.from_numpy(pmask[i])] == -2).all()  # padded preds ignored
        assert (p2t[i][torch.from_numpy(pmask[i])] >= -1).all()
        assert matched_cost(torch.from_numpy(cost[i]), p2t[i]) == pytest.approx(feasible[i])


@pytest.mark.parametrize("shape", [(4, 50, 12), (4, 12, 50), (3, 30, 30)])
def test_equal_total_cost_to_scipy_on_random_batches(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(40):
        cost = rng.normal(size=shape)
        tmask = rng.random(shape[::2]) < 0.7
        tmask = tmask.reshape(shape[0], shape[2])
        result = hungarian(
            torch.from_numpy(cost), target_mask=torch.from_numpy(tmask)
        ).pred_to_target
        for i in range(shape[0]):
            block = cost[i][:, tmask[i]]
            r, c = linear_sum_assignment(block)
            expected = block[r, c].sum()
            got = matched_cost(torch.from_numpy(cost[i]), result[i])
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_large_batch_uses_thread_pool_and_agrees_with_scipy():
    rng = np.random.default_rng(0)
    cost = rng.random((8, 300, 30))
    result = hungarian(torch.from_numpy(cost).float()).pred_to_target
    for i in range(8):
        r, c = linear_sum_assignment(cost[i].astype(np.float32).astype(np.float64))
        assert matched_cost(torch.from_numpy(cost[i]).float(), result[i]) == pytest.approx(
            float(cost[i].astype(np.float32)[r, c].astype(np.float64).sum()), rel=1e-9
        )


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64]
)
def test_dtypes(dtype):
    cost = torch.tensor([[[4, 1, 3], [2, 0, 5], [3, 2, 2]]]).to(dtype)
    assert hungarian(cost).pred_to_target.tolist() == [[1, 0, 2]]


def test_unbatched_and_empty():
    assert hungarian(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).pred_to_target.tolist() == [[1, 0]]
    assert hungarian(torch.zeros(2, 3, 0)).pred_to_target.tolist() == [[-1] * 3] * 2
    assert hungarian(torch.zeros(2, 0, 3)).pred_to_target.shape == (2, 0)
    all_padding = hungarian(torch.zeros(2, 3, 4), target_mask=torch.zeros(2, 4, dtype=torch.bool))
    assert all_padding.pred_to_target.tolist() == [[-1] * 3] * 2
    assert all_padding.num_matched.tolist() == [0, 0]


def test_inputs_keep_device_and_no_grad():
    cost = torch.rand(2, 5, 3, requires_grad=True)
    m = hungarian(cost)
    assert m.pred_to_target.device == cost.device and not m.pred_to_target.requires_grad


@pytest.mark.parametrize(("value", "word"), [(float("nan"), "NaN"), (-float("inf"), "-inf")])
def test_square_images_with_nan_or_minus_inf_are_named(value, word):
    # A square image is read whole, through a view of its real prefix, or packed (a
    # padded slot before a real one); each checks its entries in its own scan.
    cost = torch.rand(3, 4, 4)
    cost[1, 2, 2] = value
    with pytest.raises(ValueError, match=f"cost: image 1 contains {word}"):
        hungarian(cost)
    prefix = torch.tensor([[True, True, True, False]]).expand(3, 4)
    with pytest.raises(ValueError, match=f"cost: image 1 contains {word}"):
        hungarian(cost, target_mask=prefix, pred_mask=prefix)
    holed = torch.tensor([[True, False, True, True]]).expand(3, 4)
    with pytest.raises(ValueError, match=f"cost: image 1 contains {word}"):
        hungarian(cost, target_mask=holed, pred_mask=holed)
    # the same entry in a padded slot is not looked at
    cost[1, 2, 2] = 0.5
    cost[1, 1, 1] = value
    assert hungarian(cost, target_mask=holed, pred_mask=holed).num_matched.tolist() == [3] * 3


def test_errors_name_the_image():
    cost = torch.rand(3, 4, 2)
    cost[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="cost: image 1 contains NaN"):
        hungarian(cost)
    cost = torch.rand(3, 4, 2)
    cost[2, 0, 1] = -float("inf")
    with pytest.raises(ValueError, match="cost: image 2 contains -inf"):
        hungarian(cost)
    cost = torch.rand(2, 3, 2)
    cost[0, :, 1] = float("inf")
    with pytest.raises(ValueError, match="cost: image 0 is infeasible"):
        hungarian(cost)
    # a NaN in a padded slot is not looked at
    cost = torch.rand(1, 3, 2)
    cost[0, :, 1] = float("nan")
    assert hungarian(cost, target_mask=torch.tensor([[True, False]])).num_matched.tolist() == [1]
    with pytest.raises(
        ValueError, match=r"cost: expected shape \[B, M, N\] or \[M, N\], got \[2\]"
    ):
        hungarian(torch.zeros(2))
    with pytest.raises(
        ValueError, match=r"target_mask: expected shape \[2, 3\] \(\[B, N\]\), got \[2, 4\]"
    ):
        hungarian(torch.zeros(2, 5, 3), target_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(
        ValueError, match=r"pred_mask: expected shape \[2, 5\] \(\[B, M\]\), got \[5\]"
    ):
        hungarian(torch.zeros(2, 5, 3), pred_mask=torch.ones(5, dtype=torch.bool))


def scipy_totals(cost: np.ndarray, pmask: np.ndarray, tmask: np.ndarray) -> list[float]:
    """Each image's optimal total by scipy on its valid block (inf where infeasible)."""
    totals = []
    for i in range(cost.shape[0]):
        block = cost[i][pmask[i]][:, tmask[i]]
        if block.size == 0:
            totals.append(0.0)
            continue
        try:
            r, c = linear_sum_assignment(block)
        except ValueError:
            totals.append(np.inf)
            continue
        totals.append(float(block[r, c].sum()))
    return totals


def check_against_scipy(cost: np.ndarray, pmask: np.ndarray, tmask: np.ndarray) -> None:
    totals = scipy_totals(cost, pmask, tmask)
    args = (torch.from_numpy(cost),)
    masks = {"target_mask": torch.from_numpy(tmask), "pred_mask": torch.from_numpy(pmask)}
    if not all(np.isfinite(totals)):
        first = int(np.flatnonzero(~np.isfinite(totals))[0])
        with pytest.raises(ValueError, match=f"image {first} is infeasible"):
            hungarian(*args, **masks)
        return
    p2t = hungarian(*args, **masks).pred_to_target
    for i, total in enumerate(totals):
        matched = p2t[i][p2t[i] >= 0]
        assert len(matched) == min(int(pmask[i].sum()), int(tmask[i].sum()))
        assert len(set(matched.tolist())) == len(matched)
        assert all(tmask[i][t] for t in matched.tolist())
        assert (p2t[i][~torch.from_numpy(pmask[i])] == -2).all()
        got = matched_cost(torch.from_numpy(cost[i]), p2t[i])
        assert got == pytest.approx(total, rel=1e-12, abs=1e-9)


@st.composite
def larger_problems(draw):
    """Sizes past the brute force: square, wide and tall blocks; integer costs (ties),
    forbidden pairs, padded slots anywhere in the masks."""
    b = draw(st.integers(1, 4))
    m = draw(st.integers(0, 40))
    n = draw(st.integers(0, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["normal", "integers", "forbidden", "square"]))
    rng = np.random.default_rng(seed)
    if kind == "square":
        n = m
    if kind == "normal":
        cost = rng.normal(size=(b, m, n))
    else:
        cost = rng.integers(0, 4, size=(b, m, n)).astype(np.float64)
    if kind == "forbidden":
        cost[rng.random((b, m, n)) < 0.6] = np.inf
    pmask = rng.random((b, m)) < draw(st.sampled_from([1.0, 0.8]))
    tmask = rng.random((b, n)) < draw(st.sampled_from([1.0, 0.7]))
    return cost, pmask, tmask


@given(larger_problems())
def test_same_total_as_scipy_property(problem):
    check_against_scipy(*problem)


@pytest.mark.parametrize("m, n", [(1, 1), (5, 5), (60, 60), (7, 200), (200, 7), (40, 41)])
def test_same_total_as_scipy_on_ties_squares_and_forbidden_pairs(m, n):
    rng = np.random.default_rng(m * 1000 + n)
    for trial in range(6):
        cost = rng.integers(0, 3, size=(3, m, n)).astype(np.float64)  # mostly ties
        if trial % 2:
            cost[rng.random(cost.shape) < 0.3] = np.inf
        ones = (np.ones((3, m), dtype=bool), np.ones((3, n), dtype=bool))
        check_against_scipy(cost, *ones)
        check_against_scipy(cost, rng.random((3, m)) < 0.8, rng.random((3, n)) < 0.8)


def test_infeasible_square_and_rectangular_images_are_named_in_order():
    cost = np.random.default_rng(1).random((4, 6, 6))
    cost[2, :, 3] = np.inf  # a square image with a column it cannot use
    cost[3, :3, :] = np.inf
    cost[3, 3:, 1:] = np.inf  # rows 3-5 share one column
    with pytest.raises(ValueError, match="image 2 is infeasible"):
        hungarian(torch.from_numpy(cost))
    with pytest.raises(ValueError, match="image 2 is infeasible"):
        hungarian(torch.from_numpy(cost[[0, 1, 3]]))
    # a forbidden column in a padded slot does not matter
    tmask = torch.ones(4, 6, dtype=torch.bool)
    tmask[2, 3] = False
    result = hungarian(torch.from_numpy(cost[:3]), target_mask=tmask[:3])
    assert result.num_matched.tolist() == [6, 6, 5]


def test_nan_is_reported_before_negative_infinity_and_earlier_images_first():
    cost = torch.rand(3, 5, 4)
    cost[1, 0, 0] = -float("inf")
    cost[1, 4, 3] = float("nan")
    cost[2, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="image 1 contains NaN"):
        hungarian(cost)
    cost[0, :, 2] = float("inf")
    cost[0, :, 3] = float("inf")
    cost[0, 0, 3] = 0.0
    cost[0, 1:, :2] = float("inf")  # image 0 is infeasible: reported first
    with pytest.raises(ValueError, match="image 0 is infeasible"):
        hungarian(cost)


def test_split_batch_agrees_with_one_call(monkeypatch):
    monkeypatch.setattr(assignment_module, "_SPLIT_MIN_ENTRIES", 1)
    rng = np.random.default_rng(5)
    cost = rng.normal(size=(5, 30, 9))
    check_against_scipy(cost, rng.random((5, 30)) < 0.9, rng.random((5, 9)) < 0.9)
    cost[3, :, 0] = np.nan
    with pytest.raises(ValueError, match="image 3 contains NaN"):
        hungarian(torch.from_numpy(cost))


def test_large_square_against_scipy():
    rng = np.random.default_rng(7)
    cost = rng.random((1, 150, 150))
    check_against_scipy(cost, np.ones((1, 150), dtype=bool), np.ones((1, 150), dtype=bool))


def test_huge_finite_costs_beside_forbidden_pairs_are_not_mistaken_for_nan():
    # Summed down a column, -1e308 twice overflows to -inf and meets the +inf: the fast
    # check raises a false alarm, which the exact check must clear.
    cost = torch.zeros(1, 4, 2, dtype=torch.float64)
    cost[0, 0, 0] = cost[0, 1, 0] = -1e308
    cost[0, 2, 0] = float("inf")
    p2t = hungarian(cost).pred_to_target
    assert matched_cost(cost[0], p2t[0]) == -1e308
    assert sorted(p2t[0][p2t[0] >= 0].tolist()) == [0, 1]


@pytest.mark.parametrize("m, n", [(300, 30), (40, 7), (9, 130), (50, 50)])
def test_prefix_masks_read_in_place_ignore_what_the_padding_holds(m, n):
    """The usual padded batch: real predictions and targets are prefixes, and the padded
    slots hold NaN, -inf or anything else."""
    rng = np.random.default_rng(m + n)
    b = 6
    cost = rng.normal(size=(b, m, n)).astype(np.float32).astype(np.float64)
    pred_counts = rng.integers(0, m + 1, b)
    target_counts = rng.integers(0, n + 1, b)
    pred_counts[0], target_counts[0] = m, n
    pmask = np.arange(m) < pred_counts[:, None]
    tmask = np.arange(n) < target_counts[:, None]
    padded = ~(pmask[:, :, None] & tmask[:, None, :])
    cost[padded] = rng.choice([np.nan, -np.inf, np.inf, 1e30], size=int(padded.sum()))
    for dtype in (torch.float32, torch.float64):
        totals = scipy_totals(cost, pmask, tmask)
        p2t = hungarian(
            torch.from_numpy(cost).to(dtype),
            target_mask=torch.from_numpy(tmask),
            pred_mask=torch.from_numpy(pmask),
        ).pred_to_target
        for i, total in enumerate(totals):
            got = matched_cost(torch.from_numpy(cost[i]), p2t[i])
            assert (p2t[i] >= 0).sum() == min(pred_counts[i], target_counts[i])
            assert got == pytest.approx(total, rel=1e-12, abs=1e-9)


def test_positional_masks_still_work_with_a_future_warning():
    cost = torch.tensor([[[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [1.0, 2.0, 2.0]]])
    tmask = torch.tensor([[True, True, False]])
    pmask = torch.tensor([[True, False, True]])
    expected = hungarian(cost, target_mask=tmask, pred_mask=pmask).pred_to_target
    with pytest.warns(FutureWarning, match="pass target_mask and pred_mask by keyword"):
        legacy = hungarian(cost, tmask, pmask).pred_to_target
    assert legacy.tolist() == expected.tolist() == [[1, -2, 0]]
    with pytest.raises(TypeError, match="got two values for 'target_mask'"):
        hungarian(cost, tmask, target_mask=tmask)


def test_wide_block_whose_rows_crowd_a_few_columns():
    # 150 heads packed into a corner, 2,400 proposals spread over the image: the heads
    # compete for the few proposals near them (the bidding of augmenting row reduction
    # is bounded there; unbounded, it ran for minutes on a full-size crowd).
    rng = np.random.default_rng(7)
    heads = rng.uniform(0, 40, (150, 2))
    proposals = rng.uniform(0, 400, (2400, 2))
    cost = 0.05 * np.linalg.norm(proposals[:, None] - heads[None], axis=-1)
    cost -= rng.random(2400)[:, None]
    rows, cols = linear_sum_assignment(cost.T)
    p2t = hungarian(torch.from_numpy(cost)).pred_to_target[0]
    assert (p2t >= 0).sum() == 150
    got = cost[p2t.numpy() >= 0, p2t[p2t >= 0].numpy()].sum()
    assert got == pytest.approx(cost.T[rows, cols].sum(), rel=1e-12)
