"""fedapp.privacy: calibration, DP-SGD state across rounds, budget, central DP."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict
from flwr.common import serde
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from fedapp.data.specs import DATASET_SPECS, Split
from fedapp.privacy import (
    CentralAccountant,
    CentralDP,
    DPState,
    calibrate_noise,
    central_dp_mean,
    check_model,
    clip_updates,
    dp_train,
    load_state,
    make_compatible,
    plan_steps,
    store_state,
    would_exceed,
)
from fedapp.task import MLP, SmallCNN, build_model

DELTA = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def opacus_epsilon(history: list[tuple[float, float, int]], delta: float = DELTA) -> float:
    acc = RDPAccountant()
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


def toy_data(n: int, seed: int = 0) -> Split:
    """Separable 10-class data shaped like flattened 8x8 digits (no sklearn import)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = (rng.random((n, 64)) * 0.2 + np.eye(10)[y].repeat(7, axis=1)[:, :64]).astype(np.float32)
    return Split(x, y.astype(np.int64))


def through_flower_serde(state: RecordDict) -> RecordDict:
    """What deployment does to context.state between two messages."""
    return serde.recorddict_from_proto(serde.recorddict_to_proto(state))


# --- calibration -------------------------------------------------------------------------


@pytest.mark.parametrize(("epsilon", "rate", "steps"), [(3.0, 0.25, 120), (1.0, 0.05, 600),
                                                        (8.0, 1.0, 30)])
def test_calibrated_noise_spends_the_target_after_the_planned_steps(
        epsilon: float, rate: float, steps: int) -> None:
    z = calibrate_noise(epsilon, DELTA, rate, steps)
    spent = opacus_epsilon([(z, rate, steps)])
    assert spent <= epsilon
    assert spent == pytest.approx(epsilon, rel=0.01)
    # Tight: 2 % less noise already overspends.
    assert opacus_epsilon([(0.98 * z, rate, steps)]) > epsilon


def test_plan_calibrates_once_for_all_rounds() -> None:
    state = DPState.plan(target_epsilon=2.0, delta=DELTA, num_examples=100, batch_size=32,
                         local_epochs=3, num_rounds=10)
    assert (state.sample_rate, state.steps_per_round, state.planned_steps) == (0.25, 12, 120)
    assert state.noise_multiplier == calibrate_noise(2.0, DELTA, 0.25, 120)
    assert plan_steps(100, 32) == (0.25, 4)  # ceil(100 / 32) batches, q = 1 / 4


def test_would_exceed_refuses_the_round_past_the_budget() -> None:
    state = DPState.plan(target_epsilon=2.0, delta=DELTA, num_examples=100, batch_size=32,
                         local_epochs=3, num_rounds=10)
    step = (state.noise_multiplier, state.sample_rate, state.steps_per_round)
    for done in (0, 5, 9):  # every planned round fits
        s = state.with_history([step] * done)
        assert not would_exceed(s, state.steps_per_round, state.sample_rate,
                                state.noise_multiplier, DELTA, 2.0)
    spent = state.with_history([step] * 10)
    assert spent.epsilon == pytest.approx(2.0, rel=0.01)
    assert would_exceed(spent, state.steps_per_round, state.sample_rate,
                        state.noise_multiplier, DELTA, 2.0)
    assert would_exceed(state, 1, state.sample_rate, 0.5 * state.noise_multiplier, DELTA, 0.1)


def test_epsilon_of_is_opacus_rdp_accountant_exactly_and_caches_each_step() -> None:
    from fedapp.privacy.accounting import _step_rdp, epsilon_of

    history = [(2.0, 0.25, 12), (0.9, 0.05, 700), (2.0, 0.25, 36)]
    assert epsilon_of(history, DELTA) == opacus_epsilon(history)  # bit for bit
    hits = _step_rdp.cache_info().hits
    more = [(2.0, 0.25, 48), (0.9, 0.05, 701)]  # new step counts, same (z, q)
    assert epsilon_of(more, DELTA) == opacus_epsilon(more)
    assert _step_rdp.cache_info().hits == hits + 2  # no RDP series recomputed
    assert epsilon_of([], DELTA) == 0.0
    assert epsilon_of([(2.0, 0.25, 0)], DELTA) == 0.0


