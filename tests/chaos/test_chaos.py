"""Chaos on a real deployment: a TLS SuperLink (``--database``) with SuperNode
authentication and three registered hospital SuperNodes, each with its own ``data-path``
(the deployment tier's helpers, ``tests/deployment``). One federation serves every test, in
file order; each test leaves it whole again (every hospital running and online).

* a SuperNode SIGKILLed (with its ClientApp) while it trains in round 2: the round ends
  with the two others and counts the failure; restarted with the same key and node config,
  it rejoins and its update is accepted in round 3 of the same run;
* a SuperNode SIGSTOPped (a hang): round 1 ends at ``round-timeout`` with a timeout
  counted, the second failure benches it (``health-max-failures=2``), the next round
  leaves it out and does not wait for it; SIGCONTed, it is back on probation after
  ``health-cooldown=1`` round and accepted;
* the run's ServerApp (``flwr-serverapp``, a child of this test's SuperLink) SIGKILLed
  after checkpoint round 2: ``resume='latest'`` completes the planned rounds, none lost
  or repeated, in one MLflow run (FINISHED) with one registered model version;
* the SuperLink restarted while idle (same ``--database``, same certificates): the
  hospitals stay registered, the SuperNodes reconnect by themselves, a run completes.

Every wait polls an observable condition (a log line, ``rounds.json``, a checkpoint file,
``flwr supernode list``, ``/health``) under a timeout; every process is signalled by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.deployment.conftest import stop_process_tree
from tests.deployment.test_tls_deployment import (
    BIN_PATH,
    CONNECTION,
    FLWR,
    NODE_CONFIG,
    REPO_ROOT,
    RUN_ID_LINE,
    Federation,
    child_env,
    final_status,
    flwr_json,
    flwr_json_parallel,
    free_ports,
    generate_certificates,
    generate_node_keys,
    health_ok,
    listed_nodes,
    logged_node_id,
    online_node_ids,
    round_seconds,
    split_hospital_data,
    start_superlink,
    start_supernode,
    wait_until,
    write_connection,
)
from tests.flwr_cli import cmdline, descendants

if TYPE_CHECKING:  # the Supervisor comes from the chaos conftest's fixture
    from tests.deployment.conftest import ManagedProcess, Supervisor

pytestmark = [
    pytest.mark.chaos,
    # Upper bounds that catch hangs, not slowness (this machine's cores are shared).
    pytest.mark.timeout(420, method="signal"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH"),
    pytest.mark.skipif(
        shutil.which("flower-superlink", path=BIN_PATH) is None,
        reason="flower-superlink is not on PATH",
    ),
]

HOSPITALS = [f"hospital-{h}" for h in range(3)]
# A healthy round of 3 fresh ClientApp processes takes about 25 s on 2 shared cores at load
# 4; the round timeout leaves twice that.
ROUND_TIMEOUT = 60.0
BASE_CONFIG_NO_TIMEOUT = (
    "dataset='breast-cancer' local-epochs=1 fraction-evaluate=0.0 min-train-nodes=2"
)
BASE_CONFIG = f"{BASE_CONFIG_NO_TIMEOUT} round-timeout={ROUND_TIMEOUT}"
# The SuperLink lists a silent node offline 2 heartbeat intervals (2 x 30 s) after its last
# heartbeat, and may or may not answer the dead node's instruction then (seen both ways): the
# round ends on that answer or at its timeout, which outlasts the offline listing and the
# restart (the test restarts the node once it is listed offline). Either way the next round
# never lists the dead node.
KILL_ROUND_TIMEOUT = 100.0
CLIENTAPP_RECEIVED = "Received successfully"
RESUMED_LINE = re.compile(r"\[fedapp\] resuming from (\S+): round (\d+) of (\d+) done")


@dataclass
class ChaosFederation(Federation):
    """The deployment tier's ``Federation``, plus each SuperNode's port (a restarted node
    gets its own again)."""

    node_ports: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------- helpers


def set_aside_log(fed: ChaosFederation, proc: ManagedProcess, suffix: str) -> None:
    """Keep a dead process's log under another name (a restart writes NAME.log anew)."""
    if proc.copier is not None:
        proc.copier.join(timeout=5)
    kept = proc.log_path.with_name(f"{proc.name}.{suffix}.log")
    if proc.log_path.exists():
        proc.log_path.rename(kept)
    proc.log_path = kept
    fed.supervisor.extra_logs.append(kept)


