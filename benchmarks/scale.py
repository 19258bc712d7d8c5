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
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import (
    DOCS,
    RESULTS,
    command_line,
    loadavg,
    md_table,
    output_paths,
    shown,
    versions,
    write_json,
)
from scale_runs import measure, server_sampling_ms

TARGET = 1.2
SAMPLING_SIZES = (100, 1_000, 10_000, 100_000)


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


def _mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f}"


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def table(results: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in results:
        rounds = r.get("round-s") or []
        spread = f"{min(rounds):.2f}-{max(rounds):.2f}" if rounds else "n/a"
        rows.append([f"{r['nodes']:,}", r["sampled"],
                     "failed" if r["error"] else f"{r['wall-s']:.0f}",
                     _s(r.get("first-round-done-s")), _s(r.get("round-median-s"), 2), spread,
                     _x(r.get("round-median-s-ratio")),
                     f"{_mb(r.get('peak-rss-bytes'))} / {_mb(r.get('peak-pss-bytes'))}",
                     f"{_mb(r.get('steady-peak-rss-bytes'))} / "
                     f"{_mb(r.get('steady-peak-pss-bytes'))}",
                     _x(r.get("peak-rss-bytes-ratio")), _x(r.get("steady-peak-pss-bytes-ratio")),
                     _s(r.get("steady-cpu-busy"), 2), r.get("max-processes", "n/a")])
    header = ["nodes", "sampled/round", "run wall s", "round 1 done at s", "round median s",
              "round range s", "round vs 100", "peak RSS / PSS MiB (whole run)",
              "peak RSS / PSS MiB (rounds 2+)", "peak RSS vs 100", "steady PSS vs 100",
              "CPU cores busy (rounds 2+)", "processes"]
    return md_table(header, rows)


def _s(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def state_table(results: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in results:
        if r["error"]:
            continue
        parts = r["state-bytes"]
        node_kb = [(p["health"] + p["reputation"]) / 1e3 for p in parts]
        per_node = (parts[-1]["health"] + parts[-1]["reputation"]) / max(r["health-nodes"], 1)
        rows.append([f"{r['nodes']:,}", r["sampled-total"], r["health-outcomes"],
                     r["health-nodes"], r["health-nodes-never-sampled"], r["reputation-nodes"],
                     " ".join(f"{b / 1e3:.1f}" for b in r["checkpoint-bytes"]),
                     " ".join(f"{k:.1f}" for k in node_kb),
                     f"{parts[0]['history'] / 1e3:.1f} -> {parts[-1]['history'] / 1e3:.1f}",
                     f"{per_node:.0f}"])
    return md_table(["nodes", "samples (rounds x sampled)", "outcomes in node health",
                     "nodes in node health", "of them never sampled", "nodes in reputation",
                     "checkpoint kB, round by round",
                     "health + reputation kB, round by round", "round history kB",
                     "bytes per node seen"], rows)


def verdict(results: list[dict[str, Any]]) -> list[str]:
    base, top = results[0], results[-1]
    if top["error"]:
        return [f"**{top['nodes']:,} nodes did not complete**: `{top['error'].splitlines()[0]}` "
                "(full message in the JSON)."]
    wall, mem = top.get("round-median-s-ratio"), top.get("steady-peak-pss-bytes-ratio")
    peak = top.get("peak-rss-bytes-ratio")
    ok = [v is not None and v <= TARGET for v in (wall, mem, peak)]
    return [f"Target ({top['nodes']:,} nodes against {base['nodes']:,}, {TARGET}x): median "
            f"round {_x(wall)} ({'met' if ok[0] else 'missed'}); peak memory of the rounds "
            f"(PSS) {_x(mem)} ({'met' if ok[1] else 'missed'}); whole-run peak RSS, startup "
            f"included, {_x(peak)} ({'met' if ok[2] else 'missed'})."]


def report(result: dict[str, Any], png: str | None) -> str:
    results = result["results"]
    lines = [
        "# Many hospitals: the simulation at scale", "",
        f"Generated by `{result['command']}`; load average {result['load-start']} at start, "
        f"{result['load-end']} at the end (2 shared cores: other engineers' jobs count). Raw "
        "numbers: `benchmarks/results/scale.json`.", "",
        f"Setting: `dataset='synthetic'` (defaults: about 100 rows per node, 32 features, 10 "
        f"classes), the MLP, {result['sampled']} nodes sampled per round, "
        f"{result['rounds']} rounds, {result['repeats']} run(s) per size interleaved (round "
        "times pooled, memory peaks the largest), no federated evaluation, tracking off, "
        "`client-resources-num-cpus=1` (two Ray actors), every checkpoint kept. A round's "
        "wall time is the interval between its checkpoint and the previous one (round 1, "
        "with Ray's start, has none); memory is the sum over every process under the "
        "private SuperLink, sampled every 0.5 s: RSS counts shared pages once per process, "
        "PSS splits them.", "",
        *table(results), "", *verdict(results), "",
        "## What the server keeps per node", "",
        "Node health holds every node ever sampled for training, reputation every node whose "
        "update was screened; the number of outcomes in node health equals the samples taken "
        "(every sampled node once per round it was sampled) and no node in it was never "
        "sampled. Checkpoints grow with the distinct nodes seen (at most the federation), not "
        "with the rounds once every node has been seen:", "",
        *state_table(results), "",
        "## The server's own work per round over the node ids", "",
        "`RobustStrategy.configure_train` (the wait for `min-available-nodes`, the health "
        "pool, the sample, the instructions) plus recording the round's outcomes in node "
        "health, in one process, with a grid answering N node ids (median of 20 rounds):", "",
        *md_table(["connected nodes", "ms per round"],
                  [[f"{int(n):,}", f"{ms:.2f}"] for n, ms in result["server-sampling-ms"].items()]),
        ""]
    if png:
        lines += [f"![round wall time and memory by federation size]({png})", ""]
    return "\n".join(lines + result.get("notes", []))


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        if r.get("round-s"):
            ax1.plot(range(2, 2 + len(r["round-s"])), r["round-s"], "o-",
                     label=f"{r['nodes']:,} nodes")
        if r.get("samples"):
            ax2.plot([s[0] for s in r["samples"]], [s[2] / 2**20 for s in r["samples"]],
                     label=f"{r['nodes']:,} nodes")
    ax1.set(xlabel="round", ylabel="wall time (s)", title="round wall time", ylim=(0, None))
    ax2.set(xlabel="seconds since submit", ylabel="PSS of the process tree (MiB)",
            title="memory of the whole simulation", ylim=(0, None))
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    args = parser.parse_args(argv)
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
                      f"{_mb(r['peak-rss-bytes'])} MiB, error {r['error']}", flush=True)
    results = [combine(runs[n]) for n in sizes]
    ratios(results)
    sampling = {str(n): server_sampling_ms(n, args.sampled) for n in SAMPLING_SIZES}
    result = {"command": command_line("scale.py", argv),
              "versions": versions("flwr", "torch", "ray"), "load-start": start_load,
              "load-end": loadavg(), "rounds": rounds, "sampled": args.sampled,
              "repeats": repeats,
              "server-sampling-ms": sampling, "results": results}
    write_json(json_path, result)
    plot(results, png_path)
    md_path.write_text(report(result, png_path.name if full else str(png_path)))
    print(report(result, None))
    print(f"wrote {shown(json_path)}, {shown(md_path)}, {shown(png_path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
