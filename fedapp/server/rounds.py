"""One round's record: what happened to its replies, its metrics schema and its log line.

The schema is the ``MetricRecord`` that ``RobustStrategy.aggregate_train`` returns
(``RoundStats.metrics``); wrappers add their own keys to it (``byzantine-replaced`` from the
threat model, ``dp-epsilon`` from central DP). ``fedapp.server.wrappers.RoundRecorder``, the
outermost strategy layer, stores that final record as the round's row in ``ServerState.rounds``; the
ServerApp's evaluation adds ``server-loss`` and ``server-accuracy``. The log line,
``rounds.json`` and MLflow all read that one row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flwr.app import MetricRecord

from fedapp.robust import AggregationReport
from fedapp.validation import WEIGHT_KEY

LOCAL_DP_METRIC = "dp-epsilon"  # reported by each node that trains with DP-SGD


@dataclass
class RoundStats:
    """What happened to one training round's replies (node ids and reasons: diagnostics of
    this process, not persisted; the persisted row is ``metrics()``)."""

    server_round: int
    replies: int = 0
    accepted: int = 0
    accepted_nodes: tuple[int, ...] = ()
    rejected: dict[int, str] = field(default_factory=dict)  # node id -> reason
    rejected_kinds: dict[str, int] = field(default_factory=dict)  # REJECTION_KINDS -> nodes
    flagged: dict[int, str] = field(default_factory=dict)  # node id -> anomaly reason
    flagged_checks: dict[int, tuple[str, ...]] = field(default_factory=dict)  # -> CHECKS
    excluded_nodes: tuple[int, ...] = ()  # flagged nodes left out of the aggregation
    failed: dict[int, str] = field(default_factory=dict)  # node id -> "kind: reason"
    failed_kinds: dict[str, int] = field(default_factory=dict)  # kind -> nodes
    inflated: int = 0  # reported num-examples above weight-cap x the median
    kept_previous: bool = False
    report: AggregationReport | None = None
    started: float = field(default_factory=time.perf_counter)
    train_metrics: dict[str, float] = field(default_factory=dict)
    bytes_down: int = 0  # arrays sent to nodes, as serialized by Flower
    bytes_up: int = 0  # arrays received in train replies (compressed or dense)
    decode_seconds: float = 0.0
    aggregation_seconds: float = 0.0  # screening and the aggregation rule
    nodes_connected: int = 0  # connected when the round's nodes were sampled
    nodes_sampled: int = 0
    node_epsilon: dict[int, float] = field(default_factory=dict)  # local DP: each node's
    health: dict[str, int] = field(default_factory=dict)  # nodes-healthy/-benched/-probation

    @property
    def excluded(self) -> int:
        return len(self.excluded_nodes)

    def metrics(self) -> MetricRecord:
        """The round's metrics: the nodes' weighted train metrics and the counts."""
        record = MetricRecord({k: v for k, v in self.train_metrics.items() if k != WEIGHT_KEY})
        record["replies"] = self.replies
        record["accepted"] = self.accepted
        record["rejected"] = len(self.rejected)
        record["failures"] = len(self.failed)
        for kind, count in sorted(self.failed_kinds.items()):
            record[f"failed-{kind}"] = count
        record["inflated-counts"] = self.inflated
        record["flagged"] = len(self.flagged)
        record["excluded"] = self.excluded
        record["kept-previous"] = int(self.kept_previous)
        for key, count in self.health.items():
            record[key] = count
        record["bytes-up"] = self.bytes_up
        record["bytes-down"] = self.bytes_down
        record["decode-seconds"] = self.decode_seconds
        record["aggregation-seconds"] = self.aggregation_seconds
        record["nodes-connected"] = self.nodes_connected
        record["nodes-sampled"] = self.nodes_sampled
        record["seconds"] = time.perf_counter() - self.started
        return record


def round_line(row: dict[str, float], num_rounds: int) -> str:
    """One concise log line per round."""
    head = f"[fedapp] round {int(row['round'])}/{num_rounds}: {_evaluation(row)}"
    if "replies" not in row:
        return head + " (initial model)"
    kept = " | kept previous model" if row["kept-previous"] else ""
    if row.get("flagged"):
        kept += f" | flagged {int(row['flagged'])} excluded {int(row['excluded'])}"
    if row.get("nodes-benched"):
        kept += f" | benched {int(row['nodes-benched'])}"
    if row.get("nodes-probation"):
        kept += f" | probation {int(row['nodes-probation'])}"
    if "byzantine-replaced" in row:
        kept += f" | byzantine {int(row['byzantine-replaced'])}"
    epsilon = row.get("dp-epsilon-max", row.get("dp-epsilon"))  # local: worst node
    if epsilon is not None:
        kept += f" | epsilon {epsilon:.2f}"
    if row.get("failed-dp-refused"):
        kept += f" | epsilon refused by {int(row['failed-dp-refused'])}"
    kinds = ", ".join(f"{k[7:]} {int(v)}" for k, v in sorted(row.items())
                      if k.startswith("failed-") and v)
    failed = f"failed {int(row['failures'])}" + (f" ({kinds})" if kinds else "")
    return (f"{head} | replies {int(row['replies'])} accepted {int(row['accepted'])} "
            f"rejected {int(row['rejected'])} {failed}{kept} | "
            f"up {row['bytes-up'] / 1e3:.1f} kB down {row['bytes-down'] / 1e3:.1f} kB | "
            f"{row['seconds']:.1f}s")


def _evaluation(row: dict[str, float]) -> str:
    """The server's accuracy and loss; without a server test set, the nodes' own."""
    if "server-accuracy" in row:
        return f"acc {row['server-accuracy']:.4f} loss {row['server-loss']:.4f}"
    if "eval-accuracy" in row:
        return (f"federated acc {row['eval-accuracy']:.4f} loss {row['eval-loss']:.4f} "
                "(no server test set)")
    return "no evaluation (no server test set, no federated evaluation)"
