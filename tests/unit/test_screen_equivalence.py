"""Screening and aggregation give what they gave before the blocked kernels, and the
default pipeline never copies the update matrix.

The reference is ``tests/reference_detection.reference_screen`` (``Screen.__call__`` as it
was) followed by the pipeline on the rows it returns. Flags, reasons, checks, the rows
dropped and the reputations must be equal; the materialised rows equal to 1e-6 relative
(clip factors come from norms summed in another order); aggregates within
``rtol=1e-5`` plus ``atol=1e-6 * max |x|`` (a weighted mean accumulated in float32: each
kept row's coefficient is rounded once instead of the row being scaled first).
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedapp.attacks.omniscient import alie
from fedapp.config import RunConfig
from fedapp.privacy.central import CentralDP
from fedapp.robust.detection_report import DetectionReport
from fedapp.server.build import build_strategy
from fedapp.server.pipeline import AggregationPipeline, aggregate_screened
from fedapp.server.screen import Reputation, Screen, ScreenPlan, exclusion_limit
from fedapp.updates import flatten
from tests.reference_detection import reference_screen
from tests.unit.strategy_stubs import StubGrid, reply


def rounds_of_updates(n: int, d: int, rounds: int, seed: int = 0) -> list[torch.Tensor]:
    """Honest rows plus a scaler (x30), a sign flipper and, from round 2, ALIE colluders
    (with a little noise each: exact copies tie in severity, see the last test)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for r in range(rounds):
        x = torch.randn(d, generator=gen) + 0.5 * torch.randn(n, d, generator=gen)
        x[0] *= 30
        x[1] *= -1
        if r > 0:
            x[-3:] = alie(x[2:-3], 3, z=0.5) + 0.02 * torch.randn(3, d, generator=gen)
        out.append(x)
    return out


def same_report(a: DetectionReport, b: DetectionReport) -> None:
    assert (a.flagged, a.checks, a.reasons) == (b.flagged, b.checks, b.reasons)
    np.testing.assert_allclose(a.cosine_reputation, b.cosine_reputation, atol=1e-5)


def same_reputation(a: Reputation, b: Reputation) -> None:
    """Equal rounds, nodes, flag counts; moving averages within the cosines' tolerance."""
    da, db = a.to_dict(), b.to_dict()
    assert (da["rounds"], da["nodes"].keys()) == (db["rounds"], db["nodes"].keys())
    for node, rec in da["nodes"].items():
        other = db["nodes"][node]
        assert (rec["rounds"], rec["flagged"]) == (other["rounds"], other["flagged"])
        assert rec["ema"] == pytest.approx(other["ema"], abs=1e-5)


def close(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> None:
    atol = 1e-6 * float(x.abs().max())
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=atol)


@pytest.mark.parametrize(("mode", "limit", "min_keep"),
                         [("exclude", 2, 2), ("exclude", None, 2), ("exclude", 1, 2),
                          ("exclude", None, 12), ("flag", 2, 2)])
def test_screen_equals_the_reference_round_after_round(mode: str, limit: int | None,
                                                        min_keep: int) -> None:
    n, d = 12, 4000
    new = Screen(mode, min_keep=min_keep, reputation=Reputation(memory=0.5))
    old = Screen(mode, min_keep=min_keep, reputation=Reputation(memory=0.5))
    nodes = list(range(100, 100 + n))
    w = torch.linspace(10, 40, n, dtype=torch.float64)
    for x in rounds_of_updates(n, d, 4):
        before = x.clone()
        got, want = new(nodes, x, w, limit=limit), reference_screen(old, nodes, x, w,
                                                                    limit=limit)
        assert torch.equal(x, before)
        same_report(got.report, want.report)
        assert got.dropped == want.dropped and torch.equal(got.weights, want.weights)
        np.testing.assert_allclose(got.updates.numpy(), want.updates.numpy(), rtol=1e-6)
        same_reputation(new.reputation, old.reputation)
    assert new.reputation.to_dict()["nodes"]["101"]["flagged"] >= 1


def test_record_false_changes_no_reputation_and_plan_copies_nothing() -> None:
    x = rounds_of_updates(10, 500, 1)[0]
    screen = Screen("exclude", min_keep=2)
    screen.plan(list(range(10)), x, limit=2)
    state = screen.reputation.to_dict()
    plan = screen.plan(list(range(10)), x, limit=2, record=False)
    assert screen.reputation.to_dict() == state
    assert plan.dropped and (plan.scales is None or len(plan.scales) == len(plan.keep))
    assert set(plan.keep) | set(plan.dropped) == set(range(10))


