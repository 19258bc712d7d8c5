"""Model versions, the promotion gate, promote / rollback / export, on a temp SQLite store.

Every version here is the flavored MLflow Model the Tracker logs (``fedapp.tracking.model``);
the operations read its ``model.pt`` and ``config.json``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedapp.data import DATASET_SPECS
from fedapp.task import build_model
from fedapp.tracking import RegistrationResult, Tracker, connect, registry
from fedapp.tracking.registry_cli import main as cli
from tests.unit.mlflow_store import fresh_store

NAME = "fedapp-test"
SPEC = DATASET_SPECS["breast-cancer"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return fresh_store(tmp_path)


def tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", SPEC, 8)


def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    return tiny_model(seed).state_dict()


def register(uri: str, tmp_path: Path, accuracy: float, margin: float = 0.0,
             seed: int = 0) -> RegistrationResult:
    """One tracked run that registers a tiny model."""
    params = {"dataset": "breast-cancer", "aggregator": "median", "seed": seed}
    with Tracker.open(uri, "exp", f"run-{seed}", params) as tracker:
        result = tracker.register_model(tiny_model(seed), SPEC, NAME, accuracy,
                                        {"note": "test"}, margin)
    assert result.version is not None, result.reason
    return result


def champion(uri: str) -> str | None:
    return registry.champion_of(connect(uri), NAME)


def test_gate_promotes_only_by_more_than_the_margin(uri: str, tmp_path: Path) -> None:
    first = register(uri, tmp_path, 0.80, seed=1)
    assert (first.version, first.promoted, first.champion) == ("1", True, "1")
    better = register(uri, tmp_path, 0.85, seed=2)
    assert (better.promoted, better.champion, better.previous) == (True, "2", "1")
    worse = register(uri, tmp_path, 0.70, seed=3)
    assert (worse.version, worse.promoted, worse.champion) == ("3", False, "2")
    within = register(uri, tmp_path, 0.86, margin=0.02, seed=4)
    assert not within.promoted and "margin 0.02" in within.reason
    equal = register(uri, tmp_path, 0.85, seed=5)
    assert not equal.promoted
    nan = register(uri, tmp_path, float("nan"), seed=6)
    assert not nan.promoted
    assert champion(uri) == "2"
    beyond = register(uri, tmp_path, 0.90, margin=0.02, seed=7)
    assert (beyond.promoted, beyond.previous) == (True, "2")
    client = connect(uri)
    assert champion(uri) == "7"
    assert str(client.get_registered_model(NAME).aliases["previous-champion"]) == "2"
    assert registry.history(client, NAME) == ["1", "2"]
    tags = client.get_model_version(NAME, "7").tags
    assert float(tags["accuracy"]) == 0.90 and tags["note"] == "test"
    assert tags["run-id"] == client.get_model_version(NAME, "7").run_id
    assert "dataset=breast-cancer" in tags["config"] and "aggregator=median" in tags["config"]


def test_rollback_restores_previous_champions_then_refuses(
        uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for seed, acc in enumerate((0.6, 0.7, 0.8), start=1):
        register(uri, tmp_path, acc, seed=seed)
    assert champion(uri) == "3"
    assert cli(["--tracking-uri", uri, "--name", NAME, "rollback"]) == 0
    assert champion(uri) == "2"
    assert "v3 -> v2" in capsys.readouterr().out
    assert registry.rollback(connect(uri), NAME) == ("2", "1")
    assert "previous-champion" not in connect(uri).get_registered_model(NAME).aliases
    assert cli(["--tracking-uri", uri, "--name", NAME, "rollback"]) == 1
    assert "no previous champion" in capsys.readouterr().err
    assert champion(uri) == "1"


def test_rollback_skips_the_current_champion_in_history(uri: str, tmp_path: Path) -> None:
    """A promotion interrupted after writing the history leaves the champion on top of it."""
    register(uri, tmp_path, 0.6, seed=1)
    register(uri, tmp_path, 0.7, seed=2)
    client = connect(uri)
    client.set_registered_model_tag(NAME, registry.HISTORY_TAG, "1,2")
    assert registry.rollback(client, NAME) == ("2", "1")


def test_promote_records_previous_and_list_shows_versions(
        uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    register(uri, tmp_path, 0.9, seed=1)
    register(uri, tmp_path, 0.5, seed=2)  # refused by the gate
    assert cli(["--tracking-uri", uri, "--name", NAME, "promote", "2"]) == 0
    assert champion(uri) == "2"
    assert str(connect(uri).get_registered_model(NAME).aliases["previous-champion"]) == "1"
    capsys.readouterr()
    assert cli(["--tracking-uri", uri, "--name", NAME, "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["version", "run", "id", "accuracy", "aliases", "created"]
    assert len(lines) == 3
    assert lines[1].split()[:4] == ["1", connect(uri).get_model_version(NAME, "1").run_id,
                                    "0.9000", "previous-champion"]
    assert lines[2].split()[3] == "champion"
    assert cli(["--tracking-uri", uri, "--name", NAME, "promote", "9"]) == 1
    assert "no version '9'" in capsys.readouterr().err
    assert cli(["--tracking-uri", uri, "--name", "nope", "list"]) == 1
    assert "no registered model 'nope'" in capsys.readouterr().err


def test_export_writes_a_loadable_state_dict(uri: str, tmp_path: Path) -> None:
    register(uri, tmp_path, 0.9, seed=3)
    out = tmp_path / "exported"
    assert cli(["--tracking-uri", uri, "--name", NAME, "export", "1", str(out)]) == 0
    model = build_model("mlp", DATASET_SPECS["breast-cancer"], 8)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    expected = tiny_state(3)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert json.loads((out / "config.json").read_text())["aggregator"] == "median"
    written = registry.export(connect(uri), uri, NAME, "1", tmp_path / "single" / "m.pt")
    assert [p.name for p in written] == ["m.pt", "m.json"]
    assert torch.load(written[0], weights_only=True).keys() == expected.keys()


def test_champion_state_dict_path(uri: str, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flwr.fedapp"):
        assert registry.champion_state_dict_path(uri, NAME) is None
    assert f"'{NAME}'" in caplog.text
    register(uri, tmp_path, 0.7, seed=1)
    register(uri, tmp_path, 0.8, seed=2)
    path = registry.champion_state_dict_path(uri, NAME)
    assert path is not None and path.name == "model.pt"
    state = torch.load(path, weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in tiny_state(2).items())


def test_version_argument_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli(["promote", "v2"])
    assert "VERSION='v2' must be a positive integer" in capsys.readouterr().err


def test_a_version_is_the_flavored_logged_model_of_its_run(uri: str, tmp_path: Path) -> None:
    """The source is an MLflow Model (pytorch flavor) logged by the run, READY, with the
    state dict and config beside the flavor's files."""
    result = register(uri, tmp_path, 0.7, seed=4)
    client = connect(uri)
    version = client.get_model_version(NAME, str(result.version))
    logged = client.get_logged_model(version.tags["model-id"])
    assert version.source == logged.artifact_location
    assert logged.source_run_id == version.run_id and str(logged.status) == "READY"
    run = client.get_run(version.run_id)
    assert [o.model_id for o in run.outputs.model_outputs] == [logged.model_id]
    folder = registry.download_version(client, uri, NAME, str(result.version), tmp_path / "dl")
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"MLmodel", "data/model.pt2", "requirements.txt", "model.pt", "config.json"} <= files
    assert "pytorch:" in (folder / "MLmodel").read_text()


def test_registry_command_keeps_its_name(uri: str, tmp_path: Path) -> None:
    """``python -m fedapp.tracking.registry`` runs the CLI now in ``registry_cli``."""
    register(uri, tmp_path, 0.7, seed=1)
    done = subprocess.run(
        [sys.executable, "-m", "fedapp.tracking.registry", "--tracking-uri", uri,
         "--name", NAME, "list"], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split()[0] == "1"
    assert "champion" in done.stdout and "RuntimeWarning" not in done.stderr
