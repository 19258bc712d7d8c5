"""The robustness benchmark's grid: the report's arithmetic (worst case per cell, mean and min
over seeds, retained, worst case over the grid, recommendation, findings) and how the grid
becomes Flower runs, on hand-made cells (no Flower)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import robustness_cells as cells_mod
import robustness_report as report
from robustness_presets import NODE_SIDE, OMNISCIENT, target

OURS, NNM, MK, MED = "ours-recommended", "ours-nnm-tm", "flwr-multikrum", "flwr-fedmedian"
AVG, ORACLE = "flwr-fedavg", "oracle"


def cell(n: int, alpha: float, f: float, seed: int, row: str, attack: str,
         acc: float) -> dict[str, Any]:
    return {"nodes": n, "alpha": alpha, "fraction": f, "seed": seed, "row": row,
            "attack": attack, "final-accuracy": acc, "id": f"{row}|{attack}|{f}"}


def table(n: int, alpha: float, f: float, seed: int,
          accs: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Cells of one (n, alpha, f, seed) from {row: {attack: accuracy}}."""
    return [cell(n, alpha, f, seed, r, a, v) for r, by in accs.items() for a, v in by.items()]


def grid_cells() -> list[dict[str, Any]]:
    """Two configurations at 20% (n=10 and n=20, alpha 0.1) with two seeds each, and one at
    30%. Our default beats MultiKrum by a lot at n=10 but is worse at n=20; ours-nnm-tm is
    the other way round and better in the worst configuration."""
    out = []
    out += table(10, 0.1, 0.2, 0, {AVG: {"none": 0.90}, OURS: {"none": 0.90, "a": 0.88, "b": 0.86},
                                   NNM: {"none": 0.89, "a": 0.80, "b": 0.81},
                                   MK: {"none": 0.88, "a": 0.30, "b": 0.50}})
    out += table(10, 0.1, 0.2, 1, {AVG: {"none": 0.80}, OURS: {"none": 0.81, "a": 0.76, "b": 0.78},
                                   NNM: {"none": 0.78, "a": 0.72, "b": 0.70},
                                   MK: {"none": 0.79, "a": 0.40, "b": 0.60}})
    out += table(20, 0.1, 0.2, 0, {AVG: {"none": 1.00}, OURS: {"none": 0.97, "a": 0.60, "b": 0.90},
                                   NNM: {"none": 0.99, "a": 0.92, "b": 0.91},
                                   MK: {"none": 0.99, "a": 0.70, "b": 0.95}})
    out += table(20, 0.1, 0.2, 1, {AVG: {"none": 1.00}, OURS: {"none": 0.98, "a": 0.80, "b": 0.90},
                                   NNM: {"none": 1.00, "a": 0.93, "b": 0.93},
                                   MK: {"none": 1.00, "a": 0.90, "b": 0.90}})
    out += table(20, 0.1, 0.3, 0, {AVG: {"none": 1.00}, OURS: {"none": 0.97, "a": 0.91, "b": 0.95},
                                   NNM: {"none": 0.99, "a": 0.92, "b": 0.90},
                                   MK: {"none": 0.99, "a": 0.20, "b": 0.30}})
    return out


ROWS = [OURS, NNM, AVG, MK]
ATTACKS = ["none", "a", "b"]


def test_mean_min_ignores_missing() -> None:
    assert report.mean_min([0.5, None, 0.7]) == (pytest.approx(0.6), 0.5)
    assert report.mean_min([None]) == (None, None)


def test_seed_summary_is_the_worst_attack_over_clean_fedavg() -> None:
    s = report.seed_summary({"none": 0.9, "a": 0.6, "b": 0.8, "c": None}, reference=0.8)
    assert s["worst"] == 0.6 and s["worst-attack"] == "a"
    assert s["retained"] == pytest.approx(0.75)
    assert s["clean-delta"] == pytest.approx(0.1)
    assert report.seed_summary({"none": 0.9}, reference=0.8)["retained"] is None


def test_summary_per_configuration_is_mean_and_min_over_seeds() -> None:
    s = report.summarise(grid_cells(), ROWS, ATTACKS)
    c = s["configs"]["n10-a0.1-f0.2"]["rows"][OURS]
    # seed 0: worst 0.86 of 0.90; seed 1: worst 0.76 of 0.80 (each seed its own FedAvg)
    assert c["worst-mean"] == pytest.approx(0.81) and c["worst-min"] == 0.76
    assert c["retained-mean"] == pytest.approx((0.86 / 0.90 + 0.76 / 0.80) / 2)
    assert c["retained-min"] == pytest.approx(0.76 / 0.80)
    assert c["clean-delta-mean"] == pytest.approx(0.005)
    assert c["worst-attacks"] == {"0": "b", "1": "a"}
    assert c["accuracy"]["a"] == pytest.approx(0.82)
    assert s["configs"]["n20-a0.1-f0.3"]["rows"][OURS]["seeds"] == [0]


