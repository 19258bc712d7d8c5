"""DP-SGD's ``fused`` mode: the same steps as Opacus's DPOptimizer, without its wrappers.

Each step (Abadi et al. 2016, https://arxiv.org/abs/1607.00133) is Opacus's, operation for
operation:

1. Poisson sampling: every example joins the batch with probability ``q``, drawn as
   Opacus's ``UniformWithReplacementSampler`` draws it (``rand(N) < q`` from the sampling
   generator, ``int(1 / q)`` batches per epoch), so a generator in the same state gives the
   same batches;
2. one forward pass and one backward pass to the outputs of the trainable layers; each
   example's gradient norm over all parameters jointly and the clipped sum
   ``sum_i g_i min(1, C / (||g_i|| + 1e-6))`` come in closed form from the layers' inputs
   and output gradients (:mod:`fedapp.privacy.per_example`);
3. noise ``N(0, (z C)^2)`` drawn per parameter, in ``model.parameters()`` order, from the
   noise generator (Opacus's order and calls), then division by Opacus's expected batch
   size ``int(q N)``;
4. SGD with momentum 0.9 written out (``b = g`` on the first step, then ``b = 0.9 b + g``;
   ``p -= lr b``: ``torch.optim.SGD``'s arithmetic, as in :func:`fedapp.task.train`);
5. the step is recorded in Opacus's RDP accountant (``accountant.step(z, q)``).

What it saves: Opacus's per-layer hooks or ExpandedWeights (every example's full gradient
materialised for Linear layers), its optimizer's per-parameter Python bookkeeping and
``torch.optim``. It supports models whose trainable layers are all Linear, Conv2d or
GroupNorm, each called once per forward pass (:func:`fused_supported`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fedapp.privacy.accounting import History
from fedapp.privacy.per_example import clip_factors, layer_terms, supported


def trainable_layers(model: nn.Module) -> list[nn.Module]:
    """The modules that own trainable parameters directly."""
    return [m for m in model.modules()
            if any(p.requires_grad for p in m.parameters(recurse=False))]


def fused_supported(model: nn.Module) -> bool:
    """True if every trainable layer of ``model`` has a closed-form per-example gradient
    (:func:`fedapp.privacy.per_example.supported`). Whether each is called exactly once per
    forward pass is checked on every step (``RuntimeError`` otherwise)."""
    layers = trainable_layers(model)
    return bool(layers) and all(supported(m) for m in layers)


def calls_each_layer_once(model: nn.Module, x: Tensor) -> bool:
    """True if a forward pass of ``model`` on ``x`` calls each trainable layer exactly once
    (a layer called twice would need its per-example gradients summed over the calls)."""
    layers = trainable_layers(model)
    counts = dict.fromkeys(map(id, layers), 0)

    def count(module: nn.Module, args: object, out: object) -> None:
        counts[id(module)] += 1

    handles = [m.register_forward_hook(count) for m in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return all(n == 1 for n in counts.values())


@dataclass
class DPSGDConfig:
    """The step's constants: lr, clip norm ``C``, noise multiplier ``z``, sample rate ``q``,
    and Opacus's expected batch size ``int(q N)`` (the divisor of the noised sum)."""

    lr: float
    max_grad_norm: float
    noise_multiplier: float
    sample_rate: float
    expected_batch_size: int
    momentum: float = 0.9


