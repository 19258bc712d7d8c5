"""A real deployment on loopback: a TLS SuperLink with SuperNode authentication, four
registered hospital SuperNodes (one with a broken data file), ``flwr run``, and intruders.

The module fixture makes a CA and a SuperLink certificate with
``certificates/generate.sh`` and one ECDSA key pair per hospital with
``certificates/generate-node-keys.sh``, writes one CSV per hospital with
``python -m fedapp.data split`` (hospital-1's export has its columns in another order and a
``patient_id`` column, dropped by its node config's ``ignore-columns``), a broken copy (a
feature column missing, a patient's MRN and name in a feature cell, a name as a label) and
the server's test file, starts ``flower-superlink`` with TLS and
``--enable-supernode-auth``, registers each hospital's public key with ``flwr supernode
register`` and starts one ``flower-supernode`` per hospital with its private key and its
own ``data-path``.
The tests then check, in file order, that

* SuperNodes that do not trust the CA, hold an unregistered key, hold no key, or
  speak plain text (``--insecure``) are refused: each exits non-zero with the
  expected error, the SuperLink logs the refusal where it sees one, and
  ``flwr supernode list`` still shows exactly the registered hospitals;
* ``flwr run`` completes a 2-round run with the median aggregator: three
  hospitals' updates are accepted each round, the broken hospital's ClientApp
  fails with a message naming its file, the columns and the row numbers (the server
  counts the failure, the SuperNode survives), the global model reaches a good accuracy,
  the hospitals cached their parsed files for later messages, and no identifiable string
  from a hospital's file reached the server: not its log, ``rounds.json``, the MLflow
  store, the SuperLink's log or its database;
* an unregistered hospital (``flwr supernode unregister``) is cut off: its
  SuperNode exits, the SuperLink lists it as unregistered, and its key cannot be
  registered again;
* with that hospital gone, a run asking for every member waits ``wait-timeout`` and then
  trains with the hospitals online (Flower alone would wait for ever).

Timings (setup, refusals, run, per round, per message, ClientApp cold start) are
printed in pytest's terminal summary. Nothing here waits on a bare sleep: every
wait polls an observable condition under a timeout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import statistics
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
NODE_KEYS_SH = REPO_ROOT / "certificates" / "generate-node-keys.sh"
# The venv running the tests holds the Flower executables; Flower itself spawns
# helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name from PATH.
BIN_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
FLWR = shutil.which("flwr", path=BIN_PATH) or "flwr"
CONNECTION = "tls-loopback"
HOSPITALS = 3  # honest hospitals, hospital-0 .. hospital-2
BROKEN = "hospital-broken"  # a registered hospital whose file lacks a feature column
REORDERED = "hospital-1"  # its export: other column order, plus an id column it ignores
NODE_CONFIG = {REORDERED: "ignore-columns='patient_id'"}
# Identifiable strings in the hospitals' files: none may reach the server. Assembled at run
# time, so that no file of the app (the FAB that `flwr run` ships and the SuperLink
# stores) holds them.
MRN_CELL = " ".join(["MRN-" + "004512", "Jane", "Doe"])  # in a feature column of BROKEN
LABEL_NAME = " ".join(["Maria", "Example" + "-Patient"])  # in the label column of BROKEN
PATIENT_ID = "PATIENT-" + "ID-"  # prefix of REORDERED's patient_id values
IDENTIFIABLE = [MRN_CELL, "MRN-" + "004512", " ".join(["Jane", "Doe"]), LABEL_NAME,
                PATIENT_ID]
BROKEN_REASON = (  # the first line of its error after the path: names, never values
    f"{BROKEN}.csv' cannot be used: missing column 'mean area'; column 'mean radius': not a "
    "number in 1 row (data row 5); label column 'label': not an integer in 0..1 in 1 row "
    "(data row 7)")
MEMBERS = [f"hospital-{h}" for h in range(HOSPITALS)] + [BROKEN]
INTRUDER_KEY = "intruder"  # a well-formed key pair that is never registered
REMOVED = "hospital-2"  # unregistered by the last test
ROUNDS = 2
RUN_CONFIG = (
    f"num-server-rounds={ROUNDS} dataset='breast-cancer' min-train-nodes={HOSPITALS} "
    f"min-available-nodes={len(MEMBERS)} fraction-evaluate=0.0 aggregator='median'"
)  # no client-side evaluation: each message is a fresh process, and the server evaluates
REFUSAL_RETRIES = ["--max-retries", "2", "--max-wait-time", "30"]
ROUND_LINE = re.compile(r"\[fedapp\] round (\d+)/\d+: .*\| ([0-9.]+)s\s*$")
NODE_ID_LINE = re.compile(r"SuperNode ID: (\d+)")
RUN_ID_LINE = re.compile(r"Successfully started run (\d+)")
COLD_START_LINE = re.compile(r"\[fedapp\] cold start: (\w+) handler entered ([0-9.]+)s after "
                             r"process start; local data loaded in ([0-9.]+)s")
HANDLER_LINE = re.compile(r"\[fedapp\] cold start: train handler returned at [0-9.]+ \(epoch\) "
                          r"after ([0-9.]+)s")
MESSAGE_LINE = re.compile(r"(Received successfully|Sending: (\w+) message)")

pytestmark = [
    pytest.mark.deployment,
    # Generous upper bounds: they catch hangs, not slowness (this machine's cores are shared).
    pytest.mark.timeout(600, method="signal"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH"),
    pytest.mark.skipif(
        shutil.which("flower-superlink", path=BIN_PATH) is None,
        reason="flower-superlink is not on PATH",
    ),
]


@dataclass
class Federation:
    """A running SuperLink with its registered SuperNodes, and what the tests need."""

    supervisor: Supervisor
    superlink: ManagedProcess
    ca_cert: Path
    keys: Path
    superlink_port: int
    spare_ports: list[int]
    env: dict[str, str]
    data_paths: dict[str, Path]
    timings: list[str]
    node_ids: dict[str, str] = field(default_factory=dict)  # hospital -> registered ID
    nodes: dict[str, ManagedProcess] = field(default_factory=dict)
    listed_after_intruders: dict[str, str] = field(default_factory=dict)

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


def flwr_json(env: dict[str, str], *args: str, must_succeed: bool = True) -> dict[str, Any]:
    """Run ``flwr ARGS CONNECTION --format json``. It exits 0 even when the SuperLink
    refused the request, so ``success`` in its JSON is checked instead."""
    result = run_checked([FLWR, *args, CONNECTION, "--format", "json"], env, 60)
    value = parse_json_output(result.stdout)
    if must_succeed:
        assert value.get("success", True), f"flwr {' '.join(args)} failed: {value}"
    return value


def flwr_json_parallel(env: dict[str, str], calls: dict[str, list[str]]) -> dict[str, Any]:
    """Several ``flwr ... --format json`` calls at once (each CLI start costs seconds)."""
    procs = {
        key: subprocess.Popen([FLWR, *args, CONNECTION, "--format", "json"], cwd=REPO_ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for key, args in calls.items()
    }
    results = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"flwr {calls[key]} exited {proc.returncode}:\n{out}\n{err}"
        value = parse_json_output(out)
        assert value.get("success"), f"flwr {calls[key]} failed: {value}"
        results[key] = value
    return results


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
        FLWR_TELEMETRY_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    env.pop("MLFLOW_TRACKING_URI", None)  # the run's MLflow store: under its output-dir
    return env


# ------------------------------------------------------------- federation setup


def generate_certificates(out: Path, env: dict[str, str]) -> Path:
    """Run certificates/generate.sh into ``out``; returns the CA certificate."""
    run_checked(["bash", str(GENERATE_SH), "--out", str(out)], env, 120)
    for name in ("ca.crt", "ca.key", "server.pem", "server.key"):
        assert (out / name).is_file(), f"generate.sh did not write {name}"
    return out / "ca.crt"


def generate_node_keys(out: Path, names: Sequence[str], env: dict[str, str]) -> Path:
    """Run certificates/generate-node-keys.sh; checks each private key is private."""
    run_checked(["bash", str(NODE_KEYS_SH), "--out", str(out), *names], env, 60)
    for name in names:
        assert (out / f"{name}.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
        assert (out / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"
    return out


def write_connection(flwr_home: Path, port: int, ca_cert: Path) -> None:
    """A ``[superlink.NAME]`` entry in ``$FLWR_HOME/config.toml`` for the flwr CLI."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f"[superlink.{CONNECTION}]\n"
        f"address = {json.dumps(f'127.0.0.1:{port}')}\n"
        f"root-certificates = {json.dumps(str(ca_cert))}\n"
    )


