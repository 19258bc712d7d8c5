"""Server side of compressed train replies: recognise them and decode them to a dense update.

Pure functions of a reply's ``RecordDict`` (format: :mod:`fedapp.compression.wire`). Every
problem with a reply raises :class:`fedapp.validation.ReplyRejected` naming the reason, never
another exception, so one broken or malicious node cannot stop the ServerApp. The header's
``d`` is checked against the global model *before* anything of size ``d`` is allocated.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import RecordDict

from fedapp.compression.codecs import EncodedUpdate, decode
from fedapp.compression.indices import PayloadError
from fedapp.compression.wire import FORMAT_KEY, FORMAT_TAG, PAYLOAD_KEY, RECORD_KEY
from fedapp.validation import ArraySpec, ReplyRejected, check_metrics

__all__ = ["decode_update", "model_size"]


def model_size(reference: Mapping[str, ArraySpec]) -> int:
    """``d``: the total number of entries of the global model's arrays."""
    return sum(int(np.prod(spec.shape, dtype=np.int64)) for spec in reference.values())


def _payload(content: RecordDict) -> np.ndarray:
    """The one uint8 1-D payload array of a compressed reply, or ``ReplyRejected``."""
    records = content.array_records
    if len(records) != 1:
        raise _rejected(f"compressed reply: expected 1 ArrayRecord, got {len(records)}")
    record = next(iter(records.values()))
    if list(record.keys()) != [PAYLOAD_KEY]:
        raise _rejected(
            f"compressed reply: expected exactly the array {PAYLOAD_KEY!r}, got {list(record)}"
        )
    array = record[PAYLOAD_KEY]
    if str(array.dtype) != "uint8" or len(array.shape) != 1:
        raise _rejected(
            f"compressed reply: payload is {array.dtype}{list(array.shape)}, expected 1-D uint8"
        )
    try:
        payload = array.numpy()
    except Exception as exc:  # corrupt .npy bytes: numpy raises several types
        raise _rejected(f"compressed reply: payload cannot be decoded: {exc}") from exc
    if payload.dtype != np.uint8 or payload.shape != tuple(array.shape):
        raise _rejected(
            f"compressed reply: payload decodes to {payload.dtype}{list(payload.shape)}, "
            f"declared {array.dtype}{list(array.shape)}"
        )
    return payload


def _header(content: RecordDict, d: int) -> dict[str, object]:
    """The codec header of a compressed reply; its format tag and ``d`` checked."""
    configs = content.config_records
    if list(configs) != [RECORD_KEY]:
        raise _rejected(
            f"compressed reply: expected exactly the ConfigRecord {RECORD_KEY!r}, "
            f"got {sorted(configs)}"
        )
    header = dict(configs[RECORD_KEY])
    tag = header.pop(FORMAT_KEY, None)
    if tag != FORMAT_TAG:
        raise _rejected(f"compressed reply: unknown format {tag!r}, expected {FORMAT_TAG!r}")
    claimed = header.get("d")
    if not isinstance(claimed, int) or isinstance(claimed, bool) or claimed != d:
        raise _rejected(
            f"compressed reply: d={claimed!r} does not match the global model's d={d}"
        )
    return header


def decode_update(
    content: RecordDict, reference: Mapping[str, ArraySpec]
) -> tuple[np.ndarray, dict[str, float]]:
    """Decode a compressed train reply to ``(update, metrics)``.

    ``update`` is the dense float32 update (``w_local - w_global`` after error feedback) of
    length ``d = model_size(reference)``, in ``reference``'s key order; ``metrics`` the
    reply's metrics (``fedapp.validation.check_metrics``). Raises ``ReplyRejected`` for:
    other than one ArrayRecord / one ConfigRecord ``compression`` / one MetricRecord, an array
    other than one 1-D uint8 ``payload``, an unknown format tag, codec or version, missing,
    extra, mistyped or inconsistent header fields (``d`` other than the global model's,
    ``k``/``bits``/``block``), a truncated or oversized payload, bad indices, non-finite
    scales or values, bad metrics.
    """
    d = model_size(reference)
    header = _header(content, d)
    payload = _payload(content)
    metrics = check_metrics(content)
    try:
        update = decode(EncodedUpdate(header=header, payload=payload))
    except PayloadError as exc:
        raise _rejected(f"compressed reply: {exc}") from exc
    if update.shape != (d,) or not np.isfinite(update).all():  # decode guarantees; be sure
        raise _rejected(f"compressed reply: decoded to {update.shape}, expected ({d},)")
    return update, metrics


def _rejected(reason: str) -> ReplyRejected:
    """A compressed reply that cannot be decoded (kind ``compressed``)."""
    return ReplyRejected(reason, "compressed")
