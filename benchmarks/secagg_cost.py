"""What a secure-aggregation round costs, with key pairs kept across rounds or fresh each round.

    python benchmarks/secagg_cost.py              # simulation and deployment; results/, docs/
    python benchmarks/secagg_cost.py --quick      # 3 rounds, 4 nodes, one repeat, /tmp

Rows (every node trains every round, only the server evaluates, tracking off):

* ``plain``: ``secagg=false``, ``dp='off'``: the product's default round, for reference;
* ``fresh keys``: ``dp='distributed'`` over ``secagg=true``, one bucket of all nodes
  (threshold 0.75), ``secagg-key-rounds=1``: new key pairs every round, as Flower's SecAgg+;
* ``kept keys``: the same with ``secagg-key-rounds=10`` (the default,
  ``fedapp.secagg.keys``): setup only in round 1 and for re-keyed nodes.

Modes: ``simulation`` (``flwr run`` on a private managed SuperLink: Ray, digits, 10 nodes)
and ``deployment`` (a loopback ``flower-superlink`` and 4 ``flower-supernode`` processes,
insecure, breast-cancer hospital files of 152 rows: ``_superlink.loopback_deployment``;
every stage message starts a fresh ClientApp process on its node). The rows run one after
the other in the same SuperLink, repeat after repeat (``--repeats``), so load drifts over
all alike. Per row, the medians over rounds 2+ of every repeat: the server's round time,
``secagg-seconds`` (the extra stages), ``secagg-bytes`` (their records, both directions),
``bytes-up`` (the masked vectors), and stage messages per node (1 for plain; share_keys,
train and unmask, plus setup for the nodes that ran it). Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _superlink import loopback_deployment, private_superlink
from common import (
    DOCS,
    REPO,
    RESULTS,
    command_line,
    fmt_bytes,
    loadavg,
    md_table,
    output_paths,
    versions,
    write_json,
)
from deployment_scale_run import hospital_files

from fedapp.config import RunConfig
from fedapp.sweep import flwr_cli as runner

RUN_TIMEOUT_S = 1800
ROWS: dict[str, dict[str, Any]] = {
    "plain": {},
    "fresh keys": {"secagg": True, "dp": "distributed", "secagg-key-rounds": 1},
    "kept keys": {"secagg": True, "dp": "distributed", "secagg-key-rounds": 10},
}


def run_config(row: str, nodes: int, rounds: int, out: Path, dataset: str) -> dict[str, Any]:
    """One run's config (checked locally first): the row's keys on the defaults."""
    cfg: dict[str, Any] = {"dataset": dataset, "num-server-rounds": rounds,
                           "fraction-train": 1.0, "min-train-nodes": nodes,
                           "min-available-nodes": nodes, "fraction-evaluate": 0.0,
                           "tracking": False, "registered-model": "off", "metrics-port": 0,
                           "output-dir": str(out), **ROWS[row]}
    if ROWS[row].get("secagg"):
        cfg |= {"secagg-bucket-size": nodes, "dp-epsilon": 8.0, "learning-rate": 1.0}
    RunConfig.from_flower({**RunConfig().to_flower(), **cfg})
    return cfg


def one_run(row: str, cfg: dict[str, Any], nodes: int, out: Path,
            submit: dict[str, Any]) -> dict[str, Any]:
    """Submit, wait, and read the run's rounds (or the error it ended with)."""
    started = time.perf_counter()
    record: dict[str, Any] = {"row": row, "loadavg-before": loadavg()}
    try:
        run_id, _ = runner.run_and_check(REPO, cfg, timeout=RUN_TIMEOUT_S, **submit)
    except (runner.RunFailed, TimeoutError) as exc:
        return record | {"error": str(exc)[-2000:],
                         "wall-seconds": time.perf_counter() - started}
    rows = [r for r in json.loads((out / f"run-{run_id}" / "rounds.json").read_text())
            if "replies" in r]
    record |= {"run-id": run_id, "wall-seconds": time.perf_counter() - started,
               "loadavg-after": loadavg(), "rounds": [{
                   "round": r["round"], "seconds": r["seconds"],
                   "secagg-seconds": r.get("secagg-seconds", 0.0),
                   "secagg-bytes": r.get("secagg-bytes", 0), "bytes-up": r["bytes-up"],
                   "setup-nodes": r.get("secagg-setup-nodes", 0),
                   "accepted": r["accepted"], "failures": r.get("failures", 0),
                   "messages-per-node": (1.0 if "secagg-buckets" not in r else
                                         3.0 + r.get("secagg-setup-nodes", 0) / nodes),
               } for r in rows]}
    print(f"  {row:<11} run {run_id}: {record['wall-seconds']:.0f}s, load {loadavg()}",
          flush=True)
    return record


