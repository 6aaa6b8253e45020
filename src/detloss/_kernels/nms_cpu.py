"""Compiled CPU non-maximum suppression (Numba; optional).

On the CPU, :func:`detloss.postprocess.nms.nms` and ``batched_nms`` run through this
module when Numba is installed. The rule and its arithmetic are torchvision's CPU kernel:
boxes visited once by decreasing score (equal scores in index order), a box kept unless a
kept box has ``inter / (area_i + area_j - inter) > threshold``, that quotient computed in
the boxes' floating type with ``area = (x2 - x1) * (y2 - y1)``. Two things differ, neither
in the result:

- the scores are ordered by a stable radix sort on their bit patterns (linear time)
  instead of a comparison sort, and the boxes are copied into that order once, so the
  suppression loop reads memory in sequence;
- each kept box is tested against the listed boxes behind it in one branch-free loop
  that the compiler vectorises; suppressed boxes are dropped from the list (compacted)
  once they make up half of it, so most IoU tests are against alive boxes and none
  decides anything for a suppressed one (torchvision skips suppressed boxes one test at
  a time, and tests the alive ones one at a time).

Groups (``batched_nms``) are suppressed one after another in the same loop, each on its
own boxes: no coordinate offsets, so the IoU of every pair is the one ``nms`` computes.
"""

from __future__ import annotations

import functools

import numpy as np

from ._numba import jit

__all__ = ["batched_nms", "nms"]

#: Bits sorted per radix pass: 2**11 counters per digit stay in cache.
_RADIX_BITS = 11


@jit
def _descending_keys(scores: np.ndarray) -> np.ndarray:
    """Unsigned keys whose ascending order is the scores' descending order: the float64
    bit pattern (float32 scores widen exactly) made monotone (negative values flipped,
    positive ones offset by the sign bit), then inverted. ``-0.0`` is read as ``+0.0``
    (they compare equal) and every NaN as the largest value, as ``torch.sort`` orders
    them."""
    n = scores.size
    wide = scores.astype(np.float64)
    bits = wide.view(np.uint64)
    keys = np.empty(n, dtype=np.uint64)
    sign = np.uint64(0x8000000000000000)
    for i in range(n):
        s = wide[i]
        if s != s:
            keys[i] = np.uint64(0)
            continue
        b = np.uint64(0) if s == 0 else bits[i]
        b = ~b if b & sign else b | sign
        keys[i] = ~b
    return keys


@jit
def _radix_order(keys: np.ndarray, key_bits: int) -> np.ndarray:
    """Stable ascending order of the unsigned ``keys`` below ``2**key_bits`` (least
    significant digit first). One pass counts every digit; a digit that all keys share
    (the low mantissa bits of widened float32 scores, the high bits of small group ids)
    costs nothing more."""
    n = keys.size
    buckets = 1 << _RADIX_BITS
    mask = np.uint64(buckets - 1)
    digits = (key_bits + _RADIX_BITS - 1) // _RADIX_BITS
    counts = np.zeros((max(digits, 1), buckets), dtype=np.int64)
    for i in range(n):
        k = keys[i]
        for d in range(digits):
            counts[d, (k >> np.uint64(d * _RADIX_BITS)) & mask] += 1
    order = np.arange(n)
    scratch = np.empty(n, dtype=np.int64)
    for d in range(digits):
        row = counts[d]
        if row.max() == n:  # one digit value for every key: the order stays
            continue
        total = 0
        for b in range(buckets):
            c = row[b]
            row[b] = total
            total += c
        shift = np.uint64(d * _RADIX_BITS)
        for i in range(n):
            k = order[i]
            b = (keys[k] >> shift) & mask
            scratch[row[b]] = k
            row[b] += 1
        order, scratch = scratch, order
    return order


