"""The numbers of ``robustness.py``'s report, from the cells (no Flower, no torch, no plot).

A configuration is (nodes n, Dirichlet alpha, Byzantine fraction); a cell is a configuration
and a seed. Per cell and row: the worst case over the attacks played and its ratio to clean
Flower FedAvg of the same (n, alpha, seed) ("retained"), and the row's clean accuracy minus
that FedAvg's. Per configuration: those as mean and min over the seeds. Per row and fraction:
the worst case over the grid (the configuration with the lowest mean; the lowest seed of
all). The recommendation is our row with the best worst case over the whole grid, measured
against the targets (``robustness_presets.target``); the findings check the targets.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from robustness_presets import DEFAULT_ROW, FLOWER, LABELS, ORACLE, OURS, REFERENCE, target

Key = tuple[int, float, float]  # (nodes, alpha, fraction)


def config_name(key: Key) -> str:
    """'n20-a0.1-f0.2': a configuration as a JSON key."""
    return f"n{key[0]}-a{key[1]}-f{key[2]}"


def mean_min(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """The mean and the min of the values that are not None (None, None if none are)."""
    vals = [v for v in values if v is not None]
    return (statistics.fmean(vals), min(vals)) if vals else (None, None)


def seed_summary(acc: dict[str, float | None], reference: float | None,
                 oracle: float | None = None) -> dict[str, Any]:
    """One row in one cell: worst case over the attacks (not 'none'), its attack, retained
    (worst over ``reference``, clean FedAvg), the worst case over ``oracle`` (the oracle's
    accuracy in the same cell: what is left when the attackers' data is gone) and clean
    accuracy minus ``reference``."""
    attacked = {a: v for a, v in acc.items() if a != "none" and v is not None}
    worst_attack = min(attacked, key=attacked.__getitem__, default=None)
    worst = attacked.get(worst_attack) if worst_attack else None
    clean = acc.get("none")
    return {"worst": worst, "worst-attack": worst_attack,
            "retained": worst / reference if worst is not None and reference else None,
            "of-oracle": worst / oracle if worst is not None and oracle else None,
            "clean-delta": (clean - reference
                            if clean is not None and reference is not None else None)}


def config_summary(per_seed: dict[int, dict[str, Any]],
                   acc: dict[int, dict[str, float | None]]) -> dict[str, Any]:
    """One row in one configuration, over the seeds: worst case and retained as mean and min,
    clean delta as mean, every attack's mean accuracy, the worst attack of each seed."""
    seeds = sorted(per_seed)
    worst_mean, worst_min = mean_min(per_seed[s]["worst"] for s in seeds)
    ret_mean, ret_min = mean_min(per_seed[s]["retained"] for s in seeds)
    of_mean, of_min = mean_min(per_seed[s]["of-oracle"] for s in seeds)
    attacks = sorted({a for s in seeds for a in acc[s]})
    return {"worst-mean": worst_mean, "worst-min": worst_min,
            "retained-mean": ret_mean, "retained-min": ret_min,
            "of-oracle-mean": of_mean, "of-oracle-min": of_min,
            "clean-delta-mean": mean_min(per_seed[s]["clean-delta"] for s in seeds)[0],
            "worst-attacks": {str(s): per_seed[s]["worst-attack"] for s in seeds},
            "accuracy": {a: mean_min(acc[s].get(a) for s in seeds)[0] for a in attacks},
            "seeds": seeds}


def summarise(cells: list[dict[str, Any]], rows: list[str],
              attacks: list[str]) -> dict[str, Any]:
    """Every configuration's row summaries (``configs``) and the worst case over the grid
    per fraction and row (``grid``)."""
    acc = {(c["nodes"], c["alpha"], c["fraction"], c["seed"], c["row"], c["attack"]):
           c["final-accuracy"] for c in cells}
    keys = sorted({(c["nodes"], c["alpha"], c["fraction"]) for c in cells})
    seeds = sorted({c["seed"] for c in cells})
    configs: dict[str, Any] = {}
    for key in keys:
        table = {}
        for row in rows:
            by_seed = {s: {a: acc.get((*key, s, row, a)) for a in attacks} for s in seeds
                       if (*key, s, REFERENCE, "none") in acc}
            per_seed = {s: seed_summary(v, acc[(*key, s, REFERENCE, "none")],
                                        _oracle(acc, key, s, attacks))
                        for s, v in by_seed.items()}
            table[row] = config_summary(per_seed, by_seed)
        configs[config_name(key)] = {"nodes": key[0], "alpha": key[1], "fraction": key[2],
                                     "rows": table}
    return {"configs": configs, "grid": grid_worst(configs, rows)}


def _oracle(acc: dict[tuple[Any, ...], float | None], key: Key, seed: int,
            attacks: list[str]) -> float | None:
    """The oracle's accuracy in one cell (it plays one attack, which stands for all)."""
    vals = [v for a in attacks if a != "none"
            if (v := acc.get((*key, seed, ORACLE, a))) is not None]
    return min(vals, default=None)


def _lowest(configs: dict[str, Any], row: str, field: str) -> tuple[float | None, str | None]:
    """The lowest ``field`` of ``row`` over ``configs`` and the configuration it is in."""
    vals = {k: c["rows"][row][field] for k, c in configs.items()
            if c["rows"][row][field] is not None}
    where = min(vals, key=vals.__getitem__, default=None)
    return (vals[where] if where else None), where


def grid_worst(configs: dict[str, Any], rows: list[str]) -> dict[str, Any]:
    """Per fraction and row: the lowest retained (mean over seeds) over the configurations
    and where, the lowest retained of any seed, the lowest clean delta and where."""
    out: dict[str, Any] = {}
    for f in sorted({c["fraction"] for c in configs.values()}):
        at = {k: c for k, c in configs.items() if c["fraction"] == f}
        out[str(f)] = {}
        for row in rows:
            ret, where = _lowest(at, row, "retained-mean")
            ret_min, where_min = _lowest(at, row, "retained-min")
            delta, delta_where = _lowest(at, row, "clean-delta-mean")
            of_mean, of_where = _lowest(at, row, "of-oracle-mean")
            of_min = _lowest(at, row, "of-oracle-min")[0]
            out[str(f)][row] = {"retained-mean": ret, "where": where,
                                "retained-min": ret_min, "where-min": where_min,
                                "of-oracle-mean": of_mean, "of-oracle-where": of_where,
                                "of-oracle-min": of_min,
                                "clean-delta-mean": delta, "clean-delta-where": delta_where}
    return out


def margin(grid: dict[str, Any], row: str) -> float:
    """How far ``row``'s worst case over the grid is above the target, at the fraction where
    it is the least (mean over seeds; -inf if a fraction has none)."""
    vals = [t[row]["retained-mean"] - target(float(f)) if t[row]["retained-mean"] is not None
            else float("-inf") for f, t in grid.items()]
    return min(vals, default=float("-inf"))


def recommend(summary: dict[str, Any], rows: list[str]) -> str | None:
    """Our row with the largest ``margin`` over the whole grid (ties: the larger mean of the
    fractions' worst cases); None when none of ours ran."""
    grid = summary["grid"]
    ours = [r for r in rows if r in OURS]

    def key(r: str) -> tuple[float, float]:
        vals = [t[r]["retained-mean"] or 0.0 for t in grid.values()]
        return margin(grid, r), statistics.fmean(vals) if vals else 0.0
    return max(ours, key=key, default=None)


def best_flower(table: dict[str, Any]) -> str | None:
    """The Flower built-in with the best worst case (retained, mean over seeds) in one
    configuration's ``rows``."""
    vals = {r: t["retained-mean"] for r, t in table.items()
            if r in FLOWER and t["retained-mean"] is not None}
    return max(vals, key=vals.__getitem__, default=None)


# ---------------------------------------------------------------- findings


def pct(v: float | None) -> str:
    """A share as a percentage with one decimal ('-' for None)."""
    return "-" if v is None else f"{100 * v:.1f}"


def byzantine(f: str | float) -> str:
    """'20% Byzantine' for the fraction 0.2 (or its key '0.2')."""
    return f"{round(100 * float(f))}% Byzantine"


def where(configs: dict[str, Any], name: str | None) -> str:
    """'n=20, alpha=0.1' for a configuration's name."""
    if name is None:
        return "-"
    c = configs[name]
    return f"n={c['nodes']}, alpha={c['alpha']}"


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def target_finding(f: str, summary: dict[str, Any], rec: str) -> str:
    """The recommended row's worst case over attacks and the grid against the target."""
    t, configs, goal = summary["grid"][f][rec], summary["configs"], target(float(f))
    if t["retained-mean"] is None:
        return f"{byzantine(f)}: `{rec}` has no attacked results."
    return (f"{byzantine(f)}, worst case over attacks and the grid: `{rec}` keeps "
            f"{pct(t['retained-mean'])}% of clean FedAvg as the mean over seeds (at "
            f"{where(configs, t['where'])}) and {pct(t['retained-min'])}% for the worst "
            f"seed (at {where(configs, t['where-min'])}); target {round(100 * goal)}%: "
            f"{_met(t['retained-mean'] >= goal)} (mean), "
            f"{_met(t['retained-min'] >= goal)} (min).")


def flower_finding(f: str, summary: dict[str, Any], rec: str) -> str:
    """Whether the recommended row is above the best Flower built-in in every configuration
    at fraction ``f`` (worst case, mean over seeds), and the misses."""
    configs = {k: c for k, c in summary["configs"].items() if str(c["fraction"]) == f}
    misses, count = [], 0
    for name, c in configs.items():
        best = best_flower(c["rows"])
        ours = c["rows"][rec]["retained-mean"]
        if best is None or ours is None:
            continue
        count += 1
        theirs = c["rows"][best]["retained-mean"]
        if ours <= theirs:
            misses.append(f"{where(configs, name)} ({pct(ours)}% vs "
                          f"{LABELS.get(best, best)} {pct(theirs)}%)")
    if not count:
        return f"{byzantine(f)}: no configuration with both `{rec}` and a Flower built-in."
    grid = summary["grid"][f]
    flower = {r: grid[r]["retained-mean"] for r in grid
              if r in FLOWER and grid[r]["retained-mean"] is not None}
    top = max(flower, key=flower.__getitem__, default=None)
    overall = (f"; over the grid the best built-in is {LABELS.get(top, top)} with "
               f"{pct(flower[top])}%" if top else "")
    return (f"{byzantine(f)}: `{rec}` is above the best Flower built-in in "
            f"{count - len(misses)} of {count} configurations (worst case, mean over seeds): "
            f"{_met(not misses)}" + (f"; not at {'; '.join(misses)}" if misses else "")
            + overall + ".")


def clean_finding(summary: dict[str, Any], rec: str) -> str:
    """Whether the recommended row's clean accuracy is within 1 point of (or above) clean
    FedAvg in every configuration, as the mean over seeds."""
    configs = summary["configs"]
    deltas = {k: c["rows"][rec]["clean-delta-mean"] for k, c in configs.items()
              if c["rows"][rec]["clean-delta-mean"] is not None}
    misses = [f"{where(configs, k)}, {byzantine(configs[k]['fraction'])} "
              f"({100 * d:+.1f} pt)" for k, d in deltas.items() if d < -0.01 - 1e-9]
    low = min(deltas, key=deltas.__getitem__, default=None)
    lowest = (f"; lowest {100 * deltas[low]:+.1f} pt at {where(configs, low)}, "
              f"{byzantine(configs[low]['fraction'])}" if low else "")
    return (f"No attack: `{rec}`'s clean accuracy is within 1 pt of clean FedAvg (or above) "
            f"in {len(deltas) - len(misses)} of {len(deltas)} configurations (mean over "
            f"seeds): {_met(not misses)}" + (f"; not at {'; '.join(misses)}" if misses else "")
            + lowest + ".")


def oracle_finding(f: str, summary: dict[str, Any], rec: str) -> str | None:
    """The oracle's worst case over the grid, and the recommended row's worst case as a
    share of the oracle's accuracy in the same configuration (lowest over the grid)."""
    grid, configs = summary["grid"][f], summary["configs"]
    if ORACLE not in grid or not grid[ORACLE]["retained-mean"] or \
            grid[rec]["of-oracle-mean"] is None:
        return None
    o, t = grid[ORACLE], grid[rec]
    return (f"{byzantine(f)}: the oracle (FedAvg over the honest nodes only) keeps "
            f"{pct(o['retained-mean'])}% of clean FedAvg in its worst configuration "
            f"({where(configs, o['where'])}): leaving the attackers' data out costs that much, "
            f"so no defence that leaves them out can reach clean FedAvg there. Against the oracle "
            f"of the same configuration `{rec}`'s worst case keeps at least "
            f"{pct(t['of-oracle-mean'])}% (mean over seeds, at "
            f"{where(configs, t['of-oracle-where'])}; {pct(t['of-oracle-min'])}% for the "
            "worst seed).")


def recommendation_finding(summary: dict[str, Any], rows: list[str], rec: str) -> str:
    """Which of our rows the grid recommends, by how much, and whether it is the default."""
    ours = [r for r in rows if r in OURS]
    margins = ", ".join(f"`{r}` " + (f"{100 * m:+.1f} pt" if math.isfinite(m) else
                                     "n/a (a fraction without attacked results)")
                        for r, m in ((r, margin(summary["grid"], r)) for r in ours))
    default = ("it is the shipped default" if rec == DEFAULT_ROW else
               f"the shipped default is `{DEFAULT_ROW}`" +
               ("" if DEFAULT_ROW in rows else ", which did not run"))
    return (f"Recommended by the worst case over the whole grid (every configuration, seed "
            f"and fraction, against each fraction's target): `{rec}`; {default}. Margin over "
            f"the target where it is the smallest: {margins}.")


def findings(results: dict[str, Any]) -> list[str]:
    """The report's findings: targets per fraction, clean accuracy, the recommendation."""
    summary, rec, rows = results["summary"], results.get("recommended"), results["rows"]
    if rec is None:
        return ["None of our rows ran: nothing to check against the targets."]
    out = []
    for f in summary["grid"]:
        out += [target_finding(f, summary, rec), flower_finding(f, summary, rec)]
        line = oracle_finding(f, summary, rec)
        out += [line] if line else []
    return [*out, clean_finding(summary, rec), recommendation_finding(summary, rows, rec)]
