"""Compressed train replies built by hand from the wire format (fedapp.compression.wire)
for the decode_update tests: the global model they answer, a sparse update, its encoding."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedapp.compression import CodecSpec, EncodedUpdate, encode
from fedapp.compression.wire import FORMAT_KEY, FORMAT_TAG, PAYLOAD_KEY, RECORD_KEY
from fedapp.validation import ArraySpec

REFERENCE = {"w": ArraySpec((6, 10), "float32"), "b": ArraySpec((10,), "float32"),
             "steps": ArraySpec((), "int64")}
D = 71
METRICS = {"num-examples": 5, "train-loss": 0.5}


def update(seed: int = 0, d: int = D) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d).astype(np.float32)
    x[rng.random(d) < 0.2] = 0.0
    return x


def content_of(payload: np.ndarray | Array, header: dict[str, Any], *,
               fmt: object = FORMAT_TAG, metrics: dict[str, Any] | None = None) -> RecordDict:
    """A compressed reply built by hand from the wire format (fedapp.compression.wire)."""
    array = payload if isinstance(payload, Array) else Array(payload)
    config = {**header} if fmt is None else {FORMAT_KEY: fmt, **header}
    return RecordDict({"arrays": ArrayRecord({PAYLOAD_KEY: array}),
                       "metrics": MetricRecord(METRICS if metrics is None else metrics),
                       RECORD_KEY: ConfigRecord(config)})


def encoded(name: str = "topk-qsgd", seed: int = 0, **spec: Any) -> EncodedUpdate:
    return encode(update(seed), CodecSpec(name, **{"topk": 0.2, **spec}))
