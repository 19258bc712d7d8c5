"""Many generated hospitals through `flwr run`: 200 SuperNodes, 10 sampled per round; the
server's per-node state holds the sampled nodes only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedapp.server import checkpoint
from fedapp.sweep import flwr_cli as runner
from tests.flwr_cli import REPO

pytestmark = [pytest.mark.simulation, pytest.mark.timeout(360)]

NODES, SAMPLED, ROUNDS = 200, 10, 2


def test_two_hundred_synthetic_hospitals_ten_per_round(local_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = {"dataset": "synthetic", "num-server-rounds": ROUNDS,
              "fraction-train": (SAMPLED + 0.5) / NODES, "fraction-evaluate": 0.0,
              "min-available-nodes": NODES, "tracking": False, "metrics-port": 0,
              "output-dir": str(out)}
    run_id, _ = runner.run_and_check(
        REPO, config, federation_config=f"num-supernodes={NODES} client-resources-num-cpus=1",
        env=local_env, timeout=300)
    run_dir = out / f"run-{run_id}"
    rows = json.loads((run_dir / "rounds.json").read_text())
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))
    for row in rows[1:]:
        assert (row["nodes-connected"], row["nodes-sampled"]) == (NODES, SAMPLED), row
        assert row["accepted"] == SAMPLED and row["failures"] == 0, row
    assert 0 <= rows[-1]["server-accuracy"] <= 1
    assert "MLP on synthetic (2000 test rows)" in runner.logs(run_id, env=local_env)

    # Node health: every sampled node, once per round it was sampled, and no other node.
    health = json.loads((run_dir / "node_health.json").read_text())
    outcomes = {n: h["successes"] + sum(h["failures"].values()) for n, h in health.items()}
    assert sum(outcomes.values()) == ROUNDS * SAMPLED
    assert min(outcomes.values()) >= 1 and len(health) <= ROUNDS * SAMPLED
    reputation = json.loads((run_dir / "reputation.json").read_text())["nodes"]
    assert set(reputation) <= set(health)
    assert sum(r["rounds"] for r in reputation.values()) == ROUNDS * SAMPLED
    saved = checkpoint.newest(run_dir / checkpoint.DIRECTORY)
    assert saved is not None and saved.state.server_round == ROUNDS
    assert {str(n) for n in saved.state.health.nodes} == set(health)
