"""The P2PNet point matching: an exact one-to-one assignment of point proposals to
annotated points on the cost ``tau * ||p - t|| - prob``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .._api import keyword_only_masks
from .._checks import check_nonnegative, check_shape, check_tensor, compute_dtype, shape_str
from .._optional import host_step
from ..batching import as_padded
from .assignment import for_each_image
from .crowd import crowd_assignment
from .hungarian import gpu_solver_fits, solve_on_gpu
from .matching import BACKGROUND, Matching

__all__ = ["PointTargets", "check_point_inputs", "check_tau", "match_points", "point_targets"]

#: Targets accepted by the point matcher and loss: a list of ``[n_i, 2]`` tensors, a list of
#: ``{"points": [n_i, 2]}`` dicts, or the padded ``{"points": [B, N, 2], "mask": [B, N]}``.
PointTargets = Sequence[Tensor] | Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor]

# The GPU solver takes batches whose float64 cost has at most this many entries (1 GiB).
_GPU_MAX_ENTRIES = 1 << 27


def _check_real(x: Tensor, name: str) -> None:
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must be a real (float or integer) tensor, got {x.dtype}")


def check_point_inputs(pred_points: Tensor, pred_logits: Tensor) -> None:
    """Validate ``pred_points`` and ``pred_logits`` (shapes, real dtypes, one device): a
    ValueError or TypeError naming the argument.

    Shape:
        - pred_points: ``[B, M, 2]``; pred_logits: ``[B, M]`` or ``[B, M, 2]``

    Example:
        >>> check_point_inputs(torch.zeros(2, 5, 2), torch.zeros(2, 4))
        Traceback (most recent call last):
        ...
        ValueError: pred_logits: expected shape [2, 5] or [2, 5, 2] (B and M of pred_points), got [2, 4]
    """
    check_shape(pred_points, "pred_points", ndim=3, last=2, expected="[B, M, 2]")
    check_tensor(pred_logits, "pred_logits")
    _check_real(pred_points, "pred_points")
    _check_real(pred_logits, "pred_logits")
    b, m = pred_points.shape[:2]
    shape = tuple(pred_logits.shape)
    if shape not in ((b, m), (b, m, 2)):
        raise ValueError(
            f"pred_logits: expected shape [{b}, {m}] or [{b}, {m}, 2] (B and M of "
            f"pred_points), got {shape_str(shape)}"
        )
    if pred_logits.device != pred_points.device:
        raise ValueError(
            f"pred_logits: expected device {pred_points.device} (pred_points'), "
            f"got {pred_logits.device}"
        )


def check_tau(tau: object) -> float:
    """P2PNet's distance weight ``tau`` as a float: a finite real ``>= 0``.

    Example:
        >>> check_tau(1)
        1.0
    """
    return check_nonnegative(tau, "tau")


def point_targets(
    target_points: PointTargets | Tensor,
    target_mask: Tensor | None,
    batch_size: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Padded ``points`` and ``mask`` from any accepted target form (see
    :data:`PointTargets`; ``target_mask`` goes only with a ``[B, N, 2]`` tensor).

    Shape:
        - target_points: ``n_i`` points per image, or ``[B, N, 2]``
        - outputs: ``points [B, N, 2]``, ``mask bool[B, N]``

    Example:
        >>> points, mask = point_targets([torch.ones(2, 2), torch.ones(1, 2)], None, 2,
        ...                              torch.device("cpu"))
        >>> tuple(points.shape), mask.tolist()
        ((2, 2, 2), [[True, True], [True, False]])
    """
    if isinstance(target_points, Tensor):
        check_shape(target_points, "target_points", ndim=3, last=2, expected="[B, N, 2]")
        _check_real(target_points, "target_points")
        if target_points.shape[0] != batch_size:
            raise ValueError(
                f"target_points: expected {batch_size} images (the predictions' batch size), "
                f"got shape {shape_str(target_points.shape)}"
            )
        points = target_points.to(device)
        if target_mask is None:
            mask = torch.ones(points.shape[:2], dtype=torch.bool, device=device)
        else:
            check_tensor(target_mask, "target_mask")
            if tuple(target_mask.shape) != tuple(points.shape[:2]):
                raise ValueError(
                    f"target_mask: expected shape {shape_str(points.shape[:2])} "
                    f"(target_points' [B, N]), got {shape_str(target_mask.shape)}"
                )
            mask = target_mask.to(device=device, dtype=torch.bool)
        return points, mask
    if target_mask is not None:
        raise ValueError(
            "target_mask: expected None unless target_points is a [B, N, 2] tensor (lists "
            f"and padded dicts carry their own mask), got it with a {type(target_points).__name__}"
        )
    if isinstance(target_points, Mapping):
        padded = as_padded(target_points, ("points",), batch_size=batch_size, device=device)
    else:
        if isinstance(target_points, Sequence) and len(target_points) == 0 and batch_size == 0:
            empty = torch.zeros((0, 0, 2), device=device)
            return empty, torch.zeros((0, 0), dtype=torch.bool, device=device)
        padded = as_padded(target_points, ("points",), batch_size=batch_size, device=device)
    points = padded["points"]
    check_shape(points, "targets['points']", ndim=3, last=2, expected="[B, N, 2]")
    _check_real(points, "targets['points']")
    return points, padded["mask"]


