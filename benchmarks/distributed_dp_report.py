"""The tables, the targets, the markdown page and the plot of ``distributed_dp.py``'s results.

Pure functions of the results JSON. Per epsilon and row: the final server accuracy over
seeds (mean, sample std, min, number of seeds), the gap to the centralized ceiling and over
local DP-SGD (points, means), the last round's reported ``dp-epsilon`` vs Opacus's RDP
accountant fed ``(z, q, rounds)``, wall time per run and per round. Targets (eps 3 and 8,
means over the seeds): one sum within 3 points of the ceiling, at least 15 points above
local DP-SGD, accountant ratio within 1 %. The prose and the audit table are in
``distributed_dp_text``.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from common import fmt_opt, md_table, shown

ONE_SUM, BUCKETS_2, LOCAL, CEILING, OFF = ("distributed, one sum", "distributed, buckets of 2",
                                           "local DP-SGD", "centralized ceiling", "non-private")
CENTRAL = "client-level central DP"
ORDER = (ONE_SUM, BUCKETS_2, LOCAL, CENTRAL, CEILING, OFF)
ROWS = ORDER
TARGET_EPSILONS = (3.0, 8.0)
HEADER = ["row", "seeds", "n", "final acc (mean)", "std", "min", "gap to ceiling (pts)",
          "over local DP-SGD (pts)", "dp-epsilon reported", "Opacus RDP (z, q, T)", "ratio",
          "rounds", "wall s / run", "s / round (median)"]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _runs(res: dict[str, Any], row: str, eps: float | None) -> list[dict[str, Any]]:
    return sorted((r for r in res["runs"] if r["row"] == row and "error" not in r
                   and (row == OFF or r["epsilon"] == eps)), key=lambda r: r["seed"])


def _acc(res: dict[str, Any], row: str, eps: float) -> float | None:
    return _mean([r["final-accuracy"] for r in _runs(res, row, eps)])


def epsilons(res: dict[str, Any]) -> list[float]:
    """Every epsilon with a DP run, ascending."""
    return sorted({r["epsilon"] for r in res["runs"] if r["epsilon"] is not None})


def _line(res: dict[str, Any], row: str, eps: float, ceil: float | None,
          local: float | None) -> dict[str, Any]:
    runs = _runs(res, row, eps)
    accs = [r["final-accuracy"] for r in runs]
    acc = _mean(accs)
    reported = _mean([r["epsilon-reported"] for r in runs
                      if r.get("epsilon-reported") is not None])
    opacus = _mean([r["epsilon-opacus"] for r in runs if "epsilon-opacus" in r])
    per_round = [s for r in runs for s in r.get("round-seconds", [])[1:]]
    return {
        "row": row, "epsilon": eps, "seeds": [r["seed"] for r in runs],
        "accuracy": acc, "std": statistics.stdev(accs) if len(accs) > 1 else None,
        "min": min(accs) if accs else None, "accuracies": accs,
        "gap-to-ceiling-pts": None if acc is None or ceil is None or row == CEILING
        else 100 * (ceil - acc),
        "over-local-pts": None if acc is None or local is None or row == LOCAL
        else 100 * (acc - local),
        "epsilon-reported": reported, "epsilon-opacus": opacus,
        "ratio": reported / opacus if reported is not None and opacus else None,
        "rounds": runs[0]["rounds"] if runs else None,
        "wall-s": _mean([r["wall-seconds"] for r in runs]),
        "round-s": statistics.median(per_round) if per_round else None,
        "runs-failed": sum(1 for r in res["runs"] if r["row"] == row and "error" in r
                           and (row == OFF or r["epsilon"] == eps))}


def summarize(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per epsilon and row (the non-private runs are repeated under each)."""
    out = []
    for eps in epsilons(res):
        ceil, local = _acc(res, CEILING, eps), _acc(res, LOCAL, eps)
        out += [_line(res, row, eps, ceil, local) for row in ORDER
                if row in res["params"]["rows"]]
    return out


def find(summary: list[dict[str, Any]], row: str, eps: float) -> dict[str, Any] | None:
    return next((s for s in summary if s["row"] == row and s["epsilon"] == eps), None)


