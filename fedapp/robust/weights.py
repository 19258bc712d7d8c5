"""Aggregation weights that self-reported example counts cannot game.

FedAvg weights each node by the number of examples it *says* it trained on. A
Byzantine node can report 10^9 and own the average. Here a reported count buys
at most ``cap`` times the median count: with fewer than half of the nodes lying,
the (lower) median lies between two honest counts, so no liar's weight exceeds
``cap`` times an honest node's count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

#: Default cap: no node weighs more than twice the median node. It keeps part of
#: honest size differences (a big hospital still counts double a typical one)
#: while an inflated count gains a liar at most a factor 2 over a typical node.
#: Use ``"uniform"`` when even that is too much.
DEFAULT_CAP = 2.0

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


def capped_weights(
    num_examples: Sequence[float] | torch.Tensor, cap: float = DEFAULT_CAP
) -> torch.Tensor:
    """``w_i = min(c_i, cap * med)`` with ``c`` the reported counts, ``med`` their lower median.

    Capping never moves the lower median (values at or below it are unchanged and
    the others stay at or above it, as ``cap >= 1``), so on the returned weights
    ``max_i w_i <= cap * median(w)`` holds exactly. Returns float64 weights, not
    normalised. Raises ``ValueError`` for ``cap < 1``, negative or non-finite
    counts, or a median count of 0.
    """
    if not (math.isfinite(cap) and cap >= 1.0):
        raise ValueError(f"cap must be a finite number >= 1, got cap={cap}")
    counts = _as_counts(num_examples)
    med = float(torch.median(counts))  # lower median for an even count
    if med <= 0.0:
        raise ValueError(f"median num-examples is {med}: at least half of the nodes report no data")
    return counts.clamp(max=cap * med)


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
    """``(i, cap * med)`` for every reported count ``c_i > cap * med`` (``med``: the lower
    median, as in ``capped_weights``): the counts a node inflated, or a hospital far larger
    than the others; ``capped_weights`` would weigh them as ``cap * med``."""
    if not num_examples:
        return []
    bound = cap * float(torch.median(_as_counts(num_examples)))
    return [(i, bound) for i, c in enumerate(num_examples) if c > bound]
