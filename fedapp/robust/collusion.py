"""Colluders: the ``copy`` check's ratios (``nearest_ratio``: one crafted update sent by
several nodes; ``sign_copy_ratio``: one sign pattern with independent magnitudes, as in
Fang's attack) and the ``cluster`` check (distinct noisy copies of one crafted update).

Colluders who know that identical rows are flagged (``detection``'s copy check) send
``u_i = c + r e_i``: one crafted row ``c`` (ALIE, min-max, ...) plus independent noise of
norm ``r`` in random directions ``e_i``. Their pairwise distances ``sqrt(2) r`` can be as
large as honest ones, so no distance threshold separates them. What separates them is
*where* their differences point: ``u_i - u_j = r (e_i - e_j)`` is pure noise, nearly
orthogonal to every other update (a random unit vector has ``cos^2 ~ 1/d`` with any fixed
vector), whereas two honest updates differ by training signal (other classes, other
features) that the rest of the federation's updates share.

With ``y_k = u_k - mean_{l in O} u_l`` the rows centred on the mean of the *observers*
``O`` (the rows the norm check leaves: one huge row would otherwise shift every ``y_k``
along itself, and all cosines would measure that one direction) and ``K = Y Y^T``, the
*alignment* of the pair ``(i, j)`` is the mean over the other observers ``k`` of
``cos^2(u_i - u_j, y_k)``::

    a_ij = 1/|M| sum_{k in M} (K_ik - K_jk)^2 / (D_ij K_kk),
    D_ij = K_ii + K_jj - 2 K_ij,   M = {k in O, k != i, j : K_kk > 0},

(0 when ``D_ij = 0``: a copy). Row ``i``'s score is ``q_i = a_i / median_l a_l`` with
``a_i = min_{j != i} a_ij`` (scale-free like the copy check's ratio), flagged when
``q_i < cluster_threshold`` (default 0.1). Isotropic noise keeps ``a_ij ~ 1/d`` for a
colluding pair at any noise scale ``r``; a row's partner in the minimum is another colluder.

Measured on the robustness benchmark's digits MLP updates (n = 10, 20, 40; Dirichlet alpha
0.1, 0.3, 1.0; 2 seeds; 4 FedAvg rounds; 30% colluders built by ``min_max`` or ALIE plus
``fedapp.attacks.noise.jitter``): colluders scored at most 0.05 at noise 0.5 and 2 typical
nearest-neighbour distances, 0.14 at 8; honest rows at least 0.22. Noise drawn *inside*
the span of the honest updates, rather than isotropic, escapes this check.

In the spirit of FoolsGold (Fung, Yoon, Beschastnikh, RAID 2020,
https://arxiv.org/abs/1808.04866), which flags sybils by the similarity of their updates;
here similarity is measured on what the others see of a pair's difference, so noise added
to hide it does not. Everything is computed from the ``n x n`` Gram matrix that the
screening already has (``screening_kernels``), in ``O(n^3)``, no pass over the ``(n, d)``
matrix: ``sum_k w_k (K_ik - K_jk)^2 = S_i + S_j - 2 (K W K)_ij`` with ``w_k = 1 / K_kk``,
``S = diag(K W K)``, minus the terms ``k = i, j``.
"""

from __future__ import annotations

import numpy as np
import torch

from fedapp.robust.distances import pairwise_sq_distances

__all__ = ["centred_gram", "cluster_ratio", "cluster_scores", "nearest_ratio",
           "nearest_sign_disagreement", "pair_alignment", "ratio_to_typical",
           "sign_copy_ratio"]


def centred_gram(gram: np.ndarray, observers: np.ndarray | None = None) -> np.ndarray:
    """``K = J G J^T`` with ``J = I - 1 w^T``, ``w`` uniform over ``observers`` (a boolean
    mask; default all rows): the Gram matrix of the rows centred on the observers' mean,
    from the Gram matrix ``G`` of the rows shifted by any common vector."""
    g = np.asarray(gram, dtype=np.float64)
    n = g.shape[0]
    w = np.ones(n) if observers is None else np.asarray(observers, dtype=np.float64)
    w = w / w.sum()
    row = (g @ w)[:, None]
    return g - row - row.T + float(w @ g @ w)


