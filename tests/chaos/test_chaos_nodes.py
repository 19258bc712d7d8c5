"""Chaos on a real deployment, the hospitals' side: a SuperNode killed or hung mid-run.

The federation (``tests/chaos/conftest.py``'s package fixture, built by
``chaos_helpers.start_chaos_federation``): a TLS SuperLink (``--database``) with SuperNode
authentication and three registered hospital SuperNodes, each with its own
``data-path``. One federation serves every chaos test (this module's, then
``test_chaos_server.py``'s); each test starts from it whole (every hospital running and
online) and leaves it whole again.

* a SuperNode SIGKILLed (with its ClientApp) while it trains in round 2: the round ends
  with the two others and counts the failure; restarted with the same key and node config,
  it rejoins and its update is accepted in round 3 of the same run;
* a SuperNode SIGSTOPped (a hang): round 1 ends at ``round-timeout`` (or when the
  SuperLink lists it offline) with the failure counted, which benches it
  (``health-max-failures=1``); the next round leaves it out and does not wait for it;
  SIGCONTed, it is back on probation after ``health-cooldown=1`` round and accepted.

Every wait polls an observable condition (a log line, ``rounds.json``, ``flwr supernode
list``) under a timeout; every process is signalled by PID.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from tests.chaos.chaos_helpers import (
    BASE_CONFIG,
    BASE_CONFIG_NO_TIMEOUT,
    CHAOS_MARKS,
    KILL_ROUND_TIMEOUT,
    ROUND_TIMEOUT,
    ChaosFederation,
    assert_federation_whole,
    failures_of,
    finish_run,
    kill_tree,
    received_count,
    restart_supernode,
    row,
    run_popen_watch,
    start_run,
    stop_run_client,
)
from tests.deployment.tls_cli import wait_until
from tests.deployment.tls_federation import listed_nodes, logged_node_id, online_node_ids

pytestmark = CHAOS_MARKS


# ---------------------------------------------------------------- 1. SIGKILL a SuperNode


def test_killed_supernode_round_goes_on_and_restarted_node_rejoins(
    federation: ChaosFederation,
) -> None:
    fed = federation
    assert_federation_whole(fed)
    victim = "hospital-2"
    victim_id = fed.node_ids[victim]
    rounds = 3
    # One instruction per round (no evaluation): the victim's second one is round 2's.
    # Counted from before the run: round 2's may arrive before round 1 is seen logged.
    before = received_count(fed.nodes[victim])
    # Round 2 outlasts the SuperLink's offline listing and the restart (KILL_ROUND_TIMEOUT),
    # so round 3 never lists the dead node; it waits for the restarted one
    # (min-available-nodes=3).
    run = start_run(fed, "sigkill", fed.root / "out-sigkill",
                    f"{BASE_CONFIG_NO_TIMEOUT} round-timeout={KILL_ROUND_TIMEOUT} "
                    f"num-server-rounds={rounds} min-available-nodes=3 wait-timeout=120")
    try:
        wait_until(lambda: 1 in run.rounds_logged(), 240, "round 1 to be logged",
                   [fed.superlink, run_popen_watch(run)], interval_s=0.5)
        # Round 2 has begun: kill the victim once it received its instruction.
        wait_until(lambda: received_count(fed.nodes[victim]) >= before + 2, 60,
                   f"{victim} to receive its round-2 instruction", [fed.nodes[victim]],
                   interval_s=0.2)
        killed_at = time.perf_counter()
        helpers = kill_tree(fed.nodes[victim])
        # Flower refuses to activate a node ID the SuperLink still lists online ([code:
        # 2004]); it lists a silent node offline 2 heartbeat intervals (2 x 30 s) after its
        # last heartbeat. Restart once it does.
        wait_until(lambda: listed_nodes(fed).get(victim_id) == "offline", 120,
                   f"the SuperLink to list the killed {victim} offline",
                   [fed.superlink, run_popen_watch(run)], interval_s=1)
        offline_at = time.perf_counter()
        proc = restart_supernode(fed, victim, "killed")
        logged = wait_until(lambda: logged_node_id(proc), 90, f"{victim} to reconnect",
                            [proc, fed.superlink], interval_s=0.2)
        rejoined = time.perf_counter()
        assert logged == victim_id, f"restarted {victim} got ID {logged}, not {victim_id}"
        run_id = finish_run(fed, run, 240)
    finally:
        stop_run_client(run)
    assert victim_id in online_node_ids(fed), listed_nodes(fed)
    rows = json.loads((run.out_dir / f"run-{run_id}" / "rounds.json").read_text())
    r2, r3 = assert_killed_in_round_2_and_back_in_round_3(rows, rounds)
    health = json.loads((run.out_dir / f"run-{run_id}" / "node_health.json").read_text())
    victim_health = json.dumps(health)
    secs = run.rounds_logged()
    fed.record_timing(
        f"SIGKILL {victim} (+{len(helpers)} helpers) in round 2: round seconds "
        + ", ".join(f"r{r}={s:.1f}" for r, s in sorted(secs.items()))
        + f"; round 2 failures {failures_of(r2)}; listed offline {offline_at - killed_at:.1f}s "
        f"after the kill; restarted, reconnected {rejoined - killed_at:.1f}s after the kill; "
        f"round 3 accepted {r3['accepted']}")
    print("node_health.json:", victim_health)


def assert_killed_in_round_2_and_back_in_round_3(
    rows: list[dict[str, Any]], rounds: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every round once; round 1 all three accepted; round 2 the two others accepted and
    the killed node counted as failed (no reply by round-timeout, or the SuperLink's error
    reply once it saw the node offline); round 3 the restarted node accepted again."""
    assert [int(r["round"]) for r in rows] == list(range(rounds + 1)), rows
    r1, r2, r3 = row(rows, 1), row(rows, 2), row(rows, 3)
    assert (r1["accepted"], r1["failures"]) == (3, 0), r1
    assert (r2["accepted"], r2["failures"]) == (2, 1), r2
    assert sum(failures_of(r2).values()) == 1 and set(failures_of(r2)) <= {"timeout",
                                                                            "unreachable"}, r2
    assert (r3["replies"], r3["accepted"], r3["failures"]) == (3, 3, 0), r3
    return r2, r3


