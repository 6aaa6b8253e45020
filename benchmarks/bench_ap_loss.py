"""AP-Loss (and aLRP / Rank & Sort Loss) forward + backward against the published
per-positive loops.

The references loop over the P positives in ascending order and, for each, apply the
soft step to all P positives and all N participating negatives: O(P (P + N)) work and
about a dozen kernel launches per positive. detloss computes the same numbers from sorted
logits, binary searches and prefix sums in O((P + N) log(P + N)); on the CPU with Numba
each loss is one compiled call that sorts only the positives and bins the negatives
(O(N + P log P); Rank & Sort adds an O(P log P) comparison of the positives, the torch
reference a dense O(P^2) one). Both sides must agree. The inputs are drawn on the
host and moved to the device, where both sides run (on a GPU the loops also pay a host
read per positive for their Python comparisons, as the published code does).

Run: ``python benchmarks/bench_ap_loss.py [--quick] [--repeats R] [--device cuda]``.
"""

from __future__ import annotations

import torch

from _timing import bench_main, device_sync, time_pair
from detloss.losses.ranking import alrp_loss, ap_loss, rank_sort_loss


def loop_ap_loss(logits: torch.Tensor, labels: torch.Tensor, delta: float = 1.0):
    """The reference algorithm as published, on the inputs' device: ``(update, loss)``."""
    update = torch.zeros_like(logits)
    if labels.max() <= 0:
        return update, logits.new_zeros(())
    is_pos = labels == 1
    fg = logits[is_pos]
    is_neg = (labels == 0) & (logits >= fg.min() - delta)
    bg = logits[is_neg]
    bg_update = torch.zeros_like(bg)
    prec = torch.zeros_like(fg)
    max_prec = 0
    for i in torch.argsort(fg):
        pos_step = torch.clamp((fg - fg[i]) / (2 * delta) + 0.5, min=0, max=1)
        neg_step = torch.clamp((bg - fg[i]) / (2 * delta) + 0.5, min=0, max=1)
        a = pos_step.sum() + 0.5
        b = neg_step.sum()
        neg_step /= a + b
        current = a / (a + b)
        if max_prec <= current:
            max_prec = current
        else:
            neg_step *= (1 - max_prec) / (1 - current)
        bg_update += neg_step
        prec[i] = max_prec
    update[is_neg] = bg_update
    update[is_pos] = -(1 - prec)
    update /= fg.numel()
    return update, 1 - prec.sum() / fg.numel()


def loop_alrp_loss(logits, labels, regression_losses, delta: float = 1.0):
    """The published aLRP classification loop: ``(update, classification loss)``."""
    update = torch.zeros_like(logits)
    is_pos = labels == 1
    fg = logits[is_pos]
    is_neg = (labels == 0) & (logits >= fg.min() - delta)
    bg = logits[is_neg]
    bg_update = torch.zeros_like(bg)
    fg_update = torch.zeros_like(fg)
    prec = torch.zeros_like(fg)
    for i in torch.argsort(fg):
        pos_step = torch.clamp((fg - fg[i]) / (2 * delta) + 0.5, min=0, max=1)
        pos_step[i] = 0
        neg_step = torch.clamp((bg - fg[i]) / (2 * delta) + 0.5, min=0, max=1)
        rank_pos = 1 + pos_step.sum()
        fp = neg_step.sum()
        rank = rank_pos + fp
        prec[i] = rank_pos / rank
        if fp > 1e-5:
            fg_update[i] = -((pos_step * regression_losses).sum() + fp) / rank
            bg_update += neg_step * (-fg_update[i] / fp)
    update[is_pos] = fg_update
    update[is_neg] = bg_update
    update /= fg.numel()
    return update, 1 - prec.mean()


def loop_rank_sort_loss(logits, targets, delta: float = 0.5):
    """The published Rank & Sort loop: ``(update, ranking loss, sorting loss)``."""
    update = torch.zeros_like(logits)
    is_pos = targets > 0
    fg, fg_t = logits[is_pos], targets[is_pos]
    is_neg = (targets == 0) & (logits >= fg.min() - delta)
    bg = logits[is_neg]
    bg_update = torch.zeros_like(bg)
    fg_update = torch.zeros_like(fg)
    ranking = torch.zeros_like(fg)
    sorting = torch.zeros_like(fg)
    for i in torch.argsort(fg):
        pos_step = torch.clamp((fg - fg[i]) / (2 * delta) + 0.5, min=0, max=1)
        neg_step = torch.clamp((bg - fg[i]) / (2 * delta) + 0.5, min=0, max=1)
        rank_pos = pos_step.sum()
        fp = neg_step.sum()
        ranking[i] = fp / (rank_pos + fp)
        current = (pos_step * (1 - fg_t)).sum() / rank_pos
        in_order = fg_t >= fg_t[i]
        in_order_step = in_order * pos_step
        sorting[i] = current - (in_order_step * (1 - fg_t)).sum() / in_order_step.sum()
        if fp > 1e-10:
            fg_update[i] -= ranking[i]
            bg_update += neg_step * (ranking[i] / fp)
        missorted = ~in_order * pos_step
        denom = missorted.sum()
        if denom > 1e-10:
            fg_update[i] -= sorting[i]
            fg_update += missorted * (sorting[i] / denom)
    update[is_pos] = fg_update / fg.numel()
    update[is_neg] = bg_update / fg.numel()
    return update, ranking.mean(), sorting.mean()


