"""The cells of ``robustness.py``: the Flower App, the scenario groups, the Flower runs.

A cell of the grid is (nodes n, Dirichlet alpha, Byzantine fraction, seed); each plays the
chosen rows x attacks. One ``flwr run`` plays every scenario of one group: (n, alpha, seed,
fraction, run-level attack), the run-level attack being a node-side one (the ClientApps of
the Byzantine nodes play it) or the first omniscient one (the server-side wrapper then plays
each omniscient attack per scenario); the clean scenarios of every fraction share one run per
(n, alpha, seed). The App is fedapp (ClientApp unchanged) with
``benchmarks/robustness_server.py`` as its ServerApp, which reads
``<output-dir>/scenarios.json`` and appends one JSON line per finished scenario to
``<output-dir>/results.jsonl``; it imports only fedapp and Flower.

Resumption (``--workdir``): a group's directory keeps its results; they are reused only when
the App's code (every file of fedapp and the ServerApp) and the group's run config are those
of this invocation (``key.json``), and per scenario only when its row's configuration is
unchanged. Otherwise they are moved aside as ``results.stale-N.jsonl`` and played again.

Two kinds of scenario are played once and shared (``share``): a clean run of a row that does
not depend on the fraction (``FRACTION_FREE``), and the oracle under attack (it averages the
honest nodes only, so what the attackers send does not change it: one attack stands for all).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import REPO
from robustness_presets import FRACTION_FREE, NODE_SIDE, OMNISCIENT, ORACLE, OURS, REFERENCE


@dataclass(frozen=True)
class Grid:
    """The settings every row x attack is played in: the product of these."""

    nodes: tuple[int, ...]
    alphas: tuple[float, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]


@dataclass
class Group:
    """One Flower run: a setting, its run-level attack and fraction, and its scenarios."""

    nodes: int
    alpha: float
    seed: int
    fraction: float  # the run config's attack-fraction (unused by a clean run)
    run_attack: str
    scenarios: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        attack = "omniscient" if self.run_attack in OMNISCIENT else self.run_attack
        what = "clean" if attack == "none" else f"f{self.fraction}-{attack}"
        return f"n{self.nodes}-a{self.alpha}-s{self.seed}/{what}"


def _replace_line(text: str, pattern: str, replacement: str) -> str:
    out, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise RuntimeError(f"pyproject.toml has no single line matching {pattern!r}")
    return out


def app_pyproject(pyproject: str) -> str:
    """fedapp's ``pyproject.toml`` for the benchmark's app: this benchmark's ServerApp
    (``robustness_server:app``) as the serverapp component, and that module in the FAB
    (``fab-include``; fedapp's own lists its package only)."""
    text = _replace_line(pyproject, r'^serverapp = ".*"$', 'serverapp = "robustness_server:app"')
    text = _replace_line(text, r'^fab-include = \[(.*)\]$',
                         r'fab-include = [\1, "robustness_server.py"]')
    return text.replace('name = "fedapp"', 'name = "fedapp-robustness"', 1)


def build_app(dest: Path) -> tuple[Path, str]:
    """A Flower App (fedapp + this benchmark's ServerApp, fedapp's ClientApp unchanged) and
    the digest of its files."""
    app = dest / "robustness-app"
    shutil.rmtree(app, ignore_errors=True)
    shutil.copytree(REPO / "fedapp", app / "fedapp",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "benchmarks" / "robustness_server.py", app / "robustness_server.py")
    (app / "pyproject.toml").write_text(app_pyproject((REPO / "pyproject.toml").read_text()))
    digest = hashlib.sha256()
    for path in sorted(p for p in app.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(app)).encode() + b"\0" + path.read_bytes())
    return app, digest.hexdigest()


def _scenario(g: Group, row: str, attack: str, fraction: float) -> dict[str, Any]:
    return {"id": f"{row}|{attack}|{fraction}", "row": row, "attack": attack,
            "fraction": fraction, "nodes": g.nodes, "alpha": g.alpha, "seed": g.seed,
            "config": OURS.get(row, {})}


