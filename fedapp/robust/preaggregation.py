"""Pre-aggregation steps: pure maps ``(n, d) -> (n', d)`` applied before any rule.

Compose them with any aggregator, e.g.
``median(nearest_neighbor_mixing(clip_norm(x, 10.0), f=2), f=2)``. The rows they
return are treated as equally weighted by the rule that follows.
"""

from __future__ import annotations

import math

import torch

from fedapp.robust.base import check_updates
from fedapp.robust.distances import distances_to, pairwise_sq_distances


def clip_norm(updates: torch.Tensor, threshold: float) -> torch.Tensor:
    """Scale every row to norm at most ``threshold``: ``x_i * min(1, threshold / ||x_i||)``.

    Rows already inside the ball are returned unchanged; shape is kept ``(n, d)``.
    """
    check_updates(updates)
    if not (math.isfinite(threshold) and threshold > 0.0):
        raise ValueError(f"clip_norm needs threshold > 0, got threshold={threshold}")
    norms = distances_to(updates, torch.zeros(updates.shape[1]))
    scale = (threshold / norms).clamp(max=1.0)  # a zero row gives inf, clamped to 1
    return updates * scale.to(updates.dtype)[:, None]


def bucketing(updates: torch.Tensor, bucket_size: int, seed: int) -> torch.Tensor:
    """Bucketing (Karimireddy, He, Jaggi, ICLR 2022, https://arxiv.org/abs/2006.09365).

    Shuffle the rows with a random permutation drawn from ``seed``, cut the
    shuffled rows into consecutive buckets of ``s = bucket_size`` rows (the last
    bucket holds the remainder), and return the bucket means:
    ``y_b = mean_{i in bucket b} x_pi(i)``, shape ``(ceil(n / s), d)``. It lowers
    the heterogeneity the rule that follows sees; ``s = 1`` only permutes.
    Use a fresh seed every round (e.g. derived from the run seed and the round).
    """
    check_updates(updates)
    if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 1:
        raise ValueError(f"bucketing needs bucket_size >= 1, got {bucket_size!r}")
    n, d = updates.shape
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    num_buckets = -(-n // bucket_size)
    bucket_of_row = torch.empty(n, dtype=torch.long)
    bucket_of_row[perm] = torch.arange(n) // bucket_size
    sums = torch.zeros(num_buckets, d, dtype=updates.dtype)
    sums.index_add_(0, bucket_of_row, updates)
    counts = torch.bincount(bucket_of_row, minlength=num_buckets).to(updates.dtype)
    return sums / counts[:, None]


def nearest_neighbor_mixing(
    updates: torch.Tensor, f: int, block_rows: int | None = None
) -> torch.Tensor:
    """Nearest-neighbour mixing (Allouah et al., AISTATS 2023, https://arxiv.org/abs/2302.01772).

    ``y_i = mean_{j in N_i} x_j`` where ``N_i`` holds the ``n - f`` rows closest to
    ``x_i``, ``x_i`` itself included. Shape is kept ``(n, d)``. Computed as one
    ``(n, n)`` mixing matrix times ``X``; distances come from one Gram matrix.
    """
    check_updates(updates)
    n = updates.shape[0]
    if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < n:
        raise ValueError(f"nearest-neighbor mixing needs 0 <= f < n, got n={n}, f={f!r}")
    dist = pairwise_sq_distances(updates, block_rows)
    dist.fill_diagonal_(-1.0)  # each row is always its own nearest neighbour
    neighbours = torch.topk(dist, n - f, dim=1, largest=False).indices
    mixing = torch.zeros(n, n, dtype=updates.dtype)
    mixing.scatter_(1, neighbours, 1.0 / (n - f))
    return mixing @ updates
