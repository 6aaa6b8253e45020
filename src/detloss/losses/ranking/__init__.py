"""Ranking losses with error-driven updates: AP-Loss (Chen et al., CVPR 2019 / TPAMI 2020),
aLRP Loss (Oksuz et al., NeurIPS 2020) and Rank & Sort Loss (Oksuz et al., ICCV 2021),
exact and without a loop over positives.

Each ranks the scored elements of the whole mini-batch (every anchor x class of every
image) with the soft step ``H(t) = clamp(t / (2 delta) + 1/2, 0, 1)``. The backward pass is
not the derivative of the returned value but the paper's *error-driven update* (a
perceptron-style step), hence a :class:`torch.autograd.Function` per loss.

The published algorithms loop over the P positives and, for each, scan all P + N
elements: O(P (P + N)) time and P kernel launches. Because ``H`` is piecewise linear,
every per-positive sum is a count plus a sum of scores over a contiguous range of sorted
scores, so the rank engine (``_engine``) gets all of them from prefix sums and binary
searches, and the negatives' updates from the same ranges read the other way round:
O((P + N) log(P + N)) time, O(P + N) memory, the loops' numbers (see
``docs/ap_loss.md``).

Modules: ``ap`` (AP-Loss), ``alrp`` (aLRP Loss), ``rank_sort`` (Rank & Sort Loss), each
the torch statement of its loss, which every device without a fast path runs; ``_engine``
(the shared rank engine); ``_common`` (input checks, ``reduction``). On the CPU with
Numba installed, each loss runs as one compiled call instead
(``detloss._kernels.ranking_cpu``, reached through ``fast_path("ranking", device)``).
"""

from .alrp import ALRPLoss, alrp_loss
from .ap import APLoss, ap_loss
from .rank_sort import RankSortLoss, rank_sort_loss

__all__ = [
    "ALRPLoss",
    "APLoss",
    "RankSortLoss",
    "alrp_loss",
    "ap_loss",
    "rank_sort_loss",
]
