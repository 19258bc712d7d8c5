"""Privacy benchmark (issue 6): utility, membership inference and cost of DP-SGD.

1. Federated runs (real `flwr run`, private managed SuperLink, 10 simulated nodes, digits,
   the default CNN) for each epsilon: ``dp='local' dp-epsilon=E`` or ``dp='off'`` (inf).
   Final server accuracy, the largest epsilon any node spent (``dp-epsilon-max`` in
   ``rounds.json``), then the membership-inference audit of the final model
   (:mod:`fedapp.audit`: loss threshold, LiRA online/offline; members = the nodes'
   training rows, rebuilt with ``--num-partitions``; non-members = the server's test rows).
2. Central DP-SGD ceiling: the same model trained centrally with ``dp_train`` on the union
   of the nodes' training rows, ``rounds x local-epochs`` epochs, same epsilon, delta, C,
   batch size and learning rate; evaluated on the same server test rows.
3. Local-epoch time, DP-SGD vs non-private, in this process (torch threads = 1), median of
   repeats: the default model on partition 0, and the 64-64-10 MLP on the full digits
   training split; ``dp_train`` itself (hooks mode, what the ClientApp runs) and Opacus's
   PrivacyEngine directly with each ``grad_sample_mode`` and several batch sizes.

    python benchmarks/privacy.py [--quick] [--out benchmarks/results/privacy.json]

Benchmarks are not tests; numbers depend on the (shared) machine: load averages recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
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

FEDERATION = "num-supernodes=10 client-resources-num-cpus=1"
NUM_NODES = 10
SEED = 42


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def eps_label(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


# ---------------------------------------------------------------- 1. federated runs + audit


def fed_config(eps: float, rounds: int, out_dir: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = {"num-server-rounds": rounds, "seed": SEED, "tracking": False,
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


def federated(epsilons: list[float], rounds: int, shadows: int, shadow_epochs: int,
              timeout: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with private_superlink() as (env, workdir):
        runs = workdir / "runs"
        for eps in epsilons:
            cfg = fed_config(eps, rounds, runs)
            print(f"[federated] eps={eps_label(eps)} load {loadavg()}", flush=True)
            before = loadavg()
            t0 = time.perf_counter()
            run_id, status = runner.run_and_check(REPO, cfg, federation_config=FEDERATION,
                                                  env=env, timeout=timeout)
            wall = time.perf_counter() - t0
            run_dir = runs / f"run-{run_id}"
            rows = json.loads((run_dir / "rounds.json").read_text())
            spent = [r.get("dp-epsilon-max", r.get("dp-epsilon")) for r in rows]
            spent = [float(v) for v in spent if v is not None]
            res = {"epsilon": eps_label(eps), "run-config": cfg, "run-id": run_id,
                   "status": status, "final-accuracy": rows[-1]["server-accuracy"],
                   "epsilon-spent-max": max(spent) if spent else None,
                   "failed-replies": sum(int(r.get("failures", 0)) for r in rows),
                   "wall-seconds": wall, "loadavg-before": before, "loadavg-after": loadavg(),
                   "rounds": rows}
            print(f"    acc {res['final-accuracy']:.4f} eps spent {res['epsilon-spent-max']} "
                  f"({wall:.0f}s); auditing ...", flush=True)
            res["audit"] = audit(run_dir, shadows, shadow_epochs)
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


def central(epsilons: list[float], rounds: int, shadows: int = 0,
            shadow_epochs: int = 10) -> list[dict[str, Any]]:
    from fedapp.privacy import DPState, dp_train

    cfg = RunConfig(num_server_rounds=rounds, seed=SEED, tracking=False)
    spec = DATASET_SPECS[cfg.dataset]
    parts = [load_node_data(cfg, NodeConfig(p, NUM_NODES))[0] for p in range(NUM_NODES)]
    union = Split(np.concatenate([s.x for s in parts]), np.concatenate([s.y for s in parts]))
    test = load_server_test(cfg)
    epochs = rounds * cfg.local_epochs
    out = []
    for eps in epsilons:
        task.set_seed(SEED)
        model = task.build_model(cfg.model, spec, cfg.hidden_units)
        t0 = time.perf_counter()
        spent, z = None, None
        if math.isinf(eps):
            task.train(model, union, epochs, cfg.batch_size, cfg.learning_rate, SEED)
        else:
            state = DPState.plan(target_epsilon=eps, delta=cfg.dp_delta, num_examples=len(union),
                                 batch_size=cfg.batch_size, local_epochs=epochs, num_rounds=1)
            z = state.noise_multiplier
            _, _, spent, _ = dp_train(model, union, epochs, cfg.batch_size, cfg.learning_rate,
                                      SEED, cfg.dp_max_grad_norm, z, cfg.dp_delta, state,
                                      deterministic_noise=True)
        acc = task.evaluate(model, test)[1]
        res = {"epsilon": eps_label(eps), "accuracy": acc, "epsilon-spent": spent,
               "noise-multiplier": z, "epochs": epochs, "train-rows": len(union),
               "seconds": time.perf_counter() - t0, "loadavg": loadavg()}
        if shadows:
            res["audit"] = central_audit(model, union, test, cfg, shadows, shadow_epochs)
            print(f"[central] eps={eps_label(eps)} audit " + " ".join(
                f"{k} auc {v['auc']:.4f}" for k, v in res["audit"]["attacks"].items()),
                flush=True)
        out.append(res)
        print(f"[central] eps={eps_label(eps)} acc {acc:.4f}", flush=True)
    return out


# ---------------------------------------------------------------- 3. local-epoch time


def _loader(data: Split, batch_size: int) -> torch.utils.data.DataLoader:
    ds = torch.utils.data.TensorDataset(torch.from_numpy(np.ascontiguousarray(data.x)),
                                        torch.from_numpy(data.y))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(SEED))


def _epoch(model: nn.Module, opt: torch.optim.Optimizer, loader: Any) -> float:
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for xb, yb in loader:
        opt.zero_grad()
        out = model(xb)
        loss = loss_fn(out, yb) if len(yb) else out.sum()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def engine_epoch(build: Any, data: Split, batch_size: int, mode: str | None) -> float:
    """One epoch's loop time (wrapping excluded); ``mode`` None = non-private."""
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = _loader(data, batch_size)
    if mode is None:
        return _epoch(model, opt, loader)
    from opacus import PrivacyEngine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
        m, o, dl = engine.make_private(module=model, optimizer=opt, data_loader=loader,
                                       noise_multiplier=1.0, max_grad_norm=1.0,
                                       poisson_sampling=True, grad_sample_mode=mode)
        _epoch(m, o, dl) if mode == "functorch" else None  # functorch: first call traces
        return _epoch(m, o, dl)


