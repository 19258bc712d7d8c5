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
   noise generator (Opacus's order and calls: a seeded generator gives Opacus's noise,
   bit for bit), then division by Opacus's expected batch size ``int(q N)``;
4. SGD with momentum 0.9 written out (``b = g`` on the first step, then ``b = 0.9 b + g``;
   ``p -= lr b``: ``torch.optim.SGD``'s arithmetic, as in :func:`fedapp.task.train`), on
   buffers allocated once per call (one flat buffer: one call per elementwise step);
5. the step is recorded in Opacus's RDP accountant (``accountant.step(z, q)``).

What it saves: Opacus's per-layer hooks or ExpandedWeights (every example's full gradient
materialised for Linear layers, and for convolutions whose ghost norm is cheaper), its
optimizer's per-parameter Python bookkeeping and ``torch.optim``; an epoch's Poisson masks
are drawn in one call. It supports models whose trainable layers are all Linear, Conv2d
or GroupNorm, each called once per forward pass (:func:`fused_supported`).
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
    sums: dict[int, Tensor] = {}
    with torch.no_grad():
        terms = [layer_terms(m, tape.inputs[id(m)], d) for m, d in zip(tape.layers, grads,
                                                                         strict=True)]
        sq = terms[0][0]  # a new tensor: summed into in place
        for other, _ in terms[1:]:
            sq.add_(other)
        c = clip_factors(sq, max_grad_norm)
        for params, (_, clipped) in zip(tape.params, terms, strict=True):
            for p, s in zip(params, clipped(c), strict=True):
                sums[id(p)] = s
    return sums


def poisson_batches(n: int, steps: int, sample_rate: float,
                    generator: torch.Generator) -> tuple[Tensor, ...]:
    """One epoch of Opacus's ``UniformWithReplacementSampler``: ``steps`` batches, batch
    ``t`` the indices (ascending) where the ``t``-th ``rand(n) < q``. The draws are one
    ``rand(steps, n)``: the CPU generator fills it in order, so these are the numbers (and
    the generator's state after) of ``steps`` calls of ``rand(n)``."""
    mask = torch.rand(steps, n, generator=generator) < sample_rate
    return mask.nonzero()[:, 1].split(mask.sum(1).tolist())


class _Update:
    """Noise, division by ``int(q N)`` and the momentum step on buffers allocated once:
    views of one flat buffer when the parameters share a device (the elementwise steps are
    one call each), one buffer per parameter otherwise."""

    def __init__(self, params: list[Tensor], cfg: DPSGDConfig) -> None:
        self.params, self.cfg = params, cfg
        self.std = cfg.noise_multiplier * cfg.max_grad_norm
        self.flat, self.noise = _buffers(params)
        self.momentum: Tensor | None = None
        self.momentum_views: list[Tensor] = []

    def noisy_mean(self, sums: list[Tensor], noise: torch.Generator) -> list[Tensor]:
        """``(sum_i c_i g_i + N(0, (z C)^2 I)) / int(q N)`` per parameter: the noise drawn
        as Opacus draws it (per parameter, in ``params`` order, from ``noise``, in the
        default dtype: ``normal_`` into a buffer gives ``torch.normal``'s numbers); empty
        ``sums`` (an empty batch) give pure noise. Valid until the next call."""
        with torch.no_grad():
            for v in self.noise:
                v.normal_(0.0, self.std, generator=noise)
            if sums:
                torch._foreach_add_(self.noise, sums)
            if self.flat is None:
                torch._foreach_div_(self.noise, self.cfg.expected_batch_size)
            else:
                self.flat.div_(self.cfg.expected_batch_size)
        return self.noise

    def step(self) -> None:
        """``torch.optim.SGD`` with momentum on the last noisy mean ``g``: ``b = g`` first,
        then ``b = m b + g``; ``p -= lr b``."""
        with torch.no_grad():
            if self.flat is None:
                if not self.momentum_views:
                    self.momentum_views = [g.clone() for g in self.noise]
                else:
                    torch._foreach_mul_(self.momentum_views, self.cfg.momentum)
                    torch._foreach_add_(self.momentum_views, self.noise)
            elif self.momentum is None:
                self.momentum = self.flat.clone()
                self.momentum_views = _views(self.momentum, self.params)
            else:
                self.momentum.mul_(self.cfg.momentum).add_(self.flat)
            torch._foreach_add_(self.params, self.momentum_views, alpha=-self.cfg.lr)


def _views(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
    """``flat`` cut into views shaped as ``params`` (slices: in-place writes stay allowed)."""
    views, start = [], 0
    for p in params:
        views.append(flat[start:start + p.numel()].view(p.shape))
        start += p.numel()
    return views


def _buffers(params: list[Tensor]) -> tuple[Tensor | None, list[Tensor]]:
    """A flat default-dtype buffer and its per-parameter views, or (different devices)
    ``None`` and one buffer per parameter."""
    if len({p.device for p in params}) != 1:
        return None, [torch.empty(p.shape, device=p.device) for p in params]
    flat = torch.empty(sum(p.numel() for p in params), device=params[0].device)
    return flat, _views(flat, params)


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
    tape, update = _Tape(layers), _Update(params, cfg)
    handles = [m.register_forward_hook(tape.hook) for m in layers]
    loss_sum, correct, seen = 0.0, 0, 0
    try:
        for _ in range(epochs):
            loss_sum, correct, seen = 0.0, 0, 0
            for idx in poisson_batches(len(y), int(1 / cfg.sample_rate), cfg.sample_rate,
                                       sampling):
                sums, batch_loss, batch_correct = ([], 0.0, 0) if not len(idx) else _batch(
                    model, tape, params, x, y, idx.to(x.device), cfg)
                update.noisy_mean(sums, noise)
                update.step()
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


def _batch(model: nn.Module, tape: _Tape, params: list[Tensor], x: Tensor, y: Tensor,
           idx: Tensor, cfg: DPSGDConfig) -> tuple[list[Tensor], float, int]:
    """Forward, backward to the layer outputs on the rows ``idx``: the clipped sums (in
    ``params`` order), the batch's summed loss and its number of correct predictions."""
    tape.clear()
    yb = y[idx]
    out = model(x[idx])
    loss = nn.functional.cross_entropy(out, yb, reduction="sum")
    sums = clipped_sums(tape, loss, cfg.max_grad_norm)
    tape.clear()
    return [sums[id(p)] for p in params], float(loss.detach()), int((out.argmax(1) == yb).sum())