def measure(mode: str, nodes: int, rounds: int, repeats: int) -> list[dict[str, Any]]:
    """Every row ``repeats`` times, interleaved, in one SuperLink of ``mode``."""
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedapp-secagg-cost-") as tmp:
        out = Path(tmp) / "out"
        if mode == "simulation":
            with private_superlink(prefix="fedapp-secagg-cost-sim-") as (env, _):
                submit = {"env": env, "federation_config":
                          f"num-supernodes={nodes} client-resources-num-cpus=1"}
                for _ in range(repeats):
                    runs += [one_run(row, run_config(row, nodes, rounds, out, "digits"),
                                     nodes, out, submit) for row in ROWS]
            return runs
        files = hospital_files(Path(tmp), nodes)
        with loopback_deployment(files, prefix="fedapp-secagg-cost-dep-",
                                 supernode_nice=10) as dep:
            submit = {"env": dep.env, "connection": dep.connection}
            for _ in range(repeats):
                runs += [one_run(row, run_config(row, nodes, rounds, out, "breast-cancer"),
                                 nodes, out, submit) for row in ROWS]
    return runs


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per row: medians over rounds 2+ of its successful runs."""
    out: dict[str, dict[str, float]] = {}
    for row in ROWS:
        later = [r for run in runs if run["row"] == row and "error" not in run
                 for r in run["rounds"] if r["round"] >= 2]
        if later:
            out[row] = {key: statistics.median(r[key] for r in later) for key in (
                "seconds", "secagg-seconds", "secagg-bytes", "bytes-up", "messages-per-node",
                "setup-nodes")}
    return out


def table(mode: str, stats: dict[str, dict[str, float]]) -> list[str]:
    base = stats.get("fresh keys", {})
    rows = []
    for row, s in stats.items():
        vs = (f"{s['seconds'] / base['seconds']:.2f}x"
              if base and row != "plain" else "")
        rows.append((row, f"{s['messages-per-node']:.2f}", f"{s['setup-nodes']:.0f}",
                     f"{s['seconds']:.2f}", vs, f"{s['secagg-seconds']:.2f}",
                     fmt_bytes(s["secagg-bytes"]), fmt_bytes(s["bytes-up"])))
    return [f"### {mode}", "", *md_table(
        ["row", "messages / node", "setup nodes", "round s", "round vs fresh",
         "secagg s", "secagg bytes", "bytes up"], rows), ""]


def loads(runs: list[dict[str, Any]]) -> str:
    """Each run's 1-minute load average before and after it, in run order."""
    return "; ".join(f"{r['row']} {r['loadavg-before'][0]:.1f} -> "
                     f"{r.get('loadavg-after', ['?'])[0]}" for r in runs)


def markdown(result: dict[str, Any]) -> str:
    v = result["versions"]
    lines = ["# Secure aggregation: the cost of a round, keys kept or fresh", "",
             f"Generated by `{result['command']}` ({result['date']}, {result['minutes']:.0f} "
             f"min; load {result['load-before']} at the start, {result['load-after']} at the "
             f"end; flwr {v['flwr']}, {v['cpus']} CPUs, commit `{v['git-commit'][:10]}`). "
             "Setting and rows: `benchmarks/secagg_cost.py`'s "
             "docstring; what is reused and why it is safe: `fedapp/secagg/keys.py`, "
             "`docs/secure-aggregation.md`. Medians over rounds 2+ of "
             f"{result['repeats']} repeat(s); raw numbers in `benchmarks/results/"
             "secagg_cost.json`. Timings are one noisy 2-core machine's: compare rows "
             "within a mode.", ""]
    for mode, part in result["modes"].items():
        lines += [f"{part['nodes']} nodes, {part['rounds']} rounds; measured by "
                  f"`{part.get('command', result['command'])}`.", ""]
        lines += table(mode, part["summary"])
        lines += [f"1-minute load before -> after each run, in order: {loads(part['runs'])}.",
                  ""]
        failed = [r for r in part["runs"] if "error" in r]
        if failed:
            lines += [f"{len(failed)} run(s) failed: " + "; ".join(
                f"{r['row']}: {r['error'].splitlines()[0]}" for r in failed), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds, 4 nodes, one repeat, /tmp")
    ap.add_argument("--modes", default="simulation,deployment")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=None)
    ap.add_argument("--from-json", action="store_true", help="only rewrite the page")
    args = ap.parse_args()
    if args.from_json:
        result = json.loads((RESULTS / "secagg_cost.json").read_text())
        (DOCS / "secagg_cost.md").write_text(markdown(result) + "\n")
        return
    setting = {"simulation": (4, 3) if args.quick else (10, 8),
               "deployment": (4, 3) if args.quick else (4, 6)}
    repeats = 1 if args.quick else args.repeats
    started, load = time.time(), loadavg()
    modes = {}
    for mode in args.modes.split(","):
        nodes, rounds = setting[mode]
        print(f"{mode}: {nodes} nodes, {rounds} rounds, {repeats} repeat(s)", flush=True)
        runs = measure(mode, nodes, rounds, repeats)
        modes[mode] = {"nodes": nodes, "rounds": rounds, "runs": runs,
                       "summary": summary(runs)}
    full = not args.quick and args.out_dir is None
    if full and set(modes) != set(setting) and (RESULTS / "secagg_cost.json").is_file():
        earlier = json.loads((RESULTS / "secagg_cost.json").read_text())
        for part in earlier["modes"].values():
            part.setdefault("command", earlier["command"])
        modes = {**earlier["modes"], **modes}  # a rerun of some modes replaces only those
    for part in modes.values():
        part.setdefault("command", command_line("secagg_cost.py"))
    result = {"command": command_line("secagg_cost.py"), "versions": versions("flwr"),
              "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(started)),
              "minutes": (time.time() - started) / 60, "load-before": load,
              "load-after": loadavg(), "repeats": repeats, "modes": modes}
    json_path, md_path = output_paths(
        ["secagg_cost.json", "secagg_cost.md"], [RESULTS / "secagg_cost.json",
                                                 DOCS / "secagg_cost.md"],
        full=full, out_dir=args.out_dir, prefix="fedapp-secagg-cost-")
    write_json(json_path, result)
    md_path.write_text(markdown(result) + "\n")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
