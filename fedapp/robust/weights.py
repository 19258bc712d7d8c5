"""Aggregation weights that self-reported example counts cannot game.

FedAvg weights each node by the number of examples it *says* it trained on. A
Byzantine node can report 10^9 and own the average. Here (``capped_weights``):

* a count far above the others (``count_outliers``: robust z-score of ``log(1 + c)``
  above 3.5, and above ``cap`` times the reference) weighs as the reference ``m``;
* every other count buys at most ``cap * m``;
* ``m`` is the lower median of the counts that are not outliers, so liars who report
  huge counts do not lift it: with fewer than half of the nodes lying, ``m`` lies
  within the honest counts (at most their ``1 / (2 (1 - f))`` quantile for a liar
  fraction ``f``: the 71st percentile at 30%).

Remaining influence of a liar: a blatant one weighs ``m`` (a typical hospital), one
that stays under the outlier cut at most ``cap * m``; so ``f n`` liars hold at most a
share ``f cap m / (f cap m + sum of honest weights)`` of the weight, never more than
``cap`` honest-median hospitals each. A hospital that really is far larger than the
others is weighed as a typical one: set ``weighting='num-examples'`` knowingly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from fedapp.robust.detection import robust_z_scores

#: Default cap: no node weighs more than twice the median node. It keeps part of
#: honest size differences (a big hospital still counts double a typical one)
#: while an inflated count gains a liar at most a factor 2 over a typical node.
#: Use ``"uniform"`` when even that is too much.
DEFAULT_CAP = 2.0
#: Robust z-score of ``log(1 + count)`` above which a count is an outlier (Iglewicz &
#: Hoaglin's cut-off for modified z-scores, as the norm check's).
COUNT_Z = 3.5

WeightMode = Literal["capped", "uniform", "num-examples"]


def _as_counts(num_examples: Sequence[float] | torch.Tensor) -> torch.Tensor:
    counts = torch.as_tensor(num_examples, dtype=torch.float64).reshape(-1)
    if counts.numel() == 0:
        raise ValueError("num_examples is empty: at least one node is needed")
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"num_examples must be finite and >= 0, got {counts.tolist()}")
    return counts


def uniform_weights(n: int) -> torch.Tensor:
    """Weight 1 for each of the ``n`` nodes (float64): reported counts are ignored."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"uniform_weights needs n >= 1, got {n!r}")
    return torch.ones(n, dtype=torch.float64)


def count_outliers(num_examples: Sequence[float] | torch.Tensor, cap: float = DEFAULT_CAP
                   ) -> tuple[tuple[int, ...], float]:
    """``(outliers, m)``: the indices of the counts far above the others, and the reference
    ``m``, the lower median of the other counts (module docstring). An outlier has a
    robust z-score of ``log(1 + c)`` above ``COUNT_Z`` *and* ``c > cap * m``: counts
    that merely differ a little from many equal ones are not outliers."""
    counts = _as_counts(num_examples)
    high = robust_z_scores(torch.log1p(counts)) > COUNT_Z
    if bool(high.all()):
        high = torch.zeros_like(high)
    ref = float(torch.median(counts[~high]))  # lower median for an even count
    outliers = tuple(int(i) for i in torch.nonzero(high & (counts > cap * ref)).reshape(-1))
    return outliers, ref


def capped_weights(
    num_examples: Sequence[float] | torch.Tensor, cap: float = DEFAULT_CAP
) -> torch.Tensor:
    """``w_i = min(c_i, m)`` for the outlier counts, ``min(c_i, cap * m)`` for the others
    (``count_outliers``: ``m`` is the lower median of the counts that are not outliers).

    No weight exceeds ``cap * m``, and the outliers' weights stay at or below ``m``.
    Returns float64 weights, not normalised. Raises ``ValueError`` for ``cap < 1``,
    negative or non-finite counts, or a reference count of 0.
    """
    if not (math.isfinite(cap) and cap >= 1.0):
        raise ValueError(f"cap must be a finite number >= 1, got cap={cap}")
    counts = _as_counts(num_examples)
    outliers, ref = count_outliers(counts, cap)
    if ref <= 0.0:
        raise ValueError(f"median num-examples is {ref}: at least half of the nodes report no data")
    weights = counts.clamp(max=cap * ref)
    if outliers:
        index = torch.tensor(outliers)
        weights[index] = counts[index].clamp(max=ref)
    return weights


def node_weights(
    num_examples: Sequence[float] | torch.Tensor,
    mode: WeightMode = "capped",
    cap: float = DEFAULT_CAP,
) -> torch.Tensor:
    """Weights for the rules from self-reported counts.

    ``"capped"`` (default): ``min(c_i, cap * median(c))``; ``"uniform"``: all ones;
    ``"num-examples"``: the counts as reported (Flower's FedAvg; gameable).
    """
    if mode == "num-examples":
        return _as_counts(num_examples)
    if mode == "capped":
        return capped_weights(num_examples, cap)
    if mode == "uniform":
        return uniform_weights(_as_counts(num_examples).numel())
    raise ValueError(
        f"weight mode must be 'capped', 'uniform' or 'num-examples', got {mode!r}"
    )


def inflated_counts(num_examples: Sequence[float], cap: float = DEFAULT_CAP
                    ) -> list[tuple[int, float]]:
    """``(i, w_i)`` for every reported count that ``capped_weights`` lowers to ``w_i``: the
    outliers (to the reference ``m``) and the counts above ``cap * m``. The counts a node
    inflated, or a hospital far larger than the others."""
    if not num_examples:
        return []
    weights = capped_weights(num_examples, cap)
    return [(i, float(w)) for i, (c, w) in enumerate(zip(num_examples, weights.tolist(),
                                                         strict=True)) if w < c]