# ---------------------------------------------------------------- 2. SIGSTOP a SuperNode


def test_hung_supernode_fails_is_benched_and_comes_back_on_probation(
    federation: ChaosFederation,
) -> None:
    """A hung SuperNode stops heartbeating too (Flower's interval is fixed at 30 s,
    patience 2): the SuperLink lists it offline 36-60 s after SIGSTOP and then answers its
    pending instruction itself. So round 1 ends at ``round-timeout`` (timeout) or at that
    moment (unreachable), whichever comes first, and an offline node is no longer sampled:
    only a bench after one failure (``health-max-failures=1``) is reachable for a hung
    SuperNode when healthy rounds need a round-timeout well above 30 s."""
    fed = federation
    assert_federation_whole(fed)
    victim = "hospital-1"
    victim_id = fed.node_ids[victim]
    proc = fed.nodes[victim]
    rounds = 3
    # min-available-nodes 2: with the hung node offline, sampling does not wait for it.
    config = (f"{BASE_CONFIG} num-server-rounds={rounds} min-available-nodes=2 wait-timeout=20 "
              "health-max-failures=1 health-cooldown=1")
    run = start_run(fed, "sigstop", fed.root / "out-sigstop", config)
    stopped = False
    try:
        before = received_count(proc)
        wait_until(lambda: received_count(proc) > before, 240,
                   f"{victim} to receive its round-1 instruction",
                   [fed.superlink, proc, run_popen_watch(run)], interval_s=0.2)
        os.kill(proc.pid, signal.SIGSTOP)  # hangs while its ClientApp trains
        stopped = True
        hung_at = time.perf_counter()
        wait_until(lambda: 1 in run.rounds_logged(), ROUND_TIMEOUT + 120, "round 1 to end",
                   [fed.superlink, run_popen_watch(run)])
        round1_end = time.perf_counter()
        # Benched now: wake it up; round 2 must still leave it out, round 3 take it back.
        os.kill(proc.pid, signal.SIGCONT)
        stopped = False
        wait_until(lambda: victim_id in online_node_ids(fed), 90,
                   f"{victim} online again after SIGCONT", [proc, fed.superlink], interval_s=1)
        online_again = time.perf_counter()
        run_id = finish_run(fed, run, 240)
    finally:
        if stopped:
            os.kill(proc.pid, signal.SIGCONT)
        stop_run_client(run)

    rows = json.loads((run.out_dir / f"run-{run_id}" / "rounds.json").read_text())
    kinds = assert_benched_after_round_1_and_back_in_round_3(rows, rounds)
    output = run.output()
    assert f"round 3: node {victim_id} back on probation" in output, output
    health = json.loads((run.out_dir / f"run-{run_id}" / "node_health.json").read_text())
    record = health[victim_id]
    assert record["state"] == "healthy" and record["successes"] == 1, record
    secs = run.rounds_logged()
    fed.record_timing(
        f"SIGSTOP {victim} in round 1: round seconds "
        + ", ".join(f"r{r}={s:.1f}" for r, s in sorted(secs.items()))
        + f" (round-timeout {ROUND_TIMEOUT:.0f}); round 1 failure {kinds}, ended "
        f"{round1_end - hung_at:.1f}s after SIGSTOP; benched in round 2; online "
        f"{online_again - round1_end:.1f}s after SIGCONT; accepted again in round 3")




def assert_benched_after_round_1_and_back_in_round_3(rows: list[dict[str, Any]],
                                                     rounds: int) -> dict[str, int]:
    """Every round once. Round 1: the others accepted, the hung node counted as failed and
    benched (no reply by round-timeout, or the SuperLink's error reply, counted among the
    replies, once it listed the node offline). Round 2: benched (though online again), left
    out, no wait for it. Round 3: back on probation, sampled, accepted. Returns round 1's
    failure kinds."""
    assert [int(r["round"]) for r in rows] == list(range(rounds + 1)), rows
    r1, r2, r3 = (row(rows, r) for r in range(1, 4))
    kinds = failures_of(r1)
    assert kinds in ({"timeout": 1}, {"unreachable": 1}), r1
    replies = 2 if "timeout" in kinds else 3
    assert (r1["replies"], r1["accepted"], r1["failures"]) == (replies, 2, 1), r1
    if "timeout" in kinds:
        assert r1["seconds"] >= ROUND_TIMEOUT - 1, r1
    assert r1["nodes-benched"] == 1, r1
    assert (r2["replies"], r2["accepted"], r2["failures"]) == (2, 2, 0), r2
    assert r2["nodes-benched"] == 1, r2
    assert r2["seconds"] < ROUND_TIMEOUT - 1, r2
    assert (r3["replies"], r3["accepted"], r3["failures"]) == (3, 3, 0), r3
    assert r3["nodes-benched"] == 0, r3
    return kinds
