"""The simulation on an existing multi-node Ray cluster (README, "Run on a Ray cluster").

A Ray head and a second Ray node start on this machine (one CPU each, told apart by the
custom resources ``head`` and ``worker``); `flwr run` starts a private managed SuperLink
with ``RAY_ADDRESS`` in its environment, which Flower's simulation (``ray.init()`` in
``RayBackend.init_ray``) joins instead of starting its own Ray. The test asserts that
ClientApp actors of that run were placed on both nodes (the cluster's actor table) and that
ClientApps handled messages on both (each node's worker logs), then stops every process it
started, by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedapp.sweep import flwr_cli as runner
from tests.flwr_cli import REPO, free_port, kill_processes_mentioning
from tests.ray_cluster import RayCluster

pytestmark = [pytest.mark.simulation, pytest.mark.timeout(420)]

MACHINE_WIDE = Path("/tmp/ray/ray_current_cluster")  # what `ray start` leaves without a temp dir
HANDLED = "[fedapp] cold start: train handler returned"  # FEDAPP_COLD_START_LOG=1


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[RayCluster, dict[str, str]]]:
    """A running two-node cluster and a private `flwr` environment (FLWR_HOME, ports) that
    points Flower at it; everything stopped afterwards."""
    home = tmp_path / "flwr-home"
    base = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "RAY_USAGE_STATS_ENABLED": "0", "FEDAPP_COLD_START_LOG": "1"}
    root = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: AF_UNIX paths
    ray_cluster = RayCluster(root, base)
    env = {**base, "FLWR_HOME": str(home), "XDG_DATA_HOME": str(home / "xdg-data"),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
           "RAY_ADDRESS": ray_cluster.address}
    try:
        yield ray_cluster, env
    finally:
        kill_processes_mentioning(str(home))  # the SuperLink and what it started
        left = ray_cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


def test_simulation_runs_on_both_nodes_of_an_existing_cluster(
        cluster: tuple[RayCluster, dict[str, str]], tmp_path: Path) -> None:
    ray_cluster, env = cluster
    machine_wide_before = MACHINE_WIDE.exists()
    nodes = ray_cluster.start()
    node_of = {name: next(i for i, res in nodes.items() if name in res)
               for name in ("head", "worker")}

    out = tmp_path / "out"
    run_id, _ = runner.run_and_check(
        REPO, {"num-server-rounds": 2, "local-epochs": 1, "fraction-evaluate": 0.0,
               "output-dir": str(out), "tracking": False, "metrics-port": 0},
        federation_config="num-supernodes=4 client-resources-num-cpus=1", env=env,
        timeout=300)
    rounds = json.loads((out / f"run-{run_id}" / "rounds.json").read_text())
    assert [r["accepted"] for r in rounds[1:]] == [4, 4], rounds

    ray_cluster.record_pids()
    actors = [a for a in ray_cluster.probe("actors") if a["class"] == "ClientAppActor"]
    # One CPU per node and one per ClientApp: Flower's pool holds one actor per node, and
    # its actors are in this cluster's table, so the simulation did not start its own Ray.
    assert {a["node"] for a in actors} == set(node_of.values()), (actors, nodes)
    assert len({a["job"] for a in actors}) == 1, actors
    for name in ("head", "worker"):
        assert HANDLED in ray_cluster.worker_logs(name), f"no ClientApp ran on the {name} node"
    assert MACHINE_WIDE.exists() == machine_wide_before
