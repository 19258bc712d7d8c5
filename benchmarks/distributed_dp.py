"""Distributed DP-SGD over secure aggregation vs local DP-SGD and the centralized ceiling.

    python benchmarks/distributed_dp.py            # pilot, then the table (results/, docs/)
    python benchmarks/distributed_dp.py --quick    # eps 8, 10 rounds, rows 1 and 4, /tmp

Real `flwr run` simulations (private managed SuperLink) on the default federation: digits,
the default MLP, 10 nodes, dirichlet alpha 0.5 (``fraction-evaluate=0``: only the server
evaluates; ``anomaly-detection='off'``; ``tracking=false``). Rows, at each epsilon
(delta 1e-5):

1. ``distributed, one sum``: ``dp='distributed'``, one bucket of all 10 nodes, threshold
   1.0 (t = 10): the released sum carries exactly ``z C``: centralized DP-SGD on the union;
2. ``distributed, buckets of 2``: the same with ``secagg-bucket-size=2`` (t = 2);
3. ``local DP-SGD``: ``dp='local'`` with ``benchmarks/privacy.py``'s local setting (4 local
   epochs, batch 64, lr 0.1, C = 1); its number of rounds is chosen by a pilot at eps 8;
4. ``centralized ceiling``: the same DP-SGD step in this process on the union of the 10
   nodes' training rows (Poisson rate q, per-example clip C, ``N(0, (z C)^2)``, step
   ``-lr sum / (q N)``, the same z and number of steps);
5. ``non-private``: ``dp='off'``, FedAvg with the run-config defaults (3 local epochs).

The learning rate of rows 1, 2 and 4 is chosen by a pilot of row 1 at eps 8 (20 rounds,
lr 0.5 / 1.0 / 2.0). The ceiling's spread over noise alone: ``--ceiling-repeats`` draws
at seed 0. The JSON keeps every run; ``distributed_dp_report`` writes the table,
the targets and the plot. Benchmarks are not tests: nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _superlink import private_superlink
from common import DOCS, REPO, RESULTS, command_line, loadavg, versions, write_json
from distributed_dp_report import write_markdown, write_plot

from fedapp import task
from fedapp.config import NodeConfig, RunConfig
from fedapp.data.loading import dataset_spec, load_node_data, load_server_test
from fedapp.data.specs import Split
from fedapp.privacy.distributed import clipped_gradient_sum, noise_multiplier
from fedapp.sweep import flwr_cli as runner

NODES = 10
FEDERATION = f"num-supernodes={NODES} client-resources-num-cpus=1"
RUN_TIMEOUT_S = 1200
DELTA = 1e-5
ONE_SUM, BUCKETS_2, LOCAL, CEILING, OFF = ("distributed, one sum", "distributed, buckets of 2",
                                           "local DP-SGD", "centralized ceiling", "non-private")
ROWS = (ONE_SUM, BUCKETS_2, LOCAL, CEILING, OFF)
#: benchmarks/privacy.py's local DP-SGD setting (its rounds are piloted here).
LOCAL_SETTING: dict[str, Any] = {"local-epochs": 4, "batch-size": 64, "learning-rate": 0.1,
                                 "dp-max-grad-norm": 1.0}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="eps 8, 10 rounds, rows 1 and 4, /tmp")
    ap.add_argument("--rounds", type=int, default=60, help="distributed rounds (= DP steps)")
    ap.add_argument("--sample-rate", type=float, default=0.2, help="dp-sample-rate q")
    ap.add_argument("--lr", type=float, default=None, help="skip the lr pilot, use this lr")
    ap.add_argument("--lr-candidates", default="0.5,1.0,2.0")
    ap.add_argument("--pilot-rounds", type=int, default=20)
    ap.add_argument("--local-rounds", type=int, default=None,
                    help="skip the local pilot, use this many rounds")
    ap.add_argument("--local-candidates", default="5,10")
    ap.add_argument("--extra-seeds", default="1,2", help="more seeds for rows 1, 3, 4 at eps 3")
    ap.add_argument("--out", default=None, help="results JSON (default: results/ or /tmp)")
    ap.add_argument("--docs", default=None, help="where the .md and .png go")
    ap.add_argument("--from-json", action="store_true", help="only rewrite the docs")
    ap.add_argument("--ceiling-repeats", type=int, default=10,
                    help="noise draws of the ceiling at seed 0 (0: none)")
    return ap.parse_args()


# ---------------------------------------------------------------- run configs


def base_config(seed: int, out: Path) -> dict[str, Any]:
    return {"dataset": "digits", "seed": seed, "tracking": False, "metrics-port": 0,
            "fraction-evaluate": 0.0, "output-dir": str(out)}


def row_config(row: str, eps: float, seed: int, p: dict[str, Any], out: Path,
               lr: float | None = None, rounds: int | None = None) -> dict[str, Any]:
    """The run config of a federated row (checked locally before it is submitted)."""
    cfg = base_config(seed, out)
    if row in (ONE_SUM, BUCKETS_2):
        cfg |= {"dp": "distributed", "secagg": True, "secagg-bits": 32,
                "anomaly-detection": "off", "dp-epsilon": eps, "dp-delta": DELTA,
                "dp-sample-rate": p["q"], "dp-max-grad-norm": 1.0,
                "learning-rate": lr if lr is not None else p["lr"],
                "num-server-rounds": rounds or p["rounds"]}
        cfg |= ({"secagg-bucket-size": NODES, "secagg-threshold": 1.0} if row == ONE_SUM
                else {"secagg-bucket-size": 2})
    elif row == LOCAL:
        cfg |= {"dp": "local", "anomaly-detection": "off", "dp-epsilon": eps,
                "dp-delta": DELTA, "num-server-rounds": rounds or p["local-rounds"],
                **LOCAL_SETTING}
    else:  # non-private: run-config defaults
        cfg |= {"dp": "off", "anomaly-detection": "off"}
    RunConfig.from_flower({**RunConfig().to_flower(), **cfg})
    return cfg


def parsed(cfg: dict[str, Any]) -> RunConfig:
    return RunConfig.from_flower({**RunConfig().to_flower(), **cfg})


# ---------------------------------------------------------------- federated runs


def opacus_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    """Opacus's own RDP accountant, fed ``(z, q, steps)`` (independent of fedapp's cache)."""
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(z, q, steps)]
    return float(acc.get_epsilon(delta))


def fed_run(row: str, cfg: dict[str, Any], env: dict[str, str], out: Path) -> dict[str, Any]:
    """Submit one run, wait; its accuracy, reported epsilon and times (or its error)."""
    rc = parsed(cfg)
    rec: dict[str, Any] = {"row": row, "epsilon": rc.dp_epsilon if rc.dp != "off" else None,
                           "seed": rc.seed, "run-config": cfg, "loadavg-before": loadavg()}
    t0 = time.perf_counter()
    try:
        run_id, _ = runner.run_and_check(REPO, cfg, env=env, timeout=RUN_TIMEOUT_S,
                                         federation_config=FEDERATION)
    except (runner.RunFailed, TimeoutError) as exc:
        rec |= {"error": str(exc), "wall-seconds": time.perf_counter() - t0}
        print(f"  {row} FAILED: {str(exc)[:300]}", flush=True)
        return rec
    wall = time.perf_counter() - t0
    rows = json.loads((out / f"run-{run_id}" / "rounds.json").read_text())
    trained = [r for r in rows if "replies" in r]
    last = rows[-1]
    rec |= {"run-id": run_id, "wall-seconds": wall, "loadavg-after": loadavg(),
            "rounds": rc.num_server_rounds, "final-accuracy": last["server-accuracy"],
            "accuracy-per-round": [r.get("server-accuracy") for r in rows],
            "round-seconds": [r["seconds"] for r in trained if "seconds" in r],
            "failures": sum(int(r.get("failures", 0)) for r in trained),
            "buckets-dropped": sum(int(r.get("secagg-buckets-dropped", 0)) for r in trained),
            "epsilon-reported": last.get("dp-epsilon-max", last.get("dp-epsilon"))}
    if rc.dp == "distributed":
        z = noise_multiplier(rc)
        rec |= {"noise-multiplier": z, "sample-rate": rc.dp_sample_rate,
                "epsilon-opacus": opacus_epsilon(z, rc.dp_sample_rate, rc.num_server_rounds,
                                                 rc.dp_delta)}
    print(f"  {row:<28} eps {rec['epsilon']} seed {rc.seed}: acc {rec['final-accuracy']:.4f}"
          f" eps reported {rec['epsilon-reported']} ({wall:.0f}s, load {loadavg()})", flush=True)
    return rec


# ---------------------------------------------------------------- centralized ceiling


def union_rows(cfg: RunConfig) -> Split:
    """The union of the simulated nodes' training rows (what each node trains on)."""
    parts = [load_node_data(cfg, NodeConfig(p, NODES))[0] for p in range(NODES)]
    return Split(np.concatenate([s.x for s in parts]), np.concatenate([s.y for s in parts]))


