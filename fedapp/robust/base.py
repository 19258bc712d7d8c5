"""Types shared by the robust aggregation rules, and the plain weighted mean.

Every rule is a pure function of an ``(n, d)`` float32 tensor of client updates
(one row per node) plus optional per-node weights. It returns the ``d``-vector
to apply to the global model and a report of what it did. Rules know nothing of
Flower; the strategy flattens replies into the matrix and calls them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class AggregationReport:
    """What a rule did with the ``n`` rows it was given.

    Indices refer to rows of the input matrix. ``scores`` holds one value per
    row where the rule scores rows (Krum scores, distances); empty otherwise.
    """

    rule: str
    selected: tuple[int, ...] = ()
    trimmed: tuple[int, ...] = ()
    scores: tuple[float, ...] = ()
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AggregationResult:
    aggregate: torch.Tensor
    report: AggregationReport


Aggregator = Callable[..., AggregationResult]


def check_updates(updates: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Validate the ``(n, d)`` matrix and return weights as a float64 ``n``-vector.

    Missing weights mean uniform weights. Raises ``ValueError`` on bad shapes,
    an empty matrix, or negative / all-zero / non-finite weights.
    """
    if updates.ndim != 2:
        raise ValueError(f"updates must be a 2-D (n, d) tensor, got shape {tuple(updates.shape)}")
    n = updates.shape[0]
    if n == 0:
        raise ValueError("updates is empty: at least one row is needed")
    if weights is None:
        return torch.ones(n, dtype=torch.float64)
    return check_weights(weights, n)


def check_weights(weights: torch.Tensor, n: int) -> torch.Tensor:
    """``weights`` as a float64 ``n``-vector; ``ValueError`` unless it has ``n`` entries,
    all finite and ``>= 0``, not all zero."""
    w = weights.detach().to(torch.float64).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"weights has {w.shape[0]} entries for {n} updates")
    if not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0.0:
        raise ValueError(f"weights must be finite, >= 0 and not all zero, got {w.tolist()}")
    return w


def weighted_mean(updates: torch.Tensor, weights: torch.Tensor | None = None) -> AggregationResult:
    """Weighted mean (FedAvg; McMahan et al. 2017).

    ``agg = sum_i w_i x_i / sum_i w_i``; uniform weights when ``weights`` is None.
    Not robust: one arbitrary row moves the result arbitrarily far.
    """
    w = check_updates(updates, weights)
    coef = (w / w.sum()).to(updates.dtype)
    agg = coef @ updates
    return AggregationResult(agg, AggregationReport("fedavg", selected=tuple(range(len(w)))))


#: Registry of rules by their run-config name (``aggregator = "..."``).
AGGREGATORS: dict[str, Aggregator] = {"fedavg": weighted_mean}


def check_f(rule: str, n: int, f: int, *, extra: int = 0) -> None:
    """Check that ``f`` is a non-negative int and that ``n > 2f + extra``.

    ``extra=0`` is the honest-majority condition of the median-type rules;
    Krum needs ``extra=2`` (Blanchard et al. 2017).
    """
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"{rule}: f must be a non-negative int, got {f!r}")
    if n <= 2 * f + extra:
        bound = f"2f + {extra}" if extra else "2f"
        raise ValueError(f"{rule} needs n > {bound}, got n={n}, f={f}")
