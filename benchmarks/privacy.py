"""Privacy benchmark (issue 6): utility, membership inference and cost of DP-SGD.

Setting (chosen so that federated local DP can approach the central ceiling; see
docs/privacy.md): digits, the 64-64-10 MLP, 2 simulated hospitals with an iid split,
5 rounds x 4 local epochs, batch 64, lr 0.1, clip norm C = 1, delta 1e-5. Federated and
central runs use exactly these hyperparameters; only the data layout differs.

1. Federated runs (real `flwr run`, private managed SuperLink) for each epsilon and seed:
   ``dp='local' dp-epsilon=E`` or ``dp='off'`` (inf). Final server accuracy, the largest
   epsilon any node spent (``dp-epsilon-max`` in ``rounds.json``); for the first seed the
   membership-inference audit of the final model (:mod:`fedapp.audit`: loss threshold,
   LiRA online/offline; members = the nodes' training rows, non-members = the server's
   test rows).
2. Central DP-SGD ceiling: the same model trained centrally with ``dp_train`` on the union
   of the nodes' training rows for ``rounds x local-epochs`` epochs, same epsilon, delta,
   C, batch size, learning rate and seed; evaluated on the same server test rows.
3. Overfit audit: ``python -m fedapp.audit --train-fresh`` targets (half of digits as
   members, the other half non-members, a wide MLP trained for many epochs, DP-SGD at each
   epsilon, LiRA shadows with the same recipe): shows the audit has power where there is
   something to find.
4. Local-epoch time, DP-SGD vs non-private, in this process (torch threads = 1), median of
   interleaved repeats, both models: ``dp_train`` (``grad_sample_mode='auto'``, what the
   ClientApp runs) vs ``task.train``, per epoch of a ``local-epochs`` call; and each Opacus
   ``grad_sample_mode`` through ``dp_train`` at several batch sizes.

    python benchmarks/privacy.py [--quick] [--out benchmarks/results/privacy.json]

Benchmarks are not tests; numbers depend on the (shared) machine: load averages recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _superlink import REPO, private_superlink
from torch import nn

from fedapp import runner, task
from fedapp.config import NodeConfig, RunConfig
from fedapp.data.builtin import load_split
from fedapp.data.loading import load_node_data, load_server_test
from fedapp.data.specs import DATASET_SPECS, Split

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


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def eps_label(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


# ---------------------------------------------------------------- 1. federated runs + audit


def run_config(seed: int) -> RunConfig:
    return RunConfig.from_flower({**RunConfig().to_flower(), **SETTING, "seed": seed,
                                  "tracking": False})


def fed_config(eps: float, seed: int, out_dir: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = {**SETTING, "seed": seed, "tracking": False,
                           "output-dir": str(out_dir)}
    cfg |= {"dp": "off"} if math.isinf(eps) else {"dp": "local", "dp-epsilon": float(eps)}
    RunConfig.from_flower({**RunConfig().to_flower(), **cfg})  # fail before submitting
    return cfg


def audit(run_dir: Path, shadows: int, epochs: int) -> dict[str, Any]:
    from fedapp import audit as fa

    t0 = time.perf_counter()
    res = fa.main(["--model", str(run_dir / "model.pt"), "--num-partitions", str(NUM_NODES),
                   "--shadow-models", str(shadows), "--epochs", str(epochs),
                   "--seed", str(SEED), "--out", str(run_dir / "audit")])
    res["audit-seconds"] = time.perf_counter() - t0
    return res


def runs_of(epsilons: list[float], seeds: list[int]) -> list[tuple[int, float]]:
    """(seed, epsilon) pairs: every seed at the target epsilons 3 and 8, the first elsewhere."""
    return [(s, e) for s in seeds for e in epsilons if s == seeds[0] or e in TARGET_EPSILONS]


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


def from_run_dirs(runs: Path) -> list[dict[str, Any]]:
    """Federated entries rebuilt from finished run dirs (``--from-runs``, after an interruption):
    the same fields, from ``config.json``, ``rounds.json`` and ``audit/audit.json``."""
    out = []
    for run_dir in sorted(runs.glob("run-*"), key=lambda d: d.stat().st_mtime):
        if not (run_dir / "audit" / "audit.json").exists():
            continue
        cfg = json.loads((run_dir / "config.json").read_text())
        rows = json.loads((run_dir / "rounds.json").read_text())
        spent = [float(v) for r in rows
                 if (v := r.get("dp-epsilon-max", r.get("dp-epsilon"))) is not None]
        eps = math.inf if cfg.get("dp") == "off" else float(cfg["dp-epsilon"])
        out.append({"epsilon": eps_label(eps), "run-id": int(run_dir.name[4:]),
                    "status": "finished:completed (recovered from the run dir)",
                    "final-accuracy": rows[-1]["server-accuracy"],
                    "epsilon-spent-max": max(spent) if spent else None,
                    "failed-replies": sum(int(r.get("failures", 0)) for r in rows),
                    "wall-seconds": None, "rounds": rows,
                    "audit": json.loads((run_dir / "audit" / "audit.json").read_text())})
    return out


# ---------------------------------------------------------------- 2. central DP-SGD ceiling


def central_audit(model: nn.Module, members: Split, test: Split, cfg: RunConfig,
                  shadows: int, shadow_epochs: int) -> dict[str, Any]:
    """The same audit as the federated models get (same shadow recipe, members, non-members)."""
    from fedapp import audit as fa

    spec = DATASET_SPECS[cfg.dataset]
    recipe = fa.Recipe(cfg.model, cfg.hidden_units, shadow_epochs, cfg.batch_size,
                       cfg.learning_rate)
    results = fa.run_audit(model, members, test, recipe, spec, shadows, SEED)
    return {"members": len(members), "nonmembers": len(test), "shadow-models": shadows,
            "attacks": {r.name: r.summary() for r in results}}


def central(epsilons: list[float], seeds: list[int], shadows: int = 0,
            shadow_epochs: int = 10) -> list[dict[str, Any]]:
    from fedapp.privacy import DPState, dp_train

    out = []
    for seed, eps in runs_of(epsilons, seeds):
        cfg = run_config(seed)
        spec = DATASET_SPECS[cfg.dataset]
        parts = [load_node_data(cfg, NodeConfig(p, NUM_NODES))[0] for p in range(NUM_NODES)]
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
        res = {"epsilon": eps_label(eps), "seed": seed, "accuracy": acc, "epsilon-spent": spent,
               "noise-multiplier": z, "epochs": epochs, "train-rows": len(union),
               "seconds": time.perf_counter() - t0, "loadavg": loadavg()}
        if shadows and seed == seeds[0]:
            res["audit"] = central_audit(model, union, test, cfg, shadows, shadow_epochs)
        out.append(res)
        print(f"[central] eps={eps_label(eps)} seed {seed} acc {acc:.4f}", flush=True)
    return out


def node_noise(epsilons: list[float]) -> list[dict[str, Any]]:
    """Noise multiplier and sample rate of a node vs the central run (same batch, epochs)."""
    from fedapp.privacy import DPState

    cfg = run_config(SEED)
    parts = [load_node_data(cfg, NodeConfig(p, NUM_NODES))[0] for p in range(NUM_NODES)]
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
    """``python -m fedapp.audit --train-fresh`` at each epsilon (shadows: the same recipe)."""
    from fedapp import audit as fa

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for eps in epsilons:
            t0 = time.perf_counter()
            args = ["--train-fresh", "--members", str(members), "--hidden", str(hidden),
                    "--epochs", str(epochs), "--shadow-models", str(shadows),
                    "--seed", str(SEED), "--out", tmp]
            if not math.isinf(eps):
                args += ["--dp-epsilon", str(eps)]
            res = fa.main(args)
            shown = [a for i, a in enumerate(args) if "--out" not in args[max(i - 1, 0):i + 1]]
            res |= {"epsilon": eps_label(eps), "seconds": time.perf_counter() - t0,
                    "command": "python -m fedapp.audit " + " ".join(shown)}
            out.append(res)
            print(f"[overfit audit] eps={eps_label(eps)} " + " ".join(
                f"{k} auc {v['auc']:.3f} tpr1 {v['tpr@1%fpr']:.3f}"
                for k, v in res["attacks"].items()), flush=True)
    return out


# ---------------------------------------------------------------- 4. local-epoch time


def dp_call(build: Any, data: Split, epochs: int, batch_size: int, mode: str) -> float:
    """One ``dp_train`` call (what a node runs per round), wall seconds."""
    from fedapp.privacy import DPState, dp_train

    model = build()
    state = DPState.plan(target_epsilon=3.0, delta=1e-5, num_examples=len(data),
                         batch_size=batch_size, local_epochs=epochs, num_rounds=10)
    t0 = time.perf_counter()
    dp_train(model, data, epochs, batch_size, 0.05, SEED, 1.0, state.noise_multiplier, 1e-5,
             state, deterministic_noise=True, grad_sample_mode=mode)
    return time.perf_counter() - t0


def plain_call(build: Any, data: Split, epochs: int, batch_size: int) -> float:
    model = build()
    t0 = time.perf_counter()
    task.train(model, data, epochs, batch_size, 0.05, SEED)
    return time.perf_counter() - t0


def timing(repeats: int, batch_sizes: list[int], modes: list[str],
           epochs: int) -> list[dict[str, Any]]:
    """Per-epoch time of an ``epochs``-epoch call, DP (each mode) and not, interleaved."""
    from fedapp.privacy.local import choose_grad_sample_mode, plan_steps

    cfg = run_config(SEED)
    spec = DATASET_SPECS[cfg.dataset]
    node0 = load_node_data(cfg, NodeConfig(0, NUM_NODES))[0]
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
            times: dict[str, list[float]] = {m: [] for m in ["off", *modes]}
            for m in times:  # warm-up
                plain_call(build, data, 1, bs) if m == "off" else dp_call(build, data, 1, bs, m)
            for _ in range(repeats):
                for m in times:
                    times[m].append((plain_call(build, data, epochs, bs) if m == "off" else
                                     dp_call(build, data, epochs, bs, m)) / epochs)
            med = {m: statistics.median(v) for m, v in times.items()}
            rows.append({"batch-size": bs, "auto-mode": auto, "seconds-per-epoch": med,
                         "ratio": {m: med[m] / med["off"] for m in modes}})
            print(f"[timing] {name} bs={bs} auto={auto} " + " ".join(
                f"{m} {med[m] * 1e3:.1f}ms" for m in med) + f" load {loadavg()}", flush=True)
        out.append({"case": name, "model": arch, "rows": len(data), "epochs-per-call": epochs,
                    "by-batch": rows, "loadavg": loadavg()})
    return out


# ---------------------------------------------------------------- report


def versions() -> dict[str, str]:
    import flwr
    import opacus

    return {"python": platform.python_version(), "torch": torch.__version__,
            "opacus": opacus.__version__, "flwr": flwr.__version__,
            "platform": platform.platform(), "cpus": str(os.cpu_count())}


def _f(v: Any, fmt: str = ".4f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def accuracy_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per epsilon: federated and central accuracy (mean over seeds, and each seed), gap."""
    rows = []
    for e in result["params"]["epsilons"]:
        fed = [r for r in result["federated"] if r["epsilon"] == e]
        cen = [r for r in result["central"] if r["epsilon"] == e]
        f_acc, c_acc = [r["final-accuracy"] for r in fed], [r["accuracy"] for r in cen]
        spent = [r["epsilon-spent-max"] for r in fed if r["epsilon-spent-max"] is not None]
        rows.append({"epsilon": e, "federated": _mean(f_acc), "central": _mean(c_acc),
                     "federated-seeds": f_acc, "central-seeds": c_acc,
                     "gap-pt": 100 * (_mean(c_acc) - _mean(f_acc)),
                     "epsilon-spent-max": max(spent) if spent else None})
    return rows


