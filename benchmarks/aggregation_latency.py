"""Aggregation latency: our robust rules vs Flower's built-in strategies, side by side.

For every size ``n`` (updates) x ``d`` (parameters), one process times, as the median
of the repeats (interleaved: repeat r runs every measurement once before repeat r+1,
so a load spike hits all of them alike):

* ``yardstick/*``: one float32 Gram matmul ``X @ X.T`` (the target's yardstick) and
  our float64 distance matrix ``pairwise_sq_distances(X)`` (Krum's floor);
* ``ours/*``: the pure rules of ``fedapp.robust`` on the ``(n, d)`` float32 tensor:
  multikrum (f = n//5, m = n - f), krum, median, trimmed-mean (f = n//5), geomed,
  centered-clipping (one step from 0, tau = median row norm), fedavg (weighted mean),
  and median / trimmed-mean with unequal weights (the general, permutation-based path);
* ``flower/*``: Flower's ``aggregate_train(1, replies)`` on the same updates delivered
  as reply Messages (``configure_train`` first, with a stub grid): MultiKrum
  (num_malicious_nodes = n//5, num_nodes_to_select = n - n//5), Krum, FedMedian,
  FedTrimmedAvg (beta = 0.2, i.e. the same n//5 trimmed per side), Bulyan (only where
  n >= 4f + 3; timed once per size, like our unequal-weights variants: slow and
  without a target), FedAvg;
* ``e2e/*``: our ``RobustStrategy.aggregate_train(1, replies)`` on the same replies
  (validation, updates matrix, weights, rule, new global model), the fair
  end-to-end counterpart of Flower's.

The global model is zero, so a reply's weights are its update and both sides
aggregate the same numbers; the agreement of the results is recorded too. Replies
are rebuilt (untimed) before every call, since FedMedian, FedTrimmedAvg and Bulyan
consume them. Every reply reports the same ``num-examples``.

Peak memory beyond the inputs (multikrum, krum, median, trimmed-mean) is measured in a
fresh child process per rule and size (spawned, so it holds none of the parent's
arrays): the child runs the rule once on a small matrix (lazy library set-up), builds
the inputs in place, resets the kernel's peak-RSS mark
(``echo 5 > /proc/self/clear_refs``), calls the rule and reads ``VmHWM`` from
``/proc/self/status``: peak beyond inputs = VmHWM - VmRSS just before the call. This
counts every allocation (torch, numpy, BLAS buffers), which torch's allocator
statistics would not on CPU. Where clear_refs is not writable, the child uses
``ru_maxrss`` after - before instead (a lower bound), and the results say so.

    python benchmarks/aggregation_latency.py [--quick] [--threads 1] [--out PATH]

``--quick``: n in {10, 20}, d = 1e4, 2 repeats, results printed only (unless --out).
``--threads N`` caps torch, OpenMP and BLAS threads (default 1, so that ours and
Flower's run alike on a shared machine; 0 keeps the libraries' defaults).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
)
from flwr.supercore.task_identity import TaskIdentity

from fedapp.robust import (
    centered_clipping,
    coordinate_median,
    geometric_median,
    krum,
    multi_krum,
    trimmed_mean,
    weighted_mean,
)
from fedapp.robust.distances import pairwise_sq_distances
from fedapp.server.pipeline import AggregationPipeline
from fedapp.server.strategy import RobustStrategy
from fedapp.updates import flatten

REPO = Path(__file__).resolve().parents[1]

# Messages are created inside a task (a ServerApp process in production); give this
# process the identity a ServerApp would have.
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

DEFAULT_OUT = REPO / "benchmarks" / "results" / "aggregation_latency.json"
SEED = 20251123
NUM_EXAMPLES = 100
BIG = 50_000_000  # n * d from which the repeats drop to 3
#: Slow measurements with no target, timed in the first repeat only (runtime budget).
ONCE = ("flower/Bulyan", "ours/median-unequal-weights", "ours/trimmed-mean-unequal-weights")
MEMORY_RULES = ("multikrum", "krum", "median", "trimmed-mean")
# (ours rule-only, Flower built-in, ours end to end) compared in the ratios.
PAIRS = (
    ("multikrum", "MultiKrum"),
    ("krum", "Krum"),
    ("median", "FedMedian"),
    ("trimmed-mean", "FedTrimmedAvg"),
    ("fedavg", "FedAvg"),
)


class StubGrid:
    """Just enough of a Grid for configure_train to sample all ``n`` nodes."""

    def __init__(self, n: int) -> None:
        self.nodes = list(range(1, n + 1))

    def get_node_ids(self) -> list[int]:
        return self.nodes


# --- inputs -------------------------------------------------------------------------


def make_updates(n: int, d: int, seed: int = SEED) -> torch.Tensor:
    """Honest rows ~ N(0.001, 0.01^2) per coordinate; max(1, n//10) outlier rows.

    Outliers: rows 0, 1, ... are replaced by ``-10 x`` (sign flip, scaled). Built in
    place, so creating the inputs leaves no temporary of the matrix's size behind.
    """
    gen = torch.Generator().manual_seed(seed + 1000 * n + d)
    x = torch.empty(n, d, dtype=torch.float32)
    x.normal_(0.001, 0.01, generator=gen)
    x[: max(1, n // 10)].mul_(-10.0)
    return x


def layer_sizes(d: int) -> list[int]:
    """Split ``d`` parameters into three 'layers' (a model is several arrays)."""
    return [d // 2, d // 4, d - d // 2 - d // 4]


def global_arrays(d: int) -> ArrayRecord:
    return ArrayRecord({f"layer{i}": Array(np.zeros(s, np.float32))
                        for i, s in enumerate(layer_sizes(d))})


def build_replies(messages: list[Message], x: np.ndarray) -> list[Message]:
    """One train reply per message: row i of ``x`` cut into the layers (weights = update)."""
    bounds = np.cumsum([0, *layer_sizes(x.shape[1])])
    replies = []
    for msg, row in zip(messages, x, strict=True):
        arrays = ArrayRecord({f"layer{i}": Array(np.ascontiguousarray(row[a:b]))
                              for i, (a, b) in enumerate(itertools.pairwise(bounds))})
        content = RecordDict({"arrays": arrays,
                              "metrics": MetricRecord({"num-examples": NUM_EXAMPLES})})
        replies.append(Message(content=content, reply_to=msg))
    return replies


# --- what is timed ------------------------------------------------------------------


def rule_calls(x: torch.Tensor, f: int) -> dict[str, Callable[[], Any]]:
    """Our rules and the yardsticks on the (n, d) tensor, by result name."""
    n = x.shape[0]
    tau = float(torch.linalg.vector_norm(x, dim=1).median())
    w = torch.linspace(1.0, 3.0, n, dtype=torch.float64)  # unequal weights
    return {
        "yardstick/gram-f32": lambda: x @ x.T,
        "yardstick/distances-f64": lambda: pairwise_sq_distances(x),
        "ours/multikrum": lambda: multi_krum(x, f=f),
        "ours/krum": lambda: krum(x, f=f),
        "ours/median": lambda: coordinate_median(x, f=f),
        "ours/trimmed-mean": lambda: trimmed_mean(x, f=f),
        "ours/geomed": lambda: geometric_median(x),
        "ours/centered-clipping": lambda: centered_clipping(x, tau=tau),
        "ours/fedavg": lambda: weighted_mean(x),
        "ours/median-unequal-weights": lambda: coordinate_median(x, w, f=f),
        "ours/trimmed-mean-unequal-weights": lambda: trimmed_mean(x, w, f=f),
    }


def strategies(n: int, f: int) -> dict[str, Any]:
    """Flower's built-ins and our strategy end to end, by result name."""
    common = {"min_available_nodes": n, "min_train_nodes": n}
    out: dict[str, Any] = {
        "flower/MultiKrum": MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f,
                                      **common),
        "flower/Krum": Krum(num_malicious_nodes=f, **common),
        "flower/FedMedian": FedMedian(**common),
        "flower/FedTrimmedAvg": FedTrimmedAvg(beta=0.2, **common),
        "flower/FedAvg": FedAvg(**common),
    }
    if n >= 4 * f + 3:
        out["flower/Bulyan"] = Bulyan(num_malicious_nodes=f, **common)
    for rule in ("multikrum", "krum", "median", "trimmed-mean", "fedavg"):
        pipeline = AggregationPipeline(rule=rule, f=0 if rule == "fedavg" else f)
        out[f"e2e/{rule}"] = RobustStrategy(aggregation=pipeline, **common)
    return out


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call, with Python's cyclic GC paused (it runs between repeats)."""
    gc.disable()
    try:
        t0 = time.perf_counter()
        result = fn()
        return time.perf_counter() - t0, result
    finally:
        gc.enable()