@jit
def _by_score(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score, equal scores in index order."""
    return _radix_order(_descending_keys(scores), 64)


@functools.partial(jit, ieee_division=True)
def _suppress(boxes: np.ndarray, order: np.ndarray, bound: float, kept: np.ndarray) -> int:
    """Greedy suppression of the boxes ``order`` lists (best first); writes the kept ones
    to the front of ``kept`` in visiting order and returns how many there are.

    ``bound`` is the smallest value of the boxes' type above the threshold, so that
    ``quotient >= bound`` is torchvision's ``quotient > threshold`` (the quotient widened
    to float64) in the boxes' own type, where the tests of one row vectorise. A division
    by zero gives inf or NaN as in C (``ieee_division``).
    """
    n = order.size
    # The alive boxes, in visiting order, compacted after each kept box that suppresses.
    x1 = np.empty(n, dtype=boxes.dtype)
    y1 = np.empty(n, dtype=boxes.dtype)
    x2 = np.empty(n, dtype=boxes.dtype)
    y2 = np.empty(n, dtype=boxes.dtype)
    area = np.empty(n, dtype=boxes.dtype)
    index = np.empty(n, dtype=np.int64)
    for r in range(n):
        k = order[r]
        x1[r], y1[r], x2[r], y2[r] = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        area[r] = (x2[r] - x1[r]) * (y2[r] - y1[r])
        index[r] = k
    dead = np.zeros(n, dtype=np.bool_)
    hit = np.empty(n, dtype=np.bool_)
    count = n
    # Hits on listed boxes behind ``pos`` since the last compaction: at least the number
    # of suppressed boxes still listed (a box hit twice counts twice).
    dead_ahead = 0
    n_kept = 0
    pos = 0
    while pos < count:
        if dead[pos]:
            pos += 1
            continue
        kept[n_kept] = index[pos]
        n_kept += 1
        ix1, iy1, ix2, iy2, iarea = x1[pos], y1[pos], x2[pos], y2[pos], area[pos]
        # Every listed box against the kept one, branch-free so that it vectorises:
        # std::max / std::min as torchvision writes them; a non-positive extent gives
        # inter 0 in torchvision, whose quotient is never above a threshold >= 0.
        # Views from index 0, so the compiler sees non-negative indices (no wraparound
        # selects) and emits plain vector loads.
        rest = slice(pos + 1, count)
        tx1, ty1, tx2, ty2, tarea = x1[rest], y1[rest], x2[rest], y2[rest], area[rest]
        thit = hit[rest]
        hits = 0
        for r in range(count - pos - 1):
            xx1 = tx1[r] if ix1 < tx1[r] else ix1
            yy1 = ty1[r] if iy1 < ty1[r] else iy1
            xx2 = tx2[r] if tx2[r] < ix2 else ix2
            yy2 = ty2[r] if ty2[r] < iy2 else iy2
            w = xx2 - xx1
            h = yy2 - yy1
            inter = w * h
            over = (w > 0) & (h > 0) & (inter / (iarea + tarea[r] - inter) >= bound)
            thit[r] = over
            hits += over
        if hits:
            tdead = dead[pos + 1 : count]
            for r in range(count - pos - 1):
                tdead[r] |= thit[r]
        dead_ahead += hits
        pos += 1
        # Drop the suppressed boxes from the list once the hits reach half of what is
        # left: the scans above stay vectorised, the scalar compaction is paid rarely.
        if 2 * dead_ahead > count - pos and dead_ahead > 16:
            write = pos
            for r in range(pos, count):
                if not dead[r]:
                    x1[write], y1[write], x2[write], y2[write] = x1[r], y1[r], x2[r], y2[r]
                    area[write] = area[r]
                    index[write] = index[r]
                    dead[write] = False
                    write += 1
            count = write
            dead_ahead = 0
    return n_kept


@jit
def nms(boxes: np.ndarray, scores: np.ndarray, bound: float) -> np.ndarray:
    """Kept indices ``int64[K]`` by decreasing score of ``boxes [N, 4]`` (xyxy, float32
    or float64) and ``scores [N]``; a box is suppressed by a kept one when their IoU
    quotient is ``>= bound`` (the smallest value of their type above the threshold)."""
    order = _by_score(scores)
    kept = np.empty(order.size, dtype=np.int64)
    return kept[: _suppress(boxes, order, bound, kept)].copy()


@jit
def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, bound: float
) -> np.ndarray:
    """Like :func:`nms`, a box suppressed only by kept boxes of its own ``groups`` value
    (``int64[N]``); kept indices of all groups together by decreasing score."""
    n = scores.size
    by_score = _by_score(scores)
    # Group keys, made unsigned and order-preserving, sorted stably: by group, then score.
    sorted_groups = np.empty(n, dtype=np.uint64)
    for r in range(n):
        sorted_groups[r] = np.uint64(groups[by_score[r]]) ^ np.uint64(0x8000000000000000)
    lo = sorted_groups.min() if n else np.uint64(0)
    span = (sorted_groups.max() - lo) if n else np.uint64(0)
    bits = 0
    while bits < 64 and (span >> np.uint64(bits)) > 0:
        bits += 1
    for r in range(n):
        sorted_groups[r] -= lo
    within = _radix_order(sorted_groups, bits)
    order = by_score[within]
    kept_rows = np.empty(n, dtype=np.int64)
    is_kept = np.zeros(n, dtype=np.bool_)
    start = 0
    while start < n:
        end = start + 1
        while end < n and sorted_groups[within[end]] == sorted_groups[within[start]]:
            end += 1
        n_kept = _suppress(boxes, order[start:end], bound, kept_rows)
        for r in range(n_kept):
            is_kept[kept_rows[r]] = True
        start = end
    total = 0
    for r in range(n):
        if is_kept[by_score[r]]:
            kept_rows[total] = by_score[r]
            total += 1
    return kept_rows[:total].copy()
