"""Attacks: each produces what its paper defines, on hand-checkable inputs."""

from __future__ import annotations

import math

import pytest
import torch

from fedapp.attacks import ATTACKS, malicious_ids
from fedapp.attacks.node import MODEL_ATTACKS, gaussian_noise, label_flip, scale, sign_flip
from fedapp.attacks.omniscient import (
    ALIE_Z_GRID,
    IPM_EPS_GRID,
    OMNISCIENT_ATTACKS,
    adaptive_search,
    alie,
    alie_adaptive,
    alie_z,
    ipm,
    ipm_adaptive,
    min_max,
    min_max_noisy,
    min_sum,
    perturbation,
)
from fedapp.robust import coordinate_median, trimmed_mean, weighted_mean
from fedapp.robust.detection import nearest_ratio

H = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])  # mu = (3, 4), sigma^2 = (8/3, 8)


def honest_matrix(n: int = 6, d: int = 5, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen) + torch.linspace(0.5, 2.0, d)


def test_registry_names_and_kinds() -> None:
    assert list(ATTACKS) == ["none", "label-flip", "label-flip-inflated", "sign-flip",
                             "gaussian", "scaling", "alie", "ipm", "min-max", "min-sum",
                             "min-max-noisy", "alie-adaptive", "ipm-adaptive", "mimic", "fang",
                             "alie-noisy-adaptive", "sign-balanced", "sleeper",
                             "fang-sign-noise"]
    assert set(OMNISCIENT_ATTACKS) == {k for k, v in ATTACKS.items() if v == "omniscient"}
    assert set(MODEL_ATTACKS) == {k for k, v in ATTACKS.items() if v == "model"}
    assert {k for k, v in ATTACKS.items() if v == "data"} == {"label-flip",
                                                               "label-flip-inflated"}


def test_label_flip_maps_y_to_c_minus_1_minus_y() -> None:
    y = torch.tensor([0, 1, 2, 9])
    assert label_flip(y, 10).tolist() == [9, 8, 7, 0]
    assert torch.equal(label_flip(label_flip(y, 10), 10), y)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        label_flip(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="integer"):
        label_flip(torch.tensor([0.0]), 3)


