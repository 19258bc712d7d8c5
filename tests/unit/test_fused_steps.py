"""The fused mode's fast paths against the reference they replace: Opacus's Poisson
sampler, per-parameter ``torch.normal`` noise and ``F.unfold`` patches."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedapp.privacy.fused import DPSGDConfig, _Update, poisson_batches
from fedapp.privacy.per_example import _patches

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("n", "q"), [(575, 1 / 18), (7, 0.5), (1, 0.5)])
def test_poisson_batches_are_opacus_sampler_batches(n: int, q: float) -> None:
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    steps = int(1 / q)
    ours, theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=q, generator=theirs)
    for _ in range(3):  # three epochs: the generators stay in step
        got = [b.tolist() for b in poisson_batches(n, steps, q, ours)]
        assert got == list(sampler)
    assert torch.equal(ours.get_state(), theirs.get_state())


def _reference_update(params: list[torch.Tensor], sums: list[torch.Tensor], cfg: DPSGDConfig,
                      noise: torch.Generator, buffers: list[torch.Tensor]) -> None:
    """The step as Opacus's optimizer and torch.optim.SGD take it, parameter by parameter."""
    std = cfg.noise_multiplier * cfg.max_grad_norm
    with torch.no_grad():
        for i, (p, s) in enumerate(zip(params, sums, strict=True)):
            g = (s + torch.normal(0.0, std, p.shape, generator=noise)) / cfg.expected_batch_size
            if len(buffers) <= i:
                buffers.append(g.clone())
            else:
                buffers[i].mul_(cfg.momentum).add_(g)
            p.add_(buffers[i], alpha=-cfg.lr)


@pytest.mark.parametrize("flat", [True, False])
def test_update_equals_the_per_parameter_step_bit_for_bit(flat: bool) -> None:
    """Noise drawn into a flat buffer's views, divided and momentum-stepped in one call
    each (or, parameters on several devices, per buffer): Opacus's numbers exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    ref = [p.detach().clone() for p in model.parameters()]
    params = [p for p in model.parameters()]
    cfg = DPSGDConfig(0.1, 1.0, 1.3, 0.25, 7)
    update = _Update(params, cfg)
    if not flat:  # the layout _buffers gives parameters on several devices
        update.flat, update.noise = None, [torch.empty(p.shape) for p in params]
    ours, theirs, buffers = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9), []
    for step in range(4):
        sums = [] if step == 2 else [torch.randn(p.shape) for p in params]  # 2: empty batch
        update.noisy_mean(sums, ours)
        update.step()
        _reference_update(ref, sums or [torch.zeros(p.shape) for p in ref], cfg, theirs,
                          buffers)
        for p, r in zip(params, ref, strict=True):
            assert torch.equal(p, r)


@pytest.mark.parametrize(("cin", "hw", "kernel", "padding", "stride", "dilation"), [
    (1, 8, 3, 1, 1, 1), (16, 4, 3, 1, 1, 1), (4, 6, 3, (1, 0), 2, (1, 2)),
    (3, 7, (2, 3), (0, 2), (2, 1), 1)])
def test_patches_are_unfold(cin: int, hw: int, kernel: int | tuple[int, int],
                            padding: int | tuple[int, int], stride: int | tuple[int, int],
                            dilation: int | tuple[int, int]) -> None:
    conv = nn.Conv2d(cin, 5, kernel, padding=padding, stride=stride, dilation=dilation)
    a = torch.randn(6, cin, hw, hw)
    out_hw = conv(a).shape[2:]
    cols = F.unfold(a, conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                    stride=conv.stride)
    assert torch.equal(_patches(conv, a, out_hw, channels_last=False).flatten(1, 2), cols)
    rows = _patches(conv, a, out_hw, channels_last=True)  # same patches, entries permuted
    assert rows.shape == cols.transpose(1, 2).shape
    assert torch.allclose(torch.bmm(rows, rows.transpose(1, 2)),
                          torch.bmm(cols.transpose(1, 2), cols), atol=1e-4)
