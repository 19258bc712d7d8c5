"""Codecs: lossless round trips, lossy error bounds, unbiasedness, sizes, strict decoding."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedapp.compression import CODEC_NAMES, CodecSpec, EncodedUpdate, PayloadError, decode, encode
from fedapp.compression.codecs import k_for, nbytes, pack_bits, unpack_bits
from fedapp.compression.indices import MAX_D, MODE_VARINT

SETTINGS = settings(max_examples=120, deadline=None, database=None)


def vec(d: int, seed: int = 0) -> np.ndarray:
    """Normal entries with per-region scales spanning 4 decades, plus exact zeros."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d) * 10.0 ** rng.integers(-2, 2, d)
    x[rng.random(d) < 0.1] = 0.0
    return x.astype(np.float32)


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


X = vec(20, seed=5)
BASE = {name: encode(X, CodecSpec(name, topk=0.25, bits=3, block_size=4)) for name in CODEC_NAMES}


def with_header(name: str, **changes: object) -> EncodedUpdate:
    return EncodedUpdate({**BASE[name].header, **changes}, BASE[name].payload)


def with_payload(name: str, payload: object) -> EncodedUpdate:
    return EncodedUpdate(dict(BASE[name].header), payload)  # type: ignore[arg-type]


def f32(*v: float) -> bytes:
    return np.array(v, "<f4").tobytes()


def topk_raw(deltas: bytes, values: bytes, d: int = 10, k: int = 2) -> EncodedUpdate:
    payload = np.frombuffer(bytes([MODE_VARINT]) + deltas + values, np.uint8)
    return EncodedUpdate(dict(codec="topk", version=1, d=d, k=k, bits=32, block=0), payload)


def qsgd_raw(scale: float) -> EncodedUpdate:
    payload = np.frombuffer(f32(scale) + bytes([0b00011011]), np.uint8)  # 4 codes of 2 bits
    return EncodedUpdate(dict(codec="qsgd", version=1, d=4, k=4, bits=2, block=4), payload)


BAD_MODE = with_payload("topk", np.append(np.uint8(5), BASE["topk"].payload[1:]))
INF_NONE = with_payload("none", np.frombuffer(f32(*X[:19], np.inf), np.uint8))
MALFORMED = [
    ("unknown codec", with_header("topk", codec="zstd"), "unknown codec 'zstd'"),
    ("codec not a string", with_header("none", codec=3), "unknown codec"),
    ("unknown version", with_header("qsgd", version=2), "unsupported qsgd version 2"),
    ("missing field", EncodedUpdate({"codec": "none"}, BASE["none"].payload), "missing"),
    ("extra field", with_header("none", extra=1), "unexpected"),
    ("float field", with_header("topk", d=20.0), "'d' must be an int"),
    ("bool field", with_header("topk", k=True), "'k' must be an int"),
    ("d zero", with_header("none", d=0, k=0), "d=0"),
    ("d huge", with_header("qsgd", d=MAX_D + 1, k=MAX_D + 1), "inconsistent"),
    ("k zero", with_header("topk", k=0), "k=0"),
    ("k above d", with_header("topk-qsgd", k=21), "k=21"),
    ("dense k != d", with_header("qsgd", k=5), "k == d"),
    ("bits 0", with_header("qsgd", bits=0), "bits=0"),
    ("bits 9", with_header("topk-qsgd", bits=9), "bits=9"),
    ("bits for none", with_header("none", bits=16), "bits=32"),
    ("block 0 quant", with_header("qsgd", block=0), "block=0"),
    ("block above n", with_header("topk-qsgd", block=6), "block=6"),
    ("block for fp16", with_header("fp16", block=4), "block=0"),
    ("d larger", with_header("none", d=21, k=21), "truncated"),
    ("d smaller", with_header("fp16", d=19, k=19), "oversized"),
    ("bits changed", with_header("qsgd", bits=4), "truncated"),
    ("block changed", with_header("qsgd", block=2), "truncated"),
    ("k changed", with_header("topk", k=4), "holds 5 indices"),
    *[(f"truncated {n}", with_payload(n, BASE[n].payload[:-1]), "truncated") for n in BASE],
    *[
        (f"oversized {n}", with_payload(n, np.append(BASE[n].payload, np.uint8(0))), "oversized")
        for n in BASE
    ],
    ("empty payload", with_payload("topk", np.zeros(0, np.uint8)), "mode byte"),
    ("float payload", with_payload("none", X), "uint8"),
    ("2-D payload", with_payload("none", BASE["none"].payload.reshape(8, 10)), "1-D uint8"),
    ("bytes payload", with_payload("none", BASE["none"].payload.tobytes()), "numpy"),
    ("not an EncodedUpdate", None, "payload"),
    ("header not a mapping", EncodedUpdate([], BASE["none"].payload), "mapping"),  # type: ignore
    ("index out of range", topk_raw(bytes([3, 7]), f32(1, 2)), "out of range"),
    ("index not increasing", topk_raw(bytes([3, 0]), f32(1, 2)), "not strictly increasing"),
    ("bad index mode", BAD_MODE, "unknown index encoding mode 5"),
    ("NaN value topk", topk_raw(bytes([3, 1]), f32(1, np.nan)), "non-finite value"),
    ("inf value none", INF_NONE, "non-finite value"),
    ("NaN value fp16", with_payload("fp16", np.full(40, 0xFF, np.uint8)), "non-finite value"),
    ("NaN scale", qsgd_raw(np.nan), "non-finite quantisation scale"),
    ("inf scale", qsgd_raw(np.inf), "non-finite quantisation scale"),
    ("negative scale", qsgd_raw(-1.0), "negative quantisation scale"),
]


