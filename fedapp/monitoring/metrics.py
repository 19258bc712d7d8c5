"""The ServerApp's Prometheus metrics: one registry, updated once per round.

Every metric is named by Prometheus's conventions: the ``fedapp_`` prefix, the unit in
the name (``_seconds``, ``_bytes``, ``_ratio``), ``_total`` for counters. Labels are
bounded: check names (``fedapp.robust.detection.CHECKS``), rejection kinds
(``fedapp.validation.REJECTION_KINDS``), failure kinds (``fedapp.node_errors``) and node
ids of the federation; never a round number, a message id or a free-text reason.

``FederationMetrics.observe`` reads the round's row (``fedapp.server.rounds``, the same
row as ``rounds.json``), the round's diagnostics (``RoundStats``: which node was flagged
by which check) and the nodes' reputations. It keeps one piece of its own state: how
many consecutive rounds each node has been flagged in (``fedapp_node_flagged_streak_rounds``,
reset by a round in which the node's update passed screening; this process only, so a
resumed run starts it again from 0).

The process's CPU and memory come from the client library's process collector
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ...).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from fedapp.node_errors import KINDS
from fedapp.robust.detection import CHECKS
from fedapp.server.health import TIMEOUT
from fedapp.server.rounds import RoundStats
from fedapp.validation import REJECTION_KINDS

FAILURE_KINDS = tuple(sorted({*KINDS.values(), TIMEOUT, "other"}))
# Round wall times span seconds (a laptop simulation) to an hour (a slow hospital).
ROUND_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
AGGREGATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60)


class FederationMetrics:
    """The metrics of one ServerApp process (see the module docstring)."""

    def __init__(self, *, run_id: int, dataset: str, aggregator: str, planned_rounds: int,
                 quorum: int, model_bytes: int, dp_budget: float | None = None) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.model_bytes = model_bytes
        self._streaks: dict[str, int] = {}
        self._best = 0.0
        self._last = time.time()
        self._define_training()
        self._define_communication()
        self._define_security()
        self._define_system()
        self.info.labels(str(run_id), dataset, aggregator).set(1)
        self.rounds_planned.set(planned_rounds)
        self.nodes_quorum.set(quorum)
        if dp_budget is not None:
            self.dp_budget.set(dp_budget)
        for kind in REJECTION_KINDS:  # every label value exists from the start: rates work
            self.rejected.labels(kind)
        for kind in FAILURE_KINDS:
            self.failed.labels(kind)
        for check in CHECKS:
            self.flagged.labels(check), self.excluded.labels(check)

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def _counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _define_training(self) -> None:
        g = self._gauge
        self.info = g("fedapp_run_info", "The Flower run this ServerApp drives (always 1).",
                      ("run_id", "dataset", "aggregator"))
        self.round = g("fedapp_round", "The last round completed (evaluated).")
        self.rounds_planned = g("fedapp_rounds_planned", "num-server-rounds of the run.")
        self.rounds = self._counter("fedapp_rounds_completed",
                                    "Rounds completed by this process.")
        self.kept_previous = self._counter(
            "fedapp_rounds_kept_previous_model",
            "Rounds that kept the previous global model (too few valid replies).")
        self.last_round = g("fedapp_last_round_timestamp_seconds",
                            "Unix time at which the last round completed.")
        self.accuracy = g("fedapp_server_accuracy_ratio", "Accuracy on the server's test set.")
        self.best_accuracy = g("fedapp_server_accuracy_best_ratio",
                               "Best server accuracy of the run so far.")
        self.loss = g("fedapp_server_loss", "Loss on the server's test set.")
        self.eval_accuracy = g("fedapp_federated_accuracy_ratio",
                               "The nodes' evaluation accuracy (weighted mean).")
        self.eval_loss = g("fedapp_federated_loss", "The nodes' evaluation loss (weighted mean).")
        self.train_loss = g("fedapp_client_train_loss",
                            "The nodes' local training loss (weighted mean).")
        self.train_accuracy = g("fedapp_client_train_accuracy_ratio",
                                "The nodes' local training accuracy (weighted mean).")
        self.duration = Histogram("fedapp_round_duration_seconds",
                                  "Wall time of a round, training and evaluation.",
                                  buckets=ROUND_BUCKETS, registry=self.registry)

    def _define_communication(self) -> None:
        g = self._gauge
        self.bytes_up = self._counter("fedapp_upload_bytes",
                                      "Bytes of train replies received (as serialized).")
        self.bytes_down = self._counter("fedapp_download_bytes",
                                        "Bytes of train instructions sent (as serialized).")
        self.round_up = g("fedapp_round_upload_bytes", "Bytes of the last round's replies.")
        self.round_down = g("fedapp_round_download_bytes",
                            "Bytes of the last round's instructions.")
        self.compression = g("fedapp_compression_ratio",
                             "Dense float32 update bytes / bytes received, last round.")
        self.encode = g("fedapp_encode_seconds",
                        "The nodes' mean time to compress an update, last round.")
        self.decode = self._counter("fedapp_decode_seconds",
                                    "Server time spent decoding compressed replies.")

    def _define_security(self) -> None:
        g, c = self._gauge, self._counter
        self.accepted = c("fedapp_replies_accepted", "Train replies accepted.")
        self.rejected = c("fedapp_replies_rejected", "Train replies rejected, by reason.",
                          ("reason",))
        self.failed = c("fedapp_replies_failed",
                        "Sampled nodes that failed (error reply or no reply), by kind.", ("kind",))
        self.bad_ratio = g("fedapp_round_bad_replies_ratio",
                           "Rejected and failed replies / nodes sampled, last round.")
        self.flagged = c("fedapp_updates_flagged",
                         "Updates flagged by screening, by check (once per check that flagged "
                         "it).", ("check",))
        self.excluded = c("fedapp_updates_excluded",
                          "Flagged updates excluded from the aggregation, by check.", ("check",))
        self.round_flagged = g("fedapp_round_flagged_updates", "Updates flagged, last round.")
        self.round_excluded = g("fedapp_round_excluded_updates", "Updates excluded, last round.")
        self.inflated = c("fedapp_inflated_counts",
                          "Replies whose num-examples exceeded weight-cap x the median.")
        self.reputation = g("fedapp_node_reputation",
                            "A node's cosine reputation (smoothed cosine to the reference).",
                            ("node",))
        self.streak = g("fedapp_node_flagged_streak_rounds",
                        "Consecutive rounds in which a node's update was flagged.", ("node",))
        self.epsilon = g("fedapp_dp_epsilon",
                         "Epsilon spent: central DP's, or the most any node reports (local).")
        self.node_epsilon = g("fedapp_node_dp_epsilon",
                              "Epsilon a node reports spent in this run (local DP).", ("node",))
        self.dp_budget = g("fedapp_dp_epsilon_budget", "The run's target epsilon (dp-epsilon).")

    def _define_system(self) -> None:
        g = self._gauge
        self.aggregation = Histogram("fedapp_aggregation_seconds",
                                     "Server time to screen and aggregate a round's updates.",
                                     buckets=AGGREGATION_BUCKETS, registry=self.registry)
        self.connected = g("fedapp_nodes_connected", "Nodes connected at the last sampling.")
        self.sampled = g("fedapp_nodes_sampled", "Nodes sampled for the last training round.")
        self.healthy = g("fedapp_nodes_healthy", "Nodes whose circuit breaker is closed.")
        self.benched = g("fedapp_nodes_benched", "Nodes benched by the circuit breaker.")
        self.probation = g("fedapp_nodes_probation", "Nodes on probation after a bench.")
        self.nodes_quorum = g("fedapp_nodes_quorum", "min-train-nodes: fewer stops training.")
        c = self._counter  # secure aggregation (secagg=true; fedapp.secagg)
        self.secagg_buckets = c("fedapp_secagg_buckets", "Buckets formed by secure aggregation.")
        self.secagg_dropped = c("fedapp_secagg_buckets_dropped",
                                "Buckets left out of a round (too few contributors or "
                                "share holders, shares that disagree, a sum out of bounds).")
        self.secagg_seconds = c("fedapp_secagg_seconds",
                                "Server time in secure aggregation's extra stages.")
        self.secagg_setups = c("fedapp_secagg_key_setups",
                               "Nodes that drew new key pairs (the others kept theirs).")

    def observe(self, row: Mapping[str, float], stats: RoundStats | None,
                reputation: Mapping[int, float]) -> None:
        """One completed round: its row, its diagnostics (None when not this process's)
        and every node's reputation score."""
        now = time.time()
        if "replies" in row:  # a training round (not the initial model's evaluation)
            self.duration.observe(now - self._last)
            self.rounds.inc()
            self.round.set(row["round"])
            self.last_round.set(now)
            self._training(row)
            self._communication(row)
            self._security(row, stats)
            self._system(row, stats)
        self._last = now
        self._evaluation(row)
        for node, score in reputation.items():
            self.reputation.labels(str(node)).set(score)

    def _evaluation(self, row: Mapping[str, float]) -> None:
        pairs = ((self.accuracy, "server-accuracy"), (self.loss, "server-loss"),
                 (self.eval_accuracy, "eval-accuracy"), (self.eval_loss, "eval-loss"))
        for gauge, key in pairs:
            if key in row:
                gauge.set(row[key])
        if "server-accuracy" in row:
            self._best = max(self._best, row["server-accuracy"])
            self.best_accuracy.set(self._best)

    def _training(self, row: Mapping[str, float]) -> None:
        for gauge, key in ((self.train_loss, "train-loss"),
                           (self.train_accuracy, "train-accuracy")):
            if key in row:
                gauge.set(row[key])
        if row.get("kept-previous"):
            self.kept_previous.inc()

    def _communication(self, row: Mapping[str, float]) -> None:
        up, down = row.get("bytes-up", 0.0), row.get("bytes-down", 0.0)
        self.bytes_up.inc(up)
        self.bytes_down.inc(down)
        self.round_up.set(up)
        self.round_down.set(down)
        arrived = row["accepted"] + row["rejected"]  # replies with content
        if up > 0:
            self.compression.set(arrived * self.model_bytes / up)
        self.encode.set(row.get("compress-encode-seconds", 0.0))
        self.decode.inc(row.get("decode-seconds", 0.0))

    def _security(self, row: Mapping[str, float], stats: RoundStats | None) -> None:
        self.accepted.inc(row["accepted"])
        self.inflated.inc(row.get("inflated-counts", 0))
        for kind in FAILURE_KINDS:
            self.failed.labels(kind).inc(row.get(f"failed-{kind}", 0))
        sampled = row.get("nodes-sampled") or row["replies"]
        self.bad_ratio.set((row["rejected"] + row["failures"]) / sampled if sampled else 0.0)
        self.round_flagged.set(row.get("flagged", 0))
        self.round_excluded.set(row.get("excluded", 0))
        if "dp-epsilon-max" in row or "dp-epsilon" in row:
            self.epsilon.set(row.get("dp-epsilon-max", row.get("dp-epsilon", 0.0)))
        if stats is None:
            return
        for kind, count in stats.rejected_kinds.items():
            self.rejected.labels(kind).inc(count)
        for node, checks in stats.flagged_checks.items():
            for check in checks:
                self.flagged.labels(check).inc()
                if node in stats.excluded_nodes:
                    self.excluded.labels(check).inc()
        for node, epsilon in stats.node_epsilon.items():
            self.node_epsilon.labels(str(node)).set(epsilon)
        self._streaks_after(stats)

    def _streaks_after(self, stats: RoundStats) -> None:
        """A node's streak grows in a round it is flagged and ends in one where its update
        passed screening; a round without its update (not sampled, failed, rejected)
        leaves it as it was."""
        for node in stats.accepted_nodes:
            key = str(node)
            self._streaks[key] = self._streaks.get(key, 0) + 1 \
                if node in stats.flagged_checks else 0
            self.streak.labels(key).set(self._streaks[key])

    def _system(self, row: Mapping[str, float], stats: RoundStats | None) -> None:
        self.aggregation.observe(row.get("aggregation-seconds", 0.0))
        pairs = ((self.connected, "nodes-connected"), (self.sampled, "nodes-sampled"),
                 (self.healthy, "nodes-healthy"), (self.benched, "nodes-benched"),
                 (self.probation, "nodes-probation"))
        for gauge, key in pairs:
            if key in row:
                gauge.set(row[key])
        self.secagg_buckets.inc(row.get("secagg-buckets", 0))
        self.secagg_dropped.inc(row.get("secagg-buckets-dropped", 0))
        self.secagg_seconds.inc(row.get("secagg-seconds", 0.0))
        self.secagg_setups.inc(row.get("secagg-setup-nodes", 0))


def series_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry can expose, labelled children or not yet: a counter
    ``x`` gives ``x_total``, a histogram ``x_bucket``, ``x_sum`` and ``x_count``."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("_sum", "_count")}
    names = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
