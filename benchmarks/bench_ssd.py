"""MultiBoxLoss forward + backward: detloss vs a per-image implementation of the original
SSD formulation (loop over images for matching, the double sort for hard negatives).

SSD300 sizes: B = 32, 8732 priors, 21 classes, 1-20 objects per image. The batch is drawn
on the host and moved to the device, where both sides run. Run as
``python benchmarks/bench_ssd.py [--quick] [--repeats N] [--device cuda]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from _timing import bench_main, device_sync, time_pair
from detloss.anchors import encode_boxes, ssd_priors
from detloss.boxes import box_convert, box_iou
from detloss.losses.ssd import multibox_loss


def make_batch(
    batch: int, num_classes: int, priors: Tensor, max_objects: int, seed: int = 0
) -> tuple[Tensor, Tensor, list[dict[str, Tensor]]]:
    """Random predictions and targets; resamples images where two ground truths share
    their best prior (the original SSD loop handles that case differently)."""
    g = torch.Generator().manual_seed(seed)
    prior_xyxy = box_convert(priors, "cxcywh", "xyxy")
    targets = []
    while len(targets) < batch:
        n = int(torch.randint(1, max_objects + 1, (1,), generator=g))
        centre = torch.rand(n, 2, generator=g) * 0.8 + 0.1
        size = torch.rand(n, 2, generator=g) * 0.5 + 0.05
        boxes = torch.cat((centre - size / 2, centre + size / 2), dim=1).clamp(0, 1)
        best = box_iou(boxes, prior_xyxy).argmax(dim=1)
        if best.unique().numel() < n:
            continue
        labels = torch.randint(0, num_classes - 1, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
    loc = torch.randn(batch, priors.shape[0], 4, generator=g)
    conf = torch.randn(batch, priors.shape[0], num_classes, generator=g)
    return loc, conf, targets


def _match_one(
    threshold: float, truths: Tensor, labels: Tensor, priors: Tensor, variances: tuple
) -> tuple[Tensor, Tensor]:
    """The original SSD matching of one image: threshold plus forced best priors."""
    overlaps = box_iou(truths, box_convert(priors, "cxcywh", "xyxy"))  # [n, P]
    _, best_prior = overlaps.max(dim=1)
    best_truth_overlap, best_truth = overlaps.max(dim=0)
    best_truth_overlap.index_fill_(0, best_prior, 2.0)
    for j in range(best_prior.shape[0]):
        best_truth[best_prior[j]] = j
    conf = labels[best_truth] + 1
    conf[best_truth_overlap < threshold] = 0
    return encode_boxes(truths[best_truth], priors, variances), conf


def baseline_loss(
    loc: Tensor,
    conf: Tensor,
    priors: Tensor,
    targets: list[dict[str, Tensor]],
    threshold: float = 0.5,
    neg_pos_ratio: int = 3,
    variances: tuple = (0.1, 0.2),
) -> tuple[Tensor, Tensor]:
    """Per-image reference of the SSD loss (with the negative cap ``P - num_pos``)."""
    batch, num_priors, num_classes = conf.shape
    loc_t = torch.zeros(batch, num_priors, 4, device=conf.device)
    conf_t = torch.zeros(batch, num_priors, dtype=torch.int64, device=conf.device)
    for i, t in enumerate(targets):
        if t["boxes"].shape[0]:
            loc_t[i], conf_t[i] = _match_one(threshold, t["boxes"], t["labels"], priors, variances)
    pos = conf_t > 0
    loss_l = F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum")
    flat = conf.reshape(-1, num_classes)
    rank_loss = flat.logsumexp(dim=1) - flat.gather(1, conf_t.reshape(-1, 1)).squeeze(1)
    rank_loss = rank_loss.detach().reshape(batch, -1).masked_fill(pos, 0.0)
    _, order = rank_loss.sort(dim=1, descending=True)
    _, rank = order.sort(dim=1)
    num_pos = pos.sum(dim=1, keepdim=True)
    num_neg = torch.minimum(neg_pos_ratio * num_pos, num_priors - num_pos)
    neg = rank < num_neg
    chosen = pos | neg
    loss_c = F.cross_entropy(conf[chosen], conf_t[chosen], reduction="sum")
    n = num_pos.sum().clamp(min=1)
    return loss_l / n, loss_c / n


def run(repeats: int = 5, quick: bool = False, device: str = "cpu") -> list[dict]:
    torch.manual_seed(0)
    dev = torch.device(device)
    batch = 4 if quick else 32
    num_classes = 21
    priors = ssd_priors()
    loc, conf, targets = make_batch(batch, num_classes, priors, max_objects=20)
    priors, loc, conf = priors.to(dev), loc.to(dev), conf.to(dev)
    targets = [{key: value.to(dev) for key, value in t.items()} for t in targets]

    def ours() -> tuple[Tensor, Tensor]:
        x, c = loc.detach().requires_grad_(), conf.detach().requires_grad_()
        _, terms = multibox_loss(x, c, priors, targets, return_terms=True)
        (terms["loc"] + terms["conf"]).backward()
        return terms["loc"].detach(), terms["conf"].detach()

    def base() -> tuple[Tensor, Tensor]:
        x, c = loc.detach().requires_grad_(), conf.detach().requires_grad_()
        loss_l, loss_c = baseline_loss(x, c, priors, targets)
        (loss_l + loss_c).backward()
        return loss_l.detach(), loss_c.detach()

    ours_values, base_values = ours(), base()
    for a, b in zip(ours_values, base_values):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    objects = sum(t["boxes"].shape[0] for t in targets)
    base_s, ours_s = time_pair(base, ours, repeats, sync=device_sync(dev))
    return [
        {
            "name": f"MultiBoxLoss fwd+bwd B={batch} P={priors.shape[0]} C={num_classes}",
            "baseline_s": base_s,
            "ours_s": ours_s,
            "note": f"{objects} objects; baseline = per-image SSD matching + double sort",
        }
    ]


if __name__ == "__main__":
    bench_main(run, __doc__)
