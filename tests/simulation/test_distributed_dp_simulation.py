"""Distributed DP-SGD over secure aggregation through Flower's simulation engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedapp.config import RunConfig
from fedapp.privacy.distributed import epsilon_after
from fedapp.sweep import flwr_cli as runner
from tests.flwr_cli import REPO

pytestmark = [pytest.mark.simulation, pytest.mark.timeout(600)]


def test_distributed_dp_sgd_learns_and_spends_what_the_accountant_says(
        local_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_config = {"num-server-rounds": 15, "output-dir": str(out), "tracking": False,
                  "fraction-evaluate": 0.0, "secagg": True, "secagg-bucket-size": 6,
                  "dp": "distributed", "dp-epsilon": 8.0, "dp-sample-rate": 0.2,
                  "learning-rate": 1.0, "anomaly-detection": "off", "checkpoint-keep": 0}
    run_id, _ = runner.run_and_check(
        REPO, run_config, federation_config="num-supernodes=6 client-resources-num-cpus=1",
        env=local_env, timeout=540)
    rounds = json.loads((out / f"run-{run_id}" / "rounds.json").read_text())
    cfg = RunConfig(**{k.replace("-", "_"): v for k, v in run_config.items()})
    for row in rounds[1:]:
        assert row["accepted"] == 6 and row["secagg-buckets-dropped"] == 0
        assert row["dp-epsilon"] == pytest.approx(epsilon_after(cfg, int(row["round"])),
                                                  rel=1e-6)
        assert row["dp-epsilon-max"] == pytest.approx(row["dp-epsilon"], rel=1e-6)
    assert rounds[-1]["dp-epsilon"] <= 8.0 * 1.01
    curve = [round(r["server-accuracy"], 3) for r in rounds]
    print("distributed DP-SGD accuracy per round:", curve)
    # One noisy step per round: single rounds swing by 0.2 (a CI run fell from 0.56 to 0.25
    # in two rounds), so the test judges the mean of the last five rounds. Over 20 runs it
    # was 0.48 (sd 0.04, lowest 0.40): the Poisson sampling and the noise come from the OS's
    # entropy, not the run's seed. The bar, 0.2 above the first round's 0.11, is 4 sd below.
    assert sum(curve[-5:]) / 5 > curve[0] + 0.2, curve
