"""decode_update: a valid compressed reply decodes to the encoded update; every malformed one
is rejected with ReplyRejected (and a reason), never another exception; fuzzed too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedapp.compression import CODEC_NAMES, CodecSpec, decode, encode
from fedapp.compression.server import decode_update, model_size
from fedapp.compression.wire import PAYLOAD_KEY, RECORD_KEY, serialized_bytes
from fedapp.updates import is_compressed
from fedapp.validation import ReplyRejected
from tests.unit.compressed_replies import METRICS, REFERENCE, D, content_of, encoded, update

SPECS = {
    "none": {}, "fp16": {}, "topk": {"topk": 0.3}, "qsgd": {"bits": 3, "block_size": 16},
    "topk-qsgd": {"topk": 0.25, "bits": 5},
}


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_valid_reply_decodes_to_the_encoded_update(name: str) -> None:
    enc = encoded(name, **SPECS[name])
    content = content_of(enc.payload, enc.header)
    assert is_compressed(content)
    got, metrics = decode_update(content, REFERENCE)
    assert got.dtype == np.float32 and got.shape == (D,)
    np.testing.assert_array_equal(got, decode(enc))
    assert metrics == {"num-examples": 5.0, "train-loss": 0.5}


def test_dense_reply_is_not_compressed_and_bytes_count_arrays_only() -> None:
    dense = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros((6, 10), np.float32))}),
                        "metrics": MetricRecord(METRICS)})
    assert not is_compressed(dense)
    assert model_size(REFERENCE) == D
    enc = encoded()
    content = content_of(enc.payload, enc.header)
    expected = len(content["arrays"][PAYLOAD_KEY].data) + len(PAYLOAD_KEY)
    assert serialized_bytes(content) == expected
    assert serialized_bytes(dense) == 240 + 128 + 1  # f32 data + .npy header + key "w"


# Every kind of malformed reply, as (mutation of a valid one, expected reason fragment).


def _valid() -> tuple[np.ndarray, dict[str, Any]]:
    enc = encoded("topk-qsgd", topk=0.2, bits=4, block_size=4)
    return enc.payload.copy(), dict(enc.header)


def _with(**header: Any) -> Callable[[], RecordDict]:
    def build() -> RecordDict:
        payload, h = _valid()
        h.update(header)
        return content_of(payload, h)
    return build


def _drop(field: str) -> Callable[[], RecordDict]:
    def build() -> RecordDict:
        payload, h = _valid()
        del h[field]
        return content_of(payload, h)
    return build


def _payload(change: Callable[[np.ndarray], np.ndarray], name: str = "topk-qsgd",
             **spec: Any) -> Callable[[], RecordDict]:
    def build() -> RecordDict:
        enc = encoded(name, **spec)
        return content_of(change(enc.payload.copy()), enc.header)
    return build


def _records(change: Callable[[RecordDict], None]) -> Callable[[], RecordDict]:
    def build() -> RecordDict:
        payload, h = _valid()
        content = content_of(payload, h)
        change(content)
        return content
    return build


def _set_scale(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(p: np.ndarray) -> np.ndarray:
        p[:4] = np.array([value], "<f4").view(np.uint8)  # qsgd: the first block's scale
        return p
    return change


def _fp16_inf(p: np.ndarray) -> np.ndarray:
    p[:2] = np.array([np.inf], "<f2").view(np.uint8)
    return p


def _topk_nan(p: np.ndarray) -> np.ndarray:
    p[-4:] = np.array([np.nan], "<f4").view(np.uint8)
    return p


def _varint_zero_delta(p: np.ndarray) -> np.ndarray:
    # topk with k=2 of d=71 uses varint indices: [mode=1, g0, g1]; a zero gap repeats an index
    p[2] = 0
    return p


def _declared_shape_lies() -> RecordDict:
    payload, h = _valid()
    real = Array(payload)
    fake = Array(dtype="uint8", shape=(payload.size + 3,), stype=real.stype, data=real.data)
    return content_of(fake, h)


def _corrupt_npy() -> RecordDict:
    payload, h = _valid()
    real = Array(payload)
    broken = Array(dtype="uint8", shape=real.shape, stype=real.stype, data=b"\x93NUMPY garbage")
    return content_of(broken, h)


def _npy_of_other_dtype() -> RecordDict:
    payload, h = _valid()
    real = Array(payload.astype(np.int16))
    lying = Array(dtype="uint8", shape=real.shape, stype=real.stype, data=real.data)
    return content_of(lying, h)


MALFORMED: dict[str, tuple[Callable[[], RecordDict], str]] = {
    # records
    "no ArrayRecord": (_records(lambda c: c.pop("arrays")), "expected 1 ArrayRecord"),
    "two ArrayRecords": (
        _records(lambda c: c.__setitem__("more", ArrayRecord({"x": Array(np.zeros(1))}))),
        "expected 1 ArrayRecord"),
    "no compression record": (_records(lambda c: c.pop(RECORD_KEY)), "ConfigRecord"),
    "extra ConfigRecord": (
        _records(lambda c: c.__setitem__("config", ConfigRecord({"a": 1}))), "ConfigRecord"),
    "no MetricRecord": (_records(lambda c: c.pop("metrics")), "MetricRecord"),
    "two MetricRecords": (
        _records(lambda c: c.__setitem__("m2", MetricRecord({"x": 1}))), "MetricRecord"),
    "num-examples missing": (
        _records(lambda c: c.__setitem__("metrics", MetricRecord({"loss": 1.0}))),
        "num-examples"),
    "nan metric": (
        _records(lambda c: c.__setitem__(
            "metrics", MetricRecord({"num-examples": 3, "loss": float("nan")}))), "finite"),
    # payload array
    "second array": (
        _records(lambda c: c["arrays"].__setitem__("x", Array(np.zeros(2, np.uint8)))),
        "exactly the array"),
    "renamed array": (
        _records(lambda c: c.__setitem__(
            "arrays", ArrayRecord({"w": c["arrays"][PAYLOAD_KEY]}))), "exactly the array"),
    "float payload": (_payload(lambda p: p.astype(np.float32)), "expected 1-D uint8"),
    "2-D payload": (_payload(lambda p: p[: p.size // 2 * 2].reshape(2, -1)),
                    "expected 1-D uint8"),
    "declared shape lies": (_declared_shape_lies, "declared"),
    "corrupt npy bytes": (_corrupt_npy, "cannot be decoded"),
    "npy of another dtype": (_npy_of_other_dtype, "decodes to int16"),
    # header
    "wrong format tag": (lambda: content_of(*_valid(), fmt="other/1"), "unknown format"),
    "no format tag": (lambda: content_of(*_valid(), fmt=None), "unknown format"),
    "unknown codec": (_with(codec="zstd"), "unknown codec"),
    "codec not a str": (_with(codec=b"topk"), "unknown codec"),
    "unknown version": (_with(version=2), "version"),
    "version not an int": (_with(version="1"), "version"),
    "d of another model": (_with(d=D + 1), "does not match the global model"),
    "d huge": (_with(d=2**40), "does not match the global model"),
    "d a float": (_with(d=float(D)), "does not match the global model"),
    "d missing": (_drop("d"), "does not match the global model"),
    "k missing": (_drop("k"), "missing ['k']"),
    "extra header field": (_with(extra=1), "unexpected"),
    "k > d": (_with(k=D + 1), "k="),
    "k = 0": (_with(k=0), "k="),
    "k differs from payload": (_with(k=13), "header says k=13"),
    "block differs from payload": (_with(block=5), "oversized payload"),
    "bits = 9": (_with(bits=9), "bits="),
    "bits = 0": (_with(bits=0), "bits="),
    "bits a bool": (_with(bits=True), "must be an int"),
    "block = 0": (_with(block=0), "block="),
    "block > k": (_with(block=D), "block="),
    "dense codec with k != d": (_with(codec="qsgd", k=10), "k == d"),
    # payload bytes
    "truncated": (_payload(lambda p: p[:-1]), "truncated"),
    "empty": (_payload(lambda p: p[:0]), "truncated"),
    "oversized": (_payload(lambda p: np.concatenate([p, np.zeros(3, np.uint8)])), "oversized"),
    "unknown index mode": (_payload(lambda p: np.concatenate([[7], p[1:]]).astype(np.uint8)),
                           "unknown index encoding mode"),
    "NaN scale": (_payload(_set_scale(np.nan), "qsgd", bits=4), "non-finite quantisation"),
    "inf scale": (_payload(_set_scale(np.inf), "qsgd", bits=4), "non-finite quantisation"),
    "negative scale": (_payload(_set_scale(-1.0), "qsgd", bits=4), "negative"),
    "inf fp16 value": (_payload(_fp16_inf, "fp16"), "non-finite value"),
    "NaN topk value": (_payload(_topk_nan, "topk", topk=0.03), "non-finite value"),
    "repeated index": (_payload(_varint_zero_delta, "topk", topk=0.03), "strictly increasing"),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_reply_is_rejected_with_reason(kind: str) -> None:
    build, reason = MALFORMED[kind]
    with pytest.raises(ReplyRejected) as info:
        decode_update(build(), REFERENCE)
    assert reason in str(info.value), str(info.value)


def test_every_valid_base_of_the_malformed_cases_decodes() -> None:
    """The mutations start from replies that are valid: a rejection is the mutation's doing."""
    payload, h = _valid()
    decode_update(content_of(payload, h), REFERENCE)
    for name, spec in (("qsgd", {"bits": 4}), ("fp16", {}), ("topk", {"topk": 0.03})):
        enc = encoded(name, **spec)
        decode_update(content_of(enc.payload, enc.header), REFERENCE)
    assert encoded("topk", topk=0.03).payload[0] == 1  # varint mode, as _varint_zero_delta needs


