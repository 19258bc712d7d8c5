"""RobustStrategy: every malformed reply is rejected with a reason, never raised;
a valid round aggregates to the exact weighted mean of the updates."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedapp.robust.detection import clip_factors
from fedapp.server.strategy import RobustStrategy
from fedapp.updates import flatten
from tests.unit.strategy_stubs import GLOBAL, StubGrid, reply, shifted, start_round


def test_valid_round_is_exact_weighted_mean_of_updates() -> None:
    strategy, msgs = start_round(3)
    weights, deltas = [10, 30, 60], [1.0, -2.0, 4.0]
    replies = [reply(m, shifted(d), {"num-examples": w, "train-loss": d})
               for m, w, d in zip(msgs, weights, deltas, strict=True)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    expected_delta = sum(w * d for w, d in zip(weights, deltas, strict=True)) / sum(weights)
    expected = np.concatenate([v.ravel() for v in GLOBAL.values()]) + expected_delta
    np.testing.assert_allclose(flatten(arrays), expected, rtol=1e-6)
    assert list(arrays.keys()) == list(GLOBAL)
    assert metrics["accepted"] == 3 and metrics["rejected"] == 0
    assert metrics["train-loss"] == pytest.approx(expected_delta)


def test_server_lr_scales_the_update() -> None:
    strategy, msgs = start_round(2)
    strategy.server_lr = 0.5
    arrays, _ = strategy.aggregate_train(1, [reply(m, shifted(2.0)) for m in msgs])
    base = np.concatenate([v.ravel() for v in GLOBAL.values()])
    np.testing.assert_allclose(flatten(arrays), base + 1.0)


def _bad_replies(msg: Message) -> dict[str, tuple[Message, str]]:
    nan = {k: v.copy() for k, v in GLOBAL.items()}
    nan["w"][0, 0] = np.nan
    inf = {k: v.copy() for k, v in GLOBAL.items()}
    inf["b"][1] = np.inf
    wrong_dtype = {**GLOBAL, "b": GLOBAL["b"].astype(np.float64)}
    corrupt = reply(msg)
    corrupt.content["arrays"]["w"].data = b"garbage"
    no_arrays = Message(content=RecordDict({"metrics": MetricRecord({"num-examples": 1})}),
                        reply_to=msg)
    return {
        "missing key": (reply(msg, {"w": GLOBAL["w"]}), "missing ['b']"),
        "extra key": (reply(msg, {**GLOBAL, "z": GLOBAL["b"]}), "extra ['z']"),
        "wrong shape": (reply(msg, {**GLOBAL, "w": GLOBAL["w"].reshape(3, 2)}),
                        "array 'w' is float32[3, 2], expected float32[2, 3]"),
        "wrong dtype": (reply(msg, wrong_dtype), "array 'b' is float64[2], expected float32[2]"),
        "nan": (reply(msg, nan), "array 'w' has non-finite values"),
        "inf": (reply(msg, inf), "array 'b' has non-finite values"),
        "undecodable": (corrupt, "array 'w' cannot be decoded"),
        "no num-examples": (reply(msg, metrics={"train-loss": 1.0}),
                            "metric 'num-examples' is missing"),
        "zero num-examples": (reply(msg, metrics={"num-examples": 0}), "must be a positive"),
        "fractional num-examples": (reply(msg, metrics={"num-examples": 2.5}),
                                    "must be a positive integer"),
        "nan metric": (reply(msg, metrics={"num-examples": 3, "train-loss": float("nan")}),
                       "metric 'train-loss'=nan is not a finite number"),
        "no arrays": (no_arrays, "expected 1 ArrayRecord, got 0"),
        "two array records": (reply(msg, extra=ArrayRecord({"b": Array(GLOBAL["b"])})),
                              "expected 1 ArrayRecord, got 2"),
    }


BAD_KINDS = ["missing key", "extra key", "wrong shape", "wrong dtype", "nan", "inf", "undecodable",
             "no num-examples", "zero num-examples", "fractional num-examples", "nan metric",
             "no arrays", "two array records"]


def test_bad_kinds_list_is_complete() -> None:
    _, msgs = start_round(2)
    assert list(_bad_replies(msgs[0])) == BAD_KINDS


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_each_malformed_reply_kind_is_rejected_with_reason(kind: str) -> None:
    strategy, msgs = start_round(3)
    bad, reason = _bad_replies(msgs[0])[kind]
    replies = [bad, reply(msgs[1], shifted(1.0)), reply(msgs[2], shifted(3.0))]
    arrays, metrics = strategy.aggregate_train(1, replies)  # must not raise
    stats = strategy.history[1]
    assert list(stats.rejected) == [msgs[0].metadata.dst_node_id]
    assert reason in stats.rejected[msgs[0].metadata.dst_node_id]
    assert (metrics["accepted"], metrics["rejected"]) == (2, 1)
    base = np.concatenate([v.ravel() for v in GLOBAL.values()])
    np.testing.assert_allclose(flatten(arrays), base + 2.0)  # mean of the two good ones


def test_failed_nodes_counted_and_too_few_valid_keeps_previous_model() -> None:
    strategy, msgs = start_round(3, min_train_nodes=2)
    replies = [Message(Error(code=0, reason="boom"), reply_to=msgs[0]),
               reply(msgs[1], shifted(5.0)),
               reply(msgs[2], {"w": GLOBAL["w"]})]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert (metrics["failures"], metrics["rejected"], metrics["accepted"]) == (1, 1, 1)
    assert strategy.history[1].kept_previous
    assert "boom" in strategy.history[1].failed[msgs[0].metadata.dst_node_id]
    np.testing.assert_array_equal(flatten(arrays),
                                  np.concatenate([v.ravel() for v in GLOBAL.values()]))


def test_aggregate_evaluate_skips_bad_replies() -> None:
    strategy, msgs = start_round(3)
    good = [Message(RecordDict({"metrics": MetricRecord({"num-examples": n, "eval-accuracy": a})}),
                    reply_to=m) for m, n, a in ((msgs[0], 1, 1.0), (msgs[1], 3, 0.0))]
    bad = Message(RecordDict({"metrics": MetricRecord({"eval-accuracy": 0.5})}), reply_to=msgs[2])
    metrics = strategy.aggregate_evaluate(1, [*good, bad])
    assert metrics["eval-accuracy"] == pytest.approx(0.25)
    assert metrics["num-examples"] == 4


@pytest.mark.parametrize("mode", ["flag", "exclude"])
def test_detection_flags_outlier_and_exclude_mode_clips_it(
        mode: str, caplog: pytest.LogCaptureFixture) -> None:
    # Every row is a constant shift, so each lies wholly on one side of the median: the
    # sign check would flag them all; this test is about the norm check.
    strategy = RobustStrategy(min_train_nodes=2, min_available_nodes=6, fraction_evaluate=0.0,
                              detection=mode, sign_threshold=0.0)
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    msgs = list(strategy.configure_train(1, arrays, ConfigRecord(), StubGrid(6)))
    deltas = [1.0, 1.1, 0.9, 1.05, 0.95, 500.0]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(
            1, [reply(m, shifted(d)) for m, d in zip(msgs, deltas, strict=True)])
    outlier, honest = msgs[-1].metadata.dst_node_id, msgs[0].metadata.dst_node_id
    assert (f"node {outlier} flagged (norm z=" in caplog.text
            and caplog.text.count("scaled down to the norm bound") == (mode == "exclude"))
    stats = strategy.history[1]
    assert list(stats.flagged) == [outlier] and "norm z=" in stats.flagged[outlier]
    assert metrics["flagged"] == 1
    # Every node's cosine joined its reputation; all shifts point the same way.
    scores = strategy.reputation.scores()
    assert set(scores) == {m.metadata.dst_node_id for m in msgs}
    assert scores[honest] == pytest.approx(1.0) and scores[outlier] == pytest.approx(1.0)
    new = flatten(arrays)
    base = np.concatenate([v.ravel() for v in GLOBAL.values()])
    assert metrics["excluded"] == 0  # flagged by its norm alone: nothing to drop it for
    if mode == "exclude":  # scaled down to the norm bound, then averaged in
        factors = clip_factors(torch.tensor(deltas, dtype=torch.float64), 3.5)
        assert factors[:5].tolist() == [1.0] * 5 and 0.0 < float(factors[5]) < 0.01
        want = float((torch.tensor(deltas, dtype=torch.float64) * factors).mean())
        np.testing.assert_allclose(new - base, want, rtol=1e-5)
        assert 1.0 < want < 1.5
    else:
        assert (new - base).min() > 50  # flagged but still averaged in as it is


def test_exclusion_drops_every_flagged_update_whatever_the_byzantine_fraction() -> None:
    from fedapp.server.pipeline import AggregationPipeline

    # Two rows are flagged (pointing against the others, norm z huge); byzantine-fraction
    # 0.125 (f = 1 of 8) does not limit exclusion: up to 3 of 8 (fewer than half) may go,
    # so both are excluded.
    strategy = RobustStrategy(min_train_nodes=2, min_available_nodes=8, fraction_evaluate=0.0,
                              detection="exclude", sign_threshold=0.0,
                              aggregation=AggregationPipeline(byzantine_fraction=0.125))
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    msgs = list(strategy.configure_train(1, arrays, ConfigRecord(), StubGrid(8)))
    deltas = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, -40.0, -500.0]
    _, metrics = strategy.aggregate_train(1, [reply(m, shifted(d))
                                              for m, d in zip(msgs, deltas, strict=True)])
    assert metrics["flagged"] == 2 and metrics["excluded"] == 2
    stats = strategy.history[1]
    assert set(stats.flagged) == {msgs[6].metadata.dst_node_id, msgs[7].metadata.dst_node_id}
    assert set(stats.excluded_nodes) == set(stats.flagged)


def test_exclusion_keeps_a_strict_majority() -> None:
    from fedapp.server.screen import Screen, exclusion_limit

    assert [exclusion_limit(n) for n in (1, 2, 3, 4, 5, 10, 20, 21)] == [0, 0, 1, 1, 2, 4, 9, 10]
    # 4 of 12 rows far out and pointing against the others (norm, cosine), 3 more copies
    # of one row: 7 flagged, 5 may go. (The norm statistics are those of the 9 rows that
    # are no copy, 5 of them ordinary.)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, generator=gen) + 0.3 * torch.randn(12, 300, generator=gen)
    x[:4] *= -50.0 * (1.0 + torch.arange(4.0)[:, None] / 10)
    x[4:7] = x[4]
    plan = Screen("exclude", min_keep=2).plan(list(range(12)), x, limit=exclusion_limit(12))
    assert len(plan.report.flagged) == 7 and len(plan.dropped) == 5
    # The most severe go: the exact copies (ratio 0), then the largest norm z.
    z = plan.report.norm_z
    assert set(plan.dropped) == {4, 5, 6, *sorted(range(4), key=lambda i: -z[i])[:2]}
