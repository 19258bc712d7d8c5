"""Client-level central DP on the server: clipped mean plus Gaussian noise, and its accountant.

The mechanism (DP-FedAvg with fixed clipping; McMahan, Ramage, Talwar, Zhang 2018,
"Learning Differentially Private Recurrent Language Models",
https://arxiv.org/abs/1710.06963; Geyer, Klein, Nabi 2017,
https://arxiv.org/abs/1712.07557). Each round, with ``n`` the number of nodes
sampled (a public number fixed before the round):

    u_i'  = u_i * min(1, C / ||u_i||_2)                          (clip each update)
    agg   = (1 / n) * sum_i u_i'  +  N(0, (z C / n)^2 I_d)         (noisy mean)

Why this is private, and for which aggregation rules
----------------------------------------------------
Adding or removing one node's data changes the clipped *sum* by at most ``C`` in
L2 norm, so ``sum_i u_i' + N(0, (z C)^2 I)`` is the Gaussian mechanism with noise
multiplier ``z``; dividing by the public ``n`` is post-processing. The guarantee is
therefore valid for any rule whose output has L2 sensitivity ``<= C / n`` to one
node's clipped update, i.e. the **clipped (uniform) mean** computed here (and
weighted means whose weights are public and bounded, with ``C`` scaled by the
largest normalised weight). It is **not** valid, without a separate sensitivity
analysis, for the robust rules of :mod:`fedapp.robust`:

- Krum / Multi-Krum select whole rows: one node can move the output by up to
  ``2C`` (it can become, or stop being, the selected row), ``n`` times the bound;
- the coordinate-wise median and trimmed mean can shift every coordinate to an
  adjacent order statistic: per coordinate up to ``2C``, in L2 up to ``2C sqrt(d)``
  in the worst case (their *local* sensitivity is small, the global one is not);
- the geometric median and centered clipping iterate on the data; no
  ``C / n`` bound is known;
- data-dependent exclusion (``anomaly-detection = "exclude"``: z-scores, cosine
  to the others) makes *other* nodes' inclusion depend on the added or removed
  node, which the analysis does not cover either. A check that depends only on a
  node's own reply (shape, finiteness, a norm bound) is fine: that node then
  contributes its clipped update or nothing, still within ``C``.

The report (per-node norms, which rows were clipped) is not privatised: it is for
the (trusted) server operator and must not be published with the model.

So central DP replaces the aggregation rule by this clipped mean (the strategy's
validation still runs). Node-reported weights (``num-examples``) are ignored: a
node controls its weight, and weighting would void the ``C / n`` bound.

Accounting: one Gaussian release per round, with the node sampling fraction
``q = sampled / total`` as the subsampling rate (Poisson sampling, add/remove-one-
node neighbours; Opacus's RDP accountant). Flower samples a *fixed* number of
nodes without replacement; treating that as Poisson sampling with the same ``q``
is the usual approximation (McMahan et al. 2018 analyse Poisson sampling). For the
exact fixed-size, replace-one analysis, Flower 1.41 ships
``flwr.serverapp.RdpAccountant`` (``SamplingMethod.WITHOUT_REPLACEMENT``), but it
needs the optional ``dp-accounting`` package (``pip install "flwr[dp]"``), which is
not a dependency of fedapp; hence Opacus here. With ``q = 1`` there is no
amplification and the bound is exact. The server sees the raw updates: this
protects nodes from whoever sees the *models* (other nodes, users of the released
model), not from the server itself (that is what local DP-SGD is for).

The noise must not be predictable: the default generator is seeded from the OS's
entropy, never from the run config's seed (which nodes and operators know).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import torch

from fedapp.privacy.accounting import History, check_history, epsilon_of
from fedapp.robust.base import AggregationReport, AggregationResult, check_updates


def clip_updates(updates: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u_i * min(1, C / ||u_i||), ||u_i||)`` for every row ``u_i`` of ``(n, d)`` updates."""
    check_updates(updates)
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip norm C must be > 0 and finite, got {clip!r}")
    norms = torch.linalg.vector_norm(updates.to(torch.float64), dim=1)
    scale = torch.clamp(clip / torch.clamp(norms, min=1e-30), max=1.0)
    return (updates.to(torch.float64) * scale[:, None]).to(updates.dtype), norms


