"""Codecs: lossless round trips, lossy error bounds, unbiasedness, sizes, rejected updates.
Strict decoding of malformed and fuzzed payloads: ``test_codec_payloads.py``."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedapp.compression import CODEC_NAMES, CodecSpec, decode, encode
from fedapp.compression.codecs import k_for, nbytes, pack_bits, unpack_bits
from fedapp.compression.indices import MODE_VARINT
from tests.unit.codec_vectors import vec

SETTINGS = settings(max_examples=120, deadline=None, database=None)


def reference_topk(x: np.ndarray, k: int) -> np.ndarray:
    """Independent reference: stable sort by -|x| keeps lower indices first among ties."""
    return np.sort(np.argsort(-np.abs(x), kind="stable")[:k])


def quant_step(v: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-element (m_B, delta_B) recomputed from the definition in the codecs docstring."""
    block = block or v.size
    m = np.array([np.abs(v[i : i + block]).max() for i in range(0, v.size, block)], np.float64)
    m = np.repeat(m, block)[: v.size]
    return m, 2.0 * m / ((1 << bits) - 1)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("name", "gzip", "topk-qsgd"),
        ("topk", 0.0, "(0, 1]"),
        ("topk", 1.5, "(0, 1]"),
        ("topk", float("nan"), "(0, 1]"),
        ("topk", True, "(0, 1]"),
        ("bits", 0, "1..8"),
        ("bits", 9, "1..8"),
        ("bits", 4.0, "1..8"),
        ("block_size", -1, "positive int"),
        ("stochastic", 1, "True or False"),
        ("seed", -3, "non-negative"),
    ],
)
def test_spec_errors_name_field_value_and_allowed(field: str, value: object, allowed: str) -> None:
    with pytest.raises(ValueError) as err:
        CodecSpec(**{field: value})
    msg = str(err.value)
    assert f"CodecSpec.{field}={value!r}" in msg and allowed in msg


def test_spec_is_frozen_and_all_names_construct() -> None:
    for name in CODEC_NAMES:
        CodecSpec(name=name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        CodecSpec().bits = 4  # type: ignore[misc]


def test_identity_round_trip_is_bit_exact() -> None:
    x = vec(257)
    x[3] = -0.0
    enc = encode(x, CodecSpec("none"))
    y = decode(enc)
    assert y.dtype == np.float32 and y.tobytes() == x.tobytes()
    assert nbytes(enc) == 4 * x.size


def test_header_is_scalars_and_payload_one_uint8_buffer() -> None:
    for name in CODEC_NAMES:
        enc = encode(vec(50), CodecSpec(name, topk=0.2, bits=3, block_size=7))
        assert enc.payload.dtype == np.uint8 and enc.payload.ndim == 1
        assert sorted(enc.header) == sorted(["codec", "version", "d", "k", "bits", "block"])
        assert all(isinstance(v, (int, str)) for v in enc.header.values())


def test_fp16_matches_cast_and_saturates() -> None:
    x = vec(300)
    y = decode(encode(x, CodecSpec("fp16")))
    np.testing.assert_array_equal(y, x.astype(np.float16).astype(np.float32))
    big = np.array([1e6, -1e6, 1.0], np.float32)
    np.testing.assert_array_equal(decode(encode(big, CodecSpec("fp16"))), [65504, -65504, 1])


def test_k_for() -> None:
    assert k_for(1000, 0.01) == 10
    assert k_for(100, 0.07) == 7  # 0.07 * 100 = 7.000000000000001; never rounds up to 8
    assert k_for(10, 1e-9) == 1
    assert k_for(10, 1.0) == 10


@SETTINGS
@given(
    d=st.integers(1, 400),
    frac=st.floats(0.001, 1.0),
    seed=st.integers(0, 2**32 - 1),
    levels=st.sampled_from([3, 50, 0]),
)
def test_topk_keeps_exactly_the_k_largest(d: int, frac: float, seed: int, levels: int) -> None:
    rng = np.random.default_rng(seed)
    # few distinct magnitudes -> many ties; levels=0 -> continuous values
    x = rng.integers(-levels, levels + 1, d) if levels else rng.standard_normal(d)
    x = x.astype(np.float32)
    enc = encode(x, CodecSpec("topk", topk=frac))
    k = k_for(d, frac)
    kept = reference_topk(x, k)
    expected = np.zeros(d, np.float32)
    expected[kept] = x[kept]
    assert enc.header["k"] == k
    np.testing.assert_array_equal(decode(enc), expected)


def test_topk_with_k_equal_d_is_lossless() -> None:
    x = vec(333, seed=4)
    np.testing.assert_array_equal(decode(encode(x, CodecSpec("topk", topk=1.0))), x)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("block", [0, 1, 7, 64])
def test_deterministic_quantisation_error_at_most_half_step(bits: int, block: int) -> None:
    x = vec(1000, seed=bits)
    y = decode(encode(x, CodecSpec("qsgd", bits=bits, block_size=block)))
    m, step = quant_step(x, bits, block)
    err = np.abs(x.astype(np.float64) - y)
    assert np.all(err <= step / 2 * (1 + 1e-9) + 2.0**-23 * m)


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_stochastic_quantisation_error_below_one_step(bits: int) -> None:
    x = vec(1000, seed=9)
    y = decode(encode(x, CodecSpec("qsgd", bits=bits, block_size=10, stochastic=True)))
    m, step = quant_step(x, bits, 10)
    assert np.all(np.abs(x.astype(np.float64) - y) <= step * (1 + 1e-9) + 2.0**-23 * m)


def test_stochastic_rounding_is_unbiased_and_deterministic_is_not() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-1.0, 1.0, 16).astype(np.float32)
    x[0] = 1.0  # m = 1, bits=2 -> grid {-1, -1/3, 1/3, 1}, step 2/3
    x[1:5] = [-0.5, 0.5, 0.0, -2.0 / 3.0]  # a quarter/half of a step away from the grid
    n, step = 3000, 2.0 / 3.0
    spec = CodecSpec("qsgd", bits=2, stochastic=True)
    mean = np.mean([decode(encode(x, spec, seed=s)) for s in range(n)], axis=0, dtype=np.float64)
    tol = 5 * step / (2 * math.sqrt(n))  # 5 sigma: var per element <= step**2 / 4
    np.testing.assert_allclose(mean, x, rtol=0, atol=tol)
    det = decode(encode(x, CodecSpec("qsgd", bits=2)))
    assert np.abs(det - x).max() > 5 * tol  # the same check would catch a biased rounding


