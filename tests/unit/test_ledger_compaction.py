"""The privacy ledger keeps one entry per run's settled rounds (``fedapp.privacy.ledger.compact``):
a round's cost stays flat over hundreds of rounds, and the lifetime epsilon is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from fedapp.privacy.__main__ import main
from fedapp.privacy.accounting import epsilon_of
from fedapp.privacy.ledger import DONE, PENDING, NodeBudget, PrivacyLedger, compact, entry_history


def budget(ledger: Path, run: int, rnd: int, cap: float | None = 50.0) -> NodeBudget:
    return NodeBudget(PrivacyLedger(ledger), "file:sha256:abc", {"kind": "file"}, cap, 1e-5,
                      run, rnd)


def one_round(ledger: Path, run: int, rnd: int, z: float = 1.2, q: float = 0.1,
              cap: float | None = 50.0) -> None:
    entry = PrivacyLedger(ledger).charge(budget(ledger, run, rnd, cap), z, q, 1, 8.0)
    PrivacyLedger(ledger).settle("file:sha256:abc", entry, 1)


def entries(ledger: Path) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(ledger.read_text())["datasets"]["file:sha256:abc"]["entries"]


def test_a_runs_settled_rounds_take_one_entry_and_spend_the_same(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.json"
    for rnd in range(1, 13):
        one_round(ledger, run=7, rnd=rnd, cap=None)  # recorded, not capped: no accounting
    (entry,) = entries(ledger)
    assert (entry["steps"], entry["rounds"], entry["round"], entry["last-round"]) == (12, 12, 1, 12)
    assert entry["status"] == DONE
    accountant = RDPAccountant()
    accountant.history = [(1.2, 0.1, 1)] * 12  # twelve separate one-step entries
    assert budget(ledger, 7, 13).spent() == pytest.approx(accountant.get_epsilon(1e-5),
                                                          rel=1e-12)


def test_runs_settings_and_pending_rounds_are_kept_apart(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.json"
    one_round(ledger, run=1, rnd=1)
    one_round(ledger, run=1, rnd=2)
    one_round(ledger, run=1, rnd=3, z=2.0)  # another noise multiplier: its own entry
    PrivacyLedger(ledger).charge(budget(ledger, 1, 4), 2.0, 0.1, 1, 8.0)  # crashed: pending
    one_round(ledger, run=1, rnd=5, z=2.0)
    one_round(ledger, run=2, rnd=1, z=2.0)  # another run
    got = [(e["run"], e["noise-multiplier"], e["status"], e["steps"]) for e in entries(ledger)]
    assert got == [(1, 1.2, DONE, 2), (1, 2.0, DONE, 1), (1, 2.0, PENDING, 1),
                   (1, 2.0, DONE, 1), (2, 2.0, DONE, 1)]


def test_compact_is_exact_for_the_accountant() -> None:
    base = {"run": 3, "noise-multiplier": 0.9, "sample-rate": 0.2, "status": DONE,
            "time": "t"}
    raw = [{**base, "id": str(i), "round": i, "steps": s} for i, s in enumerate([1, 4, 2], 1)]
    merged = compact(raw)
    assert len(merged) == 1 and merged[0]["steps"] == 7 and merged[0]["rounds"] == 3
    assert epsilon_of(entry_history(merged), 1e-5) == pytest.approx(
        epsilon_of(entry_history(raw), 1e-5), rel=1e-12)


def test_cli_counts_merged_rounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = tmp_path / "ledger.json"
    for rnd in range(1, 6):
        one_round(ledger, run=9, rnd=rnd)
    assert main(["ledger", str(ledger), "--json"]) == 0
    (ident,) = json.loads(capsys.readouterr().out)["datasets"]
    assert [(r["run"], r["rounds"], r["steps"], r["pending"]) for r in ident["runs"]] == [
        (9, 5, 5, 0)]
    assert PENDING not in {e["status"] for e in entries(ledger)}