def pair_alignment(k: np.ndarray, observers: np.ndarray | None = None) -> np.ndarray:
    """``a_ij``, the mean of ``cos^2(u_i - u_j, y_k)`` over the other observers (a boolean
    mask, default all rows; module doc), from the centred Gram matrix ``k``; ``+inf`` on the
    diagonal, 0 for a pair of equal rows, ``+inf`` where no other observer is non-zero."""
    n = k.shape[0]
    diag = np.diag(k).copy()
    live = diag > 0
    if observers is not None:
        live &= np.asarray(observers, dtype=bool)
    w = np.where(live, 1.0 / np.where(live, diag, 1.0), 0.0)
    kwk = (k * w[None, :]) @ k
    s = np.diag(kwk)
    total = s[:, None] + s[None, :] - 2.0 * kwk
    # remove k = i and k = j: (K_ii - K_ji)^2 w_i and (K_ij - K_jj)^2 w_j
    gap_i = (diag[:, None] - k) ** 2 * w[:, None]
    total = total - gap_i - gap_i.T
    count = live.sum() - live[:, None].astype(int) - live[None, :].astype(int)
    dist = np.maximum(diag[:, None] + diag[None, :] - 2.0 * k, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.maximum(total, 0.0) / (dist * count)
    a = np.where(count > 0, a, np.inf)
    a = np.where((dist <= 0) & (count > 0), 0.0, a)
    np.fill_diagonal(a, np.inf)
    return a if n > 1 else np.full((1, 1), np.inf)


def cluster_ratio(gram: np.ndarray, observers: np.ndarray | None = None) -> np.ndarray:
    """``q_i = a_i / median_l a_l`` with ``a_i = min_j a_ij`` (module doc) from the Gram
    matrix of the rows under any common shift; ``observers`` as in ``pair_alignment``
    (all rows when it holds fewer than 3). Rows with ``q_i`` far below 1 differ from some
    other row only by noise that no other update shares. Ones for fewer than 3 rows (no
    third row to see a pair's difference); where the median is 0, rows with ``a_i = 0``
    get 0 and the others infinity."""
    n = gram.shape[0]
    if n < 3:
        return np.ones(n)
    if observers is not None and int(np.count_nonzero(observers)) < 3:
        observers = None
    nearest = pair_alignment(centred_gram(gram, observers), observers).min(axis=1)
    typical = float(np.median(nearest))
    if typical > 0 and np.isfinite(typical):
        return nearest / typical
    return np.where(nearest > 0, np.inf, 0.0)


def cluster_scores(gram: np.ndarray, threshold: float, observers: torch.Tensor) -> torch.Tensor:
    """``cluster_ratio`` as float64 torch, observed by the rows of the boolean ``observers``
    (detection: the rows the norm check leaves) when ``threshold > 0``, else ones (off)."""
    if threshold <= 0:
        return torch.ones(gram.shape[0], dtype=torch.float64)
    return torch.from_numpy(cluster_ratio(gram, observers.numpy()))


def sign_copy_ratio(sign_gram: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Colluders who share one sign pattern: ``q_i = s_i / median_l s_l`` with ``s_i`` row
    ``i``'s smallest sign disagreement with another row,

        s_ij = (C_ij - A_ij) / (2 C_ij),   A = S S^T,   C = |S| |S|^T,   S = sign(U),

    the share of the coordinates where both rows are non-zero on which their signs differ
    (``sign_gram`` is ``A``, ``support`` is ``C``; a pair with no such coordinate counts
    as 1/2, no evidence). Fang's attack (Fang, Cao, Jia, Gong, USENIX Security 2020,
    https://arxiv.org/abs/1911.11815) gives every colluder the sign ``-s_j`` of the honest
    mean on every coordinate and draws the magnitudes independently, so the rows are no
    copies by distance, and their noise is not isotropic enough for the cluster check, but
    they agree in sign everywhere (``s_ij = 0``); honest updates disagree on 20-40% of the
    coordinates even at Dirichlet alpha 1.0 (measured on the robustness benchmark's digits
    MLP, n 10-40). Scale-free like ``cluster_ratio``: ``q_i`` far below 1 flags the row.
    Ones for fewer than 2 rows; where the median is 0, rows with ``s_i = 0`` get 0 and the
    others infinity."""
    if np.shape(sign_gram)[0] < 2:
        return np.ones(np.shape(sign_gram)[0])
    nearest = nearest_sign_disagreement(sign_gram, support)
    typical = float(np.median(nearest))
    if typical > 0:
        return nearest / typical
    return np.where(nearest > 0, np.inf, 0.0)


def nearest_sign_disagreement(sign_gram: np.ndarray, support: np.ndarray) -> np.ndarray:
    """``s_i = min_{j != i} s_ij`` (``sign_copy_ratio``'s formula) from ``A`` and ``C``;
    infinity for a single row."""
    a = np.asarray(sign_gram, dtype=np.float64)
    c = np.asarray(support, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(c > 0, (c - a) / (2.0 * c), 0.5)
    np.fill_diagonal(s, np.inf)
    return s.min(axis=1)


def ratio_to_typical(sq_dist: torch.Tensor) -> torch.Tensor:
    """``q_i = nn_i / median_j nn_j`` from squared pairwise distances (``nearest_ratio``)."""
    n = sq_dist.shape[0]
    if n < 2:
        return torch.ones(n, dtype=torch.float64)
    dist = sq_dist.clone().fill_diagonal_(float("inf"))
    nearest = dist.min(dim=1).values.sqrt()
    typical = torch.quantile(nearest, 0.5)
    if float(typical) > 0:
        return nearest / typical
    return torch.where(nearest > 0, torch.full_like(nearest, float("inf")),
                       torch.zeros_like(nearest))


def nearest_ratio(updates: torch.Tensor) -> torch.Tensor:
    """``q_i = nn_i / median_j nn_j`` as float64, where ``nn_i = min_{j != i} ||u_i - u_j||``
    (one Gram matrix, ``pairwise_sq_distances``). Copies have ``q = 0``. When half or more
    of the rows have a copy (median 0), rows with a copy get 0 and the others infinity; a
    single row gets 1."""
    return ratio_to_typical(pairwise_sq_distances(updates))
