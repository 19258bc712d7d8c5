"""Membership-inference audit of a trained model: ``python -m fedapp.audit``.

Members are examples the model was trained on; non-members are held-out examples
of the same distribution. An attack gives every example a score (higher = "was
trained on") and is judged by its ROC curve: AUC, and the true-positive rate at a
low false-positive rate (1 %, 0.1 %), the regime that matters for privacy
(Carlini et al. 2022). With ``m`` non-members the FPR resolution is ``1 / m``: a
TPR at 0.1 % FPR needs at least 1000 non-members to mean what it says.

Attacks
-------
1. Loss threshold (Yeom, Giacomelli, Fredrikson, Jha 2018, "Privacy Risk in Machine
   Learning", https://arxiv.org/abs/1709.01604): score ``= -CE(f(x), y)``; members
   tend to have a lower loss.
2. LiRA (Carlini, Chien, Nasr, Song, Terzis, Tramer 2022, "Membership Inference
   Attacks From First Principles", https://arxiv.org/abs/2112.03822). ``K`` shadow
   models are trained with the target's recipe on random halves of the audit pool
   (members and non-members together), so that every example is IN the training set
   of ``K/2`` shadows and OUT of the others. Per example, the logit-scaled
   confidence ``phi = log(p_y / (1 - p_y)) = z_y - logsumexp_{j != y} z_j`` is
   modelled as ``N(mu_in, s_in^2)`` over IN shadows and ``N(mu_out, s_out^2)`` over OUT
   shadows. With the target's ``phi``:

   - online:  ``score = log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)``
   - offline: ``score = (phi - mu_out) / s_out`` (one-sided test against OUT only)

   With fewer than 16 shadows per side the variances are pooled over all examples
   (the paper's "fixed variance" variant, more stable with few shadows).

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
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedapp import task
from fedapp.config import BUILTIN_DATASETS, MODELS
from fedapp.data.specs import DATASET_SPECS, DatasetSpec, Split

LOW_FPRS = (0.01, 0.001)
_POOLED_BELOW = 16  # shadows per side under which LiRA pools the variances


@dataclass(frozen=True)
class Recipe:
    """How the target (fresh) and the shadow models are built and trained."""

    model: str = "mlp"
    hidden: int = 64
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.05
    dp_epsilon: float = 0.0  # > 0: DP-SGD with this budget
    dp_delta: float = 1e-5
    max_grad_norm: float = 1.0  # DP-SGD clip norm C

    def build(self, spec: DatasetSpec) -> nn.Module:
        return task.build_model(self.model, spec, self.hidden)

    def fit(self, model: nn.Module, data: Split, seed: int) -> None:
        if self.dp_epsilon <= 0:
            task.train(model, data, self.epochs, self.batch_size, self.lr, seed)
            return
        from fedapp.privacy import DPState, dp_train

        state = DPState.plan(target_epsilon=self.dp_epsilon, delta=self.dp_delta,
                             num_examples=len(data), batch_size=self.batch_size,
                             local_epochs=self.epochs, num_rounds=1)
        dp_train(model, data, self.epochs, self.batch_size, self.lr, seed, self.max_grad_norm,
                 state.noise_multiplier, state.delta, state)


@dataclass(frozen=True)
class AttackResult:
    """Scores (higher = member) of one attack, and its ROC summary."""

    name: str
    scores: np.ndarray
    is_member: np.ndarray  # bool

    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(self.is_member, self.scores)
        return fpr, tpr

    @property
    def auc(self) -> float:
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(self.is_member, self.scores))

    def tpr_at(self, max_fpr: float) -> float:
        """Largest TPR among thresholds with FPR <= ``max_fpr`` (no interpolation)."""
        fpr, tpr = self.roc()
        return float(tpr[fpr <= max_fpr].max())

    def summary(self) -> dict[str, float]:
        out = {"auc": self.auc}
        out |= {f"tpr@{100 * f:g}%fpr": self.tpr_at(f) for f in LOW_FPRS}
        return out


@torch.no_grad()
def _logits(model: nn.Module, data: Split) -> torch.Tensor:
    model.eval()
    return model(torch.from_numpy(np.ascontiguousarray(data.x)))


def example_losses(model: nn.Module, data: Split) -> np.ndarray:
    """Per-example cross-entropy ``-log p_y``."""
    y = torch.from_numpy(data.y)
    return nn.functional.cross_entropy(_logits(model, data), y, reduction="none").numpy()


def logit_confidence(model: nn.Module, data: Split) -> np.ndarray:
    """``phi = log(p_y / (1 - p_y)) = z_y - logsumexp_{j != y} z_j``, computed stably."""
    z = _logits(model, data).double()
    y = torch.from_numpy(data.y)
    true = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf"))
    return (true - torch.logsumexp(others, dim=1)).numpy()


def _concat(a: Split, b: Split) -> tuple[Split, np.ndarray]:
    pool = Split(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]))
    return pool, np.r_[np.ones(len(a), bool), np.zeros(len(b), bool)]


def loss_attack(model: nn.Module, members: Split, nonmembers: Split) -> AttackResult:
    """Yeom et al. 2018: score ``= -loss``; thresholding it is the attack."""
    pool, is_member = _concat(members, nonmembers)
    return AttackResult("loss", -example_losses(model, pool).astype(np.float64), is_member)


def balanced_masks(n: int, k: int, seed: int) -> np.ndarray:
    """``(k, n)`` bool: shadow ``j`` trains on example ``i``; each column has ``k // 2`` Trues."""
    rng = np.random.default_rng(seed)
    ranks = np.argsort(rng.random((k, n)), axis=0)
    return ranks < k // 2


