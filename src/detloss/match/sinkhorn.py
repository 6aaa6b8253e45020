"""Entropic optimal-transport matching (balanced and unbalanced Sinkhorn) with a background
column, batched over images and stable down to tiny regularisations.

For each image (``m`` real predictions, ``n`` real targets) the plan ``P [m, n + 1]`` (last
column: the background) minimises

    <P, C> + reg * sum_ij P_ij (log P_ij - 1) + tau_pred * KL(P 1 | a) + tau_target * KL(P^T 1 | b)

with ``a_i = 1/m``, ``b_j = 1/m`` and the background's ``b = (m - n)/m``: the entropic
regularisation, as uotod and POT's ``reg_type="entropy"`` (not ``reg * KL(P | a b^T)``,
POT's default ``"kl"``, which has the same solution only for balanced OT). A ``tau`` of
None is a hard marginal; both None is balanced OT. ``docs/sinkhorn.md`` has the maths,
the limits and the differences from uotod.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_tensor, compute_dtype, shape_str
from .._kernels import fast_path
from ._common import broadcast_value, prepare_cost
from .matching import BACKGROUND, IGNORED, Matching
from .modules import BoxCostMatcher

__all__ = ["SinkhornConvergenceWarning", "SinkhornMatcher", "sinkhorn"]


class SinkhornConvergenceWarning(UserWarning):
    """Sinkhorn stopped at ``max_iter`` with its marginal error still above ``tol``."""


# The scaling-domain kernel flushes entries below exp(_FLOOR) to zero and keeps every
# scaling u, v within exp(+-_RANGE) of 1 (else it is rebuilt, or the block is redone in the
# log domain). A flushed entry then carries at most exp(_FLOOR + 2 * _RANGE) of mass
# (exp(-27) in float32), and kernel * scaling never reaches the denormal range, whose
# arithmetic is an order of magnitude slower on CPUs.
_FLOOR = {torch.float32: -67.0, torch.float64: -400.0}
_RANGE = {torch.float32: 20.0, torch.float64: 150.0}
_BMM_MIN_ENTRIES = 1 << 16


# -- argument checks --------------------------------------------------------------------------


def _check_number(value: object, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name}: expected a number {bound}, got {value}")
    return value


def _check_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return float(value)


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def _check_tau(value: object, name: str) -> float | None:
    return None if value is None else _check_number(value, name)


def background_column(
    value: float | Tensor, b: int, m: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``background_cost`` (a float or a tensor broadcastable to ``[B, M]``) as ``[B, M]``."""
    if isinstance(value, bool) or not isinstance(value, (Tensor, int, float)):
        raise TypeError(f"background_cost must be a float or a tensor, got {type(value).__name__}")
    return broadcast_value(value, (b, m), dtype, device, "background_cost", "[B, M]")


def plan_to_assignment(plan: Tensor, row_valid: Tensor) -> Tensor:
    """``pred_to_target`` of a ``[B, M, N + 1]`` plan: each row's argmax (the first of tied
    maxima), the last column read as background (``-1``), rows outside ``row_valid``
    ignored (``-2``)."""
    n = plan.shape[2] - 1
    if plan.shape[1] == 0:
        column = torch.zeros(plan.shape[:2], dtype=torch.int64, device=plan.device)
    elif (kernel := _argmax_kernel(plan)) is not None:
        column = torch.empty(plan.shape[:2], dtype=torch.int64)
        values = plan.detach().contiguous().view(-1, n + 1)
        kernel.row_argmax(values.numpy(), column.view(-1).numpy())
    else:
        column = plan.argmax(dim=2)
    p2t = torch.where(column == n, BACKGROUND, column)
    return p2t.masked_fill(~row_valid, IGNORED)


def _argmax_kernel(plan: Tensor) -> ModuleType | None:
    """The compiled row argmax where it applies to ``plan``, else None (``torch.argmax``)."""
    if plan.dtype not in (torch.float32, torch.float64) or not plan.numel():
        return None
    return fast_path("row_argmax", plan.device)


# -- the solver ---------------------------------------------------------------------------------


def _fused_block(kernel_t: Tensor) -> ModuleType | None:
    """The fused scaling block's module where it applies to the kernel ``[B, N + 1, M]``,
    else None (the torch path): a CUDA device of compute capability 7.0 or later (what
    Triton compiles for; not ROCm, untested), ``triton`` importable, and a float32 or
    float64 kernel with ``N + 1 <= 512`` and ``M * (N + 1) <= 2^22`` per image
    (``detloss._kernels.sinkhorn_cuda.supports``). The CPU never imports triton."""
    if kernel_t.device.type != "cuda" or torch.version.hip is not None:
        return None
    if torch.cuda.get_device_capability(kernel_t.device) < (7, 0):
        return None
    kernel = fast_path("sinkhorn_scaling", kernel_t.device)
    return kernel if kernel is not None and kernel.supports(kernel_t) else None


