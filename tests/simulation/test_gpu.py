"""One round of the real apps on CUDA through Flower's simulation (skipped without a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedapp.sweep import flwr_cli as runner
from tests.flwr_cli import REPO

pytestmark = [
    pytest.mark.simulation, pytest.mark.timeout(420),
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device on this machine (torch.cuda.is_available() is "
                              "False): the CUDA round runs only where there is a GPU"),
]


@pytest.mark.parametrize("dp", ["off", "local"])
def test_one_round_on_cuda(dp: str, local_env: dict[str, str], tmp_path: Path) -> None:
    """device='cuda' fails on any process without CUDA (each ClientApp and the server's
    evaluation), so a completed round with every node accepted ran on the GPU. Ray gives each
    ClientApp a quarter of a GPU (client-resources-num-gpus), without which it hides them."""
    out = tmp_path / "out"
    run_config = {"num-server-rounds": 1, "local-epochs": 1, "output-dir": str(out),
                  "tracking": False, "metrics-port": 0, "device": "cuda", "dp": dp,
                  "dp-epsilon": 8.0}
    run_id, _ = runner.run_and_check(
        REPO, run_config, env=local_env, timeout=300,
        federation_config="num-supernodes=2 client-resources-num-cpus=1 "
                          "client-resources-num-gpus=0.25")
    rounds = json.loads((out / f"run-{run_id}" / "rounds.json").read_text())
    assert rounds[1]["accepted"] == 2 and rounds[1]["failures"] == 0, rounds[1]
    assert rounds[1]["server-accuracy"] > 0
