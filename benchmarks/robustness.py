"""Robustness benchmark: our aggregators vs Flower's built-ins under every attack, over a grid
of federations, on Flower.

    python benchmarks/robustness.py --workdir /tmp/rgrid   # default subset, ~45 min
    python benchmarks/robustness.py --seeds 0,1 --workdir /tmp/rgrid   # + a seed, ~45 min more
    python benchmarks/robustness.py --full-grid --dry-run  # the issue's 3x3x3 grid, 3 seeds
    python benchmarks/robustness.py --quick         # smoke: 2 rows, 1 attack, 3 rounds, /tmp
    python benchmarks/robustness.py --from-json R.json --publish   # R's report into docs/
    python benchmarks/robustness.py --nodes 20 --alphas 0.1 --fractions 0.3 --seeds 0,1 \\
        --rows ours-recommended,flwr-multikrum --attacks alie-adaptive

A cell is (nodes n, Dirichlet alpha, Byzantine fraction, seed); every cell plays the rows
(our ``RobustStrategy`` configurations, Flower's built-in FedAvg, MultiKrum, FedMedian,
FedTrimmedAvg, optionally Bulyan, and the oracle, FedAvg over the honest nodes only) against
the attacks of ``fedapp.attacks.ATTACKS`` (by default all but ``robustness_presets.LEFT_OUT``;
``--attacks all``). Digits (``--dataset synthetic``: generated hospitals, a check beyond
the grid's data), fixed rounds: every scenario is a complete federated training on
Flower's simulation engine with fedapp's unchanged ClientApp. The attackers are the same for
every row: the omniscient ones are played by ``fedapp.attacks.threat_model.ThreatModel``
around whichever strategy runs, the node-side ones ("data" / "model" kinds) by the
ClientApp's attack mod. The report gives per configuration (n, alpha, fraction) each row's
worst case over the attacks as mean and min over seeds, and as a share of the same seed's
clean FedAvg ("retained"); the worst case over the whole grid; the findings against the
targets; and our row with the best worst case over the whole grid.

One ``flwr run`` plays every scenario of one (n, alpha, seed, fraction, run-level attack)
group (``robustness_cells``): the benchmark packages ``benchmarks/robustness_server.py`` (a
ServerApp looping over scenarios) with ``fedapp`` into a temporary Flower App and submits it
to a private managed SuperLink. A failed or interrupted invocation resumes from the finished
scenarios under ``--workdir``, when their code and settings are unchanged.

Time, measured on this 2-core machine shared with other jobs (load 2-25): a Flower run costs
~14 s to start plus ~10-20 s of warm-up in its first scenario; after that a scenario takes
0.2-0.4 s per round at n=10 and 0.4-1.1 s at n=40 (3-round smoke at alpha 0.3, 20%, one row
+ the FedAvg reference, alie-adaptive: 64 s, 74 s and 134 s for n=10, 20, 40 under load
5-25; 10 rounds at alpha 0.1, 30%, 3 rows, 2 attacks: 70 s for n=10, 122 s for n=40 under
load 2-6). ``robustness_runs`` turns that into the estimate printed before starting
(``--dry-run`` prints only that; ``--budget-minutes`` refuses a plan above it). The default
subset (n 10/20/40, alpha 0.1/1.0, 20%/30%, seed 0, 8 rounds, 5 attacks, 6 rows: 306
scenarios in 30 Flower runs) is estimated at 44 min; each further seed as much again
(resumed runs are reused); 10 rounds ~51 min; the full grid (27 configurations x 3 seeds)
~290 min. Attacks added to ``fedapp.attacks`` add to that: see the printed estimate.

Outputs (the default subset or more, at least the default rounds): ``benchmarks/results/
robustness.json``, ``docs/robustness.md`` and ``docs/robustness.png``; other runs write to
a temporary directory (or ``--out-dir``), unless ``--publish``. Another ``--dataset`` names
its files ``robustness-<dataset>.*``. Nothing here asserts anything.

Modules: ``robustness_presets`` (rows, attacks, grid), ``robustness_cells`` (the App and the
groups), ``robustness_runs`` (the Flower runs, resumption, estimate), ``robustness_report``
(summary, findings), ``robustness_doc`` (markdown, plot); ``robustness_server`` is the
ServerApp.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import DOCS, RESULTS, command_line, loadavg, machine, output_paths, versions, write_json
from robustness_cells import Grid
from robustness_presets import (
    ALL_ROWS,
    ALPHAS,
    ATTACK_COLUMNS,
    BATCH_SIZE,
    DATASETS,
    DEFAULT_ATTACKS,
    DEFAULT_ROWS,
    FRACTIONS,
    GRID_ALPHAS,
    GRID_FRACTIONS,
    GRID_NODES,
    GRID_SEEDS,
    LEARNING_RATE,
    LOCAL_EPOCHS,
    NODES,
    OURS,
    QUICK_ATTACKS,
    QUICK_GRID,
    QUICK_ROUNDS,
    QUICK_ROWS,
    REFERENCE,
    ROUNDS,
    SEEDS,
)

OUTPUTS = ("robustness.json", "robustness.md", "robustness.png")


def output_names(dataset: str) -> tuple[str, ...]:
    """``OUTPUTS`` for the grid's dataset; ``robustness-<dataset>.*`` for another."""
    return OUTPUTS if dataset == DATASETS[0] else tuple(
        name.replace("robustness", f"robustness-{dataset}", 1) for name in OUTPUTS)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run in /tmp")
    p.add_argument("--rows", help=f"comma list of {', '.join(ALL_ROWS)}")
    p.add_argument("--bulyan", action="store_true", help="add Flower's Bulyan to the rows")
    p.add_argument("--attacks", help=f"'all' or a comma list of {', '.join(ATTACK_COLUMNS)}")
    p.add_argument("--attack-fedavg", action="store_true",
                   help="Flower FedAvg plays the attacks too (default: clean only)")
    for name, default in (("nodes", NODES), ("alphas", ALPHAS), ("fractions", FRACTIONS),
                          ("seeds", SEEDS)):
        p.add_argument(f"--{name}", help=f"comma list, default {','.join(map(str, default))}")
    p.add_argument("--full-grid", action="store_true",
                   help="the issue's grid: nodes 10,20,40, alphas 0.1,0.3,1.0, fractions "
                        "0.1,0.2,0.3, seeds 0,1,2 (each flag above overrides its part)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--local-epochs", type=int, default=LOCAL_EPOCHS)
    p.add_argument("--model", default="mlp", choices=("mlp", "cnn", "auto"))
    p.add_argument("--dataset", default=DATASETS[0], choices=DATASETS,
                   help="digits (the grid's), or synthetic: generated hospitals "
                        "(fedapp/data/synthetic.py, pyproject's synthetic-* settings)")
    p.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--timeout", type=float, default=5400, help="seconds per Flower run")
    p.add_argument("--budget-minutes", type=float,
                   help="refuse to start when the estimate is above this")
    p.add_argument("--dry-run", action="store_true", help="print the plan and estimate only")
    p.add_argument("--workdir", type=Path, help="keep runs here (resumes a killed run)")
    p.add_argument("--from-json", type=Path, help="rewrite the report from a results file")
    p.add_argument("--out-dir", type=Path)
    p.add_argument("--publish", action="store_true",
                   help="write benchmarks/results and docs even for a subset of the grid "
                        "(file names: output_names)")
    return p


