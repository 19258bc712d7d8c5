"""Checkpoints: atomic, verified, the newest N kept, a corrupt one skipped for the previous;
resume finds the right one and refuses a run config that would make its state invalid."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedapp.config import ConfigError, RunConfig
from fedapp.server import checkpoint
from fedapp.server.resume import SAFE_TO_CHANGE, changed_keys, find_checkpoint
from fedapp.server.state import ServerState


def state(server_round: int) -> ServerState:
    arrays = ArrayRecord({"w": Array(np.full(3, server_round, np.float32))})
    return ServerState(server_round=server_round, arrays=arrays,
                       rounds={server_round: {"round": server_round, "server-accuracy": 0.5}})


def save(run_dir: Path, cfg: RunConfig, rounds: range, keep: int = 3) -> Path:
    path = run_dir
    for r in rounds:
        path = checkpoint.write(run_dir / checkpoint.DIRECTORY, r,
                                checkpoint.encode(state(r), cfg.to_flower(), 7, "mlflow-abc"),
                                keep)
    return path


def test_only_the_newest_checkpoints_are_kept_and_they_round_trip(tmp_path: Path) -> None:
    cfg = RunConfig(output_dir=str(tmp_path))
    save(tmp_path / "run-7", cfg, range(1, 6), keep=2)
    files = sorted(p.name for p in (tmp_path / "run-7" / "checkpoints").iterdir())
    assert files == ["round-000004.ckpt", "round-000005.ckpt"]  # no temporary file left
    got = checkpoint.newest(tmp_path / "run-7" / "checkpoints")
    assert got is not None and got.state.server_round == 5
    assert got.flwr_run_id == 7 and got.mlflow_run_id == "mlflow-abc"
    assert got.run_config == cfg.to_flower()
    assert got.state.arrays is not None and got.state.arrays["w"].numpy().tolist() == [5.0] * 3


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    newest = save(tmp_path / "run-7", RunConfig(output_dir=str(tmp_path)), range(1, 4))
    data = newest.read_bytes()
    if damage == "truncate":  # a torn write
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # a flipped bit in the payload
        newest.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        newest.write_bytes(b"not a checkpoint\n" + data)
    with caplog.at_level(logging.WARNING):
        got = checkpoint.newest(tmp_path / "run-7" / "checkpoints")
    assert got is not None and got.state.server_round == 2
    assert "round-000003.ckpt" in caplog.text and "using the previous one" in caplog.text


def test_resume_latest_takes_the_newest_run_with_the_same_config(tmp_path: Path) -> None:
    cfg = RunConfig(output_dir=str(tmp_path), num_server_rounds=10)
    save(tmp_path / "run-1", cfg, range(1, 3))
    other = RunConfig(output_dir=str(tmp_path), aggregator="median")
    save(tmp_path / "run-2", other, range(1, 5))  # newer, but another aggregator
    resumed = RunConfig(output_dir=str(tmp_path), num_server_rounds=20, resume="latest",
                        round_timeout=60.0)  # safe to change
    found = find_checkpoint(resumed, tmp_path / "run-3")
    assert found is not None and found.path.parent.parent.name == "run-1"
    assert found.state.server_round == 2


def test_resume_refuses_a_config_that_changes_the_state_naming_every_key(
        tmp_path: Path) -> None:
    cfg = RunConfig(output_dir=str(tmp_path))
    save(tmp_path / "run-1", cfg, range(1, 3))
    changed = RunConfig(output_dir=str(tmp_path), model="mlp", aggregator="median",
                        resume=str(tmp_path / "run-1"))
    with pytest.raises(ConfigError) as err:
        find_checkpoint(changed, tmp_path / "run-9")
    assert "aggregator: 'fedavg' -> 'median'" in str(err.value)
    assert "model: 'auto' -> 'mlp'" in str(err.value)
    assert "num-server-rounds" in SAFE_TO_CHANGE and not changed_keys(
        cfg.to_flower(), {**cfg.to_flower(), "num-server-rounds": 99})


def test_resume_with_nothing_to_resume_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="resume='latest': no valid checkpoint"):
        find_checkpoint(RunConfig(output_dir=str(tmp_path), resume="latest"), tmp_path / "r")
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="no valid checkpoint there"):
        find_checkpoint(RunConfig(output_dir=str(tmp_path), resume=str(missing)), tmp_path)
    assert find_checkpoint(RunConfig(output_dir=str(tmp_path)), tmp_path) is None


def test_a_write_that_fails_leaves_the_previous_checkpoints(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    cfg = RunConfig(output_dir=str(tmp_path))
    save(tmp_path / "run-1", cfg, range(1, 3))

    def broken(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path / "run-1", cfg, range(3, 4))
    monkeypatch.undo()
    files = sorted(p.name for p in (tmp_path / "run-1" / "checkpoints").iterdir())
    assert files == ["round-000001.ckpt", "round-000002.ckpt"]
