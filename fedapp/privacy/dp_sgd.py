"""Sample-level DP-SGD: fedapp's ``fused`` mode or Opacus's PrivacyEngine, whichever is fastest.

Guarantee: each node's *reply* (its trained weights, hence its update) is
``(epsilon, delta)``-DP with respect to adding or removing one example of that
node's training data, for the whole run (Abadi et al. 2016, "Deep Learning with
Differential Privacy", https://arxiv.org/abs/1607.00133). Every step of DP-SGD
Poisson-samples each example with probability ``q = 1 / steps_per_epoch``, clips
each per-example gradient to L2 norm ``C`` (``max_grad_norm``), sums them, adds
``N(0, (z C)^2 I)`` and divides by the expected batch size ``q N``:

    g = ( sum_{i in B} g_i * min(1, C / ||g_i||) + N(0, z^2 C^2 I) ) / (q N)

Everything downstream (momentum, the update, server aggregation) is
post-processing. The accounting (:mod:`fedapp.privacy.accounting`) composes the
steps of all rounds: the accountant's history lives in
:class:`~fedapp.privacy.budget.DPState`, which the ClientApp keeps in ``context.state``
between rounds (:mod:`fedapp.privacy.budget`).

Not covered by the guarantee: the node's reported ``train-loss`` /
``train-accuracy`` (computed on the private batches) and ``num-examples``. Report
them only if that is acceptable; the epsilon spent is a function of public
parameters and may be reported.

Randomness: the noise and the Poisson sampling must be unpredictable to the
server. The seed the apps derive (run seed, node, round) is known to the server,
which could then regenerate the noise and subtract it; so by default
:func:`dp_train` seeds its noise and sampling generators from the OS's entropy
(``secrets``) and uses ``seed`` only for everything else. ``deterministic_noise=True``
(tests, benchmarks) makes a run reproducible and voids the guarantee against
whoever knows the seed. Opacus's ``secure_mode`` (a CSPRNG that also resists the
floating-point attack of Mironov 2012) would need ``torchcsprng`` and is not used.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Iterable
from logging import WARNING

import torch
from flwr.common.logger import log
from torch import nn

from fedapp.data.specs import Split
from fedapp.device import device_of
from fedapp.privacy.accounting import ACCOUNTANT, History
from fedapp.privacy.budget import DPState
from fedapp.privacy.fused import DPSGDConfig, calls_each_layer_once, fused_epochs, fused_supported
from fedapp.privacy.modes import GRAD_SAMPLE_MODES, check_model, choose_grad_sample_mode


def dp_train(model: nn.Module, data: Split, epochs: int, batch_size: int, lr: float, seed: int,
             max_grad_norm: float, noise_multiplier: float, delta: float, state: DPState,
             *, deterministic_noise: bool = False, grad_sample_mode: str = "auto",
             device: torch.device | str = "cpu") -> tuple[float, float, float, DPState]:
    """DP-SGD (momentum 0.9, cross-entropy) on ``data``; ``model`` is trained in place.

    Opacus wraps model and optimizer once per call (all ``epochs`` reuse the wrapping) and
    replaces the loader by its Poisson sampler; the accountant starts from
    ``state.history``, so the epsilon returned is the total spent by this node in the run
    so far (non-decreasing across calls). After training the wrapper is removed
    (``to_standard_module``): ``model.state_dict()`` has the plain keys.

    ``grad_sample_mode``: ``"fused"`` (:mod:`fedapp.privacy.fused`: Opacus's steps, sampling,
    noise draws and accountant without its wrappers) or an Opacus per-sample-gradient
    engine; ``"auto"`` = :func:`choose_grad_sample_mode`. If Opacus refuses the chosen mode
    when wrapping, ``"hooks"`` is used. The mode changes speed, not the mechanism: every
    mode clips each example's gradient to ``max_grad_norm`` and adds the same noise.

    ``device``: where the steps run (Opacus computes per-example gradients and draws the
    noise there, from a generator on that device); the Poisson sampling stays on the CPU,
    and ``model`` is moved back where it came from. On the CPU the computation is the same
    as before ``device`` existed, bit for bit.

    Returns ``(loss, accuracy, epsilon_spent, new_state)``; loss and accuracy are
    means over the examples sampled in the last epoch (``nan`` if none were).
    """
    check_model(model)
    if len(data) == 0 or epochs < 1:
        raise ValueError(f"dp_train needs data and epochs >= 1, got {len(data)} rows, {epochs}")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm!r}")
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode={grad_sample_mode!r} is not one of "
                         f"{', '.join(GRAD_SAMPLE_MODES)}")
    torch.manual_seed(seed)
    home, device = device_of(model), torch.device(device)
    sampling, noise = _generators(seed, deterministic_noise, device)
    x = torch.from_numpy(data.x.copy())
    y = torch.from_numpy(data.y.copy())
    # make_private derives the sample rate (1 / len(loader)) and its Poisson sampler from
    # this loader; the epochs index the tensors with the sampler's batches directly (the
    # DataLoader's per-example fetch and collate would cost more than a step here).
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=batch_size, generator=sampling)
    model.to(device).train()
    xy = (x.to(device), y.to(device))
    q = 1 / len(loader)
    try:
        mode = _resolve_mode(grad_sample_mode, model, xy[0], q)
        if mode == "fused":  # Opacus's expected batch size, int(N * q), float for float
            cfg = DPSGDConfig(lr, max_grad_norm, noise_multiplier, q, int(len(data) * q))
            loss, acc, history = fused_epochs(model, *xy, epochs, cfg, (sampling, noise),
                                              list(state.history))
        else:
            loss, acc, history = _private_epochs(model, lr, loader, noise_multiplier,
                                                 max_grad_norm, noise, state, mode, xy, epochs)
    finally:
        model.to(home)
    new_state = state.with_history(history)
    return loss, acc, new_state.epsilon, new_state


def _resolve_mode(mode: str, model: nn.Module, x: torch.Tensor, sample_rate: float) -> str:
    """``mode``, or :func:`choose_grad_sample_mode`'s pick for ``"auto"``; ``"fused"`` only
    if a forward pass on one row calls each trainable layer once (else ``"auto"`` takes
    Opacus's pick without it and an explicit ``"fused"`` raises ``ValueError``)."""
    if mode == "auto":
        mode = choose_grad_sample_mode(model, sample_rate * len(x))
        if mode == "fused" and not calls_each_layer_once(model, x[:1]):
            return choose_grad_sample_mode(model, sample_rate * len(x), fused=False)
    elif mode == "fused" and not (fused_supported(model) and calls_each_layer_once(model, x[:1])):
        raise ValueError("grad_sample_mode='fused' needs Linear, Conv2d (groups=1) or affine "
                         "GroupNorm trainable layers, each called once per forward pass")
    return mode


def _private_epochs(model: nn.Module, lr: float, loader: torch.utils.data.DataLoader,
                    noise_multiplier: float, max_grad_norm: float, noise: torch.Generator,
                    state: DPState, mode: str, xy: tuple[torch.Tensor, torch.Tensor],
                    epochs: int) -> tuple[float, float, History]:
    """Wrap ``model`` with Opacus, run the epochs on ``xy`` (on the model's device), unwrap;
    returns (loss, accuracy, the accountant's history)."""
    with warnings.catch_warnings():
        # Documented above (no secure_mode); and the first layer's input needs no grad.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        engine, wrapped = _make_private(model, lr, loader, noise_multiplier, max_grad_norm,
                                        noise, state, mode)
        dp_model, dp_opt, criterion, dp_loader = wrapped
        try:
            loss, acc = _run_epochs(dp_model, dp_opt, criterion, dp_loader.batch_sampler,
                                    *xy, epochs)
        finally:
            dp_model.to_standard_module()  # removes Opacus's hooks and per-sample attributes
    return loss, acc, engine.accountant.history  # type: ignore[attr-defined]


