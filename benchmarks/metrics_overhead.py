"""What exporting Prometheus metrics costs a round, side by side with and without it.

    python benchmarks/metrics_overhead.py            # writes results/ and docs/
    python benchmarks/metrics_overhead.py --quick    # 3 rounds, 4 nodes, 1 repeat, /tmp

Two measurements in one process:

1. **End to end**: real `flwr run`s (simulation, digits, the default MLP, 10 nodes, the
   default robust screening), alternately with ``metrics-port`` (scraped once a second by
   a thread of this process, 15x more often than Prometheus's default) and with
   ``metrics-port=0``. A round's wall time is the interval between consecutive
   checkpoint files (each written at the end of its round: training, aggregation,
   evaluation, metrics). The difference of the medians is within the rounds' noise.
2. **In process** (what the ServerApp itself does per round, timed precisely):
   ``FederationMetrics.observe`` on a 10-node round's row and diagnostics, and one
   rendering of ``/metrics`` (``prometheus_client.generate_latest``). The cost per round
   is ``observe + render x scrapes per round``, at a 15 s scrape interval and at 1 s; the
   ratio is that cost over the median round of the runs without metrics.

Outputs: ``benchmarks/results/metrics_overhead.json`` and ``docs/metrics_overhead.md``.
Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import itertools
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from _superlink import private_superlink
from common import (
    DOCS,
    RESULTS,
    command_line,
    interleave,
    loadavg,
    md_table,
    output_paths,
    shown,
    versions,
    write_json,
)
from prometheus_client import generate_latest

from fedapp.monitoring import FederationMetrics
from fedapp.server import checkpoint
from fedapp.server.rounds import RoundStats
from fedapp.sweep import flwr_cli as runner

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scraper(port: int, stop: threading.Event, interval: float = 1.0) -> threading.Thread:
    """A thread that scrapes ``/metrics`` every ``interval`` seconds until ``stop``."""
    def loop() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(OSError):  # before the ServerApp serves, or after
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def round_intervals(rounds: int, nodes: int, metrics: bool, env: dict[str, str]) -> list[float]:
    """One run; the intervals between its rounds' checkpoint files (s)."""
    port = free_port() if metrics else 0
    with tempfile.TemporaryDirectory(prefix="fedapp-metrics-run-") as tmp:
        config = {"num-server-rounds": rounds, "local-epochs": 1, "output-dir": tmp,
                  "tracking": False, "checkpoint-keep": rounds + 1, "metrics-port": port,
                  "anomaly-detection": "exclude"}
        stop = threading.Event()
        thread = scraper(port, stop) if metrics else None
        try:
            run_id, _ = runner.run_and_check(
                REPO, config, env=env, timeout=1800,
                federation_config=f"num-supernodes={nodes} client-resources-num-cpus=1")
        finally:
            stop.set()
        if thread is not None:
            thread.join()
        directory = Path(tmp) / f"run-{run_id}" / checkpoint.DIRECTORY
        stamps = [p.stat().st_mtime for p in sorted(directory.glob("round-*.ckpt"))]
    return [b - a for a, b in itertools.pairwise(stamps)]


def in_process_seconds(nodes: int, repeats: int) -> tuple[float, float, int]:
    """Median seconds of ``observe`` and of one ``/metrics`` rendering, and its bytes."""
    metrics = FederationMetrics(run_id=1, dataset="digits", aggregator="fedavg",
                                planned_rounds=repeats, quorum=2, model_bytes=4 * 4810,
                                dp_budget=3.0)
    ids = tuple(range(1, nodes + 1))
    observe, render = [], []
    for r in range(1, repeats + 1):
        row = {"round": r, "replies": nodes, "accepted": nodes, "rejected": 0, "failures": 0,
               "flagged": 1, "excluded": 1, "bytes-up": 2e5, "bytes-down": 2e5,
               "server-accuracy": 0.9, "server-loss": 0.3, "train-loss": 0.4,
               "nodes-sampled": nodes, "nodes-healthy": nodes, "aggregation-seconds": 0.01}
        stats = RoundStats(r, accepted=nodes, accepted_nodes=ids,
                           flagged_checks={ids[r % nodes]: ("cosine",)},
                           excluded_nodes=(ids[r % nodes],), node_epsilon=dict.fromkeys(ids, 1.0))
        start = time.perf_counter()
        metrics.observe(row, stats, dict.fromkeys(ids, 0.5))
        observe.append(time.perf_counter() - start)
        start = time.perf_counter()
        text = generate_latest(metrics.registry)
        render.append(time.perf_counter() - start)
    return statistics.median(observe), statistics.median(render), len(text)


