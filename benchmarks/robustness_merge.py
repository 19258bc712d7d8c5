"""Rows of a later ``robustness.py`` invocation in place of an earlier one's.

    python benchmarks/robustness_merge.py BASE.json NEW.json --rows ours-recommended \
        --out merged.json
    python benchmarks/robustness_merge.py BASE.json NEW.json --add-attacks --out merged.json
    python benchmarks/robustness_merge.py BASE.json NEW.json --add-configurations \
        --out merged.json
    python benchmarks/robustness_merge.py BASE.json NEW.json --add-fractions --out merged.json
    python benchmarks/robustness.py --from-json merged.json   # the report, table and plot

A change to fedapp's defence changes fedapp's rows only: Flower's built-ins and the oracle
run the same code before and after, so they need not be played again (two thirds of the
grid's time). The merge takes every cell of ``--rows`` from NEW and every other cell from
BASE, and records both invocations under ``merged`` (the report's first paragraph names
them). Both must have played the same grid, attacks and settings; NEW must hold every
scenario of ``--rows`` that BASE holds. The rows BASE played are kept as they are; the
noise between two invocations (seeded, not bit-exact) is what ``robustness_compare.py``
measures on the rows both played (NEW's reference FedAvg against BASE's, for instance).

``--add-attacks`` instead adds NEW's attacks (an attack added to fedapp after BASE ran)
to BASE: NEW's cells of those attacks are appended, its clean runs dropped (BASE's stay
the reference); the same grid and settings, attacks BASE did not play, rows BASE has.
Rows NEW did not play show no value for the added attacks (the report's worst case of
such a row is over BASE's attacks).

``--add-configurations`` adds NEW's federations (n, alpha) to BASE's grid: the same
fractions, seeds, settings and dataset, configurations BASE did not play, every row and
attack BASE played; BASE's and NEW's together must make the whole product of their node
counts and alphas (the report walks it). NEW's cells of a (row, attack) BASE did not play
are dropped, so every configuration's worst case is over the same attacks. Each addition
is appended to ``added-configurations`` (a list: a grid grown twice names both
invocations).

``--add-fractions`` adds NEW's Byzantine fractions to BASE's grid the same way (recorded
under ``added-fractions``): the same configurations, seeds, attacks and settings,
fractions BASE did not play, every row and attack BASE played.

Every invocation named as a source keeps its own history: when NEW is itself a merge, its
``merged`` / ``added-*`` records go along under
``history`` (``_origin``), so the results file says where each of its cells came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import write_json

SAME = ("grid", "attacks", "settings", "dataset")  # what both invocations must share
# how a results file was made
HISTORY = ("merged", "added-attacks", "added-configurations", "added-fractions")


def _without_report(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` without what ``robustness.py --from-json`` computes again from the cells
    (summary, recommendation, findings)."""
    return {k: v for k, v in results.items() if k not in ("summary", "recommended", "findings")}


def _key(cell: dict[str, Any]) -> tuple[Any, ...]:
    return (cell["nodes"], cell["alpha"], cell["fraction"], cell["seed"], cell["row"],
            cell["attack"])


def _origin(results: dict[str, Any]) -> dict[str, Any]:
    """The invocation that made ``results``, with its own merges when it is one."""
    origin = {"command": results["command"], "date": results["date"],
              "wall-seconds": results["wall-seconds"]}
    history = {k: results[k] for k in HISTORY if results.get(k)}
    return origin | ({"history": history} if history else {})


