import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _references import forced_reference
from detloss.match import max_iou, threshold


def ssd_reference(iou: np.ndarray, pos: float) -> np.ndarray:
    """ssd.pytorch's per-image rule: threshold, then each target forced onto its best
    prediction in index order (a later target overwrites an earlier one)."""
    n = iou.shape[1]
    best_target = iou.argmax(axis=1)
    best_iou = iou.max(axis=1)
    best_pred = iou.argmax(axis=0)
    best_iou = best_iou.copy()
    best_iou[best_pred] = 2.0
    for j in range(n):
        best_target[best_pred[j]] = j
    return np.where(best_iou >= pos, best_target, -1)


def random_iou(rng, m, n):
    return rng.random((m, n)) * (rng.random((m, n)) < 0.5)


def test_equals_ssd_rule_when_best_predictions_are_distinct():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(200):
        iou = random_iou(rng, 30, 5)
        if len(set(iou.argmax(axis=0))) < 5:
            continue
        got = max_iou(torch.from_numpy(iou)).pred_to_target[0].numpy()
        np.testing.assert_array_equal(got, ssd_reference(iou, 0.5))
        checked += 1
    assert checked > 50


def test_shared_best_prediction_keeps_both_targets():
    # both targets have prediction 0 as their best; target 0 has the higher IoU there
    iou = torch.tensor([[0.45, 0.40], [0.30, 0.10], [0.05, 0.35]])
    p2t = max_iou(iou).pred_to_target[0].tolist()
    assert p2t == [0, -1, 1]
    # ssd.pytorch would have lost target 0:
    assert ssd_reference(iou.numpy(), 0.5).tolist() == [1, -1, -1]


def test_equal_claims_go_to_the_lower_target_index():
    iou = torch.tensor([[0.4, 0.4], [0.3, 0.2]])
    assert max_iou(iou).pred_to_target[0].tolist() == [0, 1]


@given(st.integers(1, 12), st.integers(0, 12), st.integers(0, 2**31 - 1))
def test_every_target_keeps_a_prediction(m, n, seed):
    rng = np.random.default_rng(seed)
    iou = torch.from_numpy(random_iou(rng, m, n))
    tmask = torch.from_numpy(rng.random((1, n)) < 0.8)
    p2t = max_iou(iou, target_mask=tmask).pred_to_target[0]
    kept = set(p2t[p2t >= 0].tolist())
    real = set(tmask[0].nonzero().flatten().tolist())
    assert kept <= real
    if m >= len(real):
        assert kept == real
    else:
        assert len(kept) == m


def assert_forced_matches(
    iou: np.ndarray, tmask: np.ndarray, pmask: np.ndarray, neg_threshold: float | None = None
) -> None:
    """``max_iou`` with ``pos_threshold=1.5`` (so only forced matches remain) equals the
    forcing rule's reference on every image, with and without ``pred_mask``."""
    b, m, _ = iou.shape
    for pred_mask in (None, torch.from_numpy(pmask)):
        got = max_iou(
            torch.from_numpy(iou),
            pos_threshold=1.5,
            neg_threshold=neg_threshold,
            target_mask=torch.from_numpy(tmask),
            pred_mask=pred_mask,
        ).pred_to_target
        for i in range(b):
            real = pmask[i] if pred_mask is not None else np.ones(m, dtype=bool)
            expected = forced_reference(iou[i], tmask[i], real)
            expected = np.where(expected >= 0, expected, np.where(real, -1, -2))
            np.testing.assert_array_equal(got[i].numpy(), expected)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 7), st.integers(0, 2**31 - 1))
def test_forcing_equals_the_documented_rule(b, m, n, seed):
    # Few distinct IoU values, so several targets often share a best prediction and
    # conflicts last several rounds; the batch mixes images with and without conflicts.
    rng = np.random.default_rng(seed)
    iou = rng.integers(0, 4, (b, m, n)) / 4.0
    tmask = rng.random((b, n)) < 0.8
    pmask = rng.random((b, m)) < 0.8
    # pos_threshold 1.5: nothing passes, only forced matches remain.
    assert_forced_matches(iou, tmask, pmask, neg_threshold=1.5)


