"""Hypothesis strategies for ugly inputs, and the rule every public function must obey:
return, or raise ValueError / TypeError; never return NaN from finite inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from hypothesis import strategies as st

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
ALL_DTYPES = [*FLOAT_DTYPES, torch.int64, torch.int32, torch.bool]

CASES_RUN = {"count": 0, "raised": 0}


@st.composite
def values(draw, shape, dtype=None, finite=True, low=-1e3, high=1e3):
    """A tensor of ``shape``: uniform, huge, tiny, ties or (when not ``finite``) NaN/Inf."""
    dtype = dtype or draw(st.sampled_from(FLOAT_DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    kind = draw(
        st.sampled_from(["uniform", "huge", "ties", "zeros", *([] if finite else ["nonfinite"])])
    )
    x = torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low
    if kind == "huge":
        x = x * 1e3
    elif kind == "ties":
        x = torch.round(x / 250) * 250
    elif kind == "zeros":
        x = torch.zeros(shape, dtype=torch.float64)
    elif kind == "nonfinite" and x.numel():
        flat = x.flatten()
        flat[torch.randint(0, flat.numel(), (1,), generator=g)] = draw(
            st.sampled_from([float("nan"), float("inf"), -float("inf")])
        )
        x = flat.reshape(shape)
    if dtype in (torch.float16,):
        x = x.clamp(-6e4, 6e4)
    if not dtype.is_floating_point:
        x = x.clamp(-(2**31), 2**31 - 1)
        return x.round().to(dtype)
    return x.to(dtype)


@st.composite
def boxes(draw, shape, dtype=None, scale=None):
    """xyxy boxes of ``shape + (4,)``: ordinary, degenerate (zero size), inverted, huge."""
    dtype = dtype or draw(st.sampled_from(FLOAT_DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale = scale or draw(st.sampled_from([1.0, 100.0, 1e6]))
    kind = draw(st.sampled_from(["ordinary", "degenerate", "inverted", "mixed"]))
    xy = torch.rand((*shape, 2), generator=g, dtype=torch.float64) * scale
    wh = torch.rand((*shape, 2), generator=g, dtype=torch.float64) * scale
    if kind == "degenerate":
        wh = wh * 0
    elif kind == "inverted":
        wh = -wh
    elif kind == "mixed":
        wh = wh * torch.randint(-1, 2, (*shape, 1), generator=g)
    out = torch.cat([xy, xy + wh], dim=-1)
    if dtype == torch.float16:
        out = out.clamp(-6e4, 6e4)
    return out.to(dtype)


def check_contract(fn: Callable[[], object], inputs_finite: bool) -> object:
    """Call ``fn``; only ValueError / TypeError may escape; finite inputs give no NaN."""
    CASES_RUN["count"] += 1
    try:
        out = fn()
    except (ValueError, TypeError):
        CASES_RUN["raised"] += 1
        return None
    if inputs_finite:
        for t in _tensors(out):
            if t.is_floating_point():
                assert not torch.isnan(t).any(), "NaN from finite inputs"
    return out


def _tensors(out):
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (list, tuple)):
        for o in out:
            yield from _tensors(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _tensors(o)
    elif hasattr(out, "pred_to_target"):
        yield out.pred_to_target
        if getattr(out, "plan", None) is not None:
            yield out.plan
