"""From the run config to one aggregation callable: weights -> pre-aggregation -> rule.

The rules in ``fedapp.robust`` are pure; this module binds their parameters from
``RunConfig`` and keeps the one piece of state a rule needs between rounds (the
centered-clipping center, i.e. the server momentum of Karimireddy et al. 2021).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedapp.config import RunConfig
from fedapp.robust import AGGREGATORS, AggregationResult
from fedapp.robust.preaggregation import bucketing, clip_norm, nearest_neighbor_mixing
from fedapp.robust.weights import node_weights


def max_f(rule: str, n: int) -> int:
    """The largest ``f`` rule ``rule`` accepts for ``n`` rows: ``n > 2f`` for the
    median-type rules, ``n > 2f + 2`` for Krum and Multi-Krum (0 if none)."""
    extra = 2 if rule in ("krum", "multikrum") else 0
    return max(0, (n - 1 - extra) // 2)


@dataclass
class AggregationPipeline:
    """``__call__(updates, num_examples)``, the strategy's ``aggregate_fn``.

    1. weights from self-reported ``num-examples``: as reported, capped at
       ``weight_cap`` x the median (default), or uniform;
    2. optional norm clipping of every update to ``clip_norm`` (0 = off);
    3. optional pre-aggregation: bucketing (bucket means of ``bucket_size`` rows,
       seeded per round; weights become uniform) or nearest-neighbour mixing with
       ``f``;
    4. the rule, with ``f`` for rules that take it and ``tau`` plus the previous
       aggregate as center for centered clipping.
    """

    rule: str = "fedavg"
    f: int = 0
    byzantine_fraction: float = 0.0
    weighting: str = "capped"
    weight_cap: float = 2.0
    clip_norm: float = 0.0
    preaggregation: str = "none"
    bucket_size: int = 2
    tau: float = 1.0
    seed: int = 0
    _center: torch.Tensor | None = field(default=None, repr=False)
    _calls: int = field(default=0, repr=False)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> AggregationPipeline:
        return cls(rule=cfg.aggregator, f=cfg.aggregator_f,
                   byzantine_fraction=cfg.byzantine_fraction, weighting=cfg.weighting,
                   weight_cap=cfg.weight_cap, clip_norm=cfg.clip_norm,
                   preaggregation=cfg.preaggregation, bucket_size=cfg.bucket_size,
                   tau=cfg.clipping_tau, seed=cfg.seed)

    @property
    def __name__(self) -> str:  # shown in the strategy summary
        pre = f" after {self.preaggregation}" if self.preaggregation != "none" else ""
        f = self.f if self.f > 0 or self.byzantine_fraction <= 0 else (
            f"floor({self.byzantine_fraction} n)")
        return f"{self.rule} (f={f}, weights {self.weighting}{pre})"

    def f_for(self, n: int) -> int:
        """The ``f`` used for ``n`` updates: the fixed ``f`` if positive, else
        ``floor(byzantine_fraction * n)``."""
        if self.f > 0:
            return self.f
        return int(self.byzantine_fraction * n + 1e-9)

    def __call__(self, updates: torch.Tensor, num_examples: torch.Tensor,
                 num_replies: int | None = None) -> AggregationResult:
        """Aggregate ``updates``. ``num_replies`` is the number of updates before anomaly
        exclusion (default: ``len(updates)``): ``f`` is computed from it, because the
        excluded rows may all have been honest, so as many Byzantine rows may remain. An
        ``f`` from ``byzantine_fraction`` is then lowered, if needed, to the most the rule
        can take for the rows it gets (``n > 2f``, Krum ``n > 2f + 2``); a fixed ``f`` that
        the rule cannot take raises ``ValueError`` (the strategy keeps its model)."""
        self._calls += 1
        weights: torch.Tensor | None = node_weights(num_examples, self.weighting,  # type: ignore[arg-type]
                                                    self.weight_cap)
        x = updates
        if self.clip_norm > 0:
            x = clip_norm(x, self.clip_norm)
        if self.preaggregation == "bucketing":
            x, weights = bucketing(x, self.bucket_size, self.seed + self._calls), None
        f = self.f_for(num_replies or len(updates))
        if self.f == 0:  # from byzantine-fraction: never more than the rule can take
            f = min(f, max_f(self.rule, len(x)))
        if self.preaggregation == "nnm":
            x = nearest_neighbor_mixing(x, f)
        kwargs: dict[str, object] = {}
        if self.rule != "fedavg":
            kwargs["f"] = f
        if self.rule == "centered-clipping":
            kwargs |= {"tau": self.tau, "center": self._center}
        result = AGGREGATORS[self.rule](x, weights, **kwargs)
        if self.rule == "centered-clipping":
            self._center = result.aggregate.detach().clone()
        return result
