"""Order statistics of every column of a block, vectorised over the columns.

``screening_kernels`` needs, per column block of the ``(n, d)`` update matrix, the
coordinate-wise median of all rows and of the rows no check suspects. Medians are
``(v_lo + v_hi) / 2`` of the two middle values (one for an odd count) in the block's
dtype, as ``coordinate.coordinate_median`` computes them, so they are the same numbers.

* ``select_median``: selection (``np.partition`` at ``k = count // 2``); the lower middle
  value of an even count is the largest of the rows before ``k``.
* ``merged_medians``: both medians when ``s`` suspect rows ``U`` are known. The order
  statistics of all rows come from merging ``U`` (sorted) into the clean rows ``C``: the
  ``r``-th smallest of ``C u U`` is ``min_i max(U_(i-1), C_(r-i))`` over the ways to take
  ``i`` of the ``r + 1`` smallest from ``U`` (``U_(-1) = C_(-1) = -inf``; ``union_rank``).
  Only ``C``'s ranks within ``s`` of its median are needed: one selection at ``C``'s
  median plus a few running extremes on either side (``extremes``) gives them, or one
  sort of ``C`` when more than ``EXTREME_RANKS`` are needed on a side. Either way one
  pass over ``C`` serves both medians, instead of two selections.
* ``sort_columns``: a few rows sorted by compare-exchange of adjacent rows (``np.sort``
  along the row axis costs a fixed overhead per column).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Suspect rows up to this many are sorted by a comparator network, more by ``np.sort``
#: (whose cost per column is mostly a fixed overhead).
NETWORK_ROWS = 6
#: Clean-row ranks up to this many below or above their median are found by running
#: extremes after one selection (``merged_medians``); more by a sort.
EXTREME_RANKS = 2


class Scratch:
    """Reusable contiguous buffers of one block's size, one per name and dtype."""

    def __init__(self, elements: int) -> None:
        self.elements = elements
        self._buffers: dict[tuple[str, np.dtype], np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, int], dtype: np.dtype | type) -> np.ndarray:
        """A contiguous ``shape`` array (contents undefined) in buffer ``name``."""
        key = (name, np.dtype(dtype))
        if key not in self._buffers:
            self._buffers[key] = np.empty(self.elements, dtype=dtype)
        return self._buffers[key][: shape[0] * shape[1]].reshape(shape)