def _list(value: str | None, default: Sequence[Any], kind: type) -> tuple[Any, ...]:
    return tuple(kind(x) for x in value.split(",")) if value else tuple(default)


def make_grid(args: argparse.Namespace) -> Grid:
    """The grid: the flags, else ``--quick``'s, ``--full-grid``'s or the default subset."""
    full = {"nodes": GRID_NODES, "alphas": GRID_ALPHAS, "fractions": GRID_FRACTIONS,
            "seeds": GRID_SEEDS}
    base = QUICK_GRID if args.quick else full if args.full_grid else {
        "nodes": NODES, "alphas": ALPHAS, "fractions": FRACTIONS, "seeds": SEEDS}
    return Grid(_list(args.nodes, base["nodes"], int), _list(args.alphas, base["alphas"], float),
                _list(args.fractions, base["fractions"], float),
                _list(args.seeds, base["seeds"], int))


def make_plan(p: argparse.ArgumentParser,
              args: argparse.Namespace) -> tuple[list[str], list[str], Grid, dict[str, Any]]:
    """The rows (Flower's FedAvg always: the reference), the attacks ('none' always, first),
    the grid and the settings (with ``full``: the repository's outputs)."""
    rows = args.rows.split(",") if args.rows else list(QUICK_ROWS if args.quick else DEFAULT_ROWS)
    rows += ["flwr-bulyan"] if args.bulyan and "flwr-bulyan" not in rows else []
    attacks = (list(ATTACK_COLUMNS) if args.attacks == "all" else args.attacks.split(",")
               if args.attacks else list(QUICK_ATTACKS if args.quick else DEFAULT_ATTACKS))
    bad = [r for r in rows if r not in ALL_ROWS] + [a for a in attacks if a not in ATTACK_COLUMNS]
    if bad:
        p.error(f"unknown rows / attacks: {bad}; rows: {list(ALL_ROWS)}, "
                f"attacks: {list(ATTACK_COLUMNS)}")
    rows += [] if REFERENCE in rows else [REFERENCE]
    attacks = ["none", *(a for a in attacks if a != "none")]
    grid = make_grid(args)
    if not all((grid.nodes, grid.alphas, grid.fractions, grid.seeds)):
        p.error("the grid is empty")
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    covers = all(set(mine) >= set(default) for mine, default in (
        (rows, DEFAULT_ROWS), (attacks, DEFAULT_ATTACKS), (grid.nodes, NODES),
        (grid.alphas, ALPHAS), (grid.fractions, FRACTIONS), (grid.seeds, SEEDS)))
    settings = {"rounds": rounds, "local-epochs": args.local_epochs, "model": args.model,
                "learning-rate": args.learning_rate, "batch-size": args.batch_size,
                "attack-fedavg": args.attack_fedavg, "dataset": args.dataset}
    settings["full"] = (not args.quick and covers and rounds >= ROUNDS and (
        args.local_epochs, args.model, args.learning_rate, args.batch_size, args.dataset) == (
        LOCAL_EPOCHS, "mlp", LEARNING_RATE, BATCH_SIZE, DATASETS[0]))
    return rows, attacks, grid, settings


