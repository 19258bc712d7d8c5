"""Spectral filtering: drop the rows that stretch the updates along one direction, average the rest.

Colluding attacks (ALIE, IPM, min-max, min-sum) work by moving ``f`` rows the same way:
however close each crafted row stays to the honest ones, together they add variance
``~ f (n - f) / n * ||delta||^2`` along their common offset ``delta``, so that offset
becomes the top principal direction of the centered updates, and the crafted rows are
the ones with the largest projections on it. Shejwalkar & Houmansadr's Divide-and-Conquer
(NDSS 2021, https://www.ndss-symposium.org/ndss-paper/manipulating-the-byzantine-optimizing-
model-poisoning-attacks-and-defenses-for-federated-learning/) scores rows this way on random
subsets of coordinates; the filtering algorithms of robust mean estimation (Diakonikolas,
Kamath, Kane, Li, Moitra, Stewart, ICML 2017, https://arxiv.org/abs/1703.00893) remove the
outliers of the top direction one at a time and recompute it.

This rule does the latter on all coordinates at once, through the ``n x n`` matrix of
squared distances ``D`` (one Gram matrix, ``fedapp.robust.distances``): for the rows ``S``
still kept, the Gram of the centered rows is ``K = -1/2 C D_SS C`` with
``C = I - 11^T / |S|`` (classical multidimensional scaling). If ``K u = lambda u`` is its top
eigenpair, row ``i``'s projection on the top principal direction is ``sqrt(lambda) u_i``, and
its score is ``s_i = lambda u_i^2``. Each of ``f`` steps removes the row with the largest
score and recomputes ``K`` on the rest; the aggregate is the weighted mean of the ``n - f``
rows left. After ``D`` every step costs ``O(n^3)``, independent of ``d``. Removing one row
per step also catches several *independent* outliers (e.g. large Gaussian rows, which are
nearly orthogonal to each other): each dominates the top direction in turn.
"""

from __future__ import annotations

import torch

from fedapp.robust.base import AggregationReport, AggregationResult, check_f, check_updates
from fedapp.robust.distances import pairwise_sq_distances, weighted_row_sum


def centered_gram(sq_distances: torch.Tensor) -> torch.Tensor:
    """Gram matrix of the centered rows from their squared distances: ``-1/2 C D C``.

    ``C = I - 11^T / n``. Equivalent to ``K_ij = -1/2 (D_ij - rbar_i - rbar_j + dbar)`` with
    ``rbar`` the row means and ``dbar`` the grand mean of ``D``.
    """
    d = sq_distances.to(torch.float64)
    row = d.mean(dim=1, keepdim=True)
    return -0.5 * (d - row - row.T + d.mean())


def spectral_scores(sq_distances: torch.Tensor) -> torch.Tensor:
    """``s_i = lambda u_i^2``: squared projection of each centered row on the top principal
    direction, from the ``(n, n)`` squared distances. All zero when the rows are identical."""
    k = centered_gram(sq_distances)
    eigenvalues, eigenvectors = torch.linalg.eigh(k)  # ascending
    top = float(eigenvalues[-1].clamp_min(0.0))
    return top * eigenvectors[:, -1] ** 2


def spectral_filter(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    f: int = 0,
) -> AggregationResult:
    """Remove ``f`` rows one at a time by spectral score (module docstring); weighted mean
    of the rest: ``agg = sum_{i in S} w_i x_i / sum_{i in S} w_i``.

    Needs ``n > 2f``. The removal ignores ``weights``; uniform weights are used if every
    kept weight is 0. The report selects the kept rows, lists the removed ones as trimmed
    (in removal order in ``extra``), and gives every row's score at the first step.
    """
    w = check_updates(updates, weights)
    n = updates.shape[0]
    check_f("spectral", n, f)
    dist = pairwise_sq_distances(updates)
    kept = list(range(n))
    removed: list[int] = []
    first_scores = torch.zeros(n, dtype=torch.float64)
    for step in range(f):
        idx = torch.tensor(kept)
        scores = spectral_scores(dist[idx][:, idx])
        if step == 0:
            first_scores = scores
        worst = kept[int(torch.argmax(scores))]  # ties: the lower index
        kept.remove(worst)
        removed.append(worst)
    w_kept = w[kept]
    if float(w_kept.sum()) <= 0.0:
        w_kept = torch.ones_like(w_kept)
    agg = weighted_row_sum(updates[kept] if f else updates, w_kept / w_kept.sum())
    report = AggregationReport(
        "spectral",
        selected=tuple(kept),
        trimmed=tuple(sorted(removed)),
        scores=tuple(first_scores.tolist()),
        extra={"f": float(f), **{f"removed-{k}": float(i) for k, i in enumerate(removed)}},
    )
    return AggregationResult(agg.to(updates.dtype), report)
