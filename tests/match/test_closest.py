import pytest
import torch

from detloss.match import closest_prediction, closest_target


def test_closest_target_with_background():
    cost = torch.tensor([[[0.2, 0.9], [0.8, 0.7], [0.6, 0.1]]])
    m = closest_target(cost, background_cost=0.65)
    assert m.pred_to_target.tolist() == [[0, -1, 1]]
    assert m.plan[0].tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    # ties go to the background; padded targets are never chosen
    assert closest_target(cost, 0.2).pred_to_target.tolist() == [[-1, -1, 1]]
    masked = closest_target(cost, 5.0, target_mask=torch.tensor([[False, True]]))
    assert masked.pred_to_target.tolist() == [[1, 1, 1]]


def test_closest_target_per_prediction_background_and_padding():
    cost = torch.tensor([[[0.2, 0.9], [0.8, 0.7]]])
    m = closest_target(cost, torch.tensor([[0.1, 0.75]]), pred_mask=torch.tensor([[True, False]]))
    assert m.pred_to_target.tolist() == [[-1, -2]]
    assert m.plan[0, 1].sum() == 0


def test_closest_prediction_right_way_round():
    cost = torch.tensor([[[0.2, 0.3, 0.9], [0.8, 0.7, 0.95], [0.6, 0.1, 0.99]]])
    m = closest_prediction(cost, cost_threshold=0.5)
    # target 0 -> pred 0 (0.2 < 0.5), target 1 -> pred 2 (0.1), target 2's best is 0.9: unmatched
    assert m.pred_to_target.tolist() == [[0, -1, 1]]
    assert m.plan[0].tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]]


def test_closest_prediction_shared_prediction_keeps_cheapest():
    cost = torch.tensor([[[0.3, 0.2], [0.9, 0.9]]])
    m = closest_prediction(cost, 0.5)
    assert m.pred_to_target.tolist() == [[1, -1]]
    assert m.plan[0, 0].tolist() == [1, 1, 0]


def test_empty_and_errors():
    assert closest_target(torch.zeros(1, 3, 0), 1.0).pred_to_target.tolist() == [[-1] * 3]
    assert closest_prediction(torch.zeros(1, 3, 0), 1.0).plan[0, :, 0].tolist() == [1, 1, 1]
    with pytest.raises(
        ValueError, match=r"background_cost: expected a float or a tensor broadcastable"
    ):
        closest_target(torch.zeros(1, 3, 2), torch.zeros(4))
    with pytest.raises(
        ValueError, match=r"cost_threshold: expected a float or a tensor broadcastable"
    ):
        closest_prediction(torch.zeros(1, 3, 2), torch.zeros(3))


def test_renamed_threshold_and_positional_masks():
    cost = torch.tensor([[[0.2, 0.9], [0.7, 0.8]]])
    with pytest.raises(TypeError, match="'threshold' was renamed 'cost_threshold'"):
        closest_prediction(cost, threshold=0.5)
    mask = torch.tensor([[False, True]])
    with pytest.warns(FutureWarning, match=r"pass target_mask by keyword"):
        legacy = closest_target(cost, 0.75, mask)
    assert (
        legacy.pred_to_target.tolist()
        == closest_target(cost, 0.75, target_mask=mask).pred_to_target.tolist()
        == [[-1, -1]]
    )
    with pytest.warns(FutureWarning, match=r"pass target_mask and pred_mask by keyword"):
        legacy = closest_prediction(cost, 1.0, mask, torch.tensor([[True, False]]))
    assert legacy.pred_to_target.tolist() == [[1, -2]]
