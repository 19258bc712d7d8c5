"""Model updates: between Flower's ArrayRecord (named arrays) and one flat float32 vector.

The one place where ``u = w_local - w_global`` is computed, on both sides:

* nodes: ``update_of(global_arrays, local_arrays)`` (the compression and attack mods);
* server: ``reply_update(content, specs, global_flat)`` turns a train reply, dense or
  compressed (``fedapp.compression.wire``), into the update, after validating it
  (``fedapp.validation``): the strategy and the threat model both call it.

Cheap to import (numpy and Flower's records): the ClientApp imports it on every message;
the compressed-reply decoder is imported only when a compressed reply arrives.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from fedapp.compression.wire import RECORD_KEY
from fedapp.validation import ArraySpec, check_train_reply


def flatten(arrays: ArrayRecord) -> np.ndarray:
    """All arrays in key order, raveled and concatenated into one float32 vector."""
    return np.concatenate([a.numpy().astype(np.float32).ravel() for a in arrays.values()])


def unflatten(flat: np.ndarray, like: ArrayRecord) -> ArrayRecord:
    """Inverse of ``flatten``: cut ``flat`` into arrays with ``like``'s keys, shapes, dtypes."""
    out: dict[str, Array] = {}
    offset = 0
    for key, arr in like.items():
        size = int(np.prod(arr.shape, dtype=np.int64))
        values = flat[offset:offset + size].reshape(arr.shape).astype(arr.dtype)
        out[key] = Array(np.ascontiguousarray(values))
        offset += size
    if offset != flat.size:
        raise ValueError(f"flat vector has {flat.size} values, the model has {offset}")
    return ArrayRecord(out)


def update_of(global_arrays: ArrayRecord, local_arrays: ArrayRecord) -> np.ndarray | str:
    """``w_local - w_global`` as one float32 vector in ``global_arrays``' key order, or the
    reason why the local arrays are no update of the global ones (other keys, shapes,
    no parameters, non-finite values)."""
    if set(local_arrays) != set(global_arrays):
        return f"array keys {sorted(local_arrays)} differ from the global {sorted(global_arrays)}"
    parts = []
    for key, garr in global_arrays.items():
        if tuple(local_arrays[key].shape) != tuple(garr.shape):
            return f"array {key!r} has shape {local_arrays[key].shape}, global {garr.shape}"
        local = local_arrays[key].numpy().astype(np.float32).ravel()
        parts.append(local - garr.numpy().astype(np.float32).ravel())
    update = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if update.size == 0:
        return "the model has no parameters"
    if not np.isfinite(update).all():
        return "local weights (or the update) have non-finite values"
    return update


def is_compressed(content: RecordDict) -> bool:
    """True iff the reply claims the compressed format (has the ``compression`` ConfigRecord);
    ``reply_update`` then holds it to that format."""
    return RECORD_KEY in content.config_records


def reply_update(content: RecordDict, specs: Mapping[str, ArraySpec], global_flat: np.ndarray,
                 out: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """A train reply's flat float32 update and its metrics: decoded if compressed
    (``fedapp.compression.server.decode_update``), else ``local - global`` of the validated
    dense weights. With ``out`` (a float32 row of the model's size) the update is written
    there and ``out`` returned. Raises ``fedapp.validation.ReplyRejected`` with the reason
    for any reply that is not a valid update of the global model."""
    if is_compressed(content):
        from fedapp.compression.server import decode_update  # only when compression is on

        update, metrics = decode_update(content, specs)
        if out is None:
            return update, metrics
        out[:] = update
        return out, metrics
    local, metrics = check_train_reply(content, specs, out=out)
    np.subtract(local, global_flat, out=local)
    return local, metrics
