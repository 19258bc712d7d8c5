"""``python -m fedapp.privacy ledger PATH [--json]``: what a node's privacy ledger has spent.

Per data identity (a hospital file's digest, or a simulated partition), one row per Flower
run (its rounds, steps, pending rounds and the epsilon of that run alone) and the lifetime
total: the RDP composition of every entry at the identity's delta, the number the node
compares with its ``dp-budget``. The total is not the sum of the runs' epsilons (RDP
composes more tightly than adding epsilons). A corrupt ledger is an error (exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from fedapp.privacy.accounting import epsilon_of
from fedapp.privacy.ledger import DEFAULT_DELTA, PENDING, LedgerError, PrivacyLedger, entry_history


def summary(doc: dict[str, Any], delta: float | None = None) -> list[dict[str, Any]]:
    """Per identity: its description, delta, cap, runs and lifetime epsilon."""
    out = []
    for dataset, record in sorted(doc["datasets"].items()):
        at = delta if delta is not None else float(record.get("delta", DEFAULT_DELTA))
        runs: dict[int, list[dict[str, Any]]] = {}
        for entry in record["entries"]:
            runs.setdefault(int(entry["run"]), []).append(entry)
        out.append({
            "dataset": dataset, "describe": record.get("describe", {}), "delta": at,
            "cap": record.get("cap"),
            "runs": [{"run": run, "rounds": sum(int(e.get("rounds", 1)) for e in entries),
                      "steps": sum(int(e["steps"]) for e in entries),
                      "pending": sum(e["status"] == PENDING for e in entries),
                      "epsilon": epsilon_of(entry_history(entries), at)}
                     for run, entries in runs.items()],
            "total-epsilon": epsilon_of(entry_history(record["entries"]), at),
        })
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for ident in rows:
        cap = "none" if ident["cap"] is None else f"{ident['cap']:g}"
        lines += [f"{ident['dataset']}", f"  delta={ident['delta']:g}  dp-budget={cap}",
                  f"  {'run':>20}  {'rounds':>6}  {'steps':>8}  {'pending':>7}  {'epsilon':>9}"]
        lines += [f"  {r['run']:>20}  {r['rounds']:>6}  {r['steps']:>8}  {r['pending']:>7}  "
                  f"{r['epsilon']:>9.3f}" for r in ident["runs"]]
        lines += [f"  {'lifetime (composed)':>20}  {sum(r['rounds'] for r in ident['runs']):>6}"
                  f"  {sum(r['steps'] for r in ident['runs']):>8}"
                  f"  {sum(r['pending'] for r in ident['runs']):>7}"
                  f"  {ident['total-epsilon']:>9.3f}", ""]
    return "\n".join(lines) if lines else "no entries"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedapp.privacy")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("ledger", help="what a node's privacy ledger has spent")
    show.add_argument("path", help="the ledger file (node config privacy-ledger)")
    show.add_argument("--json", action="store_true", help="JSON instead of a table")
    show.add_argument("--delta", type=float, default=None,
                      help="epsilon at this delta (default: the delta each identity recorded)")
    args = parser.parse_args(argv)
    try:
        rows = summary(PrivacyLedger(args.path).read(), args.delta)
    except LedgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"path": args.path, "datasets": rows}, indent=1))
    else:
        print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
