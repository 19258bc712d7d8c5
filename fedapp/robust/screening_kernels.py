"""Blocked kernels of the default screening: every score of ``detection`` in two passes.

The ``(n, d)`` matrix ``X`` (float32 or float64, any strides) is read in blocks of
columns (``column_blocks``: at most ``KERNEL_BLOCK_ELEMENTS`` elements and at most 1/16 of
the matrix, so scratch memory stays a small fraction of ``X`` at every size). Nothing of the
matrix's size is ever allocated: the medians used as references exist one block at a
time, and only per-row sums (and the ``n x n`` Gram matrix) leave a block.

* ``squared_norms`` (pass 1): ``||x_i||^2``, float64 sums of float64 squares, so the
  norm check's suspects are known before any median.
* ``median_pass`` (pass 2): per block, the coordinate-wise median ``m`` by *selection*
  (``column_order.select_median``), and against it, in the same block: the sign counts
  ``P_i = #{j: x_ij > m_j}``, ``N_i = #{j: x_ij < m_j}``, the dots ``<x_i, m>``,
  ``||m||^2``, and the Gram matrix ``G += Y_b Y_b^T`` of the rows centered on the median,
  ``Y_b = X_b - m_b`` (float32 products added in float64; float64 throughout when ``n d
  <= BLOCK_ELEMENTS``, uncentered, so small inputs get exact distances). Distances do not
  change under a common shift, ``D_ij = G_ii + G_jj - 2 G_ij``; centering on the median
  rather than the mean keeps one huge row from shifting every other row far from 0, which
  would leave the float32 products no digits for the distances between honest rows.
  Given suspect rows ``S`` (pass 1's norm check), pass 2 also gives the median of the
  other rows, with its dots, from the same pass over them
  (``column_order.merged_medians``). Asked for (``signs``), it also adds up the sign
  Gram matrices ``sign(X_b) sign(X_b)^T`` and ``|sign(X_b)| |sign(X_b)|^T``
  (``collusion.sign_copy_ratio``; float32 products of 0 and +-1 per block, exact) over
  every ``sign_stride(d)``-th column: at most ``SIGN_COLUMNS`` columns, all of them for
  smaller models. A share of disagreeing signs estimated on 2^17 columns is off by at
  most 0.0014 (one standard error), far below the check's scale, and costs nothing next
  to the full pass, which the two extra matmuls would make half as slow again.
* ``clean_median_dots`` (pass 3, only when the copy or sign check suspects rows that the
  norm check did not): the median of the given rows, by selection, and its dots.

Sign counts are exact; dots are float32 (float64 for float64 input) products per block,
added in float64. Each pass reuses one set of block-sized buffers (``Scratch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedapp.robust.column_order import Scratch, merged_medians, select_median
from fedapp.robust.distances import BLOCK_ELEMENTS

#: Elements per block: 2 MiB of float32, so a block and its scratch stay in a core's L2
#: and L3 share (measured on 2 EPYC cores: 2**19 was 15-35% faster than 2**21) ...
KERNEL_BLOCK_ELEMENTS = 1 << 19
#: ... and blocks hold at most 1/SCRATCH_FRACTION of the matrix (scratch is a few) ...
SCRATCH_FRACTION = 16
#: ... but at least MIN_BLOCK_ELEMENTS (256 KiB of float32): small inputs are one block.
MIN_BLOCK_ELEMENTS = 1 << 16
_popcount = getattr(np, "bitwise_count", None)  # numpy >= 2.0
#: The sign Gram matrices use at most this many columns (every ``sign_stride(d)``-th one).
SIGN_COLUMNS = 1 << 17


def sign_stride(d: int) -> int:
    """Every how many columns the sign Gram matrices take one: ``ceil(d / SIGN_COLUMNS)``."""
    return max(1, -(-d // SIGN_COLUMNS))


def column_blocks(n: int, d: int, elements: int | None = None) -> list[slice]:
    """Slices of ``elements`` (default: ``KERNEL_BLOCK_ELEMENTS``, or ``n d / 16`` if that
    is smaller, but not under ``MIN_BLOCK_ELEMENTS``) elements' worth of columns."""
    if elements is None:
        elements = min(KERNEL_BLOCK_ELEMENTS,
                       max(MIN_BLOCK_ELEMENTS, (n * d) // SCRATCH_FRACTION))
    columns = max(1, elements // max(n, 1))
    return [slice(j, j + columns) for j in range(0, d, columns)]


def _blocks(x: np.ndarray) -> tuple[list[slice], Scratch]:
    n, d = x.shape
    blocks = column_blocks(n, d)
    return blocks, Scratch(n * (blocks[0].stop - blocks[0].start) if blocks else 0)


def _count_true(mask: np.ndarray) -> np.ndarray:
    """Per row of a boolean ``(n, c)`` block, how many entries are True (int64)."""
    if _popcount is None:
        return np.count_nonzero(mask, axis=1).astype(np.int64)
    return _popcount(np.packbits(mask, axis=1)).sum(axis=1, dtype=np.int64)


def _signs(block: np.ndarray, ref: np.ndarray, scratch: Scratch
           ) -> tuple[np.ndarray, np.ndarray]:
    """``(P, N)``: per row, the coordinates where ``block`` is above / below ``ref``."""
    mask = scratch.get("mask", block.shape, np.bool_)
    pos = _count_true(np.greater(block, ref, out=mask))
    return pos, _count_true(np.less(block, ref, out=mask))


def squared_norms(x: np.ndarray) -> np.ndarray:
    """Pass 1: ``||x_i||^2`` of every row, float64 sums of the float64 squares."""
    sq = np.zeros(x.shape[0], dtype=np.float64)
    blocks, scratch = _blocks(x)
    for cols in blocks:
        block = x[:, cols]
        b64 = scratch.get("f64", block.shape, np.float64)
        np.copyto(b64, block)
        sq += np.einsum("ij,ij->i", b64, b64)
    return sq


def sq_distances(gram: np.ndarray) -> np.ndarray:
    """``D_ij = G_ii + G_jj - 2 G_ij`` clamped at 0, with a zero diagonal."""
    diag = gram.diagonal().copy()
    dist = np.maximum(diag[:, None] + diag[None, :] - 2.0 * gram, 0.0)
    np.fill_diagonal(dist, 0.0)
    return dist


def add_gram(gram: np.ndarray, block: np.ndarray, center: np.ndarray | None,
             scratch: Scratch) -> None:
    """``gram += (B - c)(B - c)^T`` (float32 products for float32 input), or in float64
    without centering when ``center`` is None (module docstring)."""
    if center is None:
        b64 = scratch.get("f64", block.shape, np.float64)
        np.copyto(b64, block)
        gram += b64 @ b64.T
        return
    centered = scratch.get("centered", block.shape, block.dtype)
    np.subtract(block, center, out=centered)
    gram += centered @ centered.T


@dataclass
class RowSums:
    """Per-row sums against one reference vector ``m``: ``<x_i, m>`` and ``||m||^2``."""

    dots: np.ndarray
    ref_sq: float = 0.0

    @classmethod
    def zeros(cls, n: int) -> RowSums:
        return cls(np.zeros(n, dtype=np.float64))

    def add(self, block: np.ndarray, ref: np.ndarray, ref_exact: np.ndarray | None = None
            ) -> None:
        """Add one block: ``ref`` for the dots, ``ref_exact`` (default ``ref``) for
        ``||m||^2`` in float64."""
        self.dots += block @ ref
        ref64 = (ref if ref_exact is None else ref_exact).astype(np.float64)
        self.ref_sq += float(ref64 @ ref64)


@dataclass
class MedianPass:
    """What ``median_pass`` returns: sign counts and dots against the median of all rows,
    the Gram matrix of the rows centered on it, and (given suspects) the dots against
    the median of the other rows."""

    pos: np.ndarray
    neg: np.ndarray
    gram: np.ndarray
    all_rows: RowSums
    others: RowSums | None
    sign_gram: np.ndarray | None = None  # sum of sign(X_b) sign(X_b)^T (``signs=True``)
    sign_support: np.ndarray | None = None  # sum of |sign(X_b)| |sign(X_b)|^T


def add_sign_grams(out: MedianPass, block: np.ndarray, scratch: Scratch) -> None:
    """``out.sign_gram += S S^T`` and ``out.sign_support += |S| |S|^T`` for ``S =
    sign(block)``, float32 products (exact: integers far below 2^24 per block)."""
    assert out.sign_gram is not None and out.sign_support is not None
    if block.shape[1] == 0:
        return
    signs = scratch.get("signs", block.shape, np.float32)
    np.sign(block, out=signs, casting="unsafe")
    out.sign_gram += signs @ signs.T
    np.abs(signs, out=signs)
    out.sign_support += signs @ signs.T


def median_pass(x: np.ndarray, suspects: Sequence[int] = (), *,
                signs: bool = False) -> MedianPass:
    """Pass 2 (module docstring): sign counts, dots and the Gram matrix against the
    coordinate-wise median of all rows and, when ``suspects`` is not empty, dots against
    the median of the others (which must be at least one row); with ``signs``, the sign
    Gram matrices (``add_sign_grams``)."""
    n, d = x.shape
    suspect_set = set(suspects)
    suspects = sorted(suspect_set)
    clean = [i for i in range(n) if i not in suspect_set]
    out = MedianPass(np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
                     np.zeros((n, n), dtype=np.float64), RowSums.zeros(n),
                     RowSums.zeros(n) if suspects else None,
                     np.zeros((n, n)) if signs else None, np.zeros((n, n)) if signs else None)
    exact = n * d <= BLOCK_ELEMENTS
    blocks, scratch = _blocks(x)
    stride = sign_stride(d)
    for cols in blocks:
        block = x[:, cols]
        if out.others is None:
            med = select_median(block, scratch)
        else:
            med, med_clean = merged_medians(block, clean, suspects, scratch)
            out.others.add(block, med_clean)
        pos, neg = _signs(block, med, scratch)
        out.pos += pos
        out.neg += neg
        out.all_rows.add(block, med)
        add_gram(out.gram, block, None if exact else med, scratch)
        if signs:
            first = -cols.start % stride  # the block's first column on the stride
            add_sign_grams(out, x[:, cols.start + first:cols.stop:stride], scratch)
    return out


def reference_pass(x: np.ndarray, reference: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, RowSums]:
    """Sign counts, Gram matrix and dots against a given ``reference`` (cast to the
    matrix's dtype for the comparisons and dots, as given for ``||m||^2``). The rows are
    centered on the block's column mean, as ``pairwise_sq_distances`` does (the screening
    never passes a reference; this is ``detect_anomalies(..., reference=r)``)."""
    n, d = x.shape
    pos, neg = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    gram = np.zeros((n, n), dtype=np.float64)
    sums = RowSums.zeros(n)
    cast = reference.astype(x.dtype, copy=False)
    exact = n * d <= BLOCK_ELEMENTS
    blocks, scratch = _blocks(x)
    for cols in blocks:
        block = x[:, cols]
        p, q = _signs(block, cast[cols], scratch)
        pos += p
        neg += q
        sums.add(block, cast[cols], reference[cols])
        add_gram(gram, block, None if exact else block.mean(axis=0, dtype=block.dtype),
                 scratch)
    return pos, neg, gram, sums


def clean_median_dots(x: np.ndarray, rows: Sequence[int]) -> RowSums:
    """Pass 3: dots of every row against the coordinate-wise median of ``rows``."""
    sums = RowSums.zeros(x.shape[0])
    blocks, scratch = _blocks(x)
    for cols in blocks:
        block = x[:, cols]
        sums.add(block, select_median(block, scratch, rows))
    return sums


def median_signs(x: np.ndarray, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Sign counts of every row against the coordinate-wise median of ``rows`` (the rows
    that are no copy, ``detection``: copies of one crafted row would move the median)."""
    n = x.shape[0]
    pos, neg = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    blocks, scratch = _blocks(x)
    for cols in blocks:
        block = x[:, cols]
        p, q = _signs(block, select_median(block, scratch, rows), scratch)
        pos += p
        neg += q
    return pos, neg
