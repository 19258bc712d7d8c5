"""Anomaly detection flags obvious outliers and not honest rows; a node's cosine reputation
replaces the round's cosine in the cosine check (the reputation itself: test_reputation.py)."""

from __future__ import annotations

import re

import pytest
import torch

from fedapp.attacks.omniscient import alie, min_max
from fedapp.robust import coordinate_median
from fedapp.robust.detection import (
    DetectionReport,
    clip_to_norm_threshold,
    detect_anomalies,
    nearest_ratio,
    robust_z_scores,
    sign_skew,
)
from fedapp.robust.detection_report import flag_rows
from fedapp.robust.robust_stats import z_scores_among


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
        # Sign skew off: with d = 20 one row's skew is too noisy (see the test below).
        report = detect_anomalies(torch.cat([x, 20.0 * x[:1], -x[1:2]]), sign_threshold=0.0)
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
    assert detect_anomalies(attacked, norm_threshold=1e6, sign_threshold=0.0).flagged == ()
    # Against a reference pointing the other way every row looks flipped.
    flipped = detect_anomalies(x, reference=-x.mean(0), norm_threshold=1e6,
                               sign_threshold=0.0)
    assert flipped.flagged == tuple(range(9))
    assert all(r.startswith("cosine") for r in flipped.reasons.values())
    with pytest.raises(ValueError):
        detect_anomalies(x, reference=torch.zeros(3))


def test_zero_rows_have_undefined_cosine_and_are_not_flagged_by_it() -> None:
    x = torch.cat([honest(), torch.zeros(1, 20)])
    report = detect_anomalies(x)
    assert report.cosine[9] == 0.0 and 9 not in report.flagged


def test_z_scores_among_the_rows_that_are_no_copy_by_hand() -> None:
    norms = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0, 0.5, 0.5, 0.5], dtype=torch.float64)
    copies = torch.tensor([False] * 5 + [True] * 3)
    z_all = robust_z_scores(norms)
    # median and MAD of [1, 2, 3, 4, 100]: 3 and 1, so z = (v - 3) / 1.4826
    z = z_scores_among(norms, z_all, copies)
    assert z.tolist() == pytest.approx(((norms - 3.0) / 1.4826).tolist())
    # fewer than half of the rows would be left, or no copies: the z-scores of all rows
    assert torch.equal(z_scores_among(norms, z_all, torch.tensor([True] * 5 + [False] * 3)),
                       z_all)
    assert torch.equal(z_scores_among(norms, z_all, torch.zeros(8, dtype=torch.bool)), z_all)


def test_sign_skew_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 5.0], [1.0, 1.0, 1.0, 1.0]])
    ref = torch.tensor([1.0, 1.0, 1.0, 1.0])
    # row 0: 3 above, 0 below, 1 equal; row 1: 1 above, 3 below; row 2: equal everywhere
    assert sign_skew(x, ref).tolist() == [1.0, -0.5, 0.0]


def test_sign_skew_flags_alie_and_not_honest_rows() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16, 2000, generator=gen) + torch.randn(2000, generator=gen)
    clean = detect_anomalies(x)
    assert max(abs(s) for s in clean.sign_skew) < 0.15 and clean.flagged == ()
    crafted = alie(x, 4, z=0.5)  # mu - 0.5 sigma on every coordinate, 4 colluders
    report = detect_anomalies(torch.cat([x, crafted]))
    assert report.flagged == (16, 17, 18, 19)
    assert all(report.sign_skew[i] < -0.5 for i in range(16, 20))
    assert re.search(r"sign skew -[01]\.\d\d beyond \+-0\.5", report.reasons[16])


def test_nearest_ratio_by_hand() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [3.0], [7.0]])
    # nearest distances 1, 1, 0, 0, 4: median 1
    assert nearest_ratio(x).tolist() == [1.0, 1.0, 0.0, 0.0, 4.0]
    assert nearest_ratio(x[:1]).tolist() == [1.0]
    copies = torch.tensor([[1.0], [1.0], [1.0], [5.0]])  # median nearest distance 0
    assert nearest_ratio(copies).tolist() == [0.0, 0.0, 0.0, float("inf")]