def make_problem(num_pos: int, num_neg: int, seed: int = 0):
    """Overlapping scores (positives ~ N(1, 1), negatives ~ N(0, 1)), shuffled: every
    negative lies above min(positive) - delta, the costly case for both sides."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.cat([torch.randn(num_pos, generator=g) + 1, torch.randn(num_neg, generator=g)])
    labels = torch.cat([torch.ones(num_pos), torch.zeros(num_neg)]).long()
    order = torch.randperm(logits.numel(), generator=g)
    return logits[order], labels[order]


def _ours(logits: torch.Tensor, labels: torch.Tensor):
    x = logits.detach().requires_grad_()
    loss = ap_loss(x, labels, validate=False)
    loss.backward()
    return x.grad, loss.detach()


def _ours_alrp(logits, labels, regression_losses):
    x = logits.detach().requires_grad_()
    cls, _ = alrp_loss(x, labels, regression_losses, validate=False)
    cls.backward()
    return x.grad, cls.detach()


def _ours_rank_sort(logits, targets):
    x = logits.detach().requires_grad_()
    ranking, sorting = rank_sort_loss(x, targets, validate=False)
    (ranking + sorting).backward()
    return x.grad, ranking.detach(), sorting.detach()


def _assert_same(ours: tuple, reference: tuple) -> None:
    update, *losses = ours
    ref_update, *ref_losses = reference
    for loss, ref_loss in zip(losses, ref_losses, strict=True):
        assert torch.allclose(loss, ref_loss, rtol=0, atol=1e-6), (loss, ref_loss)
    scale = ref_update.abs().max()
    assert torch.allclose(update, ref_update, rtol=1e-4, atol=1e-6 * scale), "updates differ"


def run(repeats: int = 5, quick: bool = False, device: str = "cpu") -> list[dict]:
    torch.set_num_threads(2)
    dev = torch.device(device)
    sync = device_sync(dev)
    num_pos, num_neg = (200, 20_000) if quick else (1_000, 100_000)
    logits, labels = (t.to(dev) for t in make_problem(num_pos, num_neg))
    size = f"P={num_pos:,} N={num_neg:,}"
    note = "reference loop over positives; same losses and updates asserted"
    rows = []

    _assert_same(_ours(logits, labels), loop_ap_loss(logits, labels))
    baseline, mine = time_pair(
        lambda: loop_ap_loss(logits, labels), lambda: _ours(logits, labels), repeats, sync
    )
    rows.append({"name": f"ap_loss fwd+bwd {size}", "baseline_s": baseline, "ours_s": mine})

    g = torch.Generator().manual_seed(1)
    reg = torch.rand(num_pos, generator=g).to(dev)
    _assert_same(_ours_alrp(logits, labels, reg), loop_alrp_loss(logits, labels, reg))
    baseline, mine = time_pair(
        lambda: loop_alrp_loss(logits, labels, reg),
        lambda: _ours_alrp(logits, labels, reg),
        repeats,
        sync,
    )
    rows.append({"name": f"alrp_loss cls fwd+bwd {size}", "baseline_s": baseline, "ours_s": mine})

    quality = torch.rand(labels.shape, generator=g).clamp(min=0.05).to(dev)
    targets = torch.where(labels == 1, quality, 0.0)
    _assert_same(_ours_rank_sort(logits, targets), loop_rank_sort_loss(logits, targets))
    baseline, mine = time_pair(
        lambda: loop_rank_sort_loss(logits, targets),
        lambda: _ours_rank_sort(logits, targets),
        repeats,
        sync,
    )
    rows.append({"name": f"rank_sort_loss fwd+bwd {size}", "baseline_s": baseline, "ours_s": mine})
    for row in rows:
        row["note"] = note
    return rows


if __name__ == "__main__":
    bench_main(run, __doc__)
