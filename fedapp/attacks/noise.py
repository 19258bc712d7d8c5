"""Reproducible randomness for the omniscient attacks (simulation only).

An attack's random draws come from a generator seeded by the honest rows it sees
(``seeded``), so a simulated run is reproducible. ``jitter`` and ``spread`` make the
colluders' rows distinct, the way an attacker who knows that a defense flags copies would
(``fedapp.robust.detection``'s copy check).
"""

from __future__ import annotations

import math

import torch

from fedapp.robust.distances import pairwise_sq_distances


def seeded(honest: torch.Tensor) -> torch.Generator:
    """A generator seeded by the honest rows: the attacks' random draws are reproducible."""
    seed = int(torch.sum(honest.to(torch.float64) * 1e6).item()) % 2**31
    return torch.Generator().manual_seed(seed)


def typical_distance(honest: torch.Tensor) -> float:
    """``median_i nn_i``, ``nn_i`` the distance from honest row ``i`` to its nearest other
    honest row (the copy check's yardstick); 0 for fewer than two rows."""
    if honest.shape[0] < 2:
        return 0.0
    dist = pairwise_sq_distances(honest)
    dist.fill_diagonal_(float("inf"))
    return float(torch.quantile(dist.min(dim=1).values.sqrt(), 0.5))


def jitter(rows: torch.Tensor, honest: torch.Tensor, radius: float) -> torch.Tensor:
    """``rows[k] + radius * e_k`` with ``e_k`` independent Gaussian unit directions drawn from
    ``seeded(honest)``; float32."""
    e = torch.randn(rows.shape, generator=seeded(honest), dtype=torch.float64)
    e = e / torch.linalg.vector_norm(e, dim=1, keepdim=True).clamp_min(1e-300)
    return (rows.to(torch.float64) + radius * e).to(torch.float32)


def spread_radius(honest: torch.Tensor, noise: float) -> float:
    """``noise * typical_distance(honest)``: how far ``spread`` moves each copy.
    ``ValueError`` unless ``noise`` is finite and >= 0."""
    if noise < 0 or not math.isfinite(noise):
        raise ValueError(f"noise must be finite and >= 0, got {noise}")
    return noise * typical_distance(honest) if noise > 0 else 0.0


def spread(rows: torch.Tensor, honest: torch.Tensor, noise: float) -> torch.Tensor:
    """``jitter(rows, honest, spread_radius(honest, noise))``: the copies made distinct by a
    share ``noise`` of the typical nearest-neighbour distance; ``rows`` itself when that is
    0 (``noise = 0`` or one honest row)."""
    radius = spread_radius(honest, noise)
    return jitter(rows, honest, radius) if radius > 0 else rows