def test_stochastic_rounding_is_seeded() -> None:
    x = vec(500)
    spec = CodecSpec("qsgd", bits=2, stochastic=True, seed=7)
    a, b = encode(x, spec).payload, encode(x, spec).payload
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, encode(x, spec, seed=8).payload)


def test_zero_block_decodes_to_zero() -> None:
    x = np.zeros(20, np.float32)
    x[15:] = 3.0
    y = decode(encode(x, CodecSpec("qsgd", bits=3, block_size=5)))
    np.testing.assert_array_equal(y[:15], 0.0)
    np.testing.assert_allclose(y[15:], 3.0)


@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_are_packed_densely(bits: int) -> None:
    codes = np.random.default_rng(bits).integers(0, 1 << bits, 1001).astype(np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.size == math.ceil(1001 * bits / 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, 1001), codes)
    enc = encode(vec(1001), CodecSpec("qsgd", bits=bits, block_size=100))
    assert nbytes(enc) == 4 * 11 + math.ceil(1001 * bits / 8)


@pytest.mark.parametrize("block", [0, 3])
def test_topk_qsgd_support_and_error(block: int) -> None:
    x = vec(2000, seed=3)
    enc = encode(x, CodecSpec("topk-qsgd", topk=0.05, bits=4, block_size=block))
    y = decode(enc)
    kept = reference_topk(x, 100)
    np.testing.assert_array_equal(y[np.setdiff1d(np.arange(2000), kept)], 0.0)
    m, step = quant_step(x[kept], 4, block)
    assert np.all(np.abs(x[kept].astype(np.float64) - y[kept]) <= step / 2 * (1 + 1e-9) + m * 1e-7)
    assert enc.payload[0] == MODE_VARINT  # 100 of 2000: varints are cheaper than the bitmap
    idx_bytes = 1 + int(np.sum(np.diff(kept, prepend=0) >= 128)) + 100
    assert nbytes(enc) == idx_bytes + 4 * math.ceil(100 / (block or 100)) + 50


@pytest.mark.parametrize(
    "x", [np.array([1.0, np.nan]), np.array([np.inf]), np.zeros(0), np.zeros((2, 2)), [1e39]]
)
def test_encode_rejects_bad_updates(x: object) -> None:
    with pytest.raises(ValueError, match="update"):
        encode(x, CodecSpec("none"))  # type: ignore[arg-type]