def spread_means(res: dict[str, Any]) -> dict[float, float]:
    """The mean of the ceiling's noise draws per epsilon (none: empty)."""
    draws = res.get("ceiling-spread") or []
    return {e: statistics.fmean(a) for e in epsilons(res)
            if (a := [r["final-accuracy"] for r in draws if r["epsilon"] == e])}


def _n(s: dict[str, Any] | None) -> str:
    return f"n = {len(s['seeds'])}" if s else "n = 0"


def _target_rows(summary: list[dict[str, Any]], spread: dict[float, float],
                 row: str, eps: float) -> list[list[str]]:
    s, ceil, local = (find(summary, r, eps) for r in (row, CEILING, LOCAL))
    if s is None or s["accuracy"] is None:
        return [[f"{row}, eps {eps:g}", "not run", "NOT met (no data)"]]
    name = "one sum" if row == ONE_SUM else "buckets of 2 (no target; shown next to it)"
    gap, over = s["gap-to-ceiling-pts"], s["over-local-pts"]
    seeds = f"{row.split(', ')[-1]} {_n(s)}, ceiling {_n(ceil)}, local {_n(local)}"
    also = (f"; vs the mean of the ceiling's noise draws: "
            f"{100 * (spread[eps] - s['accuracy']):+.1f} pts" if eps in spread else "")
    verdict = (lambda ok: "met" if ok else "NOT met") if row == ONE_SUM else (lambda ok: "-")
    out = []
    if gap is not None:
        out.append([f"{name} within 3 pts of the ceiling, eps {eps:g}",
                     f"{gap:+.1f} pts ({s['accuracy']:.4f} vs {ceil['accuracy']:.4f}; "
                     f"{seeds}{also})", verdict(gap <= 3)])
    if over is not None:
        out.append([f"{name} >= 15 pts above local DP-SGD, eps {eps:g}",
                     f"{over:+.1f} pts ({s['accuracy']:.4f} vs {local['accuracy']:.4f}; "
                     f"{seeds})", verdict(over >= 15)])
    return out


def targets(summary: list[dict[str, Any]], spread: dict[float, float]) -> list[list[str]]:
    """The issue's targets at eps 3 and 8: [target, measured, met / NOT met]."""
    out = []
    for eps in TARGET_EPSILONS:
        for row in (ONE_SUM, BUCKETS_2):
            out += _target_rows(summary, spread, row, eps)
        ceil, local = find(summary, CEILING, eps), find(summary, LOCAL, eps)
        if ceil and local and ceil["accuracy"] is not None and local["accuracy"] is not None:
            head = 100 * (ceil["accuracy"] - local["accuracy"])
            out.append([f"headroom: ceiling minus local DP-SGD, eps {eps:g}", f"{head:+.1f} pts",
                        "-" if head >= 15 else "< 15: '>= 15 above local' is out of reach "
                        "for any mode at or below the ceiling"])
    ratios = [s["ratio"] for s in summary if s["ratio"] is not None]
    if ratios:
        worst = max(ratios, key=lambda r: abs(r - 1))
        out.append(["reported dp-epsilon / Opacus RDP (z, q, T) within 1 % (distributed rows)",
                    f"worst {worst:.6f}", "met" if abs(worst - 1) <= 0.01 else "NOT met"])
    return out


def cells(s: dict[str, Any]) -> list[str]:
    return [s["row"], ",".join(str(v) for v in s["seeds"]) or "-", str(len(s["seeds"])),
            fmt_opt(s["accuracy"], ".4f"), fmt_opt(s["std"], ".4f"), fmt_opt(s["min"], ".4f"),
            fmt_opt(s["gap-to-ceiling-pts"], "+.1f"), fmt_opt(s["over-local-pts"], "+.1f"),
            fmt_opt(s["epsilon-reported"], ".4f"), fmt_opt(s["epsilon-opacus"], ".4f"),
            fmt_opt(s["ratio"], ".6f"), fmt_opt(s["rounds"], "d"), fmt_opt(s["wall-s"], ".0f"),
            fmt_opt(s["round-s"], ".2f")]


