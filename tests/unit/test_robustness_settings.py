"""robustness_settings: one line per configuration for a setting played beside the grid."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import robustness_settings as settings

OURS = "ours-recommended"


def row(retained: float | None, low: float | None = None, delta: float | None = None,
        worst: dict[str, str | None] | None = None) -> dict[str, Any]:
    return {"retained-mean": retained, "retained-min": low, "clean-delta-mean": delta,
            "worst-attacks": worst or {"0": None}}


def results() -> dict[str, Any]:
    rows = {OURS: row(0.8, 0.7, -0.004, {"0": "fang", "1": "sign-flip", "2": "fang"}),
            "flwr-fedavg": row(None, delta=0.0),
            "flwr-fedmedian": row(0.2, 0.1),
            "flwr-trimmedavg": row(0.3, 0.1),
            "oracle": row(0.95, 0.9, 0.0)}
    config = {"nodes": 40, "alpha": 0.3, "fraction": 0.3, "rows": rows}
    return {"command": "python benchmarks/robustness.py --nodes 40", "date": "2026-12-03T21:00",
            "summary": {"configs": {"n40-a0.3-f0.3": config}}}


def test_the_line_has_our_worst_case_the_best_builtin_and_the_oracle() -> None:
    lines = settings.table(results(), OURS)
    assert lines[2] == ("| n=40, alpha=0.3, 30% | 80.0 (70.0) | fang, sign-flip "
                        "| 30.0 (flwr-trimmedavg) | 95.0 | -0.4 |")


def test_fedavg_is_never_the_best_builtin_and_none_played_gives_none() -> None:
    rows = results()["summary"]["configs"]["n40-a0.3-f0.3"]["rows"]
    rows["flwr-fedavg"]["retained-mean"] = 1.0  # would win if it counted
    assert settings.best_builtin(rows) == ("flwr-trimmedavg", 0.3)
    assert settings.best_builtin({OURS: rows[OURS]}) is None


def test_worst_attacks_most_seeds_first() -> None:
    assert settings.worst_attacks(row(0.5, worst={"0": "b", "1": "a", "2": "b"})) == "b, a"
    assert settings.worst_attacks(row(0.5, worst={"0": None})) == "-"


def test_a_row_the_results_lack_is_named(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results()))
    with pytest.raises(SystemExit):
        settings.main([str(path), "--heading", "h", "--row", "ours-x"])
    assert "row 'ours-x' is not in the results" in capsys.readouterr().err


def test_the_section_replaces_its_earlier_self_in_the_doc(tmp_path: Path) -> None:
    path, doc = tmp_path / "r.json", tmp_path / "doc.md"
    path.write_text(json.dumps(results()))
    doc.write_text("# Title\n\n## Other\n\ntext\n")
    for _ in range(2):
        settings.main([str(path), "--heading", "Larger", "--intro", "Played later.",
                       "--doc", str(doc)])
    text = doc.read_text()
    assert text.count("## Larger") == 1 and "## Other" in text
    assert "Played later. `python benchmarks/robustness.py --nodes 40` (2026-12-03;" in text


def test_a_merged_file_without_a_summary_is_summarised_from_its_cells() -> None:
    cells = [{"nodes": 10, "alpha": 0.3, "fraction": 0.2, "seed": 0, "row": row,
              "attack": attack, "final-accuracy": acc}
             for row, attack, acc in [(OURS, "none", 0.8), (OURS, "a", 0.6),
                                      ("flwr-fedavg", "none", 0.8), ("oracle", "none", 0.8),
                                      ("oracle", "a", 0.76)]]
    results = {"cells": cells, "rows": [OURS, "flwr-fedavg", "oracle"],
               "attacks": ["none", "a"]}
    assert settings.table(results, OURS)[2] == ("| n=10, alpha=0.3, 20% | 75.0 (75.0) | a | - "
                                                "| 95.0 | +0.0 |")
