"""One row of two ``robustness.py`` invocations side by side: a change to the default, with
and without.

    python benchmarks/robustness_compare.py NEW.json OLD.json --row ours-recommended \
        --labels "with the floor" "without" [--doc docs/robustness.md --heading "..."]

Both invocations must have played the same grid, seeds and settings. Runs are seeded (the
partition, the Byzantine nodes, the initial model, Flower's sampling) but not bit-exact
(not established why; likely float sums in another order when Ray's workers reply in
another order), and a chaotic cell (alpha 0.1, 8 rounds) amplifies a small difference.
So the script measures the noise on the rows both played other than ``--row``
(Flower's, the oracle): how many of their scenarios differ, by how much on average and at
most; the row's own changes are to be read against it. When the first file was merged
from the second (``robustness_merge.py --rows``), the rows both hold are the same runs and
the section says so instead. It prints, and with
``--doc`` appends to (or replaces, under the same heading) a markdown section: per
configuration the worst case over attacks (retained: % of clean FedAvg, mean and min over
seeds) and the clean delta for both, the worst case over the grid, and the attacks whose
mean accuracy moved the most.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from common import md_table
from robustness_report import pct, summarise


def _acc(results: dict[str, Any]) -> dict[tuple[Any, ...], float]:
    return {(c["nodes"], c["alpha"], c["fraction"], c["seed"], c["row"], c["attack"]):
            c["final-accuracy"] for c in results["cells"]}


def shared_evidence(new: dict[str, Any], old: dict[str, Any],
                    row: str) -> tuple[int, int, float, float]:
    """Over the scenarios of the other rows played in both: how many, how many differ by
    more than 1e-9, the mean and the largest absolute difference of those (0 if none)."""
    a, b = _acc(new), _acc(old)
    common = [k for k in a.keys() & b.keys() if k[4] != row]
    diffs = [abs(a[k] - b[k]) for k in common if abs(a[k] - b[k]) > 1e-9]
    return (len(common), len(diffs), statistics.fmean(diffs) if diffs else 0.0,
            max(diffs, default=0.0))


def merged_from(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Whether NEW's other rows are OLD's own cells: NEW was made by ``robustness_merge.py
    --rows`` from OLD, so the rows both hold are one run each and say nothing of the noise."""
    source = (new.get("merged") or {}).get("others-from") or {}
    return (source.get("command"), source.get("date")) == (old["command"], old["date"])


def _noise(new: dict[str, Any], old: dict[str, Any], row: str) -> str:
    """The section's sentence on run-to-run noise."""
    if merged_from(new, old):
        return ("Run-to-run noise: not measured; the other rows of the first file are the "
                "second's own cells (merged from it), so compare the invocation that played "
                f"`{row}` instead.")
    shared, differ, mean_diff, max_diff = shared_evidence(new, old, row)
    return (f"Run-to-run noise: of the {shared} scenarios of the other rows played in both, "
            f"{differ} gave a different accuracy, by {100 * mean_diff:.1f} pt on average and "
            f"{100 * max_diff:.1f} pt at most (the runs are seeded but not "
            "bit-exact; chaotic cells amplify small differences); read the row's changes "
            "against that.")


def side_by_side(new: dict[str, Any], old: dict[str, Any], row: str) -> dict[str, Any]:
    """``summarise`` over the new invocation's cells plus the old one's ``row`` renamed
    ``row + ' (old)'``."""
    old_row = f"{row} (old)"
    cells = new["cells"] + [{**c, "row": old_row} for c in old["cells"] if c["row"] == row]
    return summarise(cells, [row, old_row, *(r for r in new["rows"] if r != row)],
                     new["attacks"])


def _cell(t: dict[str, Any]) -> str:
    return f"{pct(t['retained-mean'])} ({pct(t['retained-min'])})"


def _delta(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:+.1f}"


