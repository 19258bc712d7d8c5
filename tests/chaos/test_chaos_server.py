"""Chaos on a real deployment, the server's side: the ServerApp killed mid-run and
resumed, the SuperLink restarted, and a DP run resumed against the hospitals' own caps.

The federation is the package fixture of ``tests/chaos/conftest.py`` (see
``test_chaos_nodes.py``, whose tests run first); each test starts from it whole and leaves
it whole again.

* the run's ServerApp (``flwr-serverapp``, a child of this test's SuperLink) SIGKILLed
  after checkpoint round 2: ``resume='latest'`` completes the planned rounds, none lost
  or repeated, in one MLflow run (FINISHED) with one registered model version;
* the SuperLink restarted while idle (same ``--database``, same certificates): the
  hospitals stay registered, the SuperNodes reconnect by themselves, a run completes;
* the hospitals restarted with a privacy ledger and a lifetime cap, a local-DP run's
  ServerApp SIGKILLed after checkpoint round 2 and the run resumed: the resumed rounds are
  refused by every hospital (``dp-refused``), and no hospital's ledger goes past its cap.

Every wait polls an observable condition (a log line, ``rounds.json``, a checkpoint file,
``flwr supernode list``, ``/health``) under a timeout; every process is signalled by PID.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.chaos.chaos_helpers import (
    BASE_CONFIG,
    CHAOS_MARKS,
    DP_CAP,
    DP_EPSILON,
    HOSPITALS,
    RESUMED_LINE,
    BackgroundRun,
    ChaosFederation,
    assert_federation_whole,
    failures_of,
    finish_run,
    ledger_summary,
    row,
    run_popen_watch,
    server_app_pids,
    set_aside_log,
    start_run,
    stop_run_client,
)
from tests.deployment.conftest import stop_process_tree
from tests.deployment.tls_cli import flwr_json, wait_until
from tests.deployment.tls_federation import (
    NODE_CONFIG,
    health_ok,
    listed_nodes,
    logged_node_id,
    start_superlink,
    start_supernode,
)
from tests.flwr_cli import cmdline

pytestmark = CHAOS_MARKS


def kill_server_app_at_round_2(fed: ChaosFederation, run: BackgroundRun, out: Path,
                               what: str) -> str:
    """Once ``run`` wrote its checkpoint of round 2, SIGKILL its ServerApp (by PID) and
    stop the run on the SuperLink. Returns the run's ID."""
    try:
        run_id = wait_until(run.run_id, 120, f"the {what} run's ID",
                            [fed.superlink, run_popen_watch(run)])
        ckpts = out / f"run-{run_id}" / "checkpoints"
        wait_until(lambda: (ckpts / "round-000002.ckpt").is_file(), 300,
                   "checkpoint round 2", [fed.superlink, run_popen_watch(run)], interval_s=0.2)
        [(pid, cmd)] = wait_until(lambda: list(server_app_pids(fed).items()), 30,
                                  f"the {what} run's flwr-serverapp process")
        assert cmdline(pid) == cmd
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: cmdline(pid) != cmd, 30, "the ServerApp to die")
    finally:
        stop_run_client(run)
    flwr_json(fed.env, "stop", run_id, must_succeed=False)  # the SuperLink forgets the run
    return run_id


# ---------------------------------------------------------------- 3. kill the ServerApp