def measure(plan: tuple[list[str], list[str], Grid, dict[str, Any]], args: argparse.Namespace,
            argv: list[str] | None) -> dict[str, Any] | None:
    """Print the plan's size and estimate; unless ``--dry-run`` or over ``--budget-minutes``,
    run every scenario on Flower: the results without the summary."""
    from robustness_cells import groups, share
    from robustness_runs import estimate_seconds, run_cells

    rows, attacks, grid, settings = plan
    flower_runs = groups(rows, attacks, grid, settings["attack-fedavg"])
    minutes = estimate_seconds(flower_runs, settings["rounds"]) / 60
    configs = len(grid.nodes) * len(grid.alphas) * len(grid.fractions)
    print(f"robustness benchmark: {len(rows)} rows x {len(attacks) - 1} attacks (+ clean) over "
          f"{configs} configurations x {len(grid.seeds)} seeds = "
          f"{sum(len(g.scenarios) for g in flower_runs)} scenarios in {len(flower_runs)} Flower "
          f"runs; {settings['rounds']} rounds x {settings['local-epochs']} local epochs; "
          f"estimate {minutes:.0f} min on 2 cores; load {loadavg()}", flush=True)
    if args.budget_minutes is not None and minutes > args.budget_minutes:
        sys.exit(f"estimate {minutes:.0f} min is above --budget-minutes {args.budget_minutes:g}"
                 ": drop seeds, configurations, attacks or rounds")
    if args.dry_run:
        for g in flower_runs:
            print(f"  {g.name}: {len(g.scenarios)} scenarios")
        return None
    t0 = time.perf_counter()
    cells = share(run_cells(flower_runs, settings, args.workdir, args.timeout), rows, attacks,
                  grid.fractions)
    facts = machine()
    return {"command": command_line("robustness.py", argv),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpus": facts["cpus"], "loadavg-end": loadavg(),
                        "platform": facts["platform"]},
            "versions": versions("flwr", "torch"), "dataset": settings["dataset"],
            "settings": settings, "grid": {"nodes": list(grid.nodes),
                                           "alphas": list(grid.alphas),
                                           "fractions": list(grid.fractions),
                                           "seeds": list(grid.seeds)},
            "rows": rows, "attacks": attacks, "attack-fedavg": settings["attack-fedavg"],
            "estimate-minutes": minutes,
            "ours": {r: OURS[r] for r in rows if r in OURS}, "cells": cells,
            "wall-seconds": time.perf_counter() - t0}


def write_outputs(results: dict[str, Any], json_path: Path, doc_path: Path,
                  png_path: Path) -> None:
    """Summary, recommended row and findings into ``results``; the JSON, plot and doc."""
    from robustness_doc import plot, write_doc
    from robustness_report import findings, recommend, summarise

    results["summary"] = summarise(results["cells"], results["rows"], results["attacks"])
    results["recommended"] = recommend(results["summary"], results["rows"])
    results["findings"] = findings(results)
    write_json(json_path, results)
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    plot(results, png_path)
    write_doc(results, doc_path, png_path, json_path)


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        full = results["settings"].get("full", False)
    else:
        plan = make_plan(p, args)
        full = plan[3]["full"]
        measured = measure(plan, args, argv)
        if measured is None:
            return
        results = measured
    names = output_names(results["dataset"])
    json_path, doc_path, png_path = output_paths(
        names, [RESULTS / names[0], DOCS / names[1], DOCS / names[2]],
        full=full or args.publish, out_dir=args.out_dir, prefix="fedapp-robustness-bench-")
    write_outputs(results, json_path, doc_path, png_path)
    print(f"wrote {json_path}, {doc_path}, {png_path}", flush=True)
    for line in results["findings"]:
        print(" -", line)


if __name__ == "__main__":
    main()