def _exponent(tau: float | None, reg: float | Tensor) -> float | Tensor:
    """The KL-relaxation exponent ``tau / (tau + reg)``: 1 for a hard marginal (None or inf)."""
    if tau is None or math.isinf(tau):
        return 1.0
    return tau / (tau + reg)


def _is_one(phi: float | Tensor) -> bool:
    return isinstance(phi, float) and phi == 1.0


def _log_update(
    y: Tensor, dim: int, log_mass: Tensor, valid: Tensor, phi: float | Tensor
) -> Tensor:
    """One exact log-domain half-step: ``phi * (log mass - logsumexp(y, dim))``."""
    value = log_mass - torch.logsumexp(y, dim=dim)
    if not _is_one(phi):
        value = phi * value
    return torch.where(valid, value, 0.0)


def _new_t(like: Tensor, b: int, m: int, n: int, dtype: torch.dtype | None = None) -> Tensor:
    """An empty ``[B, N + 1, M]`` tensor in the solver's memory layout: on the CPU the
    transpose of a contiguous ``[B, M, N + 1]`` one, so that neither the cost coming in
    nor the plan going out is transposed in memory (a strided copy costs more there than
    an iteration), and both products of an iteration are fast batched BLAS calls; on
    other devices contiguous (the fused CUDA block streams it row by row)."""
    dtype = like.dtype if dtype is None else dtype
    if like.device.type == "cpu":
        return like.new_empty((b, m, n + 1), dtype=dtype).transpose(1, 2)
    return like.new_empty((b, n + 1, m), dtype=dtype)


def _pairs_t(row_valid: Tensor, col_valid: Tensor) -> Tensor:
    """``bool[B, N + 1, M]``: both the target (or background) and the prediction are
    real, in the solver's layout (:func:`_new_t`)."""
    if row_valid.device.type == "cpu":
        return (row_valid[:, :, None] & col_valid[:, None, :]).transpose(1, 2)
    return col_valid[:, :, None] & row_valid[:, None, :]


