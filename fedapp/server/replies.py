"""What the strategy records about replies it cannot use as they are: failed nodes (by
kind), self-reported counts above the cap, and the nodes' evaluation replies.

Counted in the round's ``RoundStats`` and logged with a one-line reason; never raised.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import WARNING

from flwr.app import Message, MetricRecord
from flwr.common.logger import log

from fedapp.node_errors import kind_of
from fedapp.robust.weights import inflated_counts
from fedapp.server.rounds import RoundStats
from fedapp.validation import WEIGHT_KEY, ReplyRejected, check_metrics, weighted_metrics


def first_line(msg: Message) -> str:
    """The first line of an error reply's reason."""
    return (msg.error.reason.strip().splitlines() or ["no reason given"])[0]


def record_failure(server_round: int, stats: RoundStats, node: int, msg: Message) -> str:
    """Count a failed node by kind; log the first line of its reason; returns the kind."""
    kind, reason = kind_of(msg.error.code), first_line(msg)
    stats.failed[node] = f"{kind}: {reason}"
    stats.failed_kinds[kind] = stats.failed_kinds.get(kind, 0) + 1
    log(WARNING, "round %d: node %d failed (%s): %s", server_round, node, kind, reason)
    return kind


def record_inflated(server_round: int, stats: RoundStats, nodes: list[int],
                    metrics: list[dict[str, float]], weight_cap: float) -> None:
    """Count and log every reported ``num-examples`` that the capped weights lower
    (``fedapp.robust.weights``: outliers to the reference, others to ``weight_cap`` x it)."""
    counts = [m[WEIGHT_KEY] for m in metrics]
    for i, weight in inflated_counts(counts, weight_cap):
        stats.inflated += 1
        log(WARNING, "round %d: node %d reported num-examples=%g; weighed as %g (weight-cap "
            "%g, outlier counts weigh as the median of the others)", server_round, nodes[i],
            counts[i], weight, weight_cap)


def evaluation_metrics(server_round: int, replies: Iterable[Message],
                       sent: Mapping[str, int]) -> MetricRecord | None:
    """Weighted mean of the nodes' evaluation metrics; failed and bad replies are logged
    and skipped. ``sent``: message id of each instruction -> the node it went to."""
    rows = []
    for msg in replies:
        node = sent.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
        if msg.has_error():
            log(WARNING, "round %d: evaluation failed on node %d (%s): %s", server_round,
                node, kind_of(msg.error.code), first_line(msg))
            continue
        try:
            rows.append(check_metrics(msg.content))
        except ReplyRejected as exc:
            log(WARNING, "round %d: rejected evaluation reply of node %d: %s",
                server_round, node, exc)
    return MetricRecord(weighted_metrics(rows)) if rows else None  # type: ignore[arg-type]
