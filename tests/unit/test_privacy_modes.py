"""dp_train's Opacus per-sample-gradient modes: the choice, and the same DP-SGD step in each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedapp.data.specs import DATASET_SPECS, Split
from fedapp.privacy import DPState, dp_train
from fedapp.privacy.modes import GHOST_MIN_BATCH, choose_grad_sample_mode
from fedapp.task import MLP, SmallCNN, build_model

DELTA = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy_data(n: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = (rng.random((n, 64)) * 0.2 + np.eye(10)[y].repeat(7, axis=1)[:, :64]).astype(np.float32)
    return Split(x, y.astype(np.int64))


def test_auto_mode_picks_fused_for_the_models_it_supports() -> None:
    assert choose_grad_sample_mode(MLP(64, 10), 32) == "fused"
    assert choose_grad_sample_mode(SmallCNN((1, 8, 8), 10), 256) == "fused"


def test_without_fused_auto_picks_ghost_for_linear_models_at_large_batches_else_ew() -> None:
    assert choose_grad_sample_mode(MLP(64, 10), GHOST_MIN_BATCH, fused=False) == "ghost"
    assert choose_grad_sample_mode(MLP(64, 10), 32, fused=False) == "ew"
    # Conv2d and GroupNorm have no ghost norm sampler, but ExpandedWeights supports them.
    assert choose_grad_sample_mode(SmallCNN((1, 8, 8), 10), 256, fused=False) == "ew"


def test_auto_mode_falls_back_to_hooks_for_a_layer_expanded_weights_lacks() -> None:
    model = nn.Sequential(nn.Linear(64, 16), nn.RMSNorm(16), nn.Linear(16, 10))
    assert choose_grad_sample_mode(model, 256) == "hooks"
    state = DPState.plan(target_epsilon=5.0, delta=DELTA, num_examples=64, batch_size=16,
                         local_epochs=1, num_rounds=1)
    before = [p.detach().clone() for p in model.parameters()]
    *_, new = dp_train(model, toy_data(64), 1, 16, 0.05, 0, 1.0, state.noise_multiplier, DELTA,
                       state)
    assert new.steps_taken == state.steps_per_round
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_unknown_mode_is_refused() -> None:
    state = DPState.plan(target_epsilon=5.0, delta=DELTA, num_examples=32, batch_size=16,
                         local_epochs=1, num_rounds=1)
    with pytest.raises(ValueError, match="grad_sample_mode='fast'"):
        dp_train(MLP(64, 10, 8), toy_data(32), 1, 16, 0.05, 0, 1.0, state.noise_multiplier,
                 DELTA, state, grad_sample_mode="fast")


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_every_mode_takes_the_same_clipped_steps_as_hooks(kind: str) -> None:
    """Without noise (z = 1e-9), the same Poisson batches give the same clipped-gradient
    steps in every mode: the modes differ in speed only. The small C makes clipping bind."""
    data = toy_data(96)
    state = DPState.plan(target_epsilon=5.0, delta=DELTA, num_examples=96, batch_size=32,
                         local_epochs=2, num_rounds=1)

    def trained(mode: str) -> tuple[torch.Tensor, DPState]:
        torch.manual_seed(0)
        model = build_model(kind, DATASET_SPECS["digits"], hidden=16)
        *_, new = dp_train(model, data, 2, 32, 0.5, 3, 0.05, 1e-9, DELTA, state,
                           deterministic_noise=True, grad_sample_mode=mode)
        assert all(not hasattr(p, "grad_sample") for p in model.parameters())
        return torch.cat([p.detach().flatten() for p in model.parameters()]), new

    reference, ref_state = trained("hooks")
    torch.manual_seed(0)
    start = torch.cat([p.detach().flatten() for p in
                       build_model(kind, DATASET_SPECS["digits"], hidden=16).parameters()])
    # 6 steps, momentum 0.9: each step moves the weights by at most lr * C * (1 + 0.9 + ...)
    # times (batch / expected batch); unclipped gradients here are ~50x larger than C.
    assert 0 < float(torch.linalg.vector_norm(reference - start)) < 0.5 * 0.05 * 6 * 6 * 3
    for mode in ("ew", "ghost", "fused", "auto"):
        weights, new = trained(mode)
        assert torch.allclose(weights, reference, atol=1e-5), mode
        assert new.history == ref_state.history


def test_expanded_weights_mode_steps_through_empty_poisson_batches() -> None:
    """Two rows and q = 1/2: a quarter of the batches are empty; each is still a noisy,
    accounted step (ExpandedWeights itself refuses a batch of 0)."""
    data = toy_data(2)
    state = DPState.plan(target_epsilon=50.0, delta=DELTA, num_examples=2, batch_size=1,
                         local_epochs=20, num_rounds=1)
    assert state.steps_per_round == 40  # P(no empty batch in 40) = 0.75**40 ~ 1e-5
    torch.manual_seed(0)
    model = MLP(64, 10, 8)
    *_, new = dp_train(model, data, 20, 1, 0.05, 0, 1.0, state.noise_multiplier, DELTA, state,
                       deterministic_noise=True, grad_sample_mode="ew")
    assert new.steps_taken == 40
    assert new.epsilon == pytest.approx(50.0, rel=0.01)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_fused_mode_takes_opacus_noisy_steps_given_the_same_generators(kind: str) -> None:
    """With real noise (z ~ 1.2) and the same seeded generators, the fused mode draws the
    same Poisson batches and the same noise as Opacus's optimizer: same weights, same
    accountant history and epsilon, same reported loss and accuracy."""
    data = toy_data(96)
    state = DPState.plan(target_epsilon=5.0, delta=DELTA, num_examples=96, batch_size=32,
                         local_epochs=2, num_rounds=1)

    def trained(mode: str) -> tuple[torch.Tensor, tuple[float, float, float, DPState]]:
        torch.manual_seed(0)
        model = build_model(kind, DATASET_SPECS["digits"], hidden=16)
        out = dp_train(model, data, 2, 32, 0.5, 3, 0.05, state.noise_multiplier, DELTA, state,
                       deterministic_noise=True, grad_sample_mode=mode)
        assert not any(m._forward_hooks for m in model.modules())  # nothing left attached
        return torch.cat([p.detach().flatten() for p in model.parameters()]), out

    ref, (ref_loss, ref_acc, ref_eps, ref_state) = trained("hooks")
    weights, (loss, acc, eps, new) = trained("fused")
    assert torch.allclose(weights, ref, atol=1e-5)
    assert loss == pytest.approx(ref_loss, rel=1e-5) and acc == ref_acc
    assert new.history == ref_state.history and eps == ref_eps


class _Shared(nn.Module):
    """One Linear applied twice: its per-example gradient sums two terms."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.inner(torch.relu(self.inner(x)))))


