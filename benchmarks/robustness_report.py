"""The report of ``robustness.py``: the summary tables, the findings, ``docs/robustness.md``
and its plot, from the cells (no Flower, no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import md_table, shown
from robustness_presets import BASELINE, DEFAULT_ROW, FLOWER, LABELS, ORACLE, OURS, SEED

# How the recommended row defends, and the oracle's bound: fixed text of the report.
DEFENSE_NOTES = [
    "How `anomaly-detection=exclude` defends (`fedapp/robust/detection.py`, "
    "`fedapp/server/screen.py`): "
    "every update is scored four ways, and at most f flagged updates, the most severe, "
    "are left out; the rest are scaled down to the norm threshold.",
    "",
    "- norm: robust z-score of the update's norm above 3.5 (scaling, Gaussian noise);",
    "- copies: nearest other update ten times closer than updates typically are "
    "(colluders sending one crafted update: ALIE, IPM, min-max, min-sum);",
    "- sign skew: above the coordinate-wise median on 3 coordinates for every 1 below, "
    "or the reverse (shifts by a multiple of the coordinate-wise std: ALIE);",
    "- cosine reputation: the node's cosines to the median of the unsuspected updates, "
    "averaged over rounds (memory 0.9), below 0 (sign flipping, IPM, min-max / min-sum "
    "along the mean). One round's cosine is noise on this non-IID data: honest updates "
    "are nearly orthogonal to each other.",
    "",
    "An oracle that knows the Byzantine nodes and averages the others (the best any "
    "defense can do here: the attackers' own data is lost) reaches 91.7% at 20% and 89.2% "
    "at 30% (in-process replica of these runs, same seeds and training).",
    "",
]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _byzantine(f: str) -> str:
    """'20% Byzantine' for the fraction key '0.2'."""
    return f"{round(100 * float(f))}% Byzantine"


# ---------------------------------------------------------------- summary


def _row_summary(cols: dict[str, float | None], reference: float | None) -> dict[str, Any]:
    """One row at one fraction: its accuracies, worst case and the ratios to clean FedAvg."""
    attacked = {a: v for a, v in cols.items() if a != "none" and v is not None}
    worst = min(attacked.values()) if attacked else None
    worst_attack = min(attacked, key=attacked.__getitem__, default=None)
    return {"accuracy": cols, "worst": worst, "worst-attack": worst_attack,
            "retained-worst": (worst / reference
                               if worst is not None and reference else None),
            "clean-minus-fedavg": (cols["none"] - reference
                                   if cols.get("none") is not None and reference
                                   else None)}


def summarise(cells: list[dict[str, Any]], rows: list[str], attacks: list[str],
              fractions: list[float]) -> dict[str, Any]:
    """Clean FedAvg's accuracy (mean over the fractions) and, per fraction, every row's
    summary."""
    acc = {(c["row"], c["attack"], c["fraction"]): c["final-accuracy"] for c in cells}
    clean = [acc[(BASELINE[0], "none", f)] for f in fractions if (BASELINE[0], "none", f) in acc]
    reference = sum(clean) / len(clean) if clean else None
    tables = {str(f): {row: _row_summary({a: acc.get((row, a, f)) for a in attacks}, reference)
                       for row in rows}
              for f in fractions}
    return {"clean-fedavg-accuracy": reference, "tables": tables}


def recommend(summary: dict[str, Any], rows: list[str]) -> str | None:
    """The row of the shipped default (``DEFAULT_ROW``) when it ran; otherwise our row with
    the best worst case at the lowest fraction (ties go to the next fraction)."""
    if DEFAULT_ROW in rows:
        return DEFAULT_ROW
    ours = [r for r in rows if r in OURS]
    if not ours:
        return None
    fractions = sorted(summary["tables"], key=float)

    def key(r: str) -> tuple[float, ...]:
        return tuple(summary["tables"][f][r]["worst"] or 0.0 for f in fractions)
    return max(ours, key=key)


# ---------------------------------------------------------------- findings


def _target_finding(f: str, table: dict[str, Any], rows: list[str], rec: str) -> str:
    """The recommended row's worst case against the target and Flower's best built-in."""
    flower_worst = {r: table[r]["worst"] for r in rows if r in FLOWER and
                    table[r]["worst"] is not None}
    best_flower = max(flower_worst, key=flower_worst.__getitem__, default=None)
    target = 0.95 if abs(float(f) - 0.2) < 1e-9 else 0.90
    t = table[rec]
    met = t["retained-worst"] >= target
    beats = best_flower is None or t["worst"] > flower_worst[best_flower]
    return (f"{_byzantine(f)}: `{rec}` keeps "
            f"{_pct(t['retained-worst'])}% of clean FedAvg in the worst case "
            f"({t['worst-attack']}), target {round(100 * target)}%: "
            f"{'met' if met else 'missed'}; best Flower built-in "
            f"{LABELS.get(best_flower, best_flower)} keeps "
            f"{_pct(table[best_flower]['retained-worst']) if best_flower else '-'}% "
            f"({'beaten' if beats else 'not beaten'}).")


def _broken_finding(f: str, table: dict[str, Any], rows: list[str],
                    attacks: list[str]) -> str | None:
    """The attacks under which no aggregator keeps 50% accuracy, if any."""
    real = [r for r in rows if r != ORACLE]
    broken = [a for a in attacks if a != "none" and all(
        table[r]["accuracy"][a] is not None and table[r]["accuracy"][a] < 0.5 for r in real)]
    if not broken:
        return None
    best = {a: max(real, key=lambda r, a=a: table[r]["accuracy"][a]) for a in broken}
    return (f"{_byzantine(f)}: no aggregator in the table keeps 50% "
            "accuracy under " + ", ".join(
                f"{a} (best {LABELS.get(best[a], best[a])}, "
                f"{_pct(table[best[a]]['accuracy'][a])}%)" for a in broken) + ".")


def _fraction_findings(f: str, table: dict[str, Any], rows: list[str], rec: str | None,
                       attacks: list[str]) -> list[str]:
    out = []
    if rec is not None and table[rec]["retained-worst"] is not None:
        out.append(_target_finding(f, table, rows, rec))
    if rec is not None and table[rec]["clean-minus-fedavg"] is not None:
        d = 100 * table[rec]["clean-minus-fedavg"]
        out.append(f"{round(100 * float(f))}% setting, no attack: `{rec}` is {d:+.1f} pt "
                   f"from clean FedAvg (target: within 1 pt): "
                   f"{'met' if abs(d) <= 1.0 or d > 0 else 'missed'}.")
    if rec is not None and ORACLE in rows and table[ORACLE]["worst"]:
        o, t = table[ORACLE], table[rec]
        out.append(f"{_byzantine(f)}: the oracle (FedAvg over the honest "
                   f"nodes only) has {_pct(o['worst'])}% in its worst case; `{rec}` "
                   f"reaches {_pct(t['worst'] / o['worst'])}% of that.")
    broken = _broken_finding(f, table, rows, attacks)
    return out if broken is None else [*out, broken]


def findings(results: dict[str, Any]) -> list[str]:
    """The report's findings, fraction by fraction."""
    rec = results.get("recommended")
    return [line for f, table in results["summary"]["tables"].items()
            for line in _fraction_findings(f, table, results["rows"], rec, results["attacks"])]


