"""ServerState: a server rebuilt from its saved state aggregates the next round bit-identically.

Every piece of state is exercised by one of the configurations: reputations (detection with
exclusion), centered clipping's momentum and bucketing's call count, central DP's accountant
and noise generator, Flower's node sampling (Python's ``random``) with fraction-train < 1.
The saved state also goes through Flower's protobuf serialization, as a checkpoint would.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import serde
from flwr.supercore.task_identity import TaskIdentity

from fedapp.config import RunConfig
from fedapp.server.build import build_strategy
from fedapp.server.state import ServerState
from fedapp.updates import flatten

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

NODES = [11, 23, 35, 47, 59, 61, 73, 85, 97, 109]
SHAPES = {"w": (4, 5), "b": (5,)}

CONFIGS = {
    "default": {},  # detection + exclusion (reputations) + capped mean
    "momentum": {"aggregator": "centered-clipping", "clipping_tau": 0.05,
                 "preaggregation": "bucketing", "anomaly_detection": "flag",
                 "fraction_train": 0.7},
    "central-dp": {"dp": "central", "anomaly_detection": "off", "dp_noise": 0.8},
}


class StubGrid:
    def get_node_ids(self) -> list[int]:
        return NODES


def initial() -> ArrayRecord:
    gen = np.random.default_rng(0)
    return ArrayRecord({k: Array(gen.normal(size=s).astype(np.float32))
                        for k, s in SHAPES.items()})


def replies(msgs: list[Message], global_arrays: ArrayRecord, server_round: int) -> list[Message]:
    """Deterministic replies per (node, round); node 97 is a sign flipper, 109 scales."""
    out = []
    for msg in msgs:
        node = msg.metadata.dst_node_id
        gen = np.random.default_rng(node * 1000 + server_round)
        arrays = {}
        for key, arr in global_arrays.items():
            step = (0.1 + gen.normal(scale=0.05, size=arr.shape)).astype(np.float32)
            step *= -1.0 if node == 97 else 20.0 if node == 109 else 1.0
            arrays[key] = Array(arr.numpy() + step)
        metrics = MetricRecord({"num-examples": 10 + node % 7, "train-loss": 0.1 * node})
        out.append(Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}),
                           reply_to=msg))
    return out


def play_round(strategy, arrays: ArrayRecord, server_round: int) -> ArrayRecord:  # type: ignore[no-untyped-def]
    msgs = list(strategy.configure_train(server_round, arrays, ConfigRecord(), StubGrid()))
    new, _ = strategy.aggregate_train(server_round, replies(msgs, arrays, server_round))
    return new


def through_bytes(record: RecordDict) -> RecordDict:
    data = serde.recorddict_to_proto(record).SerializeToString()
    proto = type(serde.recorddict_to_proto(RecordDict()))()
    proto.ParseFromString(data)
    return serde.recorddict_from_proto(proto)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_rebuilt_server_aggregates_the_next_round_bit_identically(name: str) -> None:
    cfg = RunConfig(min_available_nodes=len(NODES), **CONFIGS[name])
    random.seed(5)
    _, first = build_strategy(cfg)
    arrays = play_round(first, initial(), 1)
    arrays = play_round(first, arrays, 2)
    saved = through_bytes(first.state.to_record())

    rebuilt_state = ServerState.from_record(saved)
    rebuilt_state.restore_sampling_rng()
    expected = play_round(first, arrays, 3)  # the original server goes on...
    rebuilt_state.restore_sampling_rng()
    _, second = build_strategy(cfg, rebuilt_state)
    got = play_round(second, rebuilt_state.arrays, 3)  # ...and so does the rebuilt one

    assert list(got.keys()) == list(expected.keys())
    for key in expected:
        assert got[key].numpy().tobytes() == expected[key].numpy().tobytes()
    assert flatten(rebuilt_state.arrays).tobytes() == flatten(got).tobytes()
    assert rebuilt_state.server_round == 3
    a, b = dict(first.state.to_record()["state"]), dict(second.state.to_record()["state"])
    assert without_clock(a.pop("rounds")) == without_clock(b.pop("rounds")) and a == b


def without_clock(rounds: str) -> list[dict[str, float]]:
    """Round rows without their wall-clock values."""
    return [{k: v for k, v in row.items() if k not in ("seconds", "aggregation-seconds")}
            for row in json.loads(rounds)]


def test_state_round_trip_is_lossless() -> None:
    cfg = RunConfig(min_available_nodes=len(NODES), **CONFIGS["momentum"])
    _, strategy = build_strategy(cfg)
    play_round(strategy, initial(), 1)
    state = strategy.state
    state.record_round(1, {"server-accuracy": 0.1 + 1e-17, "server-loss": 1 / 3})
    again = ServerState.from_record(through_bytes(state.to_record()))
    assert again.rounds == state.rounds and again.server_round == 1
    assert again.reputation.to_dict() == state.reputation.to_dict()
    assert again.pipeline.calls == state.pipeline.calls == 1
    assert again.pipeline.center is not None and state.pipeline.center is not None
    assert again.pipeline.center.dtype == state.pipeline.center.dtype
    assert again.pipeline.center.numpy().tobytes() == state.pipeline.center.numpy().tobytes()
    assert again.health == state.health and len(state.health.nodes) > 0


def test_node_health_round_trips_and_a_rebuilt_server_samples_identically() -> None:
    """Node 47 never replies: benched after health-max-failures rounds; the saved health
    is bit-identical after a round trip and the rebuilt server samples as the original."""
    cfg = RunConfig(min_available_nodes=len(NODES), fraction_train=0.7, health_max_failures=1,
                    health_cooldown=2, anomaly_detection="off")

    def sampled(strategy, server_round: int) -> list[int]:  # type: ignore[no-untyped-def]
        arrays = initial()
        msgs = list(strategy.configure_train(server_round, arrays, ConfigRecord(), StubGrid()))
        strategy.aggregate_train(server_round, [r for r in replies(msgs, arrays, server_round)
                                                if r.metadata.src_node_id != 47])
        return [m.metadata.dst_node_id for m in msgs]

    random.seed(3)
    _, first = build_strategy(cfg)
    server_round = 0
    while first.state.health.nodes.get(47) is None or \
            first.state.health.nodes[47].state != "benched":
        server_round += 1
        sampled(first, server_round)
    saved = through_bytes(first.state.to_record())
    rebuilt = ServerState.from_record(saved)
    assert rebuilt.health == first.state.health
    assert rebuilt.to_record()["state"]["health"] == saved["state"]["health"]
    assert rebuilt.health.nodes[47].failures == {"timeout": 1}
    rebuilt.restore_sampling_rng()
    _, second = build_strategy(cfg, rebuilt)
    later = range(server_round + 1, server_round + 5)  # cooldown, then probation
    got = [sampled(second, r) for r in later]
    rebuilt.restore_sampling_rng()
    expected = [sampled(first, r) for r in later]
    assert got == expected
    assert all(47 not in nodes for nodes in got[:2])
    assert second.state.to_record()["state"]["health"] == \
        first.state.to_record()["state"]["health"]


def test_from_record_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="no ConfigRecord 'state'"):
        ServerState.from_record(RecordDict())
    record = ServerState().to_record()
    record["state"]["format"] = 99
    with pytest.raises(ValueError, match="format 99"):
        ServerState.from_record(record)
