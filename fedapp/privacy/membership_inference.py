"""Membership-inference attacks on a trained model: loss threshold and LiRA (pure scoring).

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

The CLI that picks a target, runs these attacks and writes the report is
:mod:`fedapp.privacy.audit`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedapp import task
from fedapp.data.specs import DatasetSpec, Split

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