def write_plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = accuracy_table(result)
    labels = [r["epsilon"] for r in table]
    xs = list(range(len(labels)))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(xs, [r["federated"] for r in table], "o-", label=f"federated ({NUM_NODES} nodes)")
    a1.plot(xs, [r["central"] for r in table], "s--", label="central DP-SGD")
    for i, r in enumerate(table):
        a1.plot([i] * len(r["federated-seeds"]), r["federated-seeds"], ".", color="C0", alpha=.5)
        a1.plot([i] * len(r["central-seeds"]), r["central-seeds"], ".", color="C1", alpha=.5)
    a1.set(xticks=xs, xticklabels=labels, xlabel="epsilon", ylabel="test accuracy",
           title="Accuracy vs epsilon (mean over seeds; dots: seeds)")
    a1.legend()
    fed_audit = {r["epsilon"]: r["audit"] for r in result["federated"] if "audit" in r}
    over = {r["epsilon"]: r for r in result.get("overfit-audit", [])}
    for i, attack in enumerate(("loss", "lira-online", "lira-offline")):
        a2.plot(xs, [fed_audit[e]["attacks"].get(attack, {}).get("tpr@1%fpr", float("nan"))
                     if e in fed_audit else float("nan") for e in labels], "o-", color=f"C{i}",
                label=f"federated model, {attack}")
        a2.plot(xs, [over[e]["attacks"].get(attack, {}).get("tpr@1%fpr", float("nan"))
                     if e in over else float("nan") for e in labels], "s--", color=f"C{i}",
                label=f"overfit audit, {attack}")
    if over:
        o0 = next(iter(over.values()))
        mean, std = chance_tpr(o0["members"], o0["nonmembers"])
        a2.axhspan(max(mean - 2 * std, 0), mean + 2 * std, color="grey", alpha=0.2,
                   label="chance +- 2 std (overfit split)")
    a2.axhline(0.015, color="k", ls=":", label="target bound 1.5%")
    a2.set(xticks=xs, xticklabels=labels, xlabel="epsilon", ylabel="TPR at 1% FPR",
           title="Membership inference, TPR at 1% FPR")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_markdown(result: dict[str, Any], path: Path) -> None:
    p = result["params"]
    s = SETTING
    lines = [
        "# Differential privacy: utility, membership inference, cost",
        "",
        f"Generated by `{result['command']}` (from the repository root, `/work/venv`) in "
        f"{result['wall-seconds'] / 60:.1f} min ({result['timestamp']}; load average "
        f"{result['loadavg-start']} at start, {result['loadavg-end']} at the end, on "
        f"{result['versions']['cpus']} CPUs shared with other work; torch "
        f"{result['versions']['torch']}, Opacus {result['versions']['opacus']}). "
        "Raw numbers: `benchmarks/results/privacy.json`.",
        "",
        "## Setting",
        "",
        f"{s['dataset']}, `model='{s['model']}'` ({s['hidden-units']}-{s['hidden-units']}-10 "
        f"MLP), {NUM_NODES} simulated hospitals, `partitioner='{s['partitioner']}'`, "
        f"{s['num-server-rounds']} rounds x {s['local-epochs']} local epochs, batch "
        f"{s['batch-size']}, lr {s['learning-rate']} (SGD, momentum 0.9), clip norm C = "
        f"{s['dp-max-grad-norm']}, delta {s['dp-delta']}; seeds {p['seeds']} at epsilon 3 and 8, "
        f"seed {p['seeds'][0]} elsewhere (federated and central alike). Federated: real "
        f"`flwr run` with `--federation-config \"{FEDERATION}\"` and these keys in "
        "`--run-config`, plus `dp='local' dp-epsilon=E` (inf: `dp='off'`); each node runs "
        "`fedapp.privacy.node.private_round` (noise calibrated once for all its rounds). "
        "Central ceiling: `dp_train` on the union of the nodes' training rows for "
        f"{s['num-server-rounds'] * s['local-epochs']} epochs with the same batch, lr, C, "
        "epsilon, delta and seed, evaluated on the same server test rows.",
        "",
        "## Accuracy (mean over seeds) and epsilon spent",
        "",
        "| epsilon | federated acc | per seed | max eps spent (node) | central DP-SGD acc | "
        "per seed | gap (pt) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in accuracy_table(result):
        lines.append(
            f"| {r['epsilon']} | {r['federated']:.4f} | "
            f"{', '.join(f'{v:.3f}' for v in r['federated-seeds'])} | "
            f"{_f(r['epsilon-spent-max'], '.3f')} | {r['central']:.4f} | "
            f"{', '.join(f'{v:.3f}' for v in r['central-seeds'])} | {r['gap-pt']:+.1f} |")
    lines += ["", "Noise each side needs for the same epsilon (Opacus RDP accountant):", "",
              "| epsilon | node rows | node q | node steps | node z | central rows | "
              "central q | central steps | central z |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["noise"]:
        n, c = r["node"], r["central"]
        lines.append(f"| {r['epsilon']} | {n['rows']} | {n['q']:.4f} | {n['steps']} | "
                     f"{n['z']:.3f} | {c['rows']} | {c['q']:.4f} | {c['steps']} | "
                     f"{c['z']:.3f} |")
    first = [r for r in result["federated"] if "audit" in r]
    lines += ["", f"## Membership inference on the federated models (seed {p['seeds'][0]})", "",
              f"`fedapp.audit --model RUN/model.pt --num-partitions {NUM_NODES}`, "
              f"{p['shadows']} LiRA shadows trained centrally for {p['shadow-epochs']} epochs with "
              "the run's batch, lr and C (DP-SGD at the run's epsilon for DP runs); members = "
              "the nodes' training rows, non-members = the server's test rows and the nodes' "
              "validation rows.", "",
              "| epsilon | attack | AUC | TPR @ 1% FPR | TPR @ 0.1% FPR |", "|---|---|---|---|---|"]
    for r in first:
        for name, v in r["audit"]["attacks"].items():
            lines.append(f"| {r['epsilon']} | {name} | {v['auc']:.4f} | "
                         f"{v['tpr@1%fpr']:.4f} | {v['tpr@0.1%fpr']:.4f} |")
    if first:
        a0 = first[0]["audit"]
        mean, std = chance_tpr(a0["members"], a0["nonmembers"])
        lines += ["", f"Members {a0['members']}, non-members {a0['nonmembers']}: FPR resolution "
                  f"{a0['fpr-resolution']:.4f}, so TPR at 0.1 % FPR is really TPR at the "
                  "lowest measurable FPR. An attack at chance measures TPR @ 1% FPR = "
                  f"{mean:.4f} +- {std:.4f} here (`chance_tpr`: the best threshold with at "
                  "most 1 % false positives, over a random order)."]
    over = result.get("overfit-audit", [])
    if over:
        o0 = over[0]
        command = re.sub(r" --(out|dp-epsilon) \S+", "", o0["command"])
        lines += ["", "## Overfit audit (does the audit find anything where there is something "
                  "to find?)", "",
                  f"`{command}` and the same with `--dp-epsilon E`: a "
                  f"{o0['recipe']['hidden']}-unit MLP trained for {o0['recipe']['epochs']} epochs "
                  f"on {o0['members']} random digits (members; {o0['nonmembers']} others are "
                  f"non-members, FPR resolution {o0['fpr-resolution']:.4f}); the "
                  f"{o0['shadow-models']} LiRA shadows use the target's recipe, DP-SGD included.",
                  "", "| epsilon | member acc | non-member acc | attack | AUC | TPR @ 1% FPR | "
                  "TPR @ 0.1% FPR |", "|---|---|---|---|---|---|---|"]
        for r in over:
            for name, v in r["attacks"].items():
                lines.append(f"| {r['epsilon']} | {r['member-accuracy']:.3f} | "
                             f"{r['nonmember-accuracy']:.3f} | {name} | {v['auc']:.4f} | "
                             f"{v['tpr@1%fpr']:.4f} | {v['tpr@0.1%fpr']:.4f} |")
        mean, std = chance_tpr(o0["members"], o0["nonmembers"])
        lines += ["", f"An attack at chance measures TPR @ 1% FPR = {mean:.4f} +- {std:.4f} on "
                  "this split: the 1 % FPR threshold rests on "
                  f"{math.floor(0.01 * o0['nonmembers']) + 1} non-members."]
    lines += ["", f"## Local-epoch time, DP-SGD vs non-private (median of {p['repeats']} "
              "interleaved repeats, torch threads 1)", ""]
    if "timing-run" in result:
        t = result["timing-run"]
        lines += [f"Measured by a separate run, `{t['command']}` ({t['timestamp']}, "
                  f"{t['wall-seconds'] / 60:.1f} min, load average {t['loadavg-start']} at "
                  f"start, {t['loadavg-end']} at the end), merged with `--from-json "
                  "--timing-from`.", ""]
    lines += [
              f"Each entry: one call training {p['timing-epochs']} epochs (`dp_train`, wrapping "
              "included, or `task.train`), divided by the epochs. `auto` is the mode "
              "`dp_train` picks (`choose_grad_sample_mode`), i.e. what the ClientApp runs. "
              "Ratios are to the non-private loop at the same batch size; the last column "
              "compares `auto` at this batch with the non-private loop at batch 32 (the "
              "default `batch-size`), since DP-SGD prefers larger batches; its rows were "
              "measured up to a minute apart, so under a fluctuating load it is the least "
              "reliable column (the same-row ratios come from interleaved calls).", "",
              "`dp_train` wraps the model once per call (all local epochs reuse it), feeds "
              "the epochs from Opacus's Poisson sampler by indexing the tensors (no "
              "per-example DataLoader fetch and collate), and picks the Opacus "
              "`grad_sample_mode`: `ghost` (ghost clipping: per-example gradient norms "
              "without materialising per-example gradients, plus a second backward pass) when "
              "every trainable layer has a ghost norm sampler (Linear, Embedding) and the "
              "expected batch is >= 96, else `ew` (torch ExpandedWeights) when every layer is "
              "one it supports (Linear, Conv, GroupNorm, LayerNorm, ...), else `hooks`; a mode "
              "Opacus refuses at wrapping falls back to `hooks`. All modes take the same "
              "clipped, noised steps (tests/unit/test_privacy_modes.py). `functorch` was the "
              "slowest mode in the previous run (3.6-8.8x) and is not timed here. The epsilon "
              "each call reports comes from a cached one-step RDP per (z, q) "
              "(`fedapp.privacy.accounting.epsilon_of`, bit for bit Opacus's RDP accountant): "
              "uncached, Opacus's RDP series took 0.03-0.6 s per call here (depending on z and q), "
              "the fixed cost the previous run attributed to wrapping.", "",
              "| case | batch | non-private | " + " | ".join(p["modes"]) +
              " | auto picks | auto ratio | auto vs non-private @32 |",
              "|---|---|---|" + "---|" * len(p["modes"]) + "---|---|---|"]
    for t in result["timing"]:
        ref = next((e["seconds-per-epoch"]["off"] for e in t["by-batch"]
                    if e["batch-size"] == 32), float("nan"))
        for e in t["by-batch"]:
            sec, ratio = e["seconds-per-epoch"], e["ratio"]
            lines.append(f"| {t['case']} ({t['model']}, {t['rows']} rows) | {e['batch-size']} | "
                         f"{sec['off'] * 1e3:.1f} ms | " + " | ".join(
                             f"{sec[m] * 1e3:.1f} ms ({ratio[m]:.2f}x)" for m in p["modes"]) +
                         f" | {e['auto-mode']} | {ratio[e['auto-mode']]:.2f}x | "
                         f"{sec[e['auto-mode']] / ref:.2f}x |")
    lines += ["", "## Why the federated and central runs differ", "", *analysis(result)]
    lines += ["", "## Targets", "", "| target | measured | verdict |", "|---|---|---|",
              *target_rows(result)]
    lines += ["", "## Verdict", "", result["verdict"], "",
              "![accuracy and MIA TPR at 1% FPR vs epsilon](privacy.png)", ""]
    path.write_text("\n".join(lines))


def analysis(result: dict[str, Any]) -> list[str]:
    """The noise each side adds per unit of gradient signal, from the calibrated plans."""
    lines = []
    b = SETTING["batch-size"]
    for r in result.get("noise", []):
        n, c = r["node"], r["central"]
        fed_std = n["z"] / (b * NUM_NODES ** 0.5)
        cen_std = c["z"] / b
        lines.append(
            f"- epsilon {r['epsilon']}: a node ({n['rows']} rows) samples at q = {n['q']:.3f} "
            f"and needs z = {n['z']:.2f} for its {n['steps']} steps; the central run "
            f"({c['rows']} rows) samples at q = {c['q']:.3f} and needs z = {c['z']:.2f} for "
            f"{c['steps']} steps. Noise std per step relative to a batch of {b}, in units of "
            f"C: federated z / (B sqrt N) = {fed_std:.4f} after averaging {NUM_NODES} nodes, "
            f"central z / B = {cen_std:.4f}; but the central run takes {NUM_NODES}x more "
            f"steps per epoch, so its noise adds up over {c['steps']} steps against "
            f"{n['steps']} averaged ones.")
    lines += [
        "",
        "Federated local DP protects each example against the server too, so each node pays "
        "for its own, smaller data set: a higher sample rate (less amplification by "
        "subsampling) and its own noise. Averaging N nodes divides the noise std by sqrt(N), "
        "not by N: with many small nodes (the default task: 10 hospitals of about 115 rows, "
        "Dirichlet 0.5, CNN) the gap was 23-29 pt at epsilon 3 and 8 in the previous run of "
        "this benchmark (commit 89d3269, `hooks` mode, same accounting). With 2 iid nodes of "
        "575 rows, the MLP, and batch 64 both sides add comparable noise per step, and the "
        "remaining differences are the number of sequential steps (central: 2x per epoch, "
        "more optimisation but also more noise accumulated at the same lr) and seed-to-seed "
        "noise (several pt; see the per-seed columns). With the hyperparameters shared, "
        "the central run is not a ceiling at every epsilon: at epsilon 3 its 360 noisier "
        "steps at lr 0.1 end below the federated model's mean (a central run tuned on its "
        "own, e.g. a lower lr, may do better; the issue asks for identical settings).",
        "",
        "Why the epoch-time target is missed: a non-private step of these models costs well "
        "under a millisecond (one small matmul per layer), so DP-SGD's extra work per step "
        "dominates whatever the mode: Opacus's per-layer hooks or ExpandedWeights' per-example "
        "gradients (B x d_out x d_in per layer, several memory passes), ghost clipping's "
        "second backward pass, and the optimizer's per-parameter clipping, noise generation "
        "and accountant hook in Python. Fewer, larger batches amortise the per-step part, "
        "which is why the MLP's ratio against the non-private default (batch 32) is lower at "
        "batch 128 than at 32; at the same batch size the ratio grows with the batch, because "
        "the non-private step gets cheaper faster. The numbers were taken with load averages "
        "of 6-13 on 2 cores (other benchmarks running), which inflates both sides and their "
        "ratio's scatter.",
    ]
    return lines


def target_rows(result: dict[str, Any]) -> list[str]:
    """The issue's targets, one markdown table row each."""
    rows = []
    by_eps = {r["epsilon"]: r for r in accuracy_table(result)}
    for e in ("3", "8"):
        if e in by_eps:
            gap = by_eps[e]["gap-pt"]
            rows.append(f"| federated within 3 pt of central, epsilon {e} | gap {gap:+.1f} pt "
                        f"(mean of {len(by_eps[e]['federated-seeds'])} seeds) | "
                        f"{'met' if gap <= 3 else 'NOT met'} |")
    bs = SETTING["batch-size"]
    for t in result["timing"]:
        for e in t["by-batch"]:
            if e["batch-size"] in (bs, 128):
                ratio = e["ratio"][e["auto-mode"]]
                rows.append(f"| DP epoch <= 1.6x non-private, {t['case']}, batch "
                            f"{e['batch-size']} | {ratio:.2f}x (`{e['auto-mode']}`) | "
                            f"{'met' if ratio <= 1.6 else 'NOT met'} |")
    audits = [("federated model", r["epsilon"], r["audit"]) for r in result["federated"]
              if "audit" in r]
    audits += [("overfit audit", r["epsilon"], r) for r in result.get("overfit-audit", [])]
    for name, eps, a in audits:
        best = max(a["attacks"].items(), key=lambda kv: kv[1]["tpr@1%fpr"])
        mean, std = chance_tpr(a["members"], a["nonmembers"])
        measured = (f"{best[1]['tpr@1%fpr']:.4f} ({best[0]}); chance {mean:.4f} +- {std:.4f}")
        if eps != "inf" and float(eps) <= 3:
            ok = "met" if best[1]["tpr@1%fpr"] <= 0.015 else "NOT met"
            rows.append(f"| TPR @ 1% FPR <= 1.5%, {name}, epsilon {eps} | {measured} | {ok} |")
        elif eps == "inf":
            tpr = best[1]["tpr@1%fpr"]
            ok = ("met" if tpr > mean + 3 * std else
                  "marginal (best of 3 attacks, 2-3 std)" if tpr > mean + 2 * std else "NOT met")
            rows.append(f"| non-private audit visibly above chance (> chance + 3 std), {name} "
                        f"| {measured}, AUC {best[1]['auc']:.3f} | {ok} |")
    return rows


def chance_tpr(members: int, nonmembers: int, fpr: float = 0.01) -> tuple[float, float]:
    """Mean and std of the measured TPR at ``fpr`` for an attack at chance (random scores).

    ``AttackResult.tpr_at`` keeps the best threshold with at most ``k = floor(fpr m)``
    false positives: the members ranked above the ``(k+1)``-th non-member of a random
    order, about negative binomial with ``r = k + 1`` and ``p = m / (n + m)``.
    """
    r = math.floor(fpr * nonmembers) + 1
    p = nonmembers / (members + nonmembers)
    return r * (1 - p) / p / members, math.sqrt(r * (1 - p)) / p / members


def verdict(result: dict[str, Any]) -> str:
    parts = []
    by_eps = {r["epsilon"]: r for r in accuracy_table(result)}
    for e in ("3", "8"):
        r = by_eps.get(e)
        if r is None:
            parts.append(f"epsilon {e}: not measured in this run.")
            continue
        parts.append(f"Accuracy at epsilon {e}: federated {r['federated']:.4f} vs central "
                     f"{r['central']:.4f} (mean of {len(r['federated-seeds'])} seeds), gap "
                     f"{r['gap-pt']:+.1f} pt: target (<= 3 pt) "
                     f"{'met' if r['gap-pt'] <= 3 else 'NOT met'}.")
    default_bs = SETTING["batch-size"]
    for t in result["timing"]:
        for e in t["by-batch"]:
            if e["batch-size"] == default_bs:
                ratio = e["ratio"][e["auto-mode"]]
                parts.append(f"Epoch time {t['case']} at batch {default_bs}: dp_train "
                             f"({e['auto-mode']}) / task.train = {ratio:.2f}x, target <= 1.6x "
                             f"{'met' if ratio <= 1.6 else 'NOT met'}.")
    for name, audits in (("federated model", [r for r in result["federated"] if "audit" in r]),
                         ("overfit audit", result.get("overfit-audit", []))):
        for r in audits:
            a = r.get("audit", r)
            best = max(a["attacks"].items(), key=lambda kv: kv[1]["tpr@1%fpr"])
            tpr = best[1]["tpr@1%fpr"]
            eps = r["epsilon"]
            mean, std = chance_tpr(a["members"], a["nonmembers"])
            if eps != "inf" and float(eps) <= 3:
                ok = "met" if tpr <= 0.015 else "NOT met"
                parts.append(f"MIA {name} eps {eps}: best TPR@1%FPR {tpr:.4f} ({best[0]}, AUC "
                             f"{best[1]['auc']:.3f}), target <= 0.015 {ok} (an attack at chance "
                             f"measures {mean:.4f} +- {std:.4f} on this split).")
            elif eps == "inf":
                parts.append(f"MIA {name} non-private: best TPR@1%FPR {tpr:.4f} ({best[0]}, "
                             f"AUC {best[1]['auc']:.3f}; chance {mean:.4f} +- {std:.4f}).")
    return " ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 epsilons, 1 seed, fewer repeats")
    ap.add_argument("--seeds", default=None, help="comma list of seeds (federated and central)")
    ap.add_argument("--epsilons", default=None, help="comma list, 'inf' = dp off")
    ap.add_argument("--shadows", type=int, default=None)
    ap.add_argument("--shadow-epochs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--skip", default="", help="comma list of sections to skip: "
                    "timing, central, overfit-audit, federated")
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/privacy.json"))
    ap.add_argument("--docs", default=str(REPO / "docs"), help="where privacy.md/.png go")
    ap.add_argument("--from-json", action="store_true",
                    help="only rewrite the docs from an existing --out JSON")
    ap.add_argument("--timing-from", help="with --from-json: take the timing section from "
                    "this JSON (a later `--skip central,federated,overfit-audit` run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    q = args.quick
    params = {
        "seeds": [int(v) for v in (args.seeds or ("42" if q else "42,43,44")).split(",")],
        "epsilons": [float(e) for e in (args.epsilons or ("3,inf" if q else "1,3,8,inf"))
                     .split(",")],
        "shadows": args.shadows or (4 if q else 8),
        "shadow-epochs": args.shadow_epochs or SETTING["num-server-rounds"] * SETTING[
            "local-epochs"],
        "repeats": args.repeats or (2 if q else 3),
        "batch-sizes": [32, 64] if q else [32, 64, 128],
        "modes": ["hooks", "ew", "ghost"],
        "timing-epochs": 2,
        "overfit": {"members": 400, "hidden": 128, "epochs": 40, "shadows": 4 if q else 8},
        "setting": SETTING,
    }
    skip = set(filter(None, args.skip.split(",")))
    start, t0 = loadavg(), time.perf_counter()
    result: dict[str, Any] = {
        "command": " ".join(["python benchmarks/privacy.py", *sys.argv[1:]]),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(), "params": {**params, "epsilons": [
            eps_label(e) for e in params["epsilons"]]},
        "loadavg-start": start, "torch-threads": torch.get_num_threads(),
        "timing": [], "central": [], "federated": [], "overfit-audit": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def dump() -> None:  # after every section: a partial result survives an interruption
        out.write_text(json.dumps(result, indent=2, default=str))

    if args.from_json:  # regenerate the docs only
        result = json.loads(out.read_text())
        if args.timing_from:
            other = json.loads(Path(args.timing_from).read_text())
            result["timing"] = other["timing"]
            result["timing-run"] = {k: other[k] for k in (
                "command", "timestamp", "loadavg-start", "loadavg-end", "wall-seconds")}
            result["params"]["repeats"] = other["params"]["repeats"]
            result["params"]["timing-epochs"] = other["params"]["timing-epochs"]
    else:
        eps = params["epsilons"]
        result["noise"] = node_noise(eps)
        if "timing" not in skip:
            result["timing"] = timing(params["repeats"], params["batch-sizes"], params["modes"],
                                      params["timing-epochs"])
            dump()
        if "central" not in skip:
            result["central"] = central(eps, params["seeds"])
            dump()
        if "federated" not in skip:
            result["federated"] = federated(eps, params["seeds"], params["shadows"],
                                            params["shadow-epochs"], args.timeout)
            dump()
        if "overfit-audit" not in skip:
            o = params["overfit"]
            result["overfit-audit"] = overfit_audit(eps, o["members"], o["hidden"], o["epochs"],
                                                    o["shadows"])
        result["wall-seconds"] = time.perf_counter() - t0
        result["loadavg-end"] = loadavg()
    result["accuracy"] = accuracy_table(result)
    result["verdict"] = verdict(result)
    dump()
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    write_markdown(result, docs / "privacy.md")
    write_plot(result, docs / "privacy.png")
    print(result["verdict"])
    print(f"wrote {out}, {docs / 'privacy.md'}, {docs / 'privacy.png'} "
          f"in {result['wall-seconds']:.0f}s")


if __name__ == "__main__":
    main()