# --- DP-SGD with Opacus ------------------------------------------------------------------


def test_dp_train_state_persists_across_rounds_through_context_state() -> None:
    data = toy_data(64)
    state = DPState.plan(target_epsilon=4.0, delta=DELTA, num_examples=64, batch_size=16,
                         local_epochs=1, num_rounds=2)
    context_state = RecordDict()
    model = MLP(64, 10, hidden=16)
    spent = []
    for server_round in (1, 2):
        current = load_state(context_state) or state
        assert not would_exceed(current, current.steps_per_round, current.sample_rate,
                                current.noise_multiplier, DELTA, 4.0)
        _, _, eps, new = dp_train(model, data, 1, 16, 0.05, server_round, 1.0,
                                  current.noise_multiplier, DELTA, current)
        assert new.steps_taken == server_round * state.steps_per_round
        assert eps == pytest.approx(opacus_epsilon(list(new.history)))
        spent.append(eps)
        store_state(context_state, new)
        context_state = through_flower_serde(context_state)
        assert load_state(context_state) == new
    assert 0 < spent[0] < spent[1]
    assert spent[1] == pytest.approx(4.0, rel=0.01)  # the plan spends the budget exactly
    final = load_state(context_state)
    assert final is not None
    assert would_exceed(final, final.steps_per_round, final.sample_rate,
                        final.noise_multiplier, DELTA, 4.0)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_dp_train_returns_a_plain_model(kind: str) -> None:
    model = build_model(kind, DATASET_SPECS["digits"], hidden=16)
    plain_keys = list(build_model(kind, DATASET_SPECS["digits"], hidden=16).state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = DPState.plan(target_epsilon=5.0, delta=DELTA, num_examples=32, batch_size=16,
                         local_epochs=1, num_rounds=1)
    dp_train(model, toy_data(32), 1, 16, 0.05, 0, 1.0, state.noise_multiplier, DELTA, state)
    assert list(model.state_dict()) == plain_keys
    assert all(not hasattr(p, "grad_sample") for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    fresh = build_model(kind, DATASET_SPECS["digits"], hidden=16)
    fresh.load_state_dict(model.state_dict(), strict=True)


def test_dp_noise_is_secret_unless_asked_to_be_deterministic() -> None:
    data = toy_data(32)
    state = DPState.plan(target_epsilon=5.0, delta=DELTA, num_examples=32, batch_size=16,
                         local_epochs=1, num_rounds=1)

    def weights(deterministic: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = MLP(64, 10, hidden=8)
        dp_train(model, data, 1, 16, 0.05, 7, 1.0, state.noise_multiplier, DELTA, state,
                 deterministic_noise=deterministic)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(weights(True), weights(True))
    assert not torch.equal(weights(False), weights(False))  # same seed, fresh noise


def test_state_record_round_trip_and_rejects_garbage() -> None:
    state = DPState.plan(target_epsilon=2.0, delta=DELTA, num_examples=100, batch_size=10,
                         local_epochs=1, num_rounds=3).with_history([(1.5, 0.1, 10), (2.0, 0.1, 3)])
    assert DPState.from_record(state.to_record()) == state
    with pytest.raises(ValueError, match="DP-SGD state"):
        DPState.from_record(ConfigRecord({"version": 1, "accountant": "rdp"}))
    bad = state.to_record()
    bad["history-steps"] = [10]
    with pytest.raises(ValueError, match="length"):
        DPState.from_record(bad)


def test_batchnorm_model_is_refused_and_fixable() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="not DP-SGD compatible"):
        check_model(model)
    check_model(make_compatible(model))
    check_model(SmallCNN((1, 8, 8), 10))


def test_client_app_does_not_import_opacus() -> None:
    code = ("import sys, fedapp.privacy, fedapp.privacy.audit, fedapp.client_app; "
            "assert 'opacus' not in sys.modules, 'opacus imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- client-level central DP -------------------------------------------------------------


def test_clipping_bounds_norms_and_keeps_small_rows() -> None:
    updates = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped, norms = clip_updates(updates, 1.0)
    assert torch.allclose(norms, torch.tensor([5.0, 0.5, 0.0], dtype=torch.float64))
    assert torch.allclose(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))


@settings(max_examples=30)
@given(st.integers(1, 6), st.integers(1, 20), st.floats(0.01, 10.0), st.floats(0.01, 100.0))
def test_clipped_rows_never_exceed_the_bound(n: int, d: int, clip: float, scale: float) -> None:
    updates = torch.randn(n, d, dtype=torch.float64) * scale
    clipped, _ = clip_updates(updates, clip)
    assert (torch.linalg.vector_norm(clipped, dim=1) <= clip * (1 + 1e-9)).all()


def test_central_noise_has_the_specified_std_around_the_clipped_mean() -> None:
    n, d, clip, z = 4, 200_000, 0.5, 1.3
    updates = torch.randn(n, d) * 0.0005  # norms about 0.22 < C: kept as they are
    updates[0] *= 1000.0  # norm about 220: clipped to 0.5
    clipped_mean = clip_updates(updates, clip)[0].double().mean(0)
    gen = torch.Generator().manual_seed(0)
    result = central_dp_mean(updates, torch.tensor([1.0, 9.0, 9.0, 9.0]), clip=clip,
                             noise_multiplier=z, generator=gen)
    noise = result.aggregate.double() - clipped_mean
    assert float(noise.std()) == pytest.approx(z * clip / n, rel=0.01)
    assert abs(float(noise.mean())) < 5 * z * clip / n / d**0.5
    assert result.report.trimmed == (0,)
    assert result.report.extra["noise-std"] == pytest.approx(z * clip / n)
    exact = central_dp_mean(updates, clip=clip, noise_multiplier=0.0, num_sampled=8)
    assert torch.allclose(exact.aggregate.double(), clipped_mean * n / 8, atol=1e-6)


def test_central_dp_aggregator_noise_is_fresh_unless_seeded() -> None:
    updates = torch.randn(3, 10)
    assert torch.equal(CentralDP(1.0, 1.0, seed=3)(updates).aggregate,
                       CentralDP(1.0, 1.0, seed=3)(updates).aggregate)
    assert not torch.equal(CentralDP(1.0, 1.0)(updates).aggregate,
                           CentralDP(1.0, 1.0)(updates).aggregate)


def test_central_accountant_epsilon_grows_with_rounds_and_matches_opacus() -> None:
    acc = CentralAccountant(noise_multiplier=1.0, delta=DELTA)
    eps = [acc.step(sampled=5, total=50) for _ in range(5)]
    assert all(a < b for a, b in itertools.pairwise(eps))
    assert eps[-1] == pytest.approx(opacus_epsilon([(1.0, 0.1, 5)]))
    assert acc.rounds == 5
    full = CentralAccountant(noise_multiplier=1.0, delta=DELTA)
    for _ in range(5):
        full.step(sampled=50, total=50)
    assert full.epsilon > acc.epsilon  # sampling fewer nodes amplifies privacy
    assert CentralAccountant.from_dict(acc.to_dict()).epsilon == acc.epsilon
    z = calibrate_noise(2.0, DELTA, 0.1, 100)  # a central plan: 100 rounds, q = 0.1
    planned = CentralAccountant(noise_multiplier=z, delta=DELTA, history=[(z, 0.1, 99)])
    assert planned.step(5, 50) == pytest.approx(2.0, rel=0.01)
    assert planned.history == [(z, 0.1, 100)]
