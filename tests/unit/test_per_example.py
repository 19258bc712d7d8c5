"""Closed-form per-example gradient norms and clipped sums against torch.func's
per-example gradients (vmap over grad of the single-example loss)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedapp.privacy.fused import _Tape, clipped_sums, fused_supported, trainable_layers
from fedapp.privacy.per_example import clip_factors, supported

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return {
        "mlp": (nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5)),
                torch.randn(7, 12)),
        "mlp-no-bias": (nn.Sequential(nn.Linear(12, 8, bias=False), nn.Tanh(),
                                      nn.Linear(8, 5)), torch.randn(7, 12)),
        "tokens": (nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Flatten(), nn.Linear(12, 5)),
                   torch.randn(7, 3, 6)),
        "cnn": (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
                              nn.Conv2d(4, 6, 3, stride=2, padding=(1, 0), dilation=(1, 2)),
                              nn.Flatten(), nn.Linear(6 * 3 * 1, 5)),
                torch.randn(7, 2, 6, 6)),
        # conv 2: 16 output positions, 256 < 6 x 72 weights: ghost norms, no bias
        "cnn-ghost": (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.Flatten(),
                                    nn.Linear(6 * 4 * 4, 5)),
                      torch.randn(7, 3, 4, 4)),
    }


def _reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               c_norm: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """torch.func per-example gradients: Opacus's clipped sums and the per-example norms."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0), reduction="sum")

    per = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per.values()], 1).norm(dim=1)
    c = (c_norm / (norms + 1e-6)).clamp(max=1.0)
    return [torch.einsum("i,i...", c, g) for g in per.values()], norms


@pytest.mark.parametrize("name", ["mlp", "mlp-no-bias", "tokens", "cnn", "cnn-ghost"])
@pytest.mark.parametrize("c_norm", [0.05, 1e6])  # clipping binds / never binds
def test_clipped_sums_equal_torch_func_per_example_gradients(name: str, c_norm: float) -> None:
    model, x = _models()[name]
    y = torch.arange(len(x)) % 5
    assert fused_supported(model)
    tape = _Tape(trainable_layers(model))
    handles = [m.register_forward_hook(tape.hook) for m in tape.layers]
    loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
    sums = clipped_sums(tape, loss, c_norm)
    for h in handles:
        h.remove()
    expected, norms = _reference(model, x, y, c_norm)
    got = [sums[id(p)] for p in model.parameters()]
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        assert torch.allclose(g, e, atol=1e-5, rtol=1e-4)
    if c_norm < 1:
        assert (norms > c_norm).all()  # the clipping did bind


def test_clip_factor_is_opacus() -> None:
    sq = torch.tensor([0.0, 0.25, 4.0])
    assert torch.allclose(clip_factors(sq, 1.0), torch.tensor([1.0, 1.0, 1 / (2 + 1e-6)]))


def test_unsupported_layers_are_refused() -> None:
    assert not supported(nn.Conv2d(4, 4, 3, groups=2))
    assert not supported(nn.Conv2d(4, 4, 3, padding="same"))
    assert not supported(nn.GroupNorm(2, 4, affine=False))
    assert not supported(nn.LayerNorm(4))
    frozen = nn.Linear(4, 4)
    frozen.bias.requires_grad_(False)
    assert not supported(frozen)
    assert not fused_supported(nn.Sequential(nn.Linear(4, 4), nn.RMSNorm(4)))
