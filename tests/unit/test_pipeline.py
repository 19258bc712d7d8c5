"""AggregationPipeline: config -> weights -> pre-aggregation -> rule, and its state."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedapp.config import RunConfig
from fedapp.server.pipeline import AggregationPipeline
from fedapp.server.strategy import RobustStrategy

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def honest_and_outlier(n_honest: int = 6, d: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    honest = 1.0 + 0.01 * torch.randn(n_honest, d, generator=gen)
    return torch.cat([honest, torch.full((1, d), 1000.0)])


def test_from_config_binds_every_parameter() -> None:
    cfg = RunConfig(aggregator="trimmed-mean", aggregator_f=2, weighting="uniform",
                    weight_cap=3.0, clip_norm=5.0, preaggregation="nnm", bucket_size=3,
                    clipping_tau=0.5, seed=9)
    p = AggregationPipeline.from_config(cfg)
    assert (p.rule, p.f, p.weighting, p.weight_cap, p.clip_norm, p.preaggregation,
            p.bucket_size, p.tau, p.seed) == ("trimmed-mean", 2, "uniform", 3.0, 5.0, "nnm",
                                              3, 0.5, 9)


def test_capped_weights_stop_a_node_from_buying_the_mean() -> None:
    x = torch.tensor([[0.0], [0.0], [0.0], [10.0]])
    claims = torch.tensor([10.0, 10.0, 10.0, 1e6])
    plain = AggregationPipeline(weighting="num-examples")(x, claims).aggregate
    capped = AggregationPipeline(weighting="capped", weight_cap=2.0)(x, claims).aggregate
    assert plain.item() > 9.9  # the liar owns the mean
    assert capped.item() == pytest.approx(10.0 * 20 / 50)  # capped at 2 x median = 20


@pytest.mark.parametrize("rule", ["krum", "multikrum", "median", "trimmed-mean", "geomed"])
def test_robust_rules_ignore_one_outlier(rule: str) -> None:
    x = honest_and_outlier()
    agg = AggregationPipeline(rule=rule, f=1)(x, torch.full((7,), 10.0)).aggregate
    assert torch.all((agg > 0.9) & (agg < 1.1)), agg
    mean = AggregationPipeline(rule="fedavg")(x, torch.full((7,), 10.0)).aggregate
    assert torch.all(mean > 100)


def test_centered_clipping_keeps_its_center_between_rounds() -> None:
    p = AggregationPipeline(rule="centered-clipping", tau=0.5)
    x = torch.ones(5, 3)
    first = p(x, torch.ones(5)).aggregate
    assert torch.linalg.vector_norm(first).item() == pytest.approx(0.5, rel=1e-5)
    second = p(x, torch.ones(5)).aggregate  # starts from the first aggregate
    assert torch.linalg.vector_norm(second).item() == pytest.approx(1.0, rel=1e-5)


def test_bucketing_and_clipping_compose_with_a_rule() -> None:
    x = honest_and_outlier(n_honest=8)
    p = AggregationPipeline(rule="median", f=1, preaggregation="bucketing", bucket_size=2,
                            clip_norm=10.0)
    agg = p(x, torch.ones(9)).aggregate
    assert torch.linalg.vector_norm(agg).item() <= 10.0 + 1e-4
    assert torch.all((agg > 0.9) & (agg < 1.1))


class StubGrid:
    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


def test_strategy_keeps_previous_model_when_the_rule_cannot_run() -> None:
    strategy = RobustStrategy(aggregation=AggregationPipeline(rule="krum", f=2),
                              min_train_nodes=2, min_available_nodes=3, fraction_evaluate=0.0)
    arrays = ArrayRecord({"w": Array(torch.zeros(2).numpy())})
    msgs = list(strategy.configure_train(1, arrays, ConfigRecord(), StubGrid()))
    replies = [Message(RecordDict({"arrays": ArrayRecord({"w": Array(torch.ones(2).numpy())}),
                                   "metrics": MetricRecord({"num-examples": 5})}), reply_to=m)
               for m in msgs]
    new, metrics = strategy.aggregate_train(1, replies)  # krum needs n > 2f + 2 = 6
    assert strategy.history[1].kept_previous
    assert new["w"].numpy().tolist() == [0.0, 0.0]
    assert metrics["accepted"] == 3


def test_byzantine_fraction_sets_f_from_the_number_of_updates() -> None:
    p = AggregationPipeline.from_config(RunConfig(aggregator="trimmed-mean",
                                                  byzantine_fraction=0.2))
    assert [p.f_for(n) for n in (2, 4, 5, 9, 10, 20)] == [0, 0, 1, 1, 2, 4]
    # 10 updates, f = 2: the two largest and two smallest values go (f = 1 would give
    # 50 / 8, f = 0 the mean 15).
    x = torch.tensor([0.0] * 8 + [50.0, 100.0]).reshape(10, 1)
    assert p(x, torch.ones(10)).aggregate.item() == 0.0
    assert AggregationPipeline(rule="trimmed-mean", f=3).f_for(20) == 3  # a fixed f stays
    # a positive aggregator-f takes precedence over the fraction
    both = RunConfig(aggregator="trimmed-mean", aggregator_f=1, byzantine_fraction=0.2)
    assert AggregationPipeline.from_config(both).f_for(20) == 1


def test_adaptive_attack_target_uses_the_pipelines_f() -> None:
    from fedapp.server.build import adaptive_target, build_strategy

    cfg = RunConfig(aggregator="trimmed-mean", byzantine_fraction=0.2, anomaly_detection="off")
    robust, _ = build_strategy(cfg)
    nodes = list(range(10))
    rule = adaptive_target(cfg, robust, lambda: nodes)
    x = torch.tensor([0.0] * 8 + [50.0, 100.0]).reshape(10, 1)
    assert rule(x).aggregate.item() == 0.0  # f = 2 of 10
    nodes = nodes[5:]
    assert rule(x[5:]).aggregate.item() == pytest.approx(50 / 3)  # f = 1 of 5
    with pytest.raises(RuntimeError, match="5 node ids for 10 rows"):
        rule(x)


def test_adaptive_attack_target_is_the_whole_defense_and_changes_no_state() -> None:
    from fedapp.server.build import adaptive_target, build_strategy

    cfg = RunConfig(byzantine_fraction=0.2)  # the default: detection, exclusion, mean
    robust, _ = build_strategy(cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 200, generator=gen) + 1.0
    x[9] = 1000.0 * torch.randn(200, generator=gen)  # norm z far above 3.5: excluded
    rule = adaptive_target(cfg, robust, lambda: list(range(10)))
    assert torch.allclose(rule(x).aggregate, x[:9].mean(dim=0), atol=1e-5)
    assert robust.reputation.scores() == {} and robust.reputation.rounds == 0


def test_f_counts_excluded_rows_and_is_capped_to_what_the_rule_takes() -> None:
    from fedapp.server.pipeline import max_f

    assert [max_f("trimmed-mean", n) for n in (1, 2, 5, 14)] == [0, 0, 2, 6]
    assert [max_f("multikrum", n) for n in (3, 4, 5, 14)] == [0, 0, 1, 5]
    p = AggregationPipeline(rule="trimmed-mean", byzantine_fraction=0.3)
    # 20 replies, 6 excluded: f stays floor(0.3 * 20) = 6, not floor(0.3 * 14) = 4.
    x = torch.tensor([0.0] * 8 + [50.0] * 6).reshape(14, 1)
    assert p(x, torch.ones(14), num_replies=20).aggregate.item() == 0.0
    assert p(x, torch.ones(14)).aggregate.item() > 0.0  # f = 4 lets two 50s in
    # 10 replies, 6 excluded: f = 3 would need n > 6; capped to 1 for the 4 rows left.
    y = torch.tensor([0.0, 1.0, 2.0, 100.0]).reshape(4, 1)
    assert p(y, torch.ones(4), num_replies=10).aggregate.item() == 1.5
