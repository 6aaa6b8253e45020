"""Sigmoid focal loss, forward and backward, against torchvision's ``sigmoid_focal_loss``.

torchvision's focal loss is plain torch (no compiled operator), but its wheel does not load
beside a CPU-only torch build, so the baseline is its published function transcribed
operation for operation: ``sigmoid``, ``binary_cross_entropy_with_logits``, ``p_t``,
``(1 - p_t) ** gamma``, ``alpha_t``, and autograd for the backward. detloss computes the
same values with the same operations (asserted equal to the bit) and, for ``gamma >= 1``,
writes the gradient in the logits out in one autograd node. Both sides are timed from
logits that require a gradient to the filled ``.grad``, with ``reduction="sum"``; the
gradients must agree to float32 rounding.

Run: ``python benchmarks/bench_focal.py [--quick] [--repeats R] [--threads T]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from _timing import bench_main, device_sync, time_pair
from detloss.losses.focal import sigmoid_focal_loss

# (name, shape): DETR-style queries by classes, and a dense RetinaNet-style level set.
CASES = (
    ("DETR queries", (16, 900, 91)),
    ("dense anchors", (8, 20000, 80)),
)
QUICK_CASES = (("DETR queries", (4, 300, 91)), ("dense anchors", (2, 5000, 80)))


def torchvision_focal(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:  # fmt: skip
    """torchvision.ops.sigmoid_focal_loss (torchvision 0.2x), transcribed."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss.sum() if reduction == "sum" else loss


def _problem(shape: tuple[int, ...], device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(shape, generator=gen) - 3).to(device)
    # About 1 % positives, as in detection.
    targets = (torch.rand(shape, generator=gen) < 0.01).float().to(device)
    return logits, targets


def _step(loss_fn, logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    x = logits.detach().requires_grad_()
    loss_fn(x, targets, gamma).backward()
    return x.grad


def _ours(x: Tensor, t: Tensor, gamma: float) -> Tensor:
    return sigmoid_focal_loss(x, t, 0.25, gamma, reduction="sum")


def _theirs(x: Tensor, t: Tensor, gamma: float) -> Tensor:
    return torchvision_focal(x, t, 0.25, gamma, "sum")


def run(
    repeats: int = 5, quick: bool = False, device: str = "cpu", threads: int | None = None
) -> list[dict]:
    """Time both sides; returns rows for a suite runner. ``threads`` sets
    ``torch.set_num_threads`` for the run (restored afterwards)."""
    if threads is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run(repeats, quick, device)
        finally:
            torch.set_num_threads(before)
    dev = torch.device(device)
    sync = device_sync(dev)
    rows = []
    for name, shape in QUICK_CASES if quick else CASES:
        logits, targets = _problem(shape, dev)
        for gamma in (2.0, 1.0):
            with torch.no_grad():
                assert torch.equal(
                    sigmoid_focal_loss(logits, targets, 0.25, gamma, reduction="none"),
                    torchvision_focal(logits, targets, 0.25, gamma),
                )
            grad_ours = _step(_ours, logits, targets, gamma)
            grad_theirs = _step(_theirs, logits, targets, gamma)
            torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-7)
            base_s, ours_s = time_pair(
                lambda x=logits, t=targets, g=gamma: _step(_theirs, x, t, g),
                lambda x=logits, t=targets, g=gamma: _step(_ours, x, t, g),
                repeats,
                sync=sync,
            )
            rows.append(
                {
                    "name": f"focal fwd+bwd {name} gamma={gamma:g}",
                    "baseline_s": base_s,
                    "ours_s": ours_s,
                    "note": (
                        f"{tuple(shape)}, {dev.type}, {torch.get_num_threads()} torch threads; "
                        "baseline = torchvision's sigmoid_focal_loss transcribed "
                        "(its wheel does not load beside this torch)"
                    ),
                }
            )
    return rows


if __name__ == "__main__":
    bench_main(run, __doc__)
