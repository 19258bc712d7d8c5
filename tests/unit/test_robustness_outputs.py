"""robustness.py's output files: named by the dataset, written where asked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import robustness

BENCH = Path(robustness.__file__).parent


def test_another_dataset_names_its_files_apart_from_the_grids() -> None:
    assert robustness.output_names("digits") == robustness.OUTPUTS
    assert robustness.output_names("synthetic") == (
        "robustness-synthetic.json", "robustness-synthetic.md", "robustness-synthetic.png")


def test_a_report_rewritten_from_json_keeps_its_dataset(tmp_path: Path) -> None:
    results = json.loads((BENCH / "results" / "robustness-20rounds-clean.json").read_text())
    results |= {"dataset": "synthetic",
                "settings": results["settings"] | {"dataset": "synthetic", "full": False}}
    (tmp_path / "in.json").write_text(json.dumps(results))
    robustness.main(["--from-json", str(tmp_path / "in.json"), "--out-dir", str(tmp_path)])
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["in.json", *sorted(robustness.output_names("synthetic"))]
    assert "Setting: synthetic," in (tmp_path / "robustness-synthetic.md").read_text()


def test_an_unknown_dataset_is_refused_with_the_choices(capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    with pytest.raises(SystemExit):
        robustness.main(["--dataset", "mnist", "--dry-run"])
    assert "invalid choice: 'mnist' (choose from" in capsys.readouterr().err