def split_hospital_data(out: Path, env: dict[str, str]) -> dict[str, Path]:
    """One CSV per honest hospital (hospital-1's as a messy export), a broken copy of
    hospital-0's, and the server's test file (the held-out rows no hospital has)."""
    import pandas as pd

    from fedapp.data.builtin import load_raw, train_test_indices

    run_checked([sys.executable, "-m", "fedapp.data", "split", "--dataset", "breast-cancer",
                 "--hospitals", str(HOSPITALS), "--out", str(out)], env, 120)
    paths = {f"hospital-{h}": out / f"hospital-{h}.csv" for h in range(HOSPITALS)}
    assert all(p.is_file() for p in paths.values()), f"missing hospital files in {out}"

    export = pd.read_csv(paths[REORDERED])
    export = export[export.columns[::-1]]  # matched by name: the order does not matter
    export.insert(0, "patient_id", [f"{PATIENT_ID}{i:05d}" for i in range(len(export))])
    paths[REORDERED] = out / f"{REORDERED}-export.csv"
    export.to_csv(paths[REORDERED], index=False)

    broken = pd.read_csv(paths["hospital-0"]).drop(columns=["mean area"])
    broken = broken.astype({"mean radius": object, "label": object})
    broken.loc[4, "mean radius"] = MRN_CELL  # data row 5
    broken.loc[6, "label"] = LABEL_NAME  # data row 7
    paths[BROKEN] = out / f"{BROKEN}.csv"
    broken.to_csv(paths[BROKEN], index=False)

    x, y, names = load_raw("breast-cancer")
    _, test = train_test_indices("breast-cancer", 0.2, 42)  # split's defaults
    server_test = pd.DataFrame(x[test], columns=names).assign(label=y[test])
    server_test.to_csv(out / "server-test.csv", index=False)
    return paths