def _check_finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1))[0]
        raise ValueError(f"{name}: expected finite values, got a NaN or inf in image {bad}")


def _match_on_gpu(
    pred_points: Tensor, pred_logits: Tensor, points: Tensor, mask: Tensor, tau: float
) -> Tensor | None:
    """``pred_to_target [B, M]`` solved on the GPU, or None where the host must solve the
    batch (a non-finite input, or an image the kernel handed back)."""
    pred_xy = pred_points.double()
    logits = pred_logits.double()
    prob = logits.softmax(dim=-1)[..., 1] if logits.ndim == 3 else logits.sigmoid()
    target_xy = torch.where(mask[:, :, None], points.double(), 0.0)
    cost = torch.cdist(target_xy, pred_xy, compute_mode="donot_use_mm_for_euclid_dist")
    cost = cost.mul_(tau).sub_(prob[:, None, :])  # [B, N, M]
    pred_mask = torch.ones(pred_xy.shape[:2], dtype=torch.bool, device=pred_xy.device)
    pred_to_target, unsolved = solve_on_gpu(cost.transpose(1, 2), mask, pred_mask)
    finite = torch.stack(
        (pred_xy.isfinite().all(), logits.isfinite().all(), target_xy.isfinite().all())
    )
    if not bool(finite.all() & ~unsolved.any()):  # the batch's one synchronisation
        return None
    return pred_to_target