# ---------------------------------------------------------------- outputs


def _intro(results: dict[str, Any], json_path: Path) -> list[str]:
    """Title, provenance, setting and our rows' configurations."""
    settings, versions = results["settings"], results["versions"]
    ref = results["summary"]["clean-fedavg-accuracy"]
    return [
        "# Robustness: accuracy under attack, ours vs Flower's built-in strategies",
        "",
        f"Generated by `{results['command']}` on {results['date']} "
        f"({results['machine']['cpus']} cores, flwr {versions['flwr']}, "
        f"torch {versions['torch']}); raw results in `{shown(json_path)}`. "
        f"Total {results['wall-seconds'] / 60:.0f} min of the last invocation: a killed run "
        "resumes from its finished cells (`--workdir`), and cells are only reused when the "
        "code they ran is unchanged.",
        "",
        f"Setting: {results['dataset']}, model `{settings['model']}`, "
        f"{settings['nodes']} simulated nodes (Dirichlet alpha = 0.5), "
        f"{settings['rounds']} rounds x {settings['local-epochs']} local "
        f"epochs, seed {SEED}, every node trains every round. Each cell is one complete run on "
        "Flower's simulation engine; the number is the final accuracy (%) on the server's "
        "held-out test split. Every robust rule is told the true share of Byzantine nodes: "
        "Flower's MultiKrum and Bulyan get the count f = fraction x n, FedTrimmedAvg "
        "beta = fraction, ours `byzantine-fraction` = fraction (f = floor(fraction x the "
        "updates that reach the rule), after anomaly exclusion). Flower's Bulyan needs "
        "n >= 4f + 3, so it runs with f = min(f, (n - 3) / 4). The adaptive attacks search "
        "their scale against the defense in use: for our rows the whole pipeline (anomaly "
        "exclusion, pre-aggregation, rule). Clean FedAvg (Flower's, no attack) reaches "
        f"**{_pct(ref)}%**; \"retained\" is the worst case over that.",
        "",
        "Our rows: " + "; ".join(f"`{r}` = {', '.join(f'{k}={v}' for k, v in OURS[r].items())}"
                                 for r in results["rows"] if r in OURS) + ".",
        "",
    ]


