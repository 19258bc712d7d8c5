"""The summaries of ``aggregation_latency.py``: ratios, agreement with Flower, the issue's
targets and the markdown table (no torch, no Flower)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

# (ours rule-only, Flower built-in, ours end to end) compared in the ratios.
PAIRS = (
    ("multikrum", "MultiKrum"),
    ("krum", "Krum"),
    ("median", "FedMedian"),
    ("trimmed-mean", "FedTrimmedAvg"),
    ("fedavg", "FedAvg"),
)
#: Our rules in the table without a Flower counterpart.
OURS_ONLY = ("geomed", "centered-clipping", "median-unequal-weights",
             "trimmed-mean-unequal-weights")
TABLE_HEADER = (
    "| n | d | rule | ours (s) | ours / Gram | ours e2e (s) | Flower (s) "
    "| Flower / ours | Flower / ours e2e | peak mem / 2nd4 |",
    "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
)


def ratios(measurements: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Flower over ours (rule only and end to end) per pair; every median over the Gram's."""
    med = {name: m["median_s"] for name, m in measurements.items()}
    gram = med["yardstick/gram-f32"]
    return {
        "flower_over_ours": {rule: med[f"flower/{fl}"] / med[f"ours/{rule}"]
                             for rule, fl in PAIRS},
        "flower_over_ours_e2e": {rule: med[f"flower/{fl}"] / med[f"e2e/{rule}"]
                                 for rule, fl in PAIRS},
        "over_gram_f32": {name: t / gram for name, t in med.items()},
    }


def agreement(flats: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Largest absolute difference of our aggregates (rule only, end to end) from Flower's."""
    out = {}
    for rule, fl in PAIRS:
        ref = flats[f"flower/{fl}"]
        out[rule] = {
            "max_abs_diff_ours_vs_flower": float(np.max(np.abs(flats[f"ours/{rule}"] - ref))),
            "max_abs_diff_e2e_vs_flower": float(np.max(np.abs(flats[f"e2e/{rule}"] - ref))),
        }
    return out


def _faster(r: dict[str, Any], rule: str, factor: float) -> dict[str, Any]:
    return {"rule_only": r["flower_over_ours"][rule], "e2e": r["flower_over_ours_e2e"][rule],
            "met_rule_only": r["flower_over_ours"][rule] >= factor,
            "met_e2e": r["flower_over_ours_e2e"][rule] >= factor}


def targets(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets at n=100, d=1e6 (only in a full run)."""
    big = next((s for s in sizes if s["n"] == 100 and s["d"] == 1_000_000), None)
    if big is None:
        return {"evaluated": False, "reason": "n=100, d=1e6 not in this run (--quick?)"}
    r = big["ratios"]
    out: dict[str, Any] = {"evaluated": True}
    for rule in ("krum", "multikrum"):
        ratio = r["over_gram_f32"][f"ours/{rule}"]
        out[f"{rule}_within_2x_gram_f32"] = {"value": ratio, "met": ratio <= 2.0}
        out[f"{rule}_3x_faster_than_flower"] = _faster(r, rule, 3.0)
    for rule in ("median", "trimmed-mean"):
        out[f"{rule}_2x_faster_than_flower"] = _faster(r, rule, 2.0)
    for rule in ("multikrum", "median", "trimmed-mean"):
        mem = big["peak_memory"][rule]
        out[f"{rule}_peak_memory_within_2nd4"] = {
            "bytes": mem["peak_beyond_inputs_bytes"], "budget": mem["budget_bytes"],
            "met": mem["within_budget"]}
    return out


def _size_rows(s: dict[str, Any]) -> list[str]:
    """One size's table rows: yardsticks, the pairs, our other rules, Flower's Bulyan."""
    med = {k: v["median_s"] for k, v in s["measurements"].items()}
    size = f"| {s['n']} | {s['d']:.0e} |"
    gram, dist = med["yardstick/gram-f32"], med["yardstick/distances-f64"]
    rows = [f"{size} Gram X Xᵀ f32 (yardstick) | {gram:.3f} | 1.00 | | | | | |",
            f"{size} distances f64 (Krum's floor) | {dist:.3f} | {dist / gram:.2f} | | | | | |"]
    for rule, fl in PAIRS:
        mem = s["peak_memory"].get(rule)
        mem_s = f"{mem['peak_beyond_inputs_bytes'] / mem['budget_bytes']:.2f}" if mem else ""
        ours, e2e, flower = med[f"ours/{rule}"], med[f"e2e/{rule}"], med[f"flower/{fl}"]
        rows.append(f"{size} {rule} vs {fl} | {ours:.3f} "
                    f"| {ours / gram:.2f} | {e2e:.3f} | {flower:.3f} | {flower / ours:.2f} "
                    f"| {flower / e2e:.2f} | {mem_s} |")
    for name in OURS_ONLY:
        t = med[f"ours/{name}"]
        rows.append(f"{size} {name} | {t:.3f} | {t / gram:.2f} | | | | | |")
    if "flower/Bulyan" in med:
        rows.append(f"{size} Flower Bulyan (f={s['f']}) | | | "
                    f"| {med['flower/Bulyan']:.3f} | | | |")
    return rows


def markdown_table(sizes: list[dict[str, Any]]) -> str:
    """Medians per size and rule (seconds) and the ratios, as a markdown table.

    Not :func:`common.md_table`: its columns are all left- or all right-aligned past
    the first, and its empty cells have two spaces."""
    return "\n".join([*TABLE_HEADER, *(row for s in sizes for row in _size_rows(s))])


def summary_text(results: dict[str, Any]) -> str:
    """What a run prints at the end: the table and the targets."""
    return markdown_table(results["sizes"]) + "\n" + json.dumps(results["targets"], indent=2)