def summarize(samples: dict[str, list[list[float]]], observe: float, render: float
              ) -> dict[str, Any]:
    """Medians per case and the overhead ratios."""
    flat = {name: [s for run in runs for s in run] for name, runs in samples.items()}
    off, on = statistics.median(flat["off"]), statistics.median(flat["on"])
    per_round_15 = observe + render * off / 15.0
    per_round_1 = observe + render * max(off / 1.0, 1.0)
    per_run = {name: [round(statistics.median(run), 4) for run in runs]
               for name, runs in samples.items()}
    return {"round-s": flat, "run-median-s": per_run, "round-median-off-s": off,
            "round-median-on-s": on,
            "end-to-end-ratio": on / off, "observe-s": observe, "render-s": render,
            "ratio-15s-scrape": per_round_15 / off, "ratio-1s-scrape": per_round_1 / off}


def report(r: dict[str, Any]) -> str:
    """The markdown page."""
    rows = [["round without metrics (metrics-port=0)", f"{r['round-median-off-s']:.3f}",
             len(r["round-s"]["off"])],
            ["round with metrics, scraped every 1 s", f"{r['round-median-on-s']:.3f}",
             len(r["round-s"]["on"])],
            ["`FederationMetrics.observe`, once per round", f"{r['observe-s']:.6f}", r["repeats"]],
            [f"rendering `/metrics` ({r['metrics-bytes']:,} bytes), once per scrape",
             f"{r['render-s']:.6f}", r["repeats"]]]
    return "\n".join([
        "# Metrics overhead", "",
        f"Generated by `{r['command']}`; load average {r['load-start']} at start, "
        f"{r['load-end']} at the end. Raw numbers: `benchmarks/results/metrics_overhead.json`.",
        "", f"Setting: digits, default MLP, {r['nodes']} simulated nodes, {r['rounds']} rounds "
        f"of 1 local epoch, screening on; {r['repeats-runs']} runs of each case, interleaved.",
        "", *md_table(["what", "median s", "n"], rows), "",
        f"**Exporting costs {100 * r['ratio-15s-scrape']:.3f}% of a round** at Prometheus's "
        f"default 15 s scrape interval and {100 * r['ratio-1s-scrape']:.3f}% scraped every "
        "second (in-process cost over the median round; target <= 1%). End to end, the "
        f"runs with metrics took {r['end-to-end-ratio']:.3f}x the rounds of the runs "
        f"without (median round of each run: without {r['run-median-s']['off']} s, with "
        f"{r['run-median-s']['on']} s).", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, 4 nodes, 1 repeat")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each case")
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)
    rounds, nodes, repeats = (3, 4, 1) if args.quick else (8, 10, args.repeats)
    json_path, md_path = output_paths(
        ["metrics_overhead.json", "metrics_overhead.md"],
        [RESULTS / "metrics_overhead.json", DOCS / "metrics_overhead.md"],
        full=not args.quick and args.out_dir is None, out_dir=args.out_dir,
        prefix="fedapp-metrics-")
    start_load = loadavg()
    observe, render, size = in_process_seconds(nodes, 1000)
    package_versions = {**versions("flwr"),
                        "prometheus-client": importlib.metadata.version("prometheus-client")}
    with private_superlink() as (env, _):
        samples = interleave(
            {"off": lambda: round_intervals(rounds, nodes, False, env),
             "on": lambda: round_intervals(rounds, nodes, True, env)}, repeats,
            after_repeat=lambda i, _: print(f"repeat {i + 1}/{repeats} done", flush=True))
    result = {"command": command_line("metrics_overhead.py", argv),
              "versions": package_versions, "load-start": start_load,
              "load-end": loadavg(), "rounds": rounds, "nodes": nodes, "repeats": 1000,
              "repeats-runs": repeats, "metrics-bytes": size,
              **summarize(samples, observe, render)}
    write_json(json_path, result)
    md_path.write_text(report(result))
    print(report(result))
    print(f"wrote {shown(json_path)}, {shown(md_path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
