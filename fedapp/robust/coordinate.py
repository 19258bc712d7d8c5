"""Coordinate-wise median and coordinate-wise trimmed mean.

Paper: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018, https://arxiv.org/abs/1803.01498

Both rules sort each coordinate over the ``n`` rows and work on blocks of
columns, so extra memory stays ``O(n * chunk_columns)`` whatever ``d`` is. With
equal weights (uniform, or equal example counts) only the sorted values are
needed: a CPU matrix then goes through numpy (``np.sort`` along axis 0 is
vectorised and several times faster than ``torch.sort``). Unequal weights also
need the sort permutation and use ``torch.sort``.
"""

from __future__ import annotations

import numpy as np
import torch

from fedapp.robust.base import (
    AggregationReport,
    AggregationResult,
    check_f,
    check_updates,
)
from fedapp.robust.distances import BLOCK_ELEMENTS


def _column_slices(n: int, d: int, chunk_columns: int | None) -> list[slice]:
    if chunk_columns is None:
        chunk_columns = max(1, BLOCK_ELEMENTS // max(n, 1))
    elif chunk_columns < 1:
        raise ValueError(f"chunk_columns must be >= 1, got {chunk_columns}")
    return [slice(j, j + chunk_columns) for j in range(0, d, chunk_columns)]


def _plain_numpy(updates: torch.Tensor, w: torch.Tensor) -> bool:
    """Equal weights and a CPU float matrix: the plain rule, computed with numpy."""
    return (
        updates.device.type == "cpu"
        and updates.dtype in (torch.float32, torch.float64)
        and bool((w == w[0]).all())
    )


def _median_block(block: np.ndarray) -> np.ndarray:
    """Median of each column of ``block`` ``(n, c)``: midpoint of the two middle values."""
    n = block.shape[0]
    values = np.sort(block, axis=0)
    return (values[(n - 1) // 2] + values[n // 2]) / 2


def _weighted_median_block(block: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted median of each column of ``block`` ``(n, c)``; ``w`` is float64 ``(n,)``.

    With ``C_k`` the cumulative weight of the ``k+1`` smallest values and ``W`` the
    total, the lower median is the first value with ``C_k >= W/2`` and the upper
    median the first with ``C_k > W/2``; the result is their midpoint. Uniform
    weights give the usual median (midpoint of the two middle values for even n).
    """
    n = block.shape[0]
    values, idx = torch.sort(block, dim=0, stable=True)
    cum = w[idx].cumsum(dim=0)
    half = float(w.sum()) / 2.0
    lo = (cum < half).sum(dim=0, keepdim=True).clamp_(max=n - 1)
    hi = (cum <= half).sum(dim=0, keepdim=True).clamp_(max=n - 1)
    return ((values.gather(0, lo) + values.gather(0, hi)) / 2.0).squeeze(0)


def coordinate_median(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    f: int = 0,
    chunk_columns: int | None = None,
) -> AggregationResult:
    """Coordinate-wise (weighted) median.

    ``agg_j = median_i x_ij`` for every coordinate ``j``; with weights, the weighted
    median (the value splitting the total weight in half; midpoint on a tie), so
    uniform weights give ``numpy.median``. Robust while the Byzantine rows hold
    less than half of the weight; ``f`` is only checked against ``n > 2f``.

    No row is selected or trimmed as a whole, so the report's index tuples are empty.
    """
    w = check_updates(updates, weights)
    n, d = updates.shape
    check_f("median", n, f)
    out = torch.empty(d, dtype=updates.dtype)
    if _plain_numpy(updates, w):
        x, out_np = updates.detach().numpy(), out.numpy()
        for cols in _column_slices(n, d, chunk_columns):
            out_np[cols] = _median_block(x[:, cols])
    else:
        for cols in _column_slices(n, d, chunk_columns):
            out[cols] = _weighted_median_block(updates[:, cols], w)
    return AggregationResult(out, AggregationReport("median", extra={"f": float(f)}))


def _trim_count(n: int, f: int | None, beta: float | None) -> int:
    """Rows to drop from each side: ``f``, or ``floor(beta * n)`` as in scipy/Flower."""
    if (f is None) == (beta is None):
        raise ValueError(f"trimmed-mean needs exactly one of f or beta, got f={f}, beta={beta}")
    if f is not None:
        check_f("trimmed-mean", n, f)
        return f
    assert beta is not None
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"trimmed-mean needs 0 <= beta < 0.5, got beta={beta}")
    return int(beta * n)


def _trimmed_rows(block: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """Per row of ``block`` ``(n, c)``, at how many columns a stable sort trims it.

    ``values`` holds the sorted columns and ``k >= 1``. A row is trimmed low where it
    lies below the ``k``-th smallest value and high where above the ``k``-th largest;
    rows tied with one of these edge values are trimmed by row index (lowest first
    on the low side, highest first on the high side), just enough to trim ``k`` per
    side, exactly as the permutation of a stable sort trims them.
    """
    n = block.shape[0]
    counts = np.zeros(n, dtype=np.float64)
    for edge, low in ((values[k - 1], True), (values[n - k], False)):
        side = block <= edge if low else block >= edge
        excess = np.count_nonzero(side, axis=0) - k  # > 0 where over k rows tie at the edge
        if (excess > 0).any():
            tied = block == edge
            rank = np.cumsum(tied, axis=0) if low else np.cumsum(tied[::-1], axis=0)[::-1]
            trim_tied = tied & (rank <= np.count_nonzero(tied, axis=0) - excess)
            side = (block < edge if low else block > edge) | trim_tied
        counts += np.count_nonzero(side, axis=1)
    return counts


def _trimmed_block(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain trimmed mean of each column of ``block`` (float64) and per-row trim counts."""
    n = block.shape[0]
    values = np.sort(block, axis=0)
    mean = values[k : n - k].sum(axis=0, dtype=np.float64) / (n - 2 * k)
    counts = _trimmed_rows(block, values, k) if k > 0 else np.zeros(n, dtype=np.float64)
    return mean, counts


def _weighted_trimmed_block(
    block: torch.Tensor, w: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted trimmed mean of each column of ``block`` (float64) and per-row trim counts."""
    n = block.shape[0]
    values, idx = torch.sort(block, dim=0, stable=True)
    kept = values[k : n - k].to(torch.float64)
    kept_w = w[idx[k : n - k]]
    total = kept_w.sum(dim=0)
    weighted = (kept_w * kept).sum(dim=0) / total.clamp_min(1e-300)
    mean = torch.where(total > 0, weighted, kept.mean(dim=0))
    counts = torch.zeros(n, dtype=torch.float64)
    if k > 0:
        dropped = torch.cat([idx[:k].reshape(-1), idx[n - k :].reshape(-1)])
        counts = torch.bincount(dropped, minlength=n).to(torch.float64)
    return mean, counts


def trimmed_mean(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    f: int | None = None,
    beta: float | None = None,
    chunk_columns: int | None = None,
) -> AggregationResult:
    """Coordinate-wise trimmed mean.

    For every coordinate ``j``, sort ``x_1j <= ... <= x_nj``, drop the ``k`` smallest
    and the ``k`` largest, and average the rest:
    ``agg_j = sum_{r=k}^{n-k-1} w_(r) x_(r)j / sum_{r=k}^{n-k-1} w_(r)``, where
    ``w_(r)`` is the weight of the row holding the ``r``-th value (uniform weights
    give Yin et al.'s rule; if every kept weight of a coordinate is 0 the kept values
    are averaged uniformly). ``k = f`` (needs ``n > 2f``), or ``k = floor(beta * n)``
    with ``0 <= beta < 0.5``; give exactly one. Yin et al. need ``k >= f``.

    The report's ``scores`` give, per row, the fraction of coordinates at which the
    row was trimmed.
    """
    w = check_updates(updates, weights)
    n, d = updates.shape
    k = _trim_count(n, f, beta)
    out = torch.empty(d, dtype=updates.dtype)
    trimmed_count = torch.zeros(n, dtype=torch.float64)
    if _plain_numpy(updates, w):
        x, out_np, count_np = updates.detach().numpy(), out.numpy(), trimmed_count.numpy()
        for cols in _column_slices(n, d, chunk_columns):
            mean, counts = _trimmed_block(x[:, cols], k)
            out_np[cols] = mean
            count_np += counts
    else:
        for cols in _column_slices(n, d, chunk_columns):
            mean_t, counts_t = _weighted_trimmed_block(updates[:, cols], w, k)
            out[cols] = mean_t.to(updates.dtype)
            trimmed_count += counts_t
    report = AggregationReport(
        "trimmed-mean",
        scores=tuple((trimmed_count / d).tolist()) if d > 0 else (),
        extra={"k": float(k)},
    )
    return AggregationResult(out, report)