def test_grid_worst_takes_the_lowest_configuration_and_the_lowest_seed() -> None:
    g = report.summarise(grid_cells(), ROWS, ATTACKS)["grid"]
    assert list(g) == ["0.2", "0.3"]
    ours = g["0.2"][OURS]
    assert ours["where"] == "n20-a0.1-f0.2"  # mean (0.6 + 0.8) / 2 = 0.70 < n=10's 0.95
    assert ours["retained-mean"] == pytest.approx(0.70)
    assert ours["retained-min"] == pytest.approx(0.60) and ours["where-min"] == "n20-a0.1-f0.2"
    assert ours["clean-delta-mean"] == pytest.approx(-0.025)
    assert ours["clean-delta-where"] == "n20-a0.1-f0.2"


def test_recommendation_is_by_the_worst_case_over_the_whole_grid() -> None:
    s = report.summarise(grid_cells(), ROWS, ATTACKS)
    # ours-recommended wins n=10 and 30%, but ours-nnm-tm's worst configuration is better
    assert s["configs"]["n10-a0.1-f0.2"]["rows"][OURS]["retained-mean"] > \
        s["configs"]["n10-a0.1-f0.2"]["rows"][NNM]["retained-mean"]
    assert report.recommend(s, ROWS) == NNM
    assert report.margin(s["grid"], NNM) == pytest.approx(
        min(s["grid"]["0.2"][NNM]["retained-mean"] - 0.95,
            s["grid"]["0.3"][NNM]["retained-mean"] - 0.90))
    assert report.recommend(s, [AVG, MK]) is None


def test_targets_by_fraction() -> None:
    assert target(0.1) == target(0.2) == 0.95
    assert target(0.3) == 0.90


def test_best_flower_builtin_per_configuration() -> None:
    s = report.summarise(grid_cells(), ROWS, ATTACKS)
    assert report.best_flower(s["configs"]["n20-a0.1-f0.2"]["rows"]) == MK
    assert report.best_flower({OURS: {"retained-mean": 0.9}}) is None


def test_findings_say_met_and_missed_honestly() -> None:
    s = report.summarise(grid_cells(), ROWS, ATTACKS)
    lines = report.findings({"summary": s, "rows": ROWS, "recommended": OURS})
    text = "\n".join(lines)
    assert "20% Byzantine, worst case over attacks and the grid: `ours-recommended` keeps " \
           "70.0%" in text and "missed (mean)" in text
    # above MultiKrum at n=10 and at 30%, not at n=20 (0.70 vs MultiKrum's 0.80)
    assert "in 1 of 2 configurations" in text and "not at n=20, alpha=0.1" in text
    assert "30% Byzantine: `ours-recommended` is above the best Flower built-in in 1 of 1" in text
    # clean: -2.5 pt at n=20 20%, -3 pt at 30%: missed
    assert "within 1 pt of clean FedAvg (or above) in 1 of 3 configurations" in text
    assert "`ours-recommended`; it is the shipped default" in lines[-1]


def test_findings_of_the_grid_recommendation() -> None:
    s = report.summarise(grid_cells(), ROWS, ATTACKS)
    lines = report.findings({"summary": s, "rows": ROWS, "recommended": report.recommend(s, ROWS)})
    text = "\n".join(lines)
    # ours-nnm-tm: worst configuration n=10 (0.80/0.90 and 0.70/0.80), target 95% missed
    assert "`ours-nnm-tm` keeps 88.2% of clean FedAvg as the mean over seeds (at n=10, " \
           "alpha=0.1) and 87.5% for the worst seed" in text
    assert "in 2 of 2 configurations (worst case, mean over seeds): met" in text
    # 30%: 0.90 of clean FedAvg is exactly the target
    assert "30% Byzantine, worst case over attacks and the grid: `ours-nnm-tm` keeps 90.0%" \
           in text and "target 90%: met (mean), met (min)" in text
    # clean: -1.5 pt at n=10 misses; exactly -1.0 pt at 30% (0.99 - 1.00) counts as within
    assert "in 2 of 3 configurations (mean over seeds): missed; not at n=10, alpha=0.1, " \
           "20% Byzantine (-1.5 pt)" in text
    assert "`ours-nnm-tm`; the shipped default is `ours-recommended`" in lines[-1]


