"""What secure aggregation costs, side by side with the plain robust pipeline.

    python benchmarks/secagg.py                # writes results/ and docs/
    python benchmarks/secagg.py --seeds 0,1    # more seeds (runs interleaved per seed)
    python benchmarks/secagg.py --quick        # 3 rounds, 6 nodes, 3 rows, clean, /tmp

Real `flwr run` simulations (digits, the default MLP, 10 nodes, 6 rounds of 2 local
epochs, ``tracking=false``) against a private managed SuperLink, one run per row, scenario
and seed. Rows: ``plain`` (``secagg=false``, the default robust screening), one bucket of
all nodes (plain secure aggregation, no robustness), buckets of 5, 3 and 2 (32 bits), and
buckets of 3 with 16-bit masked vectors. Scenarios: clean, and ``attack='sign-flip'`` with
``attack-fraction=0.2``. Every case runs once per seed before the next seed starts
(``common.interleave``), so load from elsewhere drifts over all rows alike.

Per run it keeps each round's row of ``rounds.json``: the server's accuracy, the round's
wall time on the server (``seconds``: configure to aggregate, the SecAgg+ stages included),
``secagg-seconds``, ``bytes-up`` (train replies only: the masked vectors; the key and share
exchanges are not counted), buckets and dropped buckets, failures.

Outputs: ``benchmarks/results/secagg.json``, ``docs/secagg_benchmark.md`` and
``docs/secagg_benchmark.png`` (``secagg_report``). Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _superlink import private_superlink
from common import (
    DOCS,
    REPO,
    RESULTS,
    command_line,
    interleave,
    loadavg,
    output_paths,
    shown,
    versions,
    write_json,
)
from secagg_report import plot, report

from fedapp.config import RunConfig
from fedapp.sweep import flwr_cli as runner

RUN_TIMEOUT_S = 1200
SCENARIOS: dict[str, dict[str, Any]] = {
    "clean": {"attack": "none"},
    "sign-flip": {"attack": "sign-flip", "attack-fraction": 0.2},
}
PLAIN = "plain"


def rows_for(nodes: int, quick: bool) -> dict[str, dict[str, Any]]:
    """Each row's run-config overrides: plain, then the bucket sizes."""
    def secagg(size: int, bits: int = 32) -> dict[str, Any]:
        return {"secagg": True, "secagg-bucket-size": size, "secagg-bits": bits}

    if quick:
        return {PLAIN: {}, f"secagg s={nodes}": secagg(nodes), "secagg s=2": secagg(2)}
    return {PLAIN: {}, f"secagg s={nodes}": secagg(nodes), "secagg s=5": secagg(5),
            "secagg s=3": secagg(3), "secagg s=2": secagg(2),
            "secagg s=3, 16 bits": secagg(3, 16)}


def run_config(overrides: dict[str, Any], rounds: int, seed: int, out: Path) -> dict[str, Any]:
    """The run config of one run; checked locally before it is submitted."""
    cfg: dict[str, Any] = {"dataset": "digits", "num-server-rounds": rounds,
                           "local-epochs": 2, "tracking": False, "metrics-port": 0,
                           "seed": seed, "output-dir": str(out), **overrides}
    RunConfig.from_flower({**RunConfig().to_flower(), **cfg})
    return cfg


def one_run(cfg: dict[str, Any], nodes: int, env: dict[str, str], out: Path
            ) -> dict[str, Any]:
    """Submit one run and wait; its per-round numbers (or the error it ended with)."""
    before, started = loadavg(), time.perf_counter()
    record: dict[str, Any] = {"seed": cfg["seed"], "loadavg-before": before}
    try:
        run_id, status = runner.run_and_check(
            REPO, cfg, env=env, timeout=RUN_TIMEOUT_S,
            federation_config=f"num-supernodes={nodes} client-resources-num-cpus=1")
    except (runner.RunFailed, TimeoutError) as exc:
        record |= {"error": str(exc), "wall-seconds": time.perf_counter() - started}
        return record
    rows = json.loads((out / f"run-{run_id}" / "rounds.json").read_text())
    trained = [r for r in rows if "replies" in r]
    later = [r for r in trained if r["round"] >= 2]
    record |= {
        "run-id": run_id, "status": status, "wall-seconds": time.perf_counter() - started,
        "loadavg-after": loadavg(), "final-accuracy": rows[-1]["server-accuracy"],
        "round-seconds": [r["seconds"] for r in later],
        "secagg-seconds": [r["secagg-seconds"] for r in later if "secagg-seconds" in r],
        "bytes-up": [r["bytes-up"] for r in trained],
        "bytes-down": [r["bytes-down"] for r in trained],
        "accepted": [r["accepted"] for r in trained],
        "failures": sum(int(r.get("failures", 0)) for r in trained),
        "buckets": [r["secagg-buckets"] for r in trained if "secagg-buckets" in r],
        "buckets-dropped": sum(int(r.get("secagg-buckets-dropped", 0)) for r in trained),
        "flagged": sum(int(r.get("flagged", 0)) for r in trained)}
    return record


