"""Encodings of a sorted index set ``S = {i_0 < i_1 < ... < i_{k-1}} subset of [0, d)``.

Two forms; :func:`encode_indices` picks whichever is smaller and writes a one-byte mode tag
first, so the encoded form says which it chose:

* ``MODE_BITMAP`` (0): a packed bitmap, bit ``i`` set iff ``i in S`` (``np.packbits`` order,
  most significant bit first); ``ceil(d / 8)`` bytes, padding bits zero.
* ``MODE_VARINT`` (1): the deltas ``g_0 = i_0``, ``g_j = i_j - i_{j-1}`` (``>= 1``) written as
  unsigned LEB128 varints: 7 payload bits per byte, least significant group first, high bit
  set on every byte but the last of a value.  ``sum_j ceil(max(1, bitlen(g_j)) / 7)`` bytes.

Everything is vectorised with numpy: the only Python loops run over the (at most five) byte
positions of a varint, never over the elements.  Decoding validates strictly and raises
:class:`PayloadError` for any malformed input.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MAX_D",
    "MAX_VARINT_BYTES",
    "MODE_BITMAP",
    "MODE_VARINT",
    "PayloadError",
    "bitmap_nbytes",
    "decode_indices",
    "encode_indices",
    "varint_decode",
    "varint_encode",
    "varint_lengths",
]

MODE_BITMAP = 0
MODE_VARINT = 1
MAX_VARINT_BYTES = 5  # 35 bits: enough for every value below MAX_D
MAX_D = 2**31 - 1  # largest supported vector length; keeps all index arithmetic in int64


class PayloadError(ValueError):
    """A compressed payload is malformed; the message names the reason.

    Defined here (the lowest layer of the package) so that index decoding can raise it;
    re-exported by :mod:`fedapp.compression.codecs` and :mod:`fedapp.compression`.
    """


def bitmap_nbytes(d: int) -> int:
    """Bytes of a packed bitmap over ``d`` positions: ``ceil(d / 8)`` (without the mode tag)."""
    return (d + 7) // 8


def varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes of each value in unsigned LEB128: ``max(1, ceil(bitlen(v) / 7))``.

    Values must be non-negative and below ``2**35`` (checked by :func:`varint_encode`).
    """
    v = np.asarray(values, dtype=np.int64)
    lens = np.ones(v.shape, dtype=np.int64)
    for j in range(1, MAX_VARINT_BYTES):
        lens += v >= (1 << (7 * j))
    return lens


def varint_encode(values: np.ndarray) -> np.ndarray:
    """Unsigned LEB128 encoding of a 1-D array of non-negative integers ``< 2**35``.

    Value ``v`` becomes bytes ``b_j = ((v >> 7j) & 0x7F) | (0x80 if j < L-1 else 0)`` for
    ``j = 0 .. L-1``, ``L = max(1, ceil(bitlen(v) / 7))`` (the minimal length).
    """
    v = np.asarray(values)
    if v.ndim != 1 or (v.size and not np.issubdtype(v.dtype, np.integer)):
        raise ValueError(f"varint_encode needs a 1-D integer array, got {v.dtype} {v.shape}")
    v = v.astype(np.int64)
    if v.size and (v.min() < 0 or v.max() >= 1 << (7 * MAX_VARINT_BYTES)):
        raise ValueError(f"varint values must lie in [0, 2**{7 * MAX_VARINT_BYTES})")
    lens = varint_lengths(v)
    ends = np.cumsum(lens)
    starts = ends - lens
    out = np.empty(int(ends[-1]) if v.size else 0, dtype=np.uint8)
    for j in range(MAX_VARINT_BYTES):  # byte positions, not elements
        sel = lens > j
        if not sel.any():
            break
        group = (v[sel] >> (7 * j)) & 0x7F
        more = np.where(lens[sel] > j + 1, 0x80, 0)
        out[starts[sel] + j] = (group | more).astype(np.uint8)
    return out


