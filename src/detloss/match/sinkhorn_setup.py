"""The set-up of the Sinkhorn solver from a checked cost: the masses, the default
regularisation, the first kernel (a cold start in a handful of passes over the cost, or
the general path: forbidden pairs, warm starts, eps scaling), and the result."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .sinkhorn_solver import _FLOOR, _LOG2E, _SLOW_EXP, _new_t, _pairs_t, _Solver

# Private to detloss.match: sinkhorn.py calls _solve().
__all__: list[str] = []


# -- the set-up ------------------------------------------------------------------------------

# A reduction over the predictions of a contiguous [B, M, N] cost runs along rows of N
# contiguous entries, which torch vectorises poorly for small N (several times slower
# than a sum): folding rows into rows of about this many entries first is exact for a
# minimum or maximum and runs at memory speed.
_FOLD_WIDTH = 2048


def _column_reduce(x: Tensor, op: Callable[..., Tensor]) -> Tensor:
    """``op(x, 1)`` for ``x [B, M, N]`` and ``op`` ``torch.amin`` or ``torch.amax``: each
    column's extremum over the predictions, ``[B, N]``, the same values (NaN propagated)."""
    b, m, n = x.shape
    fold = _FOLD_WIDTH // max(n, 1)
    rows = m // max(fold, 1)
    if fold < 2 or rows < 2 or not x.is_contiguous():
        return op(x, 1)
    # k = fold consecutive predictions side by side: [B, M // k, k * N], then the k
    # partial results and the rows left over.
    head = op(x[:, : rows * fold].reshape(b, rows, fold * n), 1).view(b, fold, n)
    if rows * fold < m:
        head = torch.cat([head, x[:, rows * fold :]], 1)
    return op(head, 1)


_BAD_COST = (
    "cost: expected finite values or +inf (forbidden pairs) in the real entries and "
    "background_cost, got NaN or -inf"
)


def _cold_kernel(
    cost: Tensor,
    background: Tensor,
    row_valid: Tensor,
    col_valid: Tensor,
    mass_b: Tensor,
    reg: float | Tensor,
    dtype: torch.dtype,
    *,
    normalize: bool,
    validate: bool,
    rows_padded: bool,
    cols_padded: bool,
) -> tuple[Tensor, Tensor, Tensor, tuple[bool, bool, bool, bool]] | None:
    """The first kernel's exponent for a cold start, in three passes over the cost (two
    reductions and one write), or None where a real entry is ``+inf`` (forbidden pairs
    take the general set-up).

    The column minima give the checks (amin propagates NaN and finds ``-inf``) and the
    shift; the column maxima (without masks, the image's) the magnitude, forbidden pairs
    and the deepest exponent. The exponent ``S + g_k`` with
    ``g_k = log b + min_i C_ij / reg`` puts each real column's largest kernel entry at
    its mass ``b_j``: no column underflows and the first target update's scalings are
    about ``1 / (number of close predictions)``, well inside the solver's safe range.

    Returns ``x_t [B, N + 1, M]`` (``(S + g_k) * log2(e)``, the kernel's base-2 exponent;
    invalid entries hold anything), ``g_k
    [B, N + 1]``, the magnitude ``[B]`` and the flags of :meth:`_Solver.cold_start`
    (flush, clamp, mask_rows, mask_cols). Raises ValueError on NaN or ``-inf`` when
    ``validate``. ``rows_padded``: some prediction is padding; ``cols_padded``: some
    target may be."""
    b, m, n = cost.shape
    c = cost.to(dtype)
    if rows_padded:
        keep = row_valid[:, :, None]
        low = _column_reduce(torch.where(keep, c, torch.inf), torch.amin)
        high = _column_reduce(torch.where(keep, c, -torch.inf), torch.amax)
        bg_low = torch.where(row_valid, background, torch.inf).amin(1, keepdim=True)
        bg_high = torch.where(row_valid, background, -torch.inf).amax(1, keepdim=True)
    elif cols_padded or n == 0:
        low, high = _column_reduce(c, torch.amin), _column_reduce(c, torch.amax)
        bg_low, bg_high = background.amin(1, keepdim=True), background.amax(1, keepdim=True)
    else:
        # Every entry is real: the image's largest cost stands in for each column's (a
        # reduction over contiguous memory, several times faster). The magnitude is the
        # same; the deepest exponent is bounded from below, so at worst an exponent is
        # clamped or flushed that did not need it, with the same kernel.
        low, high = _column_reduce(c, torch.amin), c.amax((1, 2))[:, None].expand(b, n)
        bg_low, bg_high = background.amin(1, keepdim=True), background.amax(1, keepdim=True)
    low = torch.cat([low, bg_low], 1)
    high = torch.cat([high, bg_high], 1)
    if normalize:
        largest = torch.where(col_valid, torch.maximum(high.abs(), low.abs()), 0.0)
        magnitude = largest.amax(1).clamp(min=torch.finfo(dtype).tiny)
    else:
        magnitude = c.new_ones(b)
    # 1 / (magnitude * reg) per image, and the shift, in float64: both are of size 1 / reg.
    reg64 = reg if isinstance(reg, float) else reg.to(torch.float64)
    inv = 1.0 / (magnitude.to(torch.float64)[:, None] * reg64)
    log_b = torch.where(col_valid, mass_b.log(), 0.0)
    g_k = torch.where(col_valid, low.to(torch.float64) * inv + log_b, 0.0)
    deepest = log_b - (high - low).to(torch.float64) * inv
    bad = (torch.isnan(low) | (low == -torch.inf)) & col_valid
    forbidden = (high == torch.inf) & col_valid
    # One host synchronisation for every decision.
    bad, forbidden, flush, clamp, mask_cols = torch.stack(
        [
            bad.any(),
            forbidden.any(),
            ((deepest < _FLOOR[dtype]) & col_valid).any(),
            ((deepest < _SLOW_EXP[dtype]) & col_valid).any(),
            ~col_valid.all(),
        ]
    ).tolist()
    if validate and bad:
        raise ValueError(_BAD_COST)
    if forbidden:
        return None
    # x = (g_k - C / reg) * log2(e) in the solver's layout (on the CPU the cost's own), in
    # one pass; both factors are rounded once from float64, as without the log2(e).
    x_t = _new_t(c, b, m, n)
    g_k2 = (g_k * _LOG2E).to(dtype)
    neg_inv2 = (inv * -_LOG2E).to(dtype)
    torch.addcmul(g_k2[:, :n, None], c.transpose(1, 2), neg_inv2[:, :, None], out=x_t[:, :n])
    torch.addcmul(g_k2[:, n:], background, neg_inv2, out=x_t[:, n])
    return x_t, g_k.to(dtype), magnitude, (flush, clamp, rows_padded, mask_cols)


