"""The result type every matcher returns and every matched loss consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BACKGROUND", "IGNORED", "Matching"]

#: ``pred_to_target`` value of a prediction matched to no target (trained as background).
BACKGROUND = -1
#: ``pred_to_target`` value of a prediction that takes part in no loss term (e.g. the IoU
#: band between the negative and positive thresholds, or a padded prediction).
IGNORED = -2


@dataclass(frozen=True)
class Matching:
    """A matching of ``M`` predictions to ``N`` target slots in each of ``B`` images.

    Attributes:
        pred_to_target: ``int64[B, M]``, the target index of each prediction, ``-1``
            background, ``-2`` ignored.
        target_mask: ``bool[B, N]``, the real target slots (True) of the padded batch.
        plan: ``float[B, M, N + 1]`` or None. A soft transport plan from an
            optimal-transport matcher, scaled so each prediction's row sums to about 1;
            the last column is the background. Hard matchers leave it None; use
            :meth:`dense_plan` to get a plan for any matching.
        potentials: the dual potentials ``(f [B, M], g [B, N + 1])`` of a Sinkhorn
            matching, to warm-start the next call; None otherwise.

    A matching carries no gradient.

    Shape:
        - pred_to_target: ``[B, M]``; target_mask: ``[B, N]``; plan: ``[B, M, N + 1]``

    Example:
        >>> matching = Matching(torch.tensor([[1, -1, 0, -2]]), torch.tensor([[True, True]]))
        >>> matching.num_matched, matching.pairs()
        (tensor([2]), [(tensor([0, 2]), tensor([1, 0]))])
        >>> matching.hard_plan()[0]
        tensor([[0., 1., 0.],
                [0., 0., 1.],
                [1., 0., 0.],
                [0., 0., 0.]])
    """

    pred_to_target: Tensor
    target_mask: Tensor
    plan: Tensor | None = None
    potentials: tuple[Tensor, Tensor] | None = None

    def __post_init__(self) -> None:
        p2t, mask = self.pred_to_target, self.target_mask
        if p2t.ndim != 2 or p2t.dtype != torch.int64:
            raise ValueError(
                f"pred_to_target: expected int64 [B, M], got {p2t.dtype} {list(p2t.shape)}"
            )
        if mask.ndim != 2 or mask.shape[0] != p2t.shape[0] or mask.dtype != torch.bool:
            raise ValueError(
                f"target_mask: expected bool [B, N] with B = {p2t.shape[0]}, "
                f"got {mask.dtype} {list(mask.shape)}"
            )
        if self.plan is not None:
            expected = (p2t.shape[0], p2t.shape[1], mask.shape[1] + 1)
            if tuple(self.plan.shape) != expected:
                raise ValueError(
                    f"plan: expected shape {list(expected)} ([B, M, N + 1]), "
                    f"got {list(self.plan.shape)}"
                )

    @property
    def batch_size(self) -> int:
        return self.pred_to_target.shape[0]

    @property
    def num_preds(self) -> int:
        return self.pred_to_target.shape[1]

    @property
    def num_target_slots(self) -> int:
        return self.target_mask.shape[1]

    @property
    def positive_mask(self) -> Tensor:
        """``bool[B, M]``: predictions matched to a target."""
        return self.pred_to_target >= 0

    @property
    def negative_mask(self) -> Tensor:
        """``bool[B, M]``: predictions assigned to the background."""
        return self.pred_to_target == BACKGROUND

    @property
    def ignored_mask(self) -> Tensor:
        """``bool[B, M]``: predictions that enter no loss term."""
        return self.pred_to_target == IGNORED

    @property
    def num_matched(self) -> Tensor:
        """``int64[B]``: the number of matched predictions in each image."""
        return self.positive_mask.sum(dim=1)

    def pairs(self) -> list[tuple[Tensor, Tensor]]:
        """Per image, the DETR form ``(pred_idx, target_idx)``: int64 tensors sorted by
        prediction index. One host synchronisation for the whole batch."""
        image, pred = self.positive_mask.nonzero(as_tuple=True)
        target = self.pred_to_target[image, pred]
        counts = torch.bincount(image, minlength=self.batch_size).tolist()
        return list(zip(pred.split(counts), target.split(counts), strict=True))

    def matched_targets(self) -> Tensor:
        """``int64[B, M]``: ``pred_to_target`` with non-positives replaced by 0, safe to
        use as a gather index (read it through :attr:`positive_mask`)."""
        return self.pred_to_target.clamp(min=0)

    def hard_plan(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The 0/1 plan ``[B, M, N + 1]`` of ``pred_to_target``: one 1 per matched or
        background row (background in the last column), ignored rows all zero."""
        n = self.num_target_slots
        column = torch.where(self.pred_to_target == BACKGROUND, n, self.pred_to_target)
        plan = torch.zeros(
            (self.batch_size, self.num_preds, n + 1), dtype=dtype, device=column.device
        )
        valid = column >= 0
        plan.scatter_(2, column.clamp(min=0).unsqueeze(-1), valid.unsqueeze(-1).to(dtype))
        return plan

    def dense_plan(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The soft plan if there is one, else :meth:`hard_plan`."""
        if self.plan is not None:
            return self.plan.to(dtype)
        return self.hard_plan(dtype)

    def to(self, device: torch.device | str) -> Matching:
        return Matching(
            self.pred_to_target.to(device),
            self.target_mask.to(device),
            None if self.plan is None else self.plan.to(device),
            None if self.potentials is None else tuple(p.to(device) for p in self.potentials),
        )
