"""The Sinkhorn solver behind :func:`detloss.match.sinkhorn`: the scaling-domain iterations
on a kernel into which the potentials are absorbed, and their log-domain recovery. Its
set-up from a cost is in :mod:`detloss.match.sinkhorn_setup`.

Everything is indexed targets by predictions, ``[B, N + 1, M]`` (last target row: the
background); ``docs/sinkhorn.md`` has the maths and the limits.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._kernels import fast_path
from .assignment import thread_pool

# Private to detloss.match (sinkhorn_setup.py drives it).
__all__: list[str] = []


# The scaling-domain kernel flushes entries below exp(_FLOOR) to zero and keeps every
# scaling u, v within exp(+-_RANGE) of 1 (else it is rebuilt, or the block is redone in the
# log domain). A flushed entry then carries at most exp(_FLOOR + 2 * _RANGE) of mass
# (exp(-27) in float32), and kernel * scaling never reaches the denormal range, whose
# arithmetic is an order of magnitude slower on CPUs.
_FLOOR = {torch.float32: -67.0, torch.float64: -400.0}
_RANGE = {torch.float32: 20.0, torch.float64: 150.0}
_LOG2E = 1.0 / math.log(2.0)
# Below these exponents (about where exp leaves the normal range) exp is slow on CPUs.
_SLOW_EXP = {torch.float32: -87.0, torch.float64: -708.0}
_BMM_MIN_ENTRIES = 1 << 16
# From this many plan entries on, where torch may use several threads, the compiled plan
# loop (serial, about a nanosecond an entry) runs on two halves of the batch side by side.
_SPLIT_PLAN_ENTRIES = 1 << 18


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


def _plan_kernel(plan: Tensor) -> ModuleType | None:
    """The compiled loop forming the plan ``[B, M, N + 1]`` and its row argmax in one pass,
    where it applies (a contiguous CPU float32 / float64 plan with a column), else None."""
    if plan.dtype not in (torch.float32, torch.float64) or not plan.is_contiguous():
        return None
    if plan.shape[2] == 0 or plan.requires_grad:
        return None
    return fast_path("row_argmax", plan.device)


_EXP2_CHUNK = 1 << 14
# torch's grain: a CPU elementwise op on fewer entries runs on one thread.
_GRAIN = 1 << 15
# A multiple of every vector loop's step (two registers of floats or doubles).
_VECTOR_ALIGN = 64


def _exp2_(x: Tensor) -> Tensor:
    """``2^x`` in place, bit for bit the same on any number of CPU threads.

    torch splits a large elementwise op into one contiguous part per thread, and the last
    entries of each part that do not fill a vector register take a scalar ``exp2``, which
    can differ in the last bit from the vectorised one: the kernel would depend on the
    thread count. On one thread the op runs whole (its only scalar tail is the tensor's
    last entries); on ``T`` threads its first ``L`` entries, ``L`` a multiple of ``64 T``
    of at least ``T`` grains, split into ``T`` parts of ``L / T`` (a multiple of every
    vector step, so no scalar tail inside), then the rest, under the grain, on one
    thread; a smaller tensor goes in serial chunks of ``2^14`` entries."""
    if x.device.type != "cpu":
        return torch.special.exp2(x, out=x)
    memory = x if x.is_contiguous() else x.transpose(1, 2)
    if not memory.is_contiguous():
        return x.mul_(math.log(2.0)).exp_()
    flat = memory.view(-1)
    threads = torch.get_num_threads()
    if threads == 1 or flat.numel() < _GRAIN:
        torch.special.exp2(flat, out=flat)
        return x
    step = _VECTOR_ALIGN * threads
    split = flat.numel() // step * step
    if split < threads * _GRAIN:
        for part in flat.split(_EXP2_CHUNK):
            torch.special.exp2(part, out=part)
        return x
    for part in (flat[:split], flat[split:]):
        torch.special.exp2(part, out=part)
    return x


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
        self.a64, self.b64 = a, b
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

    # The logs of the masses, formed on first use: balanced scaling-domain iterations
    # never read them. float64 for the per-kernel constants: in float32, log-then-exp
    # would move a mass by up to ulp(log m) ~ 5e-7 relative, more than the iterations'
    # own error.
    @functools.cached_property
    def log_a64(self) -> Tensor:
        return torch.where(self.row_valid, self.a64.log(), 0.0)

    @functools.cached_property
    def log_b64(self) -> Tensor:
        return torch.where(self.col_valid, self.b64.log(), 0.0)

    @functools.cached_property
    def log_a(self) -> Tensor:
        return self.log_a64.to(self.dtype)

    @functools.cached_property
    def log_b(self) -> Tensor:
        return self.log_b64.to(self.dtype)

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
        self._absorb(x, f, g, flush=True, clamp=True, mask=True)

    def cold_start(
        self, x_t: Tensor, g_k: Tensor, flush: bool, clamp: bool, mask_rows: bool, mask_cols: bool
    ) -> None:
        """Start from ``f = 0`` with the first target update, in the scaling domain.

        ``x_t [B, N + 1, M]`` is ``(S + g_k) * log2(e)`` (overwritten: it becomes the
        kernel ``2^x_t``, as exp2 is several times faster than exp on CPUs), ``g_k
        [B, N + 1]`` a shift making each real column's largest entry 0, so no column of the
        kernel underflows. ``flush``: some entry may lie below the floor; ``clamp``: some
        may lie where exp is slow (:meth:`_absorb`); ``mask_rows``, ``mask_cols``: some
        prediction, target or background is not real (its entries are then set to 1,
        whatever ``x_t`` holds there)."""
        self._absorb(
            x_t, torch.zeros_like(self.a), g_k, flush, clamp, mask_rows=mask_rows,
            mask_cols=mask_cols, base2=True,
        )  # fmt: skip
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
            self._absorb(x, self.f_k, g, flush=True, clamp=True, mask_rows=mask_rows)
        self.fresh = False

    def _absorb(
        self,
        x: Tensor,
        f: Tensor,
        g: Tensor,
        flush: bool,
        clamp: bool,
        mask: bool = False,
        mask_rows: bool = False,
        mask_cols: bool = False,
        base2: bool = False,
    ) -> None:
        """The kernel ``exp(x)`` (``base2``: ``2^x``) in place, in the frame ``(f, g)``,
        scalings reset to 1.
        ``flush``: entries below ``exp(floor)`` become exactly zero; ``clamp``: some
        exponent may lie below ``_SLOW_EXP``, where exp is an order of magnitude slower
        on the CPU (-inf included): they are raised to the floor first (then flushed)."""
        if clamp:
            x.clamp_(min=self.floor * _LOG2E if base2 else self.floor)
        # Invalid pairs get the entry 1, not 0: an invalid row or column has zero mass, so
        # its scaling is exactly 0 and the entry adds nothing, while every sum a valid
        # scaling divides by stays positive without a clamp per half-step.
        if mask:
            x.masked_fill_(~self.pair_valid_t, 0.0)
        if mask_cols:
            x.masked_fill_(~self.col_valid[:, :, None], 0.0)
        if mask_rows:
            x.masked_fill_(~self.row_valid[:, None, :], 0.0)
        self.kernel_t = _exp2_(x) if base2 else x.exp_()
        if flush or clamp:
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

    def plan(self, scale: Tensor) -> tuple[Tensor, Tensor | None]:
        """The current plan ``u kernel v`` as ``[B, M, N + 1]``, times ``scale [B]``, formed
        over the kernel (the solver is done with it), and each row's argmax where the
        compiled loop finds it on the way (else None)."""
        # Zero scalings off the real rows and columns (an image without predictions has
        # NaN ones) give invalid pairs exactly 0, as entries of 1 in the kernel.
        v = torch.where(self.col_valid, self.v, 0.0)
        u = torch.where(self.row_valid, self.u * scale[:, None], 0.0)
        plan = self.kernel_t.transpose(1, 2)
        kernel = _plan_kernel(plan)
        if kernel is not None:
            column = torch.empty(plan.shape[:2], dtype=torch.int64)
            values = plan.numpy()
            bits = values.view(np.int32 if values.itemsize == 4 else np.int64)
            tiny = values.dtype.type(self.tiny)
            arrays = (values, bits, u.numpy(), v.numpy())

            def part(images: slice) -> None:
                kernel.scaled_row_argmax(*(a[images] for a in arrays), tiny, column[images].numpy())

            b = plan.shape[0]
            if b > 1 and plan.numel() >= _SPLIT_PLAN_ENTRIES and torch.get_num_threads() > 1:
                # The loop runs without the GIL: half of the images on a second thread.
                other = thread_pool().submit(part, slice(0, b // 2))
                part(slice(b // 2, b))
                other.result()
            else:
                part(slice(0, b))
            return plan, column
        self.kernel_t.mul_(v.unsqueeze(2)).mul_(u.unsqueeze(1))
        # Entries below the smallest normal float are rounding dust.
        F.threshold_(self.kernel_t, self.tiny, 0.0)
        return plan.contiguous(), None

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
                if check:
                    res_value, spread_value = torch.stack([res.amax(), spread]).tolist()
                else:
                    spread_value = spread.item()
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
