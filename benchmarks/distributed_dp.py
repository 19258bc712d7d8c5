"""Distributed DP-SGD over secure aggregation vs local DP-SGD, client-level central DP, the
centralized ceiling and non-private training (issue 19).

    python benchmarks/distributed_dp.py            # the missing cells, the audit, the docs
    python benchmarks/distributed_dp.py --quick    # eps 8, 10 rounds, rows 1 and 5, /tmp
    python benchmarks/distributed_dp.py --from-json   # only rewrite the docs

Incremental: a cell (row, epsilon, seed) already in the results JSON with the same settings
(run config without ``output-dir`` / ``metrics-port``; the ceiling's lr, rounds, q) and no
error is not run again; ``--fresh`` starts over. The JSON is written after every run. lr and
local rounds default to the JSON's (the pilots then do not run again).

Real `flwr run` simulations (private managed SuperLink) on the default federation: digits,
the run-config default model (``auto``: the small CNN for digits), 10 nodes, dirichlet alpha
0.5 (``fraction-evaluate=0``: only the server evaluates; ``anomaly-detection='off'``;
``tracking=false``). Rows, at each epsilon (1, 3, 8; delta 1e-5), seeds 0, 1, 2:

1. ``distributed, one sum``: ``dp='distributed'``, one bucket of all 10 nodes, threshold
   1.0 (t = 10): the released sum carries exactly ``z C``: centralized DP-SGD on the union;
2. ``distributed, buckets of 2``: the same with ``secagg-bucket-size=2`` (t = 2; eps 3, 8);
3. ``local DP-SGD``: ``dp='local'`` with ``benchmarks/privacy.py``'s local setting (4 local
   epochs, batch 64, lr 0.1, C = 1); its number of rounds is chosen by a pilot at eps 8;
4. ``client-level central DP``: ``dp='central'`` with the run-config defaults (10 rounds x
   3 local epochs, all nodes each round, ``dp-clip`` 1);
5. ``centralized ceiling``: the same DP-SGD step as row 1 in this process on the union of
   the 10 nodes' training rows (Poisson rate q, per-example clip C, ``N(0, (z C)^2)``,
   step ``-lr sum / (q N)``, the same z and number of steps);
6. ``non-private``: ``dp='off'``, FedAvg with the run-config defaults (3 local epochs).

The learning rate of rows 1, 2 and 5 is chosen by a pilot of row 1 at eps 8 (20 rounds,
lr 0.5 / 1.0 / 2.0). The ceiling's spread over noise alone: ``--ceiling-repeats`` draws
at seed 0. Membership-inference audit (``fedapp.privacy.audit``) of each mode's eps-3
seed-0 ``model.pt`` (runs write to ``--runs-dir``; a cell whose model is gone is re-run
once for it, kept apart under ``audit-runs``). ``--stop-at HH:MM`` (UTC) starts no run
after that time. ``distributed_dp_report`` writes the tables, targets and plot. Benchmarks
are not tests: nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _superlink import private_superlink
from common import DOCS, RESULTS, command_line, loadavg, versions, write_json
from distributed_dp_report import (
    BUCKETS_2,
    CEILING,
    CENTRAL,
    LOCAL,
    OFF,
    ONE_SUM,
    ROWS,
    write_markdown,
    write_plot,
)
from distributed_dp_runs import (
    DELTA,
    LOCAL_SETTING,
    NODES,
    audit,
    ceiling,
    done,
    fed_run,
    row_config,
)

#: The modes whose eps-3 seed-0 model is audited (membership inference).
AUDITED = (ONE_SUM, BUCKETS_2, LOCAL, CENTRAL, OFF)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="eps 8, 10 rounds, rows 1 and 4, /tmp")
    ap.add_argument("--rounds", type=int, default=60, help="distributed rounds (= DP steps)")
    ap.add_argument("--sample-rate", type=float, default=0.2, help="dp-sample-rate q")
    ap.add_argument("--lr", type=float, default=None,
                    help="skip the lr pilot, use this lr (default: the JSON's, if any)")
    ap.add_argument("--lr-candidates", default="0.5,1.0,2.0")
    ap.add_argument("--pilot-rounds", type=int, default=20)
    ap.add_argument("--local-rounds", type=int, default=None,
                    help="skip the local pilot, use this many rounds (default: the JSON's)")
    ap.add_argument("--local-candidates", default="5,10")
    ap.add_argument("--epsilons", default="1,3,8")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--fresh", action="store_true",
                    help="ignore the results JSON (default: keep it, run only missing cells)")
    ap.add_argument("--shadows", type=int, default=4, help="audit: LiRA shadow models")
    ap.add_argument("--audit-epochs", type=int, default=30, help="audit: shadow epochs")
    ap.add_argument("--no-audit", action="store_true")
    ap.add_argument("--stop-at", default=None,
                    help="HH:MM (UTC): start no run after this time (what ran is kept)")
    ap.add_argument("--runs-dir", default=str(Path(tempfile.gettempdir()) / "distributed_dp_runs"),
                    help="output-dir of the federated runs (their model.pt, for the audit)")
    ap.add_argument("--out", default=None, help="results JSON (default: results/ or /tmp)")
    ap.add_argument("--docs", default=None, help="where the .md and .png go")
    ap.add_argument("--from-json", action="store_true", help="only rewrite the docs")
    ap.add_argument("--ceiling-repeats", type=int, default=10,
                    help="noise draws of the ceiling at seed 0 (0: none)")
    return ap.parse_args()


def pilot(res: dict[str, Any], p: dict[str, Any], env: dict[str, str], out: Path,
          dump: Any) -> None:
    """Choose row 1's lr (and rows 2, 4's) and row 3's rounds at eps 8, seed 0."""
    if p["lr"] is None:
        print(f"[pilot] lr, {p['pilot-rounds']} rounds, eps 8", flush=True)
        for lr in p["lr-candidates"]:
            cfg = row_config(ONE_SUM, 8.0, 0, p, out, lr=lr, rounds=p["pilot-rounds"])
            res["pilot-lr"].append(fed_run(ONE_SUM, cfg, env, out) | {"lr": lr})
            res["pilot-lr"].append(ceiling(8.0, 0, p, lr=lr, rounds=p["pilot-rounds"]))
            dump()
        fed = [r for r in res["pilot-lr"] if r["row"] == ONE_SUM and "error" not in r]
        p["lr"] = max(fed, key=lambda r: r["final-accuracy"])["lr"]
    if p["local-rounds"] is None:
        print("[pilot] local DP-SGD rounds, eps 8", flush=True)
        for rounds in p["local-candidates"]:
            cfg = row_config(LOCAL, 8.0, 0, p, out, rounds=rounds)
            res["pilot-local"].append(fed_run(LOCAL, cfg, env, out))
            dump()
        ok = [r for r in res["pilot-local"] if "error" not in r]
        p["local-rounds"] = max(ok, key=lambda r: r["final-accuracy"])["rounds"]
    print(f"[pilot] chosen lr {p['lr']}, local rounds {p['local-rounds']}", flush=True)


