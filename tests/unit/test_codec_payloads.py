"""Codecs' strict decoding: every malformed header or payload (unknown codec or version,
wrong field types, inconsistent sizes, truncated or oversized payloads, bad indices,
non-finite values or scales) raises PayloadError with its reason, the hand-built payloads
are valid unmutated, and fuzzed payloads decode to a finite 1-D float32 vector of the
header's length or raise PayloadError."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedapp.compression import CODEC_NAMES, CodecSpec, EncodedUpdate, PayloadError, decode, encode
from fedapp.compression.indices import MAX_D, MODE_VARINT
from tests.unit.codec_vectors import vec

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
