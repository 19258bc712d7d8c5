"""conf/ (Hydra) <-> Flower run config: defaults parity and the mapping."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from fedapp.config import RunConfig
from fedapp.sweep import count_jobs, federation_config, to_run_config

REPO = Path(__file__).parents[2]


def composed(*overrides: str):  # type: ignore[no-untyped-def]
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        return compose("config", overrides=list(overrides))


def test_conf_defaults_equal_pyproject_key_for_key() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert to_run_config(composed()) == pyproject["tool"]["flwr"]["app"]["config"]


@pytest.mark.parametrize("group", ["aggregator", "attack", "compression", "data", "model"])
def test_every_group_option_gives_a_valid_run_config(group: str) -> None:
    for option in sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml")):
        run_config = to_run_config(composed(f"{group}={option}"))
        RunConfig.from_flower(run_config)  # raises on any bad key or value
        assert set(run_config) == set(RunConfig().to_flower())


def test_group_choice_and_dotted_override_map_to_flat_keys() -> None:
    cfg = composed("aggregator=multikrum", "compression=topk-qsgd", "run.num-server-rounds=3",
                   "federation=local4")
    run_config = to_run_config(cfg)
    assert run_config["aggregator"] == "multikrum" and run_config["byzantine-fraction"] == 0.2
    assert run_config["preaggregation"] == "none"
    assert run_config["compression"] == "topk-qsgd" and run_config["compression-topk"] == 0.01
    assert run_config["num-server-rounds"] == 3
    assert federation_config(cfg) == "num-supernodes=4 client-resources-num-cpus=1"


def test_count_jobs_multiplies_sweeps() -> None:
    assert count_jobs(["aggregator=krum,median", "attack=alie,none,ipm", "run.seed=1"]) == 6
    assert count_jobs(["run.seed=1"]) == 1
