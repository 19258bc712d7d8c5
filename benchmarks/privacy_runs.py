"""The privacy benchmark's measurements (``benchmarks/privacy.py`` runs and reports them).

Sections, each returning the JSON rows of its key in ``benchmarks/results/privacy.json``:

1. :func:`federated` (``federated``): real ``flwr run``s per epsilon and seed, and the
   membership-inference audit of the first seed's final model;
2. :func:`central` (``central``): the central DP-SGD ceiling on the union of the nodes'
   rows; :func:`node_noise` (``noise``): the noise each side needs for the same epsilon;
3. :func:`overfit_audit` (``overfit-audit``): ``python -m fedapp.privacy.audit
   --train-fresh`` targets that have something to find;
4. :func:`timing` (``timing``): local-epoch time, DP-SGD in each Opacus mode vs
   non-private, interleaved repeats.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from _superlink import private_superlink
from common import REPO, interleave, loadavg, medians, timed
from torch import nn

from fedapp import task
from fedapp.config import NodeConfig, RunConfig
from fedapp.data.builtin import load_split
from fedapp.data.loading import load_node_data, load_server_test
from fedapp.data.specs import DATASET_SPECS, Split
from fedapp.privacy import DPState, choose_grad_sample_mode, dp_train, plan_steps
from fedapp.privacy.audit import main as audit_main
from fedapp.sweep import flwr_cli as runner

NUM_NODES = 2
FEDERATION = f"num-supernodes={NUM_NODES} client-resources-num-cpus=1"
SEED = 42
#: Epsilons with an accuracy target (federated within 3 pt of central): run with every seed.
TARGET_EPSILONS = (3.0, 8.0)
#: The benchmark's training setting, as run-config keys (federated and central alike).
SETTING: dict[str, Any] = {"dataset": "digits", "model": "mlp", "hidden-units": 64,
                           "partitioner": "iid", "num-server-rounds": 5, "local-epochs": 4,
                           "batch-size": 64, "learning-rate": 0.1, "dp-max-grad-norm": 1.0,
                           "dp-delta": 1e-5}


def eps_label(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


def run_config(seed: int) -> RunConfig:
    return RunConfig.from_flower({**RunConfig().to_flower(), **SETTING, "seed": seed,
                                  "tracking": False})


def runs_of(epsilons: list[float], seeds: list[int]) -> list[tuple[int, float]]:
    """(seed, epsilon) pairs: every seed at the target epsilons 3 and 8, the first elsewhere."""
    return [(s, e) for s in seeds for e in epsilons if s == seeds[0] or e in TARGET_EPSILONS]


def node_train_rows(cfg: RunConfig) -> list[Split]:
    """Each simulated node's training rows."""
    return [load_node_data(cfg, NodeConfig(p, NUM_NODES))[0] for p in range(NUM_NODES)]


# ---------------------------------------------------------------- 1. federated runs + audit


