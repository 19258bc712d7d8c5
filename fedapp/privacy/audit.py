"""Membership-inference audit of a trained model: ``python -m fedapp.privacy.audit``.

Runs the attacks of :mod:`fedapp.privacy.membership_inference` (loss threshold; LiRA
online and offline with shadow models) against one target and writes ``audit.json``
(AUC, TPR at 1 % and 0.1 % FPR) and ``roc.png``.

Targets: ``--train-fresh`` trains a model here on a random half of the data set
(optionally with DP-SGD, ``--dp-epsilon``); ``--model PATH`` audits a saved state
dict, e.g. the ServerApp's ``model.pt``: its ``config.json`` (beside it, or
``--config``) gives the architecture and data split; members are the nodes'
training rows (exact with ``--num-partitions``, otherwise the whole training split,
which dilutes the signal), non-members the server's test rows (and, with
``--num-partitions``, the nodes' validation rows, never trained on). Shadows are
trained centrally with ``--epochs`` and the run's batch size and learning rate, with
DP-SGD at the run's ``dp-epsilon`` when its nodes used ``dp='local'``; for a federated
target that is an approximation of its training.

A model with nothing to find (DP-SGD, or a well-generalising model) leaves every
attack near chance; to check that the audit has power, audit an overfit target:
``--train-fresh --members 400 --hidden 128 --epochs 40`` (a wide MLP memorising 400
digits; LiRA then reaches several times chance at 1 % FPR, see docs/privacy.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedapp import task
from fedapp.config import BUILTIN_DATASETS, MODELS
from fedapp.data.specs import DATASET_SPECS, DatasetSpec, Split
from fedapp.privacy.membership_inference import AttackResult, Recipe, run_audit


def save_report(results: Sequence[AttackResult], out_dir: Path,
                meta: dict[str, object]) -> tuple[Path, Path]:
    """Write ``audit.json`` (meta + per-attack summary) and ``roc.png`` (log-log ROC)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {**meta, "attacks": {r.name: r.summary() for r in results}}
    json_path = out_dir / "audit.json"
    json_path.write_text(json.dumps(summary, indent=2))
    fig, ax = plt.subplots(figsize=(5, 5))
    floor = 1.0 / max(int((~results[0].is_member).sum()), 1)
    for r in results:
        fpr, tpr = r.roc()
        ax.plot(np.maximum(fpr, floor / 2), np.maximum(tpr, floor / 2),
                label=f"{r.name} (AUC {r.auc:.3f})")
    ax.plot([floor / 2, 1], [floor / 2, 1], "k:", label="chance")
    ax.set(xscale="log", yscale="log", xlabel="false positive rate",
           ylabel="true positive rate", title="Membership inference ROC")
    ax.legend(loc="lower right")
    png_path = out_dir / "roc.png"
    fig.savefig(png_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return json_path, png_path


def _fresh_target(args: argparse.Namespace, recipe: Recipe,
                  spec: DatasetSpec) -> tuple[nn.Module, Split, Split]:
    from fedapp.data.builtin import load_raw
    from fedapp.data.specs import preprocess

    x, y, _ = load_raw(args.dataset)
    order = np.random.default_rng(args.seed).permutation(len(y))
    n = min(args.members, len(y) // 2)
    data = Split(preprocess(args.dataset, x[order]), y[order])
    members = Split(data.x[:n], data.y[:n])
    nonmembers = Split(data.x[n:2 * n], data.y[n:2 * n])
    task.set_seed(args.seed)
    model = recipe.build(spec)
    recipe.fit(model, members, args.seed)
    return model, members, nonmembers


def _saved_target(args: argparse.Namespace) -> tuple[nn.Module, Split, Split, Recipe, DatasetSpec]:
    from fedapp.config import NodeConfig, RunConfig
    from fedapp.data.loading import load_node_data, load_server_test

    config = Path(args.config) if args.config else Path(args.model).with_name("config.json")
    overrides = {"dataset": args.dataset, "model": args.arch, "hidden-units": args.hidden}
    cfg = (RunConfig.from_flower(json.loads(config.read_text())) if config.exists()
           else RunConfig(**{k.replace("-", "_"): v for k, v in overrides.items()}))
    spec = DATASET_SPECS[cfg.dataset]
    # Shadows mimic the target's training: DP-SGD at the run's budget if its nodes used it.
    dp = cfg.dp == "local"
    recipe = Recipe(cfg.model, cfg.hidden_units, args.epochs, cfg.batch_size, cfg.learning_rate,
                    cfg.dp_epsilon if dp else 0.0, cfg.dp_delta, cfg.dp_max_grad_norm)
    model = recipe.build(spec)
    model.load_state_dict(torch.load(args.model, map_location="cpu", weights_only=True))
    nonmembers = load_server_test(cfg)
    if args.num_partitions:
        splits = [load_node_data(cfg, NodeConfig(p, args.num_partitions))
                  for p in range(args.num_partitions)]
        members = Split(np.concatenate([t.x for t, _ in splits]),
                        np.concatenate([t.y for t, _ in splits]))
        # The nodes' validation rows were never trained on: non-members too (finer FPR).
        nonmembers = Split(np.concatenate([nonmembers.x, *(v.x for _, v in splits)]),
                           np.concatenate([nonmembers.y, *(v.y for _, v in splits)]))
    else:
        from fedapp.data.builtin import load_split

        members = load_split(cfg.dataset, "train", cfg.test_fraction, cfg.seed)
    return model, members, nonmembers, recipe, spec


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fedapp.privacy.audit",
                                description=__doc__.split("\n")[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="state dict to audit (e.g. a run's model.pt)")
    target.add_argument("--train-fresh", action="store_true",
                        help="train a target here on --members random examples")
    p.add_argument("--config", help="run config JSON of --model (default: its config.json)")
    p.add_argument("--num-partitions", type=int, default=0,
                   help="--model: nodes of the run, to rebuild the exact member rows")
    p.add_argument("--dataset", default="digits", choices=BUILTIN_DATASETS)
    p.add_argument("--arch", default="mlp", choices=MODELS, help="model kind (fresh target)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units of the MLP")
    p.add_argument("--members", type=int, default=500, help="fresh target's training rows")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (target, shadows)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--dp-epsilon", type=float, default=0.0,
                   help="fresh target and shadows: DP-SGD with this epsilon (0 = off)")
    p.add_argument("--shadow-models", type=int, default=8, help="LiRA shadows (0 = loss only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="audit-out", help="directory for audit.json and roc.png")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    if args.train_fresh:
        spec = DATASET_SPECS[args.dataset]
        recipe = Recipe(args.arch, args.hidden, args.epochs, args.batch_size, args.lr,
                        args.dp_epsilon)
        model, members, nonmembers = _fresh_target(args, recipe, spec)
    else:
        model, members, nonmembers, recipe, spec = _saved_target(args)
    results = run_audit(model, members, nonmembers, recipe, spec, args.shadow_models, args.seed)
    meta: dict[str, object] = {
        "target": args.model or "fresh", "dataset": spec.name, "recipe": dataclasses.asdict(recipe),
        "members": len(members), "nonmembers": len(nonmembers),
        "fpr-resolution": 1.0 / len(nonmembers),  # low-FPR TPRs below this are not measured
        "shadow-models": args.shadow_models,
        "member-accuracy": task.evaluate(model, members)[1],
        "nonmember-accuracy": task.evaluate(model, nonmembers)[1],
    }
    json_path, png_path = save_report(results, Path(args.out), meta)
    for r in results:
        print(f"{r.name:13s} " + "  ".join(f"{k} {v:.4f}" for k, v in r.summary().items()))
    print(f"wrote {json_path} and {png_path}")
    return {**meta, "attacks": {r.name: r.summary() for r in results}}


if __name__ == "__main__":
    main()