def section(new: dict[str, Any], old: dict[str, Any], row: str, labels: tuple[str, str],
            heading: str) -> list[str]:
    """The markdown section (module docstring)."""
    summary, old_row = side_by_side(new, old, row), f"{row} (old)"
    lines = [f"## {heading}", "",
             f"`{row}` {labels[0]} (this invocation, {new['date'][:10]}) and {labels[1]} "
             f"(`{old['command']}`, {old['date'][:10]}): the same grid, seeds and settings. "
             f"{_noise(new, old, row)} Worst case over attacks, retained (% of clean FedAvg "
             "of this invocation): mean over seeds (min); clean: the row's clean accuracy "
             "minus FedAvg's (pt).", ""]
    rows = []
    for c in summary["configs"].values():
        t, o = c["rows"][row], c["rows"][old_row]
        rows.append([f"n={c['nodes']}, alpha={c['alpha']}, {int(100 * c['fraction'])}%",
                     _cell(t), _cell(o), _delta(t["clean-delta-mean"]),
                     _delta(o["clean-delta-mean"])])
    for f, t in summary["grid"].items():
        rows.append([f"**over the grid, {int(100 * float(f))}%**", _cell(t[row]),
                     _cell(t[old_row]), _delta(t[row]["clean-delta-mean"]),
                     _delta(t[old_row]["clean-delta-mean"])])
    lines += md_table(["configuration", f"{labels[0]} (%)", f"{labels[1]} (%)",
                       f"clean, {labels[0]} (pt)", f"clean, {labels[1]} (pt)"], rows,
                      numeric=True)
    moved = attack_moves(summary, row, old_row)
    lines += ["", "Mean accuracy change per attack over every configuration and seed "
              f"({labels[0]} minus {labels[1]}, pt): " + ", ".join(
                  f"{a} {_delta(v)}" for a, v in moved) + ".", ""]
    return lines


def attack_moves(summary: dict[str, Any], row: str, old_row: str) -> list[tuple[str, float]]:
    """Per attack, the mean over configurations of the change in mean accuracy, largest
    change first."""
    diffs: dict[str, list[float]] = {}
    for c in summary["configs"].values():
        new_acc, old_acc = c["rows"][row]["accuracy"], c["rows"][old_row]["accuracy"]
        for a, v in new_acc.items():
            if v is not None and old_acc.get(a) is not None:
                diffs.setdefault(a, []).append(v - old_acc[a])
    means = {a: statistics.fmean(v) for a, v in diffs.items()}
    return sorted(means.items(), key=lambda kv: -abs(kv[1]))


def put_section(doc: Path, lines: list[str]) -> None:
    """Append ``lines`` to ``doc``, replacing a section under the same heading."""
    text = doc.read_text() if doc.exists() else ""
    start = text.find(lines[0] + "\n")
    if start >= 0:
        end = text.find("\n## ", start + len(lines[0]))
        text = text[:start] + (text[end + 1:] if end >= 0 else "")
    doc.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines))


def emit(lines: list[str], doc: Path | None) -> None:
    """Print the section; put it in ``doc`` too when given (``put_section``)."""
    print("\n".join(lines))
    if doc:
        put_section(doc, lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("new", type=Path)
    p.add_argument("old", type=Path)
    p.add_argument("--row", default="ours-recommended")
    p.add_argument("--labels", nargs=2, default=("now", "before"))
    p.add_argument("--heading", default="The default, now and before")
    p.add_argument("--doc", type=Path, help="markdown file to put the section in")
    args = p.parse_args(argv)
    new, old = (json.loads(path.read_text()) for path in (args.new, args.old))
    for what in ("grid", "settings", "attacks"):
        if new[what] != old[what]:
            p.error(f"the two invocations differ in {what}: {new[what]} vs {old[what]}")
    lines = section(new, old, args.row, tuple(args.labels), args.heading)
    emit(lines, args.doc)


if __name__ == "__main__":
    main()
