"""The fedapp Strategy: validate replies, aggregate *updates* with a pluggable rule.

A subclass of Flower's FedAvg: sampling, messaging and the round loop
(``Strategy.start``) are Flower's. What changes is ``aggregate_train``:

1. failed nodes (``msg.has_error()``) are counted and logged;
2. every other reply is validated (``fedapp.validation``); a bad one is rejected
   with a reason, counted and logged, never raised;
3. accepted replies become updates ``u_i = w_i - w_global`` (or, for replies the
   compression mod encoded, the decoded update) stacked into an ``(n, d)``
   float32 matrix, weighted by ``num-examples``;
4. the aggregation rule maps the matrix to one ``d``-vector ``a``;
5. the new global model is ``w_global + server_lr * a``.

A round with fewer accepted replies than ``min_train_nodes`` keeps the previous
global model and says so.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedapp.arrays import flatten, unflatten
from fedapp.compression.server import decode_update, is_compressed
from fedapp.compression.wire import serialized_bytes
from fedapp.defenses import (
    DetectionReport,
    Reputation,
    clip_to_norm_threshold,
    detect_anomalies,
)
from fedapp.privacy import CentralAccountant
from fedapp.robust import AggregationReport, weighted_mean
from fedapp.robust.base import Aggregator
from fedapp.validation import (
    WEIGHT_KEY,
    ReplyRejected,
    array_specs,
    check_metrics,
    check_train_reply,
    weighted_metrics,
)

LOCAL_DP_METRIC = "dp-epsilon"  # reported by each node that trains with DP-SGD


@dataclass
class RoundStats:
    """What happened to one training round's replies."""

    server_round: int
    replies: int = 0
    accepted: int = 0
    rejected: dict[int, str] = field(default_factory=dict)  # node id -> reason
    flagged: dict[int, str] = field(default_factory=dict)  # node id -> anomaly reason
    excluded: int = 0  # flagged updates left out of the aggregation
    failed: dict[int, str] = field(default_factory=dict)  # node id -> error reason
    kept_previous: bool = False
    report: AggregationReport | None = None
    started: float = field(default_factory=time.perf_counter)
    train_metrics: dict[str, float] = field(default_factory=dict)
    dp_epsilon: float | None = None  # central DP: epsilon spent after this round
    bytes_down: int = 0  # arrays sent to nodes, as serialized by Flower
    bytes_up: int = 0  # arrays received in train replies (compressed or dense)
    decode_seconds: float = 0.0


