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


# ----------------------------------------------------------------------------------------
# Targets, wrong arguments and gradients (used by the loss and target suites).

NOT_TENSORS = [None, 3, 2.5, "boxes", [[0.0, 0.0, 1.0, 1.0]], {"boxes": None}]


@st.composite
def counts(draw, batch, max_objects=4):
    """Objects per image, empty images included (all empty: an all-padding batch)."""
    return draw(st.lists(st.integers(0, max_objects), min_size=batch, max_size=batch))


@st.composite
def box_targets(draw, batch, num_classes, dtype=None, scale=None, max_objects=4):
    """Per-image ``{"boxes": [n_i, 4], "labels": int64[n_i]}`` with ugly boxes."""
    dtype = dtype or draw(st.sampled_from(FLOAT_DTYPES))
    scale = scale or draw(st.sampled_from([1.0, 100.0, 1e6]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return [
        {
            "boxes": draw(boxes((n,), dtype=dtype, scale=scale)),
            "labels": torch.randint(0, num_classes, (n,), generator=g),
        }
        for n in draw(counts(batch, max_objects))
    ]


@st.composite
def padded_form(draw, targets, keys=("boxes", "labels")):
    """The padded dict of per-image ``targets``, with the real objects at random slots
    (the mask is not a prefix) and garbage (NaN, -1) in the padding."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    b = len(targets)
    n = max([len(t[keys[0]]) for t in targets], default=0) + draw(st.integers(0, 2))
    out = {}
    for k in keys:
        like = targets[0][k]
        fill = float("nan") if like.is_floating_point() else -1
        out[k] = torch.full((b, n, *like.shape[1:]), fill, dtype=like.dtype)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for i, t in enumerate(targets):
        slots = torch.randperm(n, generator=g)[: len(t[keys[0]])].sort().values
        mask[i, slots] = True
        for k in keys:
            out[k][i, slots] = t[k]
    out["mask"] = mask
    return out


@st.composite
def wrong_tensors(draw, max_ndim=4):
    """A tensor of any rank (0-D included), size and dtype: usually a wrong argument."""
    shape = draw(st.lists(st.integers(0, 3), min_size=0, max_size=max_ndim))
    return torch.zeros(shape, dtype=draw(st.sampled_from(ALL_DTYPES)))


def rejection(fn: Callable[[], object]) -> Exception | None:
    """Call ``fn`` expecting bad input: return the ValueError / TypeError it raised (None
    if it returned); any other exception escapes and fails the test."""
    CASES_RUN["count"] += 1
    try:
        fn()
    except (ValueError, TypeError) as err:
        CASES_RUN["raised"] += 1
        return err
    return None


def is_finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def check_grads(out: object, *leaves: torch.Tensor) -> None:
    """Back-propagate the sum of ``out``'s tensors; every leaf gradient must be finite."""
    parts = [t.float().sum() for t in _tensors(out) if t.requires_grad]
    if not parts:
        return
    torch.stack(parts).sum().backward()
    for leaf in leaves:
        if leaf.grad is not None:
            assert torch.isfinite(leaf.grad).all(), "non-finite gradient from finite inputs"


def wrong_values() -> list[object]:
    """A fixed set of wrong arguments: every rank from 0 to 4, empty, bool, integer, half
    and complex tensors, and values that are not tensors."""
    return [
        torch.zeros(()),
        torch.zeros(0),
        torch.zeros(2, dtype=torch.bool),
        torch.zeros(2, 3, dtype=torch.int32),
        torch.zeros(2, 4, dtype=torch.bool),
        torch.zeros(3, 3, 3, dtype=torch.float16),
        torch.zeros(1, 2, 3, 4),
        torch.zeros(2, 3, dtype=torch.complex64),
        *NOT_TENSORS,
    ]


def check_wrong_argument(fn: Callable[..., object], kwargs: dict, arg: str, wrong: object) -> None:
    """``fn(**kwargs)`` with ``kwargs[arg]`` replaced by ``wrong``: it returns, or raises a
    ValueError / TypeError whose message names an argument and says what was expected."""
    err = rejection(lambda: fn(**{**kwargs, arg: wrong}))
    if err is not None:
        message = str(err)
        names = [*kwargs, *(k for v in kwargs.values() if isinstance(v, dict) for k in v)]
        names += ["target", "label", "box", "point", "mask", "logit"]
        assert any(word in message for word in names), message
        assert any(w in message for w in ("expected", "must", "missing", "required", "only")), (
            message
        )


def as_complex(value: object) -> object:
    """``value`` with every floating tensor (in dicts and lists too) made complex."""
    if isinstance(value, torch.Tensor):
        return value.to(torch.complex64) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: as_complex(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_complex(v) for v in value]
    return value


def check_complex_rejected(fn: Callable[..., object], kwargs: dict) -> None:
    """Each floating argument made complex (right shape) is a TypeError asking for a real
    tensor: casting it would silently drop the imaginary part."""
    for arg, value in kwargs.items():
        if not any(t.is_floating_point() for t in _tensors(value)):
            continue
        call = {**kwargs, arg: as_complex(value)}
        err = rejection(lambda call=call: fn(**call))
        assert isinstance(err, TypeError) and "real" in str(err), f"{arg}: {err!r}"
