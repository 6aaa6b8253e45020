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

A second section compares balanced ``sinkhorn`` with the solvers a user would call from
POT (0.9.7) on a DINO-size batch (B = 16, M = 900 queries, N = 100 targets, uniform
costs, background 1, uotod's default reg), from 5 to 200 iterations: ``ot.sinkhorn`` per
image on NumPy float64 and on torch float32, ``ot.bregman.sinkhorn_log`` per image on
torch (up to 50 iterations; it is several times slower), and ``ot.batch.solve_batch``
(method ``"sinkhorn"``) on the whole torch float32 batch. Each is given the cost with its
background column already built and normalised, and the masses (work detloss does inside
its call); the fastest at each iteration count is the baseline. POT's k iterations are 2k
half-steps, detloss's 2k + 1 (a final target update, so the target marginals are exact):
the same plan as POT's k iterations plus one target update, asserted to
``rtol = 1e-3, atol = 2e-5`` (float32 against float64); each plan's distance to the
converged plan is in the note. NumPy's OpenBLAS keeps its own thread count.

Run: ``python benchmarks/bench_sinkhorn.py [--quick] [--repeats R] [--device cuda]
[--threads T]``.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from _timing import bench_main, device_sync, time_calls, time_pair
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


# -- peers: POT ----------------------------------------------------------------------------

PEER_ITERS = (5, 10, 20, 50, 200)


def _peer_problem(batch: int, m: int, n: int, seed: int = 1) -> dict:
    """A balanced DINO-size problem as POT takes it: the normalised cost with the
    background column ``[B, M, N + 1]`` and the masses, on torch (float32) and NumPy."""
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(batch, m, n, generator=gen)
    full = torch.cat([cost, torch.ones(batch, m, 1)], dim=2)
    full = full / full.amax(dim=(1, 2), keepdim=True)
    a = torch.full((batch, m), 1.0 / m)
    b = torch.full((batch, n + 1), 1.0 / m)
    b[:, n] = (m - n) / m
    return {
        "cost": cost,
        "full": full,
        "a": a,
        "b": b,
        "full64": full.double().numpy(),
        "a64": a.double().numpy(),
        "b64": b.double().numpy(),
        "reg": 0.12 / (math.log(2 * m) + 1),  # uotod's default, also ours
    }


def _pot_solvers(problem: dict, iters: int) -> dict:
    """POT's balanced solvers, each returning the plans scaled by M (``[B, M, N + 1]``)."""
    import ot
    from ot.batch import solve_batch

    full, a, b, reg = problem["full"], problem["a"], problem["b"], problem["reg"]
    full64, a64, b64 = problem["full64"], problem["a64"], problem["b64"]
    m = full.shape[1]

    def numpy_scaling():
        return np.stack(
            [ot.sinkhorn(a64[i], b64[i], full64[i], reg, numItermax=iters, stopThr=0) for i in
             range(len(full64))]
        ) * m  # fmt: skip

    def torch_scaling():
        return torch.stack(
            [ot.sinkhorn(a[i], b[i], full[i], reg, numItermax=iters, stopThr=0) for i in
             range(len(full))]
        ) * m  # fmt: skip

    def torch_log():
        return torch.stack(
            [ot.bregman.sinkhorn_log(a[i], b[i], full[i], reg, numItermax=iters, stopThr=0)
             for i in range(len(full))]
        ) * m  # fmt: skip

    def torch_batch():
        return solve_batch(full, reg, a, b, max_iter=iters, tol=0, method="sinkhorn").plan * m

    solvers = {
        "ot.sinkhorn numpy f64 per image": numpy_scaling,
        "ot.sinkhorn torch f32 per image": torch_scaling,
        "ot.batch.solve_batch torch f32": torch_batch,
    }
    if iters <= 50:
        solvers["ot.bregman.sinkhorn_log torch f32 per image"] = torch_log
    return solvers


def _pot_plus_target_update(problem: dict, iters: int) -> Tensor:
    """POT's NumPy ``ot.sinkhorn`` after ``iters`` iterations, then one target update:
    the half-step sequence of detloss's ``iters`` iterations, in float64."""
    import ot

    full64, a64, b64, reg = problem["full64"], problem["a64"], problem["b64"], problem["reg"]
    plans = []
    for i in range(len(full64)):
        _, log = ot.sinkhorn(a64[i], b64[i], full64[i], reg, numItermax=iters, stopThr=0, log=True)
        kernel = np.exp(-full64[i] / reg)
        u = log["u"]
        v = b64[i] / (kernel.T @ u)
        plans.append(u[:, None] * kernel * v[None, :])
    return torch.from_numpy(np.stack(plans)) * full64.shape[1]


def _peer_ours(problem: dict, iters: int) -> Tensor:
    return sinkhorn(problem["cost"], max_iter=iters, tol=0).plan


def _as_tensor(plan) -> Tensor:
    return torch.as_tensor(plan).double()


def _peer_rows(repeats: int, quick: bool, iters_list: Sequence[int] | None = None) -> list[dict]:
    batch = 4 if quick else 16
    problem = _peer_problem(batch, 900, 100)
    if iters_list is None:
        iters_list = (5, 50) if quick else PEER_ITERS
    converged = sinkhorn(problem["cost"].double(), max_iter=5000, tol=1e-10).plan
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT warns that it did not converge: by design
        for iters in iters_list:
            ours_plan = _peer_ours(problem, iters)
            reference = _pot_plus_target_update(problem, iters)
            torch.testing.assert_close(ours_plan.double(), reference, rtol=1e-3, atol=2e-5)
            # The fastest POT solver at this iteration count.
            solvers = _pot_solvers(problem, iters)
            medians = {
                name: statistics.median(time_calls(fn, 2 if quick else 3))
                for name, fn in solvers.items()
            }
            best = min(medians, key=medians.get)
            pot_plan = _as_tensor(solvers[best]())
            base_s, ours_s = time_pair(
                solvers[best], lambda iters=iters: _peer_ours(problem, iters), repeats
            )
            others = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in medians.items())
            rows.append(
                {
                    "name": f"sinkhorn vs POT, {iters} iterations",
                    "baseline_s": base_s,
                    "ours_s": ours_s,
                    "note": (
                        f"B={batch} M=900 N=100, {torch.get_num_threads()} torch threads; "
                        f"baseline = {best}; POT medians: {others}; distance to the "
                        f"converged plan: POT {_distance(pot_plan, converged)}, "
                        f"ours {_distance(ours_plan, converged)}"
                    ),
                }
            )
    return rows


def run(
    repeats: int = 5,
    quick: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    peers: bool = True,
    uotod: bool = True,
    peer_iters: Sequence[int] | None = None,
) -> list[dict]:
    """Time both implementations; returns rows for a suite runner. ``threads`` sets
    ``torch.set_num_threads`` for the run (restored afterwards); ``peers`` adds the POT
    section (CPU only), at ``peer_iters`` iterations (None: all of ``PEER_ITERS``, or
    the quick ones); ``uotod=False`` leaves out the comparison with uotod."""
    if threads is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run(repeats, quick, device, peers=peers, uotod=uotod, peer_iters=peer_iters)
        finally:
            torch.set_num_threads(before)
    dev = torch.device(device)
    batch = 2 if quick else 16
    rows = []
    if uotod:
        priors = ssd_priors()
        cost = make_cost(batch, 20, priors).to(dev)
        rows += _case(
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
    elif peers:
        rows += _peer_rows(repeats, quick, peer_iters)
    return rows


if __name__ == "__main__":
    bench_main(run, __doc__)
