"""A real TLS deployment on loopback: one SuperLink, two hospital SuperNodes, ``flwr run``.

The module fixture makes a CA and a SuperLink certificate with
``certificates/generate.sh``, writes one CSV per hospital, starts
``flower-superlink`` with TLS and two ``flower-supernode`` processes that trust
the CA, and waits until both nodes are online. The tests then check that

* a SuperNode that trusts a different CA is refused (TLS verification fails,
  it exits, and it never shows up as a node), and
* ``flwr run`` over TLS completes a 2-round run whose ServerApp writes the
  model and per-round metrics, with the global model improving.

Timings (setup, run, per round) are printed in pytest's terminal summary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:  # the fixtures come from conftest.py; never import it at run time
    from tests.deployment.conftest import ManagedProcess, Supervisor

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATE_SH = REPO_ROOT / "certificates" / "generate.sh"
# The venv running the tests holds the Flower executables; Flower itself spawns
# helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name from PATH.
BIN_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
FLWR = shutil.which("flwr", path=BIN_PATH) or "flwr"
CONNECTION = "tls-loopback"
HOSPITALS = 2
ROUNDS = 2
RUN_CONFIG = (
    f"num-server-rounds={ROUNDS} dataset='breast-cancer' min-train-nodes={HOSPITALS} "
    f"min-available-nodes={HOSPITALS} fraction-evaluate=1.0 aggregator='geomed'"
)
ROUND_LINE = re.compile(r"\[fedapp\] round (\d+)/\d+: .*\| ([0-9.]+)s\s*$")
NODE_ID_LINE = re.compile(r"SuperNode ID: (\d+)")
RUN_ID_LINE = re.compile(r"Successfully started run (\d+)")

pytestmark = [
    pytest.mark.deployment,
    pytest.mark.timeout(360, method="signal"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH"),
    pytest.mark.skipif(
        shutil.which("flower-superlink", path=BIN_PATH) is None,
        reason="flower-superlink is not on PATH",
    ),
]


@dataclass
class Federation:
    """A running SuperLink with its trusted SuperNodes, and what the tests need to use it."""

    supervisor: Supervisor
    ca_cert: Path
    superlink_port: int
    spare_port: int
    env: dict[str, str]
    data_paths: list[Path]
    timings: list[str]
    node_ids: set[str] = field(default_factory=set)

    @property
    def root(self) -> Path:
        return self.supervisor.root

    def record_timing(self, line: str) -> None:
        self.timings.append(line)
        print(line)


# ---------------------------------------------------------------- small helpers


def wait_until(condition: Callable[[], T | None], timeout_s: float, what: str,
               watch: Sequence[ManagedProcess] = (), interval_s: float = 0.5) -> T:
    """Poll ``condition`` until it returns a truthy value; fail if a watched process
    exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        for proc in watch:
            assert proc.running(), (
                f"{proc.name} exited with code {proc.popen.returncode} while waiting for {what}"
            )
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(interval_s)


def run_checked(argv: Sequence[str], env: dict[str, str], timeout_s: float,
                cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """Run a short command; fail with its output if it exits non-zero."""
    result = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout_s, check=False)
    assert result.returncode == 0, (
        f"{' '.join(argv)} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def parse_json_output(text: str) -> dict[str, Any]:
    """The JSON object a ``flwr ... --format json`` command printed (skipping any banner)."""
    start = text.find("{")
    assert start >= 0, f"no JSON in output:\n{text}"
    value, _ = json.JSONDecoder().raw_decode(text[start:])
    return value


def flwr_json(fed: Federation, *args: str) -> dict[str, Any]:
    """Run ``flwr ARGS CONNECTION --format json`` against the test's SuperLink."""
    result = run_checked([FLWR, *args, CONNECTION, "--format", "json"], fed.env, 60)
    return parse_json_output(result.stdout)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def child_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=BIN_PATH,
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONUNBUFFERED="1",
    )
    return env


# ------------------------------------------------------------- federation setup


def generate_certificates(out: Path, env: dict[str, str]) -> Path:
    """Run certificates/generate.sh into ``out``; returns the CA certificate."""
    run_checked(["bash", str(GENERATE_SH), "--out", str(out)], env, 120)
    for name in ("ca.crt", "ca.key", "server.pem", "server.key"):
        assert (out / name).is_file(), f"generate.sh did not write {name}"
    return out / "ca.crt"