# Fuzz: random corruption of payload bytes and header fields --------------------------------

HEADER_VALUES = st.one_of(
    st.integers(-3, 3), st.integers(0, 2**40), st.sampled_from([D, D - 1, D + 1, 2**31]),
    st.sampled_from(list(CODEC_NAMES)), st.text(max_size=4), st.booleans(),
    st.floats(allow_nan=True), st.binary(max_size=3), st.lists(st.integers(0, 9), max_size=2),
)


@st.composite
def corrupted(draw: st.DrawFn) -> tuple[RecordDict, bool]:
    """A valid compressed reply, then 0..4 random mutations; returns (content, mutated)."""
    name = draw(st.sampled_from(list(CODEC_NAMES)))
    spec = CodecSpec(name, topk=draw(st.floats(0.01, 1.0)), bits=draw(st.integers(1, 8)),
                     block_size=draw(st.integers(0, 80)))
    enc = encode(update(draw(st.integers(0, 2**16))), spec)
    payload, header = enc.payload.copy(), dict(enc.header)
    ops = draw(st.lists(st.sampled_from(["flip", "truncate", "extend", "field", "drop"]),
                        max_size=4))
    for op in ops:
        if op == "flip" and payload.size:
            at = draw(st.integers(0, payload.size - 1))
            payload[at] = draw(st.integers(0, 255))
        elif op == "truncate":
            payload = payload[: draw(st.integers(0, payload.size))]
        elif op == "extend":
            extra = draw(st.binary(min_size=1, max_size=16))
            payload = np.concatenate([payload, np.frombuffer(extra, np.uint8)])
        elif op == "field":
            header[draw(st.sampled_from([*header, "extra"]))] = draw(HEADER_VALUES)
        elif op == "drop" and header:
            header.pop(draw(st.sampled_from(sorted(header))))
    header = {k: v for k, v in header.items() if v != []}  # ConfigRecord rejects empty lists
    return content_of(payload.copy(), header), bool(ops)


@settings(max_examples=400, deadline=None, database=None)
@given(corrupted())
def test_fuzzed_reply_decodes_finite_or_is_rejected(case: tuple[RecordDict, bool]) -> None:
    content, mutated = case
    try:
        got, _ = decode_update(content, REFERENCE)
    except ReplyRejected as exc:
        assert str(exc), "a rejection names its reason"
        assert mutated, f"a valid reply was rejected: {exc}"
        return
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (D,)
    assert np.isfinite(got).all()
