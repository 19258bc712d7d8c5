"""An in-process federation for secure-aggregation tests: a Grid that hands each message to
the node's ``secagg_mod`` (with a Context per node), around a train step that returns a
known update. Faults are injected per (node, stage): no answer, or a changed message."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import count

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from fedapp.config import RunConfig
from fedapp.secagg.client import secagg_mod
from fedapp.secagg.protocol import Settings
from fedapp.secagg.server import SecureAggregation
from fedapp.server.strategy import RobustStrategy

COLLECT = Stage.COLLECT_MASKED_VECTORS
Tamper = Callable[[Message], Message | None]  # None: the message is lost


def stage_of(msg: Message) -> str:
    return str(msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])


class LoopbackGrid:
    """Delivers every message to its node's mod at once; ``faults[(node, stage)]`` may drop
    or change the instruction before the node sees it, ``reply_faults`` its answer."""

    def __init__(self, updates: dict[int, np.ndarray], cfg: RunConfig | None = None) -> None:
        self.updates = updates
        run_config = (cfg or RunConfig(secagg=True)).to_flower()
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(),
                                    run_config=dict(run_config)) for n in updates}
        self.faults: dict[tuple[int, str], Tamper] = {}
        self.reply_faults: dict[tuple[int, str], Tamper] = {}
        self.trained: set[int] = set()
        self._ids = count()

    def get_node_ids(self) -> list[int]:
        return list(self.updates)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"
            node, stage = msg.metadata.dst_node_id, stage_of(msg)
            delivered = self.faults.get((node, stage), lambda m: m)(msg)
            if delivered is None:
                continue
            reply = secagg_mod(delivered, self.contexts[node], self._train)
            reply = self.reply_faults.get((node, stage), lambda m: m)(reply)
            if reply is not None:
                replies.append(reply)
        return replies

    def _train(self, msg: Message, context: Context) -> Message:
        node = msg.metadata.dst_node_id
        self.trained.add(node)
        sent = msg.content["arrays"]
        local = ArrayRecord({k: Array(a.numpy() + self.updates[node].astype(np.float32))
                             for k, a in sent.items()})
        return Message(RecordDict({"arrays": local, "metrics": MetricRecord(
            {"num-examples": 10, "train-loss": float(node)})}), reply_to=msg)


def run_round(grid: LoopbackGrid, layer: SecureAggregation, dim: int, server_round: int = 1
              ) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """One training round as Flower's ``Strategy.start`` drives it (configure, send the
    train messages, aggregate)."""
    arrays = ArrayRecord({"w": Array(np.zeros(dim, np.float32))})
    messages = list(layer.configure_train(server_round, arrays, ConfigRecord(), grid))  # type: ignore[arg-type]
    replies = grid.send_and_receive(messages)
    return layer.aggregate_train(server_round, replies)


def secure_stack(nodes: int, settings: Settings, **robust: object
                 ) -> tuple[RobustStrategy, SecureAggregation]:
    strategy = RobustStrategy(min_train_nodes=2, min_available_nodes=nodes,
                              fraction_evaluate=0.0, wait_timeout=1.0, **robust)  # type: ignore[arg-type]
    return strategy, SecureAggregation(strategy, settings, timeout=5.0)

