"""Entropic optimal-transport matching (balanced and unbalanced Sinkhorn) with a background
column, batched over images and stable down to tiny regularisations: the function, its
options and their checks. The solver is in :mod:`detloss.match.sinkhorn_solver`, the
module on the DETR box cost in :mod:`detloss.match.sinkhorn_matcher`.

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

import dataclasses
import math
import warnings
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from .._api import keyword_only_masks
from .._checks import check_tensor, compute_dtype, shape_str
from .._kernels import fast_path
from ._common import broadcast_value, prepare_cost
from .matching import BACKGROUND, IGNORED, Matching
from .sinkhorn_setup import _solve

__all__ = [
    "SinkhornConvergenceWarning",
    "SinkhornOptions",
    "background_column",
    "plan_to_assignment",
    "sinkhorn",
]


class SinkhornConvergenceWarning(UserWarning):
    """Sinkhorn stopped at ``max_iter`` with its marginal error still above ``tol``.

    Shape:
        - not a tensor operation: raised once per :func:`sinkhorn` call

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = sinkhorn(torch.rand(1, 6, 2), reg=1e-3, max_iter=1, tol=1e-9)
        >>> caught[0].category.__name__
        'SinkhornConvergenceWarning'
    """


# -- argument checks --------------------------------------------------------------------------


def _check_number(value: object, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name}: expected a number {bound}, got {value}")
    return value


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def _check_background_cost(value: object) -> float | Tensor:
    if isinstance(value, bool) or not isinstance(value, (Tensor, int, float)):
        raise TypeError(f"background_cost must be a float or a tensor, got {type(value).__name__}")
    if isinstance(value, Tensor):
        return value  # its shape is checked against the cost's, its values with the cost's
    if math.isnan(value) or value == -math.inf:
        raise ValueError(f"background_cost: expected a finite number or +inf, got {value}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class SinkhornOptions:
    """The options of :func:`sinkhorn` (its keyword arguments but the masks and
    ``warm_start``), with the same names and defaults, checked once when built: what
    :class:`SinkhornMatcher` stores and passes on.

    Shape:
        - ``background_cost``: a float or a tensor broadcastable to ``[B, M]``

    Example:
        >>> options = SinkhornOptions(tau_pred=1.0, max_iter=50)
        >>> options.kwargs()["max_iter"], options.reg_dimless
        (50, 0.12)
        >>> SinkhornOptions(reg=0.0)
        Traceback (most recent call last):
        ...
        ValueError: reg: expected a number > 0, got 0.0
    """

    reg: float | None = None
    reg_dimless: float = 0.12
    tau_pred: float | None = None
    tau_target: float | None = None
    background_cost: float | Tensor = 1.0
    normalize: bool = True
    max_iter: int = 100
    tol: float = 1e-4
    check_every: int = 10
    eps_scaling: int = 0
    validate: bool = True

    def __post_init__(self) -> None:
        checked = {
            "reg": None if self.reg is None else _check_number(self.reg, "reg", positive=True),
            "reg_dimless": _check_number(self.reg_dimless, "reg_dimless", positive=True),
            "tau_pred": None if self.tau_pred is None else _check_number(self.tau_pred, "tau_pred"),
            "tau_target": (
                None if self.tau_target is None else _check_number(self.tau_target, "tau_target")
            ),
            "background_cost": _check_background_cost(self.background_cost),
            "max_iter": _check_int(self.max_iter, "max_iter", 0),
            "tol": _check_number(self.tol, "tol"),
            "check_every": _check_int(self.check_every, "check_every", 1),
            "eps_scaling": _check_int(self.eps_scaling, "eps_scaling", 0),
        }
        for name in ("normalize", "validate"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of :func:`sinkhorn` (tensors not copied)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def background_column(
    value: float | Tensor, b: int, m: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``background_cost`` (a float or a tensor broadcastable to ``[B, M]``) as ``[B, M]``.

    Shape:
        - value: a float, or broadcastable to ``[B, M]``
        - output: ``[B, M]`` (an expanded view)

    Example:
        >>> background_column(0.5, 2, 3, torch.float32, torch.device("cpu"))
        tensor([[0.5000, 0.5000, 0.5000],
                [0.5000, 0.5000, 0.5000]])
    """
    if isinstance(value, bool) or not isinstance(value, (Tensor, int, float)):
        raise TypeError(f"background_cost must be a float or a tensor, got {type(value).__name__}")
    return broadcast_value(value, (b, m), dtype, device, "background_cost", "[B, M]")