def pipelines() -> dict[str, object]:
    return {
        "fedavg capped": AggregationPipeline(byzantine_fraction=0.2),
        "fedavg num-examples": AggregationPipeline(weighting="num-examples"),
        "fedavg uniform": AggregationPipeline(weighting="uniform"),
        "fedavg clip-norm": AggregationPipeline(clip_norm=5.0),
        "median": AggregationPipeline(rule="median", byzantine_fraction=0.2),
        "multikrum": AggregationPipeline(rule="multikrum", byzantine_fraction=0.2),
        "bucketing": AggregationPipeline(preaggregation="bucketing", seed=3),
        "central dp": CentralDP(clip=1.0, noise_multiplier=0.0),
    }


@pytest.mark.parametrize("name", list(pipelines()))
@pytest.mark.parametrize("limit", [None, 1])
def test_aggregating_the_plan_equals_aggregating_the_materialised_rows(
        name: str, limit: int | None) -> None:
    n, d = 12, 3000
    x = rounds_of_updates(n, d, 2, seed=4)[1]
    counts = torch.tensor([50.0] * (n - 1) + [1e6], dtype=torch.float64)  # one inflated
    plan = Screen("exclude", min_keep=2).plan(list(range(n)), x, limit=limit)
    assert plan.changes_rows
    new_agg, old_agg = pipelines()[name], pipelines()[name]
    got = aggregate_screened(new_agg, x, counts, plan, num_replies=n, num_sampled=n)
    rows, weights, _, _ = plan.materialise(x, counts)
    want = old_agg(rows, weights, num_replies=n, num_sampled=n)
    if name.startswith("fedavg") and name != "fedavg clip-norm":  # the no-copy path
        close(got.aggregate, want.aggregate, x)
        assert got.report == want.report
        assert new_agg.state.calls == old_agg.state.calls == 1
    else:
        assert torch.equal(got.aggregate, want.aggregate) and got.report == want.report


