"""Distributed DP-SGD over secure aggregation (``dp='distributed'``): the node's part.

Centralized DP-SGD (Abadi et al. 2016, https://arxiv.org/abs/1607.00133) takes steps

    w <- w - lr * ( sum_{i in B} clip_C(g_i) + N(0, (z C)^2 I) ) / (q N)

with every record in the batch ``B`` Poisson-sampled with rate ``q`` from ``N`` records.
Split the records over hospitals and let each hospital ``j`` release only

    v_j = sum_{i in B_j} clip_C(g_i) + N(0, (z C)^2 / t I)

inside a secure sum of ``k >= t`` hospitals (``fedapp.secagg``: ``t`` is the bucket's
Shamir threshold, the fewest contributors any released sum can have; a node refuses to
help unmask a sum of fewer). The sum is then one centralized DP-SGD step on the
bucket's records with noise std ``z C sqrt(k / t) >= z C``: each record lies in exactly
one released sum per round, so Opacus's RDP accountant for the subsampled Gaussian with
``(q, z)`` and one step per round gives the guarantee of every record, at any delta
(Mironov, Talwar, Zhang 2019, https://arxiv.org/abs/1908.10530). ``z`` is calibrated up
front from ``dp-epsilon``, ``dp-delta``, ``dp-sample-rate`` and ``num-server-rounds``
(``accounting.calibrate_noise``), identically on every node and on the server.

This module computes ``sum clip_C(g_i)`` on a Poisson sample (per-example gradients by
``torch.func``: ``vmap(grad(functional_call))``), charges the node's privacy ledger and
returns the sum; the secure-aggregation mod adds the noise share (it knows ``t``) and
quantizes (``fedapp.secagg.masking``: rounding after the noise, analysed in
``docs/privacy.md``). The server divides by the expected batch size ``q N`` and steps.
"""

from __future__ import annotations

import math
import secrets
from logging import WARNING

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict
from flwr.common.logger import log
from torch import nn

from fedapp.config import RunConfig
from fedapp.data.specs import Split
from fedapp.privacy.accounting import calibrate_noise, epsilon_of
from fedapp.privacy.budget import BudgetExhausted
from fedapp.privacy.ledger import LedgerError, NodeBudget

STATE_KEY = "fedapp.distributed-dp"  # the node's calibrated z, in context.state


def noise_multiplier(cfg: RunConfig) -> float:
    """``z`` for the run: ``dp-epsilon`` spent after ``num-server-rounds`` steps at rate
    ``dp-sample-rate`` (one step per round), at ``dp-delta``."""
    return calibrate_noise(cfg.dp_epsilon, cfg.dp_delta, cfg.dp_sample_rate,
                           cfg.num_server_rounds)


def run_noise(cfg: RunConfig, state: RecordDict) -> float:
    """``noise_multiplier(cfg)``, kept in the node's ``context.state``: the calibration (a
    bisection on the accountant, seconds on a busy CPU) then runs once per node and run,
    not in every message's fresh ClientApp process of a deployment. Keyed by the settings
    it depends on; the node computes it itself, it never takes it from the server."""
    key = f"{cfg.dp_epsilon!r}/{cfg.dp_delta!r}/{cfg.dp_sample_rate!r}/{cfg.num_server_rounds}"
    record = state.config_records.get(STATE_KEY)
    if record is not None and record.get("key") == key:
        return float(record["z"])  # type: ignore[arg-type]
    z = noise_multiplier(cfg)
    state.config_records[STATE_KEY] = ConfigRecord({"key": key, "z": z})
    return z


def epsilon_after(cfg: RunConfig, steps: int, delta: float | None = None) -> float:
    """Epsilon of every record after ``steps`` released steps (0 steps: 0)."""
    if steps <= 0:
        return 0.0
    z = noise_multiplier(cfg)
    return epsilon_of([(z, cfg.dp_sample_rate, steps)], cfg.dp_delta if delta is None else delta)


def share_std(z: float, clip: float, threshold: int) -> float:
    """The std of one node's Gaussian noise share: ``z C / sqrt(t)``."""
    return z * clip / math.sqrt(threshold)


def clipped_gradient_sum(model: nn.Module, data: Split, sample_rate: float, clip: float,
                         generator: torch.Generator) -> tuple[dict[str, torch.Tensor], int, float]:
    """``sum_{i in B} clip_C(g_i)`` by parameter name, the batch size ``|B|`` and its mean
    loss, on a Poisson sample ``B`` (each row with probability ``sample_rate``). Per-example
    gradients by ``torch.func``; each is clipped to L2 norm ``clip`` over all parameters
    jointly (Opacus's flat clipping)."""
    from torch.func import functional_call, grad, vmap

    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    mask = torch.rand(len(data.x), generator=generator) < sample_rate
    picked = mask.numpy()
    zeros = {k: torch.zeros_like(p) for k, p in params.items()}
    if not picked.any():
        return zeros, 0, 0.0
    x = torch.as_tensor(data.x[picked], dtype=torch.float32)
    y = torch.as_tensor(data.y[picked], dtype=torch.long)
    buffers = dict(model.named_buffers())

    def loss_of(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0))

    per_example = vmap(grad(loss_of), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per_example.values()))
    factors = torch.clamp(clip / (norms + 1e-12), max=1.0)
    sums = {k: torch.einsum("b,b...->...", factors, g) for k, g in per_example.items()}
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(model(x), y))
    return sums, int(picked.sum()), loss


def distributed_round(cfg: RunConfig, model: nn.Module, data: Split, server_round: int,
                      budget: NodeBudget | None, deterministic_seed: int | None = None,
                      z: float | None = None) -> tuple[np.ndarray, float, float]:
    """One round of distributed DP-SGD on this node: the clipped gradient sum as one
    float32 vector in ``model.state_dict()`` order (zeros for buffers), the batch's loss,
    and the run's epsilon after this round. Refused (``BudgetExhausted``) past the run's
    ``dp-epsilon`` or, with ``budget``, past the data's lifetime ``dp-budget``: the round
    is charged to the ledger (noise ``z``, rate ``q``, one step) before it computes
    anything. Sampling is seeded from the OS's entropy unless ``deterministic_seed``;
    ``z``: the run's noise multiplier if already known (``run_noise``)."""
    z = noise_multiplier(cfg) if z is None else z
    eps = epsilon_of([(z, cfg.dp_sample_rate, server_round)], cfg.dp_delta)
    if eps > cfg.dp_epsilon * 1.001:
        raise BudgetExhausted(f"DP budget: round {server_round} would bring epsilon to "
                              f"{eps:.3f} > dp-epsilon={cfg.dp_epsilon}; not training")
    entry = (budget.ledger.charge(budget, z, cfg.dp_sample_rate, 1, cfg.dp_epsilon)
             if budget is not None else None)
    seed = deterministic_seed if deterministic_seed is not None else secrets.randbits(63)
    generator = torch.Generator().manual_seed(seed)
    sums, _, loss = clipped_gradient_sum(model, data, cfg.dp_sample_rate,
                                             cfg.dp_max_grad_norm, generator)
    flat = [sums[k].flatten() if k in sums else torch.zeros(v.numel())
            for k, v in model.state_dict().items()]
    if budget is not None and entry is not None:
        try:
            budget.ledger.settle(budget.dataset, entry, 1)
        except LedgerError as exc:  # stays charged as pending: safe
            log(WARNING, "[fedapp] %s", exc)
    return torch.cat(flat).numpy().astype(np.float32), loss, eps
