"""Omniscient attacks of the robust-FL benchmarks (ByzFL, Blades) beyond ``omniscient``'s.

Same contract as ``fedapp.attacks.omniscient``: a pure function
``f(honest, num_byzantine, **params)`` of the ``(n_h, d)`` honest updates that returns the
``(n_b, d)`` float32 rows of the colluders; registered in ``OMNISCIENT_ATTACKS`` and played
by ``fedapp.attacks.threat_model.ThreatModel`` (simulation only). ``mu = mean_i h_i``.
"""

from __future__ import annotations

import math

import torch

from fedapp.attacks.noise import seeded
from fedapp.attacks.omniscient import _check, _repeat
from fedapp.robust.distances import pairwise_sq_distances


def mimic_index(honest: torch.Tensor) -> int:
    """The honest row the mimic attack copies: ``i* = argmax_i |<h_i - mu, v>|`` with ``v``
    the top principal direction of the centered honest rows (the first such ``i``).

    Computed without a ``d x d`` covariance: the Gram matrix of the centered rows is
    ``G = -1/2 J D J`` (``D`` the squared pairwise distances, ``J = I - 11^T / n``), and for
    its top eigenvector ``u`` (eigenvalue ``lambda``) the projections are
    ``(h_i - mu) . v = sqrt(lambda) u_i``, so ``i* = argmax_i |u_i|``.
    """
    n = honest.shape[0]
    if n == 1:
        return 0
    dist = pairwise_sq_distances(honest)
    centering = torch.eye(n, dtype=torch.float64) - 1.0 / n
    gram = -0.5 * centering @ dist @ centering
    _, vectors = torch.linalg.eigh(0.5 * (gram + gram.T))
    return int(torch.argmax(vectors[:, -1].abs()))


def mimic(honest: torch.Tensor, num_byzantine: int) -> torch.Tensor:
    """Mimic: every Byzantine node sends a copy of one honest node's update, ``h_{i*}``
    (``mimic_index``: the honest row farthest from the mean along the top principal
    direction).

    Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022 (https://arxiv.org/abs/2006.09365). Every row is a
    real honest update, so no outlier test can tell them apart; under heterogeneity the
    copies over-represent one node's data and pull robust rules towards it. The paper's
    attacker settles on ``i*`` over a first phase of training; here ``i*`` is chosen on each
    round's own rows (memoryless, a simpler choice).
    """
    _check(honest, num_byzantine)
    return _repeat(honest[mimic_index(honest)], num_byzantine)


def fang(honest: torch.Tensor, num_byzantine: int, *, b: float = 2.0) -> torch.Tensor:
    """Fang's full-knowledge attack on trimmed mean and median: per coordinate ``j``, beyond
    the honest extreme on the side opposite the honest mean's sign, by a random factor.

    Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to Byzantine-Robust Federated
    Learning", USENIX Security 2020 (https://arxiv.org/abs/1911.11815): the full-knowledge
    attack on Trimmed mean / Median, on updates: ``s_j = sign(mu_j)`` is the
    direction the honest nodes move coordinate ``j`` (``s_j = +1`` where ``mu_j = 0``). With
    ``lo_j = min_i h_ij``, ``hi_j = max_i h_ij`` and an independent ``r ~ U[1, b]`` per
    colluder and coordinate, a colluder sends

    * where ``s_j = +1``: ``lo_j / r`` if ``lo_j > 0``, else ``lo_j * r`` (in
      ``[lo_j / b, lo_j]`` or ``[b lo_j, lo_j]``: at or below the honest minimum);
    * where ``s_j = -1``: ``hi_j * r`` if ``hi_j > 0``, else ``hi_j / r`` (at or above the
      honest maximum).

    ``b`` (>= 1, default 2 as in the paper) bounds how far beyond the extreme a value goes.
    The draws come from a generator seeded by the honest rows (``noise.seeded``), so the
    colluders' rows differ from each other and a run is reproducible.
    """
    _check(honest, num_byzantine)
    if not (math.isfinite(b) and b >= 1.0):
        raise ValueError(f"b must be finite and >= 1, got {b}")
    x = honest.to(torch.float64)
    up = x.mean(dim=0) >= 0  # s_j = +1: push below the minimum
    lo, hi = x.min(dim=0).values, x.max(dim=0).values
    r = 1.0 + (b - 1.0) * torch.rand((num_byzantine, honest.shape[1]), generator=seeded(honest),
                                     dtype=torch.float64)
    below = torch.where(lo > 0, lo / r, lo * r)
    above = torch.where(hi > 0, hi * r, hi / r)
    return torch.where(up, below, above).to(torch.float32)


#: This module's attacks by name (``OMNISCIENT_ATTACKS`` has them).
PUBLISHED_ATTACKS = {"mimic": mimic, "fang": fang}