def write_connection(flwr_home: Path, port: int, ca_cert: Path) -> None:
    """A ``[superlink.NAME]`` entry in ``$FLWR_HOME/config.toml`` for the flwr CLI."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f"[superlink.{CONNECTION}]\n"
        f"address = {json.dumps(f'127.0.0.1:{port}')}\n"
        f"root-certificates = {json.dumps(str(ca_cert))}\n"
    )


def split_hospital_data(out: Path, env: dict[str, str]) -> list[Path]:
    run_checked([sys.executable, "-m", "fedapp.data", "split", "--dataset", "breast-cancer",
                 "--hospitals", str(HOSPITALS), "--out", str(out)], env, 120)
    paths = [out / f"hospital-{h}.csv" for h in range(HOSPITALS)]
    assert all(p.is_file() for p in paths), f"missing hospital files in {out}"
    return paths


def start_superlink(sup: Supervisor, certs: Path, port: int,
                    env: dict[str, str]) -> ManagedProcess:
    return sup.start("superlink", [
        "flower-superlink",
        "--ssl-ca-certfile", str(certs / "ca.crt"),
        "--ssl-certfile", str(certs / "server.pem"),
        "--ssl-keyfile", str(certs / "server.key"),
        "--host", "127.0.0.1", "--port", str(port),
        "--database", str(sup.root / "link.db"),
        "--disable-runtime-dependency-installation",
    ], env)


def health_ok(port: int, ca_cert: Path) -> bool:
    """True when the SuperLink answers 200 on /health over TLS verified with ``ca_cert``."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=context,
                                    timeout=2) as response:
            return response.status == 200
    except OSError:  # refused while starting; URLError and ssl errors are OSErrors
        return False


def start_supernode(sup: Supervisor, name: str, ca_cert: Path, superlink_port: int,
                    port: int, data_path: Path, extra: Sequence[str] = ()) -> ManagedProcess:
    """A hospital's SuperNode with its own FLWR_HOME (where it installs the app)."""
    env = child_env(sup.root / f"home-{name}")
    return sup.start(name, [
        "flower-supernode",
        "--root-certificates", str(ca_cert),
        "--superlink", f"127.0.0.1:{superlink_port}",
        "--port", str(port),
        "--node-config", f"data-path='{data_path}'",
        *extra,
    ], env)


def logged_node_id(proc: ManagedProcess) -> str | None:
    match = NODE_ID_LINE.search(proc.log_text())
    return match.group(1) if match else None


def online_node_ids(fed: Federation) -> set[str]:
    nodes = flwr_json(fed, "supernode", "list")["nodes"]
    return {str(n["node-id"]) for n in nodes if n["status"] == "online"}


@pytest.fixture(scope="module")
def federation(supervisor: Supervisor, deployment_timings: list[str]) -> Federation:
    """Certificates, hospital data, a TLS SuperLink and its SuperNodes, all online.

    The processes belong to ``supervisor``, which stops them after the module."""
    started = time.perf_counter()
    root = supervisor.root
    env = child_env(root / "flwr-home")
    ca_cert = generate_certificates(root / "certs", env)
    link_port, spare_port, *node_ports = free_ports(2 + HOSPITALS)
    write_connection(root / "flwr-home", link_port, ca_cert)
    fed = Federation(supervisor, ca_cert, link_port, spare_port, env,
                     split_hospital_data(root / "data", env), deployment_timings)
    link = start_superlink(supervisor, root / "certs", link_port, env)
    wait_until(lambda: health_ok(link_port, ca_cert), 60, "SuperLink /health", [link])
    nodes = [
        start_supernode(supervisor, f"hospital-{h}", ca_cert, link_port, node_ports[h],
                        fed.data_paths[h])
        for h in range(HOSPITALS)
    ]
    fed.node_ids = {
        wait_until(lambda n=n: logged_node_id(n), 90, f"{n.name} to connect", [n, link])
        for n in nodes
    }
    wait_until(lambda: fed.node_ids <= online_node_ids(fed), 60,
               "both SuperNodes online in `flwr supernode list`", [link, *nodes])
    fed.record_timing(f"setup (certs, data, SuperLink, {HOSPITALS} SuperNodes online): "
                      f"{time.perf_counter() - started:.1f}s")
    return fed


# ------------------------------------------------------------------------ tests


