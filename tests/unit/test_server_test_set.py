"""The server evaluates on data no hospital trains on: the operator's file in a deployment,
the built-in held-out split only in simulation, and otherwise says it does not evaluate."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedapp.config import RunConfig
from fedapp.data.loading import load_server_test
from fedapp.server.build import server_test_set
from fedapp.server.rounds import round_line


class Grid:
    """A Grid with run info: a simulation's or a deployment's."""

    def __init__(self, task_type: str) -> None:
        self.run = SimpleNamespace(primary_task_type=task_type)

    def get_node_ids(self) -> list[int]:
        return [1, 2]


def test_a_deployment_without_a_test_file_does_not_use_the_builtin_split(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert server_test_set(RunConfig(dataset="breast-cancer"), Grid("flwr-serverapp")) is None
    assert "no server-test-path in a deployment" in caplog.text


def test_simulation_uses_the_builtin_held_out_split() -> None:
    cfg = RunConfig(dataset="breast-cancer")
    got = server_test_set(cfg, Grid("flwr-simulation"))
    expected = load_server_test(cfg)
    assert got is not None and np.array_equal(got.x, expected.x)


def test_a_missing_test_file_is_an_error_naming_it(tmp_path: Path) -> None:
    cfg = RunConfig(dataset="breast-cancer", server_test_path=str(tmp_path / "test.csv"))
    with pytest.raises(ValueError, match=r"test\.csv"):
        server_test_set(cfg, Grid("flwr-serverapp"))


def test_round_line_without_a_server_test_set_reports_the_federated_evaluation() -> None:
    row = {"round": 2, "eval-accuracy": 0.875, "eval-loss": 0.4, "replies": 3, "accepted": 3,
           "rejected": 0, "failures": 0, "kept-previous": 0, "bytes-up": 1000,
           "bytes-down": 1000, "seconds": 1.0}
    line = round_line(row, 5)
    assert "federated acc 0.8750 loss 0.4000 (no server test set)" in line
    assert "no evaluation" in round_line({"round": 0}, 5)


def test_the_operators_test_file_is_read_by_column_name(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    from fedapp.data.specs import preprocess

    frame = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "label"})
    rows = frame.iloc[:50]
    path = tmp_path / "server-test.csv"
    rows[list(reversed(rows.columns))].to_csv(path, index=False)  # another column order
    cfg = RunConfig(dataset="breast-cancer", server_test_path=str(path))
    got = server_test_set(cfg, Grid("flwr-serverapp"))
    features = rows.drop(columns=["label"]).to_numpy(dtype=np.float32)
    assert got is not None and len(got) == 50
    np.testing.assert_allclose(got.x, preprocess("breast-cancer", features), rtol=1e-6)
    assert got.y.tolist() == rows["label"].tolist()