def cases(rows: dict[str, dict[str, Any]], scenarios: list[str], seeds: list[int],
          rounds: int, nodes: int, env: dict[str, str], out: Path
          ) -> dict[str, Callable[[], dict[str, Any]]]:
    """One callable per row and scenario; its i-th call runs seed ``seeds[i]``."""
    calls: dict[str, int] = {}

    def make(name: str, overrides: dict[str, Any]) -> Callable[[], dict[str, Any]]:
        def call() -> dict[str, Any]:
            seed = seeds[calls.get(name, 0)]
            calls[name] = calls.get(name, 0) + 1
            cfg = run_config(overrides, rounds, seed, out)
            record = one_run(cfg, nodes, env, out)
            acc = record.get("final-accuracy")
            print(f"  {name:<32} seed {seed}: "
                  + (f"acc {acc:.4f}" if acc is not None else "FAILED")
                  + f" ({record['wall-seconds']:.0f}s, load {loadavg()})", flush=True)
            return record
        return call

    return {f"{row} | {sc}": make(f"{row} | {sc}", {**over, **SCENARIOS[sc]})
            for row, over in rows.items() for sc in scenarios}


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    """The median of ``key``'s values pooled over the successful runs (None: no values)."""
    values = [v for r in runs if "error" not in r for v in r.get(key, [])]
    return statistics.median(values) if values else None


def summarize(samples: dict[str, list[dict[str, Any]]], rows: dict[str, dict[str, Any]],
              scenarios: list[str]) -> list[dict[str, Any]]:
    """One line per row and scenario; ratios against plain in the same scenario."""
    def stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [r for r in runs if "error" not in r]
        accs = [r["final-accuracy"] for r in ok]
        return {"accuracy": statistics.fmean(accs) if accs else None,
                "round-s": median_of(runs, "round-seconds"),
                "secagg-s": median_of(runs, "secagg-seconds"),
                "bytes-up": median_of(runs, "bytes-up"),
                "buckets": median_of(runs, "buckets"),
                "buckets-dropped": sum(r.get("buckets-dropped", 0) for r in ok),
                "flagged": sum(r.get("flagged", 0) for r in ok),
                "failures": sum(r.get("failures", 0) for r in ok),
                "runs-failed": len(runs) - len(ok), "runs": len(runs)}

    table = {(row, sc): stats(samples[f"{row} | {sc}"]) for row in rows for sc in scenarios}
    base_acc = table[(PLAIN, "clean")]["accuracy"]
    out = []
    for (row, sc), s in table.items():
        plain = table[(PLAIN, sc)]
        s |= {"row": row, "scenario": sc,
              "messages-per-node": 4 if rows[row].get("secagg") else 1,
              "accuracy-drop-points": _diff(base_acc, s["accuracy"], 100.0),
              "round-ratio": _ratio(s["round-s"], plain["round-s"]),
              "bytes-ratio": _ratio(s["bytes-up"], plain["bytes-up"])}
        out.append(s)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _diff(a: float | None, b: float | None, scale: float) -> float | None:
    return None if a is None or b is None else (a - b) * scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds, 6 nodes, rows plain / s=6 / s=2, clean only, /tmp")
    parser.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds (full run)")
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rounds, nodes = (3, 6) if args.quick else (args.rounds, 10)
    rows = rows_for(nodes, args.quick)
    scenarios = ["clean"] if args.quick else list(SCENARIOS)
    json_path, md_path, png_path = output_paths(
        ["secagg.json", "secagg_benchmark.md", "secagg_benchmark.png"],
        [RESULTS / "secagg.json", DOCS / "secagg_benchmark.md", DOCS / "secagg_benchmark.png"],
        full=not args.quick, out_dir=args.out_dir, prefix="fedapp-secagg-")
    start_load, started = loadavg(), time.perf_counter()
    print(f"{len(rows) * len(scenarios) * len(seeds)} runs; load {start_load}", flush=True)
    with private_superlink(prefix="fedapp-secagg-bench-") as (env, workdir):
        samples = interleave(
            cases(rows, scenarios, seeds, rounds, nodes, env, workdir / "runs"), len(seeds),
            after_repeat=lambda i, _: print(f"seed {seeds[i]} done", flush=True))
    result = {"command": command_line("secagg.py", argv), "versions": versions("flwr"),
              "load-start": start_load, "load-end": loadavg(),
              "wall-seconds": time.perf_counter() - started, "quick": args.quick,
              "rounds": rounds, "nodes": nodes, "local-epochs": 2, "seeds": seeds,
              "rows": rows, "scenarios": {sc: SCENARIOS[sc] for sc in scenarios},
              "secagg-clip-norm": RunConfig().to_flower()["secagg-clip-norm"],
              "summary": summarize(samples, rows, scenarios), "runs": samples}
    write_json(json_path, result)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(report(result, png_path.name))
    plot(result, png_path)
    print(report(result, png_path.name))
    print(f"wrote {shown(json_path)}, {shown(md_path)}, {shown(png_path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
