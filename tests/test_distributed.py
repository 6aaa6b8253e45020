"""The cross-rank helpers, on 2 gloo processes."""

import torch

from _distributed import run_distributed
from detloss.distributed import all_gather_with_grad, is_distributed, normalizer, world_size


def _normalizer_worker(rank, world):
    local = torch.tensor([3.0, 0.0][rank])
    return {
        "global": normalizer(local).item(),
        "local": normalizer(local, distributed=False).item(),
        "world": world_size(),
        "is": is_distributed(),
    }


def test_normalizer_is_global_count_over_world_size():
    results = run_distributed(_normalizer_worker)
    assert [r["global"] for r in results] == [1.5, 1.5]
    assert [r["local"] for r in results] == [3.0, 1.0]  # rank 1 clamped to 1
    assert all(r["world"] == 2 and r["is"] for r in results)


def _gather_worker(rank, world):
    x = torch.arange(rank + 2, dtype=torch.float64).mul(rank + 1).requires_grad_()
    gathered = all_gather_with_grad(x)
    (gathered * torch.arange(len(gathered), dtype=torch.float64)).sum().backward()
    return gathered.detach(), x.grad


def test_all_gather_with_grad_uneven_sizes():
    (g0, grad0), (g1, grad1) = run_distributed(_gather_worker)
    expected = torch.tensor([0.0, 1.0, 0.0, 2.0, 4.0], dtype=torch.float64)
    assert torch.equal(g0, expected) and torch.equal(g1, expected)
    assert grad0.tolist() == [0.0, 1.0]
    assert grad1.tolist() == [2.0, 3.0, 4.0]


def test_single_process_defaults():
    assert not is_distributed()
    assert world_size() == 1
    assert normalizer(torch.tensor(0)).item() == 1.0
    assert normalizer(2.5).item() == 2.5
    x = torch.ones(3)
    assert all_gather_with_grad(x) is x
