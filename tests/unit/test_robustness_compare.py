"""robustness_compare: one row of two invocations side by side, on hand-made results."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import robustness_compare as compare

OURS, AVG, MK = "ours-recommended", "flwr-fedavg", "flwr-multikrum"


def results(ours: dict[str, float], multikrum_a: float = 0.5) -> dict[str, Any]:
    """One configuration (n=10, alpha 0.1, 30%), one seed: FedAvg clean 0.8."""
    accs = {AVG: {"none": 0.8}, OURS: ours, MK: {"none": 0.7, "a": multikrum_a}}
    cells = [{"nodes": 10, "alpha": 0.1, "fraction": 0.3, "seed": 0, "row": r, "attack": a,
              "final-accuracy": v} for r, by in accs.items() for a, v in by.items()]
    return {"cells": cells, "rows": [OURS, AVG, MK], "attacks": ["none", "a", "b"],
            "date": "2026-12-03T00:00", "command": "python benchmarks/robustness.py",
            "grid": {}, "settings": {}}


def test_the_two_rows_worst_cases_and_the_attack_moves() -> None:
    new = results({"none": 0.78, "a": 0.72, "b": 0.64})  # worst b: 80% of 0.8
    old = results({"none": 0.80, "a": 0.40, "b": 0.70})  # worst a: 50%
    lines = compare.section(new, old, OURS, ("with", "without"), "With and without")
    assert lines[0] == "## With and without"
    row = next(line for line in lines if line.startswith("| n=10, alpha=0.1, 30%"))
    assert row.split(" | ")[1:] == ["80.0 (80.0)", "50.0 (50.0)", "-2.0", "+0.0 |"]
    moves = dict(compare.attack_moves(compare.side_by_side(new, old, OURS), OURS,
                                      f"{OURS} (old)"))
    assert moves == pytest.approx({"a": 0.32, "b": -0.06, "none": -0.02})
    assert next(iter(moves)) == "a"  # the largest change first
    assert "of the 3 scenarios of the other rows played in both, 0 gave" in lines[2]


def test_a_shared_scenario_that_differs_is_counted() -> None:
    new, old = results({"none": 0.8}), results({"none": 0.8}, multikrum_a=0.6)
    assert compare.shared_evidence(new, old, OURS) == pytest.approx((3, 1, 0.1, 0.1))


def test_the_section_replaces_its_old_self(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\n## Keep\n\nkept\n\n## Mine\n\nold text\n\n## After\n\nafter\n")
    compare.put_section(doc, ["## Mine", "", "new text", ""])
    text = doc.read_text()
    assert "old text" not in text and text.count("## Mine") == 1
    assert "kept" in text and "after" in text and text.rstrip().endswith("new text")


def test_no_noise_is_claimed_when_the_new_file_was_merged_from_the_old() -> None:
    old = results({"none": 0.8, "a": 0.4})
    new = results({"none": 0.8, "a": 0.7})
    new |= {"date": "2026-12-04T00:00", "merged": {"rows": [OURS], "others-from": {
        "command": old["command"], "date": old["date"], "wall-seconds": 1.0}}}
    assert compare.merged_from(new, old)
    text = compare.section(new, old, OURS, ("with", "without"), "H")[2]
    assert "Run-to-run noise: not measured" in text and "scenarios" not in text
    other = {**old, "date": "2026-12-02T00:00"}  # another invocation of the same command
    assert not compare.merged_from(new, other)
    assert "of the 3 scenarios" in compare.section(new, other, OURS, ("a", "b"), "H")[2]