def test_raw_builders_are_valid_when_unmutated() -> None:
    np.testing.assert_array_equal(decode(topk_raw(bytes([3, 1]), f32(1, 2)))[3:5], [1, 2])
    np.testing.assert_allclose(decode(qsgd_raw(3.0)), [-3, -1, 1, 3])
    top = float(np.finfo(np.float32).max)  # the decoded extremes must stay within float32
    y = decode(qsgd_raw(top))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, [-top, -top / 3, top / 3, top], rtol=1e-6)


@pytest.mark.parametrize(("case", "enc", "reason"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_payload_raises_payload_error(case: str, enc: EncodedUpdate, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        decode(enc)


FUZZ_SPECS = [
    CodecSpec("none"),
    CodecSpec("fp16"),
    CodecSpec("topk", topk=0.1),
    CodecSpec("topk", topk=0.9),
    CodecSpec("qsgd", bits=3, block_size=5),
    CodecSpec("qsgd", bits=8, stochastic=True),
    CodecSpec("topk-qsgd", topk=0.3, bits=1),
    CodecSpec("topk-qsgd", topk=0.05, bits=5, block_size=2),
]
HEADER_VALUES = st.one_of(
    st.integers(-3, 70),
    st.sampled_from([2**31, 2**64, True, 1.0, "topk", "qsgd", None, float("nan")]),
)


@settings(max_examples=400, deadline=None, database=None)
@given(
    spec=st.sampled_from(FUZZ_SPECS),
    d=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_fuzzed_payloads_decode_or_raise_payload_error(
    spec: CodecSpec, d: int, seed: int, data: st.DataObject
) -> None:
    enc = encode(vec(d, seed), spec)
    payload, header = enc.payload.copy(), dict(enc.header)
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["truncate", "extend", "poke", "header", "drop"]))
        if kind == "truncate":
            payload = payload[: data.draw(st.integers(0, max(payload.size - 1, 0)))]
        elif kind == "extend":
            extra = data.draw(st.binary(min_size=1, max_size=9))
            payload = np.concatenate([payload, np.frombuffer(extra, np.uint8)])
        elif kind == "poke" and payload.size:
            payload[data.draw(st.integers(0, payload.size - 1))] = data.draw(st.integers(0, 255))
        elif kind == "header":
            key = data.draw(st.sampled_from(["codec", "version", "d", "k", "bits", "block", "x"]))
            header[key] = data.draw(HEADER_VALUES)
        elif kind == "drop":
            header.pop(data.draw(st.sampled_from(sorted(header))), None)
    try:
        out = decode(EncodedUpdate(header, payload))
    except PayloadError:
        return
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.ndim == 1
    assert out.size == header["d"] and np.isfinite(out).all()
