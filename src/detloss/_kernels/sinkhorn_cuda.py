"""The scaling-domain Sinkhorn block of :mod:`detloss.match.sinkhorn` as one Triton kernel.

``_Solver.scaling_block`` runs ``n_iter`` times ``u = update(K^T v)``, ``v = update(K u)``
on the kernel ``K [B, N + 1, M]`` (targets by predictions); in torch that is ``2 * n_iter``
batched products plus their elementwise updates, a dozen launches per iteration. Here one
launch runs the whole block. Each image is split into ``parts`` programs, each owning a
slice of the predictions; per iteration a part streams its slice tile by tile
(``[BLOCK_N, BLOCK_M]``, all N + 1 rows by a slice of the predictions) and uses every tile
twice, first for the prediction sums ``r = v K`` of its columns, hence their new ``u``,
then for its partial target sums ``s += K u``. The parts of an image then meet at a
barrier in global memory (an atomic counter), add up their partial sums in a fixed order
and each form the same new ``v``. Every program of the launch must be resident at once for
that barrier: there are at most as many as multiprocessors. An image's kernel (364 KB
for M = 900, N = 100 in float32) stays in the GPU's L2 cache across the iterations.

This module imports ``triton`` at the top: :mod:`~detloss.match.sinkhorn` imports it
lazily, for CUDA tensors only, so the package works without triton.

Numerics follow the torch path to rounding. The sums run in the kernel's dtype, in
another order. Divisions are correctly rounded, as torch's; the relaxed update's power
``r^-phi = exp(-phi log r)`` is formed in float64 and rounded once, within an ulp of
torch's ``pow`` in float32. The residual and the range test of a block are computed by
the caller in torch from the returned scalings, the same code for both paths.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import kernel_device

__all__ = ["MAX_ENTRIES", "MAX_ROWS", "scaling_block", "supports"]

# The fused block takes a problem when N + 1 <= MAX_ROWS (all rows of a tile, with v and
# the target sums, live in registers: at 512 rows a tile is 16 predictions wide) and
# M * (N + 1) <= MAX_ENTRIES per image (16 MiB in float32, streamed every iteration).
MAX_ROWS = 512
MAX_ENTRIES = 1 << 22
# Entries per tile: 4096 was the fastest of 2048, 4096 and 8192 (at 4 and 8 warps) on an
# H100 at M = 900, N = 100 with one program per image; 8192 spills registers.
_TILE = {torch.float32: 4096, torch.float64: 2048}
_NUM_WARPS = 8


def supports(kernel_t: Tensor) -> bool:
    """Whether the fused block takes the kernel ``[B, N + 1, M]`` (any device; the caller
    decides where it runs)."""
    _, n1, m = kernel_t.shape
    return kernel_t.dtype in _TILE and 0 < n1 <= MAX_ROWS and 0 < m and m * n1 <= MAX_ENTRIES


# Sums are tl.reduce with this combine (what tl.sum does).


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _div(a, b, F64: tl.constexpr):
    """``a / b`` correctly rounded, as torch divides (Triton's float32 ``/`` is not)."""
    if F64:
        return a / b
    else:
        return tl.math.div_rn(a, b)


@triton.jit
def _update(sums, mass, neg_phi, RELAXED: tl.constexpr, F64: tl.constexpr):
    """A scaling from its kernel products ``sums``: ``mass / sums`` for a hard marginal,
    ``sums^-phi * mass`` for a relaxed one (``mass`` then holds the constants ``c``)."""
    if RELAXED:
        # The power in float64, rounded once: within an ulp of torch's pow in float32.
        # pow(x, -0) is 1 for every x, where 0 * log(x) may be NaN (x = 0 or inf).
        x = sums.to(tl.float64)
        power = tl.where(neg_phi == 0.0, 1.0, tl.exp(neg_phi * tl.log(x)))
        return power.to(mass.dtype) * mass
    else:
        return _div(mass, sums, F64)


@triton.jit
def _pred_update(tile, v, mass, neg_phi, RELAXED: tl.constexpr, F64: tl.constexpr):
    """The new ``u`` of a tile's predictions: ``update(v K)`` on its columns."""
    return _update(tl.reduce(tile * v[:, None], 0, _add), mass, neg_phi, RELAXED, F64)


@triton.jit
def _scaling_block_kernel(
    kernel_ptr,  # [B, N1, M], any strides
    stride_kb,
    stride_kn,
    stride_km,
    v_in_ptr,  # [B, N1]: the scalings v the block starts from
    u_ptr,  # [B, M], out
    v_ptr,  # [B, N1], out
    mass_p_ptr,  # [B, M]: a (hard) or c_p (relaxed)
    mass_t_ptr,  # [B, N1]: b (hard) or c_t (relaxed)
    phi_p_ptr,  # [B]: the relaxation exponents (read only when relaxed)
    phi_t_ptr,  # [B]
    partial_ptr,  # [B, 2, parts, BLOCK_N] scratch: each part's target sums
    arrived_ptr,  # int32 [B], zeroed: how many parts have published their sums
    M,
    N1,
    n_iter,
    parts,
    RELAXED_P: tl.constexpr,
    RELAXED_T: tl.constexpr,
    F64: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    # Program = (image, part): a part owns a slice of the image's predictions. Offsets in
    # int64 (a batch may pass 2^31 entries).
    image = (tl.program_id(0) // parts).to(tl.int64)
    part = tl.program_id(0) % parts
    dtype = kernel_ptr.dtype.element_ty
    kernel_ptr += image * stride_kb
    u_ptr += image * M
    mass_p_ptr += image * M
    # Whole tiles per part.
    width = ((M + parts - 1) // parts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    first = part * width
    last = tl.minimum(first + width, M)

    rows = tl.arange(0, BLOCK_N)
    in_n = rows < N1
    target = image * N1 + rows
    mass_t = tl.load(mass_t_ptr + target, mask=in_n, other=0.0)
    neg_phi_p = 0.0
    neg_phi_t = 0.0
    if RELAXED_P:
        neg_phi_p = -tl.load(phi_p_ptr + image).to(tl.float64)
    if RELAXED_T:
        neg_phi_t = -tl.load(phi_t_ptr + image).to(tl.float64)

    v = tl.load(v_in_ptr + target, mask=in_n, other=0.0)
    for step in range(n_iter):
        s = tl.full([BLOCK_N], 0.0, dtype)
        for start in range(first, last, BLOCK_M):
            cols = start + tl.arange(0, BLOCK_M)
            in_m = cols < last
            tile = tl.load(
                kernel_ptr + rows[:, None] * stride_kn + cols[None, :] * stride_km,
                mask=in_n[:, None] & in_m[None, :],
                other=0.0,
            )
            mass_p = tl.load(mass_p_ptr + cols, mask=in_m, other=0.0)
            u = _pred_update(tile, v, mass_p, neg_phi_p, RELAXED_P, F64)
            # Lanes past M are 0 / 0: zero them, they must add nothing to s (a NaN of a
            # real but invalid prediction, an image without any, does propagate, as in
            # the torch path).
            u = tl.where(in_m, u, 0.0)
            tl.store(u_ptr + cols, u, mask=in_m)
            s += tl.reduce(tile * u[None, :], 1, _add)
        if parts > 1:
            # Publish this part's sums, wait for the image's other parts (all programs are
            # resident: the launch has at most one per multiprocessor), then add every
            # part's sums in the same order, so each part forms the same v. Two buffers:
            # a part can only overwrite one after every part has passed the next barrier,
            # hence read it.
            slot = partial_ptr + (image * 2 + step % 2) * parts * BLOCK_N
            tl.store(slot + part * BLOCK_N + rows, s)
            tl.debug_barrier()
            tl.atomic_add(arrived_ptr + image, 1, sem="release")
            goal = (step + 1) * parts
            count = tl.atomic_add(arrived_ptr + image, 0, sem="acquire")
            while count < goal:
                count = tl.atomic_add(arrived_ptr + image, 0, sem="acquire")
            tl.debug_barrier()
            s = tl.full([BLOCK_N], 0.0, dtype)
            for other in range(0, parts):
                s += tl.load(slot + other * BLOCK_N + rows, volatile=True)
        v = tl.where(in_n, _update(s, mass_t, neg_phi_t, RELAXED_T, F64), 0.0)
    if part == 0:
        tl.store(v_ptr + target, v, mask=in_n)


def _exponents(phi: float | Tensor | None, b: int, like: Tensor) -> Tensor:
    """``phi`` as ``[B]`` in the kernel's dtype (a fill, not a host copy), rounded as the
    torch path's ``pow`` rounds it; the kernel itself when ``phi`` is None (never read)."""
    if phi is None:
        return like
    if isinstance(phi, Tensor):
        return phi.to(like.dtype).reshape(b).contiguous()
    return torch.full((b,), phi, dtype=like.dtype, device=like.device)


def _blocks(m: int, n1: int, dtype: torch.dtype) -> tuple[int, int]:
    block_n = max(16, triton.next_power_of_2(n1))
    block_m = max(16, min(_TILE[dtype] // block_n, triton.next_power_of_2(m)))
    return block_n, block_m


def _parts(b: int, m: int, block_m: int, device: torch.device) -> int:
    """Programs per image: as many as keep every program of the launch resident at once
    (at most one per multiprocessor, which the parts' barrier needs), each with at least
    two tiles of predictions; 1 off CUDA (Triton's interpreter runs programs in turn)."""
    if device.type != "cuda":
        return 1
    processors = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(processors // max(b, 1), m // (2 * block_m)))


def scaling_block(
    kernel_t: Tensor,
    v: Tensor,
    mass_p: Tensor,
    mass_t: Tensor,
    phi_p: float | Tensor | None,
    phi_t: float | Tensor | None,
    n_iter: int,
) -> tuple[Tensor, Tensor]:
    """``n_iter >= 1`` scaling iterations in one launch, as ``_Solver.scaling_block``.

    Args:
        kernel_t: ``[B, N + 1, M]`` float32 or float64, for which :func:`supports` holds.
        v: ``[B, N + 1]``, the scalings the block starts from (u follows from v).
        mass_p, mass_t: ``[B, M]``, ``[B, N + 1]``: the masses ``a``, ``b`` for a hard
            marginal, the constants ``c_p``, ``c_t`` for a relaxed one (zero where
            invalid).
        phi_p, phi_t: None for a hard marginal, else the exponent: a float or a tensor of
            ``B`` values (``[B, 1]`` as the solver keeps them).
        n_iter: iterations, at least 1.

    Returns:
        The last iteration's ``u [B, M]`` and ``v [B, N + 1]``: new tensors on
        ``kernel_t``'s device. The residual and the range test stay with the caller, in
        torch, the same for both paths.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter: expected an int >= 1, got {n_iter}")
    b, n1, m = kernel_t.shape
    dtype = kernel_t.dtype
    u_out = kernel_t.new_empty((b, m))
    v_out = kernel_t.new_empty((b, n1))
    block_n, block_m = _blocks(m, n1, dtype)
    parts = _parts(b, m, block_m, kernel_t.device)
    partial = kernel_t.new_empty((b, 2, parts, block_n)) if parts > 1 else kernel_t
    arrived = torch.zeros(b if parts > 1 else 1, dtype=torch.int32, device=kernel_t.device)
    # Triton launches on the current device: make it the kernel's.
    with kernel_device(kernel_t.device):
        _scaling_block_kernel[(b * parts,)](
            kernel_t,
            *kernel_t.stride(),
            v.to(dtype).contiguous(),
            u_out,
            v_out,
            mass_p.to(dtype).contiguous(),
            mass_t.to(dtype).contiguous(),
            _exponents(phi_p, b, kernel_t),
            _exponents(phi_t, b, kernel_t),
            partial,
            arrived,
            m,
            n1,
            n_iter,
            parts,
            RELAXED_P=phi_p is not None,
            RELAXED_T=phi_t is not None,
            F64=dtype == torch.float64,
            BLOCK_N=block_n,
            BLOCK_M=block_m,
            num_warps=_NUM_WARPS,
        )
    return u_out, v_out
