"""The rank engine of the ranking losses: every soft count they need, from sorted scores,
binary searches and prefix sums.

The losses compare scores with the soft step ``H(t) = clamp(t / (2 delta) + 1/2, 0, 1)``,
0 below ``-delta``, 1 above ``+delta`` and linear in between. Over an ascending array
``z``, the sum ``sum_k w_k H(z_k - q)`` splits into three index ranges: the elements
below ``q - delta`` count 0, those in the linear zone ``(q - delta, q + delta)`` count
``(z_k - q + delta) / (2 delta)`` and those from ``q + delta`` on count 1. Two binary
searches find the ranges, and prefix sums of ``w`` and ``w z`` give the sum in O(1). The
published algorithms evaluate ``H`` for every (positive, element) pair; this engine
classifies each pair into the same range, so the numbers are theirs up to rounding.

:class:`Ranking` holds one flat problem: its positives and its participating negatives,
each sorted ascending, and the positions of every positive's zone among both. It answers
the three questions the losses ask:

- :meth:`Ranking.positives_above`: ``sum_k w_k H(x_k - x_i)`` for every positive i;
- :meth:`Ranking.negatives_above`: ``sum_j H(y_j - x_i)``, its soft false positives;
- :meth:`Ranking.spread`: ``sum_i w_i H(y_j - x_i)`` for every negative j, the share of
  the positives' errors it receives.

With ``compact=False`` every array keeps the static length of the input (the elements
that take no part sort to the end as ``+inf`` and are masked out), so nothing waits for
an accelerator; ``compact=True`` gathers the participants first (a device sync on a GPU,
free on the CPU).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Ranking", "accumulation_dtype"]


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64, in which the prefix sums over 10^5 float32 logits keep their digits; MPS,
    which has no float64: float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def _sorted_subset(x: Tensor, mask: Tensor, compact: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """The elements of ``x`` where ``mask``, sorted ascending, ties in element order.

    Returns ``(values, their indices into x, valid)``. ``compact`` drops the other
    elements and ``valid`` is None; otherwise they are kept as ``+inf`` at the end,
    ``valid`` marks the real ones, and every array has the static length ``x.numel()``.
    """
    if compact:
        index = mask.nonzero().squeeze(1)
        values, order = torch.sort(x.index_select(0, index), stable=True)
        return values, index.index_select(0, order), None
    values, order = torch.sort(torch.where(mask, x, torch.inf), stable=True)
    return values, order, mask.index_select(0, order)


def _masked(values: Tensor, valid: Tensor | None) -> Tensor:
    return values if valid is None else torch.where(valid, values, 0)


def _prefix(values: Tensor) -> Tensor:
    """``[0, v0, v0 + v1, ...]``: sums over index ranges ``[lo, hi)`` are differences."""
    out = values.new_zeros(values.numel() + 1)
    torch.cumsum(values, 0, out=out[1:])
    return out


def _soft_sum(
    weight: Tensor, weighted: Tensor, lo: Tensor, hi: Tensor, query: Tensor, delta: float
) -> Tensor:
    """``sum_k w_k H(z_k - q)`` for every query ``q`` over an ascending ``z``, from the
    prefix sums ``weight`` of ``w`` and ``weighted`` of ``w z``: the elements in ``[lo,
    hi)`` lie in q's linear zone, those from ``hi`` on count fully."""
    weight_hi = weight.index_select(0, hi)
    weighted_range = weighted.index_select(0, hi) - weighted.index_select(0, lo)
    linear = weighted_range - (query - delta) * (weight_hi - weight.index_select(0, lo))
    return (weight[-1] - weight_hi) + linear / (2 * delta)