def to_flat(result: Any) -> np.ndarray:
    """The aggregate of any timed call, as one float32 vector."""
    if isinstance(result, tuple) and result and isinstance(result[0], ArrayRecord):
        return flatten(result[0])
    return result.aggregate.numpy()


# --- peak memory (child process) ----------------------------------------------------


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def _peak_memory_child(rule: str, n: int, d: int, threads: int) -> dict[str, Any]:
    """Runs in a fresh process: peak RSS of one rule call beyond its inputs."""
    if threads > 0:
        torch.set_num_threads(threads)
    f = n // 5
    call = {
        "multikrum": lambda x: multi_krum(x, f=f),
        "krum": lambda x: krum(x, f=f),
        "median": lambda x: coordinate_median(x, f=f),
        "trimmed-mean": lambda x: trimmed_mean(x, f=f),
    }[rule]
    call(make_updates(n, 1000))  # warm-up: lazy library set-up is not the rule's memory
    x = make_updates(n, d)
    gc.collect()
    rss_before = _status_kib("VmRSS")
    ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if _reset_peak_rss():
        method = "VmHWM after - VmRSS before (clear_refs reset)"
    else:
        method = "ru_maxrss after - before (lower bound: clear_refs not writable)"
    result = call(x)
    hwm_after = _status_kib("VmHWM")
    ru_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del result
    extra_kib = (hwm_after - rss_before if method.startswith("VmHWM")
                 else max(0, ru_after - ru_before))
    return {"peak_beyond_inputs_bytes": extra_kib * 1024, "rss_before_bytes": rss_before * 1024,
            "inputs_bytes": n * d * 4, "method": method}


