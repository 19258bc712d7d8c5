"""Anomaly detection flags obvious outliers and not honest rows; reputation persists and decays."""

from __future__ import annotations

import json
import re

import pytest
import torch

from fedapp.defenses import DetectionReport, Reputation, detect_anomalies, robust_z_scores


def honest(n: int = 9, d: int = 20, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.linspace(-1.0, 1.0, d) + 0.5
    return base + 0.1 * torch.randn(n, d, generator=gen)


def test_robust_z_scores_by_hand() -> None:
    z = robust_z_scores(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0]))
    # median 3, |dev| = (2, 1, 0, 1, 97), MAD = 1
    assert z.tolist() == pytest.approx([-2 / 1.4826, -1 / 1.4826, 0.0, 1 / 1.4826, 97 / 1.4826])


def test_mad_zero_falls_back_to_mean_absolute_deviation() -> None:
    z = robust_z_scores(torch.tensor([1.0, 1.0, 1.0, 1.0, 5.0]))
    # MAD = 0; MeanAD = 4 / 5 -> scale 1.253314 * 0.8
    assert float(z[4]) == pytest.approx(4 / (1.253314 * 0.8))
    assert z[:4].tolist() == [0.0] * 4
    assert robust_z_scores(torch.full((4,), 2.0)).tolist() == [0.0] * 4


def test_honest_rows_are_rarely_flagged_and_obvious_outliers_always() -> None:
    honest_flags = 0
    for seed in range(30):
        x = honest(20, seed=seed)
        before = x.clone()
        report = detect_anomalies(torch.cat([x, 20.0 * x[:1], -x[1:2]]))
        assert isinstance(report, DetectionReport)
        assert len(report.norm_z) == len(report.cosine) == 22
        assert {20, 21} <= set(report.flagged)
        assert re.fullmatch(r"norm z=\d+\.\d > 3\.5", report.reasons[20])
        assert re.fullmatch(r"cosine -[01]\.\d\d < 0\.0", report.reasons[21])
        assert report.norm_z[20] > 3.5 and report.cosine[21] < -0.9
        assert min(report.cosine[:20]) > 0.9  # honest rows agree with the reference
        honest_flags += sum(i < 20 for i in report.flagged)
        assert torch.equal(x, before)
    assert honest_flags <= 6  # <= 1% of the 600 honest rows (chance norm z > 3.5)


def test_thresholds_and_reference_are_honoured() -> None:
    x = honest()
    attacked = torch.cat([x, 20.0 * x[:1]])
    assert detect_anomalies(attacked, norm_threshold=1e6).flagged == ()
    # Against a reference pointing the other way every row looks flipped.
    flipped = detect_anomalies(x, reference=-x.mean(0), norm_threshold=1e6)
    assert flipped.flagged == tuple(range(9))
    assert all(r.startswith("cosine") for r in flipped.reasons.values())
    with pytest.raises(ValueError):
        detect_anomalies(x, reference=torch.zeros(3))


def test_zero_rows_have_undefined_cosine_and_are_not_flagged_by_it() -> None:
    x = torch.cat([honest(), torch.zeros(1, 20)])
    report = detect_anomalies(x)
    assert report.cosine[9] == 0.0 and 9 not in report.flagged


def test_reputation_ema_persists_and_decays() -> None:
    rep = Reputation(memory=0.8)
    for _ in range(4):
        rep.update([1, 2, 3], flagged={3})
    assert rep.scores() == pytest.approx({1: 1.0, 2: 1.0, 3: 0.8**4})
    assert rep.distrusted() == {3}
    rep.update([1, 2], flagged=set())  # node 3 absent: keeps its score
    assert rep.scores()[3] == pytest.approx(0.4096)
    for _ in range(4):
        rep.update([1, 2, 3], flagged=set())
    assert rep.scores()[3] == pytest.approx(1 - (1 - 0.4096) * 0.8**4)
    assert rep.distrusted() == set()
    summary = rep.report()
    assert summary["reputation-rounds"] == 9 and summary["reputation-nodes"] == 3
    assert summary["reputation-min"] == pytest.approx(rep.scores()[3])
    assert summary["reputation-distrusted"] == 0


def test_reputation_round_trips_through_json() -> None:
    rep = Reputation(memory=0.5, initial=0.9, threshold=0.4)
    rep.update([2**62, 5], flagged={2**62})
    copy = Reputation.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert copy.scores() == rep.scores() and copy.to_dict() == rep.to_dict()
    assert copy.scores()[2**62] == pytest.approx(0.45)


def test_reputation_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="not among"):
        Reputation().update([1, 2], flagged={3})
    with pytest.raises(ValueError):
        Reputation(memory=1.0)


def test_most_severe_ranks_flagged_rows_by_how_far_past_the_thresholds() -> None:
    report = DetectionReport(flagged=(1, 2, 4), norm_z=(0.0, 7.0, 1.0, 0.0, 4.0),
                             cosine=(0.9, 0.5, -0.9, 0.8, 0.3), norm_threshold=3.5,
                             cosine_threshold=0.0)
    # severities: row 1 max(2.0, 0.5) = 2.0; row 2 max(0.29, 1.9) = 1.9; row 4 = 1.14
    assert report.severity(1) == pytest.approx(2.0)
    assert report.severity(2) == pytest.approx(1.9)
    assert report.most_severe(1) == (1,)
    assert report.most_severe(2) == (1, 2)
    assert report.most_severe(5) == report.most_severe(None) == (1, 2, 4)
    assert report.most_severe(0) == ()
