import pytest
import torch

from detloss.points import anchor_points, pairwise_distance


def test_reference_points_match_the_published_numbers():
    pts = anchor_points(128, 128, stride=8, rows=2, cols=2)
    assert pts.shape == (1024, 2)
    assert pts[:4].tolist() == [[2, 2], [6, 2], [2, 6], [6, 6]]
    torch.testing.assert_close(pts.mean(0), torch.tensor([64.0, 64.0]))


def test_reference_points_order_and_partial_cells():
    pts = anchor_points(20, 12, stride=8, rows=1, cols=3)
    # ceil(20 / 8) = 3 rows of cells, ceil(12 / 8) = 2 columns, 3 points per cell
    assert pts.shape == (3 * 2 * 3, 2)
    step = 8 / 3
    expected = []
    for cy in range(3):
        for cx in range(2):
            for sx in range(3):
                expected.append([cx * 8 + (sx + 0.5) * step, cy * 8 + 4.0])
    torch.testing.assert_close(pts, torch.tensor(expected))


def test_reference_points_errors():
    with pytest.raises(ValueError, match="stride must be a positive int, got 0"):
        anchor_points(10, 10, stride=0)
    with pytest.raises(ValueError, match="height must be a non-negative int, got -1"):
        anchor_points(-1, 10)
    assert anchor_points(0, 10).shape == (0, 2)


def test_pairwise_distance_against_brute_force():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 5, 2, generator=g, dtype=torch.float64) * 100
    b = torch.rand(2, 3, 2, generator=g, dtype=torch.float64) * 100
    d = pairwise_distance(a, b)
    for i in range(2):
        for m in range(5):
            for n in range(3):
                expected = ((a[i, m] - b[i, n]) ** 2).sum().sqrt()
                assert d[i, m, n].item() == pytest.approx(expected.item(), rel=1e-12)


def test_pairwise_distance_keeps_precision_for_close_points_far_from_origin():
    a = torch.tensor([[1e4, 1e4]], dtype=torch.float32)
    b = torch.tensor([[1e4 + 0.5, 1e4]], dtype=torch.float32)
    assert pairwise_distance(a, b).item() == pytest.approx(0.5, abs=1e-6)


def test_pairwise_distance_zero_distance_gradient_is_finite():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    b = torch.tensor([[1.0, 2.0]])
    pairwise_distance(a, b).sum().backward()
    assert torch.isfinite(a.grad).all()
    assert a.grad[0].tolist() == [0.0, 0.0]


def test_pairwise_distance_half_and_empty():
    a = torch.rand(4, 2).half()
    assert pairwise_distance(a, a).dtype == torch.float16
    assert pairwise_distance(torch.zeros(0, 2), torch.zeros(3, 2)).shape == (0, 3)
    with pytest.raises(ValueError, match=r"points1: expected shape \[\.\.\., N, 2\], got \[4, 3\]"):
        pairwise_distance(torch.zeros(4, 3), torch.zeros(4, 2))
