"""The fedapp Strategy: validate replies, screen and aggregate *updates* with a pluggable rule.

A subclass of Flower's FedAvg: sampling, messaging and the round loop
(``Strategy.start``) are Flower's. What changes is ``aggregate_train``:

1. failed nodes (``msg.has_error()``) are counted and logged;
2. every other reply is validated and turned into its update ``u_i = w_i - w_global``
   (``fedapp.updates.reply_update``: dense or compressed); a bad one is rejected with a
   reason, counted and logged, never raised. Accepted updates are written straight into
   one ``(n, d)`` float32 matrix, weighted by ``num-examples``;
3. ``Screen`` (detection, reputation, exclusion; ``fedapp.server.screen``) runs on it;
4. the ``Aggregation`` (``fedapp.server.pipeline``) maps the rows to one ``d``-vector ``a``;
5. the new global model is ``w_global + server_lr * a``.

Every reply is attributed to the node its instruction was sent to (an unreachable node's
error reply comes from the SuperLink, not from the node), and failures are counted by kind
(``fedapp.node_errors``). Sampling waits at most ``wait_timeout`` for
``min_available_nodes`` (``fedapp.server.sampling``). A round with fewer accepted replies
than ``min_train_nodes``, or one the rule cannot aggregate, keeps the previous global
model and says so. Everything that persists across rounds is in ``self.state``
(``fedapp.server.state.ServerState``).

Node health (``fedapp.server.health``): every sampled node's outcome (success, failure by
kind, ``rejected``, or ``timeout`` when no reply came by the end of the round) goes to the
circuit breaker ``self.breaker``; benched nodes are left out of sampling (train and
evaluate) and out of the ``min_available_nodes`` wait, unless that leaves too few nodes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedapp.compression.wire import serialized_bytes
from fedapp.server import sampling
from fedapp.server.buckets import BucketRound, flag_buckets
from fedapp.server.collect import collect_train
from fedapp.server.health import TIMEOUT, Breaker, Reply
from fedapp.server.pipeline import Aggregation, AggregationPipeline, aggregate_screened
from fedapp.server.replies import evaluation_metrics
from fedapp.server.rounds import RoundStats
from fedapp.server.screen import Reputation, Screen, Screened, ScreenPlan, exclusion_limit
from fedapp.server.state import ServerState
from fedapp.updates import flatten, unflatten
from fedapp.validation import WEIGHT_KEY


class RobustStrategy(FedAvg):
    """FedAvg's sampling and round loop; validated, screened, update-based aggregation.

    ``aggregation`` defaults to the weighted mean by ``num-examples`` (Flower's FedAvg).
    ``state`` is the server state to continue from (default: a fresh one, whose
    reputation uses ``reputation_memory`` and ``cosine_threshold``). Reported counts above
    ``weight_cap`` x the round's median are logged and counted (``inflated-counts``).
    A node with ``health_max_failures`` consecutive failures is benched for
    ``health_cooldown`` rounds (``fedapp.server.health``; 0 turns it off).
    """

    def __init__(self, *, aggregation: Aggregation | None = None, server_lr: float = 1.0,
                 detection: str = "off", norm_threshold: float = 3.5,
                 cosine_threshold: float = 0.0, sign_threshold: float = 0.5,
                 duplicate_threshold: float = 0.1, cosine_spread: float = 0.0,
                 reputation_memory: float = 0.9,
                 state: ServerState | None = None, wait_timeout: float = 300.0,
                 weight_cap: float = 2.0, health_max_failures: int = 3,
                 health_cooldown: int = 5, cluster_threshold: float = 0.0,
                 cosine_floor: float | None = None, floor_rounds: int = 3,
                 sign_copies: bool = False, exclusion_min_share: float = 0.0,
                 **fedavg_kwargs: object) -> None:
        super().__init__(**fedavg_kwargs)  # type: ignore[arg-type]
        self.state = state or ServerState(
            reputation=Reputation(memory=reputation_memory, threshold=cosine_threshold))
        self.aggregation = aggregation or AggregationPipeline(weighting="num-examples",
                                                              state=self.state.pipeline)
        self.server_lr = server_lr
        self.screen_updates = Screen(detection, norm_threshold, cosine_threshold,
                                     sign_threshold, duplicate_threshold,
                                     min_keep=self.min_train_nodes,
                                     cosine_spread=cosine_spread,
                                     reputation=self.state.reputation,
                                     cluster_threshold=cluster_threshold,
                                     cosine_floor=cosine_floor, floor_rounds=floor_rounds,
                                     sign_copies=sign_copies,
                                     min_share=exclusion_min_share)
        self.wait_timeout = wait_timeout
        self.weight_cap = weight_cap
        self.breaker = Breaker(health_max_failures, health_cooldown)
        self.history: dict[int, RoundStats] = {}  # this process's rounds, for diagnostics
        # This round's instructions by message type: the Grid gives them their message ids
        # when it pushes them, and each reply names the id it answers.
        self._sent: dict[str, list[Message]] = {}
        self._known: set[int] = set()  # nodes seen connected in earlier rounds
        self._buckets: list[tuple[int, ...]] | None = None  # this round's, under SecAgg

    @property
    def detection(self) -> str:
        return self.screen_updates.mode

    @property
    def reputation(self) -> Reputation:
        return self.state.reputation

    def summary(self) -> None:
        log(INFO, "\t├── Sampling: train %s of the nodes (at least %d), evaluate %s (at least "
            "%d); waits up to %.0fs for %d nodes", self.fraction_train, self.min_train_nodes,
            self.fraction_evaluate, self.min_evaluate_nodes, self.wait_timeout,
            self.min_available_nodes)
        log(INFO, "\t└── Aggregation: %s on updates, server lr %s, screening %s",
            self.aggregation.name, self.server_lr, self.detection)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.state.arrays = arrays
        stats = self.history[server_round] = RoundStats(server_round)
        self.breaker.start_round(self.state.health, server_round)
        messages = self._configure(server_round, arrays, config, grid, MessageType.TRAIN)
        stats.bytes_down = sum(serialized_bytes(m.content) for m in messages)
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._configure(server_round, arrays, config, grid, MessageType.EVALUATE)

    def _configure(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                   grid: Grid, kind: str) -> list[Message]:
        """FedAvg's instructions to a sample of the nodes (``fedapp.server.sampling``)."""
        train = kind == MessageType.TRAIN
        fraction = self.fraction_train if train else self.fraction_evaluate
        minimum = self.min_train_nodes if train else self.min_evaluate_nodes
        if fraction == 0.0:
            return []
        what = f"round {server_round} {'train' if train else 'evaluate'}"
        nodes = sampling.available_nodes(
            grid, max(self.min_available_nodes, minimum), minimum, self.wait_timeout,
            known=self._known, what=what, benched=self.breaker.benched(self.state.health))
        self._known.update(nodes)
        pool = self.breaker.pool(self.state.health, nodes, minimum, what=what)
        chosen = sampling.sample(pool, fraction, minimum)
        if train and server_round in self.history:
            stats = self.history[server_round]
            stats.nodes_connected, stats.nodes_sampled = len(nodes), len(chosen)
        log(INFO, "configure_%s: Sampled %s nodes (out of %s%s)", "train" if train else
            "evaluate", len(chosen), len(pool),
            f"; {len(nodes) - len(pool)} benched" if len(pool) < len(nodes) else "")
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        self._sent[kind] = list(self._construct_messages(record, chosen, kind))
        return self._sent[kind]

    def sent_nodes(self, kind: str) -> dict[str, int]:
        """Message id of this round's instructions of ``kind`` -> the node it went to."""
        return {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent.get(kind, [])
                if m.metadata.message_id}  # set when a Grid pushed it

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        current = self.state.arrays
        if current is None:
            raise RuntimeError("aggregate_train called before configure_train")
        stats = self.history.setdefault(server_round, RoundStats(server_round))
        global_flat = flatten(current)
        outcomes: dict[int, Reply] = {}
        matrix, nodes, metrics = collect_train(
            server_round, stats, list(replies), current, global_flat, outcomes,
            sent=self.sent_nodes(MessageType.TRAIN), weight_cap=self.weight_cap)
        self._record_health(server_round, stats, outcomes)
        weights = [m[WEIGHT_KEY] for m in metrics]
        return self._apply(server_round, stats, nodes, matrix[: len(nodes)], weights,
                           contributors=len(nodes), global_flat=global_flat)

    def aggregate_buckets(self, server_round: int, bucketed: BucketRound
                          ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """A round whose rows are bucket means (``fedapp.secagg``: the sum of each bucket
        is all the server learns): the nodes' outcomes from ``bucketed``, then screening
        and the rule on the bucket means, weighted by their number of contributors. A
        bucket's flag is every contributor's (``fedapp.server.buckets``)."""
        stats = self.history.setdefault(server_round, RoundStats(server_round))
        outcomes = bucketed.record(server_round, stats)
        self._record_health(server_round, stats, outcomes)
        self._buckets = bucketed.members
        try:
            return self._apply(server_round, stats, bucketed.labels(), bucketed.matrix(
                self.model_size()), bucketed.weights(), contributors=stats.accepted)
        finally:
            self._buckets = None

    def _apply(self, server_round: int, stats: RoundStats, nodes: list[int],
               rows: np.ndarray, weights: list[float], *, contributors: int,
               global_flat: np.ndarray | None = None
               ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate ``rows`` (one per node, or per bucket) and apply the result; too few
        contributing nodes keep the previous model."""
        current = self.state.arrays
        assert current is not None
        new = current
        if contributors < max(self.min_train_nodes, 1) or not nodes:
            stats.kept_previous = True
            log(WARNING, "round %d: %d valid replies < min-train-nodes=%d; keeping the previous "
                "global model", server_round, contributors, self.min_train_nodes)
        else:
            updates = torch.from_numpy(rows)  # a view: no copy
            aggregate = self._aggregate(server_round, stats, nodes, updates,
                                        torch.tensor(weights, dtype=torch.float64))
            if aggregate is not None:  # one model-sized vector more, not three
                global_flat = flatten(current) if global_flat is None else global_flat
                new_flat = np.multiply(aggregate, self.server_lr, dtype=np.float32)
                new = unflatten(np.add(new_flat, global_flat, out=new_flat), current)
        self.state.arrays, self.state.server_round = new, server_round
        return new, stats.metrics()

    def model_size(self) -> int:
        """Number of parameters of the current global model."""
        assert self.state.arrays is not None
        return sum(int(np.prod(a.shape, dtype=np.int64)) for a in self.state.arrays.values())

    def _record_health(self, server_round: int, stats: RoundStats,
                       outcomes: dict[int, Reply]) -> None:
        """The round's outcomes to the breaker; a sampled node without a reply (Flower's
        ``round-timeout`` is over) is a ``timeout`` failure."""
        sent = [m.metadata.dst_node_id for m in self._sent.get(MessageType.TRAIN, [])]
        timeouts = self.breaker.record_round(self.state.health, server_round, sent, outcomes)
        for node in timeouts:  # logged by the breaker
            stats.failed[node] = f"{TIMEOUT}: no reply by the end of the round"
            stats.failed_kinds[TIMEOUT] = stats.failed_kinds.get(TIMEOUT, 0) + 1
        stats.health = self.state.health.counts()

    def _aggregate(self, server_round: int, stats: RoundStats, nodes: list[int],
                   updates: torch.Tensor, weights: torch.Tensor) -> np.ndarray | None:
        """Screen, then aggregate; the float32 aggregate, or None if the rule cannot run."""
        started = time.perf_counter()
        try:
            return self._screen_and_aggregate(server_round, stats, nodes, updates, weights)
        finally:
            stats.aggregation_seconds = time.perf_counter() - started

    def _screen_and_aggregate(self, server_round: int, stats: RoundStats, nodes: list[int],
                              updates: torch.Tensor, weights: torch.Tensor
                              ) -> np.ndarray | None:
        plan = (self._screen_round(server_round, stats, nodes, updates)
                if self.detection != "off" else None)
        sent = len(self._sent.get(MessageType.TRAIN, [])) or len(nodes)  # central DP's n
        try:  # f counts the excluded rows too: num_replies is the count before exclusion
            if plan is None:
                result = self.aggregation(updates, weights, num_replies=len(nodes),
                                          num_sampled=sent)
            else:  # the kept rows, without a copy for a plain mean
                result = aggregate_screened(self.aggregation, updates, weights, plan,
                                            num_replies=len(nodes), num_sampled=sent)
        except ValueError as exc:  # e.g. too few replies for the rule's f after dropouts
            stats.kept_previous = True
            log(WARNING, "round %d: aggregation of %d updates failed (%s); keeping the "
                "previous global model", server_round, len(nodes), exc)
            return None
        stats.report = result.report
        return result.aggregate.numpy().astype(np.float32, copy=False)

    def _screen_round(self, server_round: int, stats: RoundStats, nodes: list[int],
                      updates: torch.Tensor) -> ScreenPlan:
        """Screen the round's updates (no row copied), record and log what was flagged.
        Bucket means (``self._buckets`` set) are screened on this round's scores alone
        (a bucket lives one round: no reputation), and a bucket's flag goes to each of
        its contributors."""
        buckets = self._buckets
        plan = self.screen_updates.plan(nodes, updates, limit=exclusion_limit(len(nodes)),
                                        record=buckets is None)
        report, dropped = plan.report, plan.dropped
        if buckets is not None:
            flag_buckets(server_round, stats, buckets, plan)
            return plan
        stats.flagged = {nodes[i]: report.reasons[i] for i in report.flagged}
        stats.flagged_checks = {nodes[i]: report.checks[i] for i in report.flagged}
        stats.excluded_nodes = tuple(nodes[i] for i in dropped)
        scores = self.reputation.scores()
        fate = {nodes[i]: ", excluded" for i in dropped} | {
            nodes[i]: ", scaled down to the norm bound" for i in plan.scaled_rows()}
        for node, reason in stats.flagged.items():
            log(WARNING, "round %d: node %d flagged (%s), cosine reputation %.2f%s",
                server_round, node, reason, scores[node], fate.get(node, ""))
        return plan

    def screen(self, nodes: list[int], updates: torch.Tensor, weights: torch.Tensor, *,
               record: bool = True) -> Screened:
        """``Screen`` with exclusion limited to ``exclusion_limit`` of these rows;
        ``record=False`` changes no state (see ``fedapp.server.screen``)."""
        return self.screen_updates(nodes, updates, weights,
                                   limit=exclusion_limit(len(nodes)), record=record)

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        """Weighted mean of client-side evaluation metrics; bad replies are skipped."""
        return evaluation_metrics(server_round, replies, self.sent_nodes(MessageType.EVALUATE))
