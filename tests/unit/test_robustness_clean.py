"""robustness_clean: per-seed clean deltas against FedAvg, on hand-made results."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import robustness_clean as clean

OURS, AVG = "ours-recommended", "flwr-fedavg"


def cell(row: str, seed: int, accs: list[float], attack: str = "none",
         fraction: float = 0.2) -> dict[str, Any]:
    return {"row": row, "attack": attack, "fraction": fraction, "nodes": 40, "alpha": 0.1,
            "seed": seed, "accuracy": [0.1, *accs], "final-accuracy": accs[-1]}


def results() -> dict[str, Any]:
    cells = [cell(AVG, 0, [0.5, 0.8]), cell(OURS, 0, [0.5, 0.6]),
             cell(AVG, 1, [0.7, 0.7]), cell(OURS, 1, [0.7, 0.75]),
             cell(OURS, 1, [0.0, 0.0], fraction=0.3),  # same seed again: the first counts
             cell(OURS, 1, [0.0, 0.0], attack="sign-flip"),  # attacked: not clean
             cell(OURS, 2, [0.9, 0.9])]  # FedAvg did not play seed 2
    return {"command": "python benchmarks/robustness.py ...", "cells": cells}


def test_deltas_pair_each_seed_with_fedavg_of_that_seed() -> None:
    deltas = clean.clean_deltas(results())
    assert set(deltas) == {(40, 0.1)}
    assert deltas[(40, 0.1)][OURS] == pytest.approx({0: -0.2, 1: 0.05})


def test_last_rounds_reading() -> None:
    deltas = clean.clean_deltas(results(), last=2)[(40, 0.1)][OURS]
    assert deltas == pytest.approx({0: 0.55 - 0.65, 1: 0.725 - 0.7})


def test_spread_counts_seeds_within_one_point() -> None:
    s = clean.spread({0: -0.2, 1: 0.05, 2: -0.005})
    assert s["mean"] == pytest.approx(-0.155 / 3)
    assert (s["min"], s["max"]) == pytest.approx((-0.2, 0.05))
    assert s["within"] == pytest.approx(2 / 3)
    assert s["sd"] > 0
    assert clean.spread({0: 0.1})["sd"] == 0.0


def test_section_table_and_seeds() -> None:
    lines = clean.section(results(), "Clean cost", source="r.json")
    assert lines[0] == "## Clean cost"
    assert "(raw results in `r.json`)" in lines[2]
    row = next(line for line in lines if line.startswith("| n=40, alpha=0.1 |"))
    assert "| 2 | -7.5 |" in row and "1 of 2" in row
    assert any("0: -20.0, 1: +5.0" in line for line in lines)


def test_no_shared_seed_is_an_error() -> None:
    with pytest.raises(ValueError, match="no clean run"):
        clean.section({"command": "c", "cells": [cell(OURS, 0, [0.5])]}, "x")
