"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017).

Paper: "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
https://arxiv.org/abs/1703.02757
"""

from __future__ import annotations

import torch

from fedapp.robust.base import (
    AggregationReport,
    AggregationResult,
    check_f,
    check_updates,
)
from fedapp.robust.distances import pairwise_sq_distances


def krum_scores(updates: torch.Tensor, f: int, block_rows: int | None = None) -> torch.Tensor:
    """Krum score of every row, as a float64 ``n``-vector.

    ``score_i = sum_{j in N_i} ||x_i - x_j||^2`` where ``N_i`` holds the
    ``n - f - 2`` rows closest to ``x_i`` (``i`` itself excluded). Distances
    come from one Gram matrix (see ``pairwise_sq_distances``); the neighbour
    search is one ``topk`` over the ``(n, n)`` matrix. Needs ``n > 2f + 2``.
    """
    n = updates.shape[0]
    check_f("krum", n, f, extra=2)
    dist = pairwise_sq_distances(updates, block_rows)
    dist.fill_diagonal_(float("inf"))  # a row is never its own neighbour
    nearest = torch.topk(dist, n - f - 2, dim=1, largest=False).values
    return nearest.sum(dim=1)


def _ranked(scores: torch.Tensor) -> list[int]:
    """Row indices by increasing score; ties go to the lower index."""
    return torch.sort(scores, stable=True).indices.tolist()


def krum(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    f: int = 0,
    block_rows: int | None = None,
) -> AggregationResult:
    """Krum: return the single row with the lowest Krum score.

    ``i* = argmin_i sum_{j in N_i} ||x_i - x_j||^2`` with ``N_i`` the ``n - f - 2``
    nearest other rows; ``agg = x_{i*}``. Tolerates ``f`` Byzantine rows when
    ``n > 2f + 2``. The selection ignores ``weights`` (they are validated only),
    as in the paper: a self-reported weight must not buy a node the selection.

    The report selects ``(i*,)``, lists every other row as trimmed, and gives the
    per-row Krum scores.
    """
    check_updates(updates, weights)
    scores = krum_scores(updates, f, block_rows)
    order = _ranked(scores)
    best = order[0]
    report = AggregationReport(
        "krum",
        selected=(best,),
        trimmed=tuple(sorted(order[1:])),
        scores=tuple(scores.tolist()),
        extra={"f": float(f)},
    )
    return AggregationResult(updates[best].clone(), report)


def multi_krum(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    f: int = 0,
    m: int | None = None,
    block_rows: int | None = None,
) -> AggregationResult:
    """Multi-Krum: weighted mean of the ``m`` rows with the lowest Krum scores.

    Scores are computed once (as in the paper and in Flower's ``MultiKrum``):
    ``S = the m indices with the smallest score_i``, then
    ``agg = sum_{i in S} w_i x_i / sum_{i in S} w_i`` (uniform ``w`` if ``weights``
    is None, or if every selected weight is 0). ``m`` defaults to ``n - f``;
    ``m = 1`` is Krum. Needs ``n > 2f + 2`` and ``1 <= m <= n``.
    """
    w = check_updates(updates, weights)
    n = updates.shape[0]
    check_f("multikrum", n, f, extra=2)
    m = n - f if m is None else m
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n:
        raise ValueError(f"multikrum needs 1 <= m <= n, got m={m!r}, n={n}")
    scores = krum_scores(updates, f, block_rows)
    order = _ranked(scores)
    chosen = sorted(order[:m])
    w_sel = w[chosen]
    if float(w_sel.sum()) <= 0.0:
        w_sel = torch.ones_like(w_sel)
    coef = (w_sel / w_sel.sum()).to(updates.dtype)
    # Sum over runs of consecutive chosen rows, each a view of ``updates``:
    # ``updates[chosen]`` would copy up to the whole matrix first.
    agg = torch.zeros(updates.shape[1], dtype=updates.dtype)
    start = 0
    for end in range(1, m + 1):
        if end == m or chosen[end] != chosen[end - 1] + 1:
            agg += coef[start:end] @ updates[chosen[start] : chosen[end - 1] + 1]
            start = end
    report = AggregationReport(
        "multikrum",
        selected=tuple(chosen),
        trimmed=tuple(sorted(order[m:])),
        scores=tuple(scores.tolist()),
        extra={"f": float(f), "m": float(m)},
    )
    return AggregationResult(agg, report)