def test_copies_are_flagged_and_the_cosine_reference_leaves_suspects_out() -> None:
    # 14 honest rows, nearly orthogonal to each other as on non-IID data, and 6 colluders
    # sending one min-max row: they pull the median of all rows towards themselves.
    gen = torch.Generator().manual_seed(7)
    honest_rows = torch.randn(14, 400, generator=gen) + 0.3
    crafted = min_max(honest_rows, 6)
    x = torch.cat([honest_rows, crafted])
    report = detect_anomalies(x)
    assert set(range(14, 20)) <= set(report.flagged)
    assert re.search(r"nearest update at 0\.000 x the typical distance "
                     r"\(or sign disagreement\) < 0\.1", report.reasons[14])
    assert min(report.nearest_ratio[:14]) > 0.5
    reference = coordinate_median(honest_rows).aggregate  # the rows no check suspects
    expected = torch.nn.functional.cosine_similarity(crafted[0], reference, dim=0)
    assert report.cosine[14] == pytest.approx(float(expected), abs=1e-5)
    # With the copy check off nothing is suspected, the reference is the median of all rows,
    # and the crafted rows look better aligned with it than with the honest median.
    off = detect_anomalies(x, duplicate_threshold=0.0, sign_threshold=0.0)
    pulled = coordinate_median(x).aggregate
    assert off.cosine[14] == pytest.approx(float(torch.nn.functional.cosine_similarity(
        crafted[0], pulled, dim=0)), abs=1e-5)
    assert off.cosine[14] > report.cosine[14]


@pytest.mark.parametrize("z", [0.5, 1.0, 1.5, 2.0])
def test_copies_do_not_move_the_norm_and_sign_statistics_of_honest_rows(z: float) -> None:
    # 6 of 20 colluders send one ALIE row: one norm repeated six times shrinks the MAD of
    # all norms, and six rows below the mean on every coordinate drag the median of all
    # rows, so that honest rows looked like norm or sign outliers (at z=1 an honest row had
    # sign skew +0.58 against the median of all rows and was flagged). Both statistics
    # are taken among the rows that are no copy.
    gen = torch.Generator().manual_seed(11)
    spread = torch.linspace(0.6, 1.6, 14)[:, None]  # honest norms differ, as on non-IID data
    honest_rows = (torch.randn(14, 400, generator=gen) + 0.3) * spread
    report = detect_anomalies(torch.cat([honest_rows, alie(honest_rows, 6, z=z)]))
    assert report.flagged == tuple(range(14, 20))
    assert max(report.norm_z[:14]) < 3.5
    assert max(abs(s) for s in report.sign_skew[:14]) < 0.3


def test_reputation_replaces_the_rounds_cosine_in_the_cosine_check() -> None:
    x = honest()
    report = detect_anomalies(torch.cat([x, -x[:1]]), norm_threshold=1e6, sign_threshold=0.0)
    assert report.flagged == (9,)
    smoothed = report.with_reputation([0.5] * 9 + [0.3])  # its history says it agrees
    assert 9 not in smoothed.flagged and smoothed.cosine == report.cosine
    smoothed = report.with_reputation([0.5] * 8 + [-0.2, 0.3])
    assert smoothed.flagged == (8,)
    assert smoothed.reasons[8] == "cosine reputation -0.20 < 0.0 (this round 1.00)"
    with pytest.raises(ValueError, match="reputation scores"):
        report.with_reputation([0.0])


def test_severity_ranks_by_the_check_most_exceeded() -> None:
    report = DetectionReport(flagged=(0, 1, 2), norm_z=(7.0, 0.0, 0.0), cosine=(0.5, -0.5, 0.5),
                             sign_skew=(0.0, 0.0, -0.9))
    # 7 / 3.5 = 2.0; (1 + 0.5) / 1 = 1.5; 0.9 / 0.5 = 1.8
    assert [report.severity(i) for i in range(3)] == pytest.approx([2.0, 1.5, 1.8])
    assert report.most_severe(2) == (0, 2)


def test_a_row_flagged_by_its_norm_alone_is_not_excluded() -> None:
    # Row 0: norm only (a large honest hospital); row 1: norm and cosine; row 2: sign only.
    report = flag_rows((7.0, 9.0, 0.0, 0.0), (0.5, -0.5, 0.5, 0.5), (0.0, 0.0, -0.9, 0.0),
                       (), 3.5, 0.0, 0.5, 0.1)
    assert report.flagged == (0, 1, 2)
    assert report.checks[0] == ("norm",) and report.checks[1] == ("norm", "cosine")
    assert report.excludable == (1, 2)
    assert report.most_severe(None) == (1, 2) and report.most_severe(1) == (1,)
    # A report built without its checks keeps every flagged row excludable.
    bare = DetectionReport(flagged=(0,), norm_z=(7.0,), cosine=(0.5,))
    assert bare.excludable == (0,)


def test_clip_to_norm_threshold_scales_only_rows_past_it() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0], [100.0, 0.0]])
    # norms 1..4, 100: median 3, MAD 1 -> bound 3 + 3.5 * 1.4826
    out = clip_to_norm_threshold(x, 3.5)
    assert torch.equal(out[:4], x[:4])
    assert float(out[4].norm()) == pytest.approx(3 + 3.5 * 1.4826, rel=1e-6)
    assert torch.equal(clip_to_norm_threshold(x[:4], 3.5), x[:4])
