"""Failures are attributed to the node an instruction went to and counted by kind; a
round never waits forever for a missing hospital; inflated counts are logged; the round
line says what happened and the summary says what the strategy does."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fedapp.node_errors import BUDGET_REFUSED, DATA_ERROR, error_reply
from fedapp.server.rounds import round_line
from fedapp.server.sampling import NotEnoughNodes, available_nodes
from fedapp.server.strategy import RobustStrategy

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
SUPERLINK = 1  # Flower's SUPERLINK_NODE_ID: the sender of "node unavailable" replies
GLOBAL = {"w": np.zeros(4, np.float32)}


class Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def pushed(strategy: RobustStrategy, nodes: list[int]) -> list[Message]:
    """configure_train's messages, with the message ids a Grid gives them when it pushes."""
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    msgs = list(strategy.configure_train(1, arrays, ConfigRecord(), Grid(nodes)))
    for i, msg in enumerate(msgs):
        msg.metadata.__dict__["_message_id"] = f"instruction-{i}"
    return msgs


def unreachable(msg: Message) -> Message:
    """The SuperLink's reply for a node it cannot reach: sent by the SuperLink itself."""
    reply = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node unavailable"),
                    reply_to=msg)
    reply.metadata.__dict__["_src_node_id"] = SUPERLINK
    return reply


def update(msg: Message, step: float, count: int = 10) -> Message:
    arrays = ArrayRecord({k: Array(v + np.float32(step)) for k, v in GLOBAL.items()})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": count})}),
                   reply_to=msg)


def test_two_unreachable_nodes_count_two_under_their_own_ids() -> None:
    strategy = RobustStrategy(min_train_nodes=2, min_available_nodes=4, fraction_evaluate=0.0)
    msgs = pushed(strategy, [11, 22, 33, 44])
    replies = [unreachable(msgs[0]), unreachable(msgs[1]), update(msgs[2], 1.0),
               update(msgs[3], 3.0)]
    _, metrics = strategy.aggregate_train(1, replies)
    failed = strategy.history[1].failed
    assert set(failed) == {msgs[0].metadata.dst_node_id, msgs[1].metadata.dst_node_id}
    assert SUPERLINK not in failed
    assert metrics["failures"] == 2 and metrics["failed-unreachable"] == 2
    assert metrics["accepted"] == 2


def test_failures_are_counted_by_kind_with_a_one_line_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    strategy = RobustStrategy(min_train_nodes=1, min_available_nodes=3, fraction_evaluate=0.0)
    msgs = pushed(strategy, [5, 6, 7])
    replies = [error_reply(msgs[0], BUDGET_REFUSED, "DP budget: another round would exceed"),
               error_reply(msgs[1], DATA_ERROR, "data file 'a.csv': column 'age' row 3\nmore"),
               update(msgs[2], 1.0)]
    with caplog.at_level(logging.WARNING):
        _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["failed-dp-refused"] == 1 and metrics["failed-data"] == 1
    assert "more" not in caplog.text  # only the first line of a reason is logged
    row = {"round": 1, "server-accuracy": 0.5, "server-loss": 1.0, **dict(metrics)}
    line = round_line(row, 3)  # type: ignore[arg-type]
    assert "failed 2 (data 1, dp-refused 1)" in line and "epsilon refused by 1" in line


def test_an_inflated_count_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    strategy = RobustStrategy(min_train_nodes=2, min_available_nodes=4, fraction_evaluate=0.0)
    msgs = pushed(strategy, [1, 2, 3, 4])
    replies = [update(m, 1.0, count) for m, count in zip(msgs, [100, 120, 90, 10**12],
                                                          strict=True)]
    with caplog.at_level(logging.WARNING):
        _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["inflated-counts"] == 1
    assert f"node {msgs[3].metadata.dst_node_id} reported num-examples=1e+12" in caplog.text


def test_summary_names_the_aggregation_not_flowers_weighting(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        RobustStrategy(wait_timeout=42.0).summary()
    assert "Weighted by" not in caplog.text
    assert "waits up to 42s" in caplog.text and "Aggregation: fedavg" in caplog.text


@pytest.mark.timeout(30)
def test_a_missing_hospital_delays_the_round_by_wait_timeout_only() -> None:
    strategy = RobustStrategy(min_train_nodes=2, min_available_nodes=3, fraction_evaluate=0.0,
                              wait_timeout=1.0)
    msgs = pushed(strategy, [8, 9])  # Flower's FedAvg waits here forever
    assert sorted(m.metadata.dst_node_id for m in msgs) == [8, 9]


@pytest.mark.timeout(30)
def test_too_few_nodes_after_wait_timeout_stop_the_run_naming_who_is_missing() -> None:
    now = [0.0]  # a clock that only sleeping moves
    with pytest.raises(NotEnoughNodes, match=r"1 nodes connected after waiting 5s.*"
                                             r"fewer than the 2.*missing since earlier "
                                             r"rounds: \[4\]"):
        available_nodes(Grid([3]), 3, 2, 5.0, known={3, 4}, clock=lambda: now[0],
                        sleep=lambda s: now.__setitem__(0, now[0] + s))


def test_thousands_of_missing_nodes_are_counted_not_listed() -> None:
    now = [0.0]
    with pytest.raises(NotEnoughNodes) as err:
        available_nodes(Grid([1]), 3, 2, 5.0, known=set(range(1, 5001)), clock=lambda: now[0],
                        sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert "missing since earlier rounds: 4999 nodes, e.g. [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]" \
        in str(err.value) and len(str(err.value)) < 300


def test_nodes_that_connect_while_waiting_are_used() -> None:
    grid = Grid([1])
    def sleep(_: float) -> None:
        grid.nodes = [*grid.nodes, len(grid.nodes) + 1]

    nodes = available_nodes(grid, 3, 2, 60.0, clock=lambda: 0.0, sleep=sleep)
    assert nodes == [1, 2, 3]
