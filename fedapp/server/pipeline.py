"""The aggregation protocol, and the robust pipeline: weights -> pre-aggregation -> rule.

``Aggregation`` is what ``RobustStrategy`` calls on the round's screened ``(n, d)`` update
matrix. Two implementations: ``AggregationPipeline`` (the robust rules of
``fedapp.robust``, parameters bound from ``RunConfig``) and
``fedapp.privacy.central.CentralDP`` (clipped mean plus Gaussian noise).

``aggregate_screened`` runs an ``Aggregation`` on the rows ``Screen.plan`` keeps: the plain
weighted mean (rule fedavg, no clipping or pre-aggregation, the default) as one
matrix-vector product over all rows with per-row coefficients, without copying the
matrix; any other aggregation on the materialised rows.

The pipeline's one piece of state between rounds (the centered-clipping center, i.e. the
server momentum of Karimireddy et al. 2021, and the call count that seeds bucketing) lives
in a ``PipelineState`` that is part of ``fedapp.server.state.ServerState``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from fedapp.config import RunConfig
from fedapp.robust import AGGREGATORS, AggregationReport, AggregationResult
from fedapp.robust.base import check_weights
from fedapp.robust.preaggregation import bucketing, clip_norm, nearest_neighbor_mixing
from fedapp.robust.weights import node_weights
from fedapp.server.screen import ScreenPlan


class Aggregation(Protocol):
    """One round's aggregation of the screened updates into one ``d``-vector."""

    @property
    def name(self) -> str:
        """A readable description, for the strategy summary."""
        ...

    def f_for(self, n: int) -> int:
        """How many Byzantine rows the rule tolerates among ``n`` replies (0: it assumes
        none); screening excludes at most that many."""
        ...

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor, *,
                 num_replies: int | None = None,
                 num_sampled: int | None = None) -> AggregationResult:
        """Aggregate the ``(n, d)`` ``updates`` with self-reported ``weights``.
        ``num_replies``: the valid replies before exclusion (default ``n``);
        ``num_sampled``: the nodes sampled this round, a public number (default ``n``)."""
        ...


@dataclass
class PipelineState:
    """What the pipeline carries from one round to the next."""

    center: torch.Tensor | None = None  # centered clipping's last aggregate (momentum)
    calls: int = 0  # rounds aggregated; seeds bucketing's shuffle


