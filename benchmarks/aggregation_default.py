"""Aggregation latency of fedapp's *default* defence next to Flower's FedAvg, MultiKrum
and the floor.

For each size ``n`` (replies) x ``d`` (parameters), one process times, as the median of
interleaved repeats (``aggregation_default_cases``): the floor on the matrix, fedapp's
default ``RobustStrategy.aggregate_train`` (and, inside it, screening plus aggregation
on the matrix), Flower's FedAvg and MultiKrum on the same reply Messages, and once the
previous screening on the matrix. Peak memory per case runs in fresh child processes
(``aggregation_default_memory``). Ratios and the issue's targets:
``aggregation_default_report``.

    python benchmarks/aggregation_default.py [--quick] [--threads 1] [--repeats 3]
    python benchmarks/aggregation_default.py --from-json PATH

``--quick``: n in {10, 20}, d = 1e5, 2 repeats, printed only (unless ``--out``);
``--sizes 20x1e7,100x1e6``: only those sizes, printed only (unless ``--out``).
Full run: (10, 1e7), (20, 1e7), (100, 1e6) and (10, 1e8) when the machine has the
memory for it (else skipped, with the reason in the results); writes
``benchmarks/results/aggregation_default.json`` and the table into
``docs/aggregation_default.md`` (between the markers).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import DOCS, REPO, RESULTS, command_line, loadavg, machine, versions, write_json

DEFAULT_OUT = RESULTS / "aggregation_default.json"
DEFAULT_DOC = DOCS / "aggregation_default.md"
FULL_GRID = [(10, 10_000_000), (20, 10_000_000), (100, 1_000_000), (10, 100_000_000)]
#: Bytes the largest size needs at once, in matrices: the inputs, the replies and the
#: strategy's own matrix, plus 2 GB for everything else.
MATRICES_AT_ONCE = 3
BEGIN, END = "<!-- table: begin -->", "<!-- table: end -->"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 2 repeats")
    p.add_argument("--threads", type=int, default=1,
                   help="torch/OpenMP/BLAS threads (0 = library defaults)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    p.add_argument("--sizes", type=sizes_arg, default=None,
                   help="only these sizes, e.g. 20x1e7,100x1e6 (printed only, unless --out)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results JSON (default {DEFAULT_OUT.relative_to(REPO)}; none with "
                        "--quick)")
    p.add_argument("--from-json", type=Path, default=None,
                   help="no timing: print the table and targets of an earlier results file")
    return p


def sizes_arg(text: str) -> list[tuple[int, int]]:
    """``"20x1e7,100x1e6"`` -> ``[(20, 10000000), (100, 1000000)]``."""
    return [(int(n), int(float(d))) for n, d in (part.split("x") for part in text.split(","))]


def available_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def fits(n: int, d: int) -> tuple[bool, str]:
    need = MATRICES_AT_ONCE * n * d * 4 + 2 * 2**30
    have = available_bytes()
    return need <= have, f"needs about {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB available"


def bench_size(n: int, d: int, repeats: int, threads: int, memory: bool) -> dict[str, Any]:
    """One size: timings, the previous implementation once, agreement, peak memory."""
    import numpy as np
    from aggregation_default_cases import summarise, time_before, time_size
    from aggregation_default_memory import peak_memory
    from aggregation_default_report import ratios
    from aggregation_latency_memory import make_updates

    load_before = loadavg(None)
    x = make_updates(n, d)
    times, facts = time_size(x, repeats, log)
    before_s, before_agg = time_before(x)
    del x
    gc.collect()
    default_agg = facts["aggregates"]["fedapp/default"]
    size: dict[str, Any] = {
        "n": n, "d": d, "repeats": repeats, "load_average_before": load_before,
        "load_average_after": loadavg(None), "measurements": summarise(times),
        "flagged": facts["flagged"], "excluded": facts["excluded"],
        "before_on_matrix_s": before_s,
        "max_abs_diff_default_vs_before": (None if before_agg is None else
                                           float(np.max(np.abs(default_agg - before_agg)))),
        "max_abs_aggregate": float(np.max(np.abs(default_agg))),
    }
    size["not_run"] = not_run(n, d)
    size["ratios"] = ratios(size)
    if memory:
        size["peak_memory"] = peak_memory(n, d, threads)
    return size


def not_run(n: int, d: int) -> dict[str, str]:
    """The cases left out at this size, and why."""
    from aggregation_default_cases import BEFORE_MAX_ELEMENTS, MULTIKRUM_MAX_ELEMENTS

    out = {}
    if n * d > MULTIKRUM_MAX_ELEMENTS:
        out["flower/MultiKrum"] = ("its compute_distances holds the concatenated rows, their "
                                   f"stack and their squares: 3 x {n * d * 4 / 1e9:.0f} GB "
                                   "beyond the replies, more than this machine has")
    if n * d > BEFORE_MAX_ELEMENTS:
        out["fedapp/before"] = ("the previous screening copies the matrix several times, "
                                "partly in float64")
    return out


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    from aggregation_default_report import targets
    from aggregation_latency_cases import thread_settings

    logging.getLogger("flwr").setLevel(logging.ERROR)  # not every flagged node
    grid = args.sizes or ([(10, 100_000), (20, 100_000)] if args.quick else FULL_GRID)
    repeats = 2 if args.quick else args.repeats
    started, threads = time.perf_counter(), thread_settings(args.threads)
    sizes, skipped = [], []
    for n, d in grid:
        ok, why = fits(n, d)
        if not ok:
            skipped.append({"n": n, "d": d, "reason": why})
            log(f"skipping n={n} d={d:.0e}: {why}")
            continue
        log(f"n={n} d={d:.0e} ({why})")
        sizes.append(bench_size(n, d, repeats, args.threads, not args.no_memory))
    return {
        "benchmark": "aggregation_default", "command": command_line("aggregation_default.py",
                                                                    argv),
        "quick": args.quick, "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - started, "machine": machine(),
        "threads": threads, "versions": versions("torch", "numpy", "flwr"),
        "setup": {"inputs": "aggregation_latency_memory.make_updates: max(1, n // 10) rows "
                            "are -10x an honest-like row", "num_examples_per_reply": 100,
                  "timing": "median (and min) of interleaved repeats, time.perf_counter, "
                            "cyclic GC paused during each call"},
        "sizes": sizes, "skipped": skipped, "targets": targets(sizes),
    }


def write_doc(path: Path, text: str) -> None:
    """Replace the table between the page's markers (the prose is the page's own)."""
    page = path.read_text()
    head, rest = page.split(BEGIN, 1)
    path.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from aggregation_default_report import summary_text, targets

    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        results["targets"] = targets(results["sizes"])
    else:
        results = measure(args, argv)
    text = summary_text(results)
    print(text)
    partial = args.quick or args.from_json or args.sizes
    out = args.out if args.out is not None else (None if partial else DEFAULT_OUT)
    if out is not None:
        write_json(out, results)
        log(f"wrote {out}")
        if out.resolve() == DEFAULT_OUT.resolve():
            write_doc(DEFAULT_DOC, text)
            log(f"wrote the table into {DEFAULT_DOC}")


if __name__ == "__main__":
    main()