def dp_train_epoch(build: Any, data: Split, batch_size: int) -> float:
    """``dp_train`` for one epoch, whole call (what a node pays per local epoch)."""
    from fedapp.privacy import DPState, dp_train

    model = build()
    state = DPState.plan(target_epsilon=3.0, delta=1e-5, num_examples=len(data),
                         batch_size=batch_size, local_epochs=1, num_rounds=10)
    t0 = time.perf_counter()
    dp_train(model, data, 1, batch_size, 0.05, SEED, 1.0, state.noise_multiplier, 1e-5, state,
             deterministic_noise=True)
    return time.perf_counter() - t0


def plain_train_epoch(build: Any, data: Split, batch_size: int) -> float:
    model = build()
    t0 = time.perf_counter()
    task.train(model, data, 1, batch_size, 0.05, SEED)
    return time.perf_counter() - t0


def timing(repeats: int, batch_sizes: list[int], modes: list[str]) -> list[dict[str, Any]]:
    cfg = RunConfig(seed=SEED)
    spec = DATASET_SPECS[cfg.dataset]
    part0 = load_node_data(cfg, NodeConfig(0, NUM_NODES))[0]
    full = load_split(cfg.dataset, "train", cfg.test_fraction, cfg.seed)
    cases = {
        "default-model/partition-0": (lambda: task.build_model("auto", spec, 64), part0),
        "mlp-64/full-train": (lambda: task.build_model("mlp", spec, 64), full),
    }
    out = []
    for name, (build, data) in cases.items():
        task.set_seed(SEED)
        arch = type(build()).__name__
        res: dict[str, Any] = {"case": name, "model": arch, "rows": len(data)}
        # the ClientApp's own path: task.train vs dp_train (batch 32), round-robin
        plain, dp = [], []
        plain_train_epoch(build, data, 32), dp_train_epoch(build, data, 32)  # warm-up
        for m in ["off", *modes]:  # warm-up of each mode
            engine_epoch(build, data, batch_sizes[0], None if m == "off" else m)
        for _ in range(repeats):
            plain.append(plain_train_epoch(build, data, 32))
            dp.append(dp_train_epoch(build, data, 32))
        res["task.train-s"] = statistics.median(plain)
        res["dp_train-s"] = statistics.median(dp)
        res["dp_train-ratio"] = res["dp_train-s"] / res["task.train-s"]
        res["engine"] = []
        for bs in batch_sizes:
            times: dict[str, list[float]] = {m: [] for m in ["off", *modes]}
            for _ in range(repeats):
                for m in times:
                    times[m].append(engine_epoch(build, data, bs, None if m == "off" else m))
            med = {m: statistics.median(v) for m, v in times.items()}
            row = {"batch-size": bs, "seconds": med,
                   "ratio": {m: med[m] / med["off"] for m in modes}}
            res["engine"].append(row)
            print(f"[timing] {name} bs={bs} " + " ".join(
                f"{m} {med[m] * 1e3:.1f}ms" for m in med), flush=True)
        best = min((r["ratio"][m], m, r["batch-size"]) for r in res["engine"] for m in modes)
        res["best"] = {"ratio": best[0], "mode": best[1], "batch-size": best[2]}
        res["loadavg"] = loadavg()
        print(f"[timing] {name}: dp_train/task.train {res['dp_train-ratio']:.2f}x, best engine "
              f"{best[1]} bs={best[2]} {best[0]:.2f}x", flush=True)
        out.append(res)
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