def configuration_additions(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``added-configurations`` records of ``results``, oldest first (one record, as
    files written before the list, counts as a list of one)."""
    added = results.get("added-configurations") or []
    return [added] if isinstance(added, dict) else list(added)


def _sources(history: dict[str, Any]) -> list[dict[str, Any]]:
    """The invocations a file's merge records name (``HISTORY`` keys)."""
    merged, attacks = history.get("merged") or {}, history.get("added-attacks")
    found = [merged[k] for k in ("rows-from", "others-from") if k in merged]
    found += [attacks["from"]] if attacks else []
    return found + [r["from"] for r in (configuration_additions(history)
                                        + fraction_additions(history))]


def invocations(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ``robustness.py`` invocation whose cells ``results`` holds (its own, those it
    was merged from, and theirs), once each (by command and date), as ``_origin`` records
    without their history: their ``wall-seconds`` add up to the grid's machine time."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    todo = [results]
    while todo:
        record = todo.pop()
        seen.setdefault((record["command"], record["date"]), {
            k: record[k] for k in ("command", "date", "wall-seconds")})
        history = record.get("history") or {k: record[k] for k in HISTORY if record.get(k)}
        todo += _sources(history)
    return list(seen.values())


def merge(base: dict[str, Any], new: dict[str, Any], rows: list[str]) -> dict[str, Any]:
    """BASE with the cells of ``rows`` taken from NEW (module docstring). Raises
    ``ValueError`` naming what differs, a row BASE does not have, or the scenarios of
    ``rows`` that NEW lacks."""
    differ = [k for k in SAME if base.get(k) != new.get(k)]
    if differ:
        raise ValueError(f"the invocations differ in {', '.join(differ)}: only rows of the "
                         "same grid, attacks and settings can be merged")
    unknown = [r for r in rows if r not in base["rows"]]
    if unknown:
        raise ValueError(f"rows {unknown} are not among the base's rows {base['rows']}")
    have = {_key(c) for c in new["cells"] if c["row"] in rows}
    missing = sorted(str(k) for c in base["cells"] if c["row"] in rows
                     and (k := _key(c)) not in have)
    if missing:
        raise ValueError(f"NEW lacks {len(missing)} scenarios of {rows}, e.g. {missing[0]}")
    cells = ([c for c in base["cells"] if c["row"] not in rows]
             + [c for c in new["cells"] if c["row"] in rows])
    merged = _without_report(base)
    merged |= {"cells": cells, "versions": new["versions"], "machine": new["machine"],
               "date": new["date"], "command": new["command"],
               "wall-seconds": new["wall-seconds"],
               "merged": {"rows": rows, "rows-from": _origin(new), "others-from": _origin(base)}}
    return merged


def add_attacks(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """BASE with NEW's attacks added (module docstring). Raises ``ValueError`` naming what
    differs, an attack BASE already played, or a row BASE does not have."""
    differ = [k for k in ("grid", "settings", "dataset") if base.get(k) != new.get(k)]
    if differ:
        raise ValueError(f"the invocations differ in {', '.join(differ)}: attacks can only "
                         "be added to the same grid and settings")
    added = [a for a in new["attacks"] if a != "none"]
    again = [a for a in added if a in base["attacks"]]
    if again or not added:
        raise ValueError(f"NEW must play attacks BASE did not; BASE has {again or 'all'}")
    unknown = sorted({c["row"] for c in new["cells"]} - set(base["rows"]))
    if unknown:
        raise ValueError(f"rows {unknown} are not among the base's rows {base['rows']}")
    rows = [r for r in base["rows"] if any(c["row"] == r for c in new["cells"])]
    merged = _without_report(base)
    merged["attacks"] = [*base["attacks"], *added]
    merged["cells"] = base["cells"] + [c for c in new["cells"] if c["attack"] in added]
    merged["added-attacks"] = {"attacks": added, "rows": rows, "from": _origin(new)}
    return merged


def _cells_base_plays(base: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """NEW's cells of the (row, attack) pairs BASE played. Raises ``ValueError`` naming the
    pairs BASE played that NEW lacks."""
    pairs = {(c["row"], c["attack"]) for c in base["cells"]}
    lacking = sorted(pairs - {(c["row"], c["attack"]) for c in new["cells"]})
    if lacking:
        raise ValueError(f"NEW lacks {len(lacking)} (row, attack) pairs BASE played, e.g. "
                         f"{lacking[0]}")
    return [c for c in new["cells"] if (c["row"], c["attack"]) in pairs]


def _configurations(results: dict[str, Any]) -> set[tuple[int, float]]:
    return {(c["nodes"], c["alpha"]) for c in results["cells"]}


def add_configurations(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """BASE with NEW's configurations added (module docstring). Raises ``ValueError``
    naming what differs, a configuration both played, the (row, attack) pairs NEW lacks, or
    the configurations missing from the product of the merged grid."""
    bg, ng = base["grid"], new["grid"]
    differ = [k for k in ("settings", "dataset") if base.get(k) != new.get(k)]
    differ += [f"grid {k}" for k in ("fractions", "seeds") if bg[k] != ng[k]]
    if differ:
        raise ValueError(f"the invocations differ in {', '.join(differ)}: configurations can "
                         "only be added with the same fractions, seeds and settings")
    old, added = _configurations(base), _configurations(new)
    if old & added:
        raise ValueError(f"both played configurations (n, alpha) {sorted(old & added)}")
    kept = _cells_base_plays(base, new)
    grid = {**bg, "nodes": sorted({*bg["nodes"], *ng["nodes"]}),
            "alphas": sorted({*bg["alphas"], *ng["alphas"]})}
    holes = sorted({(n, a) for n in grid["nodes"] for a in grid["alphas"]} - old - added)
    if holes:
        raise ValueError(f"the merged grid would lack configurations (n, alpha) {holes}")
    merged = _without_report(base)
    merged |= {"grid": grid, "cells": base["cells"] + kept}
    merged["added-configurations"] = [*configuration_additions(base), {
        "configurations": [list(c) for c in sorted(added)],
        "dropped-cells": len(new["cells"]) - len(kept), "from": _origin(new)}]
    return merged


def fraction_additions(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``added-fractions`` records of ``results``, oldest first."""
    return list(results.get("added-fractions") or [])


def add_fractions(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """BASE with NEW's Byzantine fractions added (module docstring). Raises ``ValueError``
    naming what differs, a fraction both played, or the (row, attack) pairs NEW lacks."""
    bg, ng = base["grid"], new["grid"]
    differ = [k for k in ("settings", "dataset") if base.get(k) != new.get(k)]
    differ += [f"grid {k}" for k in ("nodes", "alphas", "seeds") if bg[k] != ng[k]]
    differ += ["attacks"] if set(base["attacks"]) != set(new["attacks"]) else []
    if differ:
        raise ValueError(f"the invocations differ in {', '.join(differ)}: fractions can only "
                         "be added with the same configurations, seeds, attacks and settings")
    both = sorted(set(bg["fractions"]) & set(ng["fractions"]))
    if both:
        raise ValueError(f"both played the fractions {both}")
    kept = _cells_base_plays(base, new)
    merged = _without_report(base)
    merged |= {"grid": {**bg, "fractions": sorted({*bg["fractions"], *ng["fractions"]})},
               "cells": base["cells"] + kept}
    merged["added-fractions"] = [*fraction_additions(base), {
        "fractions": list(ng["fractions"]), "dropped-cells": len(new["cells"]) - len(kept),
        "from": _origin(new)}]
    return merged


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", type=Path, help="the earlier invocation's results JSON")
    p.add_argument("new", type=Path, help="the later invocation's results JSON")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--rows", help="comma list of the rows to take from NEW")
    how.add_argument("--add-attacks", action="store_true", help="add NEW's attacks to BASE")
    how.add_argument("--add-configurations", action="store_true",
                     help="add NEW's federations (n, alpha) to BASE's grid")
    how.add_argument("--add-fractions", action="store_true",
                     help="add NEW's Byzantine fractions to BASE's grid")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    base, new = (json.loads(path.read_text()) for path in (args.base, args.new))
    for results in (base, new):  # files written before settings named the dataset
        results["settings"].setdefault("dataset", results["dataset"])
    try:
        if args.add_attacks:
            out = add_attacks(base, new)
        elif args.add_configurations:
            out = add_configurations(base, new)
        elif args.add_fractions:
            out = add_fractions(base, new)
        else:
            out = merge(base, new, args.rows.split(","))
    except ValueError as exc:
        p.error(str(exc))
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
