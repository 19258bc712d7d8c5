"""Magnitude top-k sparsification (Aji & Heafield 2017; Stich et al. 2018).

Pure numpy; used by the ``topk`` and ``topk-qsgd`` codecs of
:mod:`fedapp.compression.codecs`, which send the kept indices
(:mod:`fedapp.compression.indices`) and their values.
"""

from __future__ import annotations

import numpy as np

__all__ = ["k_for", "topk_indices"]


def k_for(d: int, fraction: float) -> int:
    """Number of kept entries: ``k = clip(round(fraction * d), 1, d)`` (round half to even)."""
    return max(1, min(d, round(fraction * d)))


def topk_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the ``k`` entries of largest ``|x_i|``; exactly ``k`` of them.

    With ``t`` the k-th largest magnitude, keep every ``i`` with ``|x_i| > t`` and then the
    lowest indices with ``|x_i| == t`` until ``k`` are kept (deterministic tie-break). O(d).
    """
    d = x.size
    if k >= d:
        return np.arange(d, dtype=np.int64)
    a = np.abs(x)
    t = np.partition(a, d - k)[d - k]
    mask = a > t
    ties = np.flatnonzero(a == t)[: k - int(mask.sum())]
    mask[ties] = True
    return np.flatnonzero(mask).astype(np.int64)