def _zone_coefficients(
    weight: Tensor, x: Tensor, lo: Tensor, hi: Tensor, size: int, delta: float
) -> tuple[Tensor, Tensor]:
    """``(slope, offset)`` with ``sum_i w_i H(y_g - x_i) = slope[g] * y_g + offset[g]`` for
    every position ``g < size`` of the sorted negatives, where positive i's linear zone
    covers ``lo[i] <= g < hi[i]`` and it counts fully from ``hi[i]`` on.

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


class Ranking:
    """The positives and the participating negatives of one flat problem, each sorted
    ascending, with every positive's linear zone ``(x_i - delta, x_i + delta)`` located
    among both.

    Args:
        x: ``Tensor[n]`` scores.
        pos: ``bool[n]``, the positives.
        neg: ``bool[n]``, the negatives. Those below ``min(positive) - delta`` have
            ``H = 0`` against every positive; the published code skips them, and so does
            this engine.
        delta: half-width of the soft step's linear zone.
        compact: gather the participants (see the module docstring).

    Arrays over positives (``x``, ``index_p``, the results of :meth:`positives_above` and
    :meth:`negatives_above`) are in ascending order of score, ties in element order; with
    ``compact=False`` they keep the length ``n``, padding at the end, zeroed by
    :meth:`mask`. Sums run in :func:`accumulation_dtype`.
    """

    def __init__(self, x: Tensor, pos: Tensor, neg: Tensor, delta: float, compact: bool):
        self.n, self.delta, self.dtype = x.numel(), delta, x.dtype
        acc = accumulation_dtype(x.device)
        xs, self.index_p, self.valid_p = _sorted_subset(x, pos, compact)
        # Searches on the padded scores (padding stays +inf and sorts last); arithmetic
        # on the masked ones.
        self.xs = xs.to(acc)
        self.x = _masked(self.xs, self.valid_p)
        self.lo_p = torch.searchsorted(self.xs, self.xs - delta, right=True)
        self.hi_p = torch.searchsorted(self.xs, self.xs + delta)
        self.ones_p = _masked(torch.ones_like(self.x), self.valid_p)
        self.num_pos = self.ones_p.sum()
        #: P, or 1 without a positive: the normaliser of the means.
        self.norm = self.num_pos.clamp(min=1)

        # Without a positive the minimum is +inf and no negative takes part (padded
        # arrays are never empty).
        lowest = xs[:1] if xs.numel() else x.new_full((1,), torch.inf)
        ys, self.index_n, self.valid_n = _sorted_subset(x, neg & (x >= lowest - delta), compact)
        ys = ys.to(acc)
        self.lo_n = torch.searchsorted(ys, self.xs - delta, right=True)
        self.hi_n = torch.searchsorted(ys, self.xs + delta)
        self.y = _masked(ys, self.valid_n)

    def mask(self, values: Tensor) -> Tensor:
        """Zero the padding of an array over the sorted positives."""
        return _masked(values, self.valid_p)

    def gather(self, values: Tensor) -> Tensor:
        """``values[n]`` given per element, read at the sorted positives (padding zeroed)."""
        return self.mask(values.to(self.x.dtype).index_select(0, self.index_p))

    def positives_above(self, weight: Tensor | None = None) -> Tensor:
        """``sum_k w_k H(x_k - x_i)`` for every positive i, itself included with
        ``H(0) = 1/2`` (``w`` over the sorted positives, default 1)."""
        w = self.ones_p if weight is None else self.mask(weight)
        return _soft_sum(_prefix(w), _prefix(w * self.x), self.lo_p, self.hi_p, self.x, self.delta)

    def negatives_above(self) -> Tensor:
        """``sum_j H(y_j - x_i)`` for every positive i: its soft count of false positives."""
        ones = torch.ones_like(self.y) if self.valid_n is None else self.valid_n.to(self.y.dtype)
        return _soft_sum(_prefix(ones), _prefix(self.y), self.lo_n, self.hi_n, self.x, self.delta)

    def spread(self, weight: Tensor) -> Tensor:
        """``sum_i w_i H(y_j - x_i)`` for every negative j, in element order (``Tensor[n]``,
        zero for the other elements); ``w`` over the sorted positives.

        Positive i is in j's linear zone iff ``lo[i] <= j < hi[i]`` and counts fully iff
        ``hi[i] <= j``, so the sum is linear in ``y_j`` with coefficients that change only
        where a zone starts or ends (see :func:`_zone_coefficients`).
        """
        slopes, offsets = _zone_coefficients(
            self.mask(weight), self.x, self.lo_n, self.hi_n, self.y.numel(), self.delta
        )
        values = _masked(torch.addcmul(offsets, slopes, self.y), self.valid_n)
        out = torch.zeros(self.n, dtype=values.dtype, device=values.device)
        return out.index_add_(0, self.index_n, values)

    def scatter(
        self, pos_values: Tensor, neg_values: Tensor | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Values over the sorted positives (plus the negatives' from :meth:`spread`) in
        element order, ``Tensor[n]`` in ``dtype`` (default the scores'), zero elsewhere."""
        dtype = self.dtype if dtype is None else dtype
        if neg_values is None:
            out = torch.zeros(self.n, dtype=dtype, device=self.xs.device)
        else:
            out = neg_values.to(dtype, copy=True)
        # Each element once (padding adds zeros), and the negatives' array is zero at the
        # positives: an add is a copy here.
        return out.index_add_(0, self.index_p, self.mask(pos_values).to(dtype))

    def reduce(self, values: Tensor, reduction: str, dtype: torch.dtype | None = None) -> Tensor:
        """Values over the sorted positives as ``reduction`` says: "none" in element order
        (see :meth:`scatter`), "sum" their sum, "mean" that over P; in ``dtype`` (default
        the scores')."""
        if reduction == "none":
            return self.scatter(values, dtype=dtype)
        total = self.mask(values).sum()
        value = total / self.norm if reduction == "mean" else total
        return value.to(self.dtype if dtype is None else dtype)
