"""Robustness benchmark: our aggregators vs Flower's built-ins under every attack, on Flower.

    python benchmarks/robustness.py                 # full table (see docs/robustness.md)
    python benchmarks/robustness.py --quick         # smoke: 2 rows, 2 attacks, 3 rounds, /tmp
    python benchmarks/robustness.py --rows ours-nnm-tm,flwr-multikrum --attacks none,alie

Rows are aggregators: our ``RobustStrategy`` configurations (``OURS``) and Flower's
built-in FedAvg, MultiKrum, FedMedian, FedTrimmedAvg and Bulyan. Columns are the attacks of
``fedapp.attacks`` (node-side: label flip, sign flip, Gaussian, scaling; omniscient and
colluding: ALIE, IPM, min-max, min-sum and the adaptive ALIE / IPM, which pick their scale each
round to do the most damage to the defense in use, the whole defense for our rows, and
min-max-noisy, min-max whose copies are made distinct to escape a copy check) plus the
worst case, at 20% and 30% Byzantine nodes. Digits, Dirichlet alpha = 0.5, 20 simulated nodes,
fixed rounds and seed: every cell is a complete federated training on Flower's simulation
engine with fedapp's unchanged ClientApp. The attackers are the same for every row: the
omniscient ones are played by ``fedapp.threat_model.ThreatModel`` wrapped around whichever
strategy runs, the node-side ones by the ClientApp's attack mod.

To keep Ray's start-up out of the 200+ cells, one ``flwr run`` plays every row of one
(fraction, node-side attack) group: the benchmark packages ``benchmarks/robustness_server.py``
(a ServerApp looping over scenarios) with ``fedapp`` into a temporary Flower App and submits
it to a private managed SuperLink. A failed or interrupted group resumes where it stopped.

Outputs (full run): ``benchmarks/results/robustness.json``, ``docs/robustness.md`` and
``docs/robustness.png``; other runs write to a temporary directory (or ``--out-dir``).
Each cell is the final accuracy on the server's held-out test split; "retained" is that
accuracy over clean FedAvg's (Flower's FedAvg without attack). Nothing here asserts anything.

Modules: ``robustness_presets`` (rows, attacks, setting), ``robustness_cells`` (the App,
the scenario groups, the Flower runs and their resumption), ``robustness_report`` (summary,
findings, the markdown and the plot); ``robustness_server`` is the ServerApp.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import DOCS, RESULTS, command_line, loadavg, machine, output_paths, versions, write_json
from robustness_presets import (
    ALL_ROWS,
    ATTACK_COLUMNS,
    BATCH_SIZE,
    FRACTIONS,
    LEARNING_RATE,
    LOCAL_EPOCHS,
    NUM_NODES,
    OURS,
    QUICK_ATTACKS,
    QUICK_FRACTIONS,
    QUICK_ROUNDS,
    QUICK_ROWS,
    ROUNDS,
)

OUTPUTS = ("robustness.json", "robustness.md", "robustness.png")


@dataclass
class Plan:
    """The table this invocation fills: rows, attack columns, fractions and the setting."""

    rows: list[str]
    attacks: list[str]
    fractions: list[float]
    settings: dict[str, Any]
    full: bool  # every row, attack and fraction, not --quick: the repository's outputs


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run in /tmp")
    p.add_argument("--rows", help=f"comma list of {', '.join(ALL_ROWS)}")
    p.add_argument("--attacks", help=f"comma list of {', '.join(ATTACK_COLUMNS)}")
    p.add_argument("--fractions", help="comma list, default 0.2,0.3")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--local-epochs", type=int, default=LOCAL_EPOCHS)
    p.add_argument("--nodes", type=int, default=NUM_NODES)
    p.add_argument("--model", default="mlp", choices=("mlp", "cnn", "auto"))
    p.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--timeout", type=float, default=5400, help="seconds per Flower run")
    p.add_argument("--workdir", type=Path, help="keep runs here (resumes a killed run)")
    p.add_argument("--from-json", type=Path, help="rewrite the report from a results file")
    p.add_argument("--out-dir", type=Path)
    return p


def make_plan(p: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    """The rows (Flower's FedAvg always: the reference), the attacks ('none' always, first),
    the fractions and the setting; ``--quick`` picks a small table and 3 rounds."""
    rows = args.rows.split(",") if args.rows else list(QUICK_ROWS if args.quick else ALL_ROWS)
    attacks = args.attacks.split(",") if args.attacks else list(
        QUICK_ATTACKS if args.quick else ATTACK_COLUMNS)
    fractions = ([float(x) for x in args.fractions.split(",")] if args.fractions
                 else list(QUICK_FRACTIONS if args.quick else FRACTIONS))
    bad = [r for r in rows if r not in ALL_ROWS] + [a for a in attacks if a not in ATTACK_COLUMNS]
    if bad:
        p.error(f"unknown rows / attacks: {bad}; rows: {list(ALL_ROWS)}, "
                f"attacks: {list(ATTACK_COLUMNS)}")
    if "flwr-fedavg" not in rows:
        rows.append("flwr-fedavg")  # the reference
    if "none" not in attacks:
        attacks.insert(0, "none")
    full = (not args.quick and set(rows) == set(ALL_ROWS) and set(attacks) ==
            set(ATTACK_COLUMNS) and set(fractions) == set(FRACTIONS))
    rounds = QUICK_ROUNDS if args.quick and args.rounds == ROUNDS else args.rounds
    settings = {"nodes": args.nodes, "rounds": rounds, "local-epochs": args.local_epochs,
                "model": args.model, "learning-rate": args.learning_rate,
                "batch-size": args.batch_size}
    return Plan(rows, attacks, fractions, settings, full)


def measure(plan: Plan, workdir: Path | None, timeout: float,
            argv: list[str] | None) -> dict[str, Any]:
    """Run every cell on Flower; the results without the summary."""
    from robustness_cells import groups, run_cells

    t0 = time.perf_counter()
    flower_runs = groups(plan.rows, plan.attacks, plan.fractions)
    settings = plan.settings
    print(f"robustness benchmark: {len(plan.rows)} rows x {len(plan.attacks)} attacks x "
          f"{len(plan.fractions)} fractions = {sum(len(s) for _, _, s in flower_runs)} runs "
          f"in {len(flower_runs)} Flower runs; {settings['rounds']} rounds, "
          f"{settings['nodes']} nodes; load {loadavg()}", flush=True)
    cells = run_cells(flower_runs, settings, workdir, timeout)
    facts = machine()
    return {"command": command_line("robustness.py", argv),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpus": facts["cpus"], "loadavg-end": loadavg(),
                        "platform": facts["platform"]},
            "versions": versions("flwr", "torch"), "dataset": "digits",
            "settings": settings, "rows": plan.rows, "attacks": plan.attacks,
            "fractions": plan.fractions,
            "ours": {r: OURS[r] for r in plan.rows if r in OURS}, "cells": cells,
            "wall-seconds": time.perf_counter() - t0}


def write_outputs(results: dict[str, Any], json_path: Path, doc_path: Path,
                  png_path: Path) -> None:
    """Summary, recommended row and findings into ``results``; the JSON, plot and doc."""
    from robustness_report import findings, plot, recommend, summarise, write_doc

    results["summary"] = summarise(results["cells"], results["rows"], results["attacks"],
                                   results["fractions"])
    results["recommended"] = recommend(results["summary"], results["rows"])
    results["findings"] = findings(results)
    write_json(json_path, results)
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    plot(results, png_path)
    write_doc(results, doc_path, png_path, json_path)


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    plan = make_plan(p, args)
    json_path, doc_path, png_path = output_paths(
        OUTPUTS, [RESULTS / OUTPUTS[0], DOCS / OUTPUTS[1], DOCS / OUTPUTS[2]], full=plan.full,
        out_dir=args.out_dir, prefix="fedapp-robustness-bench-")
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
    else:
        results = measure(plan, args.workdir, args.timeout, argv)
    write_outputs(results, json_path, doc_path, png_path)
    print(f"wrote {json_path}, {doc_path}, {png_path}", flush=True)
    for line in results["findings"]:
        print(" -", line)


if __name__ == "__main__":
    main()
