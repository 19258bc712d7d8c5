"""Resuming a run from a checkpoint: which one, and whether the run config still fits it.

``resume`` in the run config: ``''`` (off), the path of a checkpoint file or of a run's
directory (its newest valid checkpoint), or ``'latest'``: the newest valid checkpoint of
any other run in ``output-dir`` whose run config matches this one. A resumed run must keep
every key that shapes the server state or the experiment (model, dataset, aggregation,
screening, DP, seeds, learning rates, ...); only the keys in ``SAFE_TO_CHANGE`` (how many
rounds, timeouts, node counts, outputs, tracking, the device) may differ, and a resume that
changes any other key is refused with every such key named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedapp.config import ConfigError, RunConfig
from fedapp.server.checkpoint import DIRECTORY, Checkpoint, CheckpointError, newest, read

SAFE_TO_CHANGE = frozenset({
    "num-server-rounds", "round-timeout", "wait-timeout", "min-available-nodes",
    "min-train-nodes", "fraction-evaluate", "output-dir", "tracking", "tracking-uri",
    "experiment", "parent-run-id", "registered-model", "promotion-margin", "resume",
    "checkpoint-keep", "health-max-failures", "health-cooldown",
    "device",  # where training runs (a resume may move to or from a GPU), not the state
})


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for every key outside ``SAFE_TO_CHANGE`` that differs."""
    keys = sorted((set(saved) | set(current)) - SAFE_TO_CHANGE)
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys
            if saved.get(k) != current.get(k)]


def find_checkpoint(cfg: RunConfig, run_dir: Path) -> Checkpoint | None:
    """The checkpoint ``cfg.resume`` names (None when off), checked against ``cfg``.
    ``run_dir`` is this run's own directory, never resumed from. Raises ``ConfigError``
    (nothing to resume, or an incompatible config) naming what was looked at."""
    if not cfg.resume:
        return None
    current = cfg.to_flower()
    if cfg.resume == "latest":
        found = _latest_matching(Path(cfg.output_path), run_dir, current)
        if found is None:
            raise ConfigError(f"resume='latest': no valid checkpoint in output-dir "
                              f"{cfg.output_path!r} of a run with this run config (keys that "
                              f"may differ: {', '.join(sorted(SAFE_TO_CHANGE))})")
        return found
    found = _at(Path(cfg.resume).expanduser())
    changed = changed_keys(found.run_config, current)
    if changed:
        raise ConfigError(f"resume={cfg.resume!r}: the run config differs from the "
                          f"checkpoint's in keys that make its state invalid: "
                          f"{'; '.join(changed)}")
    return found


def _at(path: Path) -> Checkpoint:
    """The checkpoint file ``path``, or the newest valid one of a run directory."""
    try:
        if path.is_file():
            return read(path)
        directory = path / DIRECTORY if (path / DIRECTORY).is_dir() else path
        found = newest(directory) if directory.is_dir() else None
    except CheckpointError as exc:
        raise ConfigError(f"resume: {exc}") from exc
    if found is None:
        raise ConfigError(f"resume={str(path)!r}: no valid checkpoint there")
    return found


def _latest_matching(output: Path, run_dir: Path, current: dict[str, Any]
                     ) -> Checkpoint | None:
    """The most recently written valid checkpoint of another run with the same config."""
    best: Checkpoint | None = None
    for directory in output.glob(f"run-*/{DIRECTORY}"):
        if directory.parent == run_dir:
            continue
        found = newest(directory)
        if found is None or changed_keys(found.run_config, current):
            continue
        if best is None or found.path.stat().st_mtime > best.path.stat().st_mtime:
            best = found
    return best
