"""The grid's worst cases per Dirichlet alpha and Byzantine fraction, over the node counts.

The worst case over the whole grid is one number per fraction, set by its weakest
configuration. Heterogeneity decides most of it: this table gives, per alpha (rows) and
fraction (columns), the range over n of a row's worst case over attacks (retained: % of
clean FedAvg of the same cell, mean over seeds), the lowest seed, and the same range for
the oracle (FedAvg over the honest nodes only) and for the best Flower built-in of each
configuration. ``robustness_doc.write_doc`` puts it under the grid's worst case.
"""

from __future__ import annotations

from typing import Any

from common import md_table
from robustness_presets import ORACLE, REFERENCE
from robustness_report import byzantine, pct


def _span(values: list[float]) -> str:
    """'77.0-86.1%' for the range of shares, '86.1%' when it is one value, '-' for none."""
    if not values:
        return "-"
    low, high = pct(min(values)), pct(max(values))
    return f"{low}%" if low == high else f"{low}-{high}%"


def by_alpha(summary: dict[str, Any], row: str, field: str = "retained-mean",
             ) -> dict[tuple[float, float], list[float]]:
    """(alpha, fraction) -> ``row``'s ``field`` in each configuration with a value."""
    out: dict[tuple[float, float], list[float]] = {}
    for c in summary["configs"].values():
        value = c["rows"].get(row, {}).get(field)
        if value is not None:
            out.setdefault((c["alpha"], c["fraction"]), []).append(value)
    return out


def best_builtin(summary: dict[str, Any]) -> dict[tuple[float, float], list[float]]:
    """(alpha, fraction) -> per configuration the best Flower built-in's retained mean."""
    out: dict[tuple[float, float], list[float]] = {}
    for c in summary["configs"].values():
        values = [t["retained-mean"] for r, t in c["rows"].items()
                  if r.startswith("flwr-") and r != REFERENCE and t["retained-mean"] is not None]
        if values:
            out.setdefault((c["alpha"], c["fraction"]), []).append(max(values))
    return out


def table(results: dict[str, Any], row: str) -> list[str]:
    """The section's lines: one table row per alpha and measure, one column per fraction."""
    summary = results["summary"]
    fractions = sorted({c["fraction"] for c in summary["configs"].values()})
    alphas = sorted({c["alpha"] for c in summary["configs"].values()}, reverse=True)
    measures = [(f"`{row}`, mean over seeds", by_alpha(summary, row)),
                (f"`{row}`, lowest seed", by_alpha(summary, row, "retained-min")),
                ("oracle, mean over seeds", by_alpha(summary, ORACLE)),
                ("best Flower built-in, mean over seeds", best_builtin(summary))]
    lines = [[f"alpha {a}", label, *(_span(values.get((a, f), [])) for f in fractions)]
             for a in alphas for label, values in measures]
    nodes = sorted({c["nodes"] for c in summary["configs"].values()})
    return ["## Worst case per alpha and fraction", "",
            f"Worst case over attacks, retained (% of clean FedAvg of the same cell): the "
            f"range over n in {nodes} (`benchmarks/robustness_by_alpha.py`).", "",
            *md_table(["alpha", "measure", *(byzantine(f) for f in fractions)], lines), ""]
