"""The server's side of SecAgg+ within buckets: a strategy layer around ``RobustStrategy``.

Each training round (``fedapp.secagg`` for the protocol, ``protocol`` for the plan):

1. ``configure_train``: the robust strategy samples the round's nodes as usual; they are
   shuffled into buckets; the ``setup`` stage runs for the nodes without kept keys
   (``fedapp.secagg.keys``: what is reused across rounds, and why it is safe), then
   ``share_keys`` for all, through the Grid (one message per node per stage; all buckets
   at once); the round's train messages
   then carry, per node, the encrypted shares its neighbours sent it. Nodes that fail a
   stage are left out with a reason (kind ``secagg``); a bucket left with fewer nodes than
   its threshold is left out of the round, the other buckets go on.
2. Flower sends the train messages; each node trains and answers with its masked update.
3. ``aggregate_train``: masked vectors of the wrong shape or type are rejected (the node
   counts as dropped), the ``unmask`` stage asks the contributors for the shares the
   server needs, and ``unmask.bucket_sum`` recovers each bucket's sum (or leaves the
   bucket out with the reason). The robust strategy gets one row per bucket, the mean of
   its contributors' clipped updates, weighted by the number of contributors:
   ``RobustStrategy.aggregate_buckets``. It never holds one node's update.

Threat model: an honest-but-curious server (it follows the protocol; the nodes check
the stage order and never give both secrets of a node), as in Flower's SecAgg+.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.serverapp import Grid

from fedapp.node_errors import KINDS, SECAGG_ERROR, kind_of
from fedapp.privacy.accounting import epsilon_of
from fedapp.privacy.distributed import share_std
from fedapp.secagg import masking, protocol
from fedapp.secagg.bucket import (
    Bucket,
    accept_masked,
    bucket_row,
    setup_params,
    stage_bytes,
)
from fedapp.secagg.client import ROUND_KEY
from fedapp.secagg.keys import KeyDirectory
from fedapp.secagg.unmask import Encoding, UnmaskFailed, bucket_sum
from fedapp.server.buckets import BucketRound
from fedapp.server.strategy import RobustStrategy
from fedapp.server.wrappers import StrategyWrapper

SECAGG_KIND = KINDS[SECAGG_ERROR]


class SecureAggregation(StrategyWrapper):
    """SecAgg+ within buckets (module docstring) around ``robust``."""

    def __init__(self, robust: RobustStrategy, settings: protocol.Settings,
                 timeout: float) -> None:
        super().__init__(robust)
        self.robust = robust
        self.settings = settings
        self.timeout = timeout
        self._grid: Grid | None = None
        self._buckets: list[Bucket] = []
        self._failed: dict[int, str] = {}
        self._seconds = 0.0
        self._bytes = 0  # the extra stages' messages, both directions
        self.directory = KeyDirectory(settings.key_rounds)
        self._setup_nodes = 0
        self._completed: set[int] = set()  # answered this round's unmask stage

    def summary(self) -> None:
        super().summary()
        s = self.settings
        log(INFO, "\t└── Secure aggregation: SecAgg+ in buckets of %d (threshold %.2f, "
            "degree %s), clip norm %g, %d bits", s.bucket_size, s.threshold,
            s.degree or "all", s.clip_norm, s.bits)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.robust.configure_train(server_round, arrays, config, grid))
        started = time.perf_counter()
        self._grid, self._failed, self._bytes = grid, {}, 0
        self._buckets = self._plan(server_round, [m.metadata.dst_node_id for m in messages])
        self._setup(server_round)
        self._share_keys(server_round)
        kept = []
        for msg in messages:
            bucket = self._bucket_of(msg.metadata.dst_node_id)
            if bucket is None or msg.metadata.dst_node_id not in bucket.shared:
                continue
            inbox = bucket.inbox.get(msg.metadata.dst_node_id, [])
            content = RecordDict(dict(msg.content.items()))
            content[RECORD_KEY_CONFIGS] = ConfigRecord({
                Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                Key.SOURCE_LIST: [src for src, _ in inbox],
                Key.CIPHERTEXT_LIST: [ct for _, ct in inbox]})
            msg.content = content
            kept.append(msg)
        self._seconds = time.perf_counter() - started
        return kept

    def _plan(self, server_round: int, nodes: list[int]) -> list[Bucket]:
        s = self.settings
        buckets = []
        for members in protocol.assign_buckets(nodes, s.bucket_size, s.seed, server_round):
            shares = len(protocol.neighbours(members, s.degree)[members[0]])
            t = protocol.threshold(s.threshold, shares)
            unit = (masking.dp_unit(share_std(s.dp_noise, s.dp_clip, t), s.bits)
                    if s.dp_noise else 0.0)
            enc = Encoding(s.bits, s.clip_norm, masking.levels(s.bits, len(members)), unit,
                           server_round)
            bucket = Bucket(members, t, enc)
            buckets.append(bucket)
            if len(members) < bucket.t:  # a lone node: its sum would be its update
                self._drop(bucket, f"{len(members)} node(s) cannot hide an update in a sum",
                           server_round)
        return buckets

    def _bucket_of(self, node: int) -> Bucket | None:
        return next((b for b in self._buckets if node in b.members and not b.dropped_reason),
                    None)

    def _live(self) -> list[Bucket]:
        return [b for b in self._buckets if not b.dropped_reason]

    def _drop(self, bucket: Bucket, reason: str, server_round: int) -> None:
        bucket.dropped_reason = reason
        log(WARNING, "round %d: secure aggregation left bucket %s out: %s", server_round,
            list(bucket.members), reason)

    def _exchange(self, server_round: int, stage: str, requests: dict[int, dict],  # type: ignore[type-arg]
                  rounds: dict[int, dict] | None = None  # type: ignore[type-arg]
                  ) -> dict[int, ConfigRecord]:
        """One stage: a TRAIN message per node carrying ``requests[node]`` (and
        ``rounds[node]`` as the round record); the answers by node. A node that fails or
        does not answer within the round timeout is recorded as failed (kind ``secagg``)."""
        assert self._grid is not None
        out = []
        for node, req in requests.items():
            content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: stage, **req})})
            if rounds is not None:
                content[ROUND_KEY] = ConfigRecord(rounds[node])
            out.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN,
                               group_id=str(server_round)))
        replies = list(self._grid.send_and_receive(out, timeout=self.timeout)) if out else []
        self._bytes += sum(stage_bytes(m) for m in (*out, *replies))
        by_id = {m.metadata.message_id: m.metadata.dst_node_id for m in out}
        answers: dict[int, ConfigRecord] = {}
        for reply in replies:
            node = by_id.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if reply.has_error():
                self._fail(server_round, node, stage, f"{kind_of(reply.error.code)}: "
                           f"{reply.error.reason.strip().splitlines()[0]}")
            elif RECORD_KEY_CONFIGS in reply.content.config_records:
                answers[node] = reply.content.config_records[RECORD_KEY_CONFIGS]
            else:
                self._fail(server_round, node, stage, "answer without the stage's record")
        for node in set(requests) - set(answers) - set(self._failed):
            self._fail(server_round, node, stage, f"no answer within {self.timeout:g}s")
        return answers

    def _fail(self, server_round: int, node: int, stage: str, reason: str) -> None:
        self._failed[node] = f"{stage}: {reason}"
        log(WARNING, "round %d: node %d failed secure aggregation at %s: %s", server_round,
            node, stage, reason)

    def _setup(self, server_round: int) -> None:
        """Setup for the nodes without kept keys; every bucket then holds its members' keys."""
        fresh = self.directory.needs_setup([n for b in self._live() for n in b.members],
                                           server_round)
        for node in fresh:
            self.directory.forget(node)
        requests = {node: setup_params(b, self.settings.degree)
                    for b in self._live() for node in b.members if node in fresh}
        answers = self._exchange(server_round, Stage.SETUP, requests) if requests else {}
        self._setup_nodes = len(requests)
        for node, rec in answers.items():
            if isinstance(rec.get(Key.PUBLIC_KEY_1), bytes):
                self.directory.register(node, (rec[Key.PUBLIC_KEY_1], rec[Key.PUBLIC_KEY_2]),  # type: ignore[arg-type]
                                        server_round)
        for b in self._live():
            b.keys = {n: self.directory.keys[n] for n in b.members if n in self.directory.keys}
            live = tuple(n for n in b.members if n in b.keys)
            if len(live) < b.t:
                self._drop(b, f"{len(live)} of {len(b.members)} nodes answered setup, fewer "
                           f"than the threshold {b.t}", server_round)
                continue
            b.graph = protocol.neighbours(live, self.settings.degree)

    def _share_keys(self, server_round: int) -> None:
        requests = {node: {str(n): list(b.keys[n]) for n in b.graph[node]}
                    for b in self._live() for node in b.graph}
        rounds = {node: {"round": server_round, **setup_params(b, self.settings.degree)}
                  for b in self._live() for node in b.graph}
        answers = self._exchange(server_round, Stage.SHARE_KEYS, requests, rounds)
        for b in self._live():
            b.shared = {n for n in b.graph if n in answers}
            for src in b.shared:
                rec = answers[src]
                for dst, ct in zip(rec[Key.DESTINATION_LIST], rec[Key.CIPHERTEXT_LIST],  # type: ignore[arg-type]
                                   strict=True):
                    if dst in b.shared and dst in b.graph[src]:
                        b.inbox.setdefault(int(dst), []).append((src, ct))  # type: ignore[arg-type]
            graph = {n: tuple(h for h in b.graph[n] if h in b.shared) for n in b.shared}
            reason = protocol.recoverable(graph, b.shared, b.shared, b.t)
            if reason:
                self._drop(b, f"after share_keys, {reason}", server_round)
            else:
                b.graph = graph

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        started = time.perf_counter()
        bucketed = BucketRound(failures={n: (SECAGG_KIND, r) for n, r in self._failed.items()})
        sent = self.robust.sent_nodes(MessageType.TRAIN)
        size = self.robust.model_size()
        for msg in replies:
            node = sent.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
            vector = accept_masked(server_round, bucketed, node, msg, size,
                                   self.settings.bits)
            bucket = self._bucket_of(node)
            if vector is not None and bucket is not None:
                bucket.masked[node] = vector
        self._failed.clear()
        self._unmask(server_round)
        self.directory.settle([n for b in self._buckets for n in b.members], self._completed)
        for node, reason in self._failed.items():  # failed to answer the unmask stage
            bucketed.failures.setdefault(node, (SECAGG_KIND, reason))
        for b in self._buckets:
            if b.dropped_reason:
                bucketed.dropped.append((b.members, b.dropped_reason))
            elif b.total is not None:
                bucketed.members.append(b.contributors)
                bucketed.rows.append(bucket_row(b, self.settings, bucketed.node_metrics))
                bucketed.row_weights.append(float(len(b.contributors)) if not b.enc.dp_unit
                                            else sum(bucketed.node_metrics[n]["num-examples"]
                                                     for n in b.contributors))
        self._seconds += time.perf_counter() - started
        arrays, metrics = self.robust.aggregate_buckets(server_round, bucketed)
        if metrics is not None:
            metrics["secagg-buckets"] = len(self._buckets)
            metrics["secagg-buckets-dropped"] = len(bucketed.dropped)
            metrics["secagg-seconds"] = self._seconds
            metrics["secagg-bytes"] = self._bytes  # setup, share_keys, unmask; both ways
            metrics["secagg-setup-nodes"] = self._setup_nodes  # the others kept their keys
            if self.settings.dp_noise:  # every record's epsilon: one step per round
                metrics["dp-epsilon"] = epsilon_of([(self.settings.dp_noise,
                                                     self.settings.dp_sample_rate,
                                                     server_round)], self.settings.dp_delta)
        self._buckets = []
        return arrays, metrics

    def _unmask(self, server_round: int) -> None:
        requests = {}
        for b in self._live():
            if len(b.masked) < b.t:
                self._drop(b, f"{len(b.masked)} masked vectors accepted, fewer than the "
                           f"threshold {b.t}", server_round)
                continue
            reason = protocol.recoverable(b.graph, set(b.masked), set(b.masked), b.t)
            if reason:
                self._drop(b, f"before unmask, {reason}", server_round)
                continue
            dropped = b.shared - set(b.masked)
            for node in b.masked:
                holders = b.graph[node]
                requests[node] = {Key.ACTIVE_NODE_ID_LIST: [h for h in holders if h in b.masked],
                                  Key.DEAD_NODE_ID_LIST: [h for h in holders if h in dropped]}
        answers = self._exchange(server_round, Stage.UNMASK, requests)
        self._completed = set(answers)
        for b in self._live():
            seeds: dict[int, list[bytes]] = {}
            keys: dict[int, list[bytes]] = {}
            for holder in b.masked:
                rec = answers.get(holder)
                for nid, share in zip(rec[Key.NODE_ID_LIST] if rec else [],  # type: ignore[arg-type]
                                      rec[Key.SHARE_LIST] if rec else [], strict=True):  # type: ignore[arg-type]
                    (seeds if nid in b.masked else keys).setdefault(int(nid), []).append(share)  # type: ignore[arg-type]
            try:
                b.total = bucket_sum(b.masked, sorted(b.shared - set(b.masked)), b.graph,
                                     {n: k[0] for n, k in b.keys.items()}, seeds, keys, b.t,
                                     b.enc)
            except UnmaskFailed as exc:
                self._drop(b, str(exc), server_round)
                continue
            b.contributors = tuple(b.masked)
            b.masked = {}  # the sum is all that is kept