def test_conflicting_image_resolved_alone_in_a_batch():
    # image 1 has a conflict (both targets prefer prediction 0), image 0 has none
    iou = torch.tensor(
        [
            [[0.9, 0.1], [0.1, 0.8], [0.0, 0.0]],
            [[0.45, 0.40], [0.30, 0.10], [0.05, 0.35]],
        ]
    )
    p2t = max_iou(iou).pred_to_target
    assert p2t.tolist() == [[0, 1, -1], [0, -1, 1]]
    assert max_iou(iou[1]).pred_to_target[0].tolist() == [0, -1, 1]


def test_band_between_thresholds_is_ignored_and_padding():
    iou = torch.tensor([[[0.7, 0.1], [0.45, 0.2], [0.1, 0.3], [0.2, 0.1]]])
    p2t = max_iou(iou, 0.5, 0.4, force_best=False).pred_to_target[0].tolist()
    assert p2t == [0, -2, -1, -1]
    pred_mask = torch.tensor([[True, True, True, False]])
    p2t = max_iou(iou, 0.5, 0.4, pred_mask=pred_mask).pred_to_target[0].tolist()
    assert p2t == [0, -2, 1, -2]


def test_allow_low_quality_matches_detectron2():
    iou = torch.tensor([[0.3, 0.35], [0.3, 0.1], [0.1, 0.2], [0.0, 0.0]])
    p2t = max_iou(iou, 0.5, 0.3, force_best=False, allow_low_quality=True).pred_to_target[0]
    # predictions 0 and 1 tie for target 0's best IoU; prediction 0 keeps its own best target
    assert p2t.tolist() == [1, 0, -1, -1]


def test_empty_inputs():
    assert max_iou(torch.zeros(2, 4, 0)).pred_to_target.tolist() == [[-1] * 4] * 2
    assert max_iou(torch.zeros(2, 0, 3)).pred_to_target.shape == (2, 0)
    none_real = max_iou(torch.rand(1, 3, 2), target_mask=torch.zeros(1, 2, dtype=torch.bool))
    assert none_real.pred_to_target.tolist() == [[-1] * 3]


def test_errors():
    with pytest.raises(
        ValueError, match="neg_threshold: expected 0 <= neg_threshold <= pos_threshold"
    ):
        max_iou(torch.rand(3, 2), 0.5, 0.6)
    with pytest.raises(ValueError, match=r"iou: expected shape \[B, M, N\] or \[M, N\], got \[3\]"):
        max_iou(torch.rand(3))


@pytest.mark.parametrize("window", [1, 2, 3])
def test_forcing_with_short_candidate_windows_equals_the_documented_rule(monkeypatch, window):
    # Contested targets keep only `window` candidates, so they run out and recompute their
    # columns; many zero IoUs make targets whose open predictions are all equal (the
    # group that takes the lowest open index), and more targets than predictions leave
    # some targets without any prediction.
    monkeypatch.setattr(threshold, "_WINDOW", window)
    rng = np.random.default_rng(window)
    for _ in range(25):
        b, m, n = int(rng.integers(1, 4)), int(rng.integers(1, 10)), int(rng.integers(1, 14))
        iou = rng.integers(0, 4, (b, m, n)) / 4.0
        iou = np.where(rng.random((b, m, n)) < 0.6, 0.0, iou)
        tmask = rng.random((b, n)) < 0.85
        pmask = rng.random((b, m)) < 0.85
        assert_forced_matches(iou, tmask, pmask)