def test_supernode_trusting_another_ca_is_refused(federation: Federation) -> None:
    fed = federation
    other_ca = generate_certificates(fed.root / "other-certs", fed.env)
    started = time.perf_counter()
    intruder = start_supernode(
        fed.supervisor, "untrusted-node", other_ca, fed.superlink_port, fed.spare_port,
        fed.data_paths[0], extra=["--max-retries", "2", "--max-wait-time", "30"],
    )
    wait_until(lambda: not intruder.running(), 60, "the untrusted SuperNode to give up")
    log = intruder.log_text()
    assert intruder.popen.returncode != 0, f"untrusted SuperNode exited 0:\n{log}"
    assert "CERTIFICATE_VERIFY_FAILED" in log, f"no TLS verification error in:\n{log}"
    assert logged_node_id(intruder) is None, f"untrusted SuperNode got a node ID:\n{log}"
    assert online_node_ids(fed) == fed.node_ids
    fed.record_timing(
        f"untrusted SuperNode refused and exited in {time.perf_counter() - started:.1f}s"
    )


def flwr_run(fed: Federation, output_dir: Path, log_path: Path) -> str:
    """``flwr run . CONNECTION --stream`` from the repo root; returns its output."""
    run_config = f"{RUN_CONFIG} output-dir='{output_dir}'"
    fed.supervisor.extra_logs.append(log_path)
    with log_path.open("w") as log_file:
        result = subprocess.run(
            [FLWR, "run", ".", CONNECTION, "--stream", "--run-config", run_config],
            cwd=REPO_ROOT, env=fed.env, stdout=log_file, stderr=subprocess.STDOUT,
            timeout=240, check=False,
        )
    output = log_path.read_text(errors="replace")
    assert result.returncode == 0, f"flwr run exited {result.returncode}:\n{output}"
    return output


def find_run_id(fed: Federation, output: str) -> str:
    """The run ID `flwr run` printed, else the only run the SuperLink knows."""
    if match := RUN_ID_LINE.search(output):
        return match.group(1)
    runs = flwr_json(fed, "list")["runs"]
    assert len(runs) == 1, f"cannot tell the run ID; runs: {runs}\nflwr run output:\n{output}"
    return str(runs[0]["run-id"])


def final_status(fed: Federation, run_id: str) -> dict[str, Any]:
    """Poll ``flwr list --run-id`` until the run is finished; returns its JSON row."""
    def finished() -> dict[str, Any] | None:
        run = flwr_json(fed, "list", "--run-id", run_id)["runs"][0]
        return run if str(run["status"]).startswith("finished") else None

    return wait_until(finished, 60, f"run {run_id} to finish", interval_s=2)


def round_seconds(output: str) -> dict[int, float]:
    """Per-round wall time from the ServerApp's ``[fedapp] round r/R: ... | 12.3s`` lines."""
    times = {}
    for line in output.splitlines():
        if match := ROUND_LINE.search(line):
            times[int(match.group(1))] = float(match.group(2))
    return times


def test_flwr_run_over_tls_completes(federation: Federation) -> None:
    fed = federation
    started = time.perf_counter()
    output = flwr_run(fed, fed.root / "out", fed.root / "logs" / "flwr-run.log")
    run_id = find_run_id(fed, output)
    run = final_status(fed, run_id)
    assert run["status"] == "finished:completed", f"run {run_id}: {run}"
    wall = time.perf_counter() - started

    out_dir = fed.root / "out" / f"run-{run_id}"
    model, rounds_file = out_dir / "model.pt", out_dir / "rounds.json"
    assert model.is_file() and model.stat().st_size > 0, f"no model in {out_dir}"
    assert rounds_file.is_file(), f"no rounds.json in {out_dir}"
    rows = json.loads(rounds_file.read_text())
    assert [int(r["round"]) for r in rows] == list(range(ROUNDS + 1)), rows
    for row in rows[1:]:
        assert row["accepted"] == HOSPITALS and row["failures"] == 0, row
    first, last = rows[0]["server-accuracy"], rows[-1]["server-accuracy"]
    assert last > max(first, 0.85), f"server accuracy round 0 {first}, last {last}"

    per_round = round_seconds(output)
    fed.record_timing(f"flwr run ({HOSPITALS} hospitals, {ROUNDS} rounds, TLS): {wall:.1f}s "
                      f"wall; server accuracy {first:.3f} -> {last:.3f}")
    fed.record_timing("per-round time from the ServerApp log: " + ", ".join(
        f"round {r}: {s:.1f}s" for r, s in sorted(per_round.items())))
    assert sorted(per_round) == list(range(1, ROUNDS + 1)), f"round lines missing:\n{output}"
