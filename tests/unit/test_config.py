"""RunConfig / NodeConfig: parsing, validation messages, and parity with pyproject.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedapp.config import AGGREGATOR_NAMES, ConfigError, NodeConfig, RunConfig
from fedapp.robust import AGGREGATORS

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def pyproject_defaults() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_defaults_equal_runconfig_defaults() -> None:
    assert pyproject_defaults() == RunConfig().to_flower()


def test_from_flower_parses_pyproject_defaults() -> None:
    cfg = RunConfig.from_flower(pyproject_defaults())
    assert cfg == RunConfig()
    assert cfg.num_server_rounds == pyproject_defaults()["num-server-rounds"]


def test_aggregator_names_match_registry() -> None:
    assert set(AGGREGATOR_NAMES) <= set(AGGREGATORS)


def test_bad_choice_names_key_value_and_allowed() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower({**pyproject_defaults(), "aggregator": "krumm"})
    assert "aggregator='krumm' is not one of: fedavg, krum, multikrum" in str(err.value)


def test_all_errors_reported_at_once() -> None:
    bad = {**pyproject_defaults(), "num-server-rounds": 0, "partitioner": "random",
           "fraction-train": 1.5}
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower(bad)
    msg = str(err.value)
    assert "num-server-rounds=0 must be >= 1" in msg
    assert "partitioner='random' is not one of: iid, dirichlet, shard" in msg
    assert "fraction-train=1.5 must be <= 1.0" in msg


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("batch-size", "32", "batch-size='32' must be of type int"),
        ("local-epochs", True, "local-epochs=True must be of type int"),
        ("dataset", "mnist", "dataset='mnist' is not one of: digits, breast-cancer"),
        ("output-dir", "runs", "output-dir='runs' must be an absolute path"),
        ("min-train-nodes", 5, "min-train-nodes=5 must be <= min-available-nodes=2"),
        ("detect-cosine-floor", 0.1, "detect-cosine-floor=0.1 must be <= detect-cosine=0.0"),
        ("reputation-warmup", 0, "reputation-warmup=0 must be >= 1"),
    ],
)
def test_bad_values(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        RunConfig.from_flower({**pyproject_defaults(), key: value})


def test_int_accepted_for_float_key() -> None:
    cfg = RunConfig.from_flower({**pyproject_defaults(), "server-lr": 1})
    assert cfg.server_lr == 1.0 and isinstance(cfg.server_lr, float)


def test_unknown_and_missing_keys() -> None:
    run_config = {**pyproject_defaults(), "agregator": "fedavg"}
    del run_config["seed"]
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower(run_config)
    assert "unknown keys ['agregator']" in str(err.value)
    assert "missing keys ['seed']" in str(err.value)


def test_hub_dataset_name_allowed_and_output_path_expanded() -> None:
    cfg = RunConfig(dataset="hf:ylecun/mnist", output_dir="~/x")
    assert cfg.output_path == str(Path.home() / "x")
    with pytest.raises(ConfigError, match="dataset='hf:'"):
        RunConfig(dataset="hf:")


def test_node_config() -> None:
    assert NodeConfig.from_flower({"partition-id": 1, "num-partitions": 4}).partition_id == 1
    node = NodeConfig.from_flower({"data-path": "/data/a.csv", "label-column": "y"})
    assert (node.data_path, node.label_column) == ("/data/a.csv", "y")
    with pytest.raises(ConfigError, match="needs either data-path"):
        NodeConfig.from_flower({})
    with pytest.raises(ConfigError, match=r"partition-id=4 must be in \[0, num-partitions=4\)"):
        NodeConfig.from_flower({"partition-id": 4, "num-partitions": 4})


def test_attack_names_match_registry() -> None:
    from fedapp.attacks import ATTACKS
    from fedapp.config import ATTACK_NAMES

    assert set(ATTACK_NAMES) == set(ATTACKS)


def test_byzantine_fraction_range() -> None:
    with pytest.raises(ConfigError, match=r"byzantine-fraction=0.6 must be <= 0.45"):
        RunConfig(byzantine_fraction=0.6)


def test_cosine_floor_minus_one_is_no_floor() -> None:
    assert RunConfig(detect_cosine_floor=-1.0, detect_cosine=-0.5).cosine_floor is None
    assert RunConfig().cosine_floor == -0.05