def write_plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fed, cen = result["federated"], result["central"]
    labels = [r["epsilon"] for r in fed]
    xs = range(len(labels))
    cen_acc = {r["epsilon"]: r["accuracy"] for r in cen}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(xs, [r["final-accuracy"] for r in fed], "o-", label="federated (10 nodes)")
    a1.plot(xs, [cen_acc.get(e, float("nan")) for e in labels], "s--", label="central DP-SGD")
    a1.set(xticks=list(xs), xticklabels=labels, xlabel="epsilon", ylabel="test accuracy",
           title="Accuracy vs epsilon")
    a1.legend()
    cen_by = {r["epsilon"]: r for r in cen}
    for i, attack in enumerate(("loss", "lira-online", "lira-offline")):
        a2.plot(xs, [r["audit"]["attacks"][attack]["auc"] for r in fed], "o-", color=f"C{i}",
                label=f"federated, {attack}")
        if all("audit" in cen_by.get(e, {}) for e in labels):
            a2.plot(xs, [cen_by[e]["audit"]["attacks"][attack]["auc"] for e in labels], "s--",
                    color=f"C{i}", label=f"central, {attack}")
    a2.axhline(0.5, color="k", ls=":", label="chance")
    a2.set(xticks=list(xs), xticklabels=labels, xlabel="epsilon", ylabel="MIA AUC",
           title="Membership inference AUC")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_markdown(result: dict[str, Any], path: Path) -> None:
    fed, cen, tim = result["federated"], result["central"], result["timing"]
    cen_by = {r["epsilon"]: r for r in cen}
    p = result["params"]
    lines = [
        "# Differential privacy: utility, membership inference, cost",
        "",
        f"Generated by `{result['command']}` in {result['wall-seconds'] / 60:.1f} min "
        f"({result['timestamp']}; load average {result['loadavg-start']} at start, "
        f"{result['loadavg-end']} at the end, on {result['versions']['cpus']} CPUs shared "
        "with other work). Raw numbers: `benchmarks/results/privacy.json`.",
        "",
        f"Setup: digits, default CNN, {NUM_NODES} simulated nodes (Dirichlet 0.5), "
        f"{p['rounds']} rounds x 3 local epochs, batch 32, lr 0.05, delta 1e-5, C = 1, "
        f"seed {SEED}. Federated: `dp='local' dp-epsilon=E` (inf: `dp='off'`), "
        f"`--federation-config \"{FEDERATION}\"`. Central: `dp_train` on the union of the "
        f"nodes' training rows for {p['rounds'] * 3} epochs. MIA: `fedapp.audit` on the final "
        f"federated model, {p['shadows']} LiRA shadows trained centrally for "
        f"{p['shadow-epochs']} epochs; members = the nodes' training rows, non-members = "
        "the server's test rows.",
        "",
        "## Accuracy and epsilon spent",
        "",
        "| epsilon | federated acc | max eps spent (node) | central DP-SGD acc | gap (pt) |",
        "|---|---|---|---|---|",
    ]
    for r in fed:
        c = cen_by.get(r["epsilon"], {})
        gap = (None if not c else 100 * (c["accuracy"] - r["final-accuracy"]))
        lines.append(f"| {r['epsilon']} | {r['final-accuracy']:.4f} | "
                     f"{_f(r['epsilon-spent-max'], '.3f')} | {_f(c.get('accuracy'))} | "
                     f"{_f(gap, '+.1f')} |")
    lines += ["", "## Membership inference on the federated model", "",
              "| epsilon | attack | AUC | TPR @ 1% FPR | TPR @ 0.1% FPR |", "|---|---|---|---|---|"]
    for r in fed:
        for name, s in r["audit"]["attacks"].items():
            lines.append(f"| {r['epsilon']} | {name} | {s['auc']:.4f} | "
                         f"{s['tpr@1%fpr']:.4f} | {s['tpr@0.1%fpr']:.4f} |")
    if all("audit" in c for c in cen):
        lines += ["", "## Membership inference on the central DP-SGD model (same audit)", "",
                  "| epsilon | attack | AUC | TPR @ 1% FPR | TPR @ 0.1% FPR |",
                  "|---|---|---|---|---|"]
        for c in cen:
            for name, s in c["audit"]["attacks"].items():
                lines.append(f"| {c['epsilon']} | {name} | {s['auc']:.4f} | "
                             f"{s['tpr@1%fpr']:.4f} | {s['tpr@0.1%fpr']:.4f} |")
    res0 = fed[0]["audit"]
    lines += ["", f"Members {res0['members']}, non-members {res0['nonmembers']}: the FPR "
              f"resolution is {res0['fpr-resolution']:.4f}, so TPR at 0.1 % FPR is really "
              "TPR at the lowest measurable FPR.", "",
              "## Local-epoch time, DP-SGD vs non-private (median of "
              f"{p['repeats']}, torch threads 1)", "",
              "| case | rows | task.train | dp_train | ratio | best engine mode / batch | "
              "best ratio |", "|---|---|---|---|---|---|---|"]
    for t in tim:
        b = t["best"]
        lines.append(f"| {t['case']} ({t['model']}) | {t['rows']} | "
                     f"{t['task.train-s'] * 1e3:.1f} ms | {t['dp_train-s'] * 1e3:.1f} ms | "
                     f"{t['dp_train-ratio']:.2f}x | {b['mode']} / {b['batch-size']} | "
                     f"{b['ratio']:.2f}x |")
    lines += ["", "Opacus PrivacyEngine directly (epoch loop only, wrapping excluded; "
              "ratio to the same loop without DP at the same batch size):", "",
              "| case | batch | non-private | " + " | ".join(p["modes"]) + " |",
              "|---|---|---|" + "---|" * len(p["modes"])]
    for t in tim:
        for e in t["engine"]:
            s = e["seconds"]
            lines.append(f"| {t['case']} | {e['batch-size']} | {s['off'] * 1e3:.1f} ms | " +
                         " | ".join(f"{s[m] * 1e3:.1f} ms ({e['ratio'][m]:.2f}x)"
                                    for m in p["modes"]) + " |")
    lines += ["", "## Verdict", "", result["verdict"], "", "![accuracy and MIA AUC vs epsilon]"
              "(privacy.png)", ""]
    path.write_text("\n".join(lines))


