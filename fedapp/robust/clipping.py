"""Centered clipping (CClip).

Paper: Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
Optimization", ICML 2021, https://arxiv.org/abs/2012.10333

The rule is stateless here: the caller passes the center (in the paper, the
server momentum, i.e. the previous aggregate) and keeps it between rounds.
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


def centered_clipping(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    tau: float,
    center: torch.Tensor | None = None,
    iterations: int = 1,
    f: int = 0,
    block_rows: int | None = None,
) -> AggregationResult:
    """Centered clipping: ``L`` steps of ``v <- v + sum_i alpha_i clip_tau(x_i - v)``.

    ``clip_tau(u) = u * min(1, tau / ||u||)`` and ``alpha = w / sum(w)`` (uniform if
    ``weights`` is None, which is the paper's plain mean). ``v`` starts at
    ``center`` (zeros if None) and ``L = iterations``. Each step moves ``v`` by at
    most ``tau``, so the Byzantine rows' pull is bounded by ``tau`` times their
    weight. ``tau`` has no scale-free default: set it to the order of the honest
    rows' distance to the center. ``f`` is only checked against ``n > 2f``.

    The report (for the last step) lists the rows inside the ball of radius ``tau``
    around ``v`` as selected, the clipped ones as trimmed, and their distances
    ``||x_i - v||`` as scores.
    """
    w = check_updates(updates, weights)
    n, d = updates.shape
    check_f("centered-clipping", n, f)
    if not (math.isfinite(tau) and tau > 0.0):
        raise ValueError(f"centered-clipping needs tau > 0, got tau={tau}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"centered-clipping needs iterations >= 1, got {iterations!r}")
    if center is None:
        v = torch.zeros(d, dtype=torch.float64)
    elif tuple(center.shape) != (d,):
        raise ValueError(f"center must have shape ({d},), got {tuple(center.shape)}")
    else:
        v = center.detach().to(torch.float64).clone()

    alpha = w / w.sum()
    dist = torch.zeros(n, dtype=torch.float64)
    for _ in range(iterations):
        dist = distances_to(updates, v, block_rows)
        scale = (tau / dist).clamp(max=1.0)  # dist == 0 gives inf, clamped to 1
        coef = alpha * scale
        # v + sum_i c_i (x_i - v) = (1 - sum_i c_i) v + sum_i c_i x_i
        v = (1.0 - coef.sum()) * v + weighted_row_sum(updates, coef, block_rows)

    clipped = dist > tau
    report = AggregationReport(
        "centered-clipping",
        selected=tuple(torch.nonzero(~clipped).flatten().tolist()),
        trimmed=tuple(torch.nonzero(clipped).flatten().tolist()),
        scores=tuple(dist.tolist()),
        extra={"tau": float(tau), "iterations": float(iterations)},
    )
    return AggregationResult(v.to(updates.dtype), report)
