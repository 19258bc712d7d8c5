"""The real apps through Flower's simulation engine, driven by `flwr run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedapp.sweep import flwr_cli as runner
from tests.flwr_cli import REPO

pytestmark = [pytest.mark.simulation, pytest.mark.timeout(420)]


def test_simulation_completes_and_learns(local_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_id = runner.submit(REPO, {"num-server-rounds": 2, "output-dir": str(out),
                                  "local-epochs": 2},
                           federation_config="num-supernodes=3 client-resources-num-cpus=1",
                           env=local_env)
    status = runner.wait(run_id, env=local_env, timeout=300)
    log = runner.logs(run_id, env=local_env)
    assert status == "finished:completed", log
    rounds = json.loads((out / f"run-{run_id}" / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["accepted"] == 3 and r["failures"] == 0 for r in rounds[1:])
    assert rounds[-1]["server-accuracy"] > rounds[0]["server-accuracy"] + 0.2
    assert (out / f"run-{run_id}" / "model.pt").stat().st_size > 0
    assert "[fedapp] round 2/2: acc" in log
    # MLflow: one run with per-round metrics, the model registered as the first champion.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    [mlflow_run] = client.search_runs([client.get_experiment_by_name("fedapp").experiment_id])
    history = client.get_metric_history(mlflow_run.info.run_id, "server-accuracy")
    assert [m.step for m in history] == [0, 1, 2]
    assert mlflow_run.data.params["num-server-rounds"] == "2"
    champion = client.get_model_version_by_alias("fedapp-digits", "champion")
    assert champion.run_id == mlflow_run.info.run_id
    from mlflow.models import Model  # an MLflow Model: flavor and digits' signature

    info = Model.load(champion.source.removeprefix("file://"))  # the store's local folder
    assert "pytorch" in info.flavors and info.signature.inputs.inputs[0].shape == (-1, 64)


def test_bad_config_fails_the_run_with_a_clear_message(local_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    with pytest.raises(runner.RunFailed) as err:
        runner.run_and_check(REPO, {"aggregator": "krumm", "output-dir": str(tmp_path)},
                             federation_config="num-supernodes=2 client-resources-num-cpus=1",
                             env=local_env, timeout=120)
    assert "ended as finished:failed" in str(err.value)
    assert err.value.run_id is not None
    log = runner.logs(err.value.run_id, env=local_env)
    assert "aggregator='krumm' is not one of: fedavg, krum, multikrum" in log


def test_dp_compression_and_robust_rule_compose_in_one_run(local_env: dict[str, str],
                                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_config = {"num-server-rounds": 2, "local-epochs": 1, "output-dir": str(out),
                  "tracking": False, "dp": "local", "dp-epsilon": 8.0,
                  "compression": "topk-qsgd", "compression-topk": 0.1,
                  "aggregator": "trimmed-mean", "aggregator-f": 1, "preaggregation": "none"}
    run_id, _ = runner.run_and_check(
        REPO, run_config, federation_config="num-supernodes=4 client-resources-num-cpus=1",
        env=local_env, timeout=300)
    rounds = json.loads((out / f"run-{run_id}" / "rounds.json").read_text())
    dense = sum(4 * v.numel() for v in __import__("torch").load(
        out / f"run-{run_id}" / "model.pt").values())
    for row in rounds[1:]:
        assert row["accepted"] == 4 and row["rejected"] == 0
        assert row["bytes-up"] < 4 * dense / 5  # 10% top-k at 8 bits, headers included
        assert 0 < row["dp-epsilon-max"] <= 8.0 * 1.01
    assert rounds[2]["dp-epsilon-max"] > rounds[1]["dp-epsilon-max"]