def max_f(rule: str, n: int) -> int:
    """The largest ``f`` rule ``rule`` accepts for ``n`` rows: ``n > 2f`` for the
    median-type rules, ``n > 2f + 2`` for Krum and Multi-Krum (0 if none)."""
    extra = 2 if rule in ("krum", "multikrum") else 0
    return max(0, (n - 1 - extra) // 2)


@dataclass
class AggregationPipeline:
    """The robust ``Aggregation``:

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
    state: PipelineState = field(default_factory=PipelineState, repr=False)

    @classmethod
    def from_config(cls, cfg: RunConfig, state: PipelineState | None = None
                    ) -> AggregationPipeline:
        return cls(rule=cfg.aggregator, f=cfg.aggregator_f,
                   byzantine_fraction=cfg.byzantine_fraction, weighting=cfg.weighting,
                   weight_cap=cfg.weight_cap, clip_norm=cfg.clip_norm,
                   preaggregation=cfg.preaggregation, bucket_size=cfg.bucket_size,
                   tau=cfg.clipping_tau, seed=cfg.seed, state=state or PipelineState())

    @property
    def name(self) -> str:
        pre = f" after {self.preaggregation}" if self.preaggregation != "none" else ""
        f = self.f if self.f > 0 or self.byzantine_fraction <= 0 else (
            f"floor({self.byzantine_fraction} n)")
        return f"{self.rule} (f={f}, weights {self.weighting}{pre})"

    @property
    def plain_mean(self) -> bool:
        """Whether this is the weighted mean of the rows as given (rule ``fedavg``, no
        norm clipping, no pre-aggregation): ``mean_of_rows`` can then stand in for it."""
        return self.rule == "fedavg" and self.clip_norm <= 0 and self.preaggregation == "none"

    def f_for(self, n: int) -> int:
        """The ``f`` used for ``n`` updates: the fixed ``f`` if positive, else
        ``floor(byzantine_fraction * n)``."""
        if self.f > 0:
            return self.f
        return int(self.byzantine_fraction * n + 1e-9)

    def __call__(self, updates: torch.Tensor, num_examples: torch.Tensor, *,
                 num_replies: int | None = None,
                 num_sampled: int | None = None) -> AggregationResult:
        """Aggregate ``updates``. ``num_replies`` is the number of updates before anomaly
        exclusion (default: ``len(updates)``): ``f`` is computed from it, because the
        excluded rows may all have been honest, so as many Byzantine rows may remain. An
        ``f`` from ``byzantine_fraction`` is then lowered, if needed, to the most the rule
        can take for the rows it gets (``n > 2f``, Krum ``n > 2f + 2``); a fixed ``f`` that
        the rule cannot take raises ``ValueError`` (the strategy keeps its model).
        ``num_sampled`` is not used by these rules."""
        self.state.calls += 1
        weights: torch.Tensor | None = node_weights(num_examples, self.weighting,  # type: ignore[arg-type]
                                                    self.weight_cap)
        x = updates
        if self.clip_norm > 0:
            x = clip_norm(x, self.clip_norm)
        if self.preaggregation == "bucketing":
            x, weights = bucketing(x, self.bucket_size, self.seed + self.state.calls), None
        f = self.f_for(num_replies or len(updates))
        if self.f == 0:  # from byzantine-fraction: never more than the rule can take
            f = min(f, max_f(self.rule, len(x)))
        if self.preaggregation == "nnm":
            x = nearest_neighbor_mixing(x, f)
        kwargs: dict[str, object] = {}
        if self.rule != "fedavg":
            kwargs["f"] = f
        if self.rule == "centered-clipping":
            kwargs |= {"tau": self.tau, "center": self.state.center}
        result = AGGREGATORS[self.rule](x, weights, **kwargs)
        if self.rule == "centered-clipping":
            self.state.center = result.aggregate.detach().clone()
        return result

    def mean_of_rows(self, updates: torch.Tensor, num_examples: torch.Tensor,
                     rows: Sequence[int], scales: torch.Tensor | None) -> AggregationResult:
        """What ``self(updates[rows] * scales[:, None], num_examples[rows])`` returns when
        ``plain_mean``, without that copy: ``agg = sum_k w_k s_k u_(r_k) / sum_k w_k``
        (McMahan et al.'s FedAvg with screening's clip factors ``s``), ``w`` the weights
        of the kept rows (capped against their own median), as one matrix-vector product
        with a coefficient of 0 for the rows not kept. Each row's coefficient is rounded
        once (``w_k s_k / sum w``) instead of scaling the row first, so the result agrees
        to float32 rounding. ``ValueError`` as the pipeline raises it."""
        if not self.plain_mean:
            raise ValueError(f"mean_of_rows needs the plain weighted mean, not {self.name}")
        self.state.calls += 1
        index = torch.tensor(list(rows), dtype=torch.long)
        w = node_weights(num_examples[index], self.weighting,  # type: ignore[arg-type]
                         self.weight_cap)
        w = check_weights(w, len(index))
        coef = w / w.sum() if scales is None else w / w.sum() * scales
        full = torch.zeros(len(updates), dtype=torch.float64).index_copy_(0, index, coef)
        aggregate = full.to(updates.dtype) @ updates
        return AggregationResult(aggregate, AggregationReport(
            "fedavg", selected=tuple(range(len(index)))))


def aggregate_screened(aggregation: Aggregation, updates: torch.Tensor, weights: torch.Tensor,
                       plan: ScreenPlan, *, num_replies: int, num_sampled: int
                       ) -> AggregationResult:
    """``aggregation`` on the rows screening keeps (``plan``), as on
    ``plan.materialise(updates, weights)``, but without copying the matrix when the
    aggregation is the plain weighted mean (``AggregationPipeline.mean_of_rows``)."""
    if (plan.changes_rows and isinstance(aggregation, AggregationPipeline)
            and aggregation.plain_mean):
        return aggregation.mean_of_rows(updates, weights, plan.keep, plan.scales)
    x, w, _, _ = plan.materialise(updates, weights)
    return aggregation(x, w, num_replies=num_replies, num_sampled=num_sampled)
