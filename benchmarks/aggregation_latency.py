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
    python benchmarks/aggregation_latency.py --from-json PATH [--out PATH]

``--quick``: n in {10, 20}, d = 1e4, 2 repeats, results printed only (unless --out).
``--threads N`` caps torch, OpenMP and BLAS threads (default 1, so that ours and
Flower's run alike on a shared machine; 0 keeps the libraries' defaults).
``--from-json PATH``: no timing; the table and targets of an earlier results file (its
targets recomputed from its sizes), and with ``--out`` that file with those targets.

Modules: ``aggregation_latency_cases`` (inputs, what is timed, one size),
``aggregation_latency_memory`` (the update matrix, peak memory in child processes),
``aggregation_latency_report`` (ratios, agreement, targets, the table).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import REPO, RESULTS, command_line, git, loadavg, machine, versions, write_json

DEFAULT_OUT = RESULTS / "aggregation_latency.json"
MACHINE_NOTE = ("shared machine: other work ran at the same time; see the load "
                "averages (1, 5, 15 min) recorded per size")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 2 repeats")
    p.add_argument("--threads", type=int, default=1,
                   help="torch/OpenMP/BLAS threads (0 = library defaults)")
    p.add_argument("--repeats", type=int, default=5, help="repeats below n*d = 5e7")
    p.add_argument("--big-repeats", type=int, default=3, help="repeats from n*d = 5e7")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results JSON (default {DEFAULT_OUT.relative_to(REPO)}, "
                        "none with --quick or --from-json)")
    p.add_argument("--from-json", type=Path, default=None,
                   help="no timing: print the table and targets of an earlier results file")
    return p


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_versions() -> dict[str, Any]:
    """Python's and the libraries' versions, the commit and fedapp/robust's changes to it."""
    out = versions("torch", "numpy", "flwr")
    out["fedapp_commit"] = git("rev-parse", "HEAD") or None
    if out["fedapp_commit"] is not None:
        out["fedapp_robust_uncommitted_changes"] = git(
            "diff", "--name-only", "HEAD", "--", "fedapp/robust").split()
    return out


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    """Time every size of the grid (``--quick``: n in {10, 20}, d = 1e4); the results."""
    from aggregation_latency_cases import BIG, NUM_EXAMPLES, ONCE, bench_size, thread_settings
    from aggregation_latency_memory import SEED
    from aggregation_latency_report import targets

    logging.getLogger("flwr").setLevel(logging.WARNING)  # after importing flwr, which sets it
    if args.quick:
        grid, repeats = [(n, 10_000) for n in (10, 20)], (2, 2)
    else:
        grid = [(n, d) for d in (100_000, 1_000_000) for n in (10, 50, 100)]
        repeats = (args.repeats, args.big_repeats)
    started = time.perf_counter()
    threads = thread_settings(args.threads)
    load_start, facts = loadavg(None), machine()
    log(f"aggregation latency: {len(grid)} sizes, threads {threads['torch_num_threads']}, "
        f"{facts['cpus']} CPUs, load {load_start[0]:.1f}")
    sizes = [bench_size(n, d, repeats[0] if n * d < BIG else repeats[1], args.threads, log)
             for n, d in grid]
    return {
        "benchmark": "aggregation_latency",
        "command": command_line("aggregation_latency.py", argv),
        "quick": args.quick,
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - started,
        "machine": {"platform": facts["platform"], "processor": platform.processor(),
                    "cpu_count": facts["cpus"], "note": MACHINE_NOTE},
        "load_average_start": load_start, "load_average_end": loadavg(None),
        "threads": threads,
        "versions": run_versions(),
        "setup": {"seed": SEED, "num_examples_per_reply": NUM_EXAMPLES,
                  "f": "n // 5", "flower_trimmed_beta": 0.2,
                  "outliers": "max(1, n // 10) rows are -10 x an honest-like row",
                  "timing": "median (and min) of interleaved repeats, time.perf_counter, "
                            "cyclic GC paused during each call and run between repeats",
                  "timed_once": list(ONCE)},
        "sizes": sizes,
        "targets": targets(sizes),
    }


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from aggregation_latency_report import summary_text, targets

    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        results["targets"] = targets(results["sizes"])
        out_path = args.out
    else:
        results = measure(args, argv)
        out_path = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    print(summary_text(results))
    if out_path is not None:
        write_json(out_path, results)
        log(f"wrote {out_path}")
    if args.from_json is None:
        log(f"done in {results['duration_s']:.0f} s")


if __name__ == "__main__":
    main()