def test_fused_refuses_a_layer_called_twice_and_auto_falls_back_to_opacus() -> None:
    state = DPState.plan(target_epsilon=5.0, delta=DELTA, num_examples=64, batch_size=16,
                         local_epochs=1, num_rounds=1)
    args = (toy_data(64), 1, 16, 0.05, 0, 1.0, state.noise_multiplier, DELTA, state)
    with pytest.raises(ValueError, match="each called once"):
        dp_train(_Shared(), *args, grad_sample_mode="fused")
    model = _Shared()
    before = [p.detach().clone() for p in model.parameters()]
    *_, new = dp_train(model, *args)  # auto: Opacus's ew, which handles the reuse
    assert new.steps_taken == state.steps_per_round
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_fused_mode_steps_through_empty_poisson_batches() -> None:
    """Two rows and q = 1/2: about a quarter of the batches are empty; each is still a
    pure-noise, accounted step."""
    state = DPState.plan(target_epsilon=50.0, delta=DELTA, num_examples=2, batch_size=1,
                         local_epochs=20, num_rounds=1)
    torch.manual_seed(0)
    model = MLP(64, 10, 8)
    *_, new = dp_train(model, toy_data(2), 20, 1, 0.05, 0, 1.0, state.noise_multiplier, DELTA,
                       state, deterministic_noise=True, grad_sample_mode="fused")
    assert new.steps_taken == 40
    assert new.epsilon == pytest.approx(50.0, rel=0.01)
