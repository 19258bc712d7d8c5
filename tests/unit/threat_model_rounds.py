"""A server round of a ThreatModel-wrapped strategy for the threat model tests: a stub
Grid (simulation or deployment), a FedAvg that remembers the replies it was given, honest
replies that move the global model by a given delta, and one configure/aggregate round.
Importing this module gives the test process a task identity (Messages need one)."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedapp.attacks.threat_model import ThreatModel

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

GLOBAL = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float64)}
BASE = np.concatenate([v.ravel() for v in GLOBAL.values()]).astype(np.float32)
NODES = [9001, 17, 4242, 305, 77, 123456, 58]


class StubGrid:
    """A Grid as a deployed ServerApp would see it: node ids, no simulation run."""

    def __init__(self, nodes: list[int], task_type: str | None = None) -> None:
        self.nodes = nodes
        if task_type is not None:
            self.run = SimpleNamespace(primary_task_type=task_type)

    def get_node_ids(self) -> list[int]:
        return self.nodes


def sim_grid(n: int = 5) -> StubGrid:
    return StubGrid(NODES[:n], task_type="flwr-simulation")


class Spy(FedAvg):
    """Flower's FedAvg, remembering the replies it was given."""

    seen: list[Message]
    configured = False

    def configure_train(self, *args, **kwargs) -> Iterable[Message]:  # type: ignore[no-untyped-def]
        self.configured = True
        return super().configure_train(*args, **kwargs)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):  # type: ignore[no-untyped-def]
        self.seen = list(replies)
        return super().aggregate_train(server_round, self.seen)


def global_arrays() -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})


def reply(msg: Message, delta: float, **metrics: float) -> Message:
    arrays = {k: v + np.asarray(delta, dtype=v.dtype) for k, v in GLOBAL.items()}
    record = MetricRecord({"num-examples": 10, "train-loss": delta, **metrics})
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "metrics": record})
    return Message(content=content, reply_to=msg)


def run_round(model: ThreatModel, grid: StubGrid, deltas: dict[int, float], server_round: int = 1,
              **metrics_by_node: dict[int, float]):  # type: ignore[no-untyped-def]
    msgs = list(model.configure_train(server_round, global_arrays(), ConfigRecord(), grid))
    replies = [reply(m, deltas[m.metadata.dst_node_id],
                     **{k: v[m.metadata.dst_node_id] for k, v in metrics_by_node.items()})
               for m in msgs]
    return replies, model.aggregate_train(server_round, replies)


def make(attack: str = "ipm", fraction: float = 0.4, n: int = 5, strategy: FedAvg | None = None,
         **params: object) -> tuple[ThreatModel, FedAvg]:
    inner = strategy or Spy(min_available_nodes=n, fraction_evaluate=0.0)
    return ThreatModel(inner, attack, fraction, seed=3, **params), inner