def peak_memory(n: int, d: int, threads: int) -> dict[str, dict[str, Any]]:
    """Peak memory of each of MEMORY_RULES at one size, each in a fresh child process.

    One child per rule: memory a previous rule freed can stay resident in the
    allocator and would hide the next rule's peak.
    """
    ctx = mp.get_context("spawn")
    out: dict[str, dict[str, Any]] = {}
    for rule in MEMORY_RULES:
        with ctx.Pool(1) as pool:
            out[rule] = pool.apply(_peak_memory_child, (rule, n, d, threads))
    for mem in out.values():
        mem["budget_bytes"] = 2 * n * d * 4
        mem["within_budget"] = mem["peak_beyond_inputs_bytes"] <= mem["budget_bytes"]
    return out


# --- one size -----------------------------------------------------------------------


def bench_size(n: int, d: int, repeats: int, threads: int, log: Callable[[str], None]
               ) -> dict[str, Any]:
    f = n // 5
    load_before = os.getloadavg()
    x = make_updates(n, d)
    x_np = x.numpy()
    calls = rule_calls(x, f)
    strats = strategies(n, f)
    messages = {name: list(s.configure_train(1, global_arrays(d), ConfigRecord(), StubGrid(n)))
                for name, s in strats.items()}
    times: dict[str, list[float]] = {name: [] for name in [*calls, *strats]}
    flats: dict[str, np.ndarray] = {}
    for r in range(repeats):
        gc.collect()
        for name, fn in calls.items():
            if r > 0 and name in ONCE:
                continue
            seconds, result = timed(fn)
            times[name].append(seconds)
            if r == 0 and name.startswith("ours/"):
                flats[name] = to_flat(result)
            del result
        for name, strategy in strats.items():
            if r > 0 and name in ONCE:
                continue
            replies = build_replies(messages[name], x_np)
            seconds, result = timed(lambda s=strategy, rs=replies: s.aggregate_train(1, rs))
            times[name].append(seconds)
            if r == 0:
                if result[0] is None:
                    raise RuntimeError(f"{name} returned no arrays at n={n}, d={d}")
                flats[name] = to_flat(result)
            del replies, result
        log(f"  n={n} d={d} repeat {r + 1}/{repeats} done (load {os.getloadavg()[0]:.1f})")
    measurements = {name: {"times_s": ts, "median_s": statistics.median(ts), "min_s": min(ts)}
                    for name, ts in times.items()}
    med = {name: m["median_s"] for name, m in measurements.items()}
    gram = med["yardstick/gram-f32"]
    ratios = {
        "flower_over_ours": {rule: med[f"flower/{fl}"] / med[f"ours/{rule}"]
                             for rule, fl in PAIRS},
        "flower_over_ours_e2e": {rule: med[f"flower/{fl}"] / med[f"e2e/{rule}"]
                                 for rule, fl in PAIRS},
        "over_gram_f32": {name: t / gram for name, t in med.items()},
    }
    agreement = {}
    for rule, fl in PAIRS:
        ref = flats[f"flower/{fl}"]
        agreement[rule] = {
            "max_abs_diff_ours_vs_flower": float(np.max(np.abs(flats[f"ours/{rule}"] - ref))),
            "max_abs_diff_e2e_vs_flower": float(np.max(np.abs(flats[f"e2e/{rule}"] - ref))),
        }
    del x, x_np, calls, strats, messages, flats
    gc.collect()
    memory = peak_memory(n, d, threads)
    for rule in MEMORY_RULES:
        log(f"  n={n} d={d} peak memory {rule}: "
            f"{memory[rule]['peak_beyond_inputs_bytes'] / 2**20:.0f} MiB beyond inputs "
            f"(budget {memory[rule]['budget_bytes'] / 2**20:.0f} MiB)")
    return {"n": n, "d": d, "f": f, "repeats": repeats,
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "measurements": measurements, "ratios": ratios, "agreement": agreement,
            "peak_memory": memory}


