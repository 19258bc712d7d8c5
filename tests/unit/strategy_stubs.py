"""Stubs for strategy tests: a Grid that only lists nodes, one round's instructions, and
the replies nodes would send (shared by ``test_strategy`` and ``test_screen_equivalence``)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedapp.server.strategy import RobustStrategy

# Messages are created inside a task (a ServerApp process in production); give this
# test process the identity a ServerApp would have.
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

GLOBAL = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float32)}


class StubGrid:
    """Just enough of a Grid for configure_train to sample nodes."""

    def __init__(self, n: int) -> None:
        self.nodes = list(range(1, n + 1))

    def get_node_ids(self) -> list[int]:
        return self.nodes


def start_round(n: int, min_train_nodes: int = 2) -> tuple[RobustStrategy, list[Message]]:
    strategy = RobustStrategy(min_train_nodes=min_train_nodes, min_available_nodes=n,
                              fraction_evaluate=0.0)
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), StubGrid(n)))
    assert len(messages) == n
    return strategy, messages


def reply(msg: Message, arrays: dict[str, np.ndarray] | None = None,
          metrics: dict | None = None, **extra: RecordDict) -> Message:
    arrays = GLOBAL if arrays is None else arrays
    metrics = {"num-examples": 10, "train-loss": 0.5} if metrics is None else metrics
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "metrics": MetricRecord(metrics), **extra})
    return Message(content=content, reply_to=msg)


def shifted(delta: float) -> dict[str, np.ndarray]:
    return {k: v + np.float32(delta) for k, v in GLOBAL.items()}
