"""Uplink compression benchmark: real Flower simulations, bytes on the wire vs accuracy.

    python benchmarks/compression.py            # full: ~30 min on 2 cores
    python benchmarks/compression.py --quick    # smoke: 2 codecs, 3 rounds, outputs in /tmp

Every run is a real ``flwr run`` of this app (through :mod:`fedapp.sweep.flwr_cli`) on a
private managed SuperLink (its own ``FLWR_HOME`` and ports, stopped at the end): digits, 10
simulated nodes with one CPU each, a fixed number of rounds and seed, tracking off. For
each model (the default small CNN and a ~1.07M-parameter MLP) and each codec it reads the
run's ``rounds.json``: server accuracy, the real uplink / downlink array bytes per round
(``ArrayRecord.count_bytes()``, as the strategy counts them), the encode time the nodes
report, the round time; the server's decode time comes from the ServerApp log (the
strategy's aggregated train MetricRecord). In-process it then measures what the runs cannot:
Flower's per-message framing (a reply serialised with ``message_to_proto``), the local
training time of one node, and codec throughput at d = 1e6 and 1e7.

Outputs (full run): ``benchmarks/results/compression.json``, ``docs/compression.md``,
``docs/compression_accuracy_vs_bytes.png``. A run with ``--quick`` or with a subset of
models / codecs writes the same three files to a temporary directory (or ``--out-dir``).
Benchmarks are not tests: nothing here asserts on times.

Modules: ``compression_presets`` (models, codecs, setting), ``compression_runs`` (the
Flower runs), ``compression_inprocess`` (framing, local training, throughput),
``compression_report`` / ``compression_findings`` / ``compression_plot`` (the outputs).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import DOCS, RESULTS, command_line, loadavg, output_paths, versions, write_json
from compression_presets import (
    BIG_CALIBRATION,
    BIG_EPOCHS,
    BIG_LR,
    CODECS,
    FEDERATION,
    MODELS,
    NUM_NODES,
    QUICK_CODECS,
    QUICK_ROUNDS,
    ROUNDS,
    SEED,
)

OUTPUTS = ("compression.json", "compression.md", "compression_accuracy_vs_bytes.png")


@dataclass
class Plan:
    """What one invocation measures (or, with ``--from-json``, reports)."""

    models: list[str]
    codecs: list[str]
    rounds: int
    big_lr: float
    big_epochs: int
    quick: bool
    command: str


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: codecs {', '.join(QUICK_CODECS)}, {QUICK_ROUNDS} rounds")
    p.add_argument("--rounds", type=int, help=f"default {ROUNDS} ({QUICK_ROUNDS} quick)")
    p.add_argument("--models", default=",".join(MODELS), help="comma list of small, big")
    p.add_argument("--codecs", help=f"comma list of {', '.join(CODECS)} (default all)")
    p.add_argument("--big-lr", type=float, default=BIG_LR)
    p.add_argument("--big-epochs", type=int, default=BIG_EPOCHS)
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--timeout", type=float, default=900, help="seconds per Flower run")
    p.add_argument("--from-json", type=Path,
                   help="rewrite the report from an earlier results file: its Flower runs "
                        "and (if present) its in-process measurements")
    p.add_argument("--out-dir", type=Path,
                   help="where the json, md and png go (default: the repo's paths for "
                        "the full benchmark, a temporary directory otherwise)")
    return p


def plan_and_paths(p: argparse.ArgumentParser, args: argparse.Namespace,
                   ) -> tuple[Plan, list[Path]]:
    """The models, codecs ('off' first: ratios are against it) and rounds; where the
    json, md and png go."""
    models = args.models.split(",")
    codecs = (args.codecs.split(",") if args.codecs else
              list(QUICK_CODECS) if args.quick else list(CODECS))
    bad = [m for m in models if m not in MODELS] + [c for c in codecs if c not in CODECS]
    if bad:
        p.error(f"unknown models / codecs: {bad}")
    if "off" in codecs:
        codecs.remove("off")
        codecs.insert(0, "off")
    full = (not args.quick and set(models) == set(MODELS) and set(codecs) == set(CODECS)
            and (args.big_lr, args.big_epochs) == (BIG_LR, BIG_EPOCHS))
    paths = output_paths(OUTPUTS, [RESULTS / OUTPUTS[0], DOCS / OUTPUTS[1], DOCS / OUTPUTS[2]],
                         full=full, out_dir=args.out_dir, prefix="fedapp-compression-bench-")
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    plan = Plan(models, codecs, rounds, args.big_lr, args.big_epochs, args.quick,
                command_line("compression.py"))
    return plan, paths


def adopt(plan: Plan, earlier: dict[str, Any]) -> list[dict[str, Any]]:
    """Take an earlier results file's runs and settings into ``plan``; its runs."""
    from compression_runs import add_ratios

    runs = earlier["runs"]
    plan.rounds = earlier["rounds"]
    plan.models = [m for m in MODELS if any(r["model"] == m for r in runs)]
    plan.codecs = [c for c in CODECS if any(r["codec"] == c for r in runs)]
    add_ratios(runs)
    big = next((r["run-config"] for r in runs if r["model"] == "big"), None)
    if big is not None:
        plan.big_lr, plan.big_epochs = big["learning-rate"], big["local-epochs"]
    plan.command = earlier.get("command", plan.command)
    return runs