def kill_tree(proc: ManagedProcess) -> list[int]:
    """SIGKILL a process and the helpers it spawned (its ClientApp): a crash of the node.
    Each PID is signalled only while its command line is unchanged."""
    helpers = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    for pid, cmd in helpers.items():
        if cmdline(pid) == cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    proc.popen.wait(timeout=30)
    return list(helpers)


def restart_supernode(fed: ChaosFederation, name: str, suffix: str) -> ManagedProcess:
    """Start ``name``'s SuperNode again: same key, port, data path and node config."""
    set_aside_log(fed, fed.nodes[name], suffix)
    proc = start_supernode(fed.supervisor, name, fed.superlink_port, fed.node_ports[name],
                           fed.data_paths[name], fed.ca_cert, fed.keys / name,
                           node_config=NODE_CONFIG.get(name, ""))
    fed.nodes[name] = proc
    return proc


def assert_federation_whole(fed: ChaosFederation) -> None:
    """Every hospital's SuperNode running and online (what each test starts from)."""
    stopped = [n for n, p in fed.nodes.items() if not p.running()]
    assert not stopped, f"SuperNodes not running: {stopped}"
    wait_until(lambda: set(fed.node_ids.values()) <= online_node_ids(fed), 90,
               "every hospital online in `flwr supernode list`",
               [fed.superlink, *fed.nodes.values()], interval_s=1)