class _Solver:
    """Sinkhorn on one batch, everything indexed targets by predictions: ``[B, N + 1, M]``.
    On CUDA that is also the memory layout (the fused block streams rows of predictions);
    on the CPU the tensors are transposes of ``[B, M, N + 1]`` ones (:func:`_new_t`), so
    the cost and the plan keep the caller's layout. The sums over the M predictions are
    then column sums, about 4e-6 relative in float32 at M = 8732 (dot products along
    contiguous memory: 3e-7), well inside the iterations' own error.

    Potentials ``f [B, M]``, ``g [B, N + 1]`` are in units of ``reg``: the plan is
    ``exp(S + f + g)`` with ``S = -C / reg``. Invalid entries have ``S = -inf`` and a zero
    potential. Between blocks the state is the one right after a target update, the form
    uotod returns: ``k`` iterations are a target update then ``k`` times (prediction
    update, target update).

    The fast path keeps a kernel ``exp(S + f_k + g_k)`` and scalings ``u, v`` (the
    potentials are ``f_k + log u``, ``g_k + log v``); each half-step is one batched
    matrix-vector product. The kernel is rebuilt when the scalings drift, and a block that
    leaves the safe range is redone in the log domain. On CUDA a whole block of iterations
    is one fused Triton kernel where ``_fused_block`` allows, with the same results up to
    rounding.
    """

    def __init__(
        self,
        cost_t: Tensor | Callable[[], Tensor],
        pair_valid_t: Tensor | None,
        row_valid: Tensor,
        col_valid: Tensor,
        a: Tensor,
        b: Tensor,
        dtype: torch.dtype | None = None,
    ) -> None:
        """``cost_t [B, N + 1, M]`` (or a function building it, called only where a slow
        path needs it; ``dtype`` is then the compute dtype), ``pair_valid_t`` (None: built
        from the masks on first use); ``a [B, M]``, ``b [B, N + 1]``: the masses in
        float64, zero where invalid."""
        self._cost_t = cost_t
        self._pair_valid_t = pair_valid_t
        self.row_valid = row_valid
        self.col_valid = col_valid
        self.dtype = cost_t.dtype if isinstance(cost_t, Tensor) else dtype
        # float64 logs for the per-kernel constants: in float32, log-then-exp would move a
        # mass by up to ulp(log m) ~ 5e-7 relative, more than the iterations' own error.
        self.log_a64 = torch.where(row_valid, a.log(), 0.0)
        self.log_b64 = torch.where(col_valid, b.log(), 0.0)
        self.log_a = self.log_a64.to(self.dtype)
        self.log_b = self.log_b64.to(self.dtype)
        # Exact zeros on invalid entries keep padded scalings at zero.
        self.a = a.to(self.dtype)
        self.b = b.to(self.dtype)
        self.tiny = torch.finfo(self.dtype).tiny
        self.floor = _FLOOR[self.dtype]
        self.range = _RANGE[self.dtype]
        # CPU bmm splits even a tiny batch over threads; on a busy machine each call then
        # waits milliseconds for a descheduled thread. Small kernels use a product and a
        # sum, which torch keeps on one thread below its parallel grain size.
        numel = row_valid.shape[0] * row_valid.shape[1] * col_valid.shape[1]
        self.use_bmm = row_valid.device.type != "cpu" or numel >= _BMM_MIN_ENTRIES
        self.fused = _fused_block(cost_t) if isinstance(cost_t, Tensor) else None
        self._S_t: Tensor | None = None

    @property
    def cost_t(self) -> Tensor:
        """The normalised cost ``[B, N + 1, M]`` (zero on invalid pairs)."""
        if not isinstance(self._cost_t, Tensor):
            self._cost_t = self._cost_t()
        return self._cost_t

    @property
    def pair_valid_t(self) -> Tensor:
        """``bool[B, N + 1, M]``: both the target (or background) and the prediction real."""
        if self._pair_valid_t is None:
            self._pair_valid_t = _pairs_t(self.row_valid, self.col_valid)
        return self._pair_valid_t

    @property
    def S_t(self) -> Tensor:
        """``-C / reg [B, N + 1, M]``, ``-inf`` on invalid pairs: what the log-domain steps
        and a rebuild read; formed on first use (a cold start never needs it)."""
        if self._S_t is None:
            self._S_t = torch.where(self.pair_valid_t, self.cost_t / -self.reg, -torch.inf).to(
                self.dtype
            )
        return self._S_t

    def set_reg(
        self, reg: float | Tensor, tau_pred: float | None, tau_target: float | None
    ) -> None:
        """Use ``reg`` (a float or a ``[B, 1]`` tensor) from now on."""
        self.reg = reg if isinstance(reg, float) else reg.to(torch.float64)[:, :, None]
        self._S_t = None
        self.phi_p = _exponent(tau_pred, reg)
        self.phi_t = _exponent(tau_target, reg)

    # -- log domain ---------------------------------------------------------------------
    def log_target(self, f: Tensor) -> Tensor:
        """The exact target update: ``g = phi_t (log b - logsumexp_i(S + f))``."""
        y = self.S_t + f[:, None, :]
        return _log_update(y, 2, self.log_b, self.col_valid, self.phi_t)

    def log_pred(self, g: Tensor) -> Tensor:
        """The exact prediction update: ``f = phi_p (log a - logsumexp_j(S + g))``."""
        y = self.S_t + g[:, :, None]
        return _log_update(y, 1, self.log_a, self.row_valid, self.phi_p)

    def log_block(
        self, f: Tensor, g: Tensor, n_iter: int, residual: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``n_iter`` iterations of exact logsumexp updates (the slow, always-stable path).
        Returns ``(f, g)`` and the residual (zeros unless ``residual``)."""
        for _ in range(n_iter):
            f = self.log_pred(g)
            g = self.log_target(f)
        res = f.new_zeros(f.shape[0])
        if residual:
            rel = torch.expm1(f - self.log_pred(g)).abs()
            res = torch.where(self.row_valid, rel, 0.0).amax(dim=1)
        return f, g, res

    # -- scaling domain ------------------------------------------------------------------
    def rebuild(self, f: Tensor, g: Tensor) -> None:
        """Absorb ``(f, g)`` into the kernel ``exp(S + f + g)`` (entries below
        ``exp(floor)`` flushed to exactly zero) and reset the scalings to 1."""
        # In the compute dtype: in float32 the exponent rounds at the size of its terms,
        # about 1e-7 / reg relative on every entry, as S itself does (the documented limit).
        x = self.S_t + f.to(self.dtype)[:, None, :]
        x.add_(g.to(self.dtype)[:, :, None])
        self._absorb(x, f, g, threshold=True, mask=True)

    def cold_start(
        self, x_t: Tensor, g_k: Tensor, threshold: bool, mask_rows: bool, mask_cols: bool
    ) -> None:
        """Start from ``f = 0`` with the first target update, in the scaling domain.

        ``x_t [B, N + 1, M]`` is ``S + g_k`` (overwritten: it becomes the kernel), ``g_k
        [B, N + 1]`` a shift making each real column's largest entry 0, so no column of the
        kernel underflows. ``threshold``: some entry may lie below the floor; ``mask_rows``,
        ``mask_cols``: some prediction, target or background is not real (its entries are
        then set to 1, whatever ``x_t`` holds there)."""
        self._absorb(
            x_t, torch.zeros_like(self.a), g_k, threshold, mask_rows=mask_rows, mask_cols=mask_cols
        )
        self.fused = _fused_block(self.kernel_t)
        s = self._sums(self.u)
        if self.c_t is None:
            # v = b / s: every real column has an entry 1 against u = 1, so s >= 1.
            self.v = self.b / s
        else:
            # The relaxed update moves g far from the shift (by (phi - 1) g_k): take it in
            # the log domain and absorb it, so the scalings start at 1 again.
            g = torch.where(self.col_valid, self.phi_t * (self.log_b + g_k - s.log()), 0.0)
            x = self.kernel_t.log_().add_((g - g_k)[:, :, None])
            self._absorb(x, self.f_k, g, threshold=True, mask_rows=mask_rows)
        self.fresh = False

    def _absorb(
        self,
        x: Tensor,
        f: Tensor,
        g: Tensor,
        threshold: bool,
        mask: bool = False,
        mask_rows: bool = False,
        mask_cols: bool = False,
    ) -> None:
        """The kernel ``exp(x)`` in place, in the frame ``(f, g)``, scalings reset to 1."""
        if threshold:
            # Raise the exponents below the floor to it, then zero what it gives: on the
            # CPU exp is an order of magnitude slower on inputs below about -87 (-inf
            # included) than on the rest.
            x.clamp_(min=self.floor)
        # Invalid pairs get the entry 1, not 0: an invalid row or column has zero mass, so
        # its scaling is exactly 0 and the entry adds nothing, while every sum a valid
        # scaling divides by stays positive without a clamp per half-step.
        if mask:
            x.masked_fill_(~self.pair_valid_t, 0.0)
        if mask_cols:
            x.masked_fill_(~self.col_valid[:, :, None], 0.0)
        if mask_rows:
            x.masked_fill_(~self.row_valid[:, None, :], 0.0)
        self.kernel_t = x.exp_()
        if threshold:
            F.threshold_(self.kernel_t, math.exp(self.floor), 0.0)
        self.f_k, self.g_k = f, g
        self.u = self.row_valid.to(self.dtype)
        self.v = self.col_valid.to(self.dtype)
        self.fresh = True
        # Relaxed updates in the kernel's frame: v = (b e^g / s)^phi e^-g = c_t * s^-phi with
        # s = kernel^T u (likewise for u), the constants taken once per kernel.
        self.c_t = self.c_p = None
        if not _is_one(self.phi_t):
            self.c_t = self._constant(self.phi_t, self.log_b64, g, self.col_valid)
        if not _is_one(self.phi_p):
            self.c_p = self._constant(self.phi_p, self.log_a64, f, self.row_valid)

    def _constant(
        self, phi: float | Tensor, log_mass: Tensor, pot: Tensor, valid: Tensor
    ) -> Tensor:
        """``mass^phi * exp((phi - 1) * pot)`` (in float64: its exponent is of size
        ``1 / reg``), zero where not ``valid``."""
        if isinstance(phi, Tensor):
            phi = phi.to(torch.float64)
        log_c = phi * log_mass + (phi - 1.0) * pot.to(torch.float64)
        return torch.where(valid, log_c.exp(), 0.0).to(self.dtype)

    def potentials(self) -> tuple[Tensor, Tensor]:
        log_u = torch.where(self.row_valid, self.u.log(), 0.0)
        log_v = torch.where(self.col_valid, self.v.log(), 0.0)
        return self.f_k + log_u, self.g_k + log_v

    # A zero sum (every entry of a valid row flushed, or an image without predictions)
    # gives an inf or NaN scaling: the range test rejects the first, and the second stays
    # in an image whose scalings are all masked out.
    def _pred_update(self, v: Tensor) -> Tensor:
        if self.use_bmm:
            r = torch.bmm(v.unsqueeze(1), self.kernel_t).squeeze(1)
        else:
            r = (self.kernel_t * v.unsqueeze(2)).sum(1)
        return self.a / r if self.c_p is None else r.pow_(-self.phi_p).mul_(self.c_p)

    def _sums(self, u: Tensor) -> Tensor:
        """``kernel u [B, N + 1]``: each target's sum over the predictions."""
        if self.use_bmm:
            # u^T kernel^T (on the CPU kernel^T is the contiguous [B, M, N + 1] tensor):
            # bmm(kernel, u) takes a path about ten times slower there.
            return torch.bmm(u.unsqueeze(1), self.kernel_t.transpose(1, 2)).squeeze(1)
        return (self.kernel_t * u.unsqueeze(1)).sum(2)

    def _target_update(self, u: Tensor) -> Tensor:
        s = self._sums(u)
        return self.b / s if self.c_t is None else s.pow_(-self.phi_t).mul_(self.c_t)

    def scaling_block(self, n_iter: int, residual: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``n_iter`` iterations on the current kernel. Returns the new scalings ``(u, v)``
        (the state is left unchanged), the residual (zeros unless ``residual``) and the
        largest ``|log|`` of a real scaling."""
        if self.fused is not None and n_iter > 0:
            # One launch instead of 2 * n_iter products and their updates.
            hard_p, hard_t = self.c_p is None, self.c_t is None
            u, v = self.fused.scaling_block(
                self.kernel_t,
                self.v,
                self.a if hard_p else self.c_p,
                self.b if hard_t else self.c_t,
                None if hard_p else self.phi_p,
                None if hard_t else self.phi_t,
                n_iter,
            )
        else:
            u, v = self.u, self.v
            for _ in range(n_iter):
                u = self._pred_update(v)
                v = self._target_update(u)
        if residual:
            rel = (u / self._pred_update(v).clamp_min(self.tiny) - 1.0).abs()
            res = torch.where(self.row_valid, rel, 0.0).amax(dim=1)
        else:
            res = u.new_zeros(u.shape[0])
        # NaN (a blown-up block) propagates through amax and fails the range test.
        spread = torch.maximum(
            torch.where(self.row_valid, u.log().abs(), 0.0).amax(),
            torch.where(self.col_valid, v.log().abs(), 0.0).amax(),
        )
        return u, v, res, spread

    def plan(self, scale: Tensor) -> Tensor:
        """The current plan ``u kernel v`` as ``[B, M, N + 1]``, times ``scale [B]``."""
        # Zero scalings off the real rows and columns (an image without predictions has
        # NaN ones) give invalid pairs exactly 0, as entries of 1 in the kernel.
        v = torch.where(self.col_valid, self.v, 0.0)
        u = torch.where(self.row_valid, self.u * scale[:, None], 0.0)
        plan = self.kernel_t * v.unsqueeze(2)
        plan.mul_(u.unsqueeze(1))
        # Entries below the smallest normal float are rounding dust.
        F.threshold_(plan, self.tiny, 0.0)
        return plan.transpose(1, 2).contiguous()

    def run(self, f: Tensor, g: Tensor | None, n_iter: int, check_every: int, tol: float) -> float:
        """``n_iter`` iterations from ``(f, g)`` in blocks of ``check_every`` (``g`` None is a
        cold start: an exact target update first), one host synchronisation per block;
        stops early once the residual is at most ``tol > 0``. Leaves the result in the
        kernel state and returns the last residual (inf when not measured).

        The kernel is rebuilt once the scalings drift past ``exp(range / 2)``. A block
        whose scalings leave ``exp(+-range)`` is redone from a rebuilt kernel; if even a
        fresh kernel fails (tiny ``reg``), exact log-domain iterations take over, 1, 2, 4,
        ... at a time, before the scaling domain is tried again."""
        done = 0
        if g is None:
            g = self.log_target(f)
            if n_iter > 0:
                # The first iteration moves the potentials the most: take it exactly.
                f = self.log_pred(g)
                g = self.log_target(f)
                done = 1
        self.rebuild(f, g)
        return self.iterate(done, n_iter, check_every, tol)

    def iterate(self, done: int, n_iter: int, check_every: int, tol: float) -> float:
        """Iterations ``done`` to ``n_iter`` from the current kernel state (see :meth:`run`);
        returns the last residual."""
        residual = res_value = math.inf
        check = tol > 0
        log_steps = 1
        while done < n_iter:
            k = min(check_every - done % check_every, n_iter - done)
            while k:
                u, v, res, spread = self.scaling_block(k, check)
                res_value, spread_value = torch.stack([res.amax(), spread]).tolist()
                if spread_value <= self.range:
                    self.u, self.v, self.fresh = u, v, False
                    done, k, log_steps = done + k, 0, 1
                    if spread_value > self.range / 2:
                        self.rebuild(*self.potentials())
                elif not self.fresh:
                    self.rebuild(*self.potentials())
                else:
                    steps = min(log_steps, k)
                    last = steps == k
                    f, g, res = self.log_block(*self.potentials(), steps, check and last)
                    self.rebuild(f, g)
                    done, k, log_steps = done + steps, k - steps, 2 * log_steps
                    if last:
                        res_value = res.amax().item()
            if check:
                residual = res_value
                if residual <= tol:
                    break
        if check and done > 0 and residual == math.inf:
            # Only the exact first iteration ran: measure it.
            residual = self.scaling_block(0, True)[2].amax().item()
        return residual


# -- the set-up ------------------------------------------------------------------------------

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
) -> tuple[Tensor, Tensor, Tensor, tuple[bool, bool, bool]] | None:
    """The first kernel's exponent for a cold start, in a handful of passes over the cost,
    or None where a real entry is ``+inf`` (forbidden pairs take the general set-up).

    One reduction per column gives the checks (amin propagates NaN and finds ``-inf``),
    each image's magnitude and each column's smallest cost. The exponent ``S + g_k`` with
    ``g_k = log b + min_i C_ij / reg`` puts each real column's largest kernel entry at
    its mass ``b_j``: no column underflows and the first target update's scalings are
    about ``1 / (number of close predictions)``, well inside the solver's safe range.

    Returns ``x_t [B, N + 1, M]`` (``S + g_k``; invalid entries hold anything), ``g_k
    [B, N + 1]``, the magnitude ``[B]`` and the flags of :meth:`_Solver.cold_start`
    (threshold, mask_rows, mask_cols). Raises ValueError on NaN or ``-inf`` when
    ``validate``."""
    b, m, n = cost.shape
    c = cost.to(dtype)
    if rows_padded:
        keep = row_valid[:, :, None]
        low = torch.where(keep, c, torch.inf).amin(1)
        high = torch.where(keep, c, -torch.inf).amax(1)
        bg_low = torch.where(row_valid, background, torch.inf).amin(1, keepdim=True)
        bg_high = torch.where(row_valid, background, -torch.inf).amax(1, keepdim=True)
    else:
        low, high = c.amin(1), c.amax(1)
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
    floor = _FLOOR[dtype]
    flags = torch.stack(
        [bad.any(), forbidden.any(), ((deepest < floor) & col_valid).any(), ~col_valid.all()]
    ).tolist()
    if validate and flags[0]:
        raise ValueError(_BAD_COST)
    if flags[1]:
        return None
    # x = g_k - C / reg in the solver's layout (on the CPU the cost's own: a plain copy).
    x_t = _new_t(c, b, m, n)
    x_t[:, :n].copy_(c.transpose(1, 2))
    x_t[:, n].copy_(background)
    x_t.mul_(-inv.to(dtype)[:, :, None]).add_(g_k.to(dtype)[:, :, None])
    return x_t, g_k.to(dtype), magnitude, (bool(flags[2]), rows_padded, bool(flags[3]))


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


# -- the public function --------------------------------------------------------------------


def sinkhorn(
    cost: Tensor,
    target_mask: Tensor | None = None,
    *,
    reg: float | None = None,
    reg_dimless: float = 0.12,
    tau_pred: float | None = None,
    tau_target: float | None = None,
    background_cost: float | Tensor = 1.0,
    normalize: bool = True,
    max_iter: int = 100,
    tol: float = 1e-4,
    check_every: int = 10,
    eps_scaling: int = 0,
    warm_start: tuple[Tensor, Tensor] | None = None,
    pred_mask: Tensor | None = None,
    validate: bool = True,
) -> Matching:
    """Soft matching of predictions to targets and a background by entropic optimal
    transport, balanced or unbalanced (uotod's formulation, solved stably and per image).

    Args:
        cost: ``Tensor[B, M, N]`` (or ``[M, N]`` for one image), predictions by targets,
            lower is better; ``+inf`` forbids a pair. float16 / bfloat16 and integer costs
            are solved in float32, float64 in float64.
        target_mask: ``bool[B, N]``, True for real targets (any pattern, not only a
            prefix). Padded targets receive exactly no mass.
        reg: the entropic regularisation, ``> 0``, in units of the (normalised) cost.
            None uses ``reg_dimless / (ln(2 m) + 1)``, ``m`` the image's number of real
            predictions, as uotod.
        reg_dimless: the dimensionless regularisation used when ``reg`` is None.
        tau_pred, tau_target: strengths ``>= 0`` of the KL relaxation of the prediction
            and target marginals (uotod's ``reg_pred`` / ``reg_target``). None (or
            ``inf``) is a hard constraint; both None is balanced OT; 0 frees the marginal.
            The background column is relaxed with the targets, as in uotod.
        background_cost: cost of sending a prediction to the background, in units of
            ``cost``: a float or a tensor broadcastable to ``[B, M]``.
        normalize: divide each image's cost (background column included) by the largest
            absolute value among its real finite entries, so it lies in ``[-1, 1]``
            (``[0, 1]`` for non-negative costs, where this is uotod's maximum). Per image:
            one image never changes another's matching (uotod uses the batch maximum).
        max_iter: iterations. As in uotod, a target update comes first, then each
            iteration updates the predictions and then the targets: the returned plan
            meets the target marginals exactly (balanced) and the prediction marginals
            within ``tol``.
        tol: stop once the returned plan's marginal error is at most ``tol``: the largest
            relative deviation of a real prediction's row sum from its fixed point (for
            balanced OT, ``max |row sum - 1|``). Checked every ``check_every`` iterations
            with one host synchronisation. ``tol = 0`` runs exactly ``max_iter``
            iterations and never warns.
        check_every: iterations per block. Each block ends with one host synchronisation
            (the stopping test and the fast path's range test), even with ``tol = 0``;
            there is none inside a block.
        eps_scaling: warm-up stages of ``check_every`` iterations each, with ``reg``
            decreasing geometrically from the cost's scale (1 when normalised) down to
            ``reg``. They do not count towards ``max_iter``; they speed up small ``reg``.
        warm_start: the ``potentials`` of a previous matching of the same shape and
            ``reg``; the iterations then start with a prediction update from them.
        pred_mask: ``bool[B, M]``, True for real predictions. Padded predictions get no
            mass and come back ignored (``-2``); ``m`` counts the real ones only, so the
            default ``reg`` is then per image.
        validate: scan the real cost entries and ``background_cost`` for NaN and ``-inf``
            (a host synchronisation on GPU). Arguments are always checked.

    Returns:
        A :class:`Matching` with ``plan [B, M, N + 1]`` (last column: background) scaled by
        ``m``, so each real prediction's row sums to about 1 and each real target's column
        to 1 (balanced); ``pred_to_target``, each row's argmax (``-1`` background, ``-2``
        padded), for logging and metrics; and ``potentials = (f [B, M], g [B, N + 1])``
        in units of the normalised cost ``C``, zero on padded entries, with
        ``plan = m * exp((f_i + g_j - C_ij) / reg)``. The plan has the cost's floating
        dtype (float32 for integer costs); the potentials the compute dtype.

    Marginals: ``1/m`` per real prediction, ``1/m`` per real target, ``(m - n)/m`` for the
    background. With more targets than predictions (``n > m``) the targets share the unit
    mass (``1/n`` each) and the background gets none, so the problem stays balanced.

    Precision: float32 holds exponents of size ``1 / reg`` to about ``1e-7 / reg``, so at
    ``reg = 1e-4`` marginals are accurate to about 1e-3 relative; pass a float64 cost for
    more.

    Warns:
        SinkhornConvergenceWarning: once per call when ``tol > 0`` and the error is still
        above ``tol`` after ``max_iter`` iterations.
    """
    cost = check_tensor(cost, "cost")
    reg_dimless = _check_number(reg_dimless, "reg_dimless", positive=True)
    reg_value = None if reg is None else _check_number(reg, "reg", positive=True)
    tau_pred = _check_tau(tau_pred, "tau_pred")
    tau_target = _check_tau(tau_target, "tau_target")
    max_iter = _check_int(max_iter, "max_iter", 0)
    tol = _check_number(tol, "tol")
    check_every = _check_int(check_every, "check_every", 1)
    eps_scaling = _check_int(eps_scaling, "eps_scaling", 0)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")

    has_pred_mask = pred_mask is not None
    cost, target_mask, pred_mask, _ = prepare_cost(cost, target_mask, pred_mask)
    b, m, n = cost.shape
    dtype = compute_dtype(cost)
    out_dtype = cost.dtype if cost.is_floating_point() else torch.float32
    device = cost.device
    background = background_column(background_cost, b, m, dtype, device)
    if warm_start is not None:
        _check_warm_start(warm_start, b, m, n)

    with torch.no_grad():
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
        if reg_value is not None:
            reg_t = reg_value
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
            )  # fmt: skip
        if b * m == 0:
            plan = torch.zeros((b, m, n + 1), dtype=dtype, device=device)
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
            plan = solver.plan(m64.to(dtype))
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
            plan = solver.plan(m64.to(dtype))

        if tol > 0 and max_iter > 0 and residual > tol:
            warnings.warn(
                f"sinkhorn did not converge: after max_iter={max_iter} iterations the "
                f"marginal error is {residual:.3g} > tol={tol:g}; raise max_iter or reg, "
                "or use eps_scaling",
                SinkhornConvergenceWarning,
                stacklevel=2,
            )
        p2t = plan_to_assignment(plan, row_valid)
        potentials = (
            torch.where(row_valid, f * reg_t, 0.0),
            torch.where(col_valid, g * reg_t, 0.0),
        )
    return Matching(p2t, target_mask, plan=plan.to(out_dtype), potentials=potentials)


def _check_warm_start(warm_start: object, b: int, m: int, n: int) -> None:
    if not isinstance(warm_start, (tuple, list)) or len(warm_start) != 2:
        raise TypeError(
            "warm_start must be a pair (f, g) of tensors (Matching.potentials), "
            f"got {type(warm_start).__name__}"
        )
    for tensor, name, shape in (
        (warm_start[0], "warm_start[0]", (b, m)),
        (warm_start[1], "warm_start[1]", (b, n + 1)),
    ):
        check_tensor(tensor, name)
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name}: expected shape {shape_str(shape)}, got {shape_str(tensor.shape)}"
            )


# -- the module ---------------------------------------------------------------------------------


class SinkhornMatcher(BoxCostMatcher):
    """Optimal-transport matcher on the DETR box cost: :func:`sinkhorn` of
    ``cost_class * class + cost_bbox * L1 + cost_giou * (-GIoU)`` (see
    :class:`BoxCostMatcher` for the cost arguments) with a background column.

    Called as ``matcher(outputs, targets)`` like :class:`HungarianMatcher` (``outputs`` may
    carry ``"pred_mask": bool[B, M]``); returns a :class:`Matching` whose ``plan`` a matched
    loss uses as soft weights. The keyword arguments from ``reg`` on are those of
    :func:`sinkhorn`; ``background_cost`` is in units of the weighted cost.
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        box_format: str = "xyxy",
        *,
        l1_format: str | None = None,
        class_cost: str = "softmax",
        background: str = "last",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        reg: float | None = None,
        reg_dimless: float = 0.12,
        tau_pred: float | None = None,
        tau_target: float | None = None,
        background_cost: float = 1.0,
        normalize: bool = True,
        max_iter: int = 100,
        tol: float = 1e-4,
        check_every: int = 10,
        eps_scaling: int = 0,
        validate: bool = True,
    ) -> None:
        super().__init__(
            cost_class,
            cost_bbox,
            cost_giou,
            box_format,
            l1_format=l1_format,
            class_cost_kind=class_cost,
            background=background,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
        )
        # Fail at construction, not at the first batch.
        if reg is not None:
            _check_number(reg, "reg", positive=True)
        _check_number(reg_dimless, "reg_dimless", positive=True)
        _check_tau(tau_pred, "tau_pred")
        _check_tau(tau_target, "tau_target")
        _check_real(background_cost, "background_cost")
        _check_int(max_iter, "max_iter", 0)
        _check_number(tol, "tol")
        _check_int(check_every, "check_every", 1)
        _check_int(eps_scaling, "eps_scaling", 0)
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
        self.reg = reg
        self.reg_dimless = reg_dimless
        self.tau_pred = tau_pred
        self.tau_target = tau_target
        self.background_cost = background_cost
        self.normalize = normalize
        self.max_iter = max_iter
        self.tol = tol
        self.check_every = check_every
        self.eps_scaling = eps_scaling
        self.validate = validate

    def solve(self, cost: Tensor, target_mask: Tensor, pred_mask: Tensor | None) -> Matching:
        return sinkhorn(
            cost,
            target_mask,
            reg=self.reg,
            reg_dimless=self.reg_dimless,
            tau_pred=self.tau_pred,
            tau_target=self.tau_target,
            background_cost=self.background_cost,
            normalize=self.normalize,
            max_iter=self.max_iter,
            tol=self.tol,
            check_every=self.check_every,
            eps_scaling=self.eps_scaling,
            pred_mask=pred_mask,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        reg = f"reg={self.reg}" if self.reg is not None else f"reg_dimless={self.reg_dimless}"
        return (
            f"{super().extra_repr()}, {reg}, tau_pred={self.tau_pred}, "
            f"tau_target={self.tau_target}, background_cost={self.background_cost}"
        )