def _middle(values: np.ndarray, exact_hi: bool) -> np.ndarray:
    """``(v_lo + v_hi) / 2`` of the two middle values of each column (one for an odd
    count; ``coordinate_median``'s formula). ``exact_hi``: ``values`` is partitioned, with
    only row ``rows // 2`` in place, so the lower middle of an even count is the largest of
    the rows before it; else ``values`` is sorted."""
    rows = values.shape[0]
    hi = values[rows // 2]
    if rows % 2:
        lo = hi
    elif exact_hi:
        lo = values[: rows // 2].max(axis=0)
    else:
        lo = values[rows // 2 - 1]
    return (lo + hi) / 2


def select_median(block: np.ndarray, scratch: Scratch, rows: Sequence[int] | None = None
                  ) -> np.ndarray:
    """The coordinate-wise median of ``block`` (or of its ``rows``) by selection."""
    count = block.shape[0] if rows is None else len(rows)
    part = scratch.get("select", (count, block.shape[1]), block.dtype)
    if rows is None:
        np.copyto(part, block)
    else:
        np.take(block, rows, axis=0, out=part, mode="clip")
    part.partition(count // 2, axis=0)
    return _middle(part, exact_hi=True)


def sort_columns(rows: np.ndarray) -> None:
    """Sort every column of ``rows`` ``(s, c)`` in place: for ``s <= NETWORK_ROWS`` by
    insertion (compare-exchange of adjacent rows, vectorised over the columns), else
    with ``np.sort``."""
    s = rows.shape[0]
    if s > NETWORK_ROWS:
        rows.sort(axis=0)
        return
    low = np.empty_like(rows[0])
    for i in range(1, s):
        for j in range(i, 0, -1):
            np.minimum(rows[j - 1], rows[j], out=low)
            np.maximum(rows[j - 1], rows[j], out=rows[j])
            rows[j - 1] = low


def union_rank(low: np.ndarray, high: np.ndarray, r: int, first: int = 0,
               size: int | None = None) -> np.ndarray:
    """Per column, the ``r``-th smallest (0-based) of the union of two column-sorted
    blocks, ``low`` ``(s, c)`` and ``C`` of ``size`` rows (default ``len(high)``) of which
    ``high`` holds ranks ``first, first + 1, ...``: ``min_i max(low_(i-1), C_(r-i))`` over
    ``i`` in ``[max(0, r + 1 - size), min(s, r + 1)]`` (module docstring)."""
    s, m = low.shape[0], len(high) if size is None else size
    best: np.ndarray | None = None
    for i in range(max(0, r + 1 - m), min(s, r + 1) + 1):
        if i == 0:
            term = high[r - first]
        elif r - i < 0:
            term = low[i - 1]
        else:
            term = np.maximum(low[i - 1], high[r - i - first])
        best = term.copy() if best is None else np.minimum(best, term, out=best)
    if best is None:
        raise ValueError(f"rank {r} is not in a union of {s} + {m} rows")
    return best


def extremes(rows: np.ndarray, t: int, largest: bool) -> np.ndarray:
    """The ``t`` largest (or smallest) values of every column of ``rows``, as ``(t, c)``
    in ascending order: a reduction for ``t = 1``, else an insertion of each row into the
    ``t`` kept so far (``2 t`` vectorised min / max per row)."""
    keep, carry = (np.maximum, np.minimum) if largest else (np.minimum, np.maximum)
    if t == 0:
        return rows[:0]
    if t == 1:
        return (rows.max(axis=0) if largest else rows.min(axis=0))[None]
    best = rows[:t].copy()
    sort_columns(best)
    if not largest:
        best = best[::-1].copy()  # descending: the largest kept value first
    x, other = np.empty_like(best[0]), np.empty_like(best[0])
    for row in rows[t:]:
        x[...] = row
        for j in range(t - 1, -1, -1):  # from the most extreme kept value down
            carry(best[j], x, out=other)
            keep(best[j], x, out=best[j])
            x, other = other, x
    return best if largest else best[::-1]


def merged_medians(block: np.ndarray, clean: Sequence[int], suspects: Sequence[int],
                   scratch: Scratch) -> tuple[np.ndarray, np.ndarray]:
    """``(median of all rows, median of the clean rows)`` of one block (module docstring):
    the clean rows' order statistics that the merge with the sorted suspects needs lie
    within a few ranks of their median, so a selection at their median and at most
    ``EXTREME_RANKS`` extremes on either side find them; a sort when more are needed."""
    n, c = block.shape
    m, s = len(clean), len(suspects)
    low = scratch.get("suspects", (s, c), block.dtype)
    np.take(block, suspects, axis=0, out=low, mode="clip")
    sort_columns(low)
    high = scratch.get("select", (m, c), block.dtype)
    np.take(block, clean, axis=0, out=high, mode="clip")
    k, first, last = m // 2, max(0, (n - 1) // 2 - s), min(m - 1, n // 2)
    if k - first <= EXTREME_RANKS and last - k <= EXTREME_RANKS:
        high.partition(k, axis=0)
        window = np.concatenate([extremes(high[:k], k - first, largest=True), high[k:k + 1],
                                 extremes(high[k + 1:], last - k, largest=False)])
    else:
        high.sort(axis=0)
        window = high[first:last + 1]
    lo = union_rank(low, window, (n - 1) // 2, first, m)
    hi = lo if n % 2 else union_rank(low, window, n // 2, first, m)
    clean_median = (window[(m - 1) // 2 - first] + window[m // 2 - first]) / 2
    return (lo + hi) / 2, clean_median
