import pytest
import torch

from detloss.match import Matching


def make():
    p2t = torch.tensor([[1, -1, 0, -2], [-1, -1, -1, 2]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    return Matching(p2t, mask)


def test_masks_counts_and_pairs():
    m = make()
    assert m.num_matched.tolist() == [2, 1]
    assert m.positive_mask.tolist() == [[True, False, True, False], [False, False, False, True]]
    assert m.negative_mask.sum().item() == 4
    assert m.ignored_mask.sum().item() == 1
    pairs = m.pairs()
    assert [p.tolist() for p, _ in pairs] == [[0, 2], [3]]
    assert [t.tolist() for _, t in pairs] == [[1, 0], [2]]
    assert all(p.dtype == torch.int64 and t.dtype == torch.int64 for p, t in pairs)
    assert m.matched_targets().min().item() == 0


def test_hard_plan_rows():
    plan = make().hard_plan()
    assert plan.shape == (2, 4, 4)
    expected0 = [[0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert plan[0].tolist() == expected0
    assert plan[1, :, 3].tolist() == [1, 1, 1, 0]
    assert make().dense_plan(torch.float64).dtype == torch.float64


def test_validation():
    with pytest.raises(ValueError, match="pred_to_target: expected int64"):
        Matching(torch.zeros(2, 3), torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="target_mask: expected bool"):
        Matching(torch.zeros(2, 3, dtype=torch.long), torch.ones(3, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"plan: expected shape \[2, 3, 2\]"):
        Matching(
            torch.zeros(2, 3, dtype=torch.long),
            torch.ones(2, 1, dtype=torch.bool),
            plan=torch.zeros(2, 3, 1),
        )


def test_empty_batch_pairs():
    m = Matching(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool))
    assert [(p.numel(), t.numel()) for p, t in m.pairs()] == [(0, 0), (0, 0)]
