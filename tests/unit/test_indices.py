"""Index-set encodings: exact round trip, cheaper form chosen, strict decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedapp.compression.indices import (
    MODE_BITMAP,
    MODE_VARINT,
    PayloadError,
    decode_indices,
    encode_indices,
    varint_decode,
    varint_encode,
)

SETTINGS = settings(max_examples=150, deadline=None, database=None)


def ref_leb128(values: list[int]) -> bytes:
    """Independent scalar reference: unsigned LEB128, one value at a time."""
    out = bytearray()
    for v in values:
        while True:
            byte, v = v & 0x7F, v >> 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


@st.composite
def index_sets(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    d = draw(st.integers(1, 3000))
    density = draw(st.sampled_from([0.0005, 0.01, 0.1, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    mask = np.random.default_rng(seed).random(d) < density
    return np.flatnonzero(mask), d


@SETTINGS
@given(index_sets())
def test_round_trip_exact_and_smaller_form_chosen(case: tuple[np.ndarray, int]) -> None:
    idx, d = case
    enc = encode_indices(idx, d)
    assert enc.dtype == np.uint8
    tail = np.array([7, 200, 0], dtype=np.uint8)  # bytes after the section stay untouched
    got, used = decode_indices(np.concatenate([enc, tail]), d, idx.size)
    np.testing.assert_array_equal(got, idx)
    assert used == enc.size
    deltas = np.diff(idx, prepend=0).tolist()
    varint_size = len(ref_leb128(deltas))
    bitmap_size = (d + 7) // 8
    assert enc.size == 1 + min(varint_size, bitmap_size)
    assert enc[0] == (MODE_VARINT if varint_size < bitmap_size else MODE_BITMAP)


def test_form_choice_examples() -> None:
    d = 10_000
    sparse = np.array([3, 500, 9_999])
    dense = np.arange(0, d, 2)
    assert encode_indices(sparse, d)[0] == MODE_VARINT
    assert encode_indices(sparse, d).size == 1 + len(ref_leb128([3, 497, 9_499]))
    assert encode_indices(dense, d)[0] == MODE_BITMAP
    assert encode_indices(dense, d).size == 1 + d // 8


@pytest.mark.parametrize("v", [0, 1, 127, 128, 16_383, 16_384, 2**21, 2**28 - 1, 2**35 - 1])
def test_varint_matches_reference(v: int) -> None:
    values = np.array([v, 5, v], dtype=np.int64)
    enc = varint_encode(values)
    assert enc.tobytes() == ref_leb128([v, 5, v])
    got, used = varint_decode(enc, 3)
    np.testing.assert_array_equal(got, values)
    assert used == enc.size


def _varint_section(deltas: list[int]) -> np.ndarray:
    return np.frombuffer(bytes([MODE_VARINT]) + ref_leb128(deltas), dtype=np.uint8)


def _bitmap_section(bits: list[int]) -> np.ndarray:
    body = np.packbits(np.array(bits, dtype=np.uint8))
    return np.concatenate([np.array([MODE_BITMAP], dtype=np.uint8), body])


@pytest.mark.parametrize(
    ("buf", "d", "k", "reason"),
    [
        (np.zeros(0, np.uint8), 10, 1, "mode byte"),
        (np.array([9, 0], np.uint8), 10, 1, "unknown index encoding mode 9"),
        (_bitmap_section([1, 0, 1, 0, 0, 0, 0, 0])[:1], 10, 2, "truncated bitmap"),
        (_bitmap_section([1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]), 10, 3, "out of range"),
        (_bitmap_section([1, 0, 1, 0, 0, 0, 0, 0, 0, 0]), 10, 3, "holds 2 indices"),
        (_varint_section([1, 2])[:-1], 10, 2, "truncated"),
        (_varint_section([1, 0, 2]), 10, 3, "not strictly increasing"),
        (_varint_section([4, 6]), 10, 2, "out of range"),
        (_varint_section([12]), 10, 1, "out of range"),
        (np.array([MODE_VARINT, 0x81, 0x80, 0x80, 0x80, 0x80, 0x00], np.uint8), 10, 1, "long"),
        (np.array([MODE_VARINT, 0x81, 0x00], np.uint8), 10, 1, "non-minimal"),
        (_varint_section([1]), 10, 11, "inconsistent"),
        (_varint_section([1]).astype(np.int64), 10, 1, "uint8"),
    ],
)
def test_malformed_sections_raise(buf: np.ndarray, d: int, k: int, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        decode_indices(buf, d, k)


@pytest.mark.parametrize(
    ("idx", "d"),
    [([2, 1], 5), ([1, 1], 5), ([-1, 2], 5), ([0, 5], 5), ([[0, 1]], 5), ([0.0, 1.0], 5)],
)
def test_encoder_rejects_invalid_sets(idx: list, d: int) -> None:
    with pytest.raises(ValueError, match="indices"):
        encode_indices(np.array(idx), d)


def test_empty_set_round_trips() -> None:
    enc = encode_indices(np.zeros(0, np.int64), 100)
    got, used = decode_indices(enc, 100, 0)
    assert got.size == 0 and used == enc.size
