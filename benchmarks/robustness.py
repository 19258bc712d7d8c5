"""Robustness benchmark: our aggregators vs Flower's built-ins under every attack, on Flower.

    python benchmarks/robustness.py                 # full table (see docs/robustness.md)
    python benchmarks/robustness.py --quick         # smoke: 2 rows, 2 attacks, 3 rounds, /tmp
    python benchmarks/robustness.py --rows ours-nnm-tm,flwr-multikrum --attacks none,alie

Rows are aggregators: our ``RobustStrategy`` configurations (``OURS``) and Flower 1.41's
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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _superlink import REPO, private_superlink

from fedapp import runner

NUM_NODES = 20
SEED = 42
ROUNDS = 15
LOCAL_EPOCHS = 5
LEARNING_RATE = 0.05
BATCH_SIZE = 16
FRACTIONS = (0.2, 0.3)
NODE_SIDE = ("label-flip", "sign-flip", "gaussian", "scaling")
OMNISCIENT = ("alie", "ipm", "min-max", "min-sum", "alie-adaptive", "ipm-adaptive",
              "min-max-noisy")
ATTACK_COLUMNS = ("none", *NODE_SIDE, *OMNISCIENT)
# Our rows: run-config overrides of RunConfig. Every robust rule is told the true fraction of
# Byzantine nodes: ours as byzantine-fraction, Flower's as the count f it takes.
OURS: dict[str, dict[str, Any]] = {
    "ours-recommended": {"aggregator": "fedavg", "preaggregation": "none",
                         "anomaly-detection": "exclude"},
    "ours-nnm-tm": {"aggregator": "trimmed-mean", "preaggregation": "nnm",
                    "anomaly-detection": "exclude"},
    "ours-spectral": {"aggregator": "spectral", "preaggregation": "none",
                      "anomaly-detection": "flag"},
}
FLOWER = ("flwr-fedavg", "flwr-multikrum", "flwr-fedmedian", "flwr-trimmedavg", "flwr-bulyan")
ORACLE = "oracle"  # FedAvg over the honest nodes only: the bound no defense can beat
LABELS = {"oracle": "oracle (honest nodes only)", "flwr-fedavg": "Flower FedAvg",
          "flwr-multikrum": "Flower MultiKrum",
          "flwr-fedmedian": "Flower FedMedian", "flwr-trimmedavg": "Flower FedTrimmedAvg",
          "flwr-bulyan": "Flower Bulyan"}
BASELINE = ("flwr-fedavg", "none")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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


def groups(rows: list[str], attacks: list[str],
           fractions: list[float]) -> list[tuple[float, str, list[dict[str, Any]]]]:
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


def run_group(app: Path, env: dict[str, str], workdir: Path, fraction: float, run_attack: str,
              scenarios: list[dict[str, Any]], settings: dict[str, Any], timeout: float,
              progress: dict[str, int]) -> list[dict[str, Any]]:
    out = workdir / f"f{fraction}-{run_attack}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenarios.json").write_text(json.dumps({"num-nodes": settings["nodes"],
                                                    "scenarios": scenarios}))
    results_file = out / "results.jsonl"
    cfg = {"attack": run_attack, "attack-fraction": fraction, "output-dir": str(out),
           "num-server-rounds": settings["rounds"], "local-epochs": settings["local-epochs"],
           "model": settings["model"], "learning-rate": settings["learning-rate"],
           "batch-size": settings["batch-size"],
           "partitioner": "dirichlet", "dirichlet-alpha": 0.5,
           "seed": SEED, "tracking": False, "fraction-evaluate": 0.0,
           "min-available-nodes": settings["nodes"], "min-train-nodes": settings["nodes"]}
    federation = f"num-supernodes={settings['nodes']} client-resources-num-cpus=1"
    seen: set[str] = set()

    def report(_: str = "") -> None:
        if not results_file.exists():
            return
        for line in results_file.read_text().splitlines():
            row = json.loads(line)
            if row["id"] in seen:
                continue
            seen.add(row["id"])
            progress["done"] += 1
            print(f"  [{progress['done']}/{progress['total']}] {row['row']:<16} "
                  f"{row['attack']:<14} f={fraction}: acc {row['final-accuracy']:.4f} "
                  f"({row['seconds']:.0f}s, load {loadavg()})", flush=True)

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


def summarise(cells: list[dict[str, Any]], rows: list[str], attacks: list[str],
              fractions: list[float]) -> dict[str, Any]:
    acc = {(c["row"], c["attack"], c["fraction"]): c["final-accuracy"] for c in cells}
    clean = [acc[(BASELINE[0], "none", f)] for f in fractions if (BASELINE[0], "none", f) in acc]
    reference = sum(clean) / len(clean) if clean else None
    tables: dict[str, Any] = {}
    for f in fractions:
        table = {}
        for row in rows:
            cols = {a: acc.get((row, a, f)) for a in attacks}
            attacked = [v for a, v in cols.items() if a != "none" and v is not None]
            worst = min(attacked) if attacked else None
            worst_attack = min((a for a in attacks if a != "none" and cols[a] is not None),
                               key=lambda a: cols[a], default=None)  # type: ignore[arg-type,return-value]
            table[row] = {"accuracy": cols, "worst": worst, "worst-attack": worst_attack,
                          "retained-worst": (worst / reference
                                             if worst is not None and reference else None),
                          "clean-minus-fedavg": (cols["none"] - reference
                                                 if cols.get("none") is not None and reference
                                                 else None)}
        tables[str(f)] = table
    return {"clean-fedavg-accuracy": reference, "tables": tables}


DEFAULT_ROW = "ours-recommended"  # the configuration pyproject.toml and conf/ set


def recommend(summary: dict[str, Any], rows: list[str]) -> str | None:
    """The row of the shipped default (``DEFAULT_ROW``) when it ran; otherwise our row with
    the best worst case at the lowest fraction (ties go to the next fraction)."""
    if DEFAULT_ROW in rows:
        return DEFAULT_ROW
    ours = [r for r in rows if r in OURS]
    if not ours:
        return None
    fractions = sorted(summary["tables"], key=float)

    def key(r: str) -> tuple[float, ...]:
        return tuple(summary["tables"][f][r]["worst"] or 0.0 for f in fractions)
    return max(ours, key=key)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def write_doc(results: dict[str, Any], path: Path, png: Path, json_path: Path) -> None:
    s = results["summary"]
    rows, attacks = results["rows"], results["attacks"]
    ref = s["clean-fedavg-accuracy"]
    lines = [
        "# Robustness: accuracy under attack, ours vs Flower's built-in strategies",
        "",
        f"Generated by `{results['command']}` on {results['date']} "
        f"({results['machine']['cpus']} cores, flwr {results['versions']['flwr']}, "
        f"torch {results['versions']['torch']}); raw results in "
        f"`{json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}`. "
        f"Total {results['wall-seconds'] / 60:.0f} min of the last invocation: a killed run "
        "resumes from its finished cells (`--workdir`), and cells are only reused when the "
        "code they ran is unchanged.",
        "",
        f"Setting: {results['dataset']}, model `{results['settings']['model']}`, "
        f"{results['settings']['nodes']} simulated nodes (Dirichlet alpha = 0.5), "
        f"{results['settings']['rounds']} rounds x {results['settings']['local-epochs']} local "
        f"epochs, seed {SEED}, every node trains every round. Each cell is one complete run on "
        "Flower's simulation engine; the number is the final accuracy (%) on the server's "
        "held-out test split. Every robust rule is told the true share of Byzantine nodes: "
        "Flower's MultiKrum and Bulyan get the count f = fraction x n, FedTrimmedAvg "
        "beta = fraction, ours `byzantine-fraction` = fraction (f = floor(fraction x the "
        "updates that reach the rule), after anomaly exclusion). Flower's Bulyan needs "
        "n >= 4f + 3, so it runs with f = min(f, (n - 3) / 4). The adaptive attacks search "
        "their scale against the defense in use: for our rows the whole pipeline (anomaly "
        "exclusion, pre-aggregation, rule). Clean FedAvg (Flower's, no attack) reaches "
        f"**{_pct(ref)}%**; \"retained\" is the worst case over that.",
        "",
        "Our rows: " + "; ".join(f"`{r}` = {', '.join(f'{k}={v}' for k, v in OURS[r].items())}"
                                 for r in rows if r in OURS) + ".",
        "",
        "How `anomaly-detection=exclude` defends (`fedapp/defenses.py`, `RobustStrategy.screen`): "
        "every update is scored four ways, and at most f flagged updates, the most severe, "
        "are left out; the rest are scaled down to the norm threshold.",
        "",
        "- norm: robust z-score of the update's norm above 3.5 (scaling, Gaussian noise);",
        "- copies: nearest other update ten times closer than updates typically are "
        "(colluders sending one crafted update: ALIE, IPM, min-max, min-sum);",
        "- sign skew: above the coordinate-wise median on 3 coordinates for every 1 below, "
        "or the reverse (shifts by a multiple of the coordinate-wise std: ALIE);",
        "- cosine reputation: the node's cosines to the median of the unsuspected updates, "
        "averaged over rounds (memory 0.9), below 0 (sign flipping, IPM, min-max / min-sum "
        "along the mean). One round's cosine is noise on this non-IID data: honest updates "
        "are nearly orthogonal to each other.",
        "",
        "An oracle that knows the Byzantine nodes and averages the others (the best any "
        "defense can do here: the attackers' own data is lost) reaches 91.7% at 20% and 89.2% "
        "at 30% (in-process replica of these runs, same seeds and training).",
        "",
    ]
    for f, table in s["tables"].items():
        nodes = results["settings"]["nodes"]
        lines += [f"## {round(100 * float(f))}% Byzantine ({round(float(f) * nodes)} of "
                  f"{nodes} nodes)", "",
                  "| aggregator | " + " | ".join(attacks) + " | worst | retained |",
                  "|---|" + "---:|" * (len(attacks) + 2)]
        for row in rows:
            t = table[row]
            cells = [_pct(t["accuracy"][a]) for a in attacks]
            name = LABELS.get(row, f"**{row}**" if row == results.get("recommended") else row)
            lines.append(f"| {name} | " + " | ".join(cells) +
                         f" | {_pct(t['worst'])} ({t['worst-attack']}) | "
                         f"{_pct(t['retained-worst'])}% |")
        lines.append("")
    lines += ["## Findings", ""] + [f"- {x}" for x in results["findings"]] + [
        "", f"![worst case per aggregator]({png.name})", ""]
    path.write_text("\n".join(lines))


def findings(results: dict[str, Any]) -> list[str]:
    s, rows = results["summary"], results["rows"]
    out = []
    rec = results.get("recommended")
    for f, table in s["tables"].items():
        flower_worst = {r: table[r]["worst"] for r in rows if r in FLOWER and
                        table[r]["worst"] is not None}
        best_flower = max(flower_worst, key=flower_worst.__getitem__, default=None)
        target = 0.95 if abs(float(f) - 0.2) < 1e-9 else 0.90
        if rec is not None and table[rec]["retained-worst"] is not None:
            t = table[rec]
            met = t["retained-worst"] >= target
            beats = best_flower is None or t["worst"] > flower_worst[best_flower]
            out.append(
                f"{round(100 * float(f))}% Byzantine: `{rec}` keeps "
                f"{_pct(t['retained-worst'])}% of clean FedAvg in the worst case "
                f"({t['worst-attack']}), target {round(100 * target)}%: "
                f"{'met' if met else 'missed'}; best Flower built-in "
                f"{LABELS.get(best_flower, best_flower)} keeps "
                f"{_pct(table[best_flower]['retained-worst']) if best_flower else '-'}% "
                f"({'beaten' if beats else 'not beaten'}).")
        if rec is not None and table[rec]["clean-minus-fedavg"] is not None:
            d = 100 * table[rec]["clean-minus-fedavg"]
            out.append(f"{round(100 * float(f))}% setting, no attack: `{rec}` is {d:+.1f} pt "
                       f"from clean FedAvg (target: within 1 pt): "
                       f"{'met' if abs(d) <= 1.0 or d > 0 else 'missed'}.")
        if rec is not None and ORACLE in rows and table[ORACLE]["worst"]:
            o, t = table[ORACLE], table[rec]
            out.append(f"{round(100 * float(f))}% Byzantine: the oracle (FedAvg over the honest "
                       f"nodes only) has {_pct(o['worst'])}% in its worst case; `{rec}` "
                       f"reaches {_pct(t['worst'] / o['worst'])}% of that.")
        real = [r for r in rows if r != ORACLE]
        broken = [a for a in results["attacks"] if a != "none" and all(
            table[r]["accuracy"][a] is not None and table[r]["accuracy"][a] < 0.5 for r in real)]
        if broken:
            best = {a: max(real, key=lambda r, a=a: table[r]["accuracy"][a]) for a in broken}
            out.append(f"{round(100 * float(f))}% Byzantine: no aggregator in the table keeps 50% "
                       "accuracy under " + ", ".join(
                           f"{a} (best {LABELS.get(best[a], best[a])}, "
                           f"{_pct(table[best[a]]['accuracy'][a])}%)" for a in broken) + ".")
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, rows = results["summary"], results["rows"]
    fractions = list(s["tables"])
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / max(len(fractions), 1)
    for k, f in enumerate(fractions):
        vals = [100 * (s["tables"][f][r]["worst"] or 0.0) for r in rows]
        ax.bar([i + k * width for i in range(len(rows))], vals, width,
               label=f"{round(100 * float(f))}% Byzantine")
    ref = s["clean-fedavg-accuracy"]
    if ref:
        ax.axhline(100 * ref, color="black", lw=1, ls="--", label="clean FedAvg")
        ax.axhline(95 * ref, color="gray", lw=1, ls=":", label="95% of clean FedAvg")
    ax.set_xticks([i + width * (len(fractions) - 1) / 2 for i in range(len(rows))])
    ax.set_xticklabels([LABELS.get(r, r) for r in rows], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("worst-case final accuracy (%)")
    ax.set_title("Worst case over all attacks")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def versions() -> dict[str, str]:
    import flwr
    import torch
    return {"flwr": flwr.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run in /tmp")
    parser.add_argument("--rows", help=f"comma list of {', '.join([*OURS, *FLOWER, ORACLE])}")
    parser.add_argument("--attacks", help=f"comma list of {', '.join(ATTACK_COLUMNS)}")
    parser.add_argument("--fractions", help="comma list, default 0.2,0.3")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--local-epochs", type=int, default=LOCAL_EPOCHS)
    parser.add_argument("--nodes", type=int, default=NUM_NODES)
    parser.add_argument("--model", default="mlp", choices=("mlp", "cnn", "auto"))
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--timeout", type=float, default=5400, help="seconds per Flower run")
    parser.add_argument("--workdir", type=Path, help="keep runs here (resumes a killed run)")
    parser.add_argument("--from-json", type=Path, help="rewrite the report from a results file")
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args()
    rows = args.rows.split(",") if args.rows else (
        ["ours-recommended", "flwr-multikrum"] if args.quick else [*OURS, *FLOWER, ORACLE])
    attacks = args.attacks.split(",") if args.attacks else (
        ["none", "alie"] if args.quick else list(ATTACK_COLUMNS))
    fractions = ([float(x) for x in args.fractions.split(",")] if args.fractions
                 else [0.2] if args.quick else list(FRACTIONS))
    rounds = 3 if args.quick and args.rounds == ROUNDS else args.rounds
    bad = [r for r in rows if r not in OURS and r not in FLOWER and r != ORACLE]
    bad += [a for a in attacks if a not in ATTACK_COLUMNS]
    if bad:
        parser.error(f"unknown rows / attacks: {bad}; rows: {[*OURS, *FLOWER, ORACLE]}, "
                     f"attacks: {list(ATTACK_COLUMNS)}")
    if "flwr-fedavg" not in rows:
        rows.append("flwr-fedavg")  # the reference
    if "none" not in attacks:
        attacks.insert(0, "none")
    full = (not args.quick and set(rows) == {*OURS, *FLOWER, ORACLE} and set(attacks) ==
            set(ATTACK_COLUMNS) and set(fractions) == set(FRACTIONS))
    if args.out_dir is not None:
        out_dir = args.out_dir
        json_path, doc_path = out_dir / "robustness.json", out_dir / "robustness.md"
    elif full:
        json_path = REPO / "benchmarks" / "results" / "robustness.json"
        doc_path = REPO / "docs" / "robustness.md"
    else:
        out_dir = Path(tempfile.mkdtemp(prefix="fedapp-robustness-bench-"))
        json_path, doc_path = out_dir / "robustness.json", out_dir / "robustness.md"
    png_path = doc_path.with_suffix(".png")
    command = " ".join(["python", "benchmarks/robustness.py", *sys.argv[1:]])
    settings = {"nodes": args.nodes, "rounds": rounds, "local-epochs": args.local_epochs,
                "model": args.model, "learning-rate": args.learning_rate,
                "batch-size": args.batch_size}

    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
    else:
        t0 = time.perf_counter()
        plan = groups(rows, attacks, fractions)
        progress = {"done": 0, "total": sum(len(s) for _, _, s in plan)}
        print(f"robustness benchmark: {len(rows)} rows x {len(attacks)} attacks x "
              f"{len(fractions)} fractions = {progress['total']} runs in {len(plan)} Flower "
              f"runs; {rounds} rounds, {args.nodes} nodes; load {loadavg()}", flush=True)
        cells: list[dict[str, Any]] = []
        with private_superlink(keep=args.workdir is not None) as (env, workdir):
            work = args.workdir or workdir
            work.mkdir(parents=True, exist_ok=True)
            app = build_app(work)
            for fraction, run_attack, scenarios in plan:
                print(f"Flower run: attack={run_attack} fraction={fraction}, "
                      f"{len(scenarios)} scenarios", flush=True)
                cells += run_group(app, env, work, fraction, run_attack, scenarios, settings,
                                   args.timeout, progress)
        results = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "machine": {"cpus": os.cpu_count(), "loadavg-end": loadavg(),
                               "platform": platform.platform()},
                   "versions": versions(), "dataset": "digits", "settings": settings,
                   "rows": rows, "attacks": attacks, "fractions": fractions,
                   "ours": {r: OURS[r] for r in rows if r in OURS}, "cells": cells,
                   "wall-seconds": time.perf_counter() - t0}
    results["summary"] = summarise(results["cells"], results["rows"], results["attacks"],
                                   results["fractions"])
    results["recommended"] = recommend(results["summary"], results["rows"])
    results["findings"] = findings(results)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2))
    plot(results, png_path)
    write_doc(results, doc_path, png_path, json_path)
    print(f"wrote {json_path}, {doc_path}, {png_path}", flush=True)
    for line in results["findings"]:
        print(" -", line)


if __name__ == "__main__":
    main()