class _GeneralSolver(_Solver):
    """A solver on the normalised cost built up front (warm starts, eps scaling, forbidden
    pairs); ``scale_cost [B]`` is where eps scaling starts."""

    scale_cost: Tensor


def _general_solver(
    cost: Tensor,
    background: Tensor,
    row_valid: Tensor,
    col_valid: Tensor,
    mass_a: Tensor,
    mass_b: Tensor,
    dtype: torch.dtype,
    *,
    normalize: bool,
    validate: bool,
    eps_scaling: int,
) -> _GeneralSolver:
    """The solver on the cost built, checked and normalised with every pass spelled out."""
    b = cost.shape[0]
    # Targets by predictions, [B, N + 1, M]: the solver's layout.
    pair_valid_t = _pairs_t(row_valid, col_valid)
    cost_t = _new_t(cost, b, cost.shape[1], cost.shape[2], dtype)
    cost_t[:, :-1].copy_(cost.transpose(1, 2))
    cost_t[:, -1].copy_(background)
    if validate and cost_t.numel():
        bad = (torch.isnan(cost_t) | (cost_t == -torch.inf)) & pair_valid_t
        if bool(bad.any()):
            raise ValueError(_BAD_COST)
    # Padded entries may hold anything (NaN included): they never enter a sum.
    cost_t = torch.where(pair_valid_t, cost_t, 0.0)
    scale_cost = cost_t.new_ones(b)  # where eps scaling starts
    if (normalize or eps_scaling) and cost_t.numel():
        finite = torch.where(pair_valid_t & torch.isfinite(cost_t), cost_t.abs(), 0.0)
        magnitude = finite.amax(dim=(1, 2)).clamp(min=torch.finfo(dtype).tiny)
        if normalize:
            cost_t = cost_t / magnitude[:, None, None]
        else:
            scale_cost = magnitude
    solver = _GeneralSolver(cost_t, pair_valid_t, row_valid, col_valid, mass_a, mass_b)
    solver.scale_cost = scale_cost
    return solver


# -- the driver ---------------------------------------------------------------------------------


