"""ClientApp mod that sends train replies as one compressed update instead of dense weights.

``compression_mod`` wraps the train handler (``ClientApp(mods=[..., compression_mod, ...])``;
it must sit *outside* (earlier than) Flower's clipping mods, which need the reply's array
keys to equal the incoming ones). For a TRAIN message with ``compression != "off"``:

1. ``w_global`` = the incoming ArrayRecord, ``w_local`` = the reply's ArrayRecord, both
   flattened to float32 in the *incoming* key order; the update is
   ``u = w_local - w_global`` (length ``d``);
2. with ``compression-feedback``: ``c = u + e`` with the residual ``e`` kept in
   ``context.state[RESIDUAL_KEY]`` (reset to 0 if missing, of another length or
   non-finite), and the new residual ``e' = c - D(C(c))`` is stored back
   (:func:`fedapp.compression.compress_with_feedback`);
3. the reply's content becomes the wire format of :mod:`fedapp.compression.wire`.

Stochastic rounding is seeded per (run seed, server round, node) so the noise differs across
rounds and nodes yet a re-run is reproducible. Anything else passes through untouched:
non-TRAIN messages, error replies, compression "off". A reply that cannot be expressed as an
update of the global model (not exactly one ArrayRecord on either side, other keys or shapes,
non-finite weights) is sent dense, unchanged, with a warning: the server's dense validation
then rejects or accepts it with its own reason, and the residual is left as it was.
"""

from __future__ import annotations

import time
from logging import WARNING

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import log

from fedapp.compression.codecs import CodecSpec, EncodedUpdate, encode
from fedapp.compression.feedback import compress_with_feedback
from fedapp.compression.wire import (
    FORMAT_KEY,
    FORMAT_TAG,
    METRIC_RATIO,
    METRIC_SECONDS,
    PAYLOAD_KEY,
    RECORD_KEY,
)
from fedapp.config import RunConfig, run_config_of
from fedapp.updates import update_of

__all__ = [
    "RESIDUAL_KEY",
    "compress_content",
    "compression_mod",
    "load_residual",
    "round_seed",
    "spec_from_config",
]

RESIDUAL_KEY = "compression-residual"  # ArrayRecord in context.state
_RESIDUAL_ARRAY = "residual"  # its one float32 Array, shape (d,)


def spec_from_config(cfg: RunConfig) -> CodecSpec | None:
    """The codec the run config asks for; ``None`` for ``compression = "off"``."""
    if cfg.compression == "off":
        return None
    return CodecSpec(
        name=cfg.compression,
        topk=cfg.compression_topk,
        bits=cfg.compression_bits,
        block_size=cfg.compression_block,
        stochastic=cfg.compression_stochastic,
        seed=cfg.seed,
    )


def round_seed(seed: int, server_round: int, node_id: int) -> int:
    """A 32-bit seed for stochastic rounding, distinct per (run seed, round, node)."""
    entropy = [int(seed), max(int(server_round), 0), int(node_id) % 2**64]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _server_round(msg: Message) -> int:
    """``config["server-round"]`` of a train instruction (Flower's strategies set it); 0 if
    absent."""
    config = msg.content.config_records.get("config")
    value = config.get("server-round") if config is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def load_residual(state: RecordDict, d: int) -> np.ndarray | None:
    """The stored error-feedback residual if it is a finite float32 vector of length ``d``;
    ``None`` (start from zero) otherwise."""
    record = state.array_records.get(RESIDUAL_KEY)
    if record is None or _RESIDUAL_ARRAY not in record:
        return None
    residual = record[_RESIDUAL_ARRAY].numpy()
    if residual.shape != (d,) or residual.dtype != np.float32 or not np.isfinite(residual).all():
        return None
    return residual


def compress_content(reply: RecordDict, encoded: EncodedUpdate, seconds: float) -> RecordDict:
    """The wire-format content (:mod:`fedapp.compression.wire`) replacing ``reply``: its one
    ArrayRecord becomes the payload, a ``compression`` ConfigRecord carries the header, and
    the first MetricRecord gains ``compress-encode-seconds`` and ``compress-ratio``
    (``4 d / payload bytes``). Other records are kept as they are."""
    d = int(encoded.header["d"])
    extra = {METRIC_SECONDS: float(seconds),
             METRIC_RATIO: 4.0 * d / max(int(encoded.payload.nbytes), 1)}
    out = RecordDict()
    metrics_done = False
    for key, record in reply.items():
        if isinstance(record, ArrayRecord):
            out[key] = ArrayRecord({PAYLOAD_KEY: Array(np.ascontiguousarray(encoded.payload))})
        elif isinstance(record, MetricRecord) and not metrics_done:
            out[key] = MetricRecord({**dict(record), **extra})
            metrics_done = True
        else:
            out[key] = record
    if not metrics_done:
        out["metrics"] = MetricRecord(extra)  # type: ignore[arg-type]
    out[RECORD_KEY] = ConfigRecord({FORMAT_KEY: FORMAT_TAG, **encoded.header})
    return out


def _not_compressible(msg: Message, reply: Message) -> str | None:
    """Why ``reply`` cannot be sent as a compressed update of ``msg``'s arrays, or None."""
    n_in, n_out = len(msg.content.array_records), len(reply.content.array_records)
    if n_in != 1 or n_out != 1:
        return f"expected one ArrayRecord in the instruction and the reply, got {n_in}, {n_out}"
    if RECORD_KEY in reply.content:
        return f"the reply already holds a record named {RECORD_KEY!r}"
    return None


def compression_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower Mod: replace a train reply's dense weights by a compressed update (module
    docstring). Non-TRAIN messages, error replies and ``compression = "off"`` pass through."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    cfg = run_config_of(context)
    spec = spec_from_config(cfg)
    reply = call_next(msg, context)
    if spec is None or reply.has_error():
        return reply
    reason = _not_compressible(msg, reply)
    update: np.ndarray | str = reason or update_of(
        next(iter(msg.content.array_records.values())),
        next(iter(reply.content.array_records.values())),
    )
    if isinstance(update, str):
        log(WARNING, "compression_mod: sending the train reply dense: %s", update)
        return reply

    start = time.perf_counter()
    seed = round_seed(cfg.seed, _server_round(msg), context.node_id)
    if cfg.compression_feedback:
        residual = load_residual(context.state, update.size)
        encoded, new_residual = compress_with_feedback(update, residual, spec, seed=seed)
        context.state[RESIDUAL_KEY] = ArrayRecord({_RESIDUAL_ARRAY: Array(new_residual)})
    else:
        encoded = encode(update, spec, seed=seed)
        if RESIDUAL_KEY in context.state:
            del context.state[RESIDUAL_KEY]
    reply.content = compress_content(reply.content, encoded, time.perf_counter() - start)
    return reply