def test_killed_server_app_resumes_from_its_checkpoint(federation: ChaosFederation) -> None:
    from mlflow.tracking import MlflowClient

    from fedapp.server import checkpoint
    from fedapp.tracking.registry import model_name_for

    fed = federation
    assert_federation_whole(fed)
    rounds = 4
    out = fed.root / "out-resume"
    config = f"{BASE_CONFIG} num-server-rounds={rounds} min-available-nodes=3 wait-timeout=90"
    first = start_run(fed, "crashed", out, config)
    run_id = kill_server_app_at_round_2(fed, first, out, "first")
    killed_after = sorted(first.rounds_logged())
    saved = checkpoint.newest(out / f"run-{run_id}" / "checkpoints")
    assert saved is not None and 2 <= saved.state.server_round < rounds, saved

    second = start_run(fed, "resumed", out, f"{config} resume='latest'")
    try:
        second_id = finish_run(fed, second, 300)
    finally:
        stop_run_client(second)
    output = second.output()
    match = RESUMED_LINE.search(output)
    assert match, output
    assert (match.group(1), int(match.group(2)), int(match.group(3))) == (
        str(saved.path), saved.state.server_round, rounds), match.group(0)
    rows = json.loads((out / f"run-{second_id}" / "rounds.json").read_text())
    assert [int(r["round"]) for r in rows] == list(range(rounds + 1)), rows  # once each
    done = saved.state.server_round
    assert rows[: done + 1] == saved.state.history()
    assert all(r["accepted"] == 3 and r["failures"] == 0 for r in rows[1:]), rows
    assert sorted(second.rounds_logged()) == list(range(done + 1, rounds + 1)), output

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("fedapp").experiment_id])
    assert run.info.run_id == saved.mlflow_run_id and run.info.status == "FINISHED", run.info
    name = model_name_for("breast-cancer")
    [version] = client.search_model_versions(f"name='{name}'")
    assert version.run_id == run.info.run_id
    assert [m.name for m in client.search_registered_models()] == [name]
    fed.record_timing(
        f"ServerApp SIGKILLed after rounds {killed_after} were logged; newest checkpoint "
        f"round {done}; resumed run logged rounds {sorted(second.rounds_logged())} in "
        f"{time.perf_counter() - second.started:.1f}s; one MLflow run FINISHED, one version")


# ---------------------------------------------------------------- 4. restart the SuperLink


def test_restarted_superlink_keeps_hospitals_and_nodes_reconnect(
    federation: ChaosFederation,
) -> None:
    fed = federation
    assert_federation_whole(fed)
    before = listed_nodes(fed)
    old = fed.superlink
    started = time.perf_counter()
    stop_process_tree(old.popen)  # by PID: SIGTERM, then its SuperExec and helpers
    set_aside_log(fed, old, "before-restart")
    assert all(p.running() for p in fed.nodes.values())
    fed.superlink = start_superlink(fed.supervisor, fed.root / "certs", fed.superlink_port,
                                    fed.env)
    wait_until(lambda: health_ok(fed.superlink_port, fed.ca_cert), 60, "SuperLink /health",
               [fed.superlink])
    up = time.perf_counter()
    after = listed_nodes(fed)
    assert set(after) == set(before) == set(fed.node_ids.values()), (before, after)
    assert_federation_whole(fed)
    reconnected = time.perf_counter()
    run = start_run(fed, "after-restart", fed.root / "out-restart",
                    f"{BASE_CONFIG} num-server-rounds=1 min-available-nodes=3 wait-timeout=90")
    run_id = finish_run(fed, run, 240)
    rows = json.loads((run.out_dir / f"run-{run_id}" / "rounds.json").read_text())
    assert (row(rows, 1)["accepted"], row(rows, 1)["failures"]) == (3, 0), rows
    fed.record_timing(
        f"SuperLink restart: up in {up - started:.1f}s, statuses right after {after}, all 3 "
        f"online {reconnected - up:.1f}s later; 1-round run in "
        f"{time.perf_counter() - reconnected:.1f}s")


# ---------------------------------------------------------------- 5. DP cap across a resume


