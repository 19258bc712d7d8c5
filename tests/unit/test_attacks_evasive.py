"""Attacks aimed at fedapp's own checks: each escapes the check it targets."""

from __future__ import annotations

import pytest
import torch

from fedapp.attacks.evasive import (
    alie_noisy,
    alie_noisy_adaptive,
    balanced_sides,
    honest_looking,
    sign_balanced,
    sleeper,
)
from fedapp.attacks.noise import typical_distance
from fedapp.attacks.omniscient import ALIE_Z_GRID, adaptive_search, alie
from fedapp.robust import coordinate_median, weighted_mean
from fedapp.robust.detection import detect_anomalies
from fedapp.server.screen import Reputation, Screen


def honest_matrix(n: int = 14, d: int = 60, seed: int = 0) -> torch.Tensor:
    """Honest updates that agree on a direction (mean > 0 everywhere), with spread."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen) + torch.linspace(0.5, 2.0, d)


def mixed_matrix(n: int = 14, d: int = 400, seed: int = 0) -> torch.Tensor:
    """Honest updates whose mean has both signs (60% of the coordinates positive)."""
    gen = torch.Generator().manual_seed(seed)
    offset = torch.where(torch.arange(d) % 5 < 3, 1.0, -1.0) * torch.linspace(0.1, 1.0, d)
    return torch.randn(n, d, generator=gen) * 0.5 + offset


def test_alie_noisy_is_alie_with_copies_a_set_share_of_the_typical_distance_apart() -> None:
    honest = honest_matrix()
    rows = alie_noisy(honest, 4, z=1.0, noise=0.5)
    offsets = torch.linalg.vector_norm((rows - alie(honest, 4, z=1.0)).double(), dim=1)
    assert offsets.tolist() == pytest.approx([0.5 * typical_distance(honest)] * 4, rel=1e-5)
    assert torch.equal(alie_noisy(honest, 4, z=1.0, noise=0.0), alie(honest, 4, z=1.0))
    report = detect_anomalies(torch.cat([honest, rows]))
    assert all("copy" not in report.checks.get(i, ()) for i in range(14, 18))
    copies = detect_anomalies(torch.cat([honest, alie(honest, 4, z=1.0)]))
    assert all("copy" in copies.checks[i] for i in range(14, 18))


def test_alie_noisy_adaptive_takes_the_most_damaging_z() -> None:
    honest = honest_matrix(n=9, d=20, seed=1)
    rows = alie_noisy_adaptive(honest, 3, coordinate_median)
    _, expected, _ = adaptive_search(lambda z: alie_noisy(honest, 3, z=z), honest,
                                     ALIE_Z_GRID, coordinate_median)
    assert torch.equal(rows, expected)
    assert torch.equal(alie_noisy_adaptive(honest, 3, weighted_mean),
                       alie_noisy(honest, 3, z=10.0))  # the mean: the largest z
    with pytest.raises(ValueError, match="noise"):
        alie_noisy_adaptive(honest, 3, weighted_mean, noise=-1.0)


def test_balanced_sides_push_against_the_mean_and_give_way_on_the_smallest() -> None:
    mu = torch.tensor([3.0, 2.0, 1.0, 0.5, -4.0])
    assert balanced_sides(mu).tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0]
    mu = torch.tensor([-3.0, -0.1, 2.0, -1.0])
    assert balanced_sides(mu).tolist() == [1.0, -1.0, -1.0, 1.0]  # -0.1 gives way
    t = balanced_sides(torch.linspace(0.1, 5.0, 101))  # one side only: 50 give way
    assert int((t > 0).sum()) == 50 and (t[50:] < 0).all()


@pytest.mark.parametrize("make", [honest_matrix, mixed_matrix])
def test_sign_balanced_escapes_the_sign_check_and_pushes_against_the_mean(make) -> None:  # type: ignore[no-untyped-def]
    honest = make()
    mu = honest.double().mean(0)
    rows = sign_balanced(honest, 5, z=1.0)
    report = detect_anomalies(torch.cat([honest, rows]))
    for i in range(len(honest), len(honest) + 5):
        assert abs(report.sign_skew[i]) < 0.25  # honest rows reach 0.21 (detection)
        assert "sign" not in report.checks.get(i, ()) and "copy" not in report.checks.get(i, ())
    assert float((rows.double().mean(0) - mu) @ mu) < 0  # the mean is pulled back
    alie_report = detect_anomalies(torch.cat([honest, alie_noisy(honest, 5, z=1.0)]))
    assert all("sign" in alie_report.checks[i] for i in range(len(honest), len(honest) + 5))
    assert torch.equal(sign_balanced(honest, 5, z=1.0), rows)  # reproducible


def test_honest_looking_rows_sit_as_far_from_the_mean_as_honest_rows_and_pass() -> None:
    honest = honest_matrix()
    rows = honest_looking(honest, 4)
    mu = honest.double().mean(0)
    radius = float(torch.quantile(torch.linalg.vector_norm(honest.double() - mu, dim=1), 0.5))
    assert torch.linalg.vector_norm(rows.double() - mu, dim=1).tolist() == pytest.approx(
        [radius] * 4, rel=1e-5)
    assert not set(detect_anomalies(torch.cat([honest, rows])).flagged) & set(range(14, 18))


def test_sleeper_behaves_for_delay_rounds_then_attacks_on_its_reputation() -> None:
    nodes = list(range(18))
    screen = Screen("flag", reputation=Reputation(memory=0.9))
    for server_round in range(1, 7):
        honest = honest_matrix(seed=server_round)
        rows = sleeper(honest, 4, weighted_mean, server_round=server_round, delay=5)
        if server_round <= 5:
            assert torch.equal(rows, honest_looking(honest, 4))
        else:
            assert torch.equal(rows, alie_noisy_adaptive(honest, 4, weighted_mean))
        report = screen.plan(nodes, torch.cat([honest, rows]), limit=0).report
        if server_round <= 5:
            assert not set(report.flagged) & set(range(14, 18))
    # Round 6 points away from the honest nodes, yet the reputation earned covers it ...
    for i in range(14, 18):
        assert report.cosine[i] < 0 < report.cosine_reputation[i]
        assert "cosine" not in report.checks.get(i, ())
    # ... where the same rows from nodes without a past are flagged by the cosine check.
    fresh = Screen("flag").plan(nodes, torch.cat([honest, rows]), limit=0).report
    assert all("cosine" in fresh.checks[i] for i in range(14, 18))
    with pytest.raises(ValueError, match="delay"):
        sleeper(honest, 4, weighted_mean, server_round=1, delay=-1)
