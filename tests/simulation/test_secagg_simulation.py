"""Secure aggregation through Flower's simulation engine, driven by `flwr run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedapp.sweep import flwr_cli as runner
from tests.flwr_cli import REPO

pytestmark = [pytest.mark.simulation, pytest.mark.timeout(420)]


def test_secagg_run_learns_from_bucket_sums_with_a_label_flipper(
        local_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_config = {"num-server-rounds": 3, "local-epochs": 2, "output-dir": str(out),
                  "tracking": False, "secagg": True, "secagg-bucket-size": 3,
                  "secagg-bits": 16, "attack": "label-flip", "attack-fraction": 0.15}
    run_id, _ = runner.run_and_check(
        REPO, run_config, federation_config="num-supernodes=6 client-resources-num-cpus=1",
        env=local_env, timeout=360)
    rounds = json.loads((out / f"run-{run_id}" / "rounds.json").read_text())
    log = runner.logs(run_id, env=local_env)
    weights = sum(v.numel() for v in __import__("torch").load(
        out / f"run-{run_id}" / "model.pt").values())
    for row in rounds[1:]:
        assert row["secagg-buckets"] == 2 and row["secagg-buckets-dropped"] == 0
        assert row["accepted"] == 6 and row["failures"] == 0 and row["kept-previous"] == 0
        # 16-bit masked vectors: half of the dense float32 upload, plus metrics
        assert 6 * 2 * weights < row["bytes-up"] < 6 * 2.5 * weights
    assert rounds[-1]["server-accuracy"] > rounds[0]["server-accuracy"] + 0.2
    assert "Secure aggregation: SecAgg+ in buckets of 3" in log