Cell = tuple[str, float, int]


def plan(p: dict[str, Any]) -> tuple[list[Cell], list[Cell]]:
    """(row, epsilon, seed) in priority order, before and after the audit: the first
    benchmark's cells (seed 0 everywhere, seeds 1, 2 at eps 3), then eps 8's missing seeds,
    eps 1, central DP, buckets of 2's seeds; after the audit, non-private's seeds."""
    if p["quick"]:
        return [(row, 8.0, 0) for row in p["rows"]], []
    seeds, inf = p["seeds"], float("inf")
    extra = [s for s in seeds if s != 0]
    cells = [(row, eps, 0) for eps in (3.0, 8.0) for row in (ONE_SUM, BUCKETS_2, LOCAL, CEILING)]
    cells += [(OFF, inf, 0)] + [(row, 3.0, s) for s in extra for row in (ONE_SUM, LOCAL, CEILING)]
    cells += [(row, 8.0, s) for s in extra for row in (CEILING, LOCAL, ONE_SUM)]
    cells += [(CEILING, 1.0, s) for s in seeds]
    cells += [(row, 1.0, s) for s in seeds for row in (LOCAL, ONE_SUM)]
    cells += [(CENTRAL, eps, s) for s in seeds for eps in (3.0, 1.0, 8.0)]
    cells += [(BUCKETS_2, eps, s) for s in extra for eps in (3.0, 8.0)]
    after = [(OFF, inf, s) for s in extra]

    def keep(cs: list[Cell]) -> list[Cell]:
        return list(dict.fromkeys(c for c in cs if c[0] in p["rows"]
                                  and (c[0] == OFF or c[1] in p["epsilons"])))
    return keep(cells), keep(after)