def central_dp_mean(updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                    clip: float, noise_multiplier: float, num_sampled: int | None = None,
                    generator: torch.Generator | None = None) -> AggregationResult:
    """Clipped uniform mean of the rows plus ``N(0, (z C / n)^2 I)`` (see the module doc).

    ``n = num_sampled`` is the public number of nodes sampled this round (default:
    the number of rows). Passing the planned count keeps the sensitivity bound exact
    when some sampled nodes fail: the noisy *sum* is divided by the public ``n``.
    ``weights`` are accepted for the strategy's ``aggregate_fn(updates, weights)``
    interface and ignored. ``generator`` None draws from a fresh OS-seeded generator.
    """
    clipped, norms = clip_updates(updates, clip)
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise multiplier z must be >= 0, got {noise_multiplier!r}")
    n = updates.shape[0] if num_sampled is None else num_sampled
    if n < updates.shape[0]:
        raise ValueError(f"num_sampled={n} is smaller than the {updates.shape[0]} updates")
    gen = generator or torch.Generator().manual_seed(secrets.randbits(63))
    std = noise_multiplier * clip / n
    noise = torch.randn(updates.shape[1], generator=gen, dtype=torch.float64) * std
    agg = clipped.to(torch.float64).sum(0) / n + noise
    report = AggregationReport(
        "central-dp", selected=tuple(range(updates.shape[0])),
        trimmed=tuple(int(i) for i in torch.nonzero(norms > clip).flatten()),
        scores=tuple(float(v) for v in norms),
        extra={"clip": float(clip), "noise-std": float(std), "denominator": float(n)},
    )
    return AggregationResult(agg.to(updates.dtype), report)


@dataclass
class CentralDP:
    """:func:`central_dp_mean` as a server ``Aggregation`` (``fedapp.server.pipeline``), with
    bound parameters. It tolerates no Byzantine rows (``f_for`` is 0): central DP replaces
    the robust rule, and exclusion would void the sensitivity bound (module docstring).

    The strategy passes the public per-round sample size as ``num_sampled`` (None: the rows
    received). The noise ``generator`` is OS-seeded unless ``seed`` is given (tests only)
    or a generator is passed (a restored server state's).
    """

    clip: float
    noise_multiplier: float
    seed: int | None = None
    generator: torch.Generator | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.generator is None:
            seed = secrets.randbits(63) if self.seed is None else self.seed
            self.generator = torch.Generator().manual_seed(seed)

    @property
    def name(self) -> str:
        return f"central-dp (clipped mean, C={self.clip}, z={self.noise_multiplier})"

    def f_for(self, n: int) -> int:
        return 0

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                 num_replies: int | None = None,
                 num_sampled: int | None = None) -> AggregationResult:
        return central_dp_mean(updates, weights, clip=self.clip,
                               noise_multiplier=self.noise_multiplier,
                               num_sampled=num_sampled, generator=self.generator)


@dataclass
class CentralAccountant:
    """Epsilon of client-level DP over the rounds, from Opacus's RDP accountant.

    Each :meth:`step` composes one round: a Gaussian release with noise multiplier
    ``z`` on a ``q = sampled / total`` Poisson sample of the nodes.
    """

    noise_multiplier: float
    delta: float
    history: History = field(default_factory=list)

    def step(self, sampled: int, total: int) -> float:
        """Account for one round; returns the epsilon spent after it."""
        if not 0 < sampled <= total:
            raise ValueError(f"need 0 < sampled <= total nodes, got {sampled}, {total}")
        q = sampled / total
        if self.history and self.history[-1][:2] == (self.noise_multiplier, q):
            z, rate, steps = self.history[-1]
            self.history[-1] = (z, rate, steps + 1)
        else:
            self.history.append((self.noise_multiplier, q, 1))
        return self.epsilon

    @property
    def rounds(self) -> int:
        return sum(steps for _, _, steps in self.history)

    @property
    def epsilon(self) -> float:
        return epsilon_of(self.history, self.delta)

    def to_dict(self) -> dict[str, object]:
        return {"noise_multiplier": self.noise_multiplier, "delta": self.delta,
                "history": [list(h) for h in self.history]}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CentralAccountant:
        return cls(float(data["noise_multiplier"]), float(data["delta"]),  # type: ignore[arg-type]
                   check_history(data["history"]))  # type: ignore[arg-type]