def test_forcing_many_targets_stays_within_bounded_columns():
    # 3,000 targets on 50 predictions: every prediction ends up forced, each to a distinct
    # target, and the documented rule holds (checked against the reference on a slice of
    # the problem small enough for it).
    rng = np.random.default_rng(0)
    iou = torch.from_numpy(rng.integers(0, 3, (1, 50, 3000)) / 8.0)
    p2t = max_iou(iou, pos_threshold=1.5).pred_to_target[0]
    assert bool((p2t >= 0).all())
    assert p2t.unique().numel() == 50
    small = iou[0, :, :40].numpy()
    got = max_iou(iou[:, :, :40], pos_threshold=1.5).pred_to_target[0].numpy()
    np.testing.assert_array_equal(
        got, forced_reference(small, np.ones(40, dtype=bool), np.ones(50, dtype=bool))
    )


def test_target_mask_by_position_still_works_with_a_future_warning():
    iou = torch.tensor([[[0.7, 0.9], [0.2, 0.6]]])
    mask = torch.tensor([[True, False]])
    with pytest.warns(FutureWarning, match="pass target_mask by keyword"):
        old = max_iou(iou, 0.5, None, True, mask)
    assert torch.equal(old.pred_to_target, max_iou(iou, target_mask=mask).pred_to_target)
    with pytest.raises(TypeError):
        max_iou(iou, 0.5, None, True, mask, None)  # pred_mask never was positional here


@pytest.mark.parametrize("sparse", [True, False])
def test_max_iou_boxes_equals_max_iou_of_the_iou(sparse):
    # Thresholds with a band, no forcing, padded targets and degenerate boxes.
    from detloss._kernels import reference_path
    from detloss.boxes import box_iou
    from detloss.match.threshold_boxes import max_iou_boxes

    g = torch.Generator().manual_seed(2)
    priors = torch.rand(40, 2, generator=g, dtype=torch.float64) * 0.8
    priors = torch.cat((priors, priors + 0.05 + 0.3 * torch.rand(40, 2, generator=g)), dim=1)
    for trial in range(20):
        centre = torch.rand(2, 5, 2, generator=g, dtype=torch.float64)
        size = torch.rand(2, 5, 2, generator=g, dtype=torch.float64) * 0.5
        if trial % 3 == 0:
            size[..., 1] = 0.0
        boxes = torch.cat((centre - size / 2, centre + size / 2), dim=-1)
        mask = torch.rand(2, 5, generator=g) > 0.3
        pos, neg = (0.5, 0.3) if trial % 2 else (0.4, 0.0)
        force = trial % 4 != 1
        iou = torch.stack([box_iou(priors, boxes[i]) for i in range(2)])
        expected = max_iou(
            iou, pos_threshold=pos, neg_threshold=neg, force_best=force, target_mask=mask
        )
        with reference_path(not sparse):
            got = max_iou_boxes(
                priors,
                boxes,
                pos_threshold=pos,
                neg_threshold=neg,
                force_best=force,
                target_mask=mask,
            )
        assert torch.equal(got.pred_to_target, expected.pred_to_target), trial
    with pytest.raises(ValueError, match="neg_threshold"):
        max_iou_boxes(priors, boxes, pos_threshold=0.3, neg_threshold=0.5)
    with pytest.raises(ValueError, match="target_mask"):
        max_iou_boxes(priors, boxes, target_mask=torch.ones(2, 4, dtype=torch.bool))


def test_cpu_strategy_equals_the_reference_path():
    # The index-free maximum (CPU) and max with indices (reference) give one matching,
    # ties between targets included (the first best target).
    from detloss._kernels import reference_path

    rng = np.random.default_rng(7)
    for _ in range(30):
        b, m, n = (int(v) for v in rng.integers(1, 9, 3))
        iou = torch.from_numpy(rng.integers(0, 5, (b, m, n)) / 4.0)
        tmask = torch.from_numpy(rng.random((b, n)) < 0.8)
        pmask = torch.from_numpy(rng.random((b, m)) < 0.8)
        for kwargs in ({}, {"neg_threshold": 0.25}, {"force_best": False}):
            fast = max_iou(iou, target_mask=tmask, pred_mask=pmask, **kwargs).pred_to_target
            with reference_path():
                slow = max_iou(iou, target_mask=tmask, pred_mask=pmask, **kwargs).pred_to_target
            assert torch.equal(fast, slow)
