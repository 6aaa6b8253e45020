"""Unbalanced Sinkhorn matching (SSD300 priors) against uotod's multiplicative iteration.

The baseline is uotod's algorithm as published, written out here: the cost (with its
background column) divided by its maximum, the kernel ``K = exp(-C / reg)`` materialised
once, then ``u, v`` updated multiplicatively, each product formed as uotod does, by a
broadcast multiply and a sum over ``K``. A second baseline forms the same products with
batched matrix-vector products (``bmm``), the fastest a straightforward implementation
gets. detloss iterates in the scaling domain on a kernel into which the potentials are
absorbed once per block, with log-domain recovery, so it is stable at any ``reg``.

Both sides run the same number of iterations from the same start, so their plans must
agree; each plan's distance to the converged (float64) plan is reported as well. The costs
are drawn on the host and moved to the device, where both sides run; on a GPU a DINO-size
problem (B = 16, 900 queries, 100 targets, uniform costs) is timed as well.

Run: ``python benchmarks/bench_sinkhorn.py [--quick] [--repeats R] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import Tensor

from _timing import device_sync, print_rows, time_calls
from detloss.anchors import ssd_priors
from detloss.boxes import box_convert, box_iou
from detloss.match.sinkhorn import sinkhorn

# uotod's SSD example: IoU-loss cost, reg_pred = 1e3, reg_target = 1e-3, background 0.5.
TAU_PRED = 1e3
TAU_TARGET = 1e-3
BACKGROUND = 0.5


def make_cost(batch: int, num_targets: int, priors: Tensor, seed: int = 0) -> Tensor:
    """``1 - IoU`` between the priors and random ground-truth boxes: ``[B, P, N]``."""
    gen = torch.Generator().manual_seed(seed)
    centre = 0.1 + 0.8 * torch.rand(batch, num_targets, 2, generator=gen)
    size = 0.05 + 0.4 * torch.rand(batch, num_targets, 2, generator=gen)
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1).clamp(0, 1)
    anchors = box_convert(priors, "cxcywh", "xyxy").to(boxes.device)
    return 1.0 - box_iou(anchors.expand(batch, -1, -1), boxes)


@torch.no_grad()
def uotod_sinkhorn(
    cost: Tensor, reg: float, iters: int, tau_pred: float, tau_target: float, bmm: bool
) -> Tensor:
    """uotod's unbalanced multiplicative Sinkhorn on full masks; the plan scaled by M."""
    b, m, n = cost.shape
    full = torch.cat([cost, cost.new_full((b, m, 1), BACKGROUND)], dim=2)
    full = full / full.max()
    a = cost.new_full((b, m), 1.0 / m)
    hist = cost.new_full((b, n + 1), 1.0 / m)
    hist[:, n] = (m - n) / m
    phi_p = tau_pred / (tau_pred + reg)
    phi_t = tau_target / (tau_target + reg)
    kernel = torch.exp(-full / reg)
    u = torch.ones_like(a)

    def col(u: Tensor) -> Tensor:
        if bmm:
            return torch.bmm(u.unsqueeze(1), kernel).squeeze(1)
        return (kernel * u.unsqueeze(2)).sum(1)

    def row(v: Tensor) -> Tensor:
        if bmm:
            return torch.bmm(kernel, v.unsqueeze(2)).squeeze(2)
        return (kernel * v.unsqueeze(1)).sum(2)

    for _ in range(iters):
        v = (hist / col(u)) ** phi_t
        u = (a / row(v)) ** phi_p
    v = (hist / col(u)) ** phi_t
    return u.unsqueeze(2) * kernel * v.unsqueeze(1) * m


def ours(cost: Tensor, iters: int) -> Tensor:
    return sinkhorn(
        cost,
        tau_pred=TAU_PRED,
        tau_target=TAU_TARGET,
        background_cost=BACKGROUND,
        max_iter=iters,
        tol=0,
        validate=False,
    ).plan


def _distance(plan: Tensor, exact: Tensor) -> str:
    diff = (plan.double() - exact).abs()
    return f"max {diff.max().item():.1e}, mean row L1 {diff.sum(2).mean().item():.1e}"


def _case(
    name: str, cost: Tensor, iters: int, repeats: int, baselines: tuple[bool, ...]
) -> list[dict]:
    b, m, n = cost.shape
    reg = 0.12 / (math.log(2 * m) + 1)  # uotod's default, also ours
    ours_plan = ours(cost, iters)
    exact = sinkhorn(
        cost.double(),
        tau_pred=TAU_PRED,
        tau_target=TAU_TARGET,
        background_cost=BACKGROUND,
        max_iter=5000,
        tol=1e-9,
    ).plan

    sync = device_sync(cost.device)
    ours_s = time_calls(lambda: ours(cost, iters), repeats, sync=sync)
    rows = []
    for bmm in baselines:
        base_plan = uotod_sinkhorn(cost, reg, iters, TAU_PRED, TAU_TARGET, bmm)
        # Same iterations from the same start: the same plan up to float32 rounding.
        torch.testing.assert_close(ours_plan, base_plan, atol=2e-4, rtol=1e-3)

        kind = "bmm products" if bmm else "uotod broadcast-sum products"
        rows.append(
            {
                "name": f"{name} vs {'bmm' if bmm else 'uotod'}",
                "baseline_s": time_calls(
                    lambda bmm=bmm: uotod_sinkhorn(cost, reg, iters, TAU_PRED, TAU_TARGET, bmm),
                    repeats,
                    sync=sync,
                ),
                "ours_s": ours_s,
                "note": (
                    f"B={b} M={m} N={n}, {iters} iterations, baseline = {kind}; distance to "
                    f"the converged plan: baseline {_distance(base_plan, exact)}, "
                    f"ours {_distance(ours_plan, exact)}"
                ),
            }
        )
    return rows


def run(repeats: int = 5, quick: bool = False, device: str = "cpu") -> list[dict]:
    dev = torch.device(device)
    priors = ssd_priors()
    batch = 2 if quick else 16
    cost = make_cost(batch, 20, priors).to(dev)
    rows = _case(
        f"unbalanced sinkhorn B={batch} M={priors.shape[0]} N=20",
        cost,
        70,
        repeats,
        baselines=(False, True),
    )
    if dev.type != "cpu":
        # DINO-sized problem: 900 queries, 100 targets.
        gen = torch.Generator().manual_seed(1)
        dino_cost = torch.rand(batch, 900, 100, generator=gen).to(dev)
        rows += _case(
            f"unbalanced sinkhorn B={batch} M=900 N=100", dino_cost, 70, repeats, (False, True)
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 2 instead of 16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="e.g. cuda")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}")
    rows = run(args.repeats, quick=args.quick, device=args.device)
    print_rows(rows)


if __name__ == "__main__":
    main()
