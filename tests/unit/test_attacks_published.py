"""The benchmarks' attacks fedapp plays too (mimic, Fang's), and their shared randomness."""

from __future__ import annotations

import pytest
import torch

from fedapp.attacks.noise import jitter, seeded, spread, typical_distance
from fedapp.attacks.published import fang, mimic, mimic_index
from fedapp.robust import coordinate_median, trimmed_mean


def heterogeneous(n: int = 9, d: int = 40, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen) * torch.linspace(0.2, 2.0, d) + torch.randn(
        d, generator=gen)


def test_mimic_copies_the_honest_row_farthest_along_the_top_principal_direction() -> None:
    honest = heterogeneous()
    centered = honest.double() - honest.double().mean(0)
    v = torch.linalg.svd(centered, full_matrices=False).Vh[0]
    expected = int(torch.argmax((centered @ v).abs()))
    assert mimic_index(honest) == expected
    rows = mimic(honest, 3)
    assert rows.shape == (3, honest.shape[1]) and rows.dtype == torch.float32
    assert all(torch.equal(row, honest[expected]) for row in rows)
    # One row far out along x: that is the one over-represented.
    line = torch.tensor([[0.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [6.0, -0.1]])
    assert mimic_index(line) == 3
    assert mimic_index(line[:1]) == 0
    with pytest.raises(ValueError, match="num_byzantine"):
        mimic(honest, 0)


def test_fang_goes_beyond_the_honest_extreme_against_the_mean_by_at_most_b() -> None:
    honest = heterogeneous(seed=1)
    h = honest.double()
    mu, lo, hi = h.mean(0), h.min(0).values, h.max(0).values
    b = 2.0
    rows = fang(honest, 4, b=b).double()
    assert rows.shape == (4, honest.shape[1])
    up = mu >= 0  # the honest nodes raise these: the colluders go below the minimum
    eps = 1e-6
    below, above = rows[:, up], rows[:, ~up]
    assert (below <= lo[up] + eps).all() and (above >= hi[~up] - eps).all()
    lo_b = torch.where(lo[up] > 0, lo[up] / b, lo[up] * b)
    hi_b = torch.where(hi[~up] > 0, hi[~up] * b, hi[~up] / b)
    assert (below >= lo_b - eps).all() and (above <= hi_b + eps).all()
    assert not torch.equal(rows[0], rows[1])  # independent draws per colluder
    assert torch.equal(fang(honest, 4, b=b), fang(honest, 4, b=b))  # reproducible
    exact = fang(honest, 2, b=1.0).double()  # b = 1: exactly the extremes
    assert torch.allclose(exact[0], torch.where(up, lo, hi), atol=1e-6)
    with pytest.raises(ValueError, match="b must be"):
        fang(honest, 2, b=0.5)


@pytest.mark.parametrize("rule", [coordinate_median, lambda x: trimmed_mean(x, f=3)])
def test_fang_drags_the_coordinate_wise_rules_against_the_mean(rule) -> None:  # type: ignore[no-untyped-def]
    honest = heterogeneous(n=12, seed=2)
    mu = honest.mean(0)
    clean = rule(honest).aggregate
    attacked = rule(torch.cat([honest, fang(honest, 3)])).aggregate
    moved = (attacked - clean) * torch.where(mu >= 0, 1.0, -1.0)
    assert (moved <= 1e-6).all() and (moved < -1e-3).float().mean() > 0.9


def test_noise_helpers_are_reproducible_and_sized() -> None:
    honest = heterogeneous(n=6, d=30, seed=3)
    assert torch.equal(torch.rand(3, generator=seeded(honest)),
                       torch.rand(3, generator=seeded(honest.clone())))
    h = honest.double()
    dist = torch.cdist(h, h).fill_diagonal_(float("inf"))
    assert typical_distance(honest) == pytest.approx(
        float(torch.quantile(dist.min(1).values, 0.5)), rel=1e-6)
    assert typical_distance(honest[:1]) == 0.0
    rows = honest[:1].repeat(3, 1)
    moved = jitter(rows, honest, 2.5)
    assert torch.linalg.vector_norm((moved - rows).double(), dim=1).tolist() == pytest.approx(
        [2.5] * 3, rel=1e-5)
    assert torch.equal(spread(rows, honest, 0.0), rows)
    with pytest.raises(ValueError, match="noise"):
        spread(rows, honest, float("nan"))
