"""A real Prometheus scrapes a real `flwr run` and evaluates the repository's alert rules.

Debian's ``prometheus`` binary runs on loopback with a generated config (0.5 s scrape and
rule evaluation) that scrapes the ServerApp's metrics port and loads
``monitoring/prometheus/alerts.yml``. The run has a sign-flipping attacker, so screening
flags it every round and ``FedappNodeFlagged`` must fire. Every process is stopped by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fedapp.sweep import flwr_cli as runner
from tests.flwr_cli import REPO, free_port

pytestmark = [pytest.mark.simulation, pytest.mark.timeout(480)]

RULES = REPO / "monitoring" / "prometheus" / "alerts.yml"
ROUNDS, NODES = 12, 5


def prometheus_config(target: str, rules: Path) -> str:
    return json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "500ms", "evaluation_interval": "500ms"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "fedapp", "static_configs": [{"targets": [target]}]}],
    })


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def query(base: str, promql: str) -> list[dict[str, Any]]:
    return api(base, "query", query=promql)["result"]


def scalar(base: str, promql: str) -> float:
    [sample] = query(base, promql)
    return float(sample["value"][1])


@pytest.fixture
def prometheus(tmp_path: Path) -> Any:
    """A Prometheus on a free loopback port; yields (base URL, metrics port it scrapes)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus is not installed (.ci/run installs it)")
    metrics_port = free_port()
    web_port = free_port()
    while web_port == metrics_port:  # the OS may hand out a just-closed port again
        web_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config(f"127.0.0.1:{metrics_port}", RULES))
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web_port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{web_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                api(base, "status/buildinfo")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "prometheus.log").read_text()[-3000:]
                time.sleep(0.5)
        yield base, metrics_port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def firing(base: str, name: str) -> list[dict[str, Any]]:
    return [a for a in api(base, "alerts")["alerts"]
            if a["labels"]["alertname"] == name and a["state"] == "firing"]


def test_prometheus_scrapes_the_run_and_fires_the_node_flagged_alert(
        prometheus: tuple[str, int], local_env: dict[str, str], tmp_path: Path) -> None:
    base, metrics_port = prometheus
    rules = api(base, "rules")["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} >= {"FedappNodeFlagged"}
    out = tmp_path / "out"
    run_id = runner.submit(REPO, {
        "num-server-rounds": ROUNDS, "local-epochs": 1, "output-dir": str(out),
        "tracking": False, "metrics-port": metrics_port, "attack": "sign-flip",
        "attack-fraction": 0.2, "min-available-nodes": NODES},
        federation_config=f"num-supernodes={NODES} client-resources-num-cpus=1", env=local_env)
    alerts: list[dict[str, Any]] = []

    def watch(_: str) -> None:  # while the run is live: its alerts
        alerts.extend([] if alerts else firing(base, "FedappNodeFlagged"))

    status = runner.wait(run_id, env=local_env, timeout=360, poll=1.0, on_poll=watch)
    assert status == "finished:completed", runner.logs(run_id, env=local_env)
    rows = json.loads((out / f"run-{run_id}" / "rounds.json").read_text())

    # The series hold the run's values (max over the run: the target is gone now).
    def run_max(expr: str) -> float:
        return scalar(base, f"max(max_over_time({expr}[10m]))")

    # No sample at all means the ServerApp's exporter was never scraped (e.g. its port was
    # taken between choosing it and binding it): say so, with what Prometheus saw.
    assert query(base, "max_over_time(fedapp_rounds_planned[10m])"), (
        [t.get("lastError") for t in api(base, "targets")["activeTargets"]],
        runner.logs(run_id, env=local_env)[-3000:])

    assert run_max("fedapp_rounds_completed_total") == ROUNDS
    assert run_max("fedapp_round") == ROUNDS
    assert run_max("fedapp_rounds_planned") == ROUNDS
    assert run_max("fedapp_replies_accepted_total") == sum(r["accepted"] for r in rows[1:])
    assert run_max("fedapp_upload_bytes_total") == sum(r["bytes-up"] for r in rows[1:])
    assert run_max("fedapp_server_accuracy_ratio") == max(r["server-accuracy"] for r in rows)
    flagged = scalar(base, "sum(max_over_time(fedapp_updates_flagged_total[10m]))")
    # by check: an update two checks flag counts once for each
    assert flagged >= sum(r["flagged"] for r in rows[1:]) >= 3
    assert run_max("fedapp_node_flagged_streak_rounds") >= 3
    assert run_max("process_resident_memory_bytes") > 1e6

    # The alert fired for the attacker while the run was live: Prometheus recorded it in
    # ALERTS (the API's list of active alerts, polled above, may miss a short run's end).
    recorded = query(base, 'max_over_time(ALERTS{alertname="FedappNodeFlagged",'
                           'alertstate="firing"}[10m])')
    assert recorded, "FedappNodeFlagged never fired"
    streaks = query(base, "max_over_time(fedapp_node_flagged_streak_rounds[10m]) >= 3")
    fired = {a["labels"]["node"] for a in alerts} | {r["metric"]["node"] for r in recorded}
    assert fired <= {s["metric"]["node"] for s in streaks}

    # Bounded labels: per-node series are the federation's nodes, whatever the rounds.
    for name in ("fedapp_node_reputation", "fedapp_node_flagged_streak_rounds"):
        series = api(base, "series", **{"match[]": name})
        assert 0 < len(series) <= NODES, (name, series)