def flower_runs(plan: Plan, timeout: float, json_path: Path) -> list[dict[str, Any]]:
    """The real runs; saved at once as a partial results file (kept if the rest fails)."""
    from compression_runs import real_runs

    runs = real_runs(plan.models, plan.codecs, plan.rounds, plan.big_lr, plan.big_epochs,
                     timeout)
    write_json(json_path, {"partial": True, "command": plan.command, "rounds": plan.rounds,
                           "runs": runs})
    return runs


def assemble(plan: Plan, runs: list[dict[str, Any]], earlier: dict[str, Any],
             with_throughput: bool, load_start: list[float], t0: float) -> dict[str, Any]:
    """The results: runs, in-process measurements (an earlier file's when it has them:
    a pure report regeneration), setting and machine."""
    from compression_inprocess import measure, test_rows

    if "wire" in earlier:
        facts, wire, tp = earlier["models"], earlier["wire"], earlier["throughput"]
    else:
        facts, wire, tp = measure(plan.models, plan.codecs, plan.big_lr, plan.big_epochs,
                                  plan.quick, with_throughput)
    loads = [v for r in runs for v in (r["loadavg-before"][0], r["loadavg-after"][0])]
    results = {
        "command": plan.command,
        "quick": plan.quick, "rounds": plan.rounds, "seed": SEED, "num-nodes": NUM_NODES,
        "federation-config": FEDERATION, "test-rows": test_rows(),
        "models": facts, "codecs": {c: CODECS[c] for c in plan.codecs},
        "calibration": BIG_CALIBRATION if "big" in plan.models else [],
        "runs": runs, "wire": wire, "throughput": tp,
        "loadavg-start": load_start, "loadavg-end": loadavg(),
        "loadavg-range": [min(loads), max(loads)] if loads else [0.0, 0.0],
        "wall-seconds": time.perf_counter() - t0,
        "versions": versions("flwr", "torch", "numpy", "ray"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if "wire" in earlier:
        for key in ("quick", "loadavg-start", "loadavg-end", "wall-seconds", "versions", "date"):
            results[key] = earlier[key]
        results["report-regenerated"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return results


def write_outputs(results: dict[str, Any], json_path: Path, doc_path: Path,
                  png_path: Path) -> None:
    """The report (which fills per-run derived columns), the JSON, the plot."""
    from compression_findings import recommend
    from compression_plot import plot
    from compression_report import write_doc

    doc_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    write_doc(results, doc_path, png_path, json_path)
    rec = recommend(results["runs"])
    results["recommended"] = rec and {"codec": rec["codec"], **rec["run-config"]}
    write_json(json_path, results)
    plot(results, png_path)


def main() -> None:
    p = parser()
    args = p.parse_args()
    plan, (json_path, doc_path, png_path) = plan_and_paths(p, args)
    t0, load_start = time.perf_counter(), loadavg()
    print(f"compression benchmark: models {plan.models}, codecs {plan.codecs}, "
          f"{plan.rounds} rounds; load {load_start}", flush=True)
    earlier: dict[str, Any] = {}
    if args.from_json is not None:
        earlier = json.loads(args.from_json.read_text())
        runs = adopt(plan, earlier)
    else:
        runs = flower_runs(plan, args.timeout, json_path)
    results = assemble(plan, runs, earlier, not args.no_throughput, load_start, t0)
    write_outputs(results, json_path, doc_path, png_path)
    print(f"wrote {json_path}\n      {doc_path}\n      {png_path}\n"
          f"benchmark wall time {results['wall-seconds'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
