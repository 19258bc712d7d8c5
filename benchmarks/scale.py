"""Many hospitals: per-round wall time and memory of the whole simulation at 100, 1,000 and
10,000 simulated SuperNodes, with the same number sampled per round.

    python benchmarks/scale.py            # 100, 1,000, 10,000 nodes; results/ and docs/
    python benchmarks/scale.py --quick    # 100 and 1,000 nodes, 2 rounds, /tmp

One real `flwr run` per size (``scale_runs.measure``: dataset='synthetic', tracking off,
``client-resources-num-cpus=1``, 20 nodes sampled per round, no federated evaluation),
each under its own private SuperLink. Per-round wall time from the checkpoint files'
times; memory as the sum over the SuperLink's process tree, sampled every 0.5 s. The
target (issue 17): at 10,000 nodes the median round and the peak memory within 1.2x of
100 nodes. Outputs: ``benchmarks/results/scale.json``, ``docs/scale.md``,
``docs/scale.png``. Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import (
    DOCS,
    RESULTS,
    command_line,
    loadavg,
    output_paths,
    shown,
    versions,
    write_json,
)
from scale_flower import flower_costs, server_sampling_ms
from scale_report import mb, plot, report
from scale_runs import measure

SAMPLING_SIZES = (100, 1_000, 10_000, 100_000)
CONTEXT_SIZES = (100, 1_000, 10_000)  # Flower's per-node contexts: 100,000 would take minutes


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One size's repeats as one result: round times pooled, memory peaks the largest,
    the state and the memory series of the first run that completed; every run's numbers
    (less its series) under ``runs``."""
    ok = [r for r in runs if r["error"] is None] or runs[:1]
    merged = dict(ok[0])
    merged["round-s"] = [t for r in ok for t in r.get("round-s", [])]
    for key in ("peak-rss-bytes", "peak-pss-bytes", "steady-peak-rss-bytes",
                "steady-peak-pss-bytes"):
        values = [r[key] for r in ok if r.get(key) is not None]
        merged[key] = max(values) if values else None
    for key in ("wall-s", "first-round-done-s", "steady-cpu-busy"):
        values = [r[key] for r in ok if r.get(key) is not None]
        merged[key] = statistics.median(values) if values else None
    merged["error"] = next((r["error"] for r in runs if r["error"]), None)
    merged["runs"] = [{k: v for k, v in r.items() if k != "samples"} for r in runs]
    return merged


def ratios(results: list[dict[str, Any]]) -> None:
    """Add the median round and each size's ratios to the smallest size's, in place."""
    for r in results:
        r["round-median-s"] = statistics.median(r["round-s"]) if r.get("round-s") else None
    base = results[0]
    for r in results:
        for key in ("round-median-s", "peak-rss-bytes", "peak-pss-bytes",
                    "steady-peak-rss-bytes", "steady-peak-pss-bytes"):
            a, b = r.get(key), base.get(key)
            r[f"{key}-ratio"] = None if a is None or not b else a / b


def rewrite_report(json_path: Path) -> int:
    """The page and the plot again from a results file: the repository's go to docs/, any
    other beside it."""
    result = json.loads(json_path.read_text())
    if json_path.resolve() == (RESULTS / "scale.json").resolve():
        md_path, png_path = DOCS / "scale.md", DOCS / "scale.png"
    else:
        md_path, png_path = json_path.with_suffix(".md"), json_path.with_suffix(".png")
    plot(result["results"], png_path)
    md_path.write_text(report(result, png_path.name))
    print(f"wrote {shown(md_path)}, {shown(png_path)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 nodes, 2 rounds")
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--sampled", type=int, default=20)
    parser.add_argument("--repeats", type=int, help="runs per size, interleaved (default 2; "
                        "--quick 1)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--out-dir", type=Path)
    parser.add_argument("--report-only", type=Path, metavar="JSON",
                        help="rewrite the page and the plot from a results file, run nothing")
    args = parser.parse_args(argv)
    if args.report_only:
        return rewrite_report(args.report_only)
    sizes = args.sizes or ([100, 1000] if args.quick else [100, 1000, 10_000])
    rounds = args.rounds or (2 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 2)
    full = not (args.quick or args.sizes or args.rounds) and args.out_dir is None
    json_path, md_path, png_path = output_paths(
        ["scale.json", "scale.md", "scale.png"],
        [RESULTS / "scale.json", DOCS / "scale.md", DOCS / "scale.png"],
        full=full, out_dir=args.out_dir, prefix="fedapp-scale-")
    start_load = loadavg()
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    with tempfile.TemporaryDirectory(prefix="fedapp-scale-runs-") as tmp:
        for _ in range(repeats):  # every size once per repeat: others' load hits all alike
            for nodes in sizes:
                r = measure(nodes, rounds, args.sampled, Path(tmp), args.timeout)
                runs[nodes].append(r)
                print(f"{nodes} nodes: wall {r['wall-s']:.0f}s, rounds "
                      f"{[round(t, 2) for t in r.get('round-s', [])]}, peak RSS "
                      f"{mb(r['peak-rss-bytes'])} MiB, error {r['error']}", flush=True)
    results = [combine(runs[n]) for n in sizes]
    ratios(results)
    sampling = {str(n): server_sampling_ms(n, args.sampled) for n in SAMPLING_SIZES}
    flower = [flower_costs(n, args.sampled, contexts=n in CONTEXT_SIZES) for n in SAMPLING_SIZES]
    result = {"command": command_line("scale.py", argv),
              "versions": versions("flwr", "torch", "ray"), "load-start": start_load,
              "load-end": loadavg(), "rounds": rounds, "sampled": args.sampled,
              "repeats": repeats,
              "server-sampling-ms": sampling, "flower-costs": flower, "results": results}
    write_json(json_path, result)
    plot(results, png_path)
    md_path.write_text(report(result, png_path.name if full else str(png_path)))
    print(report(result, None))
    print(f"wrote {shown(json_path)}, {shown(md_path)}, {shown(png_path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