def ceiling(eps: float, seed: int, p: dict[str, Any], lr: float | None = None,
            rounds: int | None = None, noise_seed: int | None = None) -> dict[str, Any]:
    """Centralized DP-SGD on the union with row 1's q, C, z, lr and number of steps
    (sampling and noise from ``noise_seed``, default ``seed``)."""
    cfg = row_config(ONE_SUM, eps, seed, p, Path(tempfile.gettempdir()), lr, rounds)
    rc = parsed(cfg)
    z, q, clip, steps = noise_multiplier(rc), rc.dp_sample_rate, rc.dp_max_grad_norm, \
        rc.num_server_rounds
    union, test = union_rows(rc), load_server_test(rc)
    task.set_seed(seed)  # the server's initial model (fedapp.server_app)
    model = task.build_model(rc.model, dataset_spec(rc), rc.hidden_units)
    gen = torch.Generator().manual_seed(seed if noise_seed is None else noise_seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        sums, _, _ = clipped_gradient_sum(model, union, q, clip, gen)
        with torch.no_grad():
            for name, param in model.named_parameters():
                noise = torch.randn(param.shape, generator=gen) * (z * clip)
                param.add_(-rc.learning_rate * (sums[name] + noise) / (q * len(union)))
    acc = task.evaluate(model, test)[1]
    rec = {"row": CEILING, "epsilon": eps, "seed": seed, "noise-seed": noise_seed,
           "final-accuracy": acc,
           "noise-multiplier": z, "sample-rate": q, "rounds": steps, "lr": rc.learning_rate,
           "train-rows": len(union), "wall-seconds": time.perf_counter() - t0,
           "epsilon-opacus": opacus_epsilon(z, q, steps, rc.dp_delta)}
    print(f"  {CEILING:<28} eps {eps} seed {seed}: acc {acc:.4f} (z {z:.3f}, "
          f"{rec['wall-seconds']:.0f}s)", flush=True)
    return rec


# ---------------------------------------------------------------- the plan


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


def plan(p: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(row, epsilon, seed) in run order: seed 0 for all, then the extra seeds at eps 3."""
    runs = [(row, eps, 0) for eps in p["epsilons"] for row in p["rows"] if row != OFF]
    if OFF in p["rows"]:
        runs.append((OFF, float("inf"), 0))
    runs += [(row, 3.0, s) for s in p["extra-seeds"] for row in (ONE_SUM, LOCAL, CEILING)
             if 3.0 in p["epsilons"]]
    return runs


def measure(res: dict[str, Any], p: dict[str, Any], dump: Any) -> None:
    with private_superlink() as (env, workdir):
        out = workdir / "runs"
        if not p["quick"]:
            pilot(res, p, env, out, dump)
        for row, eps, seed in plan(p):
            if row == CEILING:
                res["runs"].append(ceiling(eps, seed, p))
            else:
                res["runs"].append(fed_run(row, row_config(row, eps, seed, p, out), env, out))
            dump()


def ceiling_spread(res: dict[str, Any], repeats: int) -> None:
    """The ceiling's spread over noise alone: seed 0's data and initial model, ``repeats``
    sampling-and-noise seeds (1000, 1001, ...) at each epsilon (cheap: in process)."""
    p = res["params"]
    res["ceiling-spread"] = [ceiling(eps, 0, p, noise_seed=1000 + i)
                             for eps in p["epsilons"] for i in range(repeats)]


def make_params(args: argparse.Namespace) -> dict[str, Any]:
    q = args.quick
    return {"quick": q, "nodes": NODES, "q": args.sample_rate,
            "rounds": 10 if q else args.rounds, "lr": 1.0 if q and args.lr is None else args.lr,
            "lr-candidates": [float(v) for v in args.lr_candidates.split(",")],
            "pilot-rounds": args.pilot_rounds, "local-rounds": args.local_rounds,
            "local-candidates": [int(v) for v in args.local_candidates.split(",")],
            "epsilons": [8.0] if q else [3.0, 8.0], "delta": DELTA,
            "rows": [ONE_SUM, CEILING] if q else list(ROWS),
            "extra-seeds": [] if q else [int(s) for s in args.extra_seeds.split(",") if s],
            "local-setting": LOCAL_SETTING}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.gettempdir()) / "distributed_dp_quick"
    out = Path(args.out or (tmp / "distributed_dp.json" if args.quick
                            else RESULTS / "distributed_dp.json"))
    docs = Path(args.docs or (tmp if args.quick else DOCS))
    if args.from_json:
        res = json.loads(out.read_text())
    else:
        p = make_params(args)
        res = {"command": command_line("distributed_dp.py"),
               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "versions": versions("torch", "opacus", "flwr"), "params": p,
               "loadavg-start": loadavg(), "pilot-lr": [], "pilot-local": [], "runs": []}
        t0 = time.perf_counter()
        measure(res, p, lambda: write_json(out, res))
        res |= {"wall-seconds": time.perf_counter() - t0, "loadavg-end": loadavg()}
    if args.ceiling_repeats and "ceiling-spread" not in res:
        ceiling_spread(res, args.ceiling_repeats)
    docs.mkdir(parents=True, exist_ok=True)
    write_markdown(res, docs / "distributed_dp.md", out)  # adds the summary and targets
    write_plot(res, docs / "distributed_dp.png")
    write_json(out, res)
    print(f"wrote {out}, {docs / 'distributed_dp.md'}, {docs / 'distributed_dp.png'}")


if __name__ == "__main__":
    main()
