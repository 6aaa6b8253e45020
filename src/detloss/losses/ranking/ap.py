"""AP-Loss (Chen et al., "Towards Accurate One-Stage Object Detection with AP-Loss", CVPR
2019 / TPAMI 2020): one minus the interpolated average precision of one ranking of every
scored element of the mini-batch, trained with the paper's error-driven update.

For positive i (scores ``x``, negatives' scores ``y``, soft step ``H``, see
:mod:`._engine`):

- ``A_i = 1/2 + sum_k H(x_k - x_i)``, its soft rank among the positives (it ranks itself
  1: ``H(0) = 1/2`` plus 1/2);
- ``B_i = sum_j H(y_j - x_i)``, its soft count of negatives ranked above it;
- its precision ``p_i = A_i / (A_i + B_i)`` and interpolated precision
  ``q_i = max {p_k : x_k <= x_i}``; its error ``1 - q_i``.

The update: positive i receives ``-(1 - q_i)``; negative j receives
``sum_i s_i H(y_j - x_i) / (A_i + B_i)`` with ``s_i = (1 - q_i) / (1 - p_i)`` where the
precision is below its interpolated value (else 1), so that each positive hands out
exactly its own error. See ``docs/ap_loss.md``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..._checks import compute_dtype, output_dtype
from ...distributed import is_distributed
from ._common import (
    RankingLossModule,
    check_inputs,
    default_compact,
    kernel_for,
    kernel_weights,
    label_array,
    reduce_positives,
)
from ._engine import Ranking

__all__ = ["APLoss", "ap_loss"]


def _ap_terms(
    x: Tensor,
    labels: Tensor,
    delta: float,
    reduction: str = "mean",
    weights: Tensor | None = None,
    compact: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """AP-Loss of flat scores and its error-driven update.

    Args:
        x: ``Tensor[n]`` scores, float32 or float64.
        labels: ``Tensor[n]``; 1 positive, 0 negative, anything else ignored.
        delta: half-width of the soft step's linear zone.
        reduction: as in :func:`ap_loss`; "mean" divides the update by P.
        weights: ``Tensor[n]``, a factor per positive on its update (the incoming
            gradient of ``reduction="none"``); None: 1.
        compact: gather the participants before sorting (default on the CPU); False
            keeps static shapes (no device sync) and skips the compiled loops.

    Returns:
        ``(value, update Tensor[n])`` in ``x``'s dtype; the value as ``reduction`` says.
    """
    kernel = kernel_for(x, compact)
    if kernel is not None:
        errors, where, update = kernel.ap_loss(
            x.numpy(), label_array(labels), delta, kernel_weights(weights), reduction == "mean"
        )
        value = reduce_positives(errors, where, x.numel(), reduction, x.dtype)
        return value, torch.from_numpy(update)

    r = Ranking(x, labels == 1, labels == 0, delta, default_compact(x, compact))
    a = r.positives_above() + 0.5
    b = r.negatives_above()
    precision = r.mask(a / (a + b))
    # Positives ascending = recall descending: the running maximum is the interpolated
    # precision (padding sits at the end and cannot leak in).
    interpolated = precision.cummax(0).values
    kept = precision >= interpolated
    scale = torch.where(kept, 1, (1 - interpolated) / torch.where(kept, 1, 1 - precision))
    errors = r.mask(1 - interpolated)
    norm = r.norm if reduction == "mean" else 1.0
    c = 1.0 if weights is None else r.gather(weights)
    update = r.scatter(-(c * errors) / norm, r.spread(c * scale / ((a + b) * norm)))
    return r.reduce(errors, reduction), update


def _gather(*flat: Tensor) -> tuple[list[Tensor], int, int]:
    """Every rank's flat tensors, concatenated in rank order, each rank's part padded with
    -1 to the largest (an ignored label). Returns ``(tensors, start of this rank's part,
    world size)``."""
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([flat[0].numel()], device=flat[0].device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    largest = int(torch.cat(sizes).max())  # one host read, to size the exchange
    packed = flat[0].new_full((len(flat), largest), -1.0)
    for row, values in zip(packed, flat):
        row[: values.numel()] = values
    parts = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(parts, packed)
    gathered = torch.stack(parts, 1)  # [len(flat), W, largest]
    return list(gathered.reshape(len(flat), -1)), rank * largest, world


class _APLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, labels: Tensor, delta: float, distributed: bool, reduction: str
    ) -> Tensor:
        x = logits.detach().reshape(-1).to(compute_dtype(logits))
        flat_labels = labels.detach().reshape(-1)
        ctx.distributed = distributed and is_distributed()
        ctx.delta, ctx.reduction = delta, reduction
        ctx.shape, ctx.grad_dtype = logits.shape, logits.dtype
        if ctx.distributed:
            (all_x, all_labels), start, world = _gather(x, flat_labels.to(x.dtype))
            value, update = _ap_terms(all_x, all_labels, delta, reduction)
            part = slice(start, start + x.numel())
            if reduction == "none":
                value = value[part]
            # DDP averages parameter gradients over ranks: each rank returns W times its
            # part of the single-process update, so the average is the single-process one.
            update = update[part] * world
        else:
            value, update = _ap_terms(x, flat_labels, delta, reduction)
        if reduction == "none":  # the update depends on the incoming gradient
            ctx.save_for_backward(x, flat_labels)
            return value.view(logits.shape).to(output_dtype(logits))
        ctx.save_for_backward(update.view(logits.shape))
        return value.to(output_dtype(logits))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if ctx.reduction != "none":
            (update,) = ctx.saved_tensors
            grad = update * grad_output.to(update.dtype)
        else:
            x, labels = ctx.saved_tensors
            weights = grad_output.reshape(-1).to(x.dtype)
            if ctx.distributed:
                (all_x, all_labels, all_w), start, world = _gather(x, labels.to(x.dtype), weights)
                _, update = _ap_terms(all_x, all_labels, ctx.delta, "none", all_w)
                grad = update[start : start + x.numel()] * world
            else:
                _, grad = _ap_terms(x, labels, ctx.delta, "none", weights)
            grad = grad.view(ctx.shape)
        return grad.to(ctx.grad_dtype), None, None, None, None


def ap_loss(
    logits: Tensor,
    labels: Tensor,
    delta: float = 1.0,
    distributed: bool = True,
    reduction: str = "mean",
    *,
    validate: bool | None = None,
) -> Tensor:
    """AP-Loss: ``1 - interpolated AP`` of one ranking of every element, with the paper's
    error-driven update as its gradient.

    Args:
        logits: ``Tensor[*]`` scores, e.g. ``Tensor[B, A, C]`` (anchors x classes). The
            ranking is over all elements of the mini-batch together, not per image or
            class.
        labels: ``Tensor[*]``, the logits' shape; 1 positive, 0 negative, -1 ignored
            (integer, bool or float).
        delta: half-width of the linear zone of the soft step
            ``H(t) = clamp(t / (2 delta) + 1/2, 0, 1)``; ``delta -> 0`` is the hard step and
            ``1 - loss`` the all-point interpolated (VOC) AP.
        distributed: when True and a process group with more than one rank is
            initialised, logits and labels are gathered from every rank (sizes may
            differ) and ranked together; every rank returns the global value ("none":
            its own elements' part), and the gradient of its own part times the world
            size, so that DDP's gradient averaging reproduces single-process training.
        reduction: each positive's error is ``1 - q_i``, one minus its interpolated
            precision. ``"mean"`` (default): their mean over the P positives, the loss;
            ``"sum"``: their sum; ``"none"``: the logits' shape with each positive's error
            at its place and 0 elsewhere.
        validate: check that labels are in {-1, 0, 1} and logits are finite (a device
            sync); default True on CPU, False elsewhere. Unvalidated labels other than 0
            and 1 are ignored.

    Returns:
        In the logits' dtype (float32 for integers): ``Tensor[]`` in ``[0, 1)`` for
        "mean"; ``Tensor[]`` for "sum"; the logits' shape for "none". Without a positive
        every value is 0 and the gradient is 0.

    Shape:
        - logits: ``(*)``, any shape.
        - labels: ``(*)``, the same.
        - output: ``()``; ``(*)`` for ``reduction="none"``.

    Backward returns the error-driven update times the incoming gradient, not the
    derivative of the returned value: for positive i, ``-(1 - q_i) / P``; for each
    negative, its share of every positive's error (see ``docs/ap_loss.md``; "sum" leaves
    out the division by P, "none" scales positive i's update by the incoming gradient at
    i). The updates sum to zero and the loss equals minus the sum of the positives'
    updates. Negatives below ``min(positive) - delta`` get 0 (they cannot affect any
    rank), ignored elements 0. Float16 and bfloat16 are computed in float32; sums run in
    float64. On the CPU with Numba installed, compiled loops compute the same numbers.

    Example:
        >>> logits = torch.tensor([0.0, 2.0, 3.0], requires_grad=True)
        >>> labels = torch.tensor([1, 1, 0])
        >>> loss = ap_loss(logits, labels)
        >>> round(loss.item(), 4)
        0.3333
        >>> loss.backward()
        >>> [round(g, 4) for g in logits.grad.tolist()]
        [-0.1667, -0.1667, 0.3333]
        >>> ap_loss(logits, labels, reduction="none")
        tensor([0.3333, 0.3333, 0.0000], grad_fn=<_APLossFunctionBackward>)
    """
    delta = check_inputs(logits, labels, delta, reduction, validate)
    return _APLossFunction.apply(logits, labels, delta, bool(distributed), reduction)


class APLoss(RankingLossModule):
    """Module form of :func:`ap_loss`, with the same options and defaults.

    Shape:
        - logits: ``(*)``, any shape.
        - labels: ``(*)``, the same.
        - output: ``()``; ``(*)`` for ``reduction="none"``.

    Example:
        >>> criterion = APLoss(delta=0.5)
        >>> criterion
        APLoss(delta=0.5, distributed=True, reduction='mean', validate=None)
        >>> criterion(torch.tensor([0.0, -0.5]), torch.tensor([1, 0]))
        tensor(0.)
    """

    option_names = ("delta", "distributed", "reduction", "validate")

    def __init__(
        self,
        delta: float = 1.0,
        distributed: bool = True,
        reduction: str = "mean",
        *,
        validate: bool | None = None,
    ) -> None:
        super().__init__(delta, reduction, validate)
        self.distributed = bool(distributed)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return ap_loss(logits, labels, **self.options())
