"""The summaries of ``aggregation_default.py``: ratios, targets, the table and the page
``docs/aggregation_default.md`` (no torch, no Flower)."""

from __future__ import annotations

from typing import Any

from common import md_table

#: The issue's targets: the default within this factor of the floor at these sizes ...
FLOOR_FACTOR, FLOOR_SIZES = 1.5, ((20, 10_000_000), (100, 1_000_000))
#: ... at least this much faster than Flower's MultiKrum at this size ...
MULTIKRUM_FACTOR, MULTIKRUM_SIZE = 2.0, (20, 10_000_000)
#: ... and at most this fraction of the matrix as extra peak memory.
MEMORY_FRACTION = 0.5


def ratios(size: dict[str, Any]) -> dict[str, float | None]:
    """default / floor (on the matrix and end to end), MultiKrum / default, before / after."""
    med = {name: m["median_s"] for name, m in size["measurements"].items()}
    on_matrix, e2e, fl = med["fedapp/default-on-matrix"], med["fedapp/default"], med["floor"]
    multikrum = med.get("flower/MultiKrum")
    before = size.get("before_on_matrix_s")
    return {
        "default_on_matrix_over_floor": on_matrix / fl,
        "default_e2e_over_floor": e2e / fl,
        "multikrum_over_default_e2e": None if multikrum is None else multikrum / e2e,
        "fedavg_e2e_over_default_e2e": med["flower/FedAvg"] / e2e,
        "before_over_default_on_matrix": None if before is None else before / on_matrix,
    }


def _size(sizes: list[dict[str, Any]], n: int, d: int) -> dict[str, Any] | None:
    return next((s for s in sizes if s["n"] == n and s["d"] == d), None)


def targets(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """Each target with the measured value and whether it was met (None: size not run)."""
    out: dict[str, Any] = {}
    for n, d in FLOOR_SIZES:
        s = _size(sizes, n, d)
        value = None if s is None else s["ratios"]["default_on_matrix_over_floor"]
        out[f"default_within_{FLOOR_FACTOR}x_floor_n{n}_d{d:.0e}"] = {
            "value": value, "met": None if value is None else value <= FLOOR_FACTOR,
            "e2e_value": None if s is None else s["ratios"]["default_e2e_over_floor"]}
    s = _size(sizes, *MULTIKRUM_SIZE)
    value = None if s is None else s["ratios"]["multikrum_over_default_e2e"]
    out[f"{MULTIKRUM_FACTOR}x_faster_than_multikrum_n20_d1e+07"] = {
        "value": value, "met": None if value is None else value >= MULTIKRUM_FACTOR}
    for s in sizes:
        mem = s.get("peak_memory", {})
        fractions = {k: mem[k]["fraction_of_matrix"] for k in
                     ("fedapp/default-on-matrix", "fedapp/default") if k in mem}
        if fractions:
            out[f"peak_memory_n{s['n']}_d{s['d']:.0e}"] = {
                "fraction_of_matrix": fractions,
                "met": all(v <= MEMORY_FRACTION for v in fractions.values())}
    return out


def _fmt(v: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def table(sizes: list[dict[str, Any]]) -> list[str]:
    """Medians (s), ratios and peak memory per size, as markdown lines."""
    header = ["n, d", "floor", "fedapp default on the matrix", "fedapp default end to end",
              "Flower FedAvg", "Flower MultiKrum", "default / floor (matrix, e2e)",
              "MultiKrum / default (e2e)", "before (matrix, once)", "peak extra / matrix"]
    rows = []
    for s in sizes:
        med = {k: m["median_s"] for k, m in s["measurements"].items()}
        r = s["ratios"]
        mem = s.get("peak_memory", {})
        mem_s = ", ".join(f"{mem[k]['fraction_of_matrix']:.2f}" for k in
                          ("fedapp/default-on-matrix", "fedapp/default") if k in mem)
        rows.append([
            f"{s['n']}, {s['d']:.0e}", f"{med['floor']:.3f} s",
            f"{med['fedapp/default-on-matrix']:.3f} s", f"{med['fedapp/default']:.3f} s",
            f"{med['flower/FedAvg']:.3f} s", _fmt(med.get("flower/MultiKrum"), ".3f", " s"),
            f"{r['default_on_matrix_over_floor']:.2f}x, {r['default_e2e_over_floor']:.2f}x",
            _fmt(r["multikrum_over_default_e2e"], ".2f", "x"),
            _fmt(s.get("before_on_matrix_s"), ".2f", " s"), mem_s or "n/a"])
    return md_table(header, rows)


def target_lines(tg: dict[str, Any]) -> list[str]:
    """One line per target: value and met / missed."""
    lines = []
    for name, t in tg.items():
        met = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        if "fraction_of_matrix" in t:
            value = ", ".join(f"{k} {v:.2f}" for k, v in t["fraction_of_matrix"].items())
        else:
            value = _fmt(t["value"], ".3f")
            if t.get("e2e_value") is not None:
                value += f" (end to end {t['e2e_value']:.2f})"
        lines.append(f"- `{name}`: {value} ({met})")
    return lines


def summary_text(results: dict[str, Any]) -> str:
    return "\n".join([*table(results["sizes"]), "", *target_lines(results["targets"])])
