"""Between Flower's ArrayRecord (named arrays) and one flat float32 vector."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


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