def _solve(
    cost: Tensor,
    background: Tensor,
    target_mask: Tensor,
    pred_mask: Tensor,
    has_pred_mask: bool,
    has_target_mask: bool,
    *,
    reg: float | None,
    reg_dimless: float,
    tau_pred: float | None,
    tau_target: float | None,
    normalize: bool,
    max_iter: int,
    tol: float,
    check_every: int,
    eps_scaling: int,
    warm_start: tuple[Tensor, Tensor] | None,
    validate: bool,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor, float]:
    """Sinkhorn on checked arguments: ``cost [B, M, N]``, ``background [B, M]`` and the
    masks in the compute dtype and on one device (``has_pred_mask``, ``has_target_mask``:
    the caller gave that mask; with ``pred_mask`` the default ``reg`` is per image). Returns the plan ``[B, M, N + 1]``
    scaled by each image's prediction count, each row's argmax where it was found on the
    way (else None), the potentials ``f [B, M]``, ``g [B, N + 1]``
    in cost units (zero on padded entries) and the last residual (inf when not measured)."""
    b, m, n = cost.shape
    dtype, device = background.dtype, cost.device
    # Counts and masses (float64: they set the marginals); the plan is scaled by each
    # image's prediction count.
    n_pred = pred_mask.sum(dim=1)
    n_target = target_mask.sum(dim=1)
    m64 = n_pred.clamp(min=1).to(torch.float64)
    bg_mass = (n_pred - n_target).clamp(min=0).to(torch.float64) / m64
    row_valid = pred_mask
    col_valid = torch.cat([target_mask & (n_pred > 0)[:, None], (bg_mass > 0)[:, None]], 1)
    share = 1.0 / torch.maximum(n_pred, n_target).clamp(min=1).to(torch.float64)
    mass_b = torch.where(
        col_valid, torch.cat([share[:, None].expand(b, n), bg_mass[:, None]], 1), 0.0
    )
    mass_a = torch.where(row_valid, (1.0 / m64)[:, None], 0.0)

    reg_t: float | Tensor
    if reg is not None:
        reg_t = reg
    elif has_pred_mask:
        # Padded predictions: the default reg follows each image's own count.
        reg_t = (reg_dimless / (torch.log(2 * m64) + 1))[:, None].to(dtype)
    else:
        reg_t = reg_dimless / (math.log(2 * max(m, 1)) + 1)

    residual = 0.0
    cold = None
    if b * m > 0 and warm_start is None and eps_scaling == 0:
        rows_padded = has_pred_mask and not bool(row_valid.all())
        cold = _cold_kernel(
            cost, background, row_valid, col_valid, mass_b, reg_t, dtype,
            normalize=normalize, validate=validate, rows_padded=rows_padded,
            cols_padded=has_target_mask,
        )  # fmt: skip
    if b * m == 0:
        plan, column = torch.zeros((b, m, n + 1), dtype=dtype, device=device), None
        f = plan.new_zeros((b, m))
        g = plan.new_zeros((b, n + 1))
    elif cold is not None:
        # The usual call: no +inf entry, a cold start. The solver forms the normalised
        # cost only if a slow path (a rebuild, log-domain steps) asks for it.
        x_t, g_k, magnitude, flags = cold

        def cost_t() -> Tensor:
            full = _new_t(cost, b, m, n, dtype)
            full[:, :n].copy_(cost.transpose(1, 2))
            full[:, n].copy_(background)
            pair_valid_t = _pairs_t(row_valid, col_valid)
            return torch.where(pair_valid_t, full, 0.0).div_(magnitude[:, None, None])

        solver = _Solver(cost_t, None, row_valid, col_valid, mass_a, mass_b, dtype)
        solver.set_reg(reg_t, tau_pred, tau_target)
        solver.cold_start(x_t, g_k, *flags)
        residual = solver.iterate(0, max_iter, check_every, tol)
        f, g = solver.potentials()
        plan, column = solver.plan(m64.to(dtype))
    else:
        solver = _general_solver(
            cost, background, row_valid, col_valid, mass_a, mass_b, dtype,
            normalize=normalize, validate=validate, eps_scaling=eps_scaling,
        )  # fmt: skip
        f = torch.zeros((b, m), dtype=dtype, device=device)
        g: Tensor | None = None
        if warm_start is not None:
            f0, g0 = (p.detach().to(device=device, dtype=dtype) for p in warm_start)
            f = torch.where(row_valid & torch.isfinite(f0), f0 / reg_t, 0.0)
            g = torch.where(col_valid & torch.isfinite(g0), g0 / reg_t, 0.0)
        reg_prev = reg_t
        for stage in range(eps_scaling):
            ratio = torch.clamp(solver.scale_cost[:, None] / reg_t, min=1.0)
            reg_s = reg_t * ratio ** ((eps_scaling - stage) / eps_scaling)
            f = f * (reg_prev / reg_s)
            g = None if g is None else g * (reg_prev / reg_s)
            solver.set_reg(reg_s, tau_pred, tau_target)
            solver.run(f, g, check_every, check_every, 0.0)
            f, g = solver.potentials()
            reg_prev = reg_s
        if eps_scaling:
            f = f * (reg_prev / reg_t)
            g = g * (reg_prev / reg_t)
        solver.set_reg(reg_t, tau_pred, tau_target)
        residual = solver.run(f, g, max_iter, check_every, tol)
        f, g = solver.potentials()
        plan, column = solver.plan(m64.to(dtype))
    potentials = (
        torch.where(row_valid, f * reg_t, 0.0),
        torch.where(col_valid, g * reg_t, 0.0),
    )
    return plan, column, *potentials, residual
