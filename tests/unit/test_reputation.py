"""The cosine reputation persists and decays (a bias-corrected moving average that survives
a JSON round trip), and the reputation check's cut: a margin below the round's median, and
a floor for nodes with enough rounds of evidence."""

from __future__ import annotations

import json

import pytest

from fedapp.robust.detection import DetectionReport
from fedapp.server.screen import Reputation


def below_threshold(rep: Reputation) -> set[int]:
    return {node for node, score in rep.scores().items() if score < rep.threshold}


def test_reputation_is_a_bias_corrected_moving_average_of_cosines() -> None:
    rep = Reputation(memory=0.5)
    assert rep.update({1: 0.4, 2: -0.6}) == pytest.approx({1: 0.4, 2: -0.6})  # k=1: itself
    # k=2: (0.5 * 0.5 * c1 + 0.5 * c2) / (1 - 0.25)
    assert rep.preview({1: 0.1})[1] == pytest.approx((0.25 * 0.4 + 0.5 * 0.1) / 0.75)
    assert rep.scores()[1] == pytest.approx(0.4)  # preview records nothing
    rep.update({1: 0.1, 2: -0.2}, flagged={2})
    assert rep.scores() == pytest.approx({1: (0.1 + 0.05) / 0.75, 2: (-0.15 - 0.1) / 0.75})
    assert below_threshold(rep) == {2}
    rep.update({1: 0.3})  # node 2 absent: keeps its score
    assert rep.scores()[2] == pytest.approx(-0.25 / 0.75)
    for _ in range(10):
        rep.update({1: 0.3, 2: 0.3})  # old evidence decays
    assert rep.scores()[2] == pytest.approx(0.3, abs=1e-2) and below_threshold(rep) == set()
    assert rep.rounds == 13 and len(rep.scores()) == 2
    assert rep.to_dict()["nodes"]["2"]["flagged"] == 1


def test_reputation_round_trips_through_json() -> None:
    rep = Reputation(memory=0.5, threshold=0.1)
    rep.update({2**62: -0.5, 5: 0.2}, flagged={2**62})
    copy = Reputation.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert copy.scores() == rep.scores() and copy.to_dict() == rep.to_dict()
    assert copy.scores()[2**62] == pytest.approx(-0.5) and below_threshold(copy) == {2**62}


def test_reputation_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="not among"):
        Reputation().update({1: 0.0, 2: 0.0}, flagged={3})
    with pytest.raises(ValueError):
        Reputation(memory=1.0)
    with pytest.raises(ValueError):
        Reputation(threshold=2.0)


def test_cosine_cut_asks_for_an_outlier_of_the_round_too() -> None:
    from fedapp.robust.detection_report import cosine_cut

    honest = [0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.18, 0.2, -0.01]  # wide, small median
    med, mad = 0.1, 0.05  # by hand: median and MAD of the nine
    assert cosine_cut(honest, 0.0, 3.0) == pytest.approx(min(0.0, med - 3 * 1.4826 * mad))
    assert cosine_cut(honest, 0.0, 0.0) == 0.0  # no margin: the fixed threshold
    assert cosine_cut([0.9, 0.91, 0.92], 0.0, 3.0) == 0.0  # never above the threshold
    assert cosine_cut([0.1, -0.5], 0.0, 3.0) == 0.0  # too few values for a spread


def test_a_slightly_negative_honest_reputation_is_not_flagged_a_sign_flipper_is() -> None:
    report = DetectionReport(flagged=(), norm_z=(0.0,) * 10, cosine=(0.0,) * 10)
    reps = [0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.18, 0.2, -0.01, -0.6]
    fixed = report.with_reputation(reps)
    assert fixed.flagged == (8, 9)  # threshold 0, no margin: the honest -0.01 goes too
    margin = DetectionReport(flagged=(), norm_z=(0.0,) * 10, cosine=(0.0,) * 10,
                             cosine_spread=3.0).with_reputation(reps)
    assert margin.flagged == (9,)
    assert margin.cosine_cut < -0.1 and "robust stds below the round's median" in (
        margin.reasons[9])


def test_the_reputation_floor_needs_its_rounds_of_evidence() -> None:
    from fedapp.robust.detection_report import reputation_floor

    assert reputation_floor(-0.5, 3, -0.05, 3) == -0.05  # enough rounds: raised
    assert reputation_floor(-0.5, 2, -0.05, 3) == -0.5  # too few: the round's cut
    assert reputation_floor(-0.01, 9, -0.05, 3) == -0.01  # never lowers the cut
    assert reputation_floor(-0.5, 9, None, 3) == -0.5  # no floor


def bimodal_round(evidence: list[int]) -> DetectionReport:
    """14 honest reputations spread 0.05 to 0.42, six attackers' at -0.2 to -0.25: the
    attackers widen the round's spread so much that 3 robust stds reach below them."""
    honest_reps = [0.05 + 0.37 * i / 13 for i in range(14)]
    reps = [*honest_reps, -0.2, -0.21, -0.22, -0.23, -0.24, -0.25]
    report = DetectionReport(flagged=(), norm_z=(0.0,) * 20, cosine=(0.0,) * 20,
                             cosine_spread=3.0)
    return report.with_reputation(reps, evidence, floor=-0.05, floor_rounds=3)


def test_the_floor_catches_a_third_of_the_nodes_pulling_against_the_others() -> None:
    without = DetectionReport(flagged=(), norm_z=(0.0,) * 20, cosine=(0.0,) * 20,
                              cosine_spread=3.0).with_reputation(
        [0.05 + 0.37 * i / 13 for i in range(14)] + [-0.2, -0.21, -0.22, -0.23, -0.24, -0.25])
    assert without.flagged == () and without.cosine_cut < -0.25  # the spread hides them
    report = bimodal_round([3] * 20)
    assert report.flagged == tuple(range(14, 20))
    assert "the floor, after 3 rounds" in report.reasons[14]
    assert all(report.severity(i) > 1.0 for i in report.flagged)
    assert all(report.severity(i) < 1.0 for i in range(14))
    young = bimodal_round([3] * 14 + [2] * 6)  # the six joined a round later: not yet
    assert young.flagged == ()


def test_an_honest_node_just_below_zero_is_not_floored() -> None:
    reps = [0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.18, 0.2, -0.01, -0.04]
    report = DetectionReport(flagged=(), norm_z=(0.0,) * 10, cosine=(0.0,) * 10,
                             cosine_spread=3.0).with_reputation(reps, [12] * 10, floor=-0.05)
    assert report.flagged == ()  # -0.01 and -0.04 sit within the floor's margin
    with pytest.raises(ValueError, match="evidence counts"):
        report.with_reputation(reps, [3] * 9)
