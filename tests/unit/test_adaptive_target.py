"""The adaptive attacker's target is the strategy's own defense, state included, untouched."""

from __future__ import annotations

import torch

from fedapp.config import RunConfig
from fedapp.server.build import adaptive_target, build_strategy
from fedapp.server.pipeline import AggregationPipeline

ONES = torch.ones(10, dtype=torch.float64)


def rows(seed: int, n: int = 10, d: int = 30) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen) + 2.0


def test_centered_clipping_target_uses_the_current_center_and_leaves_it() -> None:
    cfg = RunConfig(aggregator="centered-clipping", clipping_tau=0.5, anomaly_detection="off",
                    weighting="uniform")
    robust, _ = build_strategy(cfg)
    robust.aggregation(rows(1), ONES)  # round 1: the center moves off zero
    center = robust.state.pipeline.center
    assert center is not None and float(center.abs().sum()) > 0
    center = center.clone()
    rule = adaptive_target(cfg, robust, lambda: list(range(10)))
    trial = rule(rows(2)).aggregate
    assert torch.equal(robust.state.pipeline.center, center)  # the real state is untouched
    assert torch.equal(rule(rows(2)).aggregate, trial)  # and every trial starts from it
    fresh = AggregationPipeline.from_config(cfg)(rows(2), ONES).aggregate
    real = robust.aggregation(rows(2), ONES).aggregate  # what round 2 really returns
    assert torch.allclose(trial, real, atol=1e-6)
    assert not torch.allclose(trial, fresh, atol=1e-3)


def test_bucketing_target_uses_the_call_count_and_the_order_the_strategy_sees() -> None:
    cfg = RunConfig(aggregator="median", preaggregation="bucketing", bucket_size=2,
                    anomaly_detection="off", weighting="uniform")
    robust, _ = build_strategy(cfg)
    robust.aggregation(rows(1), ONES)
    calls = robust.state.pipeline.calls
    real_rows = rows(3)
    positions = [2, 5, 7, 0, 9, 1, 3, 4, 6, 8]  # row k handed to the target is reply positions[k]
    handed = real_rows[positions]
    ordered = adaptive_target(cfg, robust, lambda: positions, row_positions=lambda: positions)
    trial = ordered(handed).aggregate
    unordered = adaptive_target(cfg, robust, lambda: positions)(handed).aggregate
    assert robust.state.pipeline.calls == calls
    real = robust.aggregation(real_rows, ONES).aggregate
    assert torch.equal(trial, real)
    assert not torch.equal(unordered, real)  # other rows share buckets


def test_target_weights_rows_by_their_reported_counts() -> None:
    cfg = RunConfig(anomaly_detection="off", weighting="num-examples")
    robust, _ = build_strategy(cfg)
    x = rows(4)
    counts = [float(10 * (i + 1)) for i in range(10)]
    weighted = adaptive_target(cfg, robust, lambda: list(range(10)), row_weights=lambda: counts)
    w = torch.tensor(counts, dtype=torch.float64)
    expected = (w / w.sum()).to(x.dtype) @ x
    assert torch.allclose(weighted(x).aggregate, expected, atol=1e-6)
    uniform = adaptive_target(cfg, robust, lambda: list(range(10)))
    assert torch.allclose(uniform(x).aggregate, x.mean(dim=0), atol=1e-6)
