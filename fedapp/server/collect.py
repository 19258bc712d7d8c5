"""A round's train replies into one ``(n, d)`` float32 matrix of validated updates.

Each reply becomes one row through ``fedapp.updates.reply_update`` (dense: validated, then
``local - global``; compressed: decoded). Failed nodes (by kind), rejected replies and
inflated counts are counted in the round's ``RoundStats`` with a one-line reason, never
raised; each node's outcome goes to the circuit breaker's ``outcomes``.
"""

from __future__ import annotations

import time
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.common.logger import log

from fedapp.compression.wire import serialized_bytes
from fedapp.server.health import REJECTED, Reply
from fedapp.server.replies import record_failure, record_inflated
from fedapp.server.rounds import LOCAL_DP_METRIC, RoundStats
from fedapp.updates import is_compressed, reply_update
from fedapp.validation import ReplyRejected, array_specs, weighted_metrics


def collect_train(server_round: int, stats: RoundStats, replies: list[Message],
                  current: ArrayRecord, global_flat: np.ndarray, outcomes: dict[int, Reply], *,
                  sent: dict[str, int], weight_cap: float
                  ) -> tuple[np.ndarray, list[int], list[dict[str, float]]]:
    """Validate every reply into one row of a ``(replies, d)`` float32 matrix (a rejected
    reply's row is overwritten by the next one); the matrix, the accepted nodes (one per
    row) and their metrics. ``sent``: message id of each instruction -> its node (an
    unreachable node's error reply comes from the SuperLink, not from the node)."""
    specs = array_specs(current)
    matrix = np.empty((len(replies), global_flat.size), dtype=np.float32)
    metrics: list[dict[str, float]] = []
    nodes: list[int] = []
    for msg in replies:
        stats.replies += 1
        node = sent.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
        if msg.has_error():
            outcomes[node] = Reply(record_failure(server_round, stats, node, msg),
                                   from_node=msg.metadata.src_node_id == node)
            continue
        stats.bytes_up += serialized_bytes(msg.content)
        compressed, t0 = is_compressed(msg.content), time.perf_counter()
        try:
            _, node_metrics = reply_update(msg.content, specs, global_flat,
                                           out=matrix[len(nodes)])
        except ReplyRejected as exc:
            record_rejected(server_round, stats, node, exc)
            outcomes[node] = Reply(REJECTED)
            continue
        if compressed:
            stats.decode_seconds += time.perf_counter() - t0
        metrics.append(node_metrics)
        nodes.append(node)
        outcomes[node] = Reply()
    record_inflated(server_round, stats, nodes, metrics, weight_cap)
    record_accepted(stats, nodes, metrics)
    return matrix, nodes, metrics


def record_rejected(server_round: int, stats: RoundStats, node: int, exc: ReplyRejected
                    ) -> None:
    """Count and log a rejected reply by its kind."""
    stats.rejected[node] = str(exc)
    stats.rejected_kinds[exc.kind] = stats.rejected_kinds.get(exc.kind, 0) + 1
    log(WARNING, "round %d: rejected reply of node %d: %s", server_round, node, exc)


def record_accepted(stats: RoundStats, nodes: list[int], metrics: list[dict[str, float]]
                    ) -> None:
    """The accepted nodes, their weighted train metrics and, under local DP, each node's
    epsilon (the worst-off node's budget is what matters: ``dp-epsilon-max``)."""
    stats.accepted, stats.accepted_nodes = len(nodes), tuple(nodes)
    stats.train_metrics = weighted_metrics(metrics)
    stats.node_epsilon = {node: m[LOCAL_DP_METRIC] for node, m in zip(nodes, metrics,
                                                                       strict=True)
                          if LOCAL_DP_METRIC in m}
    if stats.node_epsilon:
        stats.train_metrics[LOCAL_DP_METRIC + "-max"] = max(stats.node_epsilon.values())