def start_superlink(sup: Supervisor, certs: Path, port: int,
                    env: dict[str, str]) -> ManagedProcess:
    return sup.start("superlink", [
        "flower-superlink",
        "--ssl-ca-certfile", str(certs / "ca.crt"),
        "--ssl-certfile", str(certs / "server.pem"),
        "--ssl-keyfile", str(certs / "server.key"),
        "--enable-supernode-auth",
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


def start_supernode(sup: Supervisor, name: str, superlink_port: int, port: int,
                    data_path: Path, ca_cert: Path | None, key: Path | None,
                    extra: Sequence[str] = (), node_config: str = "") -> ManagedProcess:
    """A hospital's SuperNode with its own FLWR_HOME (where it installs the app) and its
    own data cache; it trusts ``ca_cert`` (plain text if None) and signs with ``key``."""
    env = child_env(sup.root / f"home-{name}")
    # One torch thread per ClientApp: four SuperNodes share this machine's few cores,
    # and the tiny MLP gains nothing from intra-op threads.
    env.update(FEDAPP_DATA_CACHE=str(sup.root / f"cache-{name}"), FEDAPP_COLD_START_LOG="1",
               OMP_NUM_THREADS="1")
    tls = ["--root-certificates", str(ca_cert)] if ca_cert else ["--insecure"]
    auth = ["--auth-supernode-private-key", str(key)] if key else []
    return sup.start(name, [
        "flower-supernode", *tls, *auth,
        "--superlink", f"127.0.0.1:{superlink_port}",
        "--port", str(port),
        "--node-config", f"data-path='{data_path}' {node_config}".strip(),
        *extra,
    ], env)


def logged_node_id(proc: ManagedProcess) -> str | None:
    match = NODE_ID_LINE.search(proc.log_text())
    return match.group(1) if match else None


def listed_nodes(fed: Federation) -> dict[str, str]:
    """``flwr supernode list``: node ID -> status (registered, online, offline, ...)."""
    nodes = flwr_json(fed.env, "supernode", "list")["nodes"]
    return {str(n["node-id"]): str(n["status"]) for n in nodes}


def online_node_ids(fed: Federation) -> set[str]:
    return {node for node, status in listed_nodes(fed).items() if status == "online"}


@pytest.fixture(scope="module")
def federation(supervisor: Supervisor, deployment_timings: list[str]) -> Federation:
    """Certificates, keys, hospital data, a TLS SuperLink with node authentication and
    its registered SuperNodes, all online.

    The processes belong to ``supervisor``, which stops them after the module."""
    started = time.perf_counter()
    root = supervisor.root
    env = child_env(root / "flwr-home")
    ca_cert = generate_certificates(root / "certs", env)
    keys = generate_node_keys(root / "node-keys", [*MEMBERS, INTRUDER_KEY], env)
    link_port, *ports = free_ports(1 + len(MEMBERS) + 4)
    node_ports, spare_ports = ports[:len(MEMBERS)], ports[len(MEMBERS):]
    write_connection(root / "flwr-home", link_port, ca_cert)
    data_paths = split_hospital_data(root / "data", env)
    link = start_superlink(supervisor, root / "certs", link_port, env)
    fed = Federation(supervisor, link, ca_cert, keys, link_port, spare_ports, env, data_paths,
                     deployment_timings)
    wait_until(lambda: health_ok(link_port, ca_cert), 60, "SuperLink /health", [link])

    registered = flwr_json_parallel(env, {
        name: ["supernode", "register", str(keys / f"{name}.pub"), "--name", name]
        for name in MEMBERS
    })
    fed.node_ids = {name: str(value["node-id"]) for name, value in registered.items()}

    for name, port in zip(MEMBERS, node_ports, strict=True):
        fed.nodes[name] = start_supernode(supervisor, name, link_port, port, data_paths[name],
                                          ca_cert, keys / name,
                                          node_config=NODE_CONFIG.get(name, ""))
    for name, proc in fed.nodes.items():
        logged = wait_until(lambda p=proc: logged_node_id(p), 120, f"{name} to connect",
                            [proc, link])
        assert logged == fed.node_ids[name], f"{name} got ID {logged}, registered as " \
            f"{fed.node_ids[name]}"
    wait_until(lambda: set(fed.node_ids.values()) <= online_node_ids(fed), 60,
               "every registered SuperNode online in `flwr supernode list`",
               [link, *fed.nodes.values()])
    fed.record_timing(f"setup (certs, keys, data, SuperLink, {len(MEMBERS)} SuperNodes "
                      f"registered and online): {time.perf_counter() - started:.1f}s")
    return fed


# ------------------------------------------------------------------- intruders


def self_made_ca(out: Path, env: dict[str, str]) -> Path:
    """A CA certificate an intruder made for itself (EC, so it costs milliseconds)."""
    out.mkdir()
    run_checked(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=intruder CA",
                 "-keyout", str(out / "ca.key"), "-out", str(out / "ca.crt")], env, 60)
    return out / "ca.crt"


@pytest.fixture(scope="module")
def intruders(federation: Federation) -> dict[str, ManagedProcess]:
    """Four SuperNodes the SuperLink must refuse, started together (each gives up after
    a bounded number of retries)."""
    fed = federation
    other_ca = self_made_ca(fed.root / "other-ca", fed.env)
    data = fed.data_paths["hospital-0"]
    link, ports, sup = fed.superlink_port, fed.spare_ports, fed.supervisor
    procs = {
        "untrusted-ca": start_supernode(sup, "untrusted-ca", link, ports[0], data, other_ca,
                                        None, REFUSAL_RETRIES),
        "unregistered-key": start_supernode(sup, "unregistered-key", link, ports[1], data,
                                            fed.ca_cert, fed.keys / INTRUDER_KEY,
                                            REFUSAL_RETRIES),
        "no-key": start_supernode(sup, "no-key", link, ports[2], data, fed.ca_cert, None,
                                  REFUSAL_RETRIES),
        "plain-text": start_supernode(sup, "plain-text", link, ports[3], data, None, None,
                                      REFUSAL_RETRIES),
    }
    started = time.perf_counter()
    for name, proc in procs.items():
        wait_until(lambda p=proc: not p.running(), 120, f"the {name} SuperNode to give up")
    fed.record_timing("4 intruder SuperNodes refused and exited in "
                      f"{time.perf_counter() - started:.1f}s (started together)")
    fed.listed_after_intruders = listed_nodes(fed)
    return procs


def assert_refused(fed: Federation, proc: ManagedProcess, expected: str) -> str:
    """The intruder exited non-zero with ``expected`` in its log and got no node ID, and
    after all intruders gave up the SuperLink listed exactly the registered hospitals,
    all online."""
    log = proc.log_text()
    assert proc.popen.returncode not in (0, None), f"{proc.name} exited 0:\n{log}"
    assert expected in log, f"{expected!r} not in the log of {proc.name}:\n{log}"
    assert logged_node_id(proc) is None, f"{proc.name} got a node ID:\n{log}"
    assert fed.listed_after_intruders == dict.fromkeys(fed.node_ids.values(), "online")
    return log


def test_supernode_trusting_another_ca_is_refused(
    federation: Federation, intruders: dict[str, ManagedProcess]
) -> None:
    assert_refused(federation, intruders["untrusted-ca"], "CERTIFICATE_VERIFY_FAILED")


def test_supernode_with_an_unregistered_key_is_refused(
    federation: Federation, intruders: dict[str, ManagedProcess]
) -> None:
    from cryptography.hazmat.primitives import serialization

    assert_refused(federation, intruders["unregistered-key"], "[code: 2004]")
    # The SuperLink saw this very key and refused to activate it.
    public = serialization.load_ssh_public_key(
        (federation.keys / f"{INTRUDER_KEY}.pub").read_bytes())
    pem = public.public_bytes(serialization.Encoding.PEM,
                              serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    body = pem.splitlines()[1]  # first base64 line of the key, as it appears in the log
    refusals = [line for line in federation.superlink.log_text().splitlines()
                if "ApiError:2004" in line]
    assert any(body in line for line in refusals), f"no 2004 refusal of the key: {refusals}"


def test_supernode_without_a_key_is_refused(
    federation: Federation, intruders: dict[str, ManagedProcess]
) -> None:
    assert_refused(federation, intruders["no-key"], "[code: 2001]")
    assert "ApiError:2001" in federation.superlink.log_text()


def test_plain_text_supernode_is_refused(
    federation: Federation, intruders: dict[str, ManagedProcess]
) -> None:
    log = assert_refused(federation, intruders["plain-text"], "Exit Code: 305")
    assert "Server disconnected without sending a response" in log, log


# ----------------------------------------------------------------------- the run


def flwr_run(fed: Federation, output_dir: Path, log_path: Path,
             run_config: str = RUN_CONFIG) -> str:
    """``flwr run . CONNECTION --stream`` from the repo root; returns its output."""
    server_test = fed.root / "data" / "server-test.csv"
    run_config = f"{run_config} output-dir='{output_dir}' server-test-path='{server_test}'"
    fed.supervisor.extra_logs.append(log_path)
    with log_path.open("w") as log_file:
        result = subprocess.run(
            [FLWR, "run", ".", CONNECTION, "--stream", "--run-config", run_config],
            cwd=REPO_ROOT, env=fed.env, stdout=log_file, stderr=subprocess.STDOUT,
            timeout=480, check=False,
        )
    output = log_path.read_text(errors="replace")
    assert result.returncode == 0, f"flwr run exited {result.returncode}:\n{output}"
    return output


def find_run_id(fed: Federation, output: str) -> str:
    """The run ID `flwr run` printed, else the only run the SuperLink knows."""
    if match := RUN_ID_LINE.search(output):
        return match.group(1)
    runs = flwr_json(fed.env, "list")["runs"]
    assert len(runs) == 1, f"cannot tell the run ID; runs: {runs}\nflwr run output:\n{output}"
    return str(runs[0]["run-id"])


def final_status(fed: Federation, run_id: str) -> dict[str, Any]:
    """Poll ``flwr list --run-id`` until the run is finished; returns its JSON row."""
    def finished() -> dict[str, Any] | None:
        run = flwr_json(fed.env, "list", "--run-id", run_id)["runs"][0]
        return run if str(run["status"]).startswith("finished") else None

    return wait_until(finished, 60, f"run {run_id} to finish", interval_s=2)


def round_seconds(output: str) -> dict[int, float]:
    """Per-round wall time from the ServerApp's ``[fedapp] round r/R: ... | 12.3s`` lines."""
    times = {}
    for line in output.splitlines():
        if match := ROUND_LINE.search(line):
            times[int(match.group(1))] = float(match.group(2))
    return times


def message_seconds(proc: ManagedProcess) -> list[tuple[str, float]]:
    """(message type, seconds from "Received successfully" to "Sending" its reply) for each
    message a SuperNode handled: the fresh ClientApp process's whole cost, launch included."""
    out, received = [], None
    for stamp, text in proc.stamped_lines():
        if match := MESSAGE_LINE.search(text):
            if match.group(2) is None:
                received = stamp
            elif received is not None:
                out.append((match.group(2), stamp - received))
                received = None
    return out


def summary(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return (f"median {statistics.median(values):.2f}s, min {min(values):.2f}s, "
            f"max {max(values):.2f}s (n={len(values)})")


def record_client_timings(fed: Federation) -> None:
    honest = [fed.nodes[f"hospital-{h}"] for h in range(HOSPITALS)]
    per_message = [s for proc in honest for _, s in message_seconds(proc)]
    fed.record_timing("per message on a SuperNode (received -> reply sent): "
                      + summary(per_message))
    entered, first_load, later_loads = [], [], []
    for proc in honest:
        loads = []
        for match in COLD_START_LINE.finditer(proc.log_text()):
            entered.append(float(match.group(2)))
            loads.append(float(match.group(3)))
        first_load += loads[:1]
        later_loads += loads[1:]
    fed.record_timing("ClientApp process start -> handler entered: " + summary(entered))
    handler = [float(m.group(1)) for proc in honest for m in HANDLER_LINE.finditer(proc.log_text())]
    fed.record_timing("train handler (local data, model, local SGD): " + summary(handler))
    fed.record_timing(f"local data load: first message (parse + cache) {summary(first_load)}; "
                      f"later messages (cache) {summary(later_loads)}")


def assert_nothing_identifiable_on_the_server(fed: Federation, output: str) -> None:
    """No identifiable string from a hospital's file in what the server side keeps: the
    ServerApp's log (``flwr run --stream``'s output), the run's output dir (``rounds.json``,
    the model, the MLflow store: ``mlflow.db`` and ``mlartifacts``), the SuperLink's log
    and its database (which holds every message, error replies included)."""
    out = fed.root / "out"
    assert (out / "mlflow.db").is_file(), sorted(p.name for p in out.iterdir())
    files = [p for p in out.rglob("*") if p.is_file()]  # mlartifacts/ included
    files += [fed.superlink.log_path, *fed.root.glob("link.db*")]
    assert any(p.name == "rounds.json" for p in files) and fed.root.joinpath("link.db") in files
    blobs = {str(p): p.read_bytes() for p in files}
    blobs["flwr run output"] = output.encode()
    leaks = [(where, text) for where, blob in blobs.items() for text in IDENTIFIABLE
             if text.encode() in blob]
    assert not leaks, f"identifiable strings reached the server: {leaks}"
    artifacts = sum(1 for p in files if "mlartifacts" in p.parts)
    fed.record_timing(f"no identifiable string in {len(blobs)} server-side files "
                      f"({artifacts} MLflow artifacts; {sum(map(len, blobs.values())) / 1e6:.1f}"
                      " MB)")


def test_flwr_run_with_authenticated_hospitals_completes(federation: Federation) -> None:
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
    for row in rows[1:]:  # three hospitals accepted, the broken one counted as failed
        assert (row["replies"], row["accepted"], row["failures"]) == (len(MEMBERS), HOSPITALS, 1)
    first, last = rows[0]["server-accuracy"], rows[-1]["server-accuracy"]
    assert last > max(first, 0.85), f"server accuracy round 0 {first}, last {last}"

    # The broken hospital: its ClientApp named the file, the columns and the rows, the
    # server logged the failure against its node ID, and its SuperNode is still up and online.
    broken, broken_id = fed.nodes[BROKEN], fed.node_ids[BROKEN]
    assert BROKEN_REASON in broken.log_text(), broken.log_text()
    failed_lines = [ln for ln in output.splitlines() if f"node {broken_id} failed" in ln]
    assert len(failed_lines) == ROUNDS and all(BROKEN_REASON in ln for ln in failed_lines), \
        output
    assert_nothing_identifiable_on_the_server(fed, output)
    assert broken.running(), f"{BROKEN}'s SuperNode exited:\n{broken.log_text()}"
    assert online_node_ids(fed) == set(fed.node_ids.values())

    # Every honest hospital parsed its file once and cached it for later messages.
    for h in range(HOSPITALS):
        entries = list((fed.root / f"cache-hospital-{h}").glob("*.npz"))
        assert len(entries) == 1, f"hospital-{h} cache: {entries}"
    assert not list((fed.root / f"cache-{BROKEN}").glob("*.npz"))

    per_round = round_seconds(output)
    fed.record_timing(f"flwr run ({HOSPITALS} hospitals + 1 broken, {ROUNDS} rounds, TLS, "
                      f"node auth, median): {wall:.1f}s wall; server accuracy {first:.3f} -> "
                      f"{last:.3f}")
    fed.record_timing("per-round time from the ServerApp log: " + ", ".join(
        f"round {r}: {s:.1f}s" for r, s in sorted(per_round.items())))
    record_client_timings(fed)
    assert sorted(per_round) == list(range(1, ROUNDS + 1)), f"round lines missing:\n{output}"


def test_secure_aggregation_with_distributed_dp_recovers_the_broken_hospital(
        federation: Federation) -> None:
    """SecAgg+ over TLS and node auth, with distributed DP-SGD: the four hospitals form one
    bucket; the broken one answers setup and share_keys, then fails to train, so its masks
    are removed through the others' Shamir shares (threshold 3 of 4) and each round is one
    DP-SGD step on the sum of three, every record's epsilon as the accountant says."""
    from fedapp.config import RunConfig
    from fedapp.privacy.distributed import epsilon_after

    fed = federation
    run_config = (f"{RUN_CONFIG.replace('median', 'fedavg')} secagg=true "
                  f"secagg-bucket-size={len(MEMBERS)} secagg-threshold=0.75 "
                  "dp='distributed' dp-epsilon=8.0 dp-sample-rate=0.2 learning-rate=1.0")
    started = time.perf_counter()
    output = flwr_run(fed, fed.root / "out-secagg", fed.root / "logs" / "flwr-run-secagg.log",
                      run_config)
    run_id = find_run_id(fed, output)
    run = final_status(fed, run_id)
    assert run["status"] == "finished:completed", f"run {run_id}: {run}\n{output}"
    rows = json.loads((fed.root / "out-secagg" / f"run-{run_id}" / "rounds.json").read_text())
    cfg = RunConfig(dp="distributed", secagg=True, dp_epsilon=8.0, dp_sample_rate=0.2,
                    num_server_rounds=ROUNDS)
    for row in rows[1:]:
        assert (row["accepted"], row["failed-data"], row["secagg-buckets-dropped"]) == (
            HOSPITALS, 1, 0), row
        assert row["dp-epsilon"] == pytest.approx(epsilon_after(cfg, int(row["round"])))
    # key pairs kept across rounds: after round 1 only the broken hospital (its round ended
    # before unmask, its protocol state reset) runs setup again
    assert [row["secagg-setup-nodes"] for row in rows[1:]] == [len(MEMBERS)] + [1] * (
        len(rows) - 2), rows
    # two noisy steps: it learns (0.41 -> 0.65 to 0.91 measured), by how much varies
    assert rows[-1]["server-accuracy"] > rows[0]["server-accuracy"] + 0.1, rows
    assert "Secure aggregation: SecAgg+ in buckets of 4" in output
    fed.record_timing(f"secure aggregation + distributed DP-SGD run ({len(MEMBERS)} hospitals, "
                      f"one recovered dropout per round, {ROUNDS} rounds): "
                      f"{time.perf_counter() - started:.1f}s wall; per round: " + ", ".join(
                          f"{s:.1f}s" for _, s in sorted(round_seconds(output).items())))


# ------------------------------------------------------------------ removal


def test_unregistered_hospital_is_cut_off(federation: Federation) -> None:
    """Runs after the first run: removing a hospital stops its SuperNode from taking part."""
    fed = federation
    node_id, proc = fed.node_ids[REMOVED], fed.nodes[REMOVED]
    started = time.perf_counter()
    flwr_json(fed.env, "supernode", "unregister", node_id)
    wait_until(lambda: not proc.running(), 90, f"{REMOVED}'s SuperNode to be cut off",
               [fed.superlink])
    # Its next request was refused (401) and it stopped; in 1.41 it may exit with code 0.
    # The other hospitals are unaffected.
    others = [p for name, p in fed.nodes.items() if name != REMOVED]
    assert all(p.running() for p in others), [p.name for p in others if not p.running()]
    assert listed_nodes(fed)[node_id] == "unregistered"
    again = flwr_json(fed.env, "supernode", "register", str(fed.keys / f"{REMOVED}.pub"),
                      must_succeed=False)
    assert not again["success"] and "Public key already in use" in again["error-message"]
    fed.record_timing(f"unregistered {REMOVED}: its SuperNode exited after "
                      f"{time.perf_counter() - started:.1f}s")


def test_a_missing_hospital_delays_a_round_by_wait_timeout_only(federation: Federation) -> None:
    """Runs after the unregistration: hospital-2 is gone. A run that asks for every member
    waits ``wait-timeout`` (Flower alone would wait for ever), then trains with the
    hospitals that are online and counts the broken one's failure against it."""
    fed = federation
    run_config = (f"num-server-rounds=1 dataset='breast-cancer' min-train-nodes=2 "
                  f"min-available-nodes={len(MEMBERS)} wait-timeout=5 fraction-evaluate=0.0 "
                  "aggregator='median'")
    started = time.perf_counter()
    output = flwr_run(fed, fed.root / "out-missing", fed.root / "logs" / "flwr-run-missing.log",
                      run_config)
    run_id = find_run_id(fed, output)
    run = final_status(fed, run_id)
    assert run["status"] == "finished:completed", f"run {run_id}: {run}\n{output}"
    online = len(MEMBERS) - 1
    assert (f"for min-available-nodes {len(MEMBERS)}; going on with the {online} connected"
            in output), output
    rows = json.loads((fed.root / "out-missing" / f"run-{run_id}" / "rounds.json").read_text())
    assert (rows[1]["replies"], rows[1]["accepted"], rows[1]["failures"]) == (online,
                                                                               online - 1, 1)
    assert rows[1]["failed-data"] == 1
    fed.record_timing(f"a run asking for {len(MEMBERS)} hospitals with {online} online "
                      f"(wait-timeout 5 s): {time.perf_counter() - started:.1f}s wall")