class RobustStrategy(FedAvg):
    """FedAvg's sampling and round loop; validated, update-based, pluggable aggregation."""

    def __init__(self, *, aggregate_fn: Aggregator = weighted_mean, server_lr: float = 1.0,
                 detection: str = "off", norm_threshold: float = 3.5,
                 cosine_threshold: float = 0.0, sign_threshold: float = 0.5,
                 duplicate_threshold: float = 0.1, reputation_memory: float = 0.9,
                 dp_accountant: CentralAccountant | None = None,
                 **fedavg_kwargs: object) -> None:
        super().__init__(**fedavg_kwargs)  # type: ignore[arg-type]
        if detection not in ("off", "flag", "exclude"):
            raise ValueError(f"detection={detection!r} is not one of: off, flag, exclude")
        self.aggregate_fn = aggregate_fn
        self.server_lr = server_lr
        self.detection = detection
        self.norm_threshold = norm_threshold
        self.cosine_threshold = cosine_threshold
        self.sign_threshold = sign_threshold
        self.duplicate_threshold = duplicate_threshold
        self.reputation = Reputation(memory=reputation_memory, threshold=cosine_threshold)
        # Central DP: aggregate_fn is a CentralDP; the accountant composes the rounds.
        self.dp_accountant = dp_accountant
        self._dp_sampling = (0, 0)  # (nodes sampled, nodes connected) this round
        self.history: dict[int, RoundStats] = {}
        self._global: ArrayRecord | None = None

    def summary(self) -> None:
        super().summary()
        name = getattr(self.aggregate_fn, "__name__", repr(self.aggregate_fn))
        log(INFO, "\t└──> Aggregation: %s on updates, server lr %s", name, self.server_lr)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = arrays
        stats = self.history[server_round] = RoundStats(server_round)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        stats.bytes_down = sum(serialized_bytes(m.content) for m in messages)
        if self.dp_accountant is not None:  # the noise scale uses the public sample size
            self.aggregate_fn.num_sampled = len(messages)  # type: ignore[attr-defined]
            self._dp_sampling = (len(messages), len(list(grid.get_node_ids())))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._global is None:
            raise RuntimeError("aggregate_train called before configure_train")
        stats = self.history.setdefault(server_round, RoundStats(server_round))
        reference = array_specs(self._global)
        global_flat = flatten(self._global)
        replies = list(replies)
        # One (replies, d) float32 matrix, filled row by row: accepted updates are
        # written in place (no per-reply copies, no stacking); a rejected reply's row
        # is overwritten by the next one.
        matrix = np.empty((len(replies), global_flat.size), dtype=np.float32)
        metrics: list[dict[str, float]] = []
        nodes: list[int] = []
        for msg in replies:
            stats.replies += 1
            node = msg.metadata.src_node_id
            if msg.has_error():
                stats.failed[node] = msg.error.reason
                log(WARNING, "round %d: node %d failed: %s", server_round, node, msg.error.reason)
                continue
            stats.bytes_up += serialized_bytes(msg.content)
            row = matrix[len(nodes)]
            try:
                if is_compressed(msg.content):
                    t0 = time.perf_counter()
                    row[:], node_metrics = decode_update(msg.content, reference)
                    stats.decode_seconds += time.perf_counter() - t0
                else:
                    _, node_metrics = check_train_reply(msg.content, reference, out=row)
                    np.subtract(row, global_flat, out=row)
            except ReplyRejected as exc:
                stats.rejected[node] = str(exc)
                log(WARNING, "round %d: rejected reply of node %d: %s", server_round, node, exc)
                continue
            metrics.append(node_metrics)
            nodes.append(node)
        stats.accepted = len(nodes)
        stats.train_metrics = weighted_metrics(metrics)
        spent = [m[LOCAL_DP_METRIC] for m in metrics if LOCAL_DP_METRIC in m]
        if spent:  # local DP: the worst-off node's budget is what matters
            stats.train_metrics[LOCAL_DP_METRIC + "-max"] = max(spent)

        if len(nodes) < max(self.min_train_nodes, 1):
            stats.kept_previous = True
            log(WARNING, "round %d: %d valid replies < min-train-nodes=%d; keeping the previous "
                "global model", server_round, len(nodes), self.min_train_nodes)
            return self._global, self._round_metrics(stats)

        updates = torch.from_numpy(matrix[: len(nodes)])  # a view: no copy
        weights = torch.tensor([m[WEIGHT_KEY] for m in metrics], dtype=torch.float64)
        if self.detection != "off":
            updates, weights = self._detect(server_round, stats, nodes, updates, weights)
        try:
            if hasattr(self.aggregate_fn, "f_for"):  # f counts the excluded rows too
                result = self.aggregate_fn(updates, weights, num_replies=len(nodes))
            else:
                result = self.aggregate_fn(updates, weights)
        except ValueError as exc:  # e.g. too few replies for the rule's f after dropouts
            stats.kept_previous = True
            log(WARNING, "round %d: aggregation of %d updates failed (%s); keeping the "
                "previous global model", server_round, len(nodes), exc)
            return self._global, self._round_metrics(stats)
        stats.report = result.report
        if self.dp_accountant is not None:
            stats.dp_epsilon = self.dp_accountant.step(*self._dp_sampling)
        new_flat = global_flat + self.server_lr * result.aggregate.numpy().astype(np.float32)
        return unflatten(new_flat, self._global), self._round_metrics(stats)

    def _detect(self, server_round: int, stats: RoundStats, nodes: list[int],
                updates: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Screen the round's updates (``screen``), record and log what was flagged."""
        updates, weights, report, dropped = self.screen(nodes, updates, weights)
        stats.flagged = {nodes[i]: report.reasons[i] for i in report.flagged}
        stats.excluded = len(dropped)
        scores = self.reputation.scores()
        excluded = {nodes[i] for i in dropped}
        for node, reason in stats.flagged.items():
            log(WARNING, "round %d: node %d flagged (%s), cosine reputation %.2f%s",
                server_round, node, reason, scores[node], ", excluded" if node in excluded else "")
        return updates, weights

    def screen(self, nodes: list[int], updates: torch.Tensor, weights: torch.Tensor, *,
               record: bool = True) -> tuple[torch.Tensor, torch.Tensor, DetectionReport,
                                             tuple[int, ...]]:
        """Anomaly detection and, in ``exclude`` mode, exclusion; returns the rows that go on
        to the rule, their weights, the report and the indices of the excluded rows.

        1. ``detect_anomalies`` scores every row (norm z, cosine to the coordinate-wise
           median, sign skew);
        2. each node's cosine joins its ``Reputation`` and the cosine check is made on the
           reputation (``DetectionReport.with_reputation``);
        3. ``exclude`` mode drops at most the rule's ``f`` flagged rows, the most severe (all
           of them when the rule has no ``f``), none if that would leave fewer than
           ``min_train_nodes``; the rows kept are scaled down to the norm threshold
           (``clip_to_norm_threshold``), so a large row that was not dropped cannot dominate.

        ``record=False`` changes no state (the adaptive attacker of the robustness benchmark
        uses it to try candidate rows against the defense as it stands)."""
        raw = detect_anomalies(updates, norm_threshold=self.norm_threshold,
                               cosine_threshold=self.cosine_threshold,
                               sign_threshold=self.sign_threshold,
                               duplicate_threshold=self.duplicate_threshold)
        cosines = dict(zip(nodes, raw.cosine, strict=True))
        preview = self.reputation.preview(cosines)
        report = raw.with_reputation([preview[n] for n in nodes])
        if record:
            self.reputation.update(cosines, flagged={nodes[i] for i in report.flagged})
        if self.detection != "exclude":
            return updates, weights, report, ()
        f_for = getattr(self.aggregate_fn, "f_for", None)
        limit = f_for(len(nodes)) if f_for is not None else 0
        drop = report.most_severe(limit if limit > 0 else None)
        keep = [i for i in range(len(nodes)) if i not in set(drop)]
        if drop and len(keep) < max(self.min_train_nodes, 1):
            log(WARNING, "excluding %d flagged updates would leave %d < min-train-nodes; "
                "aggregating all", len(drop), len(keep))
            keep, drop = list(range(len(nodes))), ()
        if drop:
            updates, weights = updates[keep], weights[keep]
        return clip_to_norm_threshold(updates, self.norm_threshold), weights, report, drop

    def _round_metrics(self, stats: RoundStats) -> MetricRecord:
        record = MetricRecord({k: v for k, v in stats.train_metrics.items() if k != WEIGHT_KEY})
        record["replies"] = stats.replies
        record["accepted"] = stats.accepted
        record["rejected"] = len(stats.rejected)
        record["failures"] = len(stats.failed)
        record["flagged"] = len(stats.flagged)
        record["excluded"] = stats.excluded
        record["bytes-up"] = stats.bytes_up
        record["bytes-down"] = stats.bytes_down
        record["decode-seconds"] = stats.decode_seconds
        if stats.dp_epsilon is not None:
            record["dp-epsilon"] = stats.dp_epsilon
        return record

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        """Weighted mean of client-side evaluation metrics; bad replies are skipped."""
        rows = []
        for msg in replies:
            if msg.has_error():
                log(WARNING, "round %d: evaluation failed on node %d: %s", server_round,
                    msg.metadata.src_node_id, msg.error.reason)
                continue
            try:
                rows.append(check_metrics(msg.content))
            except ReplyRejected as exc:
                log(WARNING, "round %d: rejected evaluation reply of node %d: %s",
                    server_round, msg.metadata.src_node_id, exc)
        return MetricRecord(weighted_metrics(rows)) if rows else None  # type: ignore[arg-type]
