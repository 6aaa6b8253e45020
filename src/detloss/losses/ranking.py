"""Ranking losses with error-driven updates: AP-Loss (Chen et al., CVPR 2019 / TPAMI 2020),
aLRP Loss (Oksuz et al., NeurIPS 2020) and Rank & Sort Loss (Oksuz et al., ICCV 2021),
exact and without a loop over positives.

Each ranks the scored elements of the whole mini-batch (every anchor x class of every
image) with the soft step ``H(t) = clamp(t / (2 delta) + 1/2, 0, 1)``. The backward pass is
not the derivative of the returned value but the paper's *error-driven update* (a
perceptron-style step), hence the :class:`torch.autograd.Function` classes.

The published algorithms loop over the P positives and, for each, scan all P + N
elements: O(P (P + N)) time and P kernel launches. Because ``H`` is piecewise linear,
every per-positive sum is a count plus a sum of logits over a contiguous range of sorted
logits, so here all of them come from prefix sums and binary searches, and the negatives'
updates from the same ranges read the other way round: O((P + N) log(P + N)) time and
O(P + N) memory for the same numbers as the loops (see ``docs/ap_loss.md``). On the CPU
the negatives are not even sorted: each is placed in its gap between the positives' zone
ends through a uniform grid, O(N + P log P), by compiled loops where Numba is installed
(``detloss._kernels.ranking_cpu``; AP-Loss and aLRP run there entirely). Rank & Sort also compares the
positives by their targets: O(P log P) with Fenwick trees in the compiled path, a dense,
chunked O(P^2) otherwise.
"""

from __future__ import annotations

import sys
from types import ModuleType

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .._checks import check_tensor, compute_dtype, output_dtype, shape_str
from .._kernels import fast_path
from ..distributed import is_distributed

__all__ = [
    "ALRPLoss",
    "APLoss",
    "RankSortLoss",
    "alrp_loss",
    "ap_loss",
    "rank_sort_loss",
]

# Thresholds of the published aLRP and Rank & Sort code below which a positive's error is
# not distributed (its false-positive count, or its count of mis-sorted positives).
_ALRP_EPS = 1e-5
_RS_EPS = 1e-10