def varint_decode(buf: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    """Decode the first ``count`` LEB128 varints of ``buf``; return ``(values, bytes_used)``.

    Raises :class:`PayloadError` if the stream is truncated, a varint is longer than
    ``MAX_VARINT_BYTES`` or is not minimally encoded (a last byte of zero after others).
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64), 0
    window = buf[: count * MAX_VARINT_BYTES]
    ends = np.flatnonzero(window < 0x80)[:count]
    if ends.size < count:
        raise PayloadError(
            f"truncated or over-long varint stream: {ends.size} of {count} values terminate "
            f"within {window.size} bytes"
        )
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lens = ends - starts + 1
    longest = int(lens.max())
    if longest > MAX_VARINT_BYTES:
        raise PayloadError(f"varint of {longest} bytes exceeds the maximum {MAX_VARINT_BYTES}")
    if np.any((lens > 1) & (window[ends] == 0)):
        raise PayloadError("non-minimal varint (final byte is zero)")
    values = np.zeros(count, dtype=np.int64)
    for j in range(longest):  # byte positions, not elements
        sel = lens > j
        values[sel] |= (window[starts[sel] + j].astype(np.int64) & 0x7F) << (7 * j)
    return values, int(ends[-1]) + 1


def encode_indices(idx: np.ndarray, d: int) -> np.ndarray:
    """Encode a strictly increasing index array ``idx`` (values in ``[0, d)``) as uint8.

    Output is ``[mode] + body``; the varint form is chosen iff it is strictly smaller than
    the bitmap (``sum varint_lengths(deltas) < ceil(d / 8)``), so on ties the bitmap wins.
    Raises ``ValueError`` for an invalid index set (a caller bug, not a payload error).
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d <= MAX_D:
        raise ValueError(f"d must be an int in [0, {MAX_D}], got {d!r}")
    ix = np.asarray(idx)
    if ix.ndim != 1 or (ix.size and not np.issubdtype(ix.dtype, np.integer)):
        raise ValueError(f"indices must be a 1-D integer array, got {ix.dtype} {ix.shape}")
    ix = ix.astype(np.int64)
    if ix.size and (ix[0] < 0 or ix[-1] >= d or np.any(np.diff(ix) <= 0)):
        raise ValueError(f"indices must be strictly increasing and lie in [0, {d})")
    deltas = np.diff(ix, prepend=np.int64(0))
    if int(varint_lengths(deltas).sum()) < bitmap_nbytes(int(d)):
        body = varint_encode(deltas)
        mode = MODE_VARINT
    else:
        mask = np.zeros(int(d), dtype=bool)
        mask[ix] = True
        body = np.packbits(mask)
        mode = MODE_BITMAP
    return np.concatenate([np.array([mode], dtype=np.uint8), body])


def decode_indices(buf: np.ndarray, d: int, k: int) -> tuple[np.ndarray, int]:
    """Decode ``k`` indices out of ``d`` from the start of ``buf`` (uint8).

    Returns ``(idx, bytes_used)`` with ``idx`` strictly increasing int64 in ``[0, d)``; bytes
    after ``bytes_used`` are left to the caller.  Raises :class:`PayloadError` for an unknown
    mode, a truncated body, a bitmap with bits set beyond ``d`` or a population other than
    ``k``, a zero delta (not strictly increasing) or an index ``>= d``.
    """
    if not 0 <= k <= d <= MAX_D:
        raise PayloadError(f"inconsistent index set size: k={k}, d={d}")
    if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.ndim != 1:
        raise PayloadError("index section must be a 1-D uint8 numpy array")
    if buf.size < 1:
        raise PayloadError("truncated payload: missing the index-encoding mode byte")
    mode = int(buf[0])
    if mode == MODE_BITMAP:
        nb = bitmap_nbytes(d)
        if buf.size < 1 + nb:
            raise PayloadError(f"truncated bitmap: {buf.size - 1} of {nb} bytes")
        bits = np.unpackbits(buf[1 : 1 + nb])
        if bits[d:].any():
            raise PayloadError(f"index out of range: bitmap has bits set at positions >= d={d}")
        idx = np.flatnonzero(bits).astype(np.int64)
        if idx.size != k:
            raise PayloadError(f"bitmap holds {idx.size} indices but the header says k={k}")
        return idx, 1 + nb
    if mode == MODE_VARINT:
        deltas, used = varint_decode(buf[1:], k)
        if k and (deltas.max() >= d):
            raise PayloadError(f"index out of range: a delta >= d={d}")
        if k > 1 and deltas[1:].min() < 1:
            raise PayloadError("indices not strictly increasing (a zero delta)")
        idx = np.cumsum(deltas)  # each delta < d <= 2**31, so no int64 overflow
        if k and idx[-1] >= d:
            raise PayloadError(f"index out of range: {int(idx[-1])} >= d={d}")
        return idx, 1 + used
    raise PayloadError(f"unknown index encoding mode {mode} (known: bitmap=0, varint=1)")
