"""The Flower runs of ``robustness.py``: a private managed SuperLink, one ``flwr run`` per
group (``robustness_cells``), resumption from a group's finished scenarios, progress lines
and the time estimate.

The estimate is a linear model calibrated on this 2-core machine (smoke runs of 3 rounds,
one row, one attack, 1 seed, load ~1 from other jobs; see ``robustness.py``'s docstring):
a scenario takes ``rounds x (ROUND_S + ROUND_S_PER_NODE x n) + SCENARIO_S`` seconds and a
Flower run ``RUN_S`` more (Ray and the App starting).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _superlink import private_superlink  # benchmarks/ is on sys.path
from common import loadavg
from robustness_cells import Group, build_app, run_config

from fedapp.sweep import flwr_cli as runner

ROUND_S = 0.15
ROUND_S_PER_NODE = 0.02
SCENARIO_S = 1.0
RUN_S = 28.0


def scenario_seconds(nodes: int, rounds: int) -> float:
    """The estimated seconds of one scenario."""
    return rounds * (ROUND_S + ROUND_S_PER_NODE * nodes) + SCENARIO_S


def estimate_seconds(plan: list[Group], rounds: int) -> float:
    """The estimated seconds of every group's Flower run."""
    return sum(RUN_S + len(g.scenarios) * scenario_seconds(g.nodes, rounds) for g in plan)


@dataclass
class Progress:
    """Scenarios finished so far, of all the invocation's, and the estimate of the rest."""

    total: int
    rounds: int
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    left_s: float = 0.0  # estimated seconds of the scenarios not finished yet

    def line(self, g: Group, row: dict[str, Any]) -> str:
        self.done += 1
        self.left_s -= scenario_seconds(g.nodes, self.rounds)
        return (f"  [{self.done}/{self.total}] n={g.nodes} a={g.alpha} s={g.seed} "
                f"f={row['fraction']} {row['row']:<16} {row['attack']:<14} acc "
                f"{row['final-accuracy']:.4f} ({row['seconds']:.0f}s; "
                f"{(time.perf_counter() - self.started) / 60:.1f} min, "
                f"~{max(self.left_s, 0) / 60:.0f} min left; load {loadavg()})")


def reporter(results_file: Path, g: Group, progress: Progress) -> Callable[[str], None]:
    """A callback printing one line per scenario newly finished in ``results_file``."""
    seen: set[str] = set()

    def report(_: str = "") -> None:
        if not results_file.exists():
            return
        for line in results_file.read_text().splitlines():
            row = json.loads(line)
            if row["id"] in seen:
                continue
            seen.add(row["id"])
            print(progress.line(g, row), flush=True)

    return report


def reusable(out: Path, key: dict[str, Any], scenarios: list[dict[str, Any]]) -> None:
    """Keep in ``out/results.jsonl`` only what this invocation may reuse: results of the same
    code and run config (``key``), of scenarios whose row configuration is unchanged; move
    the file aside (``results.stale-N.jsonl``) if anything else was there."""
    results, key_file = out / "results.jsonl", out / "key.json"
    if results.exists():
        same = key_file.exists() and json.loads(key_file.read_text()) == key
        config = {s["id"]: s["config"] for s in scenarios}
        lines = [line for line in results.read_text().splitlines() if line]
        keep = [line for line, row in zip(lines, map(json.loads, lines), strict=True)
                if same and config.get(row["id"], row["config"]) == row["config"]]
        if len(keep) < len(lines):
            stale = out / f"results.stale-{len(list(out.glob('results.stale-*')))}.jsonl"
            results.rename(stale)
            print(f"  {len(lines) - len(keep)} results in {out} ran other code or settings: "
                  f"moved to {stale.name}", flush=True)
            results.write_text("".join(f"{line}\n" for line in keep))
    key_file.write_text(json.dumps(key, indent=1))


def finished(results_file: Path) -> set[str]:
    """The ids of the scenarios in ``results_file`` (none if it does not exist)."""
    if not results_file.exists():
        return set()
    return {json.loads(line)["id"] for line in results_file.read_text().splitlines() if line}


def run_group(app: tuple[Path, str], env: dict[str, str], workdir: Path, g: Group,
              settings: dict[str, Any], timeout: float,
              progress: Progress) -> list[dict[str, Any]]:
    """One group's Flower run (retried once), resuming from its finished scenarios; the
    results of its scenarios."""
    out = workdir / g.name
    out.mkdir(parents=True, exist_ok=True)
    cfg = run_config(g, out, settings)
    reusable(out, {"code": app[1], "nodes": g.nodes,
                   "run-config": {k: v for k, v in cfg.items() if k != "output-dir"}},
             g.scenarios)
    (out / "scenarios.json").write_text(json.dumps({"num-nodes": g.nodes,
                                                    "scenarios": g.scenarios}))
    results_file = out / "results.jsonl"
    federation = f"num-supernodes={g.nodes} client-resources-num-cpus=1"
    report = reporter(results_file, g, progress)
    report()
    wanted = {s["id"] for s in g.scenarios}
    attempts = () if wanted <= finished(results_file) else (1, 2)
    if not attempts:
        print(f"  {g.name}: every scenario reused", flush=True)
    for attempt in attempts:
        try:
            runner.run_and_check(app[0], cfg, federation_config=federation, env=env,
                                 timeout=timeout, on_poll=report)
            break
        except (runner.RunFailed, TimeoutError) as exc:
            print(f"  run {g.name} failed (attempt {attempt}): {exc}", flush=True)
            if attempt == 2:
                raise
    report()
    return [row for row in map(json.loads, results_file.read_text().splitlines())
            if row["id"] in wanted]


def run_cells(plan: list[Group], settings: dict[str, Any], workdir: Path | None,
              timeout: float) -> list[dict[str, Any]]:
    """Every group's results, on a private managed SuperLink. The groups' files go to
    ``workdir`` when given (and the SuperLink's temporary directory is kept too), else
    to that temporary directory, removed at the end."""
    rounds = settings["rounds"]
    progress = Progress(total=sum(len(g.scenarios) for g in plan), rounds=rounds)
    progress.left_s = sum(len(g.scenarios) * scenario_seconds(g.nodes, rounds) for g in plan)
    cells: list[dict[str, Any]] = []
    with private_superlink(keep=workdir is not None) as (env, tmp):
        work = workdir or tmp
        work.mkdir(parents=True, exist_ok=True)
        app = build_app(work)
        for g in plan:
            print(f"Flower run {g.name}: attack={g.run_attack}, {len(g.scenarios)} scenarios",
                  flush=True)
            cells += run_group(app, env, work, g, settings, timeout, progress)
    return cells
