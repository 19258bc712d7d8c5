"""A job's progress bar, fed by the run's ``rounds.json`` (never by its log).

Contract with the ServerApp: after every round it rewrites
``<output-dir>/run-<run-id>/rounds.json`` atomically (temp file, then rename) with a
JSON list of rows, each with at least ``round`` (0 = the initial model's evaluation),
``server-accuracy`` and ``server-loss``. Each poll reads the newest row; while the file
does not exist (not written yet, or the SuperLink is on another machine) the bar shows
the run's status only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


def rounds_file(output_path: str | Path, run_id: int) -> Path:
    """Where the ServerApp of run ``run_id`` writes its per-round rows."""
    return Path(output_path) / f"run-{run_id}" / "rounds.json"


def latest_round(path: Path) -> dict[str, Any] | None:
    """The newest row (highest ``round``) of a ``rounds.json``, or ``None`` when there is
    none yet: no file, an unreadable or partially written one, or no valid row."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(rows, list):
        return None
    valid = [r for r in rows if isinstance(r, dict) and _is_round(r.get("round"))]
    if not valid:
        return None
    return dict(max(reversed(valid), key=lambda r: int(r["round"])))


def _is_round(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value) and int(value) == value and value >= 0


def describe(row: dict[str, Any]) -> str:
    """``acc 0.9417 loss 0.1816`` for a row (the parts it has)."""
    parts = []
    for key, name in (("server-accuracy", "acc"), ("server-loss", "loss")):
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{name} {float(value):.4f}")
    return " ".join(parts)


def round_progress(label: str, num_rounds: int, path: Path,
                   ) -> tuple[Progress, Callable[[str], None]]:
    """A rich progress bar of the run's rounds and the ``on_poll`` callback that refreshes
    it (for ``flwr_cli.wait``): the status always, the newest round when there is one."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("round {task.completed:.0f}/{task.total:.0f}"),
                        TextColumn("{task.fields[metrics]}"), TimeElapsedColumn())
    task: TaskID = progress.add_task(label, total=num_rounds, metrics="")

    def on_poll(status: str) -> None:
        row = latest_round(path)
        if row is not None:
            progress.update(task, completed=min(int(row["round"]), num_rounds),
                            metrics=describe(row))
        progress.update(task, description=escape(f"{label} [{status}]"))  # not markup

    return progress, on_poll
