"""Spectral filtering: the MDS Gram, the scores, and which rows the filter removes."""

from __future__ import annotations

import pytest
import torch

from fedapp.attacks.omniscient import ipm, min_max
from fedapp.robust.distances import pairwise_sq_distances
from fedapp.robust.spectral import centered_gram, spectral_filter, spectral_scores


def _random(seed: int, n: int, d: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_one_dimensional_case_by_hand() -> None:
    # Rows 0, 1, 2, 100 on a line, f=1. Centered: -25.75, -24.75, -23.75, 74.25; in 1-D the
    # top direction is the line itself, so s_i = y_i^2 and row 3 goes; the mean of 0, 1, 2 is 1.
    x = torch.tensor([[0.0], [1.0], [2.0], [100.0]])
    scores = spectral_scores(pairwise_sq_distances(x))
    assert scores.tolist() == pytest.approx([25.75**2, 24.75**2, 23.75**2, 74.25**2])
    result = spectral_filter(x, f=1)
    assert result.aggregate.tolist() == [1.0]
    assert result.report.selected == (0, 1, 2) and result.report.trimmed == (3,)


def test_centered_gram_is_the_gram_of_the_centered_rows() -> None:
    x = _random(0, 6, 9).to(torch.float64) + 5.0
    y = x - x.mean(dim=0)
    assert torch.allclose(centered_gram(pairwise_sq_distances(x)), y @ y.T, atol=1e-9)


def test_scores_are_squared_projections_on_the_top_principal_direction() -> None:
    x = _random(1, 8, 5).to(torch.float64) * torch.tensor([5.0, 1, 1, 1, 1])
    y = x - x.mean(dim=0)
    v = torch.linalg.svd(y, full_matrices=False).Vh[0]
    assert torch.allclose(spectral_scores(pairwise_sq_distances(x)), (y @ v) ** 2, atol=1e-8)


def test_f_zero_is_the_weighted_mean() -> None:
    x = _random(2, 5, 4)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    expected = (w / w.sum()).to(torch.float32) @ x
    assert torch.allclose(spectral_filter(x, w, f=0).aggregate, expected, atol=1e-6)


@pytest.mark.parametrize("attack", ["min-max", "ipm"])
def test_colluding_rows_are_the_ones_removed(attack: str) -> None:
    # 14 honest rows with a common drift; 6 colluders send one crafted row (30%).
    honest = _random(3, 14, 200) * 0.5 + 1.0
    byzantine = min_max(honest, 6) if attack == "min-max" else ipm(honest, 6, epsilon=0.5)
    result = spectral_filter(torch.cat([honest, byzantine]), f=6)
    assert result.report.trimmed == tuple(range(14, 20))
    assert torch.allclose(result.aggregate, honest.mean(dim=0), atol=1e-5)


def test_several_independent_outliers_are_removed_one_by_one() -> None:
    # Three huge, mutually near-orthogonal rows: one top direction catches one at a time.
    honest = _random(4, 9, 500)
    outliers = _random(5, 3, 500) * 50.0
    result = spectral_filter(torch.cat([honest, outliers]), f=3)
    assert result.report.trimmed == (9, 10, 11)


def test_permuting_rows_permutes_the_choice() -> None:
    x = torch.cat([_random(6, 10, 30), _random(7, 3, 30) * 8.0])
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(8))
    a, b = spectral_filter(x, f=3), spectral_filter(x[perm], f=3)
    assert torch.allclose(a.aggregate, b.aggregate, atol=1e-6)
    assert sorted(perm[list(b.report.trimmed)].tolist()) == list(a.report.trimmed)


def test_needs_an_honest_majority() -> None:
    with pytest.raises(ValueError, match=r"spectral needs n > 2f, got n=6, f=3"):
        spectral_filter(_random(9, 6, 4), f=3)