def test_the_no_copy_mean_fails_as_the_pipeline_does() -> None:
    x = torch.randn(4, 10)
    plan = ScreenPlan(DetectionReport((), (0.0,) * 4, (0.0,) * 4), (0, 1), None, (2, 3))
    zeros = torch.tensor([0.0, 0.0, 5.0, 5.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="not all zero"):
        aggregate_screened(AggregationPipeline(weighting="num-examples"), x, zeros, plan,
                           num_replies=4, num_sampled=4)
    with pytest.raises(ValueError, match="median num-examples"):
        aggregate_screened(AggregationPipeline(), x, zeros, plan, num_replies=4,
                           num_sampled=4)
    with pytest.raises(ValueError, match="plain weighted mean"):
        AggregationPipeline(rule="median").mean_of_rows(x, zeros, (0, 1), None)


def layered(flat: np.ndarray) -> dict[str, np.ndarray]:
    half = flat.size // 2
    return {"w": flat[:half].reshape(2, -1), "b": flat[half:]}


def test_default_strategy_end_to_end_equals_the_reference(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """``build_strategy``'s default stack (exclude + capped fedavg) over three rounds: the
    same flags, exclusions, reputations and (to rounding) models as the reference
    screening followed by the pipeline, and the update matrix is never copied."""
    n, d = 10, 6000
    # Flower samples the nodes in a random order; exact copies tie in severity, and the
    # reference broke such ties by float32 rounding that depends on the row order (the new
    # code takes the lowest row), so the order is fixed here.
    random.seed(8)
    # The reference has no sign-copy check (test_sign_copies tests it): off here.
    cfg = RunConfig(min_available_nodes=n, fraction_evaluate=0.0, detect_sign_copies=False)
    robust, _ = build_strategy(cfg)
    old_screen = Screen("exclude", min_keep=cfg.min_train_nodes,
                        cosine_spread=cfg.detect_cosine_spread,
                        cosine_floor=cfg.detect_cosine_floor,
                        floor_rounds=cfg.reputation_warmup,
                        reputation=Reputation(memory=cfg.reputation_memory))
    monkeypatch.setattr(ScreenPlan, "materialise", lambda *a: pytest.fail("matrix copied"))
    global_flat = np.linspace(-1, 1, d, dtype=np.float32)
    counts = [100 + 10 * i for i in range(n - 1)] + [10**6]
    for r, x in enumerate(rounds_of_updates(n, d, 3, seed=8), start=1):
        arrays = ArrayRecord({k: Array(v) for k, v in layered(global_flat).items()})
        msgs = list(robust.configure_train(r, arrays, ConfigRecord(), StubGrid(n)))
        replies = [reply(m, layered(global_flat + row.numpy()), {"num-examples": c})
                   for m, row, c in zip(msgs, x, counts, strict=True)]
        new, _ = robust.aggregate_train(r, replies)
        nodes = [m.metadata.dst_node_id for m in msgs]
        rows = torch.from_numpy(np.stack([flatten(rp.content["arrays"]) for rp in replies])
                                - global_flat)
        weights = torch.tensor(counts, dtype=torch.float64)
        pipe = AggregationPipeline.from_config(cfg)
        kept, w, report, dropped = reference_screen(old_screen, nodes, rows, weights,
                                                    limit=exclusion_limit(n))
        expected = global_flat + cfg.server_lr * pipe(kept, w, num_replies=n).aggregate.numpy()
        stats = robust.history[r]
        assert stats.flagged == {nodes[i]: report.reasons[i] for i in report.flagged}
        assert stats.excluded_nodes == tuple(nodes[i] for i in dropped) and dropped
        same_reputation(robust.reputation, old_screen.reputation)
        close(torch.from_numpy(flatten(new)), torch.from_numpy(expected), rows)
        global_flat = flatten(new)


def test_exact_copies_tie_and_the_lowest_rows_go_first() -> None:
    """Exact copies have ratio 0 exactly, so they tie in severity and ``most_severe`` drops
    the lowest rows. (The reference's float64 Gram matrix, one MKL call, can leave a
    distance between identical rows: 1e-7 of the typical one for two of three ALIE copies
    in an earlier version of the end-to-end test above, so it dropped the other two.)"""
    x = rounds_of_updates(10, 3000, 1, seed=2)[0]
    x[6:] = x[6]
    plan = Screen("exclude", min_keep=2).plan(list(range(10)), x, limit=2)
    assert [plan.report.nearest_ratio[i] for i in range(6, 10)] == [0.0] * 4
    assert plan.dropped == (6, 7)



def rows_with_cosines(cosines: list[float]) -> torch.Tensor:
    """Rows whose cosine to the coordinate-wise median is exactly ``cosines`` (each > 0 or
    < 0): ``sign(c) * common + own``, ``own`` on coordinates no other row touches, so the
    median of the rows is ``common`` (most signs positive) and ``cos = sign(c) /
    sqrt(1 + |own|^2 / |common|^2)``."""
    n, width = len(cosines), 10
    rows = torch.zeros(n, 100 + width * n, dtype=torch.float64)
    for i, c in enumerate(cosines):
        rows[i, :100] = 1.0 if c > 0 else -1.0
        own = math.sqrt(100.0 * (1.0 / c**2 - 1.0))  # |common|^2 = 100
        rows[i, 100 + width * i: 100 + width * (i + 1)] = own / math.sqrt(width)
    return rows


def test_the_floor_counts_each_nodes_own_rounds() -> None:
    """A node flagged by the floor needs ``floor_rounds`` rounds of its own: one that joins
    late is judged by the round's cut until then, and ``record=False`` counts no round.
    The honest cosines spread from 0.02 to 0.9, so the round's cut lies far below -0.1."""
    screen = Screen("flag", norm_threshold=1e9, sign_threshold=0.0, duplicate_threshold=0.0,
                    cosine_spread=3.0, cosine_floor=-0.05, floor_rounds=3)  # cosine only
    rows = rows_with_cosines([0.02, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, -0.1])
    nodes = [*range(10), 99]  # node 99 pulls against the others
    for r in range(1, 5):
        if r < 3:
            screen.plan(nodes, rows, limit=None, record=False)  # counts nothing
        report = screen.plan(nodes, rows, limit=None).report
        assert report.cosine[10] == pytest.approx(-0.1) and report.cosine_cut < -0.3
        assert report.flagged == ((10,) if r >= 3 else ()), r
    assert "the floor, after 4 rounds" in report.reasons[10]
    late = screen.plan([*range(10), 77], rows, limit=None).report
    assert screen.reputation.evidence(77) == 1 and late.evidence[10] == 1
    assert late.flagged == ()
