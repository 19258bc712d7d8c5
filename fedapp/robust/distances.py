"""Distance kernels shared by the rules, accumulated in float64, in bounded-memory blocks.

Inputs are float32 ``(n, d)`` matrices that can be large (``d`` is the number of
model parameters). Each kernel converts one block of at most ``BLOCK_ELEMENTS``
elements (or ``block_rows`` rows) to float64 at a time, so peak extra memory is
one block plus the ``n x n`` result, and no Python loop ever runs over coordinates.
"""

from __future__ import annotations

import torch

#: Float64 elements per converted block (2**21 elements = 16 MiB).
BLOCK_ELEMENTS = 1 << 21


def rows_per_block(d: int, block_rows: int | None = None) -> int:
    """Rows per block: ``block_rows`` if given, else as many as fit ``BLOCK_ELEMENTS``."""
    if block_rows is not None:
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        return block_rows
    return max(1, BLOCK_ELEMENTS // max(d, 1))


def pairwise_sq_distances(x: torch.Tensor, block_rows: int | None = None) -> torch.Tensor:
    """Squared Euclidean distances between all rows, as an ``(n, n)`` float64 matrix.

    Distances do not change when every row is shifted by the same vector, so they
    are computed on the centered rows ``y_i = x_i - m`` (``m`` = the column mean):
    one Gram matrix ``G = Y Y^T`` gives ``D_ij = G_ii + G_jj - 2 G_ij``, clamped at
    0 against rounding; the diagonal is exactly 0. Centering removes the component
    all updates share, which is what makes the Gram trick lose digits (``D_ij`` is
    a small difference of large terms); what remains is the spread between rows.

    By default ``G = sum_b Y_b Y_b^T`` over blocks of at most ``BLOCK_ELEMENTS / n``
    columns, added to a float64 accumulator. A matrix of at most ``BLOCK_ELEMENTS``
    elements (a single block) is converted to float64 as it is (no centering), so
    small inputs get exact distances (ties in the rules stay ties). Larger ones are
    centered and multiplied in float32, one BLAS call per block, about twice the
    speed of float64: rounding stays within a block and is relative to the spread
    between rows, not to their norms (Flower's MultiKrum uses an uncentered float32
    Gram of the whole weights). ``X`` is read once. With ``block_rows``, ``G`` is
    filled instead in float64 block by block of rows (upper triangle, mirrored),
    ``block_rows`` rows at a time, on the uncentered rows (the exact reference path,
    for tests and huge ``n``).
    Cost ``O(n^2 d)``, memory ``O(n^2 + BLOCK_ELEMENTS)`` (or ``O(n^2 + block_rows * d)``).
    """
    n, d = x.shape
    if block_rows is None:
        gram = torch.zeros(n, n, dtype=torch.float64)
        columns = max(1, BLOCK_ELEMENTS // max(n, 1))
        exact = n * d <= BLOCK_ELEMENTS
        for j in range(0, d, columns):
            block = x[:, j : j + columns]
            if exact:
                block = block.to(torch.float64)
                gram.addmm_(block, block.T)
            else:
                centered = block - block.mean(dim=0, keepdim=True)
                gram += (centered @ centered.T).to(torch.float64)
    else:
        rows = rows_per_block(d, block_rows)
        gram = torch.empty(n, n, dtype=torch.float64)
        starts = range(0, n, rows)
        for i in starts:
            a = x[i : i + rows].to(torch.float64)
            for j in starts:
                if j < i:
                    continue
                b = a if j == i else x[j : j + rows].to(torch.float64)
                block = a @ b.T
                gram[i : i + rows, j : j + rows] = block
                gram[j : j + rows, i : i + rows] = block.T
    sq_norms = gram.diagonal().clone()
    dist = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram).clamp_min_(0.0)
    dist.fill_diagonal_(0.0)
    return dist


def distances_to(x: torch.Tensor, z: torch.Tensor, block_rows: int | None = None) -> torch.Tensor:
    """Euclidean distances ``||x_i - z||`` of every row to one point, as a float64 ``n``-vector.

    Computed as a direct difference (no Gram trick), so it stays exact when the
    rows are close to ``z``.
    """
    n, d = x.shape
    rows = rows_per_block(d, block_rows)
    z64 = z.to(torch.float64)
    out = torch.empty(n, dtype=torch.float64)
    for i in range(0, n, rows):
        diff = x[i : i + rows].to(torch.float64) - z64
        out[i : i + rows] = torch.linalg.vector_norm(diff, dim=1)
    return out


def weighted_row_sum(
    x: torch.Tensor, coef: torch.Tensor, block_rows: int | None = None
) -> torch.Tensor:
    """``sum_i coef_i x_i`` as a float64 ``d``-vector, accumulated block by block."""
    n, d = x.shape
    rows = rows_per_block(d, block_rows)
    c64 = coef.to(torch.float64)
    out = torch.zeros(d, dtype=torch.float64)
    for i in range(0, n, rows):
        out += c64[i : i + rows] @ x[i : i + rows].to(torch.float64)
    return out