def verdict(result: dict[str, Any]) -> str:
    fed, cen_by = result["federated"], {r["epsilon"]: r for r in result["central"]}
    parts = []
    for e in ("3", "8"):
        f = next((r for r in fed if r["epsilon"] == e), None)
        if f is None or e not in cen_by:
            parts.append(f"epsilon {e}: not measured in this run.")
            continue
        gap = 100 * (cen_by[e]["accuracy"] - f["final-accuracy"])
        parts.append(f"epsilon {e}: federated {f['final-accuracy']:.4f} vs central "
                     f"{cen_by[e]['accuracy']:.4f}, gap {gap:+.1f} pt, target (<= 3 pt) "
                     f"{'met' if gap <= 3 else 'NOT met'}.")
    for t in result["timing"]:
        parts.append(f"{t['case']}: dp_train / task.train = {t['dp_train-ratio']:.2f}x "
                     f"(target <= 1.6x {'met' if t['dp_train-ratio'] <= 1.6 else 'NOT met'}); "
                     f"best Opacus setting {t['best']['mode']} at batch {t['best']['batch-size']}"
                     f" = {t['best']['ratio']:.2f}x.")
    return " ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 epsilons, 3 rounds, fewer repeats")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--epsilons", default=None, help="comma list, 'inf' = dp off")
    ap.add_argument("--shadows", type=int, default=None)
    ap.add_argument("--shadow-epochs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/privacy.json"))
    ap.add_argument("--docs", default=str(REPO / "docs"), help="where privacy.md/.png go")
    ap.add_argument("--from-json", action="store_true",
                    help="only rewrite the docs from an existing --out JSON")
    ap.add_argument("--redo-central", action="store_true",
                    help="with --from-json: retrain and audit the central models")
    ap.add_argument("--from-runs", help="with --from-json: rebuild the federated part from "
                    "this directory of finished run dirs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    q = args.quick
    params = {
        "rounds": args.rounds or (3 if q else 10),
        "epsilons": [float(e) for e in (args.epsilons or ("3,inf" if q else "1,3,8,inf"))
                     .split(",")],
        "shadows": args.shadows or (4 if q else 8),
        "shadow-epochs": args.shadow_epochs or (5 if q else 10),
        "repeats": args.repeats or (2 if q else 5),
        "batch-sizes": [32, 128] if q else [32, 64, 128, 256],
        "modes": ["hooks", "functorch", "ew"],
    }
    start, t0 = loadavg(), time.perf_counter()
    result: dict[str, Any] = {
        "command": " ".join(["python benchmarks/privacy.py", *sys.argv[1:]]),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(), "params": {**params, "epsilons": [
            eps_label(e) for e in params["epsilons"]]},
        "loadavg-start": start, "torch-threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def dump() -> None:  # after every section: a partial result survives an interruption
        out.write_text(json.dumps(result, indent=2, default=str))

    if args.from_json:  # regenerate the docs only
        result = json.loads(out.read_text())
        if args.from_runs:
            result["federated"] = from_run_dirs(Path(args.from_runs))
            result.setdefault("wall-seconds", time.time() - time.mktime(time.strptime(
                result["timestamp"], "%Y-%m-%dT%H:%M:%SZ")) + time.timezone)
            result.setdefault("loadavg-end", loadavg())
        if args.redo_central:  # retrain (deterministic) and audit the central models
            p = result["params"]
            result["central"] = central([float(e) for e in p["epsilons"]], p["rounds"],
                                        p["shadows"], p["shadow-epochs"])
    else:
        result["timing"] = timing(params["repeats"], params["batch-sizes"], params["modes"])
        dump()
        result["central"] = central(params["epsilons"], params["rounds"], params["shadows"],
                                    params["shadow-epochs"])
        dump()
        result["federated"] = federated(params["epsilons"], params["rounds"], params["shadows"],
                                        params["shadow-epochs"], args.timeout)
        result["wall-seconds"] = time.perf_counter() - t0
        result["loadavg-end"] = loadavg()
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
