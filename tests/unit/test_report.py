"""The experiment report read back from a temp SQLite MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedapp.tracking import Tracker, report
from tests.unit.mlflow_store import PNG_MAGIC, fresh_store

CURVES = {  # aggregator -> server accuracy per round 0..3
    "fedavg": [0.1, 0.5, 0.7, 0.6],
    "krum": [0.1, 0.4, 0.8, 0.8],
    "median": [0.1, 0.3, 0.5, 0.9],
}


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return fresh_store(tmp_path)


def track_sweep(uri: str) -> None:
    """A sweep: one parent run (no metrics) and one child run per aggregator."""
    parent = Tracker.open(uri, "exp", "sweep", {})
    for agg, curve in CURVES.items():
        params = {"aggregator": agg, "dataset": "digits", "num-server-rounds": 3, "seed": 1}
        with Tracker.open(uri, "exp", f"run-{agg}", params, parent_run_id=parent.run_id) as t:
            for step, acc in enumerate(curve):
                metrics = {"server-accuracy": acc, "server-loss": 1.0 - acc}
                if agg == "krum" and step > 0:
                    metrics |= {"bytes-up": 1024.0 * step, "epsilon": 0.5 * step}
                t.log_round(step, metrics)
    parent.close()


def test_report_lists_every_tracked_run(uri: str, tmp_path: Path) -> None:
    track_sweep(uri)
    out = tmp_path / "report"
    assert report.main(["--tracking-uri", uri, "--experiment", "exp", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    rows = {cells[0]: dict(zip(head, cells, strict=True)) for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    assert set(rows) == {"run-fedavg", "run-krum", "run-median"}  # no row for the parent
    assert head[:2] == ["run", "status"]
    assert {"aggregator", "dataset", "num-server-rounds"} <= set(head)
    assert "attack" not in head  # no run has it
    assert rows["run-krum"]["aggregator"] == "krum"
    assert rows["run-fedavg"]["final accuracy"] == "0.6000"
    assert rows["run-fedavg"]["best round"] == "2 (0.7000)"
    assert rows["run-krum"]["best round"] == "2 (0.8000)"  # earliest on ties
    assert rows["run-median"]["final accuracy"] == "0.9000"
    assert rows["run-krum"]["bytes up"] == "6.00 KiB"  # 1 + 2 + 3 KiB
    assert rows["run-krum"]["epsilon"] == "1.5"
    assert rows["run-median"]["bytes up"] == "-"
    assert (out / "accuracy.png").read_bytes()[:8] == PNG_MAGIC


def test_collect_runs_reads_curves(uri: str) -> None:
    from fedapp.tracking import connect

    track_sweep(uri)
    runs = report.collect_runs(connect(uri), "exp")
    assert [r.name for r in runs] == ["run-fedavg", "run-krum", "run-median"]
    assert [[a for _, a in r.curve] for r in runs] == list(CURVES.values())
    assert all(r.status == "FINISHED" for r in runs)


def test_unknown_experiment_is_named(uri: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    Tracker.open(uri, "exp", "one", {}).close()
    assert report.main(["--tracking-uri", uri, "--experiment", "nope",
                        "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no experiment 'nope'" in err and "exp" in err