@keyword_only_masks(3, ("target_mask",))
@host_step
@torch.no_grad()
def match_points(
    pred_points: Tensor,
    pred_logits: Tensor,
    target_points: PointTargets | Tensor,
    *,
    target_mask: Tensor | None = None,
    tau: float = 0.05,
) -> Matching:
    """The P2PNet matching: exact minimum-cost one-to-one matching of proposals to points.

    The cost of proposal ``j`` for target ``i`` is ``tau * ||p_j - t_i|| - prob_j`` (the
    Euclidean distance in the points' units, usually pixels), the cost of
    :func:`detloss.costs.p2p_cost`. Each image's ``min(M, n_i)`` pairs minimise the summed
    cost; the other proposals are background.

    Args:
        pred_points: ``Tensor[B, M, 2]`` proposal coordinates (x, y).
        pred_logits: ``Tensor[B, M]`` (sigmoid head: ``prob = sigmoid(logit)``) or
            ``Tensor[B, M, 2]`` (2-way softmax head, index 1 = person:
            ``prob = softmax(logits)[..., 1]``).
        target_points: a list of ``Tensor[n_i, 2]``, a list of ``{"points": [n_i, 2]}``
            dicts, a padded ``{"points": [B, N, 2], "mask": bool[B, N]}`` dict, or a
            ``Tensor[B, N, 2]`` (with ``target_mask``).
        target_mask: ``bool[B, N]`` real target slots, only with a tensor ``target_points``
            (default: all real). The mask need not be a prefix. Keyword-only (by
            position it still works, with a FutureWarning, for one release).
        tau: weight of the distance, ``>= 0`` (P2PNet: 0.05).

    Returns:
        A :class:`Matching` on ``pred_points``' device whose target indices refer to the
        padded slots (for list targets: the index inside each image's list).

    Raises:
        ValueError: bad shapes, a negative or non-finite ``tau``, or a NaN / inf in the
            coordinates or logits (the message names the argument and image).

    No gradient flows through a matching. On a GPU with Triton, batches of at most 8192
    proposals (or targets) and 2^27 cost entries are solved there: the float64 cost
    ``[B, N, M]`` is built on the device and solved exactly by the GPU solver of
    :func:`detloss.match.hungarian`, with one host synchronisation; a batch with a
    non-finite input, or an image the kernel hands back, is then solved on the host as
    below, so errors read the same. Otherwise everything the solver needs (``B x M``
    proposals, ``B x N`` targets) goes to the host in one transfer; there each image is
    solved by :func:`detloss.match.crowd_assignment` (its float64 cost built once, in the
    orientation scipy solves fastest, or, for a dense crowd, never built) and images run
    in a small thread pool (scipy releases the GIL).

    Shape:
        - pred_points: ``[B, M, 2]``; pred_logits: ``[B, M]`` or ``[B, M, 2]``
        - target_points: ``n_i`` points per image, padded to ``[B, N, 2]``
        - result: a :class:`Matching` with ``pred_to_target [B, M]``

    Example:
        >>> pred = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]]])
        >>> logits = torch.tensor([[2.0, 1.0, -3.0]])
        >>> match_points(pred, logits, [torch.tensor([[9.0, 1.0], [1.0, 1.0]])]).pred_to_target
        tensor([[ 1,  0, -1]])
    """
    check_point_inputs(pred_points, pred_logits)
    tau = check_tau(tau)
    b, m = pred_points.shape[:2]
    device = pred_points.device
    points, mask = point_targets(target_points, target_mask, b, device)
    n = points.shape[1]
    result = np.full((b, m), BACKGROUND, dtype=np.int64)
    if b == 0 or m == 0 or n == 0:
        return Matching(torch.from_numpy(result).to(device), mask)
    if b * m * n <= _GPU_MAX_ENTRIES and gpu_solver_fits(device, m, n):
        pred_to_target = _match_on_gpu(pred_points, pred_logits, points, mask, tau)
        if pred_to_target is not None:
            return Matching(pred_to_target, mask)

    # One device-to-host transfer for the whole batch, in the inputs' precision; the
    # cost is then built in float64, so near-ties are decided as a float64 reference would.
    dtype = compute_dtype(pred_points, pred_logits, points)
    k = pred_logits.shape[2] if pred_logits.ndim == 3 else 1
    packed = torch.cat(
        (
            pred_points.reshape(b, 2 * m).to(dtype),
            pred_logits.reshape(b, k * m).to(dtype),
            points.reshape(b, 2 * n).to(dtype),
            mask.to(dtype),
        ),
        dim=1,
    ).to(device="cpu", dtype=torch.float64)
    pred_host, logits_host, tgt_host, mask_host = packed.split((2 * m, k * m, 2 * n, n), dim=1)
    pred_host = pred_host.reshape(b, m, 2)
    tgt_host = tgt_host.reshape(b, n, 2)
    mask_np = mask_host.numpy() > 0.5
    _check_finite(pred_host.numpy(), "pred_points")
    _check_finite(logits_host.numpy(), "pred_logits")
    _check_finite(np.where(mask_np[:, :, None], tgt_host.numpy(), 0.0), "target_points")
    prob_host = (
        logits_host.reshape(b, m, 2).softmax(dim=-1)[..., 1] if k == 2 else logits_host.sigmoid()
    )

    counts = mask_np.sum(axis=1)

    def solve(i: int) -> None:
        if counts[i] == 0:
            return
        target_ids = np.flatnonzero(mask_np[i])
        full = counts[i] == n
        targets_i = tgt_host[i] if full else tgt_host[i][torch.from_numpy(target_ids)]
        # Dense below DENSE_BELOW pairs, else the certified sparse solve (dense crowds).
        pred_idx, target_idx = crowd_assignment(pred_host[i], prob_host[i], targets_i, tau)
        result[i, pred_idx.numpy()] = target_ids[target_idx.numpy()]

    for_each_image(solve, m * counts)
    return Matching(torch.from_numpy(result).to(device), mask)
