"""Deployment at scale: per-round overhead beyond the slowest node, 20 SuperNodes vs 3.

A real deployment on loopback (``_superlink.loopback_deployment``): ``flower-superlink
--insecure`` and N ``flower-supernode --insecure`` processes, each with its own port,
``FLWR_HOME``, data cache and stamped log (``FEDAPP_COLD_START_LOG=1``), driven by ``flwr
run --stream`` (the cold-start benchmark's deployment, with N nodes). Every node trains
every round: ``fraction-train=1.0``, ``min-train-nodes`` = ``min-available-nodes`` = N,
no federated evaluation, tracking and the registry off, the metrics endpoint off; the rest
is the product's defaults (screening, checkpoints). Node i reads 152 rows (a third of the
breast-cancer training split, as the cold-start benchmark's node) drawn with seed i, so a
node's work is the same at every N, only the number of nodes changes, and no two nodes
send the same update. The SuperNodes and their ClientApps run under ``nice -n 10``
(``--node-nice``; 0: off): unniced, 20 nodes on 2 cores starved the SuperLink into SQLite
"database is locked" errors, lost replies and a SuperNode quitting (docs/deployment_scale.md).

Per round (``deployment_scale_rounds``): the server's round time (``rounds.json``),
the slowest node's per-message time (SuperNode ``Receiving`` -> ``Sending``) and the
overhead beyond it, split into skew, the last reply's upload and the server's side, with
the median node and the overhead beyond the slowest node's upload too. Round 1 carries
one-time costs (each node installs the app and fills its data cache) and is reported
apart; the medians are over rounds 2+ of every repeat. Each repeat starts a fresh
deployment for each N (in the order given) and runs one ``flwr run`` of ``--rounds``.

    python benchmarks/deployment_scale.py [--nodes 3 20] [--rounds 4] [--repeats 1]
        [--node-nice 10] [--keep-logs DIR]
    python benchmarks/deployment_scale.py --nodes 2 3 --rounds 2 --out-dir /tmp/ds  # smoke
    python benchmarks/deployment_scale.py --report-only benchmarks/results/deployment_scale.json

Nodes 3 and 20 without ``--out-dir`` write ``benchmarks/results/deployment_scale.json``,
``docs/deployment_scale.md`` and ``docs/deployment_scale.png``; anything else goes to
``--out-dir`` or a new temporary directory. Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (  # benchmarks/ is on sys.path
    DOCS,
    RESULTS,
    command_line,
    loadavg,
    output_paths,
    shown,
    versions,
    write_json,
)
from deployment_scale_plot import plot
from deployment_scale_report import markdown, table
from deployment_scale_rounds import ratio, split_first, summarize
from deployment_scale_run import ROWS_PER_NODE, hospital_files, one_run, run_config


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, nargs="+", default=[3, 20])
    p.add_argument("--rounds", type=int, default=4, help="train rounds per flwr run (>= 2)")
    p.add_argument("--repeats", type=int, default=1, help="fresh deployments per N")
    p.add_argument("--node-nice", type=int, default=10,
                   help="run the SuperNodes and their ClientApps under nice -n N (0: off)")
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                   help="write every process's stamped log lines under DIR (diagnosis)")
    p.add_argument("--report-only", type=Path, metavar="JSON",
                   help="rewrite the page and the plot from a results file, run nothing")
    return p


def aggregate(runs: list[dict[str, Any]], nodes: list[int]) -> dict[str, Any]:
    """Per N: round-1 and later-round summaries over every repeat; the largest N's
    steady medians against the smallest's."""
    by_n: dict[str, Any] = {}
    for n in nodes:
        mine = [run for run in runs if run["nodes"] == n]
        rows = [row for run in mine for row in run["rounds"]]
        first, later = split_first(rows)
        by_n[str(n)] = {
            "round-1": summarize(first), "rounds-2+": summarize(later),
            "online-s": [run["online-s"] for run in mine],
            "status": [run["status"] for run in mine],
            "unfinished-rounds": [{"repeat": run["repeat"], **row} for run in mine
                                  for row in run["rounds"] if "unfinished-nodes" in row],
            "errors": {k: sum(run["errors"][k] for run in mine) for k in mine[0]["errors"]}}
    lo, hi = str(min(nodes)), str(max(nodes))
    ratios = {}
    for key in ("overhead-s", "overhead-sent-s", "round-s", "slowest-node-s", "median-node-s"):
        hi_s, lo_s = by_n[hi]["rounds-2+"].get(key), by_n[lo]["rounds-2+"].get(key)
        if hi_s and lo_s:
            a, b = hi_s["median"], lo_s["median"]
            ratios[key] = {"ratio": ratio(a, b), "difference-s": a - b}
    return {"by-nodes": by_n, f"{hi}-vs-{lo}": ratios}