@dataclass
class _Tape:
    """Inputs and outputs of the trainable layers, recorded by forward hooks."""

    layers: list[nn.Module]
    params: list[list[Tensor]] = field(default_factory=list)
    inputs: dict[int, Tensor] = field(default_factory=dict)
    outputs: dict[int, Tensor] = field(default_factory=dict)
    calls: int = 0

    def __post_init__(self) -> None:
        self.params = [list(m.parameters(recurse=False)) for m in self.layers]

    def hook(self, module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        self.inputs[id(module)] = args[0].detach()
        self.outputs[id(module)] = out
        self.calls += 1

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()
        self.calls = 0


def clipped_sums(tape: _Tape, loss: Tensor, max_grad_norm: float) -> dict[int, Tensor]:
    """``sum_i c_i g_i`` per parameter (keyed by ``id``) for the batch on ``tape``, with
    ``c_i = min(1, C / (||g_i|| + 1e-6))`` and ``||g_i||`` over all parameters jointly;
    ``loss`` is the *sum* of the per-example losses."""
    if tape.calls != len(tape.layers):
        raise RuntimeError("fused DP-SGD needs every trainable layer called exactly once per "
                           f"forward pass ({tape.calls} calls for {len(tape.layers)} layers)")
    outs = [tape.outputs[id(m)] for m in tape.layers]
    grads = torch.autograd.grad(loss, outs)
    terms = [layer_terms(m, tape.inputs[id(m)], d) for m, d in zip(tape.layers, grads,
                                                                     strict=True)]
    c = clip_factors(torch.stack([sq for sq, _ in terms]).sum(0), max_grad_norm)
    sums: dict[int, Tensor] = {}
    for params, (_, clipped) in zip(tape.params, terms, strict=True):
        for p, s in zip(params, clipped(c), strict=True):
            sums[id(p)] = s
    return sums


def noisy_mean(params: list[Tensor], sums: dict[int, Tensor], cfg: DPSGDConfig,
               noise: torch.Generator) -> list[Tensor]:
    """``(sum_i c_i g_i + N(0, (z C)^2 I)) / int(q N)`` per parameter; the noise is drawn in
    ``params`` order, one ``torch.normal`` per parameter (as Opacus's ``add_noise``); an
    empty ``sums`` (an empty batch) gives pure noise."""
    std = cfg.noise_multiplier * cfg.max_grad_norm
    noises = [torch.normal(0.0, std, p.shape, device=p.device, generator=noise) for p in params]
    if sums:
        noises = torch._foreach_add([sums[id(p)] for p in params], noises)
    torch._foreach_div_(noises, cfg.expected_batch_size)
    return noises


def momentum_step(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor],
                  cfg: DPSGDConfig) -> None:
    """``torch.optim.SGD`` with momentum: ``b = g`` first, then ``b = m b + g``; ``p -= lr b``."""
    with torch.no_grad():
        if not buffers:
            buffers.extend(g.clone() for g in grads)
        else:
            torch._foreach_mul_(buffers, cfg.momentum)
            torch._foreach_add_(buffers, grads)
        torch._foreach_add_(params, buffers, alpha=-cfg.lr)


def fused_epochs(model: nn.Module, x: Tensor, y: Tensor, epochs: int, cfg: DPSGDConfig,
                 generators: tuple[torch.Generator, torch.Generator],
                 history: History) -> tuple[float, float, History]:
    """``epochs`` epochs of ``int(1 / q)`` DP-SGD steps on ``(x, y)`` (on the model's device);
    returns mean (loss, accuracy) over the examples sampled in the last epoch (``nan`` if
    none were) and the accountant's history after the steps (starting from ``history``)."""
    from opacus.accountants import RDPAccountant

    sampling, noise = generators
    accountant = RDPAccountant()
    accountant.history = list(history)
    layers = trainable_layers(model)
    params = [p for p in model.parameters() if p.requires_grad]
    tape, buffers = _Tape(layers), []  # type: ignore[var-annotated]
    handles = [m.register_forward_hook(tape.hook) for m in layers]
    loss_sum, correct, seen = 0.0, 0, 0
    try:
        for _ in range(epochs):
            loss_sum, correct, seen = 0.0, 0, 0
            for _ in range(int(1 / cfg.sample_rate)):
                mask = torch.rand(len(y), generator=sampling) < cfg.sample_rate
                idx = mask.nonzero().reshape(-1).to(x.device)
                sums, batch_loss, batch_correct = (_batch(model, tape, x[idx], y[idx], cfg)
                                                   if len(idx) else ({}, 0.0, 0))
                momentum_step(params, noisy_mean(params, sums, cfg, noise), buffers, cfg)
                accountant.step(noise_multiplier=cfg.noise_multiplier,
                                sample_rate=cfg.sample_rate)
                loss_sum, correct, seen = (loss_sum + batch_loss, correct + batch_correct,
                                           seen + len(idx))
    finally:
        for h in handles:
            h.remove()
    if not seen:
        return float("nan"), float("nan"), accountant.history
    return loss_sum / seen, correct / seen, accountant.history


def _batch(model: nn.Module, tape: _Tape, xb: Tensor, yb: Tensor,
           cfg: DPSGDConfig) -> tuple[dict[int, Tensor], float, int]:
    """Forward, backward to the layer outputs: the clipped sums, the batch's summed loss
    and its number of correct predictions."""
    tape.clear()
    out = model(xb)
    loss = nn.functional.cross_entropy(out, yb, reduction="sum")
    sums = clipped_sums(tape, loss, cfg.max_grad_norm)
    tape.clear()
    return sums, float(loss.detach()), int((out.argmax(1) == yb).sum())