def fed_config(eps: float, seed: int, out_dir: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = {**SETTING, "seed": seed, "tracking": False,
                           "output-dir": str(out_dir)}
    cfg |= {"dp": "off"} if math.isinf(eps) else {"dp": "local", "dp-epsilon": float(eps)}
    RunConfig.from_flower({**RunConfig().to_flower(), **cfg})  # fail before submitting
    return cfg


def audit(run_dir: Path, shadows: int, epochs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = audit_main(["--model", str(run_dir / "model.pt"), "--num-partitions", str(NUM_NODES),
                      "--shadow-models", str(shadows), "--epochs", str(epochs),
                      "--seed", str(SEED), "--out", str(run_dir / "audit")])
    res["audit-seconds"] = time.perf_counter() - t0
    return res


def federated(epsilons: list[float], seeds: list[int], shadows: int, shadow_epochs: int,
              timeout: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with private_superlink() as (env, workdir):
        runs = workdir / "runs"
        for seed, eps in runs_of(epsilons, seeds):
            cfg = fed_config(eps, seed, runs)
            print(f"[federated] eps={eps_label(eps)} seed {seed} load {loadavg()}", flush=True)
            before = loadavg()
            t0 = time.perf_counter()
            run_id, status = runner.run_and_check(REPO, cfg, federation_config=FEDERATION,
                                                  env=env, timeout=timeout)
            wall = time.perf_counter() - t0
            run_dir = runs / f"run-{run_id}"
            rows = json.loads((run_dir / "rounds.json").read_text())
            spent = [r.get("dp-epsilon-max", r.get("dp-epsilon")) for r in rows]
            spent = [float(v) for v in spent if v is not None]
            res = {"epsilon": eps_label(eps), "seed": seed, "run-config": cfg, "run-id": run_id,
                   "status": status, "final-accuracy": rows[-1]["server-accuracy"],
                   "epsilon-spent-max": max(spent) if spent else None,
                   "failed-replies": sum(int(r.get("failures", 0)) for r in rows),
                   "wall-seconds": wall, "loadavg-before": before, "loadavg-after": loadavg(),
                   "rounds": rows}
            print(f"    acc {res['final-accuracy']:.4f} eps spent {res['epsilon-spent-max']} "
                  f"({wall:.0f}s)", flush=True)
            if seed == seeds[0]:
                res["audit"] = audit(run_dir, shadows, shadow_epochs)
                print("    audit " + " ".join(f"{k} auc {v['auc']:.3f}" for k, v in
                                          res["audit"]["attacks"].items()), flush=True)
            out.append(res)
    return out


# ---------------------------------------------------------------- 2. central DP-SGD ceiling


def central(epsilons: list[float], seeds: list[int]) -> list[dict[str, Any]]:
    out = []
    for seed, eps in runs_of(epsilons, seeds):
        cfg = run_config(seed)
        spec = DATASET_SPECS[cfg.dataset]
        parts = node_train_rows(cfg)
        union = Split(np.concatenate([s.x for s in parts]), np.concatenate([s.y for s in parts]))
        test = load_server_test(cfg)
        epochs = cfg.num_server_rounds * cfg.local_epochs
        task.set_seed(seed)
        model = task.build_model(cfg.model, spec, cfg.hidden_units)
        t0 = time.perf_counter()
        spent, z = None, None
        if math.isinf(eps):
            task.train(model, union, epochs, cfg.batch_size, cfg.learning_rate, seed)
        else:
            state = DPState.plan(target_epsilon=eps, delta=cfg.dp_delta, num_examples=len(union),
                                 batch_size=cfg.batch_size, local_epochs=epochs, num_rounds=1)
            z = state.noise_multiplier
            _, _, spent, _ = dp_train(model, union, epochs, cfg.batch_size, cfg.learning_rate,
                                      seed, cfg.dp_max_grad_norm, z, cfg.dp_delta, state,
                                      deterministic_noise=True)
        acc = task.evaluate(model, test)[1]
        out.append({"epsilon": eps_label(eps), "seed": seed, "accuracy": acc,
                    "epsilon-spent": spent, "noise-multiplier": z, "epochs": epochs,
                    "train-rows": len(union), "seconds": time.perf_counter() - t0,
                    "loadavg": loadavg()})
        print(f"[central] eps={eps_label(eps)} seed {seed} acc {acc:.4f}", flush=True)
    return out


def node_noise(epsilons: list[float]) -> list[dict[str, Any]]:
    """Noise multiplier and sample rate of a node vs the central run (same batch, epochs)."""
    cfg = run_config(SEED)
    parts = node_train_rows(cfg)
    out = []
    for eps in (e for e in epsilons if not math.isinf(e)):
        node = DPState.plan(target_epsilon=eps, delta=cfg.dp_delta, num_examples=len(parts[0]),
                            batch_size=cfg.batch_size, local_epochs=cfg.local_epochs,
                            num_rounds=cfg.num_server_rounds)
        cen = DPState.plan(target_epsilon=eps, delta=cfg.dp_delta,
                           num_examples=sum(len(p) for p in parts), batch_size=cfg.batch_size,
                           local_epochs=cfg.num_server_rounds * cfg.local_epochs, num_rounds=1)
        out.append({"epsilon": eps_label(eps),
                    "node": {"rows": len(parts[0]), "q": node.sample_rate,
                             "steps": node.planned_steps, "z": node.noise_multiplier},
                    "central": {"rows": sum(len(p) for p in parts), "q": cen.sample_rate,
                                "steps": cen.planned_steps, "z": cen.noise_multiplier}})
    return out


# ---------------------------------------------------------------- 3. overfit audit


def overfit_audit(epsilons: list[float], members: int, hidden: int, epochs: int,
                  shadows: int) -> list[dict[str, Any]]:
    """``python -m fedapp.privacy.audit --train-fresh`` at each epsilon (shadows: the same
    recipe)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for eps in epsilons:
            t0 = time.perf_counter()
            args = ["--train-fresh", "--members", str(members), "--hidden", str(hidden),
                    "--epochs", str(epochs), "--shadow-models", str(shadows),
                    "--seed", str(SEED), "--out", tmp]
            if not math.isinf(eps):
                args += ["--dp-epsilon", str(eps)]
            res = audit_main(args)
            shown = [a for i, a in enumerate(args) if "--out" not in args[max(i - 1, 0):i + 1]]
            res |= {"epsilon": eps_label(eps), "seconds": time.perf_counter() - t0,
                    "command": "python -m fedapp.privacy.audit " + " ".join(shown)}
            out.append(res)
            print(f"[overfit audit] eps={eps_label(eps)} " + " ".join(
                f"{k} auc {v['auc']:.3f} tpr1 {v['tpr@1%fpr']:.3f}"
                for k, v in res["attacks"].items()), flush=True)
    return out


# ---------------------------------------------------------------- 4. local-epoch time


def dp_call(build: Callable[[], nn.Module], data: Split, epochs: int, batch_size: int,
            mode: str) -> float:
    """One ``dp_train`` call (what a node runs per round), wall seconds."""
    model = build()
    state = DPState.plan(target_epsilon=3.0, delta=1e-5, num_examples=len(data),
                         batch_size=batch_size, local_epochs=epochs, num_rounds=10)
    seconds, _ = timed(lambda: dp_train(
        model, data, epochs, batch_size, 0.05, SEED, 1.0, state.noise_multiplier, 1e-5, state,
        deterministic_noise=True, grad_sample_mode=mode))
    return seconds


def plain_call(build: Callable[[], nn.Module], data: Split, epochs: int,
               batch_size: int) -> float:
    """One non-private ``task.train`` call, wall seconds."""
    model = build()
    seconds, _ = timed(lambda: task.train(model, data, epochs, batch_size, 0.05, SEED))
    return seconds


def _call(build: Callable[[], nn.Module], data: Split, epochs: int, batch_size: int,
          mode: str) -> float:
    """Seconds per epoch of one call: ``mode`` "off" = non-private, else a DP-SGD mode."""
    if mode == "off":
        return plain_call(build, data, epochs, batch_size) / epochs
    return dp_call(build, data, epochs, batch_size, mode) / epochs


def time_batch(build: Callable[[], nn.Module], data: Split, batch_size: int, modes: list[str],
               repeats: int, epochs: int) -> dict[str, float]:
    """Median seconds per epoch of each mode ("off" first): one 1-epoch warm-up call each,
    then ``repeats`` interleaved ``epochs``-epoch calls."""
    names = ["off", *modes]
    interleave({m: partial(_call, build, data, 1, batch_size, m) for m in names}, 1)
    return medians(interleave({m: partial(_call, build, data, epochs, batch_size, m)
                               for m in names}, repeats))


def timing(repeats: int, batch_sizes: list[int], modes: list[str],
           epochs: int) -> list[dict[str, Any]]:
    """Per-epoch time of an ``epochs``-epoch call, DP (each mode) and not, interleaved."""
    cfg = run_config(SEED)
    spec = DATASET_SPECS[cfg.dataset]
    node0 = node_train_rows(cfg)[0]
    full = load_split(cfg.dataset, "train", cfg.test_fraction, cfg.seed)
    cases = {
        "mlp-64/full-train": (lambda: task.build_model("mlp", spec, 64), full),
        f"mlp-64/node-0-of-{NUM_NODES}": (lambda: task.build_model("mlp", spec, 64), node0),
        f"cnn/node-0-of-{NUM_NODES}": (lambda: task.build_model("cnn", spec, 64), node0),
    }
    out = []
    for name, (build, data) in cases.items():
        task.set_seed(SEED)
        arch = type(build()).__name__
        rows = []
        for bs in batch_sizes:
            q, _ = plan_steps(len(data), bs)
            auto = choose_grad_sample_mode(build(), q * len(data))
            med = time_batch(build, data, bs, modes, repeats, epochs)
            rows.append({"batch-size": bs, "auto-mode": auto, "seconds-per-epoch": med,
                         "ratio": {m: med[m] / med["off"] for m in modes}})
            print(f"[timing] {name} bs={bs} auto={auto} " + " ".join(
                f"{m} {med[m] * 1e3:.1f}ms" for m in med) + f" load {loadavg()}", flush=True)
        out.append({"case": name, "model": arch, "rows": len(data), "epochs-per-call": epochs,
                    "by-batch": rows, "loadavg": loadavg()})
    return out
