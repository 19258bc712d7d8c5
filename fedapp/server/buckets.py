"""A round whose rows are bucket means: what secure aggregation hands the strategy.

Under secure aggregation (``fedapp.secagg``) the server learns one sum per bucket of
nodes, never a node's update. ``BucketRound`` is the round as the strategy sees it: each
node's outcome (failed by kind, rejected, contributed), the contributors' metrics, and
one row per unmasked bucket (the mean of its contributors' clipped updates, weighted by
how many contributed). ``flag_buckets`` records screening's verdict on bucket rows: a
flagged bucket flags each contributor, and buckets are reshuffled every round, so an
honest node shares a flag now and then while a Byzantine node is flagged round after
round (what ``fedapp_node_flagged_streak`` and its alert watch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.common.logger import log

from fedapp.server.collect import record_accepted
from fedapp.server.health import REJECTED, Reply
from fedapp.server.rounds import RoundStats
from fedapp.server.screen import ScreenPlan


@dataclass
class BucketRound:
    """One bucketed round (module docstring). ``failures`` / ``rejected``: node ->
    (kind, reason); ``node_metrics``: each contributor's train metrics; ``rows`` and
    ``members``: each unmasked bucket's mean and its contributors; ``dropped``: each
    bucket left out, with its nodes and the reason."""

    failures: dict[int, tuple[str, str]] = field(default_factory=dict)
    rejected: dict[int, tuple[str, str]] = field(default_factory=dict)
    node_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    replies: int = 0
    bytes_up: int = 0
    rows: list[np.ndarray] = field(default_factory=list)
    members: list[tuple[int, ...]] = field(default_factory=list)
    dropped: list[tuple[tuple[int, ...], str]] = field(default_factory=list)
    row_weights: list[float] = field(default_factory=list)  # default: contributors per row

    def labels(self) -> list[int]:
        """Row labels for screening: ``-1, -2, ...`` (a bucket is not a node)."""
        return [-(i + 1) for i in range(len(self.rows))]

    def weights(self) -> list[float]:
        """Each row's weight: ``row_weights`` if given, else its number of contributors."""
        return list(self.row_weights) or [float(len(m)) for m in self.members]

    def matrix(self, size: int) -> np.ndarray:
        """The bucket means as one ``(buckets, size)`` float32 matrix."""
        out = np.empty((len(self.rows), size), dtype=np.float32)
        for i, row in enumerate(self.rows):
            out[i] = row
        return out

    def record(self, server_round: int, stats: RoundStats) -> dict[int, Reply]:
        """Count every node's outcome in ``stats``; the outcomes for the breaker. A node in
        a bucket left out for others' failures did its part: it counts as a success."""
        stats.replies, stats.bytes_up = self.replies, self.bytes_up
        outcomes: dict[int, Reply] = {}
        for node, (kind, reason) in self.failures.items():
            stats.failed[node] = f"{kind}: {reason}"
            stats.failed_kinds[kind] = stats.failed_kinds.get(kind, 0) + 1
            outcomes[node] = Reply(kind)
        for node, (kind, reason) in self.rejected.items():
            stats.rejected[node] = reason
            stats.rejected_kinds[kind] = stats.rejected_kinds.get(kind, 0) + 1
            outcomes[node] = Reply(REJECTED)
        for nodes, reason in self.dropped:
            for node in nodes:
                outcomes.setdefault(node, Reply())
            log(WARNING, "round %d: bucket %s left out: %s", server_round, list(nodes), reason)
        contributors = [n for m in self.members for n in m]
        for node in contributors:
            outcomes[node] = Reply()
        record_accepted(stats, contributors, [self.node_metrics[n] for n in contributors])
        return outcomes


def flag_buckets(server_round: int, stats: RoundStats, members: list[tuple[int, ...]],
                 plan: ScreenPlan) -> None:
    """Record screening's flags and exclusions of bucket rows on their contributors."""
    report = plan.report
    for i in report.flagged:
        for node in members[i]:
            stats.flagged[node] = f"bucket of {len(members[i])}: {report.reasons[i]}"
            stats.flagged_checks[node] = report.checks[i]
        log(WARNING, "round %d: bucket %s flagged (%s)%s", server_round, list(members[i]),
            report.reasons[i], ", excluded" if i in plan.dropped else "")
    stats.excluded_nodes = tuple(n for i in plan.dropped for n in members[i])
