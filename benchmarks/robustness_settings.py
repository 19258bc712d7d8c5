"""One table per results file for settings played beside the main grid (held-out settings).

    python benchmarks/robustness_settings.py benchmarks/results/robustness-n40.json \
        --heading "A larger federation: n=40" [--intro TEXT] [--doc docs/robustness.md]

The main grid's report (``robustness_doc``) gives every attack per configuration; a setting
played afterwards to check that the default holds where it was not tuned (another alpha,
n or Byzantine fraction) needs one line per configuration: our worst case over attacks as
retained (% of clean FedAvg, mean over seeds, the lowest seed in parentheses) and the
attacks that set it, the best Flower built-in's worst case, the oracle's, and our clean
accuracy minus clean FedAvg's. The numbers are the results file's own ``summary``, or for a
merged file without one (``robustness_merge.py``) ``robustness_report.summarise`` of its
cells; nothing is played.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from robustness_compare import emit
from robustness_presets import ORACLE, REFERENCE
from robustness_report import summarise

FLOWER_PREFIX = "flwr-"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def best_builtin(rows: dict[str, dict[str, Any]]) -> tuple[str, float] | None:
    """The Flower built-in (not FedAvg, which plays clean only) with the highest worst case
    (retained, mean over seeds), as (row, value); None when no built-in played."""
    played = [(name, r["retained-mean"]) for name, r in rows.items()
              if name.startswith(FLOWER_PREFIX) and name != REFERENCE
              and r["retained-mean"] is not None]
    return max(played, key=lambda item: item[1]) if played else None


def worst_attacks(row: dict[str, Any]) -> str:
    """The attacks that gave the worst case in some seed, most seeds first, then by name."""
    counts: dict[str, int] = {}
    for attack in row["worst-attacks"].values():
        if attack is not None:
            counts[attack] = counts.get(attack, 0) + 1
    return ", ".join(sorted(counts, key=lambda a: (-counts[a], a))) or "-"


def table(results: dict[str, Any], row: str) -> list[str]:
    """One markdown line per configuration of ``results``, in its summary's order."""
    summary = results.get("summary") or summarise(results["cells"], results["rows"],
                                                  results["attacks"])
    lines = [f"| configuration | {row}: mean (min) | worst attacks | best Flower built-in "
             "| oracle | clean - FedAvg (pt) |", "|---|---:|---|---:|---:|---:|"]
    for c in summary["configs"].values():
        rows = c["rows"]
        if row not in rows:
            raise ValueError(f"row {row!r} is not in the results; they have {sorted(rows)}")
        ours, best = rows[row], best_builtin(rows)
        oracle = rows.get(ORACLE, {}).get("retained-mean")
        delta = ours["clean-delta-mean"]
        lines.append(
            f"| n={c['nodes']}, alpha={c['alpha']}, {round(100 * c['fraction'])}% "
            f"| {_pct(ours['retained-mean'])} ({_pct(ours['retained-min'])}) "
            f"| {worst_attacks(ours)} "
            f"| {'-' if best is None else f'{_pct(best[1])} ({best[0]})'} "
            f"| {_pct(oracle)} | {'-' if delta is None else f'{100 * delta:+.1f}'} |")
    return lines


def section(results: dict[str, Any], path: str, heading: str, intro: str,
            row: str) -> list[str]:
    """The markdown section: heading, provenance, the table."""
    return [f"## {heading}", "",
            (intro + " " if intro else "") + f"`{results['command']}` "
            f"({results['date'][:10]}; raw results in `{path}`). Worst case over attacks, "
            "retained (% of clean FedAvg of the same cell), mean over seeds (lowest seed):",
            "", *table(results, row), ""]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="a robustness.py results JSON")
    p.add_argument("--heading", required=True, help="the section's heading (without ##)")
    p.add_argument("--intro", default="", help="sentences before the command")
    p.add_argument("--row", default="ours-recommended")
    p.add_argument("--doc", type=Path, help="markdown file to put the section in")
    args = p.parse_args(argv)
    results = json.loads(args.results.read_text())
    try:
        lines = section(results, args.results.as_posix(), args.heading, args.intro, args.row)
    except ValueError as exc:
        p.error(str(exc))
    emit(lines, args.doc)


if __name__ == "__main__":
    main()