def result_tables(summary: list[dict[str, Any]]) -> list[str]:
    """One table per epsilon."""
    lines: list[str] = []
    for eps in sorted({s["epsilon"] for s in summary}):
        rows = [s for s in summary if s["epsilon"] == eps]
        lines += ["", f"### epsilon {eps:g} (delta 1e-5; non-private: no DP, the same runs "
                  "under each epsilon)", "", *md_table(HEADER, [cells(s) for s in rows])]
    return lines


def write_markdown(res: dict[str, Any], path: Path, json_path: Path) -> None:
    from distributed_dp_text import (
        audit_lines,
        caveats,
        few_seeds,
        pilot_lines,
        setting,
        spread_lines,
    )

    summary = summarize(res)
    res["summary"], res["targets"] = summary, targets(summary, spread_means(res))
    lines = [
        "# Distributed DP-SGD over secure aggregation vs local DP-SGD, central DP and the "
        "ceiling", "",
        "Issue 19. Generated by `benchmarks/distributed_dp.py` "
        f"(`benchmarks/distributed_dp_report.py`, `distributed_dp_text.py`) from "
        f"`{shown(json_path)}`; the modes are explained in `docs/privacy-modes.md`. "
        "Benchmarks are not tests.", "",
        "## Setting", "", *setting(res), *pilot_lines(res), "",
        "## Results", "", "![accuracy per row](distributed_dp.png)",
        *result_tables(summary), "", *few_seeds(summary), *spread_lines(res), "",
        "Gap to ceiling: ceiling minus row (positive = below the ceiling). Over local: row "
        "minus local DP-SGD (means over each row's seeds). dp-epsilon reported: the last "
        "round's `dp-epsilon` in rounds.json (local: `dp-epsilon-max`, the worst node). "
        "s / round: the median of the server's round time (rounds.json `seconds`) after "
        "round 1.", "",
        "## Targets (eps 3 and 8, means over the seeds)", "",
        *md_table(["target", "measured", "verdict"], res["targets"]), "",
        *audit_lines(res), "## Caveats", "", *caveats(res, summary), ""]
    path.write_text("\n".join(lines))


def write_plot(res: dict[str, Any], path: Path) -> None:
    """Final accuracy per row (mean, std bars), grouped by epsilon; non-private dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = res.get("summary") or summarize(res)
    eps_list = sorted({s["epsilon"] for s in summary})
    rows = [r for r in ORDER if r in res["params"]["rows"] and r != OFF]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        cs = [find(summary, row, e) for e in eps_list]
        acc = [c["accuracy"] if c and c["accuracy"] is not None else 0.0 for c in cs]
        err = [c["std"] or 0.0 if c else 0.0 for c in cs]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(eps_list))]
        ns = "/".join(str(len(c["seeds"])) if c else "0" for c in cs)
        bars = ax.bar(xs, acc, width, yerr=err if any(err) else None, capsize=3,
                      label=f"{row} (n = {ns})", color=f"C{i}")
        ax.bar_label(bars, labels=[f"{a:.2f}" if c and c["seeds"] else "not run"
                                   for a, c in zip(acc, cs, strict=True)], fontsize=7, padding=2)
        for x, c in zip(xs, cs, strict=True):  # each seed's run
            if c and c["accuracies"]:
                ax.scatter([x] * len(c["accuracies"]), c["accuracies"], s=8, color="black",
                           zorder=3)
    off = [s["accuracy"] for s in summary if s["row"] == OFF and s["accuracy"] is not None]
    if off:
        ax.axhline(off[0], ls="--", color="gray", label=f"non-private ({off[0]:.3f})")
    ax.set_xticks(range(len(eps_list)), [f"epsilon {e:g}" for e in eps_list])
    ax.set_ylabel("final server accuracy (mean, std bars, dots: seeds)")
    ax.set_ylim(0, 1.3)
    ax.set_title("digits, 10 nodes, dirichlet 0.5, small CNN: DP modes (delta 1e-5)")
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
