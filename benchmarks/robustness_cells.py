"""The cells of ``robustness.py``: the Flower App, the scenario groups, the Flower runs.

One ``flwr run`` plays every row of one (fraction, node-side attack) group: the App is
fedapp (ClientApp unchanged) with ``benchmarks/robustness_server.py`` as its ServerApp,
which reads ``<output-dir>/scenarios.json`` and appends one JSON line per finished
scenario to ``<output-dir>/results.jsonl``. The server side is self-contained: it imports
only fedapp and Flower, so nothing else from ``benchmarks/`` is copied into the App.
A group's directory is kept under ``--workdir``, so a failed or interrupted group resumes
from the scenarios already in its ``results.jsonl``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _superlink import private_superlink  # benchmarks/ is on sys.path
from common import REPO, loadavg
from robustness_presets import NODE_SIDE, OURS, SEED

from fedapp.sweep import flwr_cli as runner

Group = tuple[float, str, list[dict[str, Any]]]  # (fraction, run-level attack, scenarios)


@dataclass
class Progress:
    """Cells finished so far, of all the invocation's cells (for the progress lines)."""

    total: int
    done: int = 0


def build_app(dest: Path) -> Path:
    """A Flower App: fedapp + this benchmark's ServerApp, fedapp's ClientApp unchanged."""
    app = dest / "robustness-app"
    shutil.rmtree(app, ignore_errors=True)
    shutil.copytree(REPO / "fedapp", app / "fedapp",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "benchmarks" / "robustness_server.py", app / "robustness_server.py")
    pyproject = (REPO / "pyproject.toml").read_text()
    pyproject, count = re.subn(r'(?m)^serverapp = ".*"$', 'serverapp = "robustness_server:app"',
                               pyproject)
    if count != 1:
        raise RuntimeError("pyproject.toml has no single `serverapp = ...` component line")
    (app / "pyproject.toml").write_text(pyproject.replace('name = "fedapp"',
                                                          'name = "fedapp-robustness"', 1))
    return app


def groups(rows: list[str], attacks: list[str], fractions: list[float]) -> list[Group]:
    """(fraction, run-level attack, scenarios) per Flower run."""
    out = []
    for fraction in fractions:
        by_run: dict[str, list[str]] = {}
        for attack in attacks:
            run_attack = attack if attack in NODE_SIDE or attack == "none" else "alie"
            by_run.setdefault(run_attack, []).append(attack)
        for run_attack, cols in by_run.items():
            scenarios = [{"id": f"{row}|{attack}|{fraction}", "row": row, "attack": attack,
                          "fraction": fraction, "config": OURS.get(row, {})}
                         for attack in cols for row in rows]
            out.append((fraction, run_attack, scenarios))
    # The omniscient attacks (the strongest) first, so partial results say the most.
    return sorted(out, key=lambda g: (g[1] != "alie", g[0]))


def run_config(fraction: float, run_attack: str, out: Path,
               settings: dict[str, Any]) -> dict[str, Any]:
    """The run config of one group's ``flwr run``."""
    return {"attack": run_attack, "attack-fraction": fraction, "output-dir": str(out),
            "num-server-rounds": settings["rounds"], "local-epochs": settings["local-epochs"],
            "model": settings["model"], "learning-rate": settings["learning-rate"],
            "batch-size": settings["batch-size"],
            "partitioner": "dirichlet", "dirichlet-alpha": 0.5,
            "seed": SEED, "tracking": False, "fraction-evaluate": 0.0,
            "min-available-nodes": settings["nodes"], "min-train-nodes": settings["nodes"]}


def reporter(results_file: Path, fraction: float, progress: Progress,
             ) -> Callable[[str], None]:
    """A callback printing one line per cell newly finished in ``results_file``."""
    seen: set[str] = set()

    def report(_: str = "") -> None:
        if not results_file.exists():
            return
        for line in results_file.read_text().splitlines():
            row = json.loads(line)
            if row["id"] in seen:
                continue
            seen.add(row["id"])
            progress.done += 1
            print(f"  [{progress.done}/{progress.total}] {row['row']:<16} "
                  f"{row['attack']:<14} f={fraction}: acc {row['final-accuracy']:.4f} "
                  f"({row['seconds']:.0f}s, load {loadavg()})", flush=True)

    return report


def run_group(app: Path, env: dict[str, str], workdir: Path, group: Group,
              settings: dict[str, Any], timeout: float,
              progress: Progress) -> list[dict[str, Any]]:
    """One group's Flower run (retried once), resuming from its finished cells; its cells."""
    fraction, run_attack, scenarios = group
    out = workdir / f"f{fraction}-{run_attack}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenarios.json").write_text(json.dumps({"num-nodes": settings["nodes"],
                                                    "scenarios": scenarios}))
    results_file = out / "results.jsonl"
    cfg = run_config(fraction, run_attack, out, settings)
    federation = f"num-supernodes={settings['nodes']} client-resources-num-cpus=1"
    report = reporter(results_file, fraction, progress)
    report()
    for attempt in (1, 2):
        try:
            runner.run_and_check(app, cfg, federation_config=federation, env=env,
                                 timeout=timeout, on_poll=report)
            break
        except (runner.RunFailed, TimeoutError) as exc:
            print(f"  run for {run_attack} at {fraction} failed (attempt {attempt}): {exc}",
                  flush=True)
            if attempt == 2:
                raise
    report()
    return [json.loads(line) for line in results_file.read_text().splitlines()]


def run_cells(plan: list[Group], settings: dict[str, Any], workdir: Path | None,
              timeout: float) -> list[dict[str, Any]]:
    """Every group's cells, on a private managed SuperLink. The groups' files go to
    ``workdir`` when given (and the SuperLink's temporary directory is kept too), else
    to that temporary directory, removed at the end."""
    progress = Progress(total=sum(len(s) for _, _, s in plan))
    cells: list[dict[str, Any]] = []
    with private_superlink(keep=workdir is not None) as (env, tmp):
        work = workdir or tmp
        work.mkdir(parents=True, exist_ok=True)
        app = build_app(work)
        for group in plan:
            print(f"Flower run: attack={group[1]} fraction={group[0]}, "
                  f"{len(group[2])} scenarios", flush=True)
            cells += run_group(app, env, work, group, settings, timeout, progress)
    return cells