def _generators(seed: int, deterministic: bool, device: torch.device
                ) -> tuple[torch.Generator, torch.Generator]:
    """The Poisson sampling generator (CPU) and the noise generator (on ``device``, where
    Opacus draws the noise), seeded from the OS's entropy unless ``deterministic``."""
    secret = seed if deterministic else secrets.randbits(63)
    sampling = torch.Generator().manual_seed(secret)
    noise = torch.Generator(device=device).manual_seed((secret * 7_919 + 1) % 2**63)
    return sampling, noise


_Wrapped = tuple[nn.Module, torch.optim.Optimizer, nn.Module, torch.utils.data.DataLoader]


def _make_private(model: nn.Module, lr: float, loader: torch.utils.data.DataLoader,
                  noise_multiplier: float, max_grad_norm: float, noise: torch.Generator,
                  state: DPState, mode: str) -> tuple[object, _Wrapped]:
    """``PrivacyEngine.make_private`` in ``mode``, falling back to ``"hooks"`` if refused."""
    from opacus import PrivacyEngine

    def wrap(mode: str) -> tuple[object, _Wrapped]:
        engine = PrivacyEngine(accountant=ACCOUNTANT)
        engine.accountant.history = list(state.history)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        out = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, criterion=nn.CrossEntropyLoss(),
            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            poisson_sampling=True, noise_generator=noise, grad_sample_mode=mode)
        if mode == "ghost":  # (model, optimizer, DP loss, loader)
            return engine, (out[0], out[1], out[2], out[3])
        return engine, (out[0], out[1], nn.CrossEntropyLoss(), out[2])

    try:
        return wrap(mode)
    except (NotImplementedError, ValueError, RuntimeError) as exc:
        # Opacus validates the layers for the mode before it attaches anything to the model.
        if mode == "hooks":
            raise
        log(WARNING, "[fedapp] Opacus refused grad_sample_mode=%r (%s); using 'hooks'", mode, exc)
        return wrap("hooks")


def _run_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                batches: Iterable[list[int]], x: torch.Tensor, y: torch.Tensor,
                epochs: int) -> tuple[float, float]:
    """The DP-SGD loop on Opacus's wrapped objects; mean (loss, accuracy) of the last epoch.

    ``batches`` is Opacus's Poisson sampler: a fresh draw of index lists on every pass.
    """
    total_loss, correct, seen = 0.0, 0, 0
    for _ in range(epochs):
        total_loss, correct, seen = 0.0, 0, 0
        for idx in batches:
            optimizer.zero_grad()
            if not idx:  # an empty Poisson batch still takes a (pure-noise) step, accounted
                _empty_step(model, optimizer, x)
                continue
            xb, yb = x[idx], y[idx]
            out = model(xb)
            criterion(out, yb).backward()
            optimizer.step()
            with torch.no_grad():
                total_loss += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
                correct += int((out.argmax(1) == yb).sum())
            seen += len(yb)
    if not seen:
        return float("nan"), float("nan")
    return total_loss / seen, correct / seen


def _empty_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    """One DP-SGD step on an empty batch: zero per-example gradients, Opacus adds the noise.

    Hooks and ghost modes take an empty forward / backward pass; ExpandedWeights refuses a
    batch of 0, so its per-example gradients are set to the (empty) tensors the other
    modes would produce before Opacus's optimizer step clips, noises and accounts it.
    """
    try:
        out = model(x[:0])
    except RuntimeError:
        for p in optimizer.params:  # type: ignore[attr-defined]
            p.grad_sample = p.new_zeros((0, *p.shape))
    else:
        out.sum().backward()
    optimizer.step()
