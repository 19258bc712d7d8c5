"""Node-side attacks: only designated partitions attack, only in simulation."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from fedapp.attacks import malicious_ids
from fedapp.attacks.mod import AttackRefused, attack_mod, is_malicious, training_data
from fedapp.attacks.node import inflate_examples
from fedapp.config import NodeConfig, RunConfig, node_config_of
from fedapp.data.specs import Split

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
W = np.array([1.0, 2.0, 3.0], dtype=np.float32)


def context(cfg: RunConfig, node_config: dict) -> Context:
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(),
                   run_config=cfg.to_flower())


def train_message(kind: str = MessageType.TRAIN) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(W)}),
                          "config": ConfigRecord({"server-round": 1})})
    return Message(content, dst_node_id=5, message_type=kind)


def honest_step(msg: Message, _: Context) -> Message:
    local = ArrayRecord({"w": Array(W + np.float32(0.5))})
    return Message(RecordDict({"arrays": local, "metrics": MetricRecord({"num-examples": 4})}),
                   reply_to=msg)


def test_only_designated_partitions_flip_their_update() -> None:
    cfg = RunConfig(attack="sign-flip", attack_fraction=0.4)
    bad = malicious_ids(range(5), 0.4, cfg.seed)
    assert len(bad) == 2
    for pid in range(5):
        reply = attack_mod(train_message(), context(cfg, {"partition-id": pid,
                                                          "num-partitions": 5}), honest_step)
        expected = W - 0.5 if pid in bad else W + 0.5
        np.testing.assert_allclose(reply.content["arrays"]["w"].numpy(), expected)


def test_scaling_uses_attack_scale_and_evaluate_is_untouched() -> None:
    cfg = RunConfig(attack="scaling", attack_fraction=0.5, attack_scale=4.0)
    pid = min(malicious_ids(range(2), 0.5, cfg.seed))
    ctx = context(cfg, {"partition-id": pid, "num-partitions": 2})
    np.testing.assert_allclose(attack_mod(train_message(), ctx, honest_step)
                               .content["arrays"]["w"].numpy(), W + 2.0)
    evaluate = attack_mod(train_message(MessageType.EVALUATE), ctx, honest_step)
    np.testing.assert_allclose(evaluate.content["arrays"]["w"].numpy(), W + 0.5)


@pytest.mark.parametrize("scale,claimed", [(0.0, 1_000_000), (5000.0, 5000)])
def test_label_flip_inflated_flips_labels_and_overstates_num_examples(scale: float,
                                                                     claimed: int) -> None:
    cfg = RunConfig(attack="label-flip-inflated", attack_fraction=0.4, attack_scale=scale)
    bad = malicious_ids(range(5), 0.4, cfg.seed)
    data = Split(np.zeros((3, 2), np.float32), np.array([0, 1, 2]))
    for pid in range(5):
        ctx = context(cfg, {"partition-id": pid, "num-partitions": 5})
        reply = attack_mod(train_message(), ctx, honest_step)
        assert reply.content["metrics"]["num-examples"] == (claimed if pid in bad else 4)
        np.testing.assert_allclose(reply.content["arrays"]["w"].numpy(), W + 0.5)
        flipped = training_data(cfg, node_config_of(ctx), data, 3).y.tolist()
        assert flipped == ([2, 1, 0] if pid in bad else [0, 1, 2])
    evaluate = attack_mod(train_message(MessageType.EVALUATE), ctx, honest_step)
    assert evaluate.content["metrics"]["num-examples"] == 4


def test_inflate_examples_never_lowers_a_count() -> None:
    assert inflate_examples(30) == 1_000_000
    assert inflate_examples(30, 12.7) == 30 and inflate_examples(3, 12.7) == 12
    with pytest.raises(ValueError, match="claimed"):
        inflate_examples(3, 0.5)


def test_attacks_are_refused_in_deployment() -> None:
    cfg = RunConfig(attack="sign-flip")
    with pytest.raises(AttackRefused, match="simulation only"):
        attack_mod(train_message(), context(cfg, {"data-path": "/data/h.csv"}), honest_step)
    with pytest.raises(AttackRefused):
        is_malicious(RunConfig(attack="alie"), NodeConfig(data_path="/data/h.csv"))
    assert not is_malicious(RunConfig(), NodeConfig(data_path="/data/h.csv"))
