"""The cluster check (fedapp.robust.collusion): noisy copies of one crafted update."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedapp.attacks.noise import spread
from fedapp.attacks.omniscient import min_max, min_max_noisy
from fedapp.config.run import RunConfig
from fedapp.robust.collusion import centred_gram, cluster_ratio, pair_alignment
from fedapp.robust.detection import CHECKS, detect_anomalies
from fedapp.server.screen import Screen, exclusion_limit

N = 20


def honest_rows(n: int, d: int, alpha: float, seed: int, classes: int = 10) -> torch.Tensor:
    """Non-IID honest updates: a shared step plus a Dirichlet(alpha) mixture of class
    directions per node, and a little noise of the node's own (5% of a class direction's
    scale; on the benchmark's digits updates honest differences were mostly such signal)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(classes, d, generator=g, dtype=torch.float64)
    shared = torch.randn(d, generator=g, dtype=torch.float64)
    mix = torch.distributions.Dirichlet(torch.full((classes,), alpha))
    torch.manual_seed(seed)
    p = mix.sample((n,)).to(torch.float64)
    own = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (shared + p @ v + 0.05 * own).to(torch.float32)


def test_pair_alignment_is_the_mean_squared_cosine_to_the_other_rows() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 40)) + 3.0  # a common shift: the Gram is centred inside
    y = x - x.mean(axis=0)
    a = pair_alignment(centred_gram(x @ x.T))
    for i, j in [(0, 1), (2, 5), (6, 3)]:
        diff = y[i] - y[j]
        others = [k for k in range(7) if k not in (i, j)]
        expected = np.mean([(diff @ y[k]) ** 2 / (diff @ diff) / (y[k] @ y[k]) for k in others])
        assert a[i, j] == pytest.approx(expected, rel=1e-9)
        assert a[j, i] == pytest.approx(expected, rel=1e-9)
    assert np.isinf(np.diag(a)).all()


def test_copies_score_zero_and_tiny_federations_are_not_scored() -> None:
    x = np.random.default_rng(1).normal(size=(6, 30))
    x[4] = x[5]
    q = cluster_ratio(x @ x.T)
    assert q[4] == q[5] == 0.0 and (np.delete(q, [4, 5]) > 0.1).all()
    assert (cluster_ratio(x[:2] @ x[:2].T) == 1.0).all()


@pytest.mark.parametrize("colluders", [3, 4, 6])
@pytest.mark.parametrize("noise", [0.25, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_noisy_colluders_are_flagged_and_honest_non_iid_rows_are_not(
        colluders: int, noise: float, alpha: float) -> None:
    """One crafted direction (min-max) plus independent noise of ``noise`` typical honest
    nearest-neighbour distances per colluder: every colluder is flagged by the cluster
    check and no honest row is, at every noise scale."""
    honest = honest_rows(N - colluders, 2000, alpha, seed=colluders)
    x = torch.cat([honest, spread(min_max(honest, colluders), honest, noise)])
    report = detect_anomalies(x, cluster_threshold=0.1)
    cluster = {i for i, checks in report.checks.items() if "cluster" in checks}
    assert cluster == set(range(N - colluders, N))
    assert "cluster ratio" in report.reasons[N - 1]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("alpha", [0.1, 0.3, 1.0])
def test_honest_non_iid_federations_raise_no_cluster_flag(seed: int, alpha: float) -> None:
    report = detect_anomalies(honest_rows(N, 2000, alpha, seed), cluster_threshold=0.1)
    assert min(report.cluster_ratio) > 0.1
    assert not any("cluster" in c for c in report.checks.values())


def test_a_huge_row_does_not_make_honest_noise_look_like_a_cluster() -> None:
    """IID rows (one mean plus isotropic noise) and one row scaled x30: centred on the mean
    of all rows, every other row would point along the huge one and a pair of honest rows
    scored 0.08; the rows the norm check flags do not observe (``observers``)."""
    g = torch.Generator().manual_seed(8)
    for _ in range(3):
        x = torch.randn(6000, generator=g) + 0.5 * torch.randn(10, 6000, generator=g)
        x[0] *= 30
        report = detect_anomalies(x, cluster_threshold=0.1)
        assert all("cluster" not in report.checks.get(i, ()) for i in range(1, 10))


def test_the_default_screen_drops_min_max_noisy_colluders() -> None:
    """The shipped configuration (``detect-cluster``) with exclusion: the six min-max rows
    with independent noise (``min_max_noisy``, the benchmark's worst case at 30%) escape
    the norm, cosine, sign and copy checks (the screen before the cluster check dropped
    none of them here) and are dropped by the cluster check."""
    honest = honest_rows(14, 2000, 0.3, seed=11)
    x = torch.cat([honest, min_max_noisy(honest, 6)])
    cfg = RunConfig()
    assert cfg.detect_cluster > 0 and "cluster" in CHECKS
    screen = Screen("exclude", cfg.detect_norm_z, cfg.detect_cosine, cfg.detect_sign_skew,
                    cfg.detect_duplicate, cosine_spread=cfg.detect_cosine_spread,
                    cluster_threshold=cfg.detect_cluster)
    plan = screen.plan(list(range(N)), x, limit=exclusion_limit(N))
    assert set(range(14, 20)) <= set(plan.dropped)
    cluster = {i for i, checks in plan.report.checks.items() if "cluster" in checks}
    assert cluster == set(range(14, 20))


def test_monitoring_counts_the_cluster_check() -> None:
    """Prometheus' flagged / excluded counters carry a ``check="cluster"`` series, exported
    at 0 before any flag and counted when the check fires."""
    from fedapp.monitoring import FederationMetrics
    from fedapp.server.rounds import RoundStats

    m = FederationMetrics(run_id=1, dataset="digits", aggregator="fedavg", planned_rounds=2,
                          quorum=2, model_bytes=100, dp_budget=None)
    sample = m.registry.get_sample_value
    assert sample("fedapp_updates_flagged_total", {"check": "cluster"}) == 0
    stats = RoundStats(1, accepted=3, accepted_nodes=(1, 2, 3),
                       flagged_checks={2: ("cluster",), 3: ("cluster", "norm")},
                       excluded_nodes=(2, 3))
    row = {"round": 1, "replies": 3, "accepted": 3, "rejected": 0, "failures": 0,
           "flagged": 2, "excluded": 2}
    m.observe(row, stats, {})
    assert sample("fedapp_updates_flagged_total", {"check": "cluster"}) == 2
    assert sample("fedapp_updates_excluded_total", {"check": "cluster"}) == 2
