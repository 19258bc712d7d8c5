"""The chaos tier's federation and runs, built from the deployment tier's parts
(``tests/deployment/tls_*.py``): three registered hospitals whose SuperNodes can be killed,
hung and restarted, ``flwr run`` in the background, the rows of its ``rounds.json``, the
run's ServerApp process, and a hospital's privacy ledger.

``start_chaos_federation`` is the body of the package fixture in ``tests/chaos/conftest.py``.
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

from tests.deployment.tls_cli import (
    BIN_PATH,
    CONNECTION,
    FLWR,
    REPO_ROOT,
    child_env,
    flwr_json_parallel,
    free_ports,
    wait_until,
)
from tests.deployment.tls_federation import (
    NODE_CONFIG,
    Federation,
    generate_certificates,
    generate_node_keys,
    health_ok,
    logged_node_id,
    online_node_ids,
    split_hospital_data,
    start_superlink,
    start_supernode,
    write_connection,
)
from tests.deployment.tls_runs import RUN_ID_LINE, final_status, round_seconds
from tests.flwr_cli import cmdline, descendants

if TYPE_CHECKING:  # the Supervisor comes from the chaos conftest's fixture
    from tests.deployment.conftest import ManagedProcess, Supervisor

HOSPITALS = [f"hospital-{h}" for h in range(3)]
CHAOS_MARKS = [  # every chaos module's pytestmark
    pytest.mark.chaos,
    # Upper bounds that catch hangs, not slowness (this machine's cores are shared).
    pytest.mark.timeout(420, method="signal"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH"),
    pytest.mark.skipif(
        shutil.which("flower-superlink", path=BIN_PATH) is None,
        reason="flower-superlink is not on PATH",
    ),
]
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
# dp-epsilon 3.0 planned over 4 rounds (z calibrated once per run, per hospital) composes
# to ~2.2 after 2 rounds and ~2.6 after 3 at delta 1e-5 (each hospital's ~120 training rows,
# batch 32): a lifetime cap of 2.4 lets every hospital train rounds 1-2 and refuse the 3rd,
# whichever run asks for it. The resumed run plans afresh (a new Flower run, an empty
# ``context.state``), so only the hospital's own ledger can stop it.
DP_EPSILON = 3.0
DP_CAP = 2.4


@dataclass
class ChaosFederation(Federation):
    """The deployment tier's ``Federation``, plus each SuperNode's port (a restarted node
    gets its own again)."""

    node_ports: dict[str, int] = field(default_factory=dict)


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


def run_popen_watch(run: BackgroundRun) -> Any:
    """A ``wait_until`` watch entry for the ``flwr run`` client (exits early = failure)."""
    class _Watch:
        name = "flwr run"
        popen = run.popen

        def running(self) -> bool:
            return run.popen.poll() is None

    return _Watch()


def ledger_summary(fed: ChaosFederation, path: Path) -> dict[str, Any]:
    """``python -m fedapp.privacy ledger PATH --json``, as the hospital would read it."""
    result = subprocess.run([sys.executable, "-m", "fedapp.privacy", "ledger", str(path),
                             "--json"], cwd=REPO_ROOT, env=fed.env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, f"ledger {path}: {result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def start_chaos_federation(chaos_supervisor: Supervisor,
                           chaos_timings: list[str]) -> ChaosFederation:
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