def test_node_side_model_attacks() -> None:
    u = torch.tensor([1.0, -2.0, 0.5])
    assert sign_flip(u).tolist() == [-1.0, 2.0, -0.5]
    assert scale(u, 10.0).tolist() == [10.0, -20.0, 5.0]
    noisy = gaussian_noise(u, 0.5, torch.Generator().manual_seed(7))
    expected = u + 0.5 * torch.randn(3, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(noisy, expected)
    big = gaussian_noise(torch.zeros(20000), 3.0, torch.Generator().manual_seed(1), replace=True)
    assert abs(float(big.std()) - 3.0) < 0.1 and abs(float(big.mean())) < 0.1
    with pytest.raises(ValueError):
        gaussian_noise(u, -1.0)


def test_alie_z_follows_baruch_formula() -> None:
    # n=10, f=3: s = floor(6) - 3 = 3, z = Phi^-1(7/10)
    assert alie_z(10, 3) == pytest.approx(0.5244005127)
    # n=50, f=12: s = 26 - 12 = 14, z = Phi^-1(36/50)
    assert alie_z(50, 12) == pytest.approx(0.5828415072)
    with pytest.raises(ValueError, match="undefined"):
        alie_z(10, 6)  # s = 0


def test_alie_is_mu_minus_z_sigma() -> None:
    out = alie(H, 2, z=1.5)
    row = torch.tensor([3.0 - 1.5 * math.sqrt(8 / 3), 4.0 - 1.5 * math.sqrt(8)])
    assert out.shape == (2, 2)
    assert torch.allclose(out, row.expand(2, 2))
    default = alie(H, 2)  # z from n = 3 + 2, f = 2: s = 1, Phi^-1(4/5)
    z = 0.8416212336
    assert torch.allclose(default[0], torch.tensor([3.0, 4.0]) - z * torch.tensor(
        [math.sqrt(8 / 3), math.sqrt(8)]), atol=1e-6)


def test_ipm_is_minus_epsilon_mean() -> None:
    assert torch.allclose(ipm(H, 3, epsilon=0.5), torch.tensor([[-1.5, -2.0]] * 3))
    assert torch.allclose(ipm(H, 1), torch.tensor([[-0.3, -0.4]]))


def test_perturbation_directions() -> None:
    assert torch.allclose(perturbation(H, "unit"), torch.tensor([-0.6, -0.8]))
    assert perturbation(H, "sign").tolist() == [-1.0, -1.0]
    assert torch.allclose(perturbation(H, "std"), -torch.tensor([math.sqrt(8 / 3), math.sqrt(8)]))
    with pytest.raises(ValueError):
        perturbation(H, "nope")


def _gamma(rows: torch.Tensor, honest: torch.Tensor, p: torch.Tensor) -> float:
    """Recover gamma from a crafted row m = mu + gamma p."""
    m, mu = rows[0].double(), honest.mean(0).double()
    return float((m - mu) @ p.double() / (p.double() @ p.double()))


def _terms(honest: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    h, mu, p = honest.double(), honest.double().mean(0), p.double()
    return (mu - h) @ p, ((mu - h) ** 2).sum(1), float(p @ p)


@pytest.mark.parametrize("kind", ["unit", "sign", "std"])
def test_min_max_keeps_distance_bound_with_maximal_gamma(kind: str) -> None:
    honest = honest_matrix()
    p = perturbation(honest, kind)
    rows = min_max(honest, 3, perturbation=kind, tol=1e-7)
    assert rows.shape == (3, 5) and torch.equal(rows[0], rows[2])
    bound = torch.cdist(honest.double(), honest.double()).max()
    assert torch.cdist(rows[:1].double(), honest.double()).max() <= bound * (1 + 1e-6)
    # Closed form: gamma* = min_i largest root of pp g^2 + 2 b_i g + c_i = R^2.
    b, c, pp = _terms(honest, p)
    gamma_star = float(((-b + torch.sqrt(b**2 - pp * (c - bound**2))) / pp).min())
    assert _gamma(rows, honest, p) == pytest.approx(gamma_star, rel=1e-5)
    over = honest.mean(0).double() + gamma_star * 1.01 * p.double()
    assert torch.cdist(over[None], honest.double()).max() > bound


def test_min_max_noisy_spreads_the_copies_by_the_set_share_of_the_typical_distance() -> None:
    honest = honest_matrix(n=8, d=50, seed=2)
    base = min_max(honest, 3)
    rows = min_max_noisy(honest, 3, noise=0.5)
    h = honest.double()
    dist = torch.cdist(h, h).fill_diagonal_(float("inf"))
    typical = float(torch.quantile(dist.min(dim=1).values, 0.5))
    offsets = torch.linalg.vector_norm(rows.double() - base.double(), dim=1)
    assert offsets.tolist() == pytest.approx([0.5 * typical] * 3, rel=1e-5)
    assert torch.equal(rows, min_max_noisy(honest, 3, noise=0.5))  # reproducible
    assert torch.equal(min_max_noisy(honest, 3, noise=0.0), base)
    # The copies are no longer copies: the nearest-neighbour check no longer sees them.
    assert float(nearest_ratio(torch.cat([honest, base]))[-1]) == 0.0
    assert float(nearest_ratio(torch.cat([honest, rows]))[-1]) > 0.1
    with pytest.raises(ValueError, match="noise"):
        min_max_noisy(honest, 3, noise=-1.0)


@pytest.mark.parametrize("kind", ["unit", "sign", "std"])
def test_min_sum_keeps_sum_bound_with_maximal_gamma(kind: str) -> None:
    honest = honest_matrix(seed=1)
    p = perturbation(honest, kind)
    rows = min_sum(honest, 2, perturbation=kind, tol=1e-7)
    h = honest.double()
    bound = (torch.cdist(h, h) ** 2).sum(1).max()
    assert ((rows[0].double() - h) ** 2).sum() <= bound * (1 + 1e-6)
    # Sum of b_i is 0, so gamma* = sqrt((R_sum - sum c) / (n pp)).
    _, c, pp = _terms(honest, p)
    gamma_star = math.sqrt(float(bound - c.sum()) / (honest.shape[0] * pp))
    assert _gamma(rows, honest, p) == pytest.approx(gamma_star, rel=1e-5)


def test_min_max_degenerate_inputs_return_the_mean() -> None:
    same = torch.ones(4, 3)
    assert torch.allclose(min_max(same, 2, perturbation="std"), same[:2])
    one = torch.tensor([[1.0, 2.0]])
    assert torch.allclose(min_sum(one, 1), one)  # R = 0: no room at all


def test_adaptive_search_picks_the_most_damaging_scale() -> None:
    honest = honest_matrix(7, 4, seed=2)
    mu = honest.mean(0)
    scale_, rows, damage = adaptive_search(lambda z: alie(honest, 2, z=z), honest, ALIE_Z_GRID,
                                           coordinate_median)
    for z in ALIE_Z_GRID:
        agg = coordinate_median(torch.cat([honest, alie(honest, 2, z=z)])).aggregate
        assert damage >= float(torch.linalg.vector_norm(agg - mu)) - 1e-6
    assert torch.equal(rows, alie(honest, 2, z=scale_))
    assert torch.equal(alie_adaptive(honest, 2, coordinate_median), rows)


def test_adaptive_variants_against_the_mean_take_the_largest_scale() -> None:
    honest = honest_matrix(5, 3, seed=3)
    assert torch.equal(alie_adaptive(honest, 2, weighted_mean), alie(honest, 2, z=10.0))
    assert torch.equal(ipm_adaptive(honest, 2, weighted_mean), ipm(honest, 2, epsilon=100.0))


def test_ipm_adaptive_passes_aggregator_parameters_and_beats_every_grid_point() -> None:
    honest = honest_matrix(8, 4, seed=4)
    mu = honest.mean(0)
    rows = ipm_adaptive(honest, 3, trimmed_mean, f=3)
    best = float(torch.linalg.vector_norm(
        trimmed_mean(torch.cat([honest, rows]), f=3).aggregate - mu))
    for eps in IPM_EPS_GRID:
        agg = trimmed_mean(torch.cat([honest, ipm(honest, 3, epsilon=eps)]), f=3).aggregate
        assert best >= float(torch.linalg.vector_norm(agg - mu)) - 1e-6
    with pytest.raises(ValueError):  # f is passed through: n = 11 <= 2 * 6
        ipm_adaptive(honest, 3, trimmed_mean, f=6)


def test_malicious_ids_is_seeded_rounded_and_order_free() -> None:
    nodes = [101, 7, 55, 3, 99, 12, 40, 8, 61, 23]
    chosen = malicious_ids(nodes, 0.3, seed=5)
    assert len(chosen) == 3 and chosen <= set(nodes)
    assert malicious_ids(list(reversed(nodes)), 0.3, seed=5) == chosen
    assert len(malicious_ids(nodes, 0.25, seed=5)) == 3  # 2.5 rounds half up
    assert len({frozenset(malicious_ids(nodes, 0.3, s)) for s in range(10)}) > 1
    assert malicious_ids(nodes, 0.0, 1) == set() and malicious_ids(nodes, 1.0, 1) == set(nodes)
    with pytest.raises(ValueError):
        malicious_ids(nodes, 1.5, 0)
