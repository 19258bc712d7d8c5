"""Tracker against a temporary SQLite MLflow store, and against a dead server."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from fedapp.config import RunConfig
from fedapp.data import DATASET_SPECS
from fedapp.task import build_model
from fedapp.tracking import Tracker, resolve_tracking_uri
from tests.unit.mlflow_store import PNG_MAGIC, fresh_store

SPEC = DATASET_SPECS["breast-cancer"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return fresh_store(tmp_path)


def client(uri: str) -> Any:  # an MlflowClient, imported lazily
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_params_and_round_metrics_read_back(uri: str) -> None:
    params = RunConfig(aggregator="krum", aggregator_f=1, compression_stochastic=True).to_flower()
    rounds = {0: {"server-accuracy": 0.25, "server-loss": 2.0},
              1: {"server-accuracy": 0.5, "server-loss": 1.5, "replies": 3, "note": "skipped"},
              2: {"server-accuracy": 0.75, "server-loss": 1.0, "replies": 3}}
    with Tracker.open(uri, "exp", "run-1", params, tags={"flwr-run-id": "7"}) as tracker:
        assert tracker.enabled, tracker.reason
        for step, metrics in rounds.items():
            tracker.log_round(step, metrics)
    run = client(uri).get_run(tracker.run_id)
    expected = {k: ("true" if v is True else "false" if v is False else str(v))
                for k, v in params.items()}
    assert run.data.params == expected
    assert run.data.tags["flwr-run-id"] == "7"
    assert run.info.run_name == "run-1" and run.info.status == "FINISHED"
    for key in ("server-accuracy", "server-loss", "replies"):
        history = {m.step: m.value for m in client(uri).get_metric_history(tracker.run_id, key)}
        assert history == {s: float(m[key]) for s, m in rounds.items() if key in m}
    assert "note" not in run.data.metrics
    assert not tracker.enabled  # closed


def test_failed_block_marks_run_failed(uri: str) -> None:
    with pytest.raises(RuntimeError), Tracker.open(uri, "exp", "boom", {}) as tracker:
        raise RuntimeError("training crashed")
    assert client(uri).get_run(tracker.run_id).info.status == "FAILED"
    with pytest.raises(ValueError, match="status='DONE'"):
        Tracker.disabled("off").close("DONE")


def test_curves_png_and_artifacts(uri: str, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"round": 0, "server-accuracy": 0.1, "server-loss": 2.3}]
    rows += [{"round": r, "server-accuracy": 0.1 * r + 0.1, "server-loss": 2.0 / r, "replies": 2}
             for r in range(1, 4)]
    config = tmp_path / "config.json"
    config.write_text("{}")
    tracker = Tracker.open(uri, "exp", "curves", {})
    png = tracker.log_curves(rows, tmp_path / "out" / "curves.png")
    with caplog.at_level(logging.WARNING):
        tracker.log_artifacts([config, tmp_path / "missing.json"])
    tracker.close()
    assert png is not None and png.read_bytes()[:8] == PNG_MAGIC
    assert png.stat().st_size > 1000
    assert "missing.json" in caplog.text and "no such file" in caplog.text
    logged = {a.path for a in client(uri).list_artifacts(tracker.run_id)}
    assert logged == {"curves.png", "config.json"}


def test_parent_run_id_makes_a_child_run(uri: str) -> None:
    parent = Tracker.open(uri, "sweep", "parent", {})
    child = Tracker.open(uri, "sweep", "child", {"seed": 1}, parent_run_id=parent.run_id)
    alone = Tracker.open(uri, "sweep", "alone", {})
    for t in (child, alone, parent):
        t.close()
    assert client(uri).get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert "mlflow.parentRunId" not in client(uri).get_run(alone.run_id).data.tags


def test_dead_server_warns_once_and_every_call_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    file = tmp_path / "rounds.json"
    file.write_text("[]")
    model = build_model("mlp", SPEC, 8)
    with caplog.at_level(logging.WARNING, logger="flwr.fedapp"):
        tracker = Tracker.open(dead, "exp", "run", {"seed": 1})
        tracker.log_round(1, {"server-accuracy": 0.5})
        tracker.log_artifacts([file])
        png = tracker.log_curves([{"round": 1, "server-accuracy": 0.5, "server-loss": 1.0}],
                                 tmp_path / "curves.png")
        assert tracker.log_model(model, SPEC) is None
        result = tracker.register_model(model, SPEC, "fedapp-test", 0.9, {}, 0.0)
        tracker.close("FAILED")
    assert not tracker.enabled and dead in tracker.reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    assert png is not None and png.is_file()  # the local PNG is still written
    assert result.version is None and not result.promoted
    assert "tracking disabled" in result.reason


@pytest.mark.parametrize("bad", ["nosuchscheme://somewhere", "http://"])
def test_unusable_uri_disables_tracking(bad: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flwr.fedapp"):
        tracker = Tracker.open(bad, "exp", "run", {})
        tracker.log_round(0, {"server-accuracy": 1.0})
        tracker.close()
    assert not tracker.enabled
    assert bad in caplog.text


def test_registry_error_disables_tracker_without_raising(
        uri: str, caplog: pytest.LogCaptureFixture) -> None:
    model = build_model("mlp", SPEC, 8)
    tracker = Tracker.open(uri, "exp", "run", {})
    with caplog.at_level(logging.WARNING, logger="flwr.fedapp"):
        result = tracker.register_model(model, SPEC, "bad/name", 0.9, {}, 0.0)
        tracker.log_round(1, {"server-accuracy": 0.5})  # a no-op now
        tracker.close()
    assert result.version is None and not result.promoted
    assert "bad/name" in caplog.text and not tracker.enabled
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_resolve_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("", tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_tracking_uri("", tmp_path) == "http://mlflow:5000"
    assert resolve_tracking_uri("sqlite:////x/y.db", tmp_path) == "sqlite:////x/y.db"


def test_probe_goes_through_the_configured_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    for var in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    tracker = Tracker.open("http://mlflow.example:5000", "exp", "run", {})
    assert not tracker.enabled and f"127.0.0.1:{port}" in tracker.reason


def test_log_model_without_registering(uri: str) -> None:
    """``registered-model=off``: the flavored model is an output of the run; no version."""
    model = build_model("mlp", SPEC, 8)
    with Tracker.open(uri, "exp", "run", {"seed": 3}) as tracker:
        model_id = tracker.log_model(model, SPEC)
    assert model_id is not None and tracker.reason == "run closed"
    run = client(uri).get_run(tracker.run_id)
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    logged = client(uri).get_logged_model(model_id)
    assert logged.source_run_id == tracker.run_id and str(logged.status) == "READY"
    assert client(uri).search_registered_models() == []


def test_a_model_that_does_not_fit_the_spec_is_not_logged(
        uri: str, caplog: pytest.LogCaptureFixture) -> None:
    """A model of another dataset's width fails clearly, as a tracking warning."""
    wrong = build_model("mlp", DATASET_SPECS["digits"], 8)
    tracker = Tracker.open(uri, "exp", "run", {})
    with caplog.at_level(logging.WARNING, logger="flwr.fedapp"):
        result = tracker.register_model(wrong, SPEC, "fedapp-test", 0.9, {}, 0.0)
    assert result.version is None and not tracker.enabled
    assert "cannot register model 'fedapp-test'" in caplog.text
    assert "MLP does not take the 30 features of 'breast-cancer'" in caplog.text
    experiment = client(uri).get_experiment_by_name("exp").experiment_id
    [logged] = client(uri).search_logged_models([experiment])
    assert str(logged.status) == "FAILED"