@dataclass
class BackgroundRun:
    """``flwr run . CONNECTION --stream`` started in the background."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    out_dir: Path
    started: float = field(default_factory=time.perf_counter)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def run_id(self) -> str | None:
        match = RUN_ID_LINE.search(self.output())
        return match.group(1) if match else None

    def rounds_logged(self) -> dict[int, float]:
        return round_seconds(self.output())

    def rows(self) -> list[dict[str, Any]]:
        run_id = self.run_id()
        path = self.out_dir / f"run-{run_id}" / "rounds.json"
        if run_id is None or not path.is_file():
            return []
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:  # rewritten atomically, but be safe
            return []


def start_run(fed: ChaosFederation, name: str, out_dir: Path, run_config: str) -> BackgroundRun:
    server_test = fed.root / "data" / "server-test.csv"
    config = f"{run_config} output-dir='{out_dir}' server-test-path='{server_test}'"
    log_path = fed.supervisor.log_dir / f"flwr-run-{name}.log"
    fed.supervisor.extra_logs.append(log_path)
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            [FLWR, "run", ".", CONNECTION, "--stream", "--run-config", config],
            cwd=REPO_ROOT, env=fed.env, stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
    return BackgroundRun(popen, log_path, out_dir)


def stop_run_client(run: BackgroundRun) -> None:
    """Stop the ``flwr run --stream`` client by PID (the run itself lives on the SuperLink)."""
    if run.popen.poll() is None:
        run.popen.terminate()
        try:
            run.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            run.popen.kill()
            run.popen.wait(timeout=15)


def finish_run(fed: ChaosFederation, run: BackgroundRun, timeout_s: float) -> str:
    """Wait for ``flwr run --stream`` to exit; the run must have completed. Returns the
    run ID."""
    try:
        wait_until(lambda: run.popen.poll() is not None, timeout_s, "flwr run to exit",
                   [fed.superlink], interval_s=1)
    finally:
        stop_run_client(run)
    assert run.popen.returncode == 0, f"flwr run exited {run.popen.returncode}:\n{run.output()}"
    run_id = run.run_id()
    assert run_id is not None, run.output()
    status = final_status(fed, run_id)
    assert status["status"] == "finished:completed", f"run {run_id}: {status}\n{run.output()}"
    return run_id


def received_count(proc: ManagedProcess) -> int:
    return proc.log_text().count(CLIENTAPP_RECEIVED)


def server_app_pids(fed: ChaosFederation) -> dict[int, bytes]:
    """The ``flwr-serverapp`` processes among this test's SuperLink's descendants."""
    return {pid: cmd for pid, cmd in descendants(fed.superlink.pid).items()
            if b"flwr-serverapp" in cmd}


def row(rows: list[dict[str, Any]], r: int) -> dict[str, Any]:
    [found] = [x for x in rows if int(x["round"]) == r]
    return found


def failures_of(r: dict[str, Any]) -> dict[str, int]:
    return {k[7:]: int(v) for k, v in r.items() if k.startswith("failed-") and v}


# ---------------------------------------------------------------- the federation


@pytest.fixture(scope="module")
def federation(chaos_supervisor: Supervisor, chaos_timings: list[str]) -> ChaosFederation:
    """Certificates, keys, data for three hospitals, a TLS SuperLink with node
    authentication and a database, the hospitals registered, their SuperNodes online."""
    sup = chaos_supervisor
    started = time.perf_counter()
    root = sup.root
    env = child_env(root / "flwr-home")
    ca_cert = generate_certificates(root / "certs", env)
    keys = generate_node_keys(root / "node-keys", HOSPITALS, env)
    link_port, *node_ports = free_ports(1 + len(HOSPITALS))
    write_connection(root / "flwr-home", link_port, ca_cert)
    data_paths = split_hospital_data(root / "data", env)
    link = start_superlink(sup, root / "certs", link_port, env)
    fed = ChaosFederation(sup, link, ca_cert, keys, link_port, [], env, data_paths,
                          chaos_timings)
    fed.node_ports = dict(zip(HOSPITALS, node_ports, strict=True))
    wait_until(lambda: health_ok(link_port, ca_cert), 60, "SuperLink /health", [link])
    registered = flwr_json_parallel(env, {
        name: ["supernode", "register", str(keys / f"{name}.pub"), "--name", name]
        for name in HOSPITALS
    })
    fed.node_ids = {name: str(value["node-id"]) for name, value in registered.items()}
    for name in HOSPITALS:
        fed.nodes[name] = start_supernode(sup, name, link_port, fed.node_ports[name],
                                          data_paths[name], ca_cert, keys / name,
                                          node_config=NODE_CONFIG.get(name, ""))
    for name, proc in fed.nodes.items():
        logged = wait_until(lambda p=proc: logged_node_id(p), 120, f"{name} to connect",
                            [proc, link])
        assert logged == fed.node_ids[name]
    assert_federation_whole(fed)
    fed.record_timing(f"chaos setup ({len(HOSPITALS)} hospitals registered and online): "
                      f"{time.perf_counter() - started:.1f}s")
    return fed


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
    assert [int(r["round"]) for r in rows] == list(range(rounds + 1)), rows
    r1, r2, r3 = row(rows, 1), row(rows, 2), row(rows, 3)
    assert (r1["accepted"], r1["failures"]) == (3, 0), r1
    # Round 2: the two others were accepted, the killed node counted as failed (no reply by
    # round-timeout, or the SuperLink's error reply once it saw the node offline).
    assert (r2["accepted"], r2["failures"]) == (2, 1), r2
    assert sum(failures_of(r2).values()) == 1 and set(failures_of(r2)) <= {"timeout",
                                                                            "unreachable"}, r2
    # Round 3: the restarted node's update was accepted again.
    assert (r3["replies"], r3["accepted"], r3["failures"]) == (3, 3, 0), r3
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


def run_popen_watch(run: BackgroundRun) -> Any:
    """A ``wait_until`` watch entry for the ``flwr run`` client (exits early = failure)."""
    class _Watch:
        name = "flwr run"
        popen = run.popen

        def running(self) -> bool:
            return run.popen.poll() is None

    return _Watch()


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
    assert [int(r["round"]) for r in rows] == list(range(rounds + 1)), rows
    r1, r2, r3 = (row(rows, r) for r in range(1, 4))
    # Round 1: the others accepted, the hung node counted as failed and benched: no reply
    # by round-timeout, or the SuperLink's error reply (counted among the replies) once it
    # listed the node offline.
    kinds = failures_of(r1)
    assert kinds in ({"timeout": 1}, {"unreachable": 1}), r1
    replies = 2 if "timeout" in kinds else 3
    assert (r1["replies"], r1["accepted"], r1["failures"]) == (replies, 2, 1), r1
    if "timeout" in kinds:
        assert r1["seconds"] >= ROUND_TIMEOUT - 1, r1
    assert r1["nodes-benched"] == 1, r1
    # Round 2: benched (though online again), left out: no wait for it.
    assert (r2["replies"], r2["accepted"], r2["failures"]) == (2, 2, 0), r2
    assert r2["nodes-benched"] == 1, r2
    assert r2["seconds"] < ROUND_TIMEOUT - 1, r2
    # Round 3: back on probation, sampled, accepted: healthy again.
    assert (r3["replies"], r3["accepted"], r3["failures"]) == (3, 3, 0), r3
    assert r3["nodes-benched"] == 0, r3
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
    try:
        run_id = wait_until(first.run_id, 120, "the first run's ID",
                            [fed.superlink, run_popen_watch(first)])
        ckpts = out / f"run-{run_id}" / "checkpoints"
        wait_until(lambda: (ckpts / "round-000002.ckpt").is_file(), 300,
                   "checkpoint round 2", [fed.superlink, run_popen_watch(first)])
        [(pid, cmd)] = wait_until(lambda: list(server_app_pids(fed).items()), 30,
                                  "the run's flwr-serverapp process")
        assert cmdline(pid) == cmd
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: cmdline(pid) != cmd, 30, "the ServerApp to die")
        killed_after = sorted(first.rounds_logged())
    finally:
        stop_run_client(first)
    flwr_json(fed.env, "stop", run_id, must_succeed=False)  # the SuperLink forgets the run
    saved = checkpoint.newest(ckpts)
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

# dp-epsilon 3.0 planned over 4 rounds (z calibrated once per run, per hospital) composes
# to ~2.2 after 2 rounds and ~2.6 after 3 at delta 1e-5 (each hospital's ~120 training rows,
# batch 32): a lifetime cap of 2.4 lets every hospital train rounds 1-2 and refuse the 3rd,
# whichever run asks for it. The resumed run plans afresh (a new Flower run, an empty
# ``context.state``), so only the hospital's own ledger can stop it.
DP_EPSILON = 3.0
DP_CAP = 2.4


def ledger_summary(fed: ChaosFederation, path: Path) -> dict[str, Any]:
    """``python -m fedapp.privacy ledger PATH --json``, as the hospital would read it."""
    result = subprocess.run([sys.executable, "-m", "fedapp.privacy", "ledger", str(path),
                             "--json"], cwd=REPO_ROOT, env=fed.env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, f"ledger {path}: {result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.mark.timeout(600, method="signal")
def test_a_resumed_dp_run_keeps_every_hospital_within_its_own_cap(
    federation: ChaosFederation,
) -> None:
    fed = federation
    assert_federation_whole(fed)
    ledgers = {name: fed.root / "ledgers" / f"{name}.json" for name in HOSPITALS}

    # Restart the three SuperNodes with a ledger and a lifetime cap (same keys, ports, data)
    # once the SuperLink lists them offline (it refuses to reactivate an online node ID).
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
    assert_federation_whole(fed)

    rounds = 4
    out = fed.root / "out-dp-resume"
    config = (f"{BASE_CONFIG} num-server-rounds={rounds} min-available-nodes=3 wait-timeout=90 "
              f"dp='local' dp-epsilon={DP_EPSILON}")
    first = start_run(fed, "dp-crashed", out, config)
    try:
        first_id = wait_until(first.run_id, 120, "the first DP run's ID",
                              [fed.superlink, run_popen_watch(first)])
        ckpts = out / f"run-{first_id}" / "checkpoints"
        wait_until(lambda: (ckpts / "round-000002.ckpt").is_file(), 300,
                   "checkpoint round 2", [fed.superlink, run_popen_watch(first)], interval_s=0.2)
        [(pid, cmd)] = wait_until(lambda: list(server_app_pids(fed).items()), 30,
                                  "the DP run's flwr-serverapp process")
        assert cmdline(pid) == cmd
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: cmdline(pid) != cmd, 30, "the ServerApp to die")
    finally:
        stop_run_client(first)
    flwr_json(fed.env, "stop", first_id, must_succeed=False)

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

    # Each hospital, on its own: its ledger never went past its cap, whatever the server did.
    seen = {}
    for name, path in ledgers.items():
        doc = ledger_summary(fed, path)
        [ident] = doc["datasets"]
        assert ident["cap"] == DP_CAP and ident["delta"] == 1e-5, ident
        assert ident["total-epsilon"] <= DP_CAP, (name, ident)
        assert [(r["run"], r["rounds"], r["pending"]) for r in ident["runs"]] == [
            (int(first_id), 2, 0)], (name, ident)  # nothing charged to the resumed run
        assert ident["total-epsilon"] > 2.0, (name, ident)  # rounds 1-2 were charged
        seen[name] = ident["total-epsilon"]
    refused_logs = {name: fed.nodes[name].log_text().count("DP lifetime budget")
                    for name in HOSPITALS}
    fed.record_timing(
        f"DP resume (dp-epsilon {DP_EPSILON:g}/run, dp-budget {DP_CAP:g}): lifetime epsilon "
        + ", ".join(f"{n}={e:.3f}" for n, e in seen.items())
        + f"; rounds 3-4 refused by 3 each (failed-dp-refused); refusal lines in node logs "
        f"{refused_logs}; resume submitted -> resume line {resumed_at - second.started:.1f}s, "
        f"-> first new round (configure_train) {new_round_at - second.started:.1f}s; "
        f"resumed run done {time.perf_counter() - second.started:.1f}s after submission")