def _fraction_table(f: str, table: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """One fraction's section: every row's accuracy per attack, worst case, retained."""
    nodes, attacks = results["settings"]["nodes"], results["attacks"]
    rows = []
    for row in results["rows"]:
        t = table[row]
        name = LABELS.get(row, f"**{row}**" if row == results.get("recommended") else row)
        rows.append([name, *(_pct(t["accuracy"][a]) for a in attacks),
                     f"{_pct(t['worst'])} ({t['worst-attack']})",
                     f"{_pct(t['retained-worst'])}%"])
    return [f"## {_byzantine(f)} ({round(float(f) * nodes)} of {nodes} nodes)", "",
            *md_table(["aggregator", *attacks, "worst", "retained"], rows, numeric=True), ""]


def write_doc(results: dict[str, Any], path: Path, png: Path, json_path: Path) -> None:
    """``docs/robustness.md`` (or its stand-in at ``path``)."""
    lines = [*_intro(results, json_path), *DEFENSE_NOTES]
    for f, table in results["summary"]["tables"].items():
        lines += _fraction_table(f, table, results)
    lines += ["## Findings", ""] + [f"- {x}" for x in results["findings"]] + [
        "", f"![worst case per aggregator]({png.name})", ""]
    path.write_text("\n".join(lines))


def plot(results: dict[str, Any], path: Path) -> None:
    """Worst-case accuracy per row and fraction, against clean FedAvg and 95% of it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, rows = results["summary"], results["rows"]
    fractions = list(s["tables"])
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / max(len(fractions), 1)
    for k, f in enumerate(fractions):
        vals = [100 * (s["tables"][f][r]["worst"] or 0.0) for r in rows]
        ax.bar([i + k * width for i in range(len(rows))], vals, width, label=_byzantine(f))
    ref = s["clean-fedavg-accuracy"]
    if ref:
        ax.axhline(100 * ref, color="black", lw=1, ls="--", label="clean FedAvg")
        ax.axhline(95 * ref, color="gray", lw=1, ls=":", label="95% of clean FedAvg")
    ax.set_xticks([i + width * (len(fractions) - 1) / 2 for i in range(len(rows))])
    ax.set_xticklabels([LABELS.get(r, r) for r in rows], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("worst-case final accuracy (%)")
    ax.set_title("Worst case over all attacks")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