def past(stop_at: str | None) -> bool:
    return stop_at is not None and time.strftime("%H:%M", time.gmtime()) >= stop_at


def run_cells(cells: list[Cell], res: dict[str, Any], p: dict[str, Any],
              env: dict[str, str], out: Path, dump: Any) -> None:
    """Run the cells the JSON does not have yet (``--fresh``: all of them)."""
    for row, eps, seed in cells:
        if done(res["runs"], row, eps, seed, p):
            continue
        if past(p["stop-at"]):
            print(f"  --stop-at {p['stop-at']}: not run: {row} eps {eps} seed {seed}")
            continue
        if row == CEILING:
            res["runs"].append(ceiling(eps, seed, p))
        else:
            res["runs"].append(fed_run(row, row_config(row, eps, seed, p, out), env, out))
        dump()


def audit_target(row: str, res: dict[str, Any], p: dict[str, Any], env: dict[str, str],
                 out: Path, dump: Any) -> dict[str, Any] | None:
    """The eps-3 seed-0 run of ``row`` whose model.pt is on disk: the table's run, else an
    earlier audit run, else a new run of the same cell (``audit-runs``, not in the table)."""
    eps = float("inf") if row == OFF else 3.0
    for runs in (res["runs"], res["audit-runs"]):
        run = done(runs, row, eps, 0, p)
        if run and (Path(run.get("run-dir", "/nonexistent")) / "model.pt").exists():
            return run
    if past(p["stop-at"]):
        print(f"  --stop-at {p['stop-at']}: no audit of {row}")
        return None
    run = fed_run(row, row_config(row, eps, 0, p, out), env, out)
    res["audit-runs"].append(run)
    dump()
    return None if "error" in run else run


def audit_all(res: dict[str, Any], p: dict[str, Any], env: dict[str, str], out: Path,
              dump: Any) -> None:
    print(f"[audit] eps 3, seed 0, {p['shadows']} shadows x {p['audit-epochs']} epochs",
          flush=True)
    for row in (r for r in AUDITED if r in p["rows"]):
        if any(a["row"] == row and a["shadow-models"] == p["shadows"]
               and a["recipe"]["epochs"] == p["audit-epochs"] for a in res["audit"]):
            continue
        run = audit_target(row, res, p, env, out, dump)
        if run is not None:
            res["audit"].append(audit(run, p["shadows"], p["audit-epochs"]))
            dump()


def measure(res: dict[str, Any], p: dict[str, Any], dump: Any) -> None:
    out = Path(p["runs-dir"])
    out.mkdir(parents=True, exist_ok=True)
    before, after = plan(p)
    with private_superlink() as (env, _):
        if not p["quick"]:
            pilot(res, p, env, out, dump)
        run_cells(before, res, p, env, out, dump)
        if p["audit"]:
            audit_all(res, p, env, out, dump)
        run_cells(after, res, p, env, out, dump)