def paths(args: argparse.Namespace) -> list[Path]:
    """The results JSON, the page and the plot (``common.output_paths``)."""
    names = ["deployment_scale.json", "deployment_scale.md", "deployment_scale.png"]
    return output_paths(names, [RESULTS / names[0], DOCS / names[1], DOCS / names[2]],
                        full=sorted(args.nodes) == [3, 20], out_dir=args.out_dir,
                        prefix="fedapp-deploy-scale-")


def write_report(result: dict[str, Any], md_path: Path, png_path: Path) -> None:
    plot(result, png_path)
    same_dir = png_path.parent == md_path.parent
    md_path.write_text(markdown(result, png_path.name if same_dir else str(png_path)) + "\n")
    print(f"wrote {shown(md_path)}, {shown(png_path)}", flush=True)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every repeat: a fresh deployment and one run per N, in the order given."""
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedapp-deploy-scale-data-") as tmp:
        files = hospital_files(Path(tmp), max(args.nodes))
        for r in range(args.repeats):
            for n in args.nodes:
                label = f"N={n} repeat {r + 1}/{args.repeats}"
                logs = args.keep_logs / f"nodes-{n}-repeat-{r + 1}" if args.keep_logs else None
                runs.append({"repeat": r + 1, **one_run(files, n, args.rounds, label, logs,
                                                        args.node_nice)})
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.report_only:
        result = json.loads(args.report_only.read_text())
        if args.report_only.resolve() == (RESULTS / "deployment_scale.json").resolve():
            md_path, png_path = DOCS / "deployment_scale.md", DOCS / "deployment_scale.png"
        else:
            md_path, png_path = (args.report_only.with_suffix(s) for s in (".md", ".png"))
        write_report(result, md_path, png_path)
        return 0
    if args.rounds < 2:
        raise SystemExit("--rounds must be at least 2 (round 1 is reported apart)")
    json_path, md_path, png_path = paths(args)
    started, load_start = time.time(), loadavg()
    runs = measure(args)
    config = run_config(0, args.rounds, Path("OUT")).replace(
        "min-train-nodes=0 min-available-nodes=0", "min-train-nodes=N min-available-nodes=N")
    result: dict[str, Any] = {
        "command": command_line("deployment_scale.py", argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 1),
        "versions": versions("flwr", "torch"),
        "load-avg-start": load_start, "load-avg-end": loadavg(),
        "setup": {"nodes": args.nodes, "rounds": args.rounds, "repeats": args.repeats,
                  "node-nice": args.node_nice,
                  "run-config": config.replace(" output-dir='OUT'", ""),
                  "data": f"node i reads {ROWS_PER_NODE} rows drawn (seed i, without "
                          "replacement) from the breast-cancer training split (455 rows)"},
        **aggregate(runs, args.nodes), "runs": runs,
    }
    write_json(json_path, result)
    print("\n".join(table(result)), flush=True)
    print(f"wrote {shown(json_path)}", flush=True)
    write_report(result, md_path, png_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