# --- report -------------------------------------------------------------------------


def targets(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets at n=100, d=1e6 (only in a full run)."""
    big = next((s for s in sizes if s["n"] == 100 and s["d"] == 1_000_000), None)
    if big is None:
        return {"evaluated": False, "reason": "n=100, d=1e6 not in this run (--quick?)"}
    r = big["ratios"]
    out: dict[str, Any] = {"evaluated": True}
    for rule in ("krum", "multikrum"):
        ratio = r["over_gram_f32"][f"ours/{rule}"]
        out[f"{rule}_within_2x_gram_f32"] = {"value": ratio, "met": ratio <= 2.0}
        out[f"{rule}_3x_faster_than_flower"] = {
            "rule_only": r["flower_over_ours"][rule], "e2e": r["flower_over_ours_e2e"][rule],
            "met_rule_only": r["flower_over_ours"][rule] >= 3.0,
            "met_e2e": r["flower_over_ours_e2e"][rule] >= 3.0}
    for rule in ("median", "trimmed-mean"):
        out[f"{rule}_2x_faster_than_flower"] = {
            "rule_only": r["flower_over_ours"][rule], "e2e": r["flower_over_ours_e2e"][rule],
            "met_rule_only": r["flower_over_ours"][rule] >= 2.0,
            "met_e2e": r["flower_over_ours_e2e"][rule] >= 2.0}
    for rule in ("multikrum", "median", "trimmed-mean"):
        mem = big["peak_memory"][rule]
        out[f"{rule}_peak_memory_within_2nd4"] = {
            "bytes": mem["peak_beyond_inputs_bytes"], "budget": mem["budget_bytes"],
            "met": mem["within_budget"]}
    return out


def markdown_table(sizes: list[dict[str, Any]]) -> str:
    rows = ["| n | d | rule | ours (s) | ours / Gram | ours e2e (s) | Flower (s) "
            "| Flower / ours | Flower / ours e2e | peak mem / 2nd4 |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in sizes:
        med = {k: v["median_s"] for k, v in s["measurements"].items()}
        gram = med["yardstick/gram-f32"]
        rows.append(f"| {s['n']} | {s['d']:.0e} | Gram X Xᵀ f32 (yardstick) | {gram:.3f} | 1.00 "
                    "| | | | | |")
        dist = med["yardstick/distances-f64"]
        rows.append(f"| {s['n']} | {s['d']:.0e} | distances f64 (Krum's floor) | {dist:.3f} "
                    f"| {dist / gram:.2f} | | | | | |")
        for rule, fl in PAIRS:
            mem = s["peak_memory"].get(rule)
            mem_s = f"{mem['peak_beyond_inputs_bytes'] / mem['budget_bytes']:.2f}" if mem else ""
            ours, e2e, flower = med[f"ours/{rule}"], med[f"e2e/{rule}"], med[f"flower/{fl}"]
            rows.append(f"| {s['n']} | {s['d']:.0e} | {rule} vs {fl} | {ours:.3f} "
                        f"| {ours / gram:.2f} | {e2e:.3f} | {flower:.3f} | {flower / ours:.2f} "
                        f"| {flower / e2e:.2f} | {mem_s} |")
        for name in ("geomed", "centered-clipping", "median-unequal-weights",
                     "trimmed-mean-unequal-weights"):
            t = med[f"ours/{name}"]
            rows.append(f"| {s['n']} | {s['d']:.0e} | {name} | {t:.3f} | {t / gram:.2f} "
                        "| | | | | |")
        if "flower/Bulyan" in med:
            rows.append(f"| {s['n']} | {s['d']:.0e} | Flower Bulyan (f={s['f']}) | | | "
                        f"| {med['flower/Bulyan']:.3f} | | | |")
    return "\n".join(rows)


def versions() -> dict[str, Any]:
    import flwr

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "numpy": np.__version__, "flwr": flwr.__version__}
    try:
        out["fedapp_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "diff", "--name-only", "HEAD", "--", "fedapp/robust"], cwd=REPO,
            capture_output=True, text=True, check=True).stdout.split()
        out["fedapp_robust_uncommitted_changes"] = changed
    except (OSError, subprocess.CalledProcessError):
        out["fedapp_commit"] = None
    return out


def thread_settings(threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {"requested": threads}
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_info, threadpool_limits

        if threads > 0:
            threadpool_limits(limits=threads)  # numpy's OpenBLAS (and any OpenMP)
        info["threadpools"] = [{k: p[k] for k in ("internal_api", "num_threads", "filepath")}
                               for p in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed: numpy's BLAS threads not capped"
    info["torch_num_threads"] = torch.get_num_threads()
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repeats")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/OpenMP/BLAS threads (0 = library defaults)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats below n*d = 5e7")
    parser.add_argument("--big-repeats", type=int, default=3, help="repeats from n*d = 5e7")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results JSON (default {DEFAULT_OUT.relative_to(REPO)}, "
                             "none with --quick)")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)

    if args.quick:
        grid, repeats = [(n, 10_000) for n in (10, 20)], (2, 2)
    else:
        grid = [(n, d) for d in (100_000, 1_000_000) for n in (10, 50, 100)]
        repeats = (args.repeats, args.big_repeats)
    out_path = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    threads = thread_settings(args.threads)
    load_start = os.getloadavg()
    log(f"aggregation latency: {len(grid)} sizes, threads {threads['torch_num_threads']}, "
        f"{os.cpu_count()} CPUs, load {load_start[0]:.1f}")
    sizes = []
    for n, d in grid:
        reps = repeats[0] if n * d < BIG else repeats[1]
        sizes.append(bench_size(n, d, reps, args.threads, log))
    results = {
        "benchmark": "aggregation_latency",
        "command": " ".join(["python", "benchmarks/aggregation_latency.py", *sys.argv[1:]]),
        "quick": args.quick,
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - started,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(),
                    "note": "shared machine: other work ran at the same time; see the load "
                            "averages (1, 5, 15 min) recorded per size"},
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "threads": threads,
        "versions": versions(),
        "setup": {"seed": SEED, "num_examples_per_reply": NUM_EXAMPLES,
                  "f": "n // 5", "flower_trimmed_beta": 0.2,
                  "outliers": "max(1, n // 10) rows are -10 x an honest-like row",
                  "timing": "median (and min) of interleaved repeats, time.perf_counter, "
                            "cyclic GC paused during each call and run between repeats",
                  "timed_once": list(ONCE)},
        "sizes": sizes,
        "targets": targets(sizes),
    }
    print(markdown_table(sizes))
    print(json.dumps(results["targets"], indent=2))
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {out_path}")
    log(f"done in {results['duration_s']:.0f} s")


if __name__ == "__main__":
    main()
