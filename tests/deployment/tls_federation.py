"""The TLS federation of the deployment tiers: certificates and node keys made with the
repository's scripts, the hospitals' data files (one a messy export, one broken, with
identifiable strings that must never reach the server), a SuperLink with SuperNode
authentication and one SuperNode per hospital, and what ``flwr supernode list`` says.

``start_federation`` and ``start_intruders`` are the bodies of the module fixtures of
``tests/deployment/test_tls_deployment.py``; ``tests/chaos`` builds its own federation from
the same parts.
"""

from __future__ import annotations

import json
import re
import ssl
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.deployment.tls_cli import (
    CONNECTION,
    REPO_ROOT,
    child_env,
    flwr_json,
    flwr_json_parallel,
    free_ports,
    run_checked,
    wait_until,
)

if TYPE_CHECKING:  # the fixtures come from conftest.py; never import it at run time
    from tests.deployment.conftest import ManagedProcess, Supervisor

GENERATE_SH = REPO_ROOT / "certificates" / "generate.sh"
NODE_KEYS_SH = REPO_ROOT / "certificates" / "generate-node-keys.sh"
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
REFUSAL_RETRIES = ["--max-retries", "2", "--max-wait-time", "30"]
NODE_ID_LINE = re.compile(r"SuperNode ID: (\d+)")


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


def start_federation(supervisor: Supervisor, deployment_timings: list[str]) -> Federation:
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


def self_made_ca(out: Path, env: dict[str, str]) -> Path:
    """A CA certificate an intruder made for itself (EC, so it costs milliseconds)."""
    out.mkdir()
    run_checked(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=intruder CA",
                 "-keyout", str(out / "ca.key"), "-out", str(out / "ca.crt")], env, 60)
    return out / "ca.crt"


def start_intruders(federation: Federation) -> dict[str, ManagedProcess]:
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
