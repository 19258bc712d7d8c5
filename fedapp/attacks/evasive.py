"""Omniscient attacks aimed at fedapp's own checks (simulation only).

fedapp screens every round (``fedapp.robust.detection``, ``fedapp.server.screen``): a norm
z-score, the cosine to the coordinate-wise median smoothed per node into a reputation
(moving average, memory 0.9), the sign skew to the median, and a copy check
(nearest-neighbour distance ratio below 0.1). An attacker who knows these checks avoids
each one:

* ``alie_noisy_adaptive``: ALIE with distinct copies (the copy check), the ``z`` that does
  the most damage to the whole defense;
* ``sign_balanced``: an ALIE-sized shift with as many coordinates above the median as
  below (the sign-skew check);
* ``sleeper``: honest-looking rows for ``delay`` rounds, then ``alie_noisy_adaptive`` (the
  reputation's memory);
* ``fang_sign_noise``: Fang's rows, each with the signs of a few random coordinates flipped
  independently, just enough that no two share one sign pattern (the sign-copy check).

Same contract as ``fedapp.attacks.omniscient``, where ``OMNISCIENT_ATTACKS`` registers them.
``mu`` and ``sigma`` are the honest rows' coordinate-wise mean and population std.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from fedapp.attacks.noise import jitter, seeded, spread, spread_radius
from fedapp.attacks.omniscient import ALIE_Z_GRID, _check, _repeat, adaptive_search, alie, alie_z
from fedapp.attacks.published import fang
from fedapp.robust.base import Aggregator
from fedapp.robust.collusion import nearest_sign_disagreement
from fedapp.robust.distances import distances_to

#: Rounds a ``sleeper`` behaves before it attacks (no run-config key sets it).
SLEEPER_DELAY = 5


def alie_noisy(honest: torch.Tensor, num_byzantine: int, *, z: float | None = None,
               noise: float = 0.5, num_nodes: int | None = None) -> torch.Tensor:
    """ALIE (``omniscient.alie``: ``mu - z sigma``) with colluder ``k``'s copy moved by an
    independent Gaussian direction of norm ``noise`` times the honest rows' typical
    nearest-neighbour distance (``noise.spread``, as ``min_max_noisy`` does)."""
    return spread(alie(honest, num_byzantine, z=z, num_nodes=num_nodes), honest, noise)


def alie_noisy_adaptive(honest: torch.Tensor, num_byzantine: int, aggregator: Aggregator, *,
                        scales: Sequence[float] = ALIE_Z_GRID, noise: float = 0.5,
                        **aggregator_params: object) -> torch.Tensor:
    """``alie_noisy`` with the ``z`` from ``scales`` that does the most damage to
    ``aggregator`` (``omniscient.adaptive_search``).

    Baruch et al., NeurIPS 2019 (ALIE), made adaptive as in Shejwalkar & Houmansadr, NDSS
    2021, and made to look independent: the papers' colluders send one row, which
    fedapp's copy check flags (ratio 0 < 0.1); here each copy sits ``noise`` (default 0.5)
    typical nearest-neighbour distances from the others. Against ``ThreatModel``'s target
    (``fedapp.server.build.adaptive_target``) the search scores each ``z`` against the whole
    defense: screening with the current reputations, then the stateful pipeline.
    """
    _check(honest, num_byzantine)
    radius = spread_radius(honest, noise)  # once, not per z: alie_noisy(z=z, noise=noise)
    return adaptive_search(lambda z: jitter(alie(honest, num_byzantine, z=z), honest, radius),
                           honest, scales, aggregator, **aggregator_params)[1]


def balanced_sides(mu: torch.Tensor) -> torch.Tensor:
    """The side ``t_j`` (+1 above, -1 below the median) of each coordinate for
    ``sign_balanced``: against the mean (``t_j = -sign(mu_j)``, ``+1`` read for
    ``mu_j = 0``), except that the ``|P - N| // 2`` coordinates of the majority side with
    the smallest ``|mu_j|`` go with the mean instead, so that ``P`` and ``N`` (the
    coordinates above and below) differ by at most one."""
    t = torch.where(mu >= 0, -1.0, 1.0).to(torch.float64)
    above = int((t > 0).sum())
    excess = abs(2 * above - t.numel()) // 2
    if excess:
        majority = 1.0 if 2 * above > t.numel() else -1.0
        candidates = torch.nonzero(t == majority).reshape(-1)
        order = torch.argsort(mu.to(torch.float64)[candidates].abs(), stable=True)
        t[candidates[order[:excess]]] = -majority
    return t


def sign_balanced(honest: torch.Tensor, num_byzantine: int, *, z: float | None = None,
                  noise: float = 0.5, num_nodes: int | None = None) -> torch.Tensor:
    """An ALIE-sized shift that sits above the honest median on half of the coordinates and
    below it on the other half: ``med_j + t_j z sigma_j`` (``t = balanced_sides(mu)``),
    copies made distinct as in ``alie_noisy`` (``noise``).

    ALIE (Baruch et al., NeurIPS 2019) sends ``mu - z sigma``: below the median almost
    everywhere, which fedapp's sign-skew check (``|P - N| / (P + N) > 0.5``, after SignGuard,
    Xu et al., ICDCS 2022) flags. Here the coordinates where the honest mean moves most
    (the largest ``|mu_j|``) are pushed against it (``t_j = -sign(mu_j)``), and the
    smallest ones just enough with it that the skew is 0 to the honest median: the damage
    of pushing against the mean is kept where it matters, the skew is gone. Shifting from
    the median rather than the mean keeps each coordinate on its intended side. ``z``
    defaults to ALIE's ``alie_z(num_nodes or n_h + num_byzantine, num_byzantine)``.
    """
    _check(honest, num_byzantine)
    if z is None:
        z = alie_z(num_nodes or honest.shape[0] + num_byzantine, num_byzantine)
    sigma, mu = torch.std_mean(honest.to(torch.float64), dim=0, correction=0)
    ordered = honest.sort(dim=0).values.to(torch.float64)
    n = honest.shape[0]
    median = 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])
    row = median + balanced_sides(mu) * z * sigma
    return spread(_repeat(row, num_byzantine), honest, noise)


def honest_looking(honest: torch.Tensor, num_byzantine: int) -> torch.Tensor:
    """``mu + r e_k``: the honest mean plus an independent Gaussian direction ``e_k`` of norm
    ``r = median_i ||h_i - mu||``, as far from the mean as a typical honest update is."""
    mu = honest.mean(dim=0)
    radius = float(torch.quantile(distances_to(honest, mu), 0.5))
    return jitter(_repeat(mu, num_byzantine), honest, radius)


def sleeper(honest: torch.Tensor, num_byzantine: int, aggregator: Aggregator, *,
            server_round: int, delay: int = SLEEPER_DELAY, scales: Sequence[float] = ALIE_Z_GRID,
            noise: float = 0.5, **aggregator_params: object) -> torch.Tensor:
    """A sleeper: ``honest_looking`` rows in rounds ``1..delay``, ``alie_noisy_adaptive``
    from round ``delay + 1`` on.

    Aimed at fedapp's cosine reputation (``fedapp.server.screen.Reputation``): the cosine
    check flags on a moving average of each node's cosines (memory 0.9), so a node that
    first earns a reputation close to the honest nodes' then keeps it for several
    attacking rounds: the on-off attack on reputation systems (Sun, Han, Liu, "Defense of
    Trust Management Vulnerabilities in Distributed Networks", IEEE Communications Magazine
    46(2), 2008), with a single switch. ``server_round`` is the run's round, given by
    ``ThreatModel``; ``delay`` defaults to ``SLEEPER_DELAY`` (5).
    """
    _check(honest, num_byzantine)
    if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
        raise ValueError(f"delay must be an int >= 0, got {delay!r}")
    if server_round <= delay:
        return honest_looking(honest, num_byzantine)
    return alie_noisy_adaptive(honest, num_byzantine, aggregator, scales=scales, noise=noise,
                               **aggregator_params)


def typical_sign_disagreement(honest: torch.Tensor) -> float:
    """``median_i min_{j != i} s_ij``, ``s_ij`` the share of the coordinates where both honest
    rows ``i`` and ``j`` are non-zero on which their signs differ (the sign-copy check's
    yardstick, ``collusion.nearest_sign_disagreement``; the lower middle value for an even
    count); 0 for fewer than two rows."""
    if honest.shape[0] < 2:
        return 0.0
    s = torch.sign(honest.to(torch.float64))
    nearest = nearest_sign_disagreement((s @ s.T).numpy(), (s.abs() @ s.abs().T).numpy())
    return float(torch.from_numpy(nearest).median())


def fang_sign_noise(honest: torch.Tensor, num_byzantine: int, *, share: float = 0.3,
                    b: float = 2.0) -> torch.Tensor:
    """Fang's rows (``published.fang``, ``b``), each with the sign of every coordinate
    flipped independently with probability ``p``, where ``2 p (1 - p) = share x`` the honest
    rows' typical nearest sign disagreement: two colluders then disagree in sign that
    share as often as honest neighbours do (the sign-copy check flags below 0.1; default
    0.3, a margin of 3; ``2 p (1 - p)`` is at most 1/2, signs drawn at random). Everything
    else of Fang's attack is kept."""
    if not (math.isfinite(share) and share >= 0.0):
        raise ValueError(f"share must be finite and >= 0, got {share}")
    rows = fang(honest, num_byzantine, b=b)
    target = share * typical_sign_disagreement(honest)  # 2p(1-p) = target, p <= 1/2
    p = 0.5 * (1.0 - (1.0 - 2.0 * min(target, 0.5)) ** 0.5)
    flip = torch.rand(rows.shape, generator=seeded(honest), dtype=torch.float64) < p
    return torch.where(flip, -rows, rows)


#: This module's attacks by name (``OMNISCIENT_ATTACKS`` has them).
EVASIVE_ATTACKS: dict[str, Callable[..., torch.Tensor]] = {
    "alie-noisy-adaptive": alie_noisy_adaptive,
    "sign-balanced": sign_balanced,
    "sleeper": sleeper,
    "fang-sign-noise": fang_sign_noise,
}
