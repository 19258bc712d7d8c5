"""Distributed DP-SGD over secure aggregation (dp='distributed'): the node's clipped
gradient sum, the accountant, the noise a released sum carries, the server's step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity

from fedapp.config import ConfigError, RunConfig
from fedapp.data.specs import Split
from fedapp.privacy.distributed import (
    clipped_gradient_sum,
    epsilon_after,
    noise_multiplier,
    share_std,
)
from fedapp.secagg.bucket import settings_of
from fedapp.secagg.protocol import threshold
from fedapp.task import MLP
from tests.unit.secagg_loopback import LoopbackGrid, run_round, secure_stack

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
BIG = 2**63 + 7


def test_clipped_gradient_sum_equals_a_per_example_loop() -> None:
    torch.manual_seed(0)
    model = MLP(8, 3, hidden=5)
    rng = np.random.default_rng(0)
    data = Split(rng.normal(size=(40, 8)).astype(np.float32), rng.integers(0, 3, 40))
    gen = torch.Generator().manual_seed(3)
    sums, batch, _ = clipped_gradient_sum(model, data, 0.5, 0.1, gen)
    picked = (torch.rand(40, generator=torch.Generator().manual_seed(3)) < 0.5).numpy()
    assert batch == picked.sum() > 0
    expected = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for i in np.flatnonzero(picked):
        model.zero_grad()
        out = model(torch.as_tensor(data.x[i:i + 1]))
        torch.nn.functional.cross_entropy(out, torch.as_tensor(data.y[i:i + 1])).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
        for k, g in grads.items():
            expected[k] += g * min(1.0, 0.1 / norm)
    for k in expected:
        torch.testing.assert_close(sums[k], expected[k], atol=1e-6, rtol=1e-5)


def test_the_accountant_is_opacus_rdp_fed_q_sigma_and_steps() -> None:
    from opacus.accountants import RDPAccountant

    cfg = RunConfig(dp="distributed", secagg=True, dp_epsilon=3.0, dp_sample_rate=0.05,
                    num_server_rounds=200)
    z = noise_multiplier(cfg)
    for steps in (1, 50, 200):
        acc = RDPAccountant()
        acc.history = [(z, 0.05, steps)]
        assert epsilon_after(cfg, steps) == pytest.approx(acc.get_epsilon(cfg.dp_delta),
                                                          rel=0.01)
    assert epsilon_after(cfg, 200) <= 3.0 * 1.01


def test_distributed_dp_needs_secure_aggregation() -> None:
    with pytest.raises(ConfigError, match="dp='distributed' needs secagg=true"):
        RunConfig(dp="distributed")


def test_a_released_sum_carries_at_least_the_central_noise() -> None:
    """Four nodes with zero gradients: the bucket's step is pure noise of std z C sqrt(k/t)
    (k = 4 contributors, t = 3: shares sized for the worst case), scaled by -lr/(q N)."""
    dim = 20_000
    cfg = RunConfig(dp="distributed", secagg=True, secagg_bucket_size=4, dp_epsilon=3.0,
                    dp_sample_rate=0.05, num_server_rounds=100, learning_rate=0.5,
                    dp_max_grad_norm=1.0)
    ups = {BIG + i: np.zeros(dim) for i in range(4)}
    _strategy, layer = secure_stack(4, settings_of(cfg))
    arrays, metrics = run_round(LoopbackGrid(ups, cfg), layer, dim)
    assert arrays is not None and metrics is not None
    z, t = noise_multiplier(cfg), threshold(0.75, 4)
    per_node_records = 10  # LoopbackGrid reports num-examples=10
    scale = cfg.learning_rate / (cfg.dp_sample_rate * 4 * per_node_records)
    std = float(np.std(arrays["w"].numpy())) / scale
    assert std == pytest.approx(share_std(z, 1.0, t) * math.sqrt(4), rel=0.03)
    assert std >= z * 1.0
    assert metrics["dp-epsilon"] == pytest.approx(epsilon_after(cfg, 1), rel=1e-9)


def test_the_step_is_the_clipped_sum_over_the_expected_batch() -> None:
    """With noise negligible (epsilon huge), the global model moves by -lr * sum / (q N)."""
    dim = 30
    cfg = RunConfig(dp="distributed", secagg=True, secagg_bucket_size=3, dp_epsilon=1e6,
                    dp_sample_rate=0.1, num_server_rounds=1, learning_rate=0.2)
    rng = np.random.default_rng(4)
    ups = {BIG + i: rng.normal(0.0, 1.0, dim) for i in range(3)}
    _, layer = secure_stack(3, settings_of(cfg))
    arrays, _ = run_round(LoopbackGrid(ups, cfg), layer, dim)
    assert arrays is not None
    expected = -0.2 * np.sum(list(ups.values()), axis=0) / (0.1 * 30)
    noise = share_std(noise_multiplier(cfg), cfg.dp_max_grad_norm, 2) * math.sqrt(3)
    np.testing.assert_allclose(arrays["w"].numpy(), expected,
                               atol=6 * noise * 0.2 / (0.1 * 30) + 1e-6)


def test_each_round_is_charged_to_the_hospital_ledger_at_its_own_delta(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedapp.config import NodeConfig
    from fedapp.privacy.budget import BudgetExhausted
    from fedapp.privacy.distributed import distributed_round
    from fedapp.privacy.ledger import node_budget

    cfg = RunConfig(dp="distributed", secagg=True, dp_epsilon=3.0, dp_sample_rate=0.2,
                    num_server_rounds=4)
    node = NodeConfig(partition_id=0, num_partitions=2, privacy_ledger=str(tmp_path / "l.json"),
                      dp_budget=100.0, dp_delta=1e-7)
    rng = np.random.default_rng(1)
    data = Split(rng.normal(size=(30, 8)).astype(np.float32), rng.integers(0, 3, 30))
    model = MLP(8, 3, hidden=4)
    for r in (1, 2, 3):
        budget = node_budget(cfg, node, run=9, server_round=r)
        grads, _, eps = distributed_round(cfg, model, data, r, budget, deterministic_seed=r)
        assert grads.shape == (sum(v.numel() for v in model.state_dict().values()),)
        assert eps == pytest.approx(epsilon_after(cfg, r))
    # three (z, q, 1 step) entries, composed at the hospital's delta (1e-7), not the run's
    assert budget.spent() == pytest.approx(epsilon_after(cfg, 3, delta=1e-7), rel=1e-6)
    assert budget.spent() > epsilon_after(cfg, 3)
    with pytest.raises(BudgetExhausted, match="would bring epsilon"):
        distributed_round(cfg, model, data, 9, None)  # past the run's planned rounds