def shadow_confidences(recipe: Recipe, spec: DatasetSpec, pool: Split, k: int,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train ``k`` shadows on balanced random halves of ``pool``; ``(phi (k, n), masks)``."""
    masks = balanced_masks(len(pool), k, seed)
    phis = np.empty((k, len(pool)))
    for j in range(k):
        task.set_seed(seed + 1 + j)
        model = recipe.build(spec)
        recipe.fit(model, Split(pool.x[masks[j]], pool.y[masks[j]]), seed + 1 + j)
        phis[j] = logit_confidence(model, pool)
    return phis, masks


def _gaussian_fit(phis: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and std of ``phis`` where ``mask``; pooled std with few shadows."""
    count = mask.sum(0)
    mean = np.where(mask, phis, 0.0).sum(0) / count
    sq = np.where(mask, (phis - mean) ** 2, 0.0)
    if count.min() >= _POOLED_BELOW:
        std = np.sqrt(sq.sum(0) / (count - 1))
    else:
        std = np.full(phis.shape[1], math.sqrt(sq.sum() / max(mask.sum() - phis.shape[1], 1)))
    return mean, np.maximum(std, 1e-6)


def lira_scores(target_phi: np.ndarray, phis: np.ndarray,
                masks: np.ndarray) -> dict[str, np.ndarray]:
    """Online and offline LiRA scores from the shadows' confidences (see the module doc)."""
    mu_in, s_in = _gaussian_fit(phis, masks)
    mu_out, s_out = _gaussian_fit(phis, ~masks)

    def log_normal(x: np.ndarray, mu: np.ndarray, s: np.ndarray) -> np.ndarray:
        return -0.5 * ((x - mu) / s) ** 2 - np.log(s)

    return {
        "lira-online": log_normal(target_phi, mu_in, s_in) - log_normal(target_phi, mu_out, s_out),
        "lira-offline": (target_phi - mu_out) / s_out,
    }


def lira_attack(model: nn.Module, members: Split, nonmembers: Split, recipe: Recipe,
                spec: DatasetSpec, shadow_models: int, seed: int) -> list[AttackResult]:
    """Carlini et al. 2022 with ``shadow_models`` shadows (>= 4: two per side at least)."""
    if shadow_models < 4:
        raise ValueError(f"LiRA needs >= 4 shadow models, got {shadow_models}")
    pool, is_member = _concat(members, nonmembers)
    phis, masks = shadow_confidences(recipe, spec, pool, shadow_models, seed)
    scores = lira_scores(logit_confidence(model, pool), phis, masks)
    return [AttackResult(name, s, is_member) for name, s in scores.items()]


def run_audit(model: nn.Module, members: Split, nonmembers: Split, recipe: Recipe,
              spec: DatasetSpec, shadow_models: int, seed: int = 0) -> list[AttackResult]:
    """Loss attack, plus LiRA (online and offline) when ``shadow_models > 0``."""
    results = [loss_attack(model, members, nonmembers)]
    if shadow_models > 0:
        results += lira_attack(model, members, nonmembers, recipe, spec, shadow_models, seed)
    return results


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
    p = argparse.ArgumentParser(prog="python -m fedapp.audit", description=__doc__.split("\n")[0])
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