def ceiling_spread(res: dict[str, Any], repeats: int) -> None:
    """The ceiling's spread over noise alone: seed 0's data and initial model, ``repeats``
    sampling-and-noise seeds (1000, 1001, ...) at each epsilon that has none yet (cheap)."""
    p, draws = res["params"], res.setdefault("ceiling-spread", [])
    have = {r["epsilon"] for r in draws}
    draws += [ceiling(eps, 0, p, noise_seed=1000 + i)
              for eps in p["epsilons"] if eps not in have for i in range(repeats)]


def make_params(args: argparse.Namespace, old: dict[str, Any]) -> dict[str, Any]:
    """This invocation's parameters; lr and local rounds default to the JSON's (``old``)."""
    q = args.quick
    lr = args.lr if args.lr is not None else (1.0 if q else old.get("lr"))
    return {"quick": q, "nodes": NODES, "q": args.sample_rate,
            "rounds": 10 if q else args.rounds, "lr": lr,
            "lr-candidates": [float(v) for v in args.lr_candidates.split(",")],
            "pilot-rounds": args.pilot_rounds,
            "local-rounds": args.local_rounds or old.get("local-rounds"),
            "local-candidates": [int(v) for v in args.local_candidates.split(",")],
            "epsilons": [8.0] if q else [float(e) for e in args.epsilons.split(",")],
            "seeds": [0] if q else [int(s) for s in args.seeds.split(",")],
            "delta": DELTA, "rows": [ONE_SUM, CEILING] if q else list(ROWS),
            "local-setting": LOCAL_SETTING, "shadows": args.shadows,
            "audit-epochs": args.audit_epochs, "audit": not (args.no_audit or q),
            "stop-at": args.stop_at, "runs-dir": args.runs_dir}


def load(out: Path, fresh: bool) -> dict[str, Any]:
    """The results so far (none: an empty skeleton). A first benchmark's single-session
    fields become its entry in ``sessions``."""
    res: dict[str, Any] = json.loads(out.read_text()) if out.exists() and not fresh else {}
    for key in ("pilot-lr", "pilot-local", "runs", "audit-runs", "audit"):
        res.setdefault(key, [])
    if "sessions" not in res:
        keys = ("command", "timestamp", "versions", "params", "loadavg-start",
                "loadavg-end", "wall-seconds")
        res["sessions"] = [{k: res[k] for k in keys if k in res}] if "command" in res else []
    return res


def measure_session(res: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    p = make_params(args, res.get("params", {}))
    res["params"] = p
    session = {"command": command_line("distributed_dp.py"),
               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "versions": versions("torch", "opacus", "flwr"), "params": p,
               "loadavg-start": loadavg()}
    res["sessions"].append(session)
    t0 = time.perf_counter()
    try:
        measure(res, p, lambda: write_json(out, res))
    finally:
        session |= {"wall-seconds": time.perf_counter() - t0, "loadavg-end": loadavg()}
        write_json(out, res)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.gettempdir()) / "distributed_dp_quick"
    out = Path(args.out or (tmp / "distributed_dp.json" if args.quick
                            else RESULTS / "distributed_dp.json"))
    docs = Path(args.docs or (tmp if args.quick else DOCS))
    res = load(out, args.fresh or args.quick)
    if not args.from_json:
        measure_session(res, args, out)
    if args.ceiling_repeats:
        ceiling_spread(res, args.ceiling_repeats)
    write_json(out, res)
    docs.mkdir(parents=True, exist_ok=True)
    write_markdown(res, docs / "distributed_dp.md", out)  # adds the summary and targets
    write_plot(res, docs / "distributed_dp.png")
    write_json(out, res)
    print(f"wrote {out}, {docs / 'distributed_dp.md'}, {docs / 'distributed_dp.png'}")


if __name__ == "__main__":
    main()
