"""One cell of ``distributed_dp.py``: a federated run, the in-process ceiling, the resume key,
and the membership-inference audit of a run's saved model.

A cell is ``(row, epsilon, seed)`` plus its settings: the run config without the volatile
keys (``output-dir``, ``metrics-port``) for a federated row, ``(lr, rounds, q, noise seed)``
for the ceiling. A cell already in the results JSON with the same settings and no error is
not run again (``done``).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import REPO, loadavg
from distributed_dp_report import BUCKETS_2, CEILING, CENTRAL, LOCAL, OFF, ONE_SUM

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
#: benchmarks/privacy.py's local DP-SGD setting (its rounds are piloted here).
LOCAL_SETTING: dict[str, Any] = {"local-epochs": 4, "batch-size": 64, "learning-rate": 0.1,
                                 "dp-max-grad-norm": 1.0}
VOLATILE = ("output-dir", "metrics-port")
#: The audit's shadows for a distributed row: the run config's lr (1.0) is that of one
#: full DP-SGD step per round; the shadows train like the non-private row instead.
AUDIT_SHADOW_LR = 0.05


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
    elif row == CENTRAL:  # run-config defaults: 10 rounds x 3 epochs, all nodes, C = 1
        cfg |= {"dp": "central", "anomaly-detection": "off", "dp-epsilon": eps,
                "dp-delta": DELTA}
    else:  # non-private: run-config defaults
        cfg |= {"dp": "off", "anomaly-detection": "off"}
    parsed(cfg)
    return cfg


def parsed(cfg: dict[str, Any]) -> RunConfig:
    return RunConfig.from_flower({**RunConfig().to_flower(), **cfg})


# ---------------------------------------------------------------- resume


def cell_eps(row: str, eps: float) -> float | None:
    return None if row == OFF or math.isinf(eps) else float(eps)


def cell_settings(row: str, eps: float, seed: int, p: dict[str, Any]) -> dict[str, Any]:
    """What a run of this cell must have been run with to count as done."""
    if row == CEILING:
        return {"lr": p["lr"], "rounds": p["rounds"], "sample-rate": p["q"], "noise-seed": None}
    cfg = row_config(row, eps, seed, p, Path("/unused"))
    return {k: v for k, v in cfg.items() if k not in VOLATILE}


def record_settings(rec: dict[str, Any]) -> dict[str, Any]:
    if rec["row"] == CEILING:
        return {k: rec.get(k) for k in ("lr", "rounds", "sample-rate", "noise-seed")}
    return {k: v for k, v in rec.get("run-config", {}).items() if k not in VOLATILE}


def done(runs: list[dict[str, Any]], row: str, eps: float, seed: int,
         p: dict[str, Any]) -> dict[str, Any] | None:
    """The successful run of this cell with these settings, if the JSON has one."""
    want = cell_settings(row, eps, seed, p)
    return next((r for r in runs if r["row"] == row and r["seed"] == seed
                 and r["epsilon"] == cell_eps(row, eps) and "error" not in r
                 and record_settings(r) == want), None)


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
                           "seed": rc.seed, "run-config": cfg, "loadavg-before": loadavg(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
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
    rec |= {"run-id": run_id, "run-dir": str(out / f"run-{run_id}"), "wall-seconds": wall,
            "loadavg-after": loadavg(),
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


# ---------------------------------------------------------------- membership inference


def audit(run: dict[str, Any], shadows: int, epochs: int) -> dict[str, Any]:
    """``python -m fedapp.privacy.audit`` on a run's ``model.pt`` (members: the 10 nodes'
    training rows; non-members: the server's test rows and the nodes' validation rows)."""
    from fedapp.privacy.audit import main as audit_main

    run_dir = Path(run["run-dir"])
    config = json.loads((run_dir / "config.json").read_text())
    if config.get("dp") == "distributed":
        config["learning-rate"] = AUDIT_SHADOW_LR
    shadow_config = run_dir / "audit-config.json"
    shadow_config.write_text(json.dumps(config))
    t0 = time.perf_counter()
    res = audit_main(["--model", str(run_dir / "model.pt"), "--config", str(shadow_config),
                      "--num-partitions", str(NODES), "--shadow-models", str(shadows),
                      "--epochs", str(epochs), "--seed", "0", "--out", str(run_dir / "audit")])
    res |= {"audit-seconds": time.perf_counter() - t0, "row": run["row"],
            "epsilon": run["epsilon"], "seed": run["seed"], "run-id": run.get("run-id"),
            "final-accuracy": run["final-accuracy"]}
    print(f"  audit {run['row']}: " + " ".join(
        f"{k} auc {v['auc']:.3f} tpr@1% {v['tpr@1%fpr']:.3f}"
        for k, v in res["attacks"].items()) + f" ({res['audit-seconds']:.0f}s)", flush=True)
    return res
