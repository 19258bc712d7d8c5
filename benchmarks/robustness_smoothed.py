"""The grid's worst cases read off the mean accuracy of the last rounds, not the last one.

    python benchmarks/robustness_smoothed.py benchmarks/results/robustness.json --last 3 \
        [--doc docs/robustness.md]

At Dirichlet alpha 0.1 the global model oscillates from round to round (client drift:
5 local epochs on a few classes each), by 20 points and more in the grid's 8 rounds, so
the final accuracy of one run is partly the phase of that oscillation, and the worst case
over eleven attacks and three seeds picks the lowest such draw. This script reads the same
runs again, each scenario's number being the mean of its last ``--last`` rounds' accuracy
(``accuracy`` holds one value per round, round 0 first), and gives the worst-case tables
(of clean FedAvg, of the oracle) and each configuration's clean delta for it. No run is
played: it is another reading, for how much of a gap is oscillation.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from robustness_compare import emit
from robustness_doc import _worst_table
from robustness_presets import ORACLE, REFERENCE
from robustness_report import recommend, summarise


def last_rounds_mean(cell: dict[str, Any], last: int) -> float | None:
    """The mean accuracy of the cell's last ``last`` rounds (fewer when it has fewer; None
    when it has none); ``accuracy`` holds one value per round, round 0 first."""
    rounds = [a for a in cell["accuracy"][1:] if a is not None]  # round 0: the initial model
    return statistics.fmean(rounds[-last:]) if rounds else None


def smoothed(results: dict[str, Any], last: int) -> dict[str, Any]:
    """``results`` with every cell's ``final-accuracy`` the mean of its last ``last`` rounds
    (fewer when the run has fewer rounds; None stays None) and the summary recomputed."""
    if last < 1:
        raise ValueError(f"--last must be >= 1, got {last}")
    cells = [{**c, "final-accuracy": last_rounds_mean(c, last)} for c in results["cells"]]
    out = {**results, "cells": cells}
    out["summary"] = summarise(cells, results["rows"], results["attacks"])
    out["recommended"] = recommend(out["summary"], results["rows"])
    return out


def section(results: dict[str, Any], last: int) -> list[str]:
    """The markdown section: the worst-case tables and the clean deltas, smoothed."""
    s = smoothed(results, last)
    robust = [r for r in s["rows"] if r not in (ORACLE, REFERENCE)]
    clean = [f"n={c['nodes']}, alpha={c['alpha']}, {int(100 * c['fraction'])}%: "
             f"{100 * d:+.1f}" for c in s["summary"]["configs"].values()
             if (d := c["rows"][s["recommended"] or robust[0]]["clean-delta-mean"]) is not None]
    return [f"## The same runs, read as the mean of the last {last} rounds", "",
            f"Every scenario's number is the mean accuracy of its last {last} rounds instead "
            "of the last round's (`python benchmarks/robustness_smoothed.py "
            f"benchmarks/results/robustness.json --last {last}`; no run played again): at "
            "alpha 0.1 the global model oscillates by 20 points and more from round to round, "
            "and the worst case over attacks and seeds picks the lowest draw. Retained (% of "
            "clean FedAvg, read the same way), in the configuration where the mean over seeds "
            "is the lowest, and the lowest of any seed:", "",
            *_worst_table(s, "retained", s["rows"]), "",
            "As a share of the oracle's accuracy in the same configuration and seed:", "",
            *_worst_table(s, "of-oracle", robust), "",
            f"Clean accuracy minus clean FedAvg's (pt, mean over seeds) of `{s['recommended']}`: "
            + "; ".join(clean) + ".", ""]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="a robustness.py results JSON")
    p.add_argument("--last", type=int, default=3, help="rounds to average (default 3)")
    p.add_argument("--doc", type=Path, help="markdown file to put the section in")
    args = p.parse_args(argv)
    try:
        lines = section(json.loads(args.results.read_text()), args.last)
    except ValueError as exc:
        p.error(str(exc))
    emit(lines, args.doc)


if __name__ == "__main__":
    main()
