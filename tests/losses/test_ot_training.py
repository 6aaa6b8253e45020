"""A tiny set-prediction model trained with DetectionLoss: the loss falls with the
Hungarian matching and with balanced and unbalanced optimal-transport matchings."""

import pytest
import torch
from torch import nn

from detloss.losses.detection import DetectionLoss, detection_loss
from detloss.match.matching import Matching
from detloss.match.modules import HungarianMatcher
from detloss.match.sinkhorn import SinkhornMatcher

NUM_CLASSES = 3


class Queries(nn.Module):
    """10 learnable boxes (cxcywh through a sigmoid, returned as xyxy) and class logits,
    the same for every image: a DETR decoder with nothing to look at."""

    def __init__(self, batch: int, num_queries: int = 10) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.batch = batch
        self.boxes = nn.Parameter(torch.randn(num_queries, 4, generator=gen) * 0.5)
        self.logits = nn.Parameter(torch.randn(num_queries, NUM_CLASSES + 1, generator=gen) * 0.1)

    def forward(self) -> dict[str, torch.Tensor]:
        cx, cy, w, h = self.boxes.sigmoid().unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        return {
            "pred_logits": self.logits.expand(self.batch, -1, -1),
            "pred_boxes": xyxy.expand(self.batch, -1, -1),
        }


def targets() -> list[dict[str, torch.Tensor]]:
    # The same two objects in both images (the queries are shared), plus one more in the
    # first: every matcher has a consistent set of boxes to fit.
    a = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.6, 0.5, 0.9, 0.8]])
    b = torch.tensor([[0.3, 0.6, 0.5, 0.9]])
    return [
        {"boxes": torch.cat([a, b]), "labels": torch.tensor([0, 2, 1])},
        {"boxes": a, "labels": torch.tensor([0, 2])},
    ]


def train(matcher: nn.Module, steps: int = 40) -> list[float]:
    torch.manual_seed(0)
    model = Queries(batch=2)
    criterion = DetectionLoss(matcher)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    data = targets()
    losses = []
    for _ in range(steps):
        loss = criterion(model(), data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "matcher",
    [
        HungarianMatcher(),
        SinkhornMatcher(tol=1e-3, max_iter=300),
        SinkhornMatcher(tau_pred=1.0, tau_target=0.1, background_cost=3.0, tol=1e-3),
    ],
    ids=["hungarian", "balanced", "unbalanced"],
)
def test_loss_falls(matcher):
    losses = train(matcher)
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)


def test_soft_plan_reaches_the_loss():
    # The Sinkhorn matcher's soft plan, not only its argmax, weights the loss.
    model = Queries(batch=2)
    outputs = model()
    soft = SinkhornMatcher(tau_pred=1.0, tau_target=0.1, background_cost=3.0)(outputs, targets())
    assert ((soft.plan > 0.01) & (soft.plan < 0.99)).any()
    hard = Matching(soft.pred_to_target, soft.target_mask)
    with_plan = detection_loss(outputs, targets(), soft)
    with_hard = detection_loss(outputs, targets(), hard)
    assert torch.isfinite(with_plan) and not torch.allclose(with_plan, with_hard)