def _attacked_rows(rows: list[str], attack: str, oracle_attack: str | None,
                   attack_fedavg: bool) -> list[str]:
    """The rows that play ``attack``: the oracle only its one attack, FedAvg (the reference)
    only when asked."""
    return [r for r in rows if (r != ORACLE or attack == oracle_attack)
            and (r != REFERENCE or attack_fedavg)]


def setting_groups(rows: list[str], attacks: list[str], fractions: tuple[float, ...],
                   setting: tuple[int, float, int], attack_fedavg: bool) -> list[Group]:
    """The Flower runs of one (nodes, alpha, seed): the clean run, then per fraction the
    omniscient run and one run per node-side attack."""
    n, alpha, seed = setting
    attacked = [a for a in attacks if a != "none"]
    omniscient = [a for a in attacked if a in OMNISCIENT]
    oracle_attack = (omniscient or attacked or [None])[0]
    out = []
    if "none" in attacks:
        clean = Group(n, alpha, seed, fractions[0], "none")
        clean.scenarios = [_scenario(clean, r, "none", f) for f in fractions for r in rows
                           if r not in FRACTION_FREE or f == fractions[0]]
        out.append(clean)
    for f in fractions:
        if omniscient:
            g = Group(n, alpha, seed, f, OMNISCIENT[0])
            g.scenarios = [_scenario(g, r, a, f) for a in omniscient
                           for r in _attacked_rows(rows, a, oracle_attack, attack_fedavg)]
            out.append(g)
        for a in (a for a in attacked if a in NODE_SIDE):
            g = Group(n, alpha, seed, f, a)
            g.scenarios = [_scenario(g, r, a, f)
                           for r in _attacked_rows(rows, a, oracle_attack, attack_fedavg)]
            out.append(g)
    return [g for g in out if g.scenarios]


def groups(rows: list[str], attacks: list[str], grid: Grid,
           attack_fedavg: bool = False) -> list[Group]:
    """Every Flower run of the grid: the smallest federations first, seed by seed, so that
    partial results cover whole settings."""
    return [g for seed in grid.seeds for n in grid.nodes for alpha in grid.alphas
            for g in setting_groups(rows, attacks, grid.fractions, (n, alpha, seed),
                                    attack_fedavg)]


def run_config(g: Group, out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The run config of one group's ``flwr run``."""
    return {"attack": g.run_attack, "attack-fraction": g.fraction, "output-dir": str(out),
            "num-server-rounds": settings["rounds"], "local-epochs": settings["local-epochs"],
            "model": settings["model"], "learning-rate": settings["learning-rate"],
            "batch-size": settings["batch-size"],
            "dataset": settings["dataset"], "partitioner": "dirichlet", "dirichlet-alpha": g.alpha,
            "seed": g.seed, "tracking": False, "fraction-evaluate": 0.0,
            "min-available-nodes": g.nodes, "min-train-nodes": g.nodes}


def share(cells: list[dict[str, Any]], rows: list[str], attacks: list[str],
          fractions: tuple[float, ...]) -> list[dict[str, Any]]:
    """``cells`` plus copies (marked ``copied-from``) of the scenarios played once for
    several cells: the clean runs of ``FRACTION_FREE`` rows for every fraction, and the
    oracle's attacked run for every attack."""
    out = list(cells)
    have = {(c["nodes"], c["alpha"], c["seed"], c["row"], c["attack"], c["fraction"])
            for c in cells}
    for c in cells:
        if c["attack"] == "none" and c["row"] in FRACTION_FREE:
            targets = [("none", f) for f in fractions]
        elif c["row"] == ORACLE and c["attack"] != "none":
            targets = [(a, c["fraction"]) for a in attacks if a != "none"]
        else:
            continue
        for attack, f in targets:
            key = (c["nodes"], c["alpha"], c["seed"], c["row"], attack, f)
            if key not in have:
                have.add(key)
                out.append({**c, "id": f"{c['row']}|{attack}|{f}", "attack": attack,
                            "fraction": f, "copied-from": c["id"]})
    return out
