"""Exact minimum-cost one-to-one assignment per image (the Hungarian matching)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._api import keyword_only_masks
from .._checks import check_choice
from .._kernels import fast_path
from .._optional import host_step
from ._common import prepare_cost
from .assignment import solve_on_host, wide
from .matching import BACKGROUND, IGNORED, Matching

__all__ = ["SOLVERS", "gpu_solver_fits", "hungarian", "solve_on_gpu"]


#: The values of :func:`hungarian`'s ``solver``.
SOLVERS = ("auto", "scipy", "triton")


def gpu_solver_fits(device: torch.device, m: int, n: int) -> bool:
    """Whether the GPU solver takes an ``[M, N]`` cost on ``device``: a CUDA device,
    Triton installed, and at most ``MAX_COLUMNS`` (8192) on the larger side.

    Example:
        >>> gpu_solver_fits(torch.device("cpu"), 300, 20)
        False
    """
    kernel = fast_path("assignment", "cuda") if device.type == "cuda" else None
    return kernel is not None and max(m, n) <= kernel.MAX_COLUMNS


def _use_device_solver(cost: Tensor, solver: str) -> bool:
    check_choice(solver, "solver", SOLVERS)
    if solver == "scipy":
        return False
    m, n = cost.shape[1:]
    fits = gpu_solver_fits(cost.device, m, n)
    if solver == "triton" and not fits:
        kernel = fast_path("assignment", "cuda")
        reason = (
            f"cost is on {cost.device}, not a CUDA device"
            if cost.device.type != "cuda"
            else "Triton is not installed"
            if kernel is None
            else f"an image has {max(m, n)} > {kernel.MAX_COLUMNS} columns"
        )
        raise ValueError(f"solver='triton': {reason}")
    return fits


@keyword_only_masks(1, ("target_mask", "pred_mask"))
@host_step
def hungarian(
    cost: Tensor,
    *,
    target_mask: Tensor | None = None,
    pred_mask: Tensor | None = None,
    solver: str = "auto",
) -> Matching:
    """Exact minimum-cost one-to-one matching of predictions to targets in each image.

    Args:
        cost: ``Tensor[B, M, N]`` (or ``[M, N]`` for one image), predictions by targets.
            ``+inf`` forbids a pair. Any float or integer dtype; half precision is solved in
            float64 like everything else.
        target_mask: ``bool[B, N]``, True for real targets (need not be a prefix);
            keyword-only (by position it still works, with a FutureWarning, for one
            release).
        pred_mask: ``bool[B, M]``, True for real predictions. Padded predictions come back
            as ignored (``-2``). Keyword-only, as ``target_mask``.
        solver: ``"scipy"`` solves on the host; ``"triton"`` on the GPU (a CUDA cost,
            Triton installed, and at most 8192 predictions, or targets where they are
            more); ``"auto"`` (default) takes the GPU where it can and the host otherwise.

    Returns:
        A :class:`Matching` in which ``min(m_b, n_b)`` predictions of image ``b`` are matched
        (``m_b``, ``n_b`` its real predictions and targets) and the other real predictions
        are background (``-1``). An unbatched cost gives a matching with ``B = 1``.

    Raises:
        ValueError: a NaN or ``-inf`` cost, or an image whose ``+inf`` pairs make every
            assignment impossible (the message names the image).

    Both solvers are exact in float64 (shortest augmenting paths, as
    ``scipy.optimize.linear_sum_assignment``), so they reach the same optimal total; where
    several assignments share it they may pick different ones.

    On the host, with Numba installed, one compiled call solves the whole batch from the
    padded cost (Jonker-Volgenant's column or row reduction and augmenting row reduction,
    then shortest augmenting paths; see ``docs/hungarian.md``); without Numba, scipy
    solves each image's valid block in its faster orientation. On the GPU, one Triton program per
    image solves it in place; the host reads back one status flag per image (one
    synchronisation per batch) and solves there only the images the kernel could not
    finish (more real targets than real predictions, or infeasible +inf pairs) and those
    with a NaN or ``-inf`` cost, so errors read the same on both. No gradient flows
    through a matching.

    Shape:
        - cost: ``[B, M, N]`` or ``[M, N]``
        - target_mask: ``[B, N]``; pred_mask: ``[B, M]``
        - output: a :class:`Matching` with ``pred_to_target [B, M]``

    Example:
        >>> cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [1.0, 2.0, 2.0]])
        >>> hungarian(cost).pred_to_target
        tensor([[2, 1, 0]])
        >>> padded = hungarian(cost[None], target_mask=torch.tensor([[True, True, False]]))
        >>> padded.pred_to_target
        tensor([[-1,  1,  0]])
    """
    cost, target_mask, pred_mask, _ = prepare_cost(
        cost, target_mask, pred_mask, fill_pred_mask=False
    )
    # A CPU cost with the default solver stays on the host without asking for the GPU
    # kernel (a microsecond of the DETR-size solve).
    on_gpu = (cost.device.type != "cpu" or solver != "auto") and _use_device_solver(cost, solver)
    if not on_gpu or 0 in cost.shape:
        return Matching(solve_on_host(cost, target_mask, pred_mask), target_mask)
    if pred_mask is None:
        pred_mask = torch.ones(cost.shape[:2], dtype=torch.bool, device=cost.device)
    pred_to_target, unsolved = solve_on_gpu(cost, target_mask, pred_mask)
    unsolved = unsolved.cpu()  # the batch's one synchronisation
    if unsolved.any():
        ids = unsolved.nonzero().squeeze(1)
        images = ids.to(cost.device)
        pred_to_target[images] = solve_on_host(
            cost[images], target_mask[images], pred_mask[images], image_ids=ids.tolist()
        )
    return Matching(pred_to_target, target_mask)


def solve_on_gpu(cost: Tensor, target_mask: Tensor, pred_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Solve a padded CUDA cost with the GPU kernel (Triton installed, see
    :func:`gpu_solver_fits`).

    Args:
        cost: ``Tensor[B, M, N]`` on a CUDA device.
        target_mask: ``bool[B, N]``; pred_mask: ``bool[B, M]``.

    Returns:
        ``(pred_to_target int64[B, M], unsolved bool[B])``: the images the kernel left for
        the host (see :func:`hungarian`) are flagged in ``unsolved``, their rows partial.

    Shape:
        - cost: ``[B, M, N]``; outputs: ``[B, M]`` and ``[B]``

    Example:
        >>> gpu_solver_fits(torch.device("cpu"), 3, 3)  # solve_on_gpu needs a CUDA cost
        False
    """
    b, m, n = cost.shape
    # The smaller side is the rows: the kernel loops over rows and holds columns in lanes.
    cost_rc, row_valid, col_valid, rows_are_targets = wide(cost, pred_mask, target_mask)
    pair_valid = row_valid[:, :, None] & col_valid[:, None, :]
    invalid_value = (cost_rc.isnan() | (cost_rc == -torch.inf)) & pair_valid
    row_of_col, status = fast_path("assignment", "cuda").solve_on_device(
        cost_rc, row_valid, col_valid
    )
    unsolved = (status != 0) | invalid_value.flatten(1).any(dim=1)
    if rows_are_targets:
        pred_to_target = row_of_col
    else:
        # Each target's prediction, scattered into a row with one spare slot for the
        # unmatched targets.
        scattered = torch.full((b, m + 1), BACKGROUND, dtype=torch.int64, device=cost.device)
        slots = torch.where(row_of_col >= 0, row_of_col, m)
        targets = torch.arange(n, device=cost.device).expand(b, n)
        pred_to_target = scattered.scatter_(1, slots, targets)[:, :m]
    return pred_to_target.masked_fill(~pred_mask, IGNORED), unsolved
