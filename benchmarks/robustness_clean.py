"""What a defence costs without attack, seed by seed: each row's clean accuracy minus clean
FedAvg's of the same federation and seed, over however many seeds were played.

    python benchmarks/robustness.py --nodes 40 --alphas 0.1 --fractions 0.2 \\
        --seeds 0,1,2,3,4,5,6,7,8,9 --rows ours-recommended,ours-flag-only --attacks none \\
        --workdir /tmp/clean40 --out-dir /tmp/clean40/out
    python benchmarks/robustness_clean.py /tmp/clean40/out/robustness.json [--last 3] \\
        [--heading H] [--doc docs/robustness.md]

The grid's reports give the clean delta as the mean over three seeds; in a chaotic cell
(alpha 0.1: the global model swings by 20 points from round to round) one seed can carry
that mean, so this reads the per-seed deltas of a run with more seeds: their mean, standard
deviation, lowest and highest, and how many seeds are within 1 point of FedAvg (the issue's
target) or above. With ``--last k`` a run's accuracy is the mean of its last ``k`` rounds
(``robustness_smoothed``). No run is played.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from robustness_compare import emit
from robustness_presets import LABELS, REFERENCE
from robustness_smoothed import last_rounds_mean

WITHIN = 0.01  # the clean target: within 1 point of FedAvg


def accuracy(cell: dict[str, Any], last: int) -> float | None:
    """The cell's final accuracy, or the mean of its last ``last`` rounds (``last`` > 1)."""
    return cell["final-accuracy"] if last <= 1 else last_rounds_mean(cell, last)


def clean_deltas(results: dict[str, Any], last: int = 1
                 ) -> dict[tuple[int, float], dict[str, dict[int, float]]]:
    """Per federation ``(nodes, alpha)`` and row, ``{seed: accuracy - FedAvg's}`` of the
    clean runs, for every seed where both ran (a clean run does not depend on the
    Byzantine fraction: the first one played per seed is taken)."""
    acc: dict[tuple[int, float, str, int], float] = {}
    for c in results["cells"]:
        value = accuracy(c, last)
        key = (c["nodes"], c["alpha"], c["row"], c["seed"])
        if c["attack"] == "none" and value is not None and key not in acc:
            acc[key] = value
    out: dict[tuple[int, float], dict[str, dict[int, float]]] = defaultdict(dict)
    for (n, alpha, row, seed), value in sorted(acc.items()):
        ref = acc.get((n, alpha, REFERENCE, seed))
        if row != REFERENCE and ref is not None:
            out[(n, alpha)].setdefault(row, {})[seed] = value - ref
    return dict(out)


def spread(deltas: dict[int, float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one seed), min, max and the share of seeds
    within ``WITHIN`` of FedAvg or above, of one row's per-seed deltas."""
    values = list(deltas.values())
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values),
            "within": sum(v >= -WITHIN for v in values) / len(values)}


def section(results: dict[str, Any], heading: str, last: int = 1, source: str = "") -> list[str]:
    """The markdown section: one table row per federation and row, then the seeds;
    ``source``: where the results file lies, named in the text when given."""
    deltas = clean_deltas(results, last)
    if not deltas:
        raise ValueError("no clean run of Flower FedAvg and another row shares a seed")
    reading = "final accuracy" if last <= 1 else f"mean accuracy of the last {last} rounds"
    lines = [f"## {heading}", "", f"Clean accuracy minus clean Flower FedAvg's of the same "
             f"federation and seed ({reading}), in points: `{results['command']}`, then "
             "`python benchmarks/robustness_clean.py` on its results"
             + (f" `--last {last}`" if last > 1 else "")
             + (f" (raw results in `{source}`)" if source else "") + ".", "",
             "| federation | row | seeds | mean | sd | min | max | seeds within 1 pt |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (n, alpha), rows in sorted(deltas.items()):
        for row, by_seed in rows.items():
            s = spread(by_seed)
            lines.append(f"| n={n}, alpha={alpha} | {LABELS.get(row, f'`{row}`')} | "
                         f"{len(by_seed)} | {100 * s['mean']:+.1f} | {100 * s['sd']:.1f} | "
                         f"{100 * s['min']:+.1f} | {100 * s['max']:+.1f} | "
                         f"{round(s['within'] * len(by_seed))} of {len(by_seed)} |")
    lines.append("")
    for (n, alpha), rows in sorted(deltas.items()):
        for row, by_seed in rows.items():
            seeds = ", ".join(f"{seed}: {100 * d:+.1f}" for seed, d in by_seed.items())
            lines.append(f"- n={n}, alpha={alpha}, `{row}` per seed: {seeds}.")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="a robustness.py results JSON")
    p.add_argument("--last", type=int, default=1,
                   help="read each run as the mean of its last k rounds (default 1: final)")
    p.add_argument("--heading", default="Clean cost over seeds")
    p.add_argument("--doc", type=Path, help="markdown file to put the section in")
    args = p.parse_args(argv)
    if args.last < 1:
        p.error(f"--last must be >= 1, got {args.last}")
    try:
        lines = section(json.loads(args.results.read_text()), args.heading, args.last,
                        str(args.results))
    except ValueError as exc:
        p.error(str(exc))
    emit(lines, args.doc)


if __name__ == "__main__":
    main()
