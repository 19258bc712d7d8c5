"""One bucket's protocol state within a round, the round's setup parameters, the check of
a node's masked reply, the bytes of a stage message, and what a bucket's recovered sum
becomes for the strategy. Server side."""

from __future__ import annotations

from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import Message, RecordDict
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import Key

from fedapp.compression.wire import serialized_bytes
from fedapp.config import RunConfig
from fedapp.node_errors import kind_of
from fedapp.secagg import masking, protocol
from fedapp.secagg.client import MASKED_KEY
from fedapp.secagg.unmask import Encoding
from fedapp.server.buckets import BucketRound
from fedapp.validation import ReplyRejected, check_metrics


@dataclass
class Bucket:
    """One bucket's protocol state within a round."""

    members: tuple[int, ...]
    t: int
    enc: Encoding
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # setup answers
    graph: dict[int, tuple[int, ...]] = field(default_factory=dict)  # of the nodes in it
    shared: set[int] = field(default_factory=set)  # answered share_keys
    inbox: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)  # dst -> shares
    masked: dict[int, np.ndarray] = field(default_factory=dict)  # accepted, until unmasked
    contributors: tuple[int, ...] = ()
    total: np.ndarray | None = None  # the decoded sum of the contributors' updates
    dropped_reason: str = ""


def setup_params(b: Bucket, degree: int) -> dict[str, int | float]:
    """The round's parameters for a node of bucket ``b``: Flower's setup-stage keys (the
    setup request; again in share_keys' round record, for nodes with kept keys)."""
    shares = len(protocol.neighbours(b.members, degree)[b.members[0]])
    return {Key.SAMPLE_NUMBER: len(b.members), Key.SHARE_NUMBER: shares,
            Key.THRESHOLD: b.t, Key.CLIPPING_RANGE: float(b.enc.clip_norm),
            Key.TARGET_RANGE: b.enc.num_levels, Key.MOD_RANGE: 1 << b.enc.bits,
            Key.MAX_WEIGHT: 1.0}


def masked_vector(content: RecordDict, size: int, bits: int) -> np.ndarray:
    """The one flat array of ``Z_M`` a node sends in stage 3; ``ReplyRejected`` (kind
    ``masked``) names what is wrong with it."""
    if MASKED_KEY not in content.array_records:
        raise ReplyRejected(f"no {MASKED_KEY!r} record (is the node's secagg_mod installed?)",
                            "masked")
    record = content.array_records[MASKED_KEY]
    if list(record) != ["masked"]:
        raise ReplyRejected(f"{MASKED_KEY!r} holds {sorted(record)}, expected ['masked']",
                            "masked")
    array = record["masked"].numpy()
    dtype = masking.wire_dtype(bits)
    if array.dtype != dtype or array.shape != (size,):
        raise ReplyRejected(f"masked vector of {array.dtype} {array.shape}, expected {dtype} "
                            f"({size},)", "masked")
    return array


def accept_masked(server_round: int, bucketed: BucketRound, node: int, msg: Message,
                  size: int, bits: int) -> np.ndarray | None:
    """The masked vector of a train reply, or None (failure or rejection recorded)."""
    bucketed.replies += 1
    if msg.has_error():
        kind, reason = kind_of(msg.error.code), msg.error.reason.strip().splitlines()
        bucketed.failures[node] = (kind, reason[0] if reason else "no reason given")
        log(WARNING, "round %d: node %d failed (%s): %s", server_round, node, kind,
            bucketed.failures[node][1])
        return None
    bucketed.bytes_up += serialized_bytes(msg.content)
    try:
        vector = masked_vector(msg.content, size, bits)
        metrics = check_metrics(msg.content)
    except ReplyRejected as exc:
        bucketed.rejected[node] = (exc.kind, str(exc))
        log(WARNING, "round %d: rejected masked reply of node %d: %s", server_round, node,
            exc)
        return None
    bucketed.node_metrics[node] = metrics
    return vector


def bucket_row(b: Bucket, settings: protocol.Settings,
               node_metrics: dict[int, dict[str, float]]) -> np.ndarray:
    """A bucket's row for the strategy: the mean of its contributors' clipped updates;
    under distributed DP, the DP-SGD step ``-lr * sum / (q N_b)`` of its records (``N_b``:
    the contributors' reported example counts)."""
    assert b.total is not None
    if not b.enc.dp_unit:
        total = masking.dequantize(b.total, b.enc.clip_norm, b.enc.num_levels)
        return (total / len(b.contributors)).astype(np.float32)
    records = sum(node_metrics[n].get("num-examples", 0.0) for n in b.contributors)
    noisy_sum = b.total.astype(np.float64) * b.enc.dp_unit
    step = -settings.dp_lr * noisy_sum / (settings.dp_sample_rate * max(records, 1.0))
    return step.astype(np.float32)


def settings_of(cfg: RunConfig) -> protocol.Settings:
    """The ``secagg-*`` keys; the buckets' shuffle is seeded by the run's ``seed``. Under
    ``dp='distributed'`` also the noise multiplier (calibrated as the nodes calibrate it),
    the clip, the sample rate and the DP-SGD step's ``learning-rate``."""
    from fedapp.privacy.distributed import noise_multiplier  # torch and Opacus: server only

    z = noise_multiplier(cfg) if cfg.dp == "distributed" else 0.0
    return protocol.Settings(bucket_size=cfg.secagg_bucket_size,
                             threshold=cfg.secagg_threshold, degree=cfg.secagg_degree,
                             clip_norm=cfg.secagg_clip_norm, bits=cfg.secagg_bits, seed=cfg.seed,
                             key_rounds=cfg.secagg_key_rounds,
                             dp_noise=z, dp_clip=cfg.dp_max_grad_norm,
                             dp_sample_rate=cfg.dp_sample_rate, dp_lr=cfg.learning_rate,
                             dp_delta=cfg.dp_delta)


def stage_bytes(msg: Message) -> int:
    """Bytes of a stage message's config records (keys, encrypted shares, node ids as 8
    bytes each), key names included; Flower's framing is not counted. (Flower's own
    ``ConfigRecord.count_bytes`` fails on an empty list.)"""
    if not msg.has_content():
        return 0

    def size(value: object) -> int:
        if isinstance(value, bytes | str):
            return len(value)
        if isinstance(value, list):
            return sum(size(v) for v in value)
        return 8

    return sum(len(k) + size(v) for record in msg.content.config_records.values()
               for k, v in record.items())
