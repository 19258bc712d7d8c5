"""robustness_by_alpha: the grid's worst cases per alpha and fraction, ranges over n."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import robustness_by_alpha as by_alpha

OURS = "ours-recommended"


def config(n: int, alpha: float, fraction: float, ours: float, oracle: float,
           krum: float | None, median: float) -> dict[str, Any]:
    def row(mean: float | None) -> dict[str, Any]:
        return {"retained-mean": mean, "retained-min": None if mean is None else mean - 0.1}
    return {"nodes": n, "alpha": alpha, "fraction": fraction,
            "rows": {OURS: row(ours), "oracle": row(oracle), "flwr-fedavg": row(None),
                     "flwr-multikrum": row(krum), "flwr-fedmedian": row(median)}}


SUMMARY = {"configs": {
    "a": config(10, 0.1, 0.2, 0.70, 0.83, 0.05, 0.13),
    "b": config(20, 0.1, 0.2, 0.78, 0.89, 0.31, 0.20),
    "c": config(10, 1.0, 0.2, 0.96, 0.99, None, 0.42),
    "d": config(10, 0.1, 0.3, 0.52, 0.83, 0.02, 0.12),
}}


def test_ranges_over_the_node_counts_per_alpha_and_fraction() -> None:
    assert by_alpha.by_alpha(SUMMARY, OURS) == {(0.1, 0.2): [0.70, 0.78], (1.0, 0.2): [0.96],
                                                (0.1, 0.3): [0.52]}
    # the best built-in of each configuration (FedAvg, the reference, is not one)
    assert by_alpha.best_builtin(SUMMARY) == {(0.1, 0.2): [0.13, 0.31], (1.0, 0.2): [0.42],
                                              (0.1, 0.3): [0.12]}


def test_the_table_has_a_row_per_alpha_and_measure_and_a_column_per_fraction() -> None:
    lines = by_alpha.table({"summary": SUMMARY}, OURS)
    assert lines[0] == "## Worst case per alpha and fraction"
    assert "n in [10, 20]" in lines[2]
    header, rows = lines[4], lines[6:-1]
    assert header == "| alpha | measure | 20% Byzantine | 30% Byzantine |"
    assert rows[0] == "| alpha 1.0 | `ours-recommended`, mean over seeds | 96.0% | - |"
    assert rows[4] == "| alpha 0.1 | `ours-recommended`, mean over seeds | 70.0-78.0% | 52.0% |"
    assert rows[5] == "| alpha 0.1 | `ours-recommended`, lowest seed | 60.0-68.0% | 42.0% |"
    assert rows[6] == "| alpha 0.1 | oracle, mean over seeds | 83.0-89.0% | 83.0% |"
    assert rows[7] == "| alpha 0.1 | best Flower built-in, mean over seeds | 13.0-31.0% | 12.0% |"
    assert len(rows) == 8