def test_share_copies_fraction_free_clean_runs_and_the_oracle() -> None:
    played = [cell(10, 0.1, 0.2, 0, AVG, "none", 0.9), cell(10, 0.1, 0.2, 0, OURS, "none", 0.8),
              cell(10, 0.1, 0.2, 0, ORACLE, "alie", 0.7),
              cell(10, 0.1, 0.3, 0, ORACLE, "alie", 0.6),
              cell(10, 0.1, 0.3, 0, ORACLE, "ipm", 0.5)]
    out = cells_mod.share(played, [AVG, OURS, ORACLE], ["none", "alie", "ipm"], (0.2, 0.3))
    got = {(c["row"], c["attack"], c["fraction"]): c["final-accuracy"] for c in out}
    assert got[(AVG, "none", 0.3)] == 0.9  # FedAvg's clean run serves every fraction
    assert (OURS, "none", 0.3) not in got  # ours depends on byzantine-fraction
    assert got[(ORACLE, "ipm", 0.2)] == 0.7  # one attack stands for all
    assert got[(ORACLE, "ipm", 0.3)] == 0.5  # but a played cell is never overwritten
    assert len(out) == len(played) + 2
    assert all("copied-from" in c for c in out[len(played):])


def test_groups_follow_attack_kinds_and_play_shared_runs_once() -> None:
    node_side, omniscient = NODE_SIDE[0], OMNISCIENT[-1]
    grid = cells_mod.Grid(nodes=(10, 20), alphas=(0.1,), fractions=(0.2, 0.3), seeds=(0, 1))
    runs = cells_mod.groups([OURS, AVG, ORACLE], ["none", node_side, omniscient], grid)
    assert len(runs) == 2 * 2 * (1 + 2 * 2)  # per setting: clean + (omniscient, node-side) x f
    first = [g for g in runs if (g.nodes, g.seed) == (10, 0)]
    assert [g.name for g in first] == [
        "n10-a0.1-s0/clean", "n10-a0.1-s0/f0.2-omniscient",
        f"n10-a0.1-s0/f0.2-{node_side}", "n10-a0.1-s0/f0.3-omniscient",
        f"n10-a0.1-s0/f0.3-{node_side}"]
    assert first[1].run_attack == OMNISCIENT[0]  # the run config's; the wrapper plays each
    clean = {s["id"] for s in first[0].scenarios}
    assert clean == {"ours-recommended|none|0.2", "ours-recommended|none|0.3",
                     "flwr-fedavg|none|0.2", "oracle|none|0.2"}
    # FedAvg plays clean only; the oracle only the first omniscient attack
    assert {s["row"] for s in first[1].scenarios} == {OURS, ORACLE}
    assert {s["row"] for s in first[2].scenarios} == {OURS}
    assert all(s["seed"] == 0 and s["nodes"] == 10 for g in first for s in g.scenarios)
    with_avg = cells_mod.groups([OURS, AVG], [node_side], grid, attack_fedavg=True)
    assert {s["row"] for s in with_avg[0].scenarios} == {OURS, AVG}


def test_run_config_sets_the_cell() -> None:
    g = cells_mod.Group(40, 0.3, 2, 0.1, "alie")
    cfg = cells_mod.run_config(g, Path("/x"), {"rounds": 5, "local-epochs": 1, "model": "mlp",
                                               "learning-rate": 0.1, "batch-size": 8,
                                               "dataset": "synthetic"})
    assert (cfg["dirichlet-alpha"], cfg["seed"], cfg["attack-fraction"]) == (0.3, 2, 0.1)
    assert (cfg["dataset"], cfg["partitioner"]) == ("synthetic", "dirichlet")
    assert cfg["min-train-nodes"] == cfg["min-available-nodes"] == 40


def test_worst_case_as_a_share_of_the_same_cells_oracle() -> None:
    cells = grid_cells()
    # The oracle plays one attack per cell; n=20 at 20% loses much to the attackers' data.
    cells += table(10, 0.1, 0.2, 0, {ORACLE: {"a": 0.90}})
    cells += table(10, 0.1, 0.2, 1, {ORACLE: {"a": 0.95}})
    cells += table(20, 0.1, 0.2, 0, {ORACLE: {"a": 0.64}})
    cells += table(20, 0.1, 0.2, 1, {ORACLE: {"a": 0.80}})
    s = report.summarise(cells, [*ROWS, ORACLE], ATTACKS)
    ours = s["configs"]["n20-a0.1-f0.2"]["rows"][OURS]
    assert ours["of-oracle-mean"] == pytest.approx((0.60 / 0.64 + 0.80 / 0.80) / 2)
    assert ours["of-oracle-min"] == pytest.approx(0.60 / 0.64)
    g = s["grid"]["0.2"][OURS]
    # n=10: (0.86 / 0.90 + 0.76 / 0.95) / 2 = 0.878 is lower than n=20's 0.969
    assert g["of-oracle-where"] == "n10-a0.1-f0.2"
    assert g["of-oracle-mean"] == pytest.approx((0.86 / 0.90 + 0.76 / 0.95) / 2)
    assert g["of-oracle-min"] == pytest.approx(0.76 / 0.95)
    # no oracle in the cell: no share
    assert s["configs"]["n20-a0.1-f0.3"]["rows"][OURS]["of-oracle-mean"] is None
    line = report.oracle_finding("0.2", s, OURS)
    assert line is not None and "keeps at least 87.8% (mean over seeds, at n=10" in line
