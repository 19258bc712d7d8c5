"""``benchmarks/deployment_scale_rounds.py``: per-round rows from hand-made stamped
SuperNode lines and the server's round times."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def rounds_mod() -> ModuleType:
    """The benchmark module (benchmarks/ is a script directory, not a package)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("deployment_scale_rounds")


def message(receiving: float, sending: float, handler: float | None = None,
            ) -> list[tuple[float, str]]:
    """One train message as a SuperNode logs it (Flower's lines and, with ``handler``, the
    ClientApp's cold-start lines: process start 0.2 s after receiving, handler entered
    1.0 s later)."""
    lines = [(receiving, "INFO :      [RUN 7]"),
             (receiving, "INFO :      Receiving: train message (ID: abc)"),
             (receiving + 0.1, "INFO :      Received successfully")]
    if handler is not None:
        start, entered = receiving + 0.2, receiving + 1.2
        lines += [
            (entered + 0.01, f"INFO :      [fedapp] cold start: train handler entered 1.00s "
             f"after process start; local data loaded in 0.010s (process start {start:.3f}, "
             f"entered {entered:.3f} epoch)"),
            (entered + handler, f"INFO :      [fedapp] cold start: train handler returned at "
             f"{entered + handler:.3f} (epoch) after {handler:.3f}s")]
    lines += [(sending, "INFO :      Sending: train message (ID: def)"),
              (sending + 0.3, "INFO :      Sent successfully")]
    return lines


def test_round_rows_overhead_is_round_minus_slowest_node(rounds_mod: ModuleType) -> None:
    # round 1: node A 100.0 -> 104.0 (4 s), node B 101.0 -> 106.0 (5 s); server 8 s
    # round 2: node A 110.0 -> 113.0 (3 s), node B 110.5 -> 112.5 (2 s); server 5 s
    node_a = [(99.0, "INFO :      SuperNode ID: 1"), *message(100.0, 104.0, 0.5),
              (105.0, "INFO :      Receiving: evaluate message (ID: x)"),  # not a train one
              (105.5, "INFO :      Sending: evaluate message (ID: y)"),
              *message(110.0, 113.0, 0.25)]
    node_b = [*message(101.0, 106.0, 1.5), *message(110.5, 112.5)]
    rows = rounds_mod.round_rows([node_a, node_b], [8.0, 5.0])

    assert [r["round"] for r in rows] == [1, 2]
    first, second = rows
    assert first["round-s"] == 8.0
    assert first["slowest-node-s"] == pytest.approx(5.0)
    assert first["fastest-node-s"] == pytest.approx(4.0)
    assert first["median-node-s"] == pytest.approx(4.5)
    assert first["overhead-s"] == pytest.approx(3.0)
    assert first["node-span-s"] == pytest.approx(6.0)  # 100.0 -> 106.0
    # overhead 3.0 = skew (span 6.0 - slowest 5.0) + the last reply's upload (106.0 -> 106.3)
    # + the server's side (8.0 - 6.3)
    assert first["skew-s"] == pytest.approx(1.0)
    assert first["push-tail-s"] == pytest.approx(0.3)
    assert first["server-side-s"] == pytest.approx(1.7)
    assert first["slowest-push-s"] == pytest.approx(0.3)
    # with its reply's upload the slowest node is B, 101.0 -> 106.3
    assert first["slowest-node-sent-s"] == pytest.approx(5.3)
    assert first["overhead-sent-s"] == pytest.approx(2.7)
    assert first["pickup-spread-s"] == pytest.approx(1.0)
    assert first["slowest-handler-s"] == pytest.approx(1.5)
    assert first["median-to-handler-s"] == pytest.approx(1.0)
    assert second["slowest-node-s"] == pytest.approx(3.0)
    assert second["overhead-s"] == pytest.approx(2.0)
    assert second["pickup-spread-s"] == pytest.approx(0.5)
    assert second["slowest-handler-s"] == pytest.approx(0.25)  # node B logged no handler


def test_a_round_with_a_lost_reply_is_reported_not_counted(rounds_mod: ModuleType) -> None:
    # Round 2: node B's reply fails to go out (the SuperLink answered 500), node C never
    # gets the message; round 3 is complete again.
    failed = [(6.0, "INFO :      Receiving: train message (ID: q)"),
              (9.0, "INFO :      Sending: train message (ID: r)"),
              (9.5, "ERROR :     Failed to send message r: Server error '500 Internal "
                    "Server Error' for url 'http://127.0.0.1:1/v1/fleet/push-messages'")]
    node_a = [*message(0.0, 1.0), *message(5.0, 6.0), *message(20.0, 21.0)]
    node_b = [*message(0.0, 2.0), *failed, *message(20.0, 22.0)]
    node_c = [*message(0.0, 1.5)]
    rows = rounds_mod.round_rows([node_a, node_b, node_c], [4.0, 600.0, 5.0])

    assert rows[1] == {"round": 2, "round-s": 600.0, "unfinished-nodes": 2}
    assert rows[2]["unfinished-nodes"] == 1  # node C
    assert rows[0]["slowest-node-s"] == pytest.approx(2.0)
    assert rounds_mod.complete(rows) == [rows[0]]
    first, later = rounds_mod.split_first(rows)
    assert (first, later) == ([rows[0]], [])

    spans = rounds_mod.train_spans(node_b)
    assert [s.receiving for s in spans] == [0.0, 6.0, 20.0]
    assert spans[1].sending == 9.0 and spans[1].sent is None
    assert spans[2].stages is not None and spans[2].sent == pytest.approx(22.3)


def test_lines_of_other_message_types_are_ignored(rounds_mod: ModuleType) -> None:
    lines = [*message(0.0, 1.0)[:-2],  # a train message whose Sending is never logged
             (2.0, "INFO :      Receiving: evaluate message (ID: e)"),
             (3.0, "INFO :      Sending: evaluate message (ID: f)"),
             (3.1, "INFO :      Sent successfully"),
             *message(5.0, 6.0)]
    spans = rounds_mod.train_spans(lines)
    assert [(s.receiving, s.sending, s.sent) for s in spans] == [
        (0.0, None, None), (5.0, 6.0, pytest.approx(6.3))]


def test_summaries_split_round_one_and_take_medians(rounds_mod: ModuleType) -> None:
    rows = [{"round": 1, "round-s": 20.0, "overhead-s": 9.0},
            {"round": 2, "round-s": 6.0, "overhead-s": 1.0},
            {"round": 3, "round-s": 8.0, "overhead-s": 3.0},
            {"round": 4, "round-s": 7.0, "overhead-s": 2.5}]
    first, later = rounds_mod.split_first(rows)
    assert [r["round"] for r in first] == [1]
    summary = rounds_mod.summarize(later)
    assert summary["round-s"] == {"median": 7.0, "min": 6.0, "max": 8.0, "n": 3}
    assert summary["overhead-s"]["median"] == 2.5
    assert "slowest-node-s" not in summary  # keys no row has are left out
    assert rounds_mod.ratio(3.0, 2.0) == 1.5
    assert rounds_mod.ratio(3.0, 0.0) is None