@pytest.mark.timeout(600, method="signal")
def test_a_resumed_dp_run_keeps_every_hospital_within_its_own_cap(
    federation: ChaosFederation,
) -> None:
    fed = federation
    assert_federation_whole(fed)
    ledgers = {name: fed.root / "ledgers" / f"{name}.json" for name in HOSPITALS}
    restart_with_ledgers(fed, ledgers)
    assert_federation_whole(fed)

    rounds = 4
    out = fed.root / "out-dp-resume"
    config = (f"{BASE_CONFIG} num-server-rounds={rounds} min-available-nodes=3 wait-timeout=90 "
              f"dp='local' dp-epsilon={DP_EPSILON}")
    first = start_run(fed, "dp-crashed", out, config)
    first_id = kill_server_app_at_round_2(fed, first, out, "first DP")

    second = start_run(fed, "dp-resumed", out, f"{config} resume='latest'")
    try:
        resumed_at = wait_until(lambda: RESUMED_LINE.search(second.output()) and
                                time.perf_counter(), 180, "the resumed run's resume line",
                                [fed.superlink, run_popen_watch(second)], interval_s=0.2)
        new_round_at = wait_until(lambda: "configure_train" in second.output() and
                                  time.perf_counter(), 180, "the resumed run's first round",
                                  [fed.superlink, run_popen_watch(second)], interval_s=0.2)
        second_id = finish_run(fed, second, 300)  # finished:completed
    finally:
        stop_run_client(second)
    output = second.output()
    match = RESUMED_LINE.search(output)
    assert match and (int(match.group(2)), int(match.group(3))) == (2, rounds), output

    # The server: rounds 1-2 trained by all three, rounds 3-4 refused by all three.
    rows = json.loads((out / f"run-{second_id}" / "rounds.json").read_text())
    assert [int(r["round"]) for r in rows] == list(range(rounds + 1)), rows
    for r in (1, 2):
        assert (row(rows, r)["accepted"], row(rows, r)["failures"]) == (3, 0), row(rows, r)
    for r in (3, 4):
        assert row(rows, r)["accepted"] == 0 and failures_of(row(rows, r)) == {
            "dp-refused": 3}, row(rows, r)
        assert row(rows, r)["kept-previous"] == 1, row(rows, r)

    seen = assert_ledgers_within_cap(fed, ledgers, first_id)
    refused_logs = {name: fed.nodes[name].log_text().count("DP lifetime budget")
                    for name in HOSPITALS}
    fed.record_timing(
        f"DP resume (dp-epsilon {DP_EPSILON:g}/run, dp-budget {DP_CAP:g}): lifetime epsilon "
        + ", ".join(f"{n}={e:.3f}" for n, e in seen.items())
        + f"; rounds 3-4 refused by 3 each (failed-dp-refused); refusal lines in node logs "
        f"{refused_logs}; resume submitted -> resume line {resumed_at - second.started:.1f}s, "
        f"-> first new round (configure_train) {new_round_at - second.started:.1f}s; "
        f"resumed run done {time.perf_counter() - second.started:.1f}s after submission")


def restart_with_ledgers(fed: ChaosFederation, ledgers: dict[str, Path]) -> None:
    """Restart the three SuperNodes with a ledger and a lifetime cap (same keys, ports,
    data) once the SuperLink lists them offline (it refuses to reactivate an online node
    ID); each must reconnect with its registered node ID."""
    for proc in fed.nodes.values():
        stop_process_tree(proc.popen)
    wait_until(lambda: all(listed_nodes(fed).get(i) == "offline" for i in fed.node_ids.values()),
               150, "the SuperLink to list the stopped hospitals offline", [fed.superlink],
               interval_s=1)
    for name in HOSPITALS:
        set_aside_log(fed, fed.nodes[name], "before-ledger")
        extra = f"privacy-ledger='{ledgers[name]}' dp-budget={DP_CAP}"
        fed.nodes[name] = start_supernode(
            fed.supervisor, name, fed.superlink_port, fed.node_ports[name],
            fed.data_paths[name], fed.ca_cert, fed.keys / name,
            node_config=f"{NODE_CONFIG.get(name, '')} {extra}".strip())
    for name, proc in fed.nodes.items():
        logged = wait_until(lambda p=proc: logged_node_id(p), 90, f"{name} to reconnect",
                            [proc, fed.superlink], interval_s=0.5)
        assert logged == fed.node_ids[name]


def assert_ledgers_within_cap(fed: ChaosFederation, ledgers: dict[str, Path],
                              first_id: str) -> dict[str, float]:
    """Each hospital, on its own: its ledger never went past its cap, whatever the server
    did; rounds 1-2 of the first run were charged, nothing to the resumed run. Returns each
    hospital's lifetime epsilon."""
    seen = {}
    for name, path in ledgers.items():
        doc = ledger_summary(fed, path)
        [ident] = doc["datasets"]
        assert ident["cap"] == DP_CAP and ident["delta"] == 1e-5, ident
        assert ident["total-epsilon"] <= DP_CAP, (name, ident)
        assert [(r["run"], r["rounds"], r["pending"]) for r in ident["runs"]] == [
            (int(first_id), 2, 0)], (name, ident)
        assert ident["total-epsilon"] > 2.0, (name, ident)
        seen[name] = ident["total-epsilon"]
    return seen
