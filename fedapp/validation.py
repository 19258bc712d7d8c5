"""Checks every reply before it reaches aggregation.

A reply that fails a check is rejected with a reason; it never raises out of the
strategy, so one broken or malicious node cannot stop the ServerApp (Flower's
own FedAvg raises ``InconsistentMessageReplies`` and ends the run instead).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, RecordDict

WEIGHT_KEY = "num-examples"


REJECTION_KINDS = ("metrics", "layout", "non-finite", "compressed", "masked")


class ReplyRejected(ValueError):
    """A reply's content cannot be used; ``str(exc)`` is the reason and ``kind`` (one of
    ``REJECTION_KINDS``) its family, a bounded label for counting."""

    def __init__(self, reason: str, kind: str = "layout") -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype every reply's array must have under a given key."""

    shape: tuple[int, ...]
    dtype: str


def array_specs(arrays: ArrayRecord) -> dict[str, ArraySpec]:
    """The reference layout (keys in order, shapes, dtypes) of the global model."""
    return {k: ArraySpec(tuple(a.shape), str(a.dtype)) for k, a in arrays.items()}


def check_metrics(content: RecordDict) -> dict[str, float]:
    """Exactly one MetricRecord, with a positive integer ``num-examples`` and finite values."""
    records = list(content.metric_records.values())
    if len(records) != 1:
        raise ReplyRejected(f"expected 1 MetricRecord, got {len(records)}", "metrics")
    metrics: dict[str, float] = {}
    for key, value in records[0].items():
        if isinstance(value, list) or not math.isfinite(float(value)):
            raise ReplyRejected(f"metric {key!r}={value!r} is not a finite number", "metrics")
        metrics[key] = float(value)
    n = metrics.get(WEIGHT_KEY)
    if n is None:
        raise ReplyRejected(f"metric {WEIGHT_KEY!r} is missing", "metrics")
    if n < 1 or n != int(n):
        raise ReplyRejected(f"metric {WEIGHT_KEY!r}={n!r} must be a positive integer",
                            "metrics")
    return metrics


def check_train_reply(
    content: RecordDict, reference: Mapping[str, ArraySpec], out: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """Validate a train reply against the global model's layout.

    Returns the reply's weights flattened to float32 (key order of ``reference``)
    and its metrics. With ``out`` (a float32 vector of the model's size, e.g. one
    row of a preallocated update matrix) the weights are written there and ``out``
    is returned, so a server never holds a second copy of them. Raises
    ``ReplyRejected`` naming the first problem found: not exactly one ArrayRecord,
    missing or extra keys, a shape or dtype that differs from the global model's,
    an undecodable array, non-finite values, or bad metrics (see ``check_metrics``).
    """
    records = list(content.array_records.values())
    if len(records) != 1:
        raise ReplyRejected(f"expected 1 ArrayRecord, got {len(records)}")
    arrays = records[0]
    missing = [k for k in reference if k not in arrays]
    extra = [k for k in arrays if k not in reference]
    if missing or extra:
        raise ReplyRejected(f"array keys differ from the global model: missing {missing}, "
                            f"extra {extra}")
    metrics = check_metrics(content)
    parts = []
    offset = 0
    for key, spec in reference.items():
        arr = arrays[key]
        if str(arr.dtype) != spec.dtype or tuple(arr.shape) != spec.shape:
            raise ReplyRejected(
                f"array {key!r} is {arr.dtype}{list(arr.shape)}, expected "
                f"{spec.dtype}{list(spec.shape)}"
            )
        try:
            values = arr.numpy()
        except Exception as exc:  # corrupt bytes: numpy raises several types
            raise ReplyRejected(f"array {key!r} cannot be decoded: {exc}") from exc
        if values.shape != spec.shape or str(values.dtype) != spec.dtype:
            raise ReplyRejected(
                f"array {key!r} decodes to {values.dtype}{list(values.shape)}, declared "
                f"{spec.dtype}{list(spec.shape)}"
            )
        if not np.isfinite(values).all():
            raise ReplyRejected(f"array {key!r} has non-finite values", "non-finite")
        if out is None:
            parts.append(values.astype(np.float32, copy=False).ravel())
        else:
            out[offset:offset + values.size] = values.ravel()
            offset += values.size
    if out is not None:
        if offset != out.size:
            raise ValueError(f"out has {out.size} values, the model has {offset}")
        return out, metrics
    return np.concatenate(parts), metrics


def weighted_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the rows that report it, weighted by ``num-examples``.

    ``num-examples`` itself is summed. Rows are already validated.
    """
    if not rows:
        return {}
    out: dict[str, float] = {WEIGHT_KEY: sum(r[WEIGHT_KEY] for r in rows)}
    keys = sorted({k for r in rows for k in r} - {WEIGHT_KEY})
    for key in keys:
        pairs = [(r[WEIGHT_KEY], r[key]) for r in rows if key in r]
        total = sum(w for w, _ in pairs)
        out[key] = sum(w * v for w, v in pairs) / total
    return out
