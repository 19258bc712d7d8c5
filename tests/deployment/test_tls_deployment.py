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

The helpers (commands, the federation's parts, ``flwr run`` and its logs) live in
``tls_cli.py``, ``tls_federation.py`` and ``tls_runs.py`` beside this file; the chaos tier
uses them too.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import TYPE_CHECKING

import pytest

from tests.deployment.tls_cli import BIN_PATH, flwr_json, wait_until
from tests.deployment.tls_federation import (
    BROKEN,
    BROKEN_REASON,
    HOSPITALS,
    INTRUDER_KEY,
    MEMBERS,
    REMOVED,
    Federation,
    listed_nodes,
    logged_node_id,
    online_node_ids,
    start_federation,
    start_intruders,
)
from tests.deployment.tls_runs import (
    ROUNDS,
    RUN_CONFIG,
    assert_nothing_identifiable_on_the_server,
    final_status,
    find_run_id,
    flwr_run,
    record_client_timings,
    round_seconds,
)

if TYPE_CHECKING:  # the fixtures come from conftest.py; never import it at run time
    from tests.deployment.conftest import ManagedProcess, Supervisor

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


@pytest.fixture(scope="module")
def federation(supervisor: Supervisor, deployment_timings: list[str]) -> Federation:
    """Certificates, keys, hospital data, a TLS SuperLink with node authentication and
    its registered SuperNodes, all online.

    The processes belong to ``supervisor``, which stops them after the module."""
    return start_federation(supervisor, deployment_timings)


# ------------------------------------------------------------------- intruders


@pytest.fixture(scope="module")
def intruders(federation: Federation) -> dict[str, ManagedProcess]:
    """Four SuperNodes the SuperLink must refuse, started together (each gives up after
    a bounded number of retries)."""
    return start_intruders(federation)


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
