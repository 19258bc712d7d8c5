"""Geometric median by the smoothed Weiszfeld algorithm (RFA).

Paper: Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning",
IEEE Trans. Signal Processing 2022, https://arxiv.org/abs/1912.13445
"""

from __future__ import annotations

import math

import torch

from fedapp.robust.base import (
    AggregationReport,
    AggregationResult,
    check_f,
    check_updates,
)
from fedapp.robust.distances import distances_to, weighted_row_sum


def geometric_median(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    f: int = 0,
    nu: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-6,
    block_rows: int | None = None,
) -> AggregationResult:
    """Weighted geometric median ``argmin_z sum_i alpha_i ||z - x_i||``.

    ``alpha = w / sum(w)`` (uniform if ``weights`` is None). Smoothed Weiszfeld
    iterations, starting from the weighted mean:

        beta_i = alpha_i / max(nu, ||z - x_i||)
        z     <- sum_i beta_i x_i / sum_i beta_i

    ``nu > 0`` keeps the step defined when ``z`` lands on a row. The loop stops
    after ``max_iter`` iterations or once the objective
    ``g(z) = sum_i alpha_i ||z - x_i||`` changes by at most ``tol * g(z)``.
    Breakdown point 1/2: robust while Byzantine rows hold less than half of the
    weight; ``f`` is only checked against ``n > 2f``.

    The report gives per-row distances ``||z - x_i||`` as scores, and in ``extra``
    the iterations run, the final objective and whether the tolerance was met.
    """
    w = check_updates(updates, weights)
    check_f("geomed", updates.shape[0], f)
    check_weiszfeld(nu, max_iter, tol)
    alpha = w / w.sum()
    z = weighted_row_sum(updates, alpha, block_rows)
    dist = distances_to(updates, z, block_rows)
    objective = float(alpha @ dist)
    converged = False
    iterations = 0
    while iterations < max_iter and not converged:
        iterations += 1
        beta = alpha / dist.clamp_min(nu)
        z = weighted_row_sum(updates, beta / beta.sum(), block_rows)
        dist = distances_to(updates, z, block_rows)
        new_objective = float(alpha @ dist)
        converged = abs(objective - new_objective) <= tol * new_objective
        objective = new_objective

    report = AggregationReport(
        "geomed",
        selected=tuple(torch.nonzero(w > 0).flatten().tolist()),
        scores=tuple(dist.tolist()),
        extra={
            "iterations": float(iterations),
            "objective": objective,
            "converged": float(converged),
        },
    )
    return AggregationResult(z.to(updates.dtype), report)


def check_weiszfeld(nu: float, max_iter: int, tol: float) -> None:
    """Raise ``ValueError`` naming the parameter unless ``nu > 0``, ``max_iter >= 1``
    (an int) and ``tol >= 0``, all finite."""
    if not (math.isfinite(nu) and nu > 0.0):
        raise ValueError(f"geomed needs nu > 0, got nu={nu}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"geomed needs max_iter >= 1, got max_iter={max_iter!r}")
    if not (math.isfinite(tol) and tol >= 0.0):
        raise ValueError(f"geomed needs tol >= 0, got tol={tol}")
