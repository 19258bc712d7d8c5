"""robustness_smoothed: the worst cases read off the mean of the last rounds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import robustness_smoothed as smoothed

OURS, AVG, ORACLE = "ours-recommended", "flwr-fedavg", "oracle"


def results() -> dict[str, Any]:
    """One configuration (n=10, alpha 0.1, 30%), one seed; per-round accuracies with round 0
    first. Ours under attack ends on a dip (0.3) after 0.7 and 0.8."""
    runs = {(AVG, "none"): [0.1, 0.7, 0.8, 0.8, 0.8],
            (OURS, "none"): [0.1, 0.7, 0.8, 0.7, 0.8],
            (OURS, "a"): [0.1, 0.6, 0.7, 0.8, 0.3],
            (ORACLE, "none"): [0.1, 0.7, 0.8, 0.8, 0.8],
            (ORACLE, "a"): [0.1, 0.6, 0.6, 0.6, 0.6]}
    cells = [{"nodes": 10, "alpha": 0.1, "fraction": 0.3, "seed": 0, "row": row,
              "attack": attack, "accuracy": acc, "final-accuracy": acc[-1]}
             for (row, attack), acc in runs.items()]
    return {"cells": cells, "rows": [OURS, AVG, ORACLE], "attacks": ["none", "a"]}


def test_each_scenario_is_the_mean_of_its_last_rounds() -> None:
    out = smoothed.smoothed(results(), 3)
    acc = {(c["row"], c["attack"]): c["final-accuracy"] for c in out["cells"]}
    assert acc[(OURS, "a")] == pytest.approx(0.6)  # (0.7 + 0.8 + 0.3) / 3, not 0.3
    assert acc[(AVG, "none")] == pytest.approx(0.8)
    table = out["summary"]["configs"]["n10-a0.1-f0.3"]["rows"][OURS]
    assert table["retained-mean"] == pytest.approx(0.75)
    assert table["of-oracle-mean"] == pytest.approx(1.0)
    # More rounds than the run has: all of them (round 0, the initial model, excluded).
    assert smoothed.smoothed(results(), 10)["cells"][2]["final-accuracy"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="--last must be >= 1"):
        smoothed.smoothed(results(), 0)


def test_the_section_gives_the_tables_and_the_clean_deltas() -> None:
    lines = smoothed.section(results(), 3)
    assert lines[0] == "## The same runs, read as the mean of the last 3 rounds"
    ours = [line for line in lines if line.startswith(f"| **{OURS}**")]
    assert len(ours) == 2 and "75.0% (n=10, alpha=0.1)" in ours[0]
    assert lines[-2].endswith("n=10, alpha=0.1, 30%: -3.3.")  # (0.7+0.8+0.7)/3 - 0.8
