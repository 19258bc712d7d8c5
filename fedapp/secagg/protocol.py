"""The plan of one secure-aggregation round: buckets, neighbours, thresholds.

Pure functions; the server (``fedapp.secagg.server``) follows them, a test checks them.

* ``assign_buckets``: the round's sampled nodes, shuffled by a generator seeded with
  (run seed, round), cut into ``max(1, n // s)`` buckets whose sizes differ by at most
  one (so every bucket has at least ``s`` nodes when ``n >= s``). Fresh every round: a
  Byzantine node does not keep its bucket-mates.
* ``neighbours``: SecAgg+ (Bell et al. 2020) masks and shares along a sparse graph; here
  a ring over the bucket's shuffled order, each node with ``degree / 2`` neighbours on
  either side (``degree = 0`` or ``>= s - 1``: every other node of the bucket, i.e. the
  original SecAgg of Bonawitz et al. 2017).
* ``threshold``: Shamir's threshold ``t = max(2, ceil(fraction * shares))`` of a node's
  ``shares = degree + 1`` share holders (itself included); ``fraction > 1/2`` so that an
  honest-but-curious server never gets both secrets of a node from the honest nodes.
* ``recoverable``: a bucket can be unmasked only if every secret the server needs has at
  least ``t`` live holders, and at least ``t`` (>= 2) nodes contributed: the server then
  learns a sum of ``t`` or more updates, never one node's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Settings:
    """The run config's ``secagg-*`` keys (``fedapp.config.RunConfig``)."""

    bucket_size: int = 2
    threshold: float = 0.75
    degree: int = 0
    clip_norm: float = 5.0
    bits: int = 32
    seed: int = 0
    key_rounds: int = 10  # rounds a node's key pairs serve (fedapp.secagg.keys)
    # dp='distributed' (fedapp.privacy.distributed): noise multiplier z (0: off), per-example
    # clip C, sample rate q and the DP-SGD step's learning rate.
    dp_noise: float = 0.0
    dp_clip: float = 1.0
    dp_sample_rate: float = 1.0
    dp_lr: float = 0.0
    dp_delta: float = 1e-5


def assign_buckets(nodes: Sequence[int], size: int, seed: int, server_round: int
                   ) -> list[tuple[int, ...]]:
    """The round's buckets (module docstring); ``size >= n`` gives one bucket of all."""
    if size < 2:
        raise ValueError(f"bucket size {size} must be >= 2")
    permutation = np.random.default_rng([seed, server_round]).permutation(len(nodes))
    order = [int(nodes[i]) for i in permutation]  # node ids are uint64: not numpy's int64
    count = max(1, len(order) // size)
    small, extra = divmod(len(order), count) if order else (0, 0)
    buckets, start = [], 0
    for b in range(count if order else 0):
        end = start + small + (1 if b < extra else 0)
        buckets.append(tuple(order[start:end]))
        start = end
    return buckets


def neighbours(bucket: Sequence[int], degree: int) -> dict[int, tuple[int, ...]]:
    """Each node's share holders, itself included, in the bucket's order (module
    docstring). Symmetric: ``j`` is in ``i``'s set exactly when ``i`` is in ``j``'s."""
    s = len(bucket)
    if degree < 0 or degree % 2:
        raise ValueError(f"degree {degree} must be 0 or a positive even number")
    if degree == 0 or degree >= s - 1:
        return {node: tuple(bucket) for node in bucket}
    half = degree // 2
    out = {}
    for i, node in enumerate(bucket):
        ring = {bucket[(i + k) % s] for k in range(-half, half + 1)}
        out[node] = tuple(n for n in bucket if n in ring)
    return out


def threshold(fraction: float, shares: int) -> int:
    """Shamir threshold for ``shares`` holders (module docstring)."""
    if not 0.5 < fraction <= 1.0:
        raise ValueError(f"threshold fraction {fraction} must be in (0.5, 1]")
    return max(2, min(shares, math.ceil(fraction * shares)))


def recoverable(graph: Mapping[int, Sequence[int]], alive: set[int], contributed: set[int],
                t: int) -> str | None:
    """Why the bucket cannot be unmasked, or None. ``graph``: each node's share holders
    (of the nodes that shared keys); ``alive``: nodes that answered the unmask stage;
    ``contributed``: nodes whose masked vector was accepted. Needed: ``t`` contributors,
    and for every node with shares out (contributor: its private mask seed; the others:
    its pairwise key) ``t`` alive holders."""
    if len(contributed) < t:
        return f"{len(contributed)} nodes contributed, fewer than the threshold {t}"
    for node, holders in graph.items():
        if node not in contributed and not any(h in contributed for h in holders if h != node):
            continue  # no contributor masked with it: its key is not needed
        live = sum(1 for h in holders if h in alive)
        if live < t:
            what = "mask seed" if node in contributed else "key of a dropped node"
            return (f"node {node}'s {what} has {live} live share holders, fewer than the "
                    f"threshold {t}")
    return None
