"""Threat model for simulation: a Strategy wrapper that plays the Byzantine nodes.

``ThreatModel(strategy, attack, fraction, seed, **params)`` wraps any Flower
``Strategy`` the way Flower's DP wrappers do (``DifferentialPrivacy*FixedClipping``
hold the inner strategy and delegate). It delegates everything; in
``aggregate_train`` it replaces the train replies of the designated malicious
nodes with omniscient Byzantine replies (``fedapp.attacks.omniscient``) before the inner
strategy's ``aggregate_train`` sees them. The crafted reply keeps the node's
record names and metrics (so ``num-examples`` and every metric key stay) and
carries ``global + b`` with the global model's array keys, shapes and dtypes, so
Flower's FedAvg, MultiKrum, FedMedian, FedTrimmedAvg and Bulyan accept it.
Honest replies compressed by ``fedapp.compression`` are decoded to their update
first; the crafted reply is always a plain dense reply (no compression header).

**Simulation only.** The first ``configure_train`` refuses (``SimulationOnlyError``,
before any node is sampled) unless the Grid is the simulation engine's
(``fedapp.attacks.simulation.is_simulation``).

**Who is malicious.** Node ids are random int64 in simulation, and the ServerApp
cannot see the node-id -> partition-id map (it lives inside the simulation
engine; ``NodeInfo`` carries no partition). By default the designated nodes are
``malicious_ids(all node ids at the first configure_train, fraction, seed)``:
stable across rounds, and the same fraction of the population whatever
``fraction-train`` samples. With ``partition_metric="partition-id"`` the ClientApp
reports its partition id in its train metrics; the wrapper then designates
``malicious_ids(range(num_nodes), fraction, seed)`` over *partition ids* (the same
call a node-side attack mod makes, so node-side and omniscient attacks hit the
same hospitals) and removes that metric from every reply before aggregation.

Node-side attacks (``"data"``/``"model"`` kinds) run in the ClientApp; for them the
wrapper only enforces simulation and passes replies through unchanged. The round's train
metrics gain ``byzantine-replaced``, the number of replies replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from copy import copy
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedapp.attacks import ATTACKS, attack_params, malicious_ids
from fedapp.attacks.crafter import ADAPTIVE, Crafter, crafter
from fedapp.attacks.simulation import SimulationOnlyError, is_simulation
from fedapp.config import RunConfig
from fedapp.server.wrappers import StrategyWrapper
from fedapp.updates import flatten, reply_update, unflatten
from fedapp.validation import WEIGHT_KEY, ReplyRejected, array_specs, check_metrics

__all__ = ["ADAPTIVE", "REPLACED_METRIC", "AttackRound", "ThreatModel"]

REPLACED_METRIC = "byzantine-replaced"  # added to the round's train metrics


@dataclass
class AttackRound:
    """What the threat model did in one round."""

    server_round: int
    replaced: tuple[int, ...] = ()  # node ids whose replies were replaced
    honest: int = 0  # honest updates the attackers saw
    note: str = ""


def _rebuild(msg: Message, arrays: ArrayRecord | None = None,
             drop_metric: str | None = None) -> Message:
    """A copy of reply ``msg`` with its ArrayRecord(s) replaced by ``arrays`` (if given)
    and the metric ``drop_metric`` removed (if given); metadata and other records kept.

    With ``arrays`` the copy is a plain dense reply: ConfigRecords (the header of a
    compressed reply, ``fedapp.compression.wire``) are dropped."""
    records: dict[str, Any] = {}
    for name, record in msg.content.items():
        if isinstance(record, ConfigRecord) and arrays is not None:
            continue
        if isinstance(record, ArrayRecord) and arrays is not None:
            records[name] = arrays
        elif isinstance(record, MetricRecord) and drop_metric in record:
            records[name] = MetricRecord({k: v for k, v in record.items() if k != drop_metric})
        else:
            records[name] = record
    if arrays is not None and not msg.content.array_records:
        records["arrays"] = arrays
    return Message(metadata=copy(msg.metadata), content=RecordDict(records))


def _metric(msg: Message, key: str) -> int | None:
    """The integer metric ``key`` of a reply, or None if absent or not an integer."""
    for record in msg.content.metric_records.values():
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value == int(value):
            return int(value)
    return None


def _weight(msg: Message) -> float:
    """The reply's reported ``num-examples`` as the strategy will read it (1 where it will
    reject the metrics: then the row does not reach the aggregation at all)."""
    try:
        return check_metrics(msg.content)[WEIGHT_KEY]
    except ReplyRejected:
        return 1.0


class ThreatModel(StrategyWrapper):
    """Wrap ``strategy``; in simulation, replace the malicious nodes' train replies.

    ``attack`` is a name of ``fedapp.attacks.ATTACKS`` other than ``"none"`` (for
    ``"none"`` do not build the wrapper). ``fraction`` of the nodes, chosen by
    ``malicious_ids`` with ``seed``, are malicious. ``params`` go to the attack
    function (e.g. ``epsilon=`` for ``"ipm"``, ``z=`` for ``"alie"``,
    ``perturbation=`` for ``"min-max"``); the adaptive attacks also take
    ``aggregator=`` (a name in ``fedapp.robust.AGGREGATORS`` or a pure rule) and
    ``aggregator_params=`` (e.g. ``{"f": 2}``). Do not pass the strategy's own
    ``aggregate_fn`` if it is stateful (momentum, round counters): the adaptive
    search calls it once per grid point (``fedapp.server.build.adaptive_target`` runs a copy
    of fedapp's whole defense instead). An attack that takes ``server_round`` (``sleeper``)
    gets the round from ``aggregate_train``.
    """

    def __init__(self, strategy: Strategy, attack: str, fraction: float, seed: int, *,
                 partition_metric: str | None = None, **params: Any) -> None:
        super().__init__(strategy)
        if attack not in ATTACKS:
            raise ValueError(f"attack={attack!r} is not one of: {', '.join(ATTACKS)}")
        if ATTACKS[attack] == "none":
            raise ValueError("attack='none' means no threat model: do not wrap the strategy")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction={fraction} must be in [0, 1]")
        self.attack = attack
        self.kind = ATTACKS[attack]
        self.fraction = fraction
        self.seed = seed
        self.partition_metric = partition_metric
        if self.kind == "omniscient":
            self._craft: Crafter | None = crafter(attack, params)
        elif params:
            raise ValueError(f"{self.kind} attack {attack!r} runs in the ClientApp; the "
                             f"threat model takes no parameters for it, got {sorted(params)}")
        else:
            self._craft = None
        self.designated: set[int] | None = None  # node ids, or partition ids
        self.row_nodes: list[int] = []  # see _honest_rows
        self.row_weights: list[float] = []
        self.row_positions: list[int] = []
        self.malicious_nodes: set[int] = set()  # the designated nodes among the last replies
        self.history: dict[int, AttackRound] = {}
        self._global: ArrayRecord | None = None

    @classmethod
    def from_config(cls, strategy: Strategy, cfg: RunConfig, *,
                    target: Callable[..., Any] | None = None,
                    partition_metric: str | None = None) -> ThreatModel:
        """The threat model of ``cfg`` (``attack``, ``attack-fraction``, ``seed`` and the
        attack's own parameters, ``fedapp.attacks.attack_params``) around ``strategy``.
        The adaptive attacks search their scale against ``target``, the defense in use."""
        params = attack_params(cfg) if ATTACKS[cfg.attack] == "omniscient" else {}
        if cfg.attack in ADAPTIVE:
            params["aggregator"] = target
        return cls(strategy, cfg.attack, cfg.attack_fraction, cfg.seed,
                   partition_metric=partition_metric, **params)

    def summary(self) -> None:
        self.strategy.summary()
        by = f"partition ({self.partition_metric})" if self.partition_metric else "node id"
        log(INFO, "\t└──> Threat model (simulation only): %s attack %r, fraction %s of nodes "
            "by %s, seed %d", self.kind, self.attack, self.fraction, by, self.seed)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if not is_simulation(grid):
            raise SimulationOnlyError(
                f"attack={self.attack!r} is for simulation only, but this ServerApp runs on "
                f"a {type(grid).__name__} (not the simulation engine's InMemoryGrid): set "
                "attack='none' for a deployment")
        self._global = arrays
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if self.designated is None:
            nodes = sorted(int(n) for n in grid.get_node_ids())
            by_partition = self.partition_metric is not None or self.kind != "omniscient"
            pool = range(len(nodes)) if by_partition else nodes
            self.designated = malicious_ids(pool, self.fraction, self.seed)
            log(INFO, "[threat-model] %s attack %r: malicious %s %s (%d of %d)", self.kind,
                self.attack, "partitions" if by_partition else "nodes",
                sorted(self.designated), len(self.designated), len(nodes))
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                             MetricRecord | None]:
        replies = list(replies)
        if self._global is None or self.designated is None:
            raise RuntimeError("aggregate_train called before configure_train")
        malicious = self._malicious(server_round, replies)
        # Who the attackers are this round, for evaluation only (e.g. an oracle baseline).
        self.malicious_nodes = {replies[i].metadata.src_node_id for i in malicious}
        if self.partition_metric is not None:
            replies = [m if m.has_error() else _rebuild(m, drop_metric=self.partition_metric)
                       for m in replies]
        if self._craft is None:
            return self.strategy.aggregate_train(server_round, replies)
        record = self.history[server_round] = AttackRound(server_round)
        global_flat = flatten(self._global)
        rows = self._honest_rows(replies, malicious, global_flat)
        record.honest = len(rows)
        if not malicious or not rows:
            record.note = "no malicious reply" if not malicious else "no honest update to use"
            log(WARNING if malicious else INFO, "[threat-model] round %d: %s; replies unchanged",
                server_round, record.note)
            return self.strategy.aggregate_train(server_round, replies)
        honest = torch.from_numpy(np.stack(rows))
        crafted = self._craft(honest, len(malicious), server_round).numpy()
        for k, i in enumerate(malicious):
            arrays = unflatten(global_flat + crafted[k].astype(np.float32), self._global)
            replies[i] = _rebuild(replies[i], arrays)
        record.replaced = tuple(replies[i].metadata.src_node_id for i in malicious)
        log(INFO, "[threat-model] round %d: %s replaced %d replies (nodes %s) using %d honest "
            "updates", server_round, self.attack, len(malicious), list(record.replaced),
            len(rows))
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if metrics is not None:
            metrics[REPLACED_METRIC] = len(record.replaced)
        return arrays, metrics

    def _honest_rows(self, replies: list[Message], malicious: list[int],
                     global_flat: np.ndarray) -> list[np.ndarray]:
        """The honest updates the attackers see (replies without error, not ``malicious``,
        that validate), and what an adaptive attacker's aggregator needs to know of every
        row it is handed, honest rows first, then the crafted ones: the node
        (``row_nodes``; a defense with per-node state needs to know whose row is whose), the
        reported ``num-examples`` (``row_weights``) and the position among ``replies``
        (``row_positions``: the order in which the strategy will see the rows)."""
        assert self._global is not None
        specs = array_specs(self._global)
        rows: list[np.ndarray] = []
        positions: list[int] = []
        weights: list[float] = []
        for i, msg in enumerate(replies):
            if i in malicious or msg.has_error():
                continue
            try:
                update, metrics = reply_update(msg.content, specs, global_flat)
            except ReplyRejected:
                continue  # the inner strategy deals with it; attackers ignore it
            rows.append(update)
            positions.append(i)
            weights.append(metrics[WEIGHT_KEY])
        self.row_positions = positions + list(malicious)
        self.row_nodes = [replies[i].metadata.src_node_id for i in self.row_positions]
        self.row_weights = weights + [_weight(replies[i]) for i in malicious]
        return rows

    def _malicious(self, server_round: int, replies: list[Message]) -> list[int]:
        """Indices of the replies (without error) that come from designated nodes."""
        assert self.designated is not None
        key = self.partition_metric
        out = []
        for i, msg in enumerate(replies):
            if msg.has_error():
                continue
            if key is None:
                ident: int | None = msg.metadata.src_node_id
            else:
                ident = _metric(msg, key)
                if ident is None:
                    log(WARNING, "[threat-model] round %d: reply of node %d has no integer "
                        "metric %r; treated as honest", server_round,
                        msg.metadata.src_node_id, key)
            if ident is not None and ident in self.designated:
                out.append(i)
        return out