def plan_to_assignment(plan: Tensor, row_valid: Tensor) -> Tensor:
    """``pred_to_target`` of a ``[B, M, N + 1]`` plan: each row's argmax (the first of tied
    maxima), the last column read as background (``-1``), rows outside ``row_valid``
    ignored (``-2``).

    Shape:
        - plan: ``[B, M, N + 1]``; row_valid: ``bool[B, M]``
        - output: ``int64[B, M]``

    Example:
        >>> plan = torch.tensor([[[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.5, 0.5, 0.0]]])
        >>> plan_to_assignment(plan, torch.tensor([[True, True, False]]))
        tensor([[ 0, -1, -2]])
    """
    n = plan.shape[2] - 1
    if plan.shape[1] == 0:
        column = torch.zeros(plan.shape[:2], dtype=torch.int64, device=plan.device)
    elif (kernel := _argmax_kernel(plan)) is not None:
        column = torch.empty(plan.shape[:2], dtype=torch.int64)
        values = plan.detach().contiguous().view(-1, n + 1)
        kernel.row_argmax(values.numpy(), column.view(-1).numpy())
    else:
        column = plan.argmax(dim=2)
    return _assignment(column, n, row_valid)


def _assignment(column: Tensor, n: int, row_valid: Tensor) -> Tensor:
    """``pred_to_target`` from each row's argmax column ``int64[B, M]`` of ``N + 1``."""
    p2t = torch.where(column == n, BACKGROUND, column)
    return p2t.masked_fill(~row_valid, IGNORED)


def _argmax_kernel(plan: Tensor) -> ModuleType | None:
    """The compiled row argmax where it applies to ``plan``, else None (``torch.argmax``)."""
    if plan.dtype not in (torch.float32, torch.float64) or not plan.numel():
        return None
    return fast_path("row_argmax", plan.device)


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


# -- the function -----------------------------------------------------------------------------


@keyword_only_masks(1, ("target_mask",))
def sinkhorn(
    cost: Tensor,
    *,
    target_mask: Tensor | None = None,
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
            prefix). Padded targets receive exactly no mass. Keyword-only: passing it by
            position still works for one release, with a FutureWarning.
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

    Shape:
        - cost: ``[B, M, N]`` or ``[M, N]``
        - target_mask: ``[B, N]``; pred_mask: ``[B, M]``; background_cost: broadcastable
          to ``[B, M]``
        - output: ``plan [B, M, N + 1]``, ``pred_to_target [B, M]``, ``potentials
          ([B, M], [B, N + 1])`` (an unbatched cost is read as ``B = 1``)

    Example:
        >>> cost = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]])
        >>> match = sinkhorn(cost, reg=0.2, background_cost=0.5)
        >>> match.pred_to_target
        tensor([[ 0,  1, -1]])
        >>> match.plan.sum(dim=1).allclose(torch.ones(1, 3))  # each target's column: 1
        True

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
    options = SinkhornOptions(
        reg=reg, reg_dimless=reg_dimless, tau_pred=tau_pred, tau_target=tau_target,
        background_cost=background_cost, normalize=normalize, max_iter=max_iter, tol=tol,
        check_every=check_every, eps_scaling=eps_scaling, validate=validate,
    )  # fmt: skip
    has_pred_mask, has_target_mask = pred_mask is not None, target_mask is not None
    cost, target_mask, pred_mask, _ = prepare_cost(cost, target_mask, pred_mask)
    b, m, n = cost.shape
    dtype = compute_dtype(cost)
    out_dtype = cost.dtype if cost.is_floating_point() else torch.float32
    background = background_column(options.background_cost, b, m, dtype, cost.device)
    if warm_start is not None:
        _check_warm_start(warm_start, b, m, n)

    with torch.no_grad():
        plan, column, f, g, residual = _solve(
            cost, background, target_mask, pred_mask, has_pred_mask, has_target_mask,
            reg=options.reg, reg_dimless=options.reg_dimless, tau_pred=options.tau_pred,
            tau_target=options.tau_target, normalize=options.normalize,
            max_iter=options.max_iter, tol=options.tol, check_every=options.check_every,
            eps_scaling=options.eps_scaling, warm_start=warm_start, validate=options.validate,
        )  # fmt: skip
        if options.tol > 0 and options.max_iter > 0 and residual > options.tol:
            warnings.warn(
                f"sinkhorn did not converge: after max_iter={max_iter} iterations the "
                f"marginal error is {residual:.3g} > tol={tol:g}; raise max_iter or reg, "
                "or use eps_scaling",
                SinkhornConvergenceWarning,
                stacklevel=3,
            )
        if column is None:
            p2t = plan_to_assignment(plan, pred_mask)
        else:
            p2t = _assignment(column, n, pred_mask)
    return Matching(p2t, target_mask, plan=plan.to(out_dtype), potentials=(f, g))


def __getattr__(name: str) -> object:
    # SinkhornMatcher lives beside BoxCostMatcher's other subclasses' imports, in
    # sinkhorn_matcher (which imports this module); it stays importable from here.
    if name == "SinkhornMatcher":
        from .sinkhorn_matcher import SinkhornMatcher

        return SinkhornMatcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