# ------------------------------------------------------------------------- machinery


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    # Prefix sums over 1e5+ logits lose digits to cancellation in float32; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _float32_keys(values: np.ndarray) -> np.ndarray:
    """int32 keys ordered as the float32 ``values`` (no NaN): negative floats get all
    bits but the sign flipped. The map is its own inverse."""
    bits = values.view(np.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _sort_float32(values: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values sorted ascending, index in the same order)`` for float32 ``values`` and
    int64 ``index`` in ``[0, 2**32)``; ties by index.

    NumPy sorts plain integers with SIMD kernels about twice as fast as its argsort, so
    each value becomes one int64 key, its order-preserving bits above its index, which
    the sort carries along; both results are read back from the sorted keys.
    """
    # -0.0 + 0.0 is +0.0: the two zeros are one score, tied like any other.
    key = _float32_keys(values + np.float32(0)).astype(np.int64)
    key <<= 32
    key |= index
    key.sort()
    if sys.byteorder == "little":
        high = key.view(np.int32)[1::2].copy()  # the upper halves, without a shifted copy
    else:
        high = (key >> 32).astype(np.int32)
    sorted_values = _float32_keys(high).view(np.float32)
    key &= 0xFFFFFFFF
    return sorted_values, key


def _argsort(values: Tensor) -> tuple[Tensor, Tensor]:
    """``(sorted values, order)`` ascending, ties in element order on every path: tied
    elements get identical ranking results, but aLRP's localisation sums losses in this
    hard order."""
    if values.device.type == "cpu":
        if values.dtype == torch.float32 and values.numel() < 2**32:
            index = np.arange(values.numel(), dtype=np.int64)
            ordered, order = _sort_float32(values.numpy(), index)
            return torch.from_numpy(ordered), torch.from_numpy(order)
        # NumPy's sorts are several times faster than torch.sort on CPU.
        order = torch.from_numpy(np.argsort(values.numpy(), kind="stable"))
    else:
        order = torch.argsort(values, stable=True)
    # index_select, not values[order]: advanced indexing is far slower on CPU threads.
    return values.index_select(0, order), order


def _sorted_subset(x: Tensor, mask: Tensor, compact: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """The elements of ``x`` where ``mask``, sorted ascending.

    Returns ``(values, their indices into x, valid)``. ``compact`` drops the other
    elements (a device sync on a GPU) and ``valid`` is None; otherwise they are kept as
    ``+inf`` at the end, ``valid`` marks the real ones, and every array keeps the static
    length ``x.numel()``.
    """
    if compact:
        if mask.device.type == "cpu":
            if x.dtype == torch.float32 and x.numel() < 2**32:
                x_np, mask_np = x.numpy(), mask.numpy()
                values, index = _sort_float32(x_np[mask_np], np.flatnonzero(mask_np))
                return torch.from_numpy(values), torch.from_numpy(index), None
            index = torch.from_numpy(np.flatnonzero(mask.numpy()))
        else:
            index = mask.nonzero().squeeze(1)
        values, order = _argsort(x.index_select(0, index))
        return values, index.index_select(0, order), None
    values, order = _argsort(torch.where(mask, x, torch.inf))
    return values, order, mask.index_select(0, order)


def _host_array(x: Tensor) -> np.ndarray | None:
    """``x``'s values as a NumPy view where that is free (CPU, a NumPy dtype): NumPy's
    comparisons are several times faster on 10^5 elements than two-thread kernels."""
    if x.device.type == "cpu" and x.dtype != torch.bfloat16:
        return x.detach().numpy()
    return None


def _label_array(labels: Tensor) -> np.ndarray:
    """CPU labels as a NumPy array for the compiled loops; half-precision floats (which
    NumPy or Numba lack) as float32."""
    array = _host_array(labels)
    return labels.float().numpy() if array is None or array.dtype == np.float16 else array


def _equal(labels: Tensor, value: int) -> Tensor:
    """``labels == value``; on the CPU by NumPy."""
    array = _host_array(labels)
    return labels == value if array is None else torch.from_numpy(array == value)


def _prefix(values: Tensor) -> Tensor:
    """``[0, v0, v0 + v1, ...]``: sums over index ranges ``[lo, hi)`` are differences."""
    out = values.new_zeros(values.numel() + 1)
    torch.cumsum(values, 0, out=out[1:])
    return out


def _masked(values: Tensor, valid: Tensor | None) -> Tensor:
    return values if valid is None else torch.where(valid, values, 0)


def _soft_sum(
    weight: Tensor, weighted: Tensor, lo: Tensor, hi: Tensor, query: Tensor, delta: float
) -> Tensor:
    """``sum_k w_k H(z_k - q)`` over a sorted ``z``, from the prefix sums ``weight`` of
    ``w`` and ``weighted`` of ``w z``: elements in ``[lo, hi)`` lie in the linear zone
    ``(q - delta, q + delta)`` and count ``(z - q + delta) / (2 delta)``, those from
    ``hi`` on count 1, those before ``lo`` 0."""
    weight_hi = weight.index_select(0, hi)
    weighted_range = weighted.index_select(0, hi) - weighted.index_select(0, lo)
    linear = weighted_range - (query - delta) * (weight_hi - weight.index_select(0, lo))
    return (weight[-1] - weight_hi) + linear / (2 * delta)


def _zone_coefficients(
    weight: Tensor, x: Tensor, lo: Tensor, hi: Tensor, size: int, delta: float
) -> tuple[Tensor, Tensor]:
    """``(slope, offset)`` of ``sum_i w_i H(y - x_i) = slope[g] * y + offset[g]`` for every
    position ``g < size`` of an ascending order of negatives (or of the gaps between zone
    boundaries), where positive i's zone covers ``lo[i] <= g < hi[i]`` and it counts
    fully from ``hi[i]`` on.

    Positive i enters running sums over g at ``lo[i]`` (slope ``w_i / (2 delta)``, offset
    ``w_i / 2 - w_i x_i / (2 delta)``) and at ``hi[i]`` (slope back to 0, offset up to
    ``w_i``): one scatter of P steps and one cumulative sum, no gather of length N.
    """
    scaled = weight * x / (2 * delta)
    slope = weight / (2 * delta)
    steps = x.new_zeros(2, size + 1)
    steps[0].index_add_(0, lo, slope).index_add_(0, hi, slope, alpha=-1)
    steps[1].index_add_(0, hi, 0.5 * weight + scaled)
    steps[1].index_add_(0, lo, 0.5 * weight - scaled)
    steps.cumsum_(1)
    return steps[0, :size], steps[1, :size]


def _compiled_kernel(x: Tensor) -> ModuleType | None:
    """The compiled CPU loops (``detloss._kernels.ranking_cpu``) for a problem on ``x``'s device, or
    None: not the CPU, Numba missing, or switched off."""
    return fast_path("ranking", x.device)


#: Grid cells per zone boundary when locating negatives among the boundaries (CPU path).
_CELLS_PER_BOUND = 16
#: At most this many boundaries per cell are compared one by one; more use a search.
_CELL_COMPARES = 8


def _locate(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """``np.searchsorted(bounds, values, "right")`` (``intp``) for unsorted float
    ``values`` and sorted float64 ``bounds`` spanning a positive width: how many bounds
    lie at or below each value.

    A binary search per value is slow on unsorted values (its branches cannot be
    predicted). Instead, a uniform grid of cells over the bounds answers most values with
    one table read. The cell of a value is a non-decreasing function of it, computed in
    the values' dtype and applied to the bounds rounded to that dtype, so every bound in
    an earlier cell than a value is <= the value and every bound in a later cell is
    greater (rounding to a dtype in which the value is exact keeps both orders). Only the
    values whose cell also holds bounds compare against those bounds.
    """
    dtype = values.dtype.type
    cells = _CELLS_PER_BOUND * bounds.size
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        start, scale = dtype(bounds[0]), dtype(cells / (bounds[-1] - bounds[0]))
    if not (np.isfinite(start) and np.isfinite(scale) and scale > 0):
        return np.searchsorted(bounds, values.astype(np.float64), "right")

    def cell(v: np.ndarray) -> np.ndarray:
        # Index 0 holds everything below the first bound, cells + 1 the last bound and
        # everything above it.
        with np.errstate(over="ignore", invalid="ignore"):
            c = v - start
            c *= scale
        np.floor(c, out=c)
        np.clip(c, -1, cells, out=c)
        index = c.astype(np.intp)
        index += 1
        return index

    per_cell = np.bincount(cell(bounds.astype(values.dtype)), minlength=cells + 2)
    before = np.cumsum(per_cell)
    before -= per_cell
    # One table: the answer for cells without bounds, -1 where the cell needs a look.
    table = np.where(per_cell > 0, -1, before)
    where = cell(values)
    found = table.take(where, mode="clip")
    unsure = np.flatnonzero(found < 0)
    if unsure.size:
        value = values[unsure].astype(np.float64)
        cell_of = where[unsure]
        first, count = before.take(cell_of), per_cell.take(cell_of)
        most = int(count.max())
        if most > _CELL_COMPARES:
            found[unsure] = np.searchsorted(bounds, value, "right")
        else:
            last, below = bounds.size - 1, first.copy()
            for k in range(most):
                below += (bounds.take(np.minimum(first + k, last)) <= value) & (count > k)
            found[unsure] = below
    return found


class _SortedNegatives:
    """The participating negatives sorted ascending (any device), with the positions of
    every positive's zone ``(x_i - delta, x_i + delta)`` among them. With ``compact=False``
    the arrays keep the static length ``n`` with padding at the end."""

    def __init__(self, x: Tensor, neg: Tensor, xs: Tensor, delta: float, compact: bool):
        ys, self.index, self.valid = _sorted_subset(x, neg, compact)
        ys = ys.to(xs.dtype)
        self.n, self.delta = x.numel(), delta
        self.lo = torch.searchsorted(ys, xs - delta, right=True)
        self.hi = torch.searchsorted(ys, xs + delta)
        self.y = _masked(ys, self.valid)

    def above(self, x: Tensor) -> Tensor:
        """``sum_j H(y_j - x_i)`` for every sorted positive ``x_i``."""
        sums = _prefix(self.y)
        if self.valid is None:
            # The count prefix of a compact array is the index itself: no length-N arange.
            lo, hi = self.lo.to(self.y.dtype), self.hi.to(self.y.dtype)
            sums_range = sums.index_select(0, self.hi) - sums.index_select(0, self.lo)
            linear = sums_range - (x - self.delta) * (hi - lo)
            return (self.y.numel() - hi) + linear / (2 * self.delta)
        counts = _prefix(self.valid.to(self.y.dtype))
        return _soft_sum(counts, sums, self.lo, self.hi, x, self.delta)

    def spread(self, weight: Tensor, x: Tensor) -> Tensor:
        """``sum_i w_i H(y_j - x_i)`` for every negative j, in element order (length
        ``n``, zero elsewhere).

        Positive i is in j's linear zone iff ``lo[i] <= j < hi[i]`` and counts fully iff
        ``hi[i] <= j``: positive i enters running sums over j at ``lo[i]`` and ``hi[i]``,
        so one scatter of P steps and one cumulative sum give both coefficients of the
        sum, which is linear in ``y_j`` (see :func:`_zone_coefficients`).
        """
        slopes, offsets = _zone_coefficients(
            weight, x, self.lo, self.hi, self.y.numel(), self.delta
        )
        values = _masked(torch.addcmul(offsets, slopes, self.y), self.valid)
        out = torch.zeros(self.n, dtype=values.dtype, device=values.device)
        return out.index_add_(0, self.index, values)


class _BinnedNegatives:
    """The negatives of a CPU problem placed among the 2P sorted zone boundaries
    ``x_i +- delta`` instead of being sorted: all negatives between two consecutive
    boundaries see the same positives in the same way, so counts and sums per gap give
    every positive's sum over negatives, and each negative's update is the same linear
    function of its score within its gap. O(N + P log P) work, about twice as fast as
    sorting the negatives."""

    def __init__(self, x: Tensor, neg: Tensor, xs: Tensor, delta: float):
        self.n, self.delta = x.numel(), delta
        values = x.numpy()
        # A negative at exactly x_i - delta is below the zone (H = 0), one at x_i + delta
        # above it (H = 1): with each lower end moved up to the next float, "at or above
        # a boundary" means the same for both ends.
        lower = np.nextafter((xs - delta).numpy(), np.inf)
        upper = (xs + delta).numpy()
        bounds = np.sort(np.concatenate((lower, upper)))
        self.gaps = bounds.size + 1
        # Gap g holds the scores with exactly g boundaries at or below them; a negative is
        # in positive i's linear zone iff lo[i] <= g < hi[i], above it iff hi[i] <= g.
        self.lo = torch.from_numpy(np.searchsorted(bounds, lower, "right"))
        self.hi = torch.from_numpy(np.searchsorted(bounds, upper, "right"))
        self.kernel = _compiled_kernel(x)
        if self.kernel is not None:
            gap, counts, sums = self.kernel.bin_negatives(values, neg.numpy(), True, bounds)
        else:
            gap = _locate(values, bounds)
            gap[~neg.numpy()] = self.gaps  # not a negative: a spare gap, dropped
            counts = np.bincount(gap, minlength=self.gaps + 1).astype(np.float64)
            sums = np.bincount(gap, weights=values, minlength=self.gaps + 1)
        self.counts = _prefix(torch.from_numpy(counts[: self.gaps]))
        self.sums = _prefix(torch.from_numpy(sums[: self.gaps]))
        self.gap, self.values = gap, values

    def above(self, x: Tensor) -> Tensor:
        """``sum_j H(y_j - x_i)`` for every sorted positive ``x_i``."""
        return _soft_sum(self.counts, self.sums, self.lo, self.hi, x, self.delta)

    def spread(self, weight: Tensor, x: Tensor) -> Tensor:
        """``sum_i w_i H(y_j - x_i)`` for every negative j, in element order (length
        ``n``, zero elsewhere)."""
        slopes, offsets = _zone_coefficients(weight, x, self.lo, self.hi, self.gaps, self.delta)
        if self.kernel is not None:
            out = np.empty(self.n)
            self.kernel.spread_into(out, self.values, self.gap, slopes.numpy(), offsets.numpy())
            return torch.from_numpy(out)
        # The spare gap (everything that is not a negative) gets zero coefficients.
        slope = np.append(slopes.numpy(), 0.0).take(self.gap)
        with np.errstate(invalid="ignore", over="ignore"):  # unvalidated inf: as torch
            slope *= self.values
            slope += np.append(offsets.numpy(), 0.0).take(self.gap)
        return torch.from_numpy(slope)


class _Ranking:
    """The positives of one flat problem sorted ascending, with the searches that place
    every positive's linear zone ``(x_i - delta, x_i + delta)`` among them, and the
    negatives that take part (:class:`_BinnedNegatives` on the CPU when compacting,
    :class:`_SortedNegatives` otherwise). Arrays over positives are in ascending order of
    score; with ``compact=False`` they keep the length ``n`` with padding at the end,
    zeroed by :meth:`mask`."""

    def __init__(self, x: Tensor, pos: Tensor, neg: Tensor, delta: float, compact: bool):
        self.n, self.delta, self.dtype = x.numel(), delta, x.dtype
        acc = _accumulation_dtype(x.device)
        xs, self.index_p, self.valid_p = _sorted_subset(x, pos, compact)
        # Searches and sums in the accumulation dtype; padding stays +inf for the searches
        # and is zeroed for the arithmetic.
        self.xs = xs.to(acc)
        self.x = _masked(self.xs, self.valid_p)
        self.lo_p = torch.searchsorted(self.xs, self.xs - delta, right=True)
        self.hi_p = torch.searchsorted(self.xs, self.xs + delta)
        self.ones_p = _masked(torch.ones_like(self.x), self.valid_p)
        self.num_pos = self.ones_p.sum()
        self.norm = self.num_pos.clamp(min=1)
        if compact and x.device.type == "cpu" and xs.numel() and acc == torch.float64:
            self.negatives: _SortedNegatives | _BinnedNegatives = _BinnedNegatives(
                x, neg, self.xs, delta
            )
        else:
            # Negatives below min(positive) - delta have H = 0 against every positive;
            # the published code skips them. Without a positive the minimum is +inf: none
            # takes part. (Padded arrays are never empty.)
            lowest = xs[:1] if xs.numel() else x.new_full((1,), torch.inf)
            neg = neg & (x >= lowest - delta)
            self.negatives = _SortedNegatives(x, neg, self.xs, delta, compact)

    def mask(self, values: Tensor) -> Tensor:
        """Zero the padding of an array over the sorted positives."""
        return _masked(values, self.valid_p)

    def positives_above(self, weight: Tensor | None = None) -> Tensor:
        """``sum_k w_k H(x_k - x_i)`` for every positive i, itself included with
        ``H(0) = 1/2`` (``w`` over the sorted positives, default 1)."""
        w = self.ones_p if weight is None else self.mask(weight)
        return _soft_sum(_prefix(w), _prefix(w * self.x), self.lo_p, self.hi_p, self.x, self.delta)

    def negatives_above(self) -> Tensor:
        """``sum_j H(y_j - x_i)`` for every positive i: its soft count of false positives."""
        return self.negatives.above(self.x)

    def spread(self, weight: Tensor) -> Tensor:
        """``sum_i w_i H(y_j - x_i)`` for every negative j, in element order (zero for the
        other elements)."""
        return self.negatives.spread(self.mask(weight), self.x)

    def scatter(self, pos_update: Tensor, neg_update: Tensor | None = None) -> Tensor:
        """Updates over the sorted positives (plus the negatives' from :meth:`spread`) in
        element order."""
        if neg_update is None:
            update = torch.zeros(self.n, dtype=self.dtype, device=self.xs.device)
        else:
            update = neg_update.to(self.dtype, copy=True)
        # Each element once (padding adds zeros), and the negatives' array is zero at the
        # positives: an add is a copy here.
        return update.index_add_(0, self.index_p, self.mask(pos_update).to(self.dtype))


def _default_compact(x: Tensor, compact: bool | None) -> bool:
    # Compacting costs a device sync on a GPU; on CPU it is cheap and shortens the searches.
    return x.device.type == "cpu" if compact is None else compact


# ------------------------------------------------------------------------- AP-Loss


def _ap_loss_and_grad(
    x: Tensor, labels: Tensor, delta: float, compact: bool | None = None
) -> tuple[Tensor, Tensor]:
    """AP-loss of flat logits and its error-driven update.

    Args:
        x: ``Tensor[n]`` logits, float32 or float64.
        labels: ``Tensor[n]``; 1 positive, 0 negative, anything else ignored.
        delta: half-width of the linear zone of the soft step.
        compact: drop non-participating elements before sorting (default on CPU);
            False keeps static shapes (no device sync, the default elsewhere).

    Returns:
        ``(loss Tensor[], update Tensor[n])`` in ``x``'s dtype.
    """
    if x.numel() == 0:
        return x.new_zeros(()), x.new_zeros(0)
    kernel = _compiled_kernel(x) if compact is not False else None
    if kernel is not None:
        loss, update = kernel.ap_loss(x.numpy(), _label_array(labels), delta)
        return torch.tensor(loss, dtype=x.dtype), torch.from_numpy(update)
    pos = _equal(labels, 1)
    r = _Ranking(x, pos, _equal(labels, 0), delta, _default_compact(x, compact))
    # Positive i ranks itself 1: H(0) = 1/2 from the sum plus the reference's constant 1/2.
    a = r.positives_above() + 0.5
    b = r.negatives_above()
    precision = r.mask(a / (a + b))
    # Positives ascending = recall descending: the running maximum is the interpolated
    # precision (the reference's max_prec; padding sits at the end and cannot leak in).
    interpolated = precision.cummax(0).values
    # Where a positive's precision is below the interpolated one, the reference rescales
    # its negatives' updates by (1 - interpolated) / (1 - precision).
    kept = precision >= interpolated
    scale = torch.where(kept, 1, (1 - interpolated) / torch.where(kept, 1, 1 - precision))
    neg_update = r.spread(scale / ((a + b) * r.norm))
    shortfall = r.mask(1 - interpolated)
    loss = (shortfall.sum() / r.norm).to(x.dtype)
    return loss, r.scatter(-shortfall / r.norm, neg_update)


def _gather(x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, int, int]:
    """All ranks' flat logits and labels, each rank's part padded to the largest with
    ignored elements. Returns ``(logits, labels, start of this rank's part, world)``."""
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([x.numel()], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    largest = int(torch.cat(sizes).max())  # one host read, to size the exchange
    packed = torch.stack([x.new_zeros(largest), x.new_full((largest,), -1.0)])
    packed[0, : x.numel()] = x
    packed[1, : x.numel()] = labels.to(x.dtype)
    parts = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(parts, packed)
    gathered = torch.stack(parts, 1)  # [2, W, largest]
    return gathered[0].reshape(-1), gathered[1].reshape(-1), rank * largest, world


class _APLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, labels: Tensor, delta: float, distributed: bool
    ) -> Tensor:
        x = logits.detach().reshape(-1).to(compute_dtype(logits))
        flat_labels = labels.detach().reshape(-1)
        if distributed and is_distributed():
            all_x, all_labels, start, world = _gather(x, flat_labels)
            loss, update = _ap_loss_and_grad(all_x, all_labels, delta)
            # DDP averages parameter gradients over ranks: each rank returns W times its
            # part of the single-process update, so the average is the single-process one.
            update = update[start : start + x.numel()] * world
        else:
            loss, update = _ap_loss_and_grad(x, flat_labels, delta)
        ctx.save_for_backward(update.view(logits.shape))
        ctx.grad_dtype = logits.dtype
        return loss.to(output_dtype(logits))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (update,) = ctx.saved_tensors
        grad = (update * grad_output.to(update.dtype)).to(ctx.grad_dtype)
        return grad, None, None, None


# ------------------------------------------------------------------------- validation


def _check_delta(delta: object) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)):
        raise TypeError(f"delta must be a float, got {type(delta).__name__}")
    if not 0 < delta < float("inf"):
        raise ValueError(f"delta must be a finite number > 0, got {delta}")
    return float(delta)


def _check_pair(logits: object, labels: object, name: str) -> None:
    check_tensor(logits, "logits")
    check_tensor(labels, name)
    if logits.shape != labels.shape:  # type: ignore[union-attr]
        raise ValueError(
            f"{name}: expected shape {shape_str(logits.shape)} (the logits'), "  # type: ignore[union-attr]
            f"got {shape_str(labels.shape)}"  # type: ignore[union-attr]
        )
    if labels.device != logits.device:  # type: ignore[union-attr]
        raise ValueError(
            f"{name}: expected device {logits.device} (the logits'), got {labels.device}"  # type: ignore[union-attr]
        )
    if logits.is_complex() or labels.is_complex():  # type: ignore[union-attr]
        raise TypeError(f"logits and {name} must be real tensors, got a complex dtype")


def _should_validate(x: Tensor, validate: bool | None) -> bool:
    return x.device.type == "cpu" if validate is None else validate


def _check_finite(x: Tensor, name: str) -> None:
    if not x.is_floating_point():
        return
    array = _host_array(x)
    finite = bool(np.isfinite(array).all()) if array is not None else bool(x.isfinite().all())
    if not finite:
        raise ValueError(f"{name}: expected finite values, got NaN or inf")


def _check_labels(labels: Tensor) -> None:
    array = _host_array(labels)
    if array is not None and array.dtype.kind in "iu":
        # Integers: the extremes decide.
        allowed = array.size == 0 or (array.min() >= -1 and array.max() <= 1)
    elif array is not None:
        allowed = bool(((array == 1) | (array == 0) | (array == -1)).all())
    else:
        allowed = bool(((labels == 1) | (labels == 0) | (labels == -1)).all())
    if not allowed:
        ok = (labels == 1) | (labels == 0) | (labels == -1)
        bad = labels[~ok].reshape(-1)[0].item()
        raise ValueError(f"labels: expected values in {{-1, 0, 1}}, got {bad}")


def _validate(logits: Tensor, labels: Tensor, delta: float, validate: bool | None) -> None:
    _check_pair(logits, labels, "labels")
    _check_delta(delta)
    if _should_validate(logits, validate):
        _check_labels(labels)
        _check_finite(logits, "logits")


# ------------------------------------------------------------------------- public: AP


def ap_loss(
    logits: Tensor,
    labels: Tensor,
    delta: float = 1.0,
    distributed: bool = True,
    *,
    validate: bool | None = None,
) -> Tensor:
    """AP-Loss: ``1 - interpolated AP`` of one ranking of every element, with the paper's
    error-driven update as its gradient.

    Args:
        logits: scores of any shape, e.g. ``Tensor[B, A, C]`` (anchors x classes). The
            ranking is over all elements of the mini-batch together, not per image or
            class.
        labels: same shape; 1 positive, 0 negative, -1 ignored (integer, bool or float).
        delta: half-width of the linear zone of the soft step
            ``H(t) = clamp(t / (2 delta) + 1/2, 0, 1)``; ``delta -> 0`` is the hard step and
            ``1 - loss`` the all-point interpolated (VOC) AP.
        distributed: when True and a process group with more than one rank is
            initialised, logits and labels are gathered from every rank (sizes may
            differ) and ranked together; every rank returns the global loss, and the
            gradient of its own part times the world size, so that DDP's gradient
            averaging reproduces single-process training.
        validate: check that labels are in {-1, 0, 1} and logits are finite (a device
            sync); default True on CPU, False elsewhere. Unvalidated labels other than 0
            and 1 are ignored.

    Returns:
        ``Tensor[]`` in ``[0, 1)``, in the logits' dtype (float32 for integers). Without
        a positive it is 0 and the gradient is 0.

    Backward returns the error-driven update times the incoming gradient, not the
    derivative of the returned value: for positive i,
    ``-(1 - interpolated precision_i) / P``; for each negative, its share of every
    positive's ranking error (see ``docs/ap_loss.md``). The updates sum to zero and the
    loss equals minus the sum of the positives' updates. Negatives below
    ``min(positive) - delta`` get 0 (they cannot affect any rank), ignored elements 0.
    Float16 and bfloat16 are computed in float32; sums run in float64.
    """
    _validate(logits, labels, delta, validate)
    return _APLossFunction.apply(logits, labels, float(delta), distributed)


class APLoss(nn.Module):
    """Module form of :func:`ap_loss`: stores ``delta`` and ``distributed``."""

    def __init__(self, delta: float = 1.0, distributed: bool = True) -> None:
        super().__init__()
        self.delta = _check_delta(delta)
        self.distributed = distributed

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return ap_loss(logits, labels, self.delta, self.distributed)

    def extra_repr(self) -> str:
        return f"delta={self.delta}, distributed={self.distributed}"


# ------------------------------------------------------------------------- aLRP


def _alrp_loss_and_grads(
    x: Tensor, labels: Tensor, reg: Tensor, delta: float, compact: bool | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """aLRP classification and localisation components of flat logits.

    Args:
        x: ``Tensor[n]`` logits (float32 or float64); labels as for AP-Loss.
        reg: ``Tensor[P]`` localisation losses of the positives in element order.

    Returns:
        ``(classification, localisation, update Tensor[n], d localisation / d reg)``.
    """
    if x.numel() == 0:
        return x.new_zeros(()), reg.new_zeros(()), x.new_zeros(0), torch.zeros_like(reg)
    kernel = _compiled_kernel(x) if compact is not False else None
    if kernel is not None:
        losses = reg.detach().to(torch.float64).numpy()
        num_pos, cls, loc, update, grad = kernel.alrp_loss(
            x.numpy(), _label_array(labels), losses, delta, _ALRP_EPS
        )
        if num_pos == reg.numel():  # else (unvalidated) the torch path's handling
            return (
                torch.tensor(cls, dtype=x.dtype),
                torch.tensor(loc, dtype=torch.float64),
                torch.from_numpy(update),
                torch.from_numpy(grad),
            )
    pos = _equal(labels, 1)
    r = _Ranking(x, pos, _equal(labels, 0), delta, _default_compact(x, compact))
    acc = r.x.dtype
    # Which entry of reg belongs to each sorted positive (padding: any, masked).
    slot = (pos.cumsum(0) - 1).index_select(0, r.index_p).clamp(min=0)
    if reg.numel() == 0:
        loc = r.x.new_zeros(r.x.shape)
    else:
        loc = r.mask(reg.detach().to(acc).index_select(0, slot.clamp(max=reg.numel() - 1)))

    # The reference drops i itself from its positive relations and adds 1 instead:
    # sum_{k != i} H(x_k - x_i) = positives_above - 1/2, and likewise for the losses.
    rank_pos = r.positives_above() + 0.5
    false_pos = r.negatives_above()
    rank = rank_pos + false_pos
    classification = r.mask(1 - rank_pos / rank).sum() / r.norm
    spread = false_pos > _ALRP_EPS
    error = torch.where(spread, (r.positives_above(loc) - 0.5 * loc + false_pos) / rank, 0)
    neg_update = r.spread(error / (torch.where(spread, false_pos, 1) * r.norm))
    update = r.scatter(-error / r.norm, neg_update)

    # Localisation: positives by descending score, each with the sum of the losses of
    # those ranked at or above it (hard order, ties in element order),
    # over its soft rank; the mean over positives.
    above = loc.flip(0).cumsum(0).flip(0)
    localisation = r.mask(above / rank).sum() / r.norm
    # d localisation / d loss of sorted positive k: sum over r <= k of 1 / (rank_r P).
    grad_sorted = r.mask(r.mask(1 / rank).cumsum(0) / r.norm)
    grad_reg = torch.zeros(reg.numel() + 1, dtype=acc, device=x.device)
    # Padding goes to a spare last slot, dropped after the scatter.
    target = torch.where(r.valid_p, slot, reg.numel()) if r.valid_p is not None else slot
    grad_reg.scatter_(0, target, grad_sorted)
    return classification.to(x.dtype), localisation, update, grad_reg[:-1]


class _ALRPLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, labels: Tensor, regression_losses: Tensor, delta: float
    ) -> tuple[Tensor, Tensor]:
        x = logits.detach().reshape(-1).to(compute_dtype(logits))
        cls, loc, update, grad_reg = _alrp_loss_and_grads(
            x, labels.detach().reshape(-1), regression_losses.detach(), delta
        )
        ctx.save_for_backward(update.view(logits.shape), grad_reg)
        ctx.dtypes = (logits.dtype, regression_losses.dtype)
        return cls.to(output_dtype(logits)), loc.to(output_dtype(regression_losses))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_cls: Tensor, grad_loc: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        update, grad_reg = ctx.saved_tensors
        grad_logits = (update * grad_cls.to(update.dtype)).to(ctx.dtypes[0])
        grad_losses = (grad_reg * grad_loc.to(grad_reg.dtype)).to(ctx.dtypes[1])
        return grad_logits, None, grad_losses, None


def alrp_loss(
    logits: Tensor,
    labels: Tensor,
    regression_losses: Tensor,
    delta: float = 1.0,
    *,
    validate: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """aLRP Loss: the classification and localisation components of the average
    Localisation-Recall-Precision error, with the paper's error-driven update.

    Args:
        logits: scores of any shape, ranked together as in :func:`ap_loss`.
        labels: same shape; 1 positive, 0 negative, -1 ignored.
        regression_losses: ``Tensor[P]``, one localisation loss per positive (e.g. GIoU
            loss / 2, in [0, 1]) in the order of the positives in ``labels.reshape(-1)``.
        delta: half-width of the soft step's linear zone.
        validate: as for :func:`ap_loss`; also checks the length of ``regression_losses``.

    Returns:
        ``(classification, localisation)`` scalars. ``classification = 1 - mean precision``
        (not interpolated; a positive ranks itself 1); its backward is the error-driven
        update: positive i receives ``-(sum_{k != i} H(x_k - x_i) l_k + FP_i) / rank_i / P``
        and spreads it over the negatives above it in proportion to ``H``, unless its
        soft false-positive count ``FP_i`` is at most 1e-5. ``localisation`` is the mean
        over positives, by descending score, of the summed losses of the positives
        ranked at or above it over its soft rank; it is differentiable in
        ``regression_losses`` (the ranks are constants). The reference weights it by a
        self-balancing factor (50 at the start, then (mean classification + mean
        localisation) / mean localisation over each epoch): see :class:`ALRPLoss`.
        Without a positive both are 0.

    Not distributed: the ranking is over this process's elements.
    """
    _validate(logits, labels, delta, validate)
    check_tensor(regression_losses, "regression_losses")
    if regression_losses.ndim != 1:
        raise ValueError(
            f"regression_losses: expected shape [P], got {shape_str(regression_losses.shape)}"
        )
    if regression_losses.device != logits.device:
        raise ValueError(
            f"regression_losses: expected device {logits.device} (the logits'), "
            f"got {regression_losses.device}"
        )
    if _should_validate(logits, validate):
        num_pos = int((labels == 1).sum())
        if regression_losses.numel() != num_pos:
            raise ValueError(
                f"regression_losses: expected shape [{num_pos}] (one per positive label), "
                f"got {shape_str(regression_losses.shape)}"
            )
        _check_finite(regression_losses, "regression_losses")
    if not regression_losses.is_floating_point():
        regression_losses = regression_losses.float()
    return _ALRPLossFunction.apply(logits, labels, regression_losses, float(delta))


class ALRPLoss(nn.Module):
    """Module form of :func:`alrp_loss`: ``classification + loc_weight * localisation``.

    ``loc_weight`` is the reference's self-balancing weight (initially 50); update it
    between epochs, e.g. to ``(mean classification + mean localisation) / mean
    localisation`` over the last epoch as the reference does.
    """

    def __init__(self, delta: float = 1.0, loc_weight: float = 50.0) -> None:
        super().__init__()
        self.delta = _check_delta(delta)
        self.loc_weight = float(loc_weight)

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        regression_losses: Tensor,
        return_terms: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        cls, loc = alrp_loss(logits, labels, regression_losses, self.delta)
        total = cls + self.loc_weight * loc
        return (total, {"cls": cls, "loc": loc}) if return_terms else total

    def extra_repr(self) -> str:
        return f"delta={self.delta}, loc_weight={self.loc_weight}"


# ------------------------------------------------------------------------- Rank & Sort


def _sorting_terms(
    x: Tensor, t: Tensor, current: Tensor, delta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Rank & Sort's sorting terms (see ``detloss._kernels.ranking_cpu.sorting_terms``) by comparing
    every pair of positives, by score and by target: dense, a block of rows at a time."""
    p = t.numel()
    sorting_error = torch.empty_like(t)
    received = torch.zeros_like(t)
    own = torch.empty_like(t)
    block = max(1, (1 << 20) // max(p, 1))
    for start in range(0, p, block):
        rows = slice(start, start + block)
        step = torch.clamp((x - x[rows, None]) / (2 * delta) + 0.5, 0, 1)
        in_order = t >= t[rows, None]
        sorted_step = step * in_order
        target = (sorted_step * (1 - t)).sum(1) / sorted_step.sum(1)
        error = current[rows] - target
        missorted = step * ~in_order
        denom = missorted.sum(1)
        has = denom > _RS_EPS
        sorting_error[rows] = error
        own[rows] = torch.where(has, -error, 0)
        received += (
            missorted * (torch.where(has, error, 0) / torch.where(has, denom, 1))[:, None]
        ).sum(0)
    return sorting_error, own, received


def _rank_sort_loss_and_grads(
    x: Tensor, targets: Tensor, delta: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rank & Sort losses of flat logits and their two updates.

    Args:
        x: ``Tensor[n]`` logits (float32 or float64).
        targets: ``Tensor[n]``; > 0 positive with that continuous target (IoU), 0
            negative, < 0 ignored.

    Returns:
        ``(ranking, sorting, ranking update Tensor[n], sorting update Tensor[n])``.
    """
    if x.numel() == 0:
        zero = x.new_zeros(())
        return zero, zero, x.new_zeros(0), x.new_zeros(0)
    pos = targets > 0
    # The pairwise part needs the positives without padding: compact.
    r = _Ranking(x, pos, _equal(targets, 0), delta, compact=True)
    acc = r.x.dtype
    t = targets.detach().to(acc).index_select(0, r.index_p)

    # Ranking error: the share of false positives above each positive (here a positive
    # counts itself 1/2, as H(0) in the reference's sum).
    rank_pos = r.positives_above()
    false_pos = r.negatives_above()
    ranking_error = false_pos / (rank_pos + false_pos)
    spread = false_pos > _RS_EPS
    rank_update = torch.where(spread, -ranking_error, 0) / r.norm
    neg_update = r.spread(
        torch.where(spread, ranking_error / torch.where(spread, false_pos, 1), 0) / r.norm
    )

    # Sorting error: among the positives above i, the mean (1 - target) against the
    # same mean over those that also have a target >= t_i.
    current = r.positives_above(1 - t) / rank_pos
    kernel = _compiled_kernel(x)
    if kernel is not None:
        arrays = (r.x, t, r.lo_p, r.hi_p, current)
        terms = kernel.sorting_terms(*(a.numpy() for a in arrays), delta, _RS_EPS)
        sorting_error, own, received = (torch.from_numpy(a) for a in terms)
    else:
        sorting_error, own, received = _sorting_terms(r.x, t, current, delta)
    sort_update = (own + received) / r.norm
    ranking = ranking_error.sum() / r.norm
    sorting = sorting_error.sum() / r.norm
    return (
        ranking.to(x.dtype),
        sorting.to(x.dtype),
        r.scatter(rank_update, neg_update),
        r.scatter(sort_update),
    )


class _RankSortFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, targets: Tensor, delta: float
    ) -> tuple[Tensor, Tensor]:
        x = logits.detach().reshape(-1).to(compute_dtype(logits))
        ranking, sorting, rank_update, sort_update = _rank_sort_loss_and_grads(
            x, targets.detach().reshape(-1), delta
        )
        ctx.save_for_backward(rank_update.view(logits.shape), sort_update.view(logits.shape))
        ctx.grad_dtype = logits.dtype
        out = output_dtype(logits)
        return ranking.to(out), sorting.to(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rank: Tensor, grad_sort: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        rank_update, sort_update = ctx.saved_tensors
        grad = rank_update * grad_rank.to(rank_update.dtype)
        grad += sort_update * grad_sort.to(sort_update.dtype)
        return grad.to(ctx.grad_dtype), None, None


def rank_sort_loss(
    logits: Tensor, targets: Tensor, delta: float = 0.5, *, validate: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Rank & Sort Loss: the ranking error (false positives above each positive) and the
    sorting error (positives with lower targets above each positive), each with the
    paper's error-driven update.

    Args:
        logits: scores of any shape, ranked together as in :func:`ap_loss`.
        targets: same shape, float: a positive's continuous target in (0, 1] (its IoU),
            0 for a negative, -1 ignored.
        delta: half-width of the soft step's linear zone (the reference's 0.5).
        validate: check targets in {-1} or [0, 1] and finite logits (a device sync);
            default True on CPU.

    Returns:
        ``(ranking, sorting)`` scalars: the means over positives of
        ``FP_i / (rank_pos_i + FP_i)`` and of the sorting error. Backward gives each its
        own update times its incoming gradient, so ``(ranking + sorting).backward()``
        applies the reference's combined update. A positive whose false-positive count
        (or mis-sorted positive count) is at most 1e-10 keeps its error to itself, as in
        the reference. Without a positive both are 0.

    The positive-positive comparisons take O(P log P) on the CPU with Numba (Fenwick
    trees), else O(P^2) time in blocks of rows with O(P) memory per block, and need the
    positives gathered (one device sync on a GPU). Not distributed.
    """
    _check_pair(logits, targets, "targets")
    delta = _check_delta(delta)
    if _should_validate(logits, validate):
        _check_finite(logits, "logits")
        ok = (targets == -1) | ((targets >= 0) & (targets <= 1))
        if not bool(ok.all()):
            bad = targets[~ok].reshape(-1)[0].item()
            raise ValueError(f"targets: expected -1 or values in [0, 1], got {bad}")
    return _RankSortFunction.apply(logits, targets, delta)


class RankSortLoss(nn.Module):
    """Module form of :func:`rank_sort_loss`: ``ranking + sorting``."""

    def __init__(self, delta: float = 0.5) -> None:
        super().__init__()
        self.delta = _check_delta(delta)

    def forward(
        self, logits: Tensor, targets: Tensor, return_terms: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        ranking, sorting = rank_sort_loss(logits, targets, self.delta)
        total = ranking + sorting
        return (total, {"rank": ranking, "sort": sorting}) if return_terms else total

    def extra_repr(self) -> str:
        return f"delta={self.delta}"
