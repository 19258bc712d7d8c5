"""Privacy accounting shared by sample-level (local) and client-level (central) DP.

Both modes release the output of a *subsampled Gaussian mechanism* many times:
each step samples every record (an example for DP-SGD, a node for central DP)
independently with probability ``q`` (Poisson sampling), sums their contributions
clipped to L2 norm ``C`` and adds ``N(0, (z C)^2 I)``. The privacy loss of ``T``
such steps is tracked with Renyi DP (Mironov 2017, "Renyi Differential Privacy",
https://arxiv.org/abs/1702.07476; the sampled Gaussian bound of Mironov, Talwar,
Zhang 2019, https://arxiv.org/abs/1908.10530; used for DP-SGD by Abadi et al. 2016,
https://arxiv.org/abs/1607.00133): ``RDP_alpha(T) = T * RDP_alpha(q, z)`` and

    epsilon(delta) = min_alpha  RDP_alpha(T) + log(1 / delta) / (alpha - 1)

(with Opacus's tighter conversion). All numbers come from Opacus's RDP accountant;
nothing here re-implements the analysis. Opacus is imported inside the functions
so that importing :mod:`fedapp.privacy` never imports it.

A *history* is the Opacus RDP accountant's own state: a list of
``(noise_multiplier, sample_rate, steps)`` triples, one per run of identical steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache

History = list[tuple[float, float, int]]

#: The only accountant whose history this package persists and restores.
ACCOUNTANT = "rdp"


def _check_budget(target_epsilon: float, delta: float) -> None:
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target epsilon must be > 0 and finite, got {target_epsilon!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def check_history(history: Iterable[Sequence[float]]) -> History:
    """Validate and normalise a history to ``[(z: float, q: float, steps: int), ...]``."""
    out: History = []
    for entry in history:
        if len(entry) != 3:
            raise ValueError(f"history entry {entry!r} is not (noise_multiplier, rate, steps)")
        z, q, steps = float(entry[0]), float(entry[1]), entry[2]
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        if not (math.isfinite(z) and z > 0) or not 0 < q <= 1:
            raise ValueError(f"history entry {entry!r}: need noise_multiplier > 0, 0 < q <= 1")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"history entry {entry!r}: steps must be an int >= 0")
        out.append((z, q, steps))
    return out


def epsilon_of(history: Iterable[Sequence[float]], delta: float) -> float:
    """Epsilon spent at ``delta`` by a history, per Opacus's RDP accountant (0 when empty).

    The same computation as ``RDPAccountant.get_epsilon`` (Opacus's ``compute_rdp`` per
    entry, summed, then its ``get_privacy_spent`` over its default orders), bit for bit,
    except that the one-step RDP of each ``(z, q)`` is cached (:func:`_step_rdp`): RDP
    composes linearly in the steps, and Opacus's ``compute_rdp(q, z, T)`` is literally the
    one-step vector times ``T``. Uncached it costs 0.03-0.6 s per call on a small CPU
    (a series per fractional order), more than a local epoch of DP-SGD on a node.
    """
    import numpy as np
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    entries = [h for h in check_history(history) if h[2] > 0]
    if not entries:
        return 0.0
    rdp = sum(np.asarray(_step_rdp(q, z)) * steps for z, q, steps in entries)
    eps, _ = analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp,
                                        delta=delta)
    return float(eps)


@lru_cache(maxsize=256)
def _step_rdp(sample_rate: float, noise_multiplier: float) -> tuple[float, ...]:
    """Opacus's RDP of one sampled Gaussian step at its default orders (cached)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    return tuple(float(v) for v in analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
        orders=RDPAccountant.DEFAULT_ALPHAS))


@lru_cache(maxsize=64)
def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, total_steps: int,
                    accountant: str = "rdp") -> float:
    """The noise multiplier ``z`` that spends exactly the budget after ``total_steps`` steps.

    Calibrated ONCE, up front, for the whole planned training (for DP-SGD on a node:
    rounds x local epochs x steps per epoch; for central DP: rounds): the smallest
    ``z`` (to a relative precision of 0.5 %) with ``epsilon(z, q, T) <= target_epsilon``,
    found by Opacus's ``get_noise_multiplier`` (a bisection on its own accountant).
    Re-calibrating every round on the remaining budget would change ``z`` from round
    to round and is not what this plans. Cached: the bisection evaluates the
    accountant a dozen times (about a second on a small CPU).
    """
    from opacus.accountants.utils import get_noise_multiplier

    _check_budget(target_epsilon, delta)
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total steps must be an int >= 1, got {total_steps!r}")
    return float(get_noise_multiplier(
        target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
        steps=total_steps, accountant=accountant,
        epsilon_tolerance=min(0.01, 0.005 * target_epsilon),
    ))
