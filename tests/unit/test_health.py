"""Node health: the circuit breaker's rules (one test each, fedapp.server.health), timeouts,
benched nodes left out of sampling and of the min-available-nodes wait, and the round's
metrics and log line."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedapp.server.health import BENCHED, HEALTHY, PROBATION, Breaker, Health
from fedapp.server.rounds import RoundStats, round_line
from fedapp.server.sampling import available_nodes
from fedapp.server.strategy import RobustStrategy

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
GLOBAL = {"w": np.zeros(3, np.float32)}


def fail(breaker: Breaker, health: Health, node: int, server_round: int) -> bool:
    return breaker.failure(health.node(node), server_round, "crash")


# --- the breaker's rules ---------------------------------------------------------------

def test_rule_bench_after_max_failures_consecutive() -> None:
    breaker, health = Breaker(max_failures=3, cooldown=5), Health()
    assert not fail(breaker, health, 7, 1) and not fail(breaker, health, 7, 2)
    breaker.success(health.node(7), 3)  # a success resets the count
    assert not fail(breaker, health, 7, 4) and not fail(breaker, health, 7, 5)
    assert health.nodes[7].state == HEALTHY
    assert fail(breaker, health, 7, 6)
    record = health.nodes[7]
    assert (record.state, record.benched_at, record.consecutive) == (BENCHED, 6, 3)
    assert record.failures == {"crash": 5} and record.successes == 1
    assert breaker.benched(health) == [7]


def test_rule_cooldown_then_probation() -> None:
    breaker, health = Breaker(max_failures=1, cooldown=2), Health()
    fail(breaker, health, 7, 4)
    for server_round in (5, 6):  # benched for 2 rounds
        assert breaker.start_round(health, server_round) == []
        assert breaker.benched(health) == [7]
    assert breaker.start_round(health, 7) == [7]
    assert health.nodes[7].state == PROBATION and breaker.benched(health) == []


def test_rule_probation_success_closes_the_breaker() -> None:
    breaker, health = Breaker(max_failures=2, cooldown=1), Health()
    fail(breaker, health, 7, 1)
    fail(breaker, health, 7, 2)
    breaker.start_round(health, 4)
    breaker.success(health.node(7), 4)
    assert (health.nodes[7].state, health.nodes[7].consecutive) == (HEALTHY, 0)
    assert health.nodes[7].last_seen == 4
    assert not fail(breaker, health, 7, 5)  # max-failures again before the next bench


def test_rule_probation_failure_benches_again() -> None:
    breaker, health = Breaker(max_failures=3, cooldown=1), Health()
    for server_round in (1, 2, 3):
        fail(breaker, health, 7, server_round)
    breaker.start_round(health, 5)
    assert health.nodes[7].state == PROBATION
    assert fail(breaker, health, 7, 5)  # one failure, not three
    assert (health.nodes[7].state, health.nodes[7].benched_at) == (BENCHED, 5)
    assert breaker.back_in(health.nodes[7]) == 7


def test_rule_off_when_max_failures_is_zero() -> None:
    breaker, health = Breaker(max_failures=0), Health()
    assert not any(fail(breaker, health, 7, r) for r in range(1, 20))
    assert health.nodes[7].state == HEALTHY and health.nodes[7].consecutive == 19
    assert breaker.benched(health) == []


def test_rule_never_stall_and_nodes_unchanged_when_none_benched() -> None:
    breaker, health = Breaker(max_failures=1, cooldown=5), Health()
    nodes = [1, 2, 3, 4]
    assert breaker.pool(health, nodes, 2) is nodes  # same list, same order: same draw
    fail(breaker, health, 3, 2)
    fail(breaker, health, 1, 1)
    fail(breaker, health, 2, 3)
    assert breaker.pool(health, nodes, 1) == [4]
    assert breaker.pool(health, nodes, 3) == [4, 1, 3]  # closest to probation first


def test_health_to_dict_round_trip() -> None:
    breaker, health = Breaker(max_failures=1), Health()
    fail(breaker, health, 3, 2)
    breaker.success(health.node(4), 2)
    again = Health.from_dict(health.to_dict())
    assert again == health and again.to_dict() == health.to_dict()
    report = breaker.report(health)
    assert report["3"]["probation-in-round"] == 8 and report["3"]["state"] == BENCHED
    assert report["4"]["successes"] == 1 and "probation-in-round" not in report["4"]


# --- the strategy over several rounds ----------------------------------------------------

class Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def ok(msg: Message) -> Message:
    arrays = ArrayRecord({k: Array(v + np.float32(1.0)) for k, v in GLOBAL.items()})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 5})}),
                   reply_to=msg)


def play(strategy: RobustStrategy, grid: Grid, server_round: int, bad: int, *,
         mode: str = "silent") -> tuple[list[int], dict[str, float]]:
    """One round; node ``bad`` never replies (``silent``) or replies with an error."""
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    msgs = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
    for i, msg in enumerate(msgs):
        msg.metadata.__dict__["_message_id"] = f"r{server_round}-{i}"
    replies = [ok(m) if m.metadata.dst_node_id != bad else
               Message(Error(code=0, reason="gpu job hung"), reply_to=m)
               for m in msgs if mode == "error" or m.metadata.dst_node_id != bad]
    _, metrics = strategy.aggregate_train(server_round, replies)
    return sorted(m.metadata.dst_node_id for m in msgs), dict(metrics)  # type: ignore[arg-type]


def strategy(**kwargs: object) -> RobustStrategy:
    return RobustStrategy(min_train_nodes=2, min_available_nodes=4, fraction_evaluate=0.0,
                          health_max_failures=2, health_cooldown=2, wait_timeout=60.0,
                          **kwargs)


def test_a_silent_node_is_benched_skipped_during_cooldown_and_back_on_probation() -> None:
    s, grid = strategy(), Grid([1, 2, 3, 4])
    sampled, metrics = play(s, grid, 1, bad=3)
    assert sampled == [1, 2, 3, 4] and metrics["failed-timeout"] == 1
    sampled, metrics = play(s, grid, 2, bad=3)
    assert metrics["nodes-benched"] == 1 and metrics["nodes-healthy"] == 3
    for server_round in (3, 4):  # cooldown: not sampled, no failure
        sampled, metrics = play(s, grid, server_round, bad=3)
        assert sampled == [1, 2, 4] and metrics["failures"] == 0
    sampled, metrics = play(s, grid, 5, bad=0)  # on probation, and it replies
    assert sampled == [1, 2, 3, 4] and metrics["nodes-healthy"] == 4
    assert s.state.health.nodes[3].state == HEALTHY


def test_a_failing_node_on_probation_is_benched_again() -> None:
    s, grid = strategy(), Grid([1, 2, 3, 4])
    for server_round in (1, 2, 3, 4):
        play(s, grid, server_round, bad=3, mode="error")
    sampled, metrics = play(s, grid, 5, bad=3, mode="error")
    assert 3 in sampled and metrics["failed-other"] == 1 and metrics["nodes-benched"] == 1
    for server_round in (6, 7):
        assert play(s, grid, server_round, bad=3)[0] == [1, 2, 4]
    record = s.state.health.nodes[3]
    assert record.failures == {"other": 3} and record.last_seen == 5


@pytest.mark.timeout(30)
def test_the_wait_does_not_wait_for_a_benched_node_that_is_gone() -> None:
    s, grid = strategy(), Grid([1, 2, 3, 4])
    play(s, grid, 1, bad=3)
    play(s, grid, 2, bad=3)
    grid.nodes = [1, 2, 4]  # the benched hospital went offline
    start = time.monotonic()
    assert play(s, grid, 3, bad=0)[0] == [1, 2, 4]
    assert time.monotonic() - start < 5.0  # not wait-timeout (60 s)


def test_benched_nodes_are_sampled_rather_than_stall() -> None:
    s, grid = RobustStrategy(min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0,
                             health_max_failures=1), Grid([1, 2])
    play(s, grid, 1, bad=2)
    assert s.state.health.nodes[2].state == BENCHED
    assert play(s, grid, 2, bad=0)[0] == [1, 2]
    assert s.state.health.nodes[2].state == HEALTHY


def test_available_nodes_counts_benched_nodes_out() -> None:
    def no_sleep(_: float) -> None:
        raise AssertionError("waited")

    nodes = available_nodes(Grid([1, 2, 3]), 4, 2, 60.0, benched=[4], clock=lambda: 0.0,
                            sleep=no_sleep)
    assert nodes == [1, 2, 3]


def test_timeouts_are_sampled_nodes_without_a_reply() -> None:
    s = RobustStrategy(min_train_nodes=2, min_available_nodes=4, fraction_evaluate=0.0)
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    msgs = list(s.configure_train(1, arrays, ConfigRecord(), Grid([5, 6, 7, 8])))
    for i, msg in enumerate(msgs):
        msg.metadata.__dict__["_message_id"] = f"instruction-{i}"
    _, metrics = s.aggregate_train(1, [ok(m) for m in msgs[1:]])
    late = msgs[0].metadata.dst_node_id
    assert metrics["failed-timeout"] == 1 and metrics["failures"] == 1
    assert metrics["accepted"] == 3
    assert s.history[1].failed[late].startswith("timeout")
    assert s.state.health.nodes[late].failures == {"timeout": 1}
    assert s.state.health.nodes[late].last_seen == 0  # never heard from


def test_round_metrics_and_line_report_health() -> None:
    stats = RoundStats(3, replies=3, accepted=3, failed={9: "timeout: no reply"},
                       failed_kinds={"timeout": 1},
                       health={"nodes-healthy": 3, "nodes-benched": 1, "nodes-probation": 0})
    metrics = stats.metrics()
    assert (metrics["nodes-healthy"], metrics["nodes-benched"], metrics["nodes-probation"]) \
        == (3, 1, 0)
    row = {"round": 3, "server-accuracy": 0.9, "server-loss": 0.2, **dict(metrics)}
    line = round_line(row, 5)  # type: ignore[arg-type]
    assert "failed 1 (timeout 1)" in line and "| benched 1" in line
    assert "probation" not in line
