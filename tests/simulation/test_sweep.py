"""The Hydra sweep driver end to end: real Flower runs, MLflow children, failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.simulation, pytest.mark.timeout(480)]


def sweep(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedapp.sweep", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=450, check=False)


def test_two_job_multirun_gives_two_child_runs_and_model_versions(
        local_env: dict[str, str], tmp_path: Path) -> None:
    proc = sweep(["-m", "aggregator=fedavg,median", "run.num-server-rounds=2",
                  "run.local-epochs=1", "federation=local4", f"run.output-dir={tmp_path}/runs"],
                 tmp_path, local_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(tmp_path.glob("multirun/*/*/*/result.json"))
    results = [json.loads(p.read_text()) for p in files]
    assert [r["status"] for r in results] == ["finished:completed"] * 2
    assert "job 2/2" in proc.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fedapp").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.data.params["aggregator"] for c in children} == {"fedavg", "median"}
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "server-accuracy")]
        assert steps == [0, 1, 2]
    versions = client.search_model_versions("name='fedapp-digits'")
    assert sorted(v.run_id for v in versions) == sorted(c.info.run_id for c in children)


def test_a_failed_flower_run_fails_the_job_with_its_error(local_env: dict[str, str],
                                                          tmp_path: Path) -> None:
    # A writable-looking absolute path the ServerApp cannot create: the run fails in Flower.
    proc = sweep(["run.num-server-rounds=1", "federation=local4", "run.tracking=false",
                  "run.output-dir=/proc/fedapp-cannot-write"], tmp_path, local_env)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "ended as finished:failed" in out
    assert "fedapp-cannot-write" in out  # the ServerApp's own error, from the run's log


def test_bad_value_is_refused_before_anything_is_submitted(local_env: dict[str, str],
                                                           tmp_path: Path) -> None:
    proc = sweep(["run.aggregator-f=-1"], tmp_path, local_env)
    assert proc.returncode != 0
    assert "aggregator-f=-1 must be >= 0" in proc.stdout + proc.stderr
