"""Omniscient colluding attacks (simulation only): honest updates in, Byzantine rows out.

Every attack is a pure function ``f(honest, num_byzantine, **params)`` of the
``(n_h, d)`` float32 matrix ``H`` of honest updates (one row per honest node, the
way the aggregation rules see them). It returns the ``(n_b, d)`` rows the
``n_b = num_byzantine`` colluding nodes send; all of them send the same row, as in
the papers. Notation: ``mu = mean_i h_i`` and ``sigma = std_i h_i`` coordinate-wise
(population std, ``correction=0``, so one honest row gives ``sigma = 0``).

Use them through ``fedapp.attacks.threat_model.ThreatModel``; the registry of names is
``OMNISCIENT_ATTACKS`` below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import torch

from fedapp.attacks.noise import spread
from fedapp.robust.base import Aggregator
from fedapp.robust.distances import distances_to, pairwise_sq_distances, rows_per_block

#: Default grid of ``z`` searched by ``alie_adaptive``.
ALIE_Z_GRID: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
#: Default grid of ``epsilon`` searched by ``ipm_adaptive``.
IPM_EPS_GRID: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 100.0)
#: Perturbation directions of Shejwalkar & Houmansadr: unit vector, sign, std.
PERTURBATIONS = ("unit", "sign", "std")


def _check(honest: torch.Tensor, num_byzantine: int) -> None:
    if honest.ndim != 2 or honest.shape[0] == 0:
        raise ValueError(f"honest must be a non-empty (n_h, d) tensor, got {tuple(honest.shape)}")
    if isinstance(num_byzantine, bool) or not isinstance(num_byzantine, int) or num_byzantine < 1:
        raise ValueError(f"num_byzantine must be an int >= 1, got {num_byzantine!r}")


def _repeat(row: torch.Tensor, num_byzantine: int) -> torch.Tensor:
    return row.to(torch.float32).unsqueeze(0).repeat(num_byzantine, 1)


def alie_z(n: int, f: int) -> float:
    """``z_max`` of Baruch et al. for ``n`` nodes of which ``f`` are Byzantine.

    ``s = floor(n / 2 + 1) - f`` honest nodes must be "won over"; then
    ``z_max = Phi^-1((n - s) / n)`` with ``Phi`` the standard normal CDF. Raises
    ``ValueError`` when ``(n - s) / n`` is not in ``(0, 1)`` (``f`` too large).
    """
    s = math.floor(n / 2 + 1) - f
    prob = (n - s) / n if n > 0 else 0.0
    if not 0.0 < prob < 1.0:
        raise ValueError(f"ALIE's z_max is undefined for n={n}, f={f}: (n - s) / n = {prob}")
    return NormalDist().inv_cdf(prob)


def alie(honest: torch.Tensor, num_byzantine: int, *, z: float | None = None,
         num_nodes: int | None = None) -> torch.Tensor:
    """A Little Is Enough: every coordinate ``mu_j - z * sigma_j``.

    Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For
    Distributed Learning", NeurIPS 2019 (https://arxiv.org/abs/1902.06156).
    ``z`` defaults to ``alie_z(n, num_byzantine)`` with ``n = num_nodes`` (default
    ``n_h + num_byzantine``). The paper shifts by ``z sigma``; which side is a
    convention, here ``-``.
    """
    _check(honest, num_byzantine)
    if z is None:
        z = alie_z(num_nodes or honest.shape[0] + num_byzantine, num_byzantine)
    sigma, mu = torch.std_mean(honest, dim=0, correction=0)
    return _repeat(mu - z * sigma, num_byzantine)


def ipm(honest: torch.Tensor, num_byzantine: int, *, epsilon: float = 0.1) -> torch.Tensor:
    """Inner Product Manipulation: ``-epsilon * mu``.

    Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner
    Product Manipulation", UAI 2019 / PMLR 115, 2020 (https://arxiv.org/abs/1903.03936).
    A small ``epsilon`` (default 0.1) stays close to the honest rows (aimed at
    distance-based rules); a large one (e.g. 100) overwhelms mean-like rules.
    """
    _check(honest, num_byzantine)
    return _repeat(-epsilon * honest.mean(dim=0), num_byzantine)


def perturbation(honest: torch.Tensor, kind: str = "unit") -> torch.Tensor:
    """Direction ``p`` of Shejwalkar & Houmansadr: ``-mu / ||mu||`` ("unit"),
    ``-sign(mu)`` ("sign") or ``-sigma`` ("std"). A zero ``mu`` gives ``p = 0`` for "unit"."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"perturbation {kind!r} is not one of: {', '.join(PERTURBATIONS)}")
    sigma, mu = torch.std_mean(honest, dim=0, correction=0)
    if kind == "sign":
        return -torch.sign(mu)
    if kind == "std":
        return -sigma
    norm = torch.linalg.vector_norm(mu)
    return -mu / norm if float(norm) > 0 else torch.zeros_like(mu)


def _matvec64(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x @ v`` in float64, converting ``x`` in bounded row blocks."""
    rows = rows_per_block(x.shape[1])
    v64 = v.to(torch.float64)
    return torch.cat([x[i:i + rows].to(torch.float64) @ v64 for i in range(0, x.shape[0], rows)])


def _largest_feasible(feasible: Callable[[float], bool], tol: float) -> float:
    """Largest ``gamma >= 0`` with ``feasible(gamma)``, to relative tolerance ``tol``.

    ``feasible`` must hold on an interval ``[0, gamma*]`` (true for the convex
    constraints below). Brackets ``gamma*`` by doubling from 1, then bisects until
    ``hi - lo <= tol * hi``; returns the feasible end ``lo``. This is the search of
    Shejwalkar & Houmansadr's Algorithm 1 (halving steps), run to a set tolerance.
    """
    lo, hi = 0.0, 1.0
    while feasible(hi):
        lo, hi = hi, 2.0 * hi
        if hi > 1e300:
            raise ValueError("gamma is unbounded: the perturbation has no effect on distances")
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        if feasible(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _quadratic_terms(honest: torch.Tensor, mu: torch.Tensor,
                     p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``||mu + g p - h_i||^2 = pp g^2 + 2 b_i g + c_i``: returns ``(b, c, pp)`` in float64."""
    c = distances_to(honest, mu) ** 2
    b = float(mu.to(torch.float64) @ p.to(torch.float64)) - _matvec64(honest, p)
    pp = float(torch.linalg.vector_norm(p.to(torch.float64)) ** 2)
    return b, c, pp


def _min_max_or_sum(honest: torch.Tensor, num_byzantine: int, kind: str, perturbation_kind: str,
                    tol: float) -> torch.Tensor:
    _check(honest, num_byzantine)
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    mu = honest.mean(dim=0)
    p = perturbation(honest, perturbation_kind)
    b, c, pp = _quadratic_terms(honest, mu, p)
    if pp == 0.0:
        return _repeat(mu, num_byzantine)
    dist = pairwise_sq_distances(honest)
    if kind == "max":
        bound = float(dist.max())

        def feasible(g: float) -> bool:
            return float((pp * g * g + 2.0 * g * b + c).max()) <= bound
    else:
        bound = float(dist.sum(dim=1).max())
        n, sum_b, sum_c = honest.shape[0], float(b.sum()), float(c.sum())

        def feasible(g: float) -> bool:
            return n * pp * g * g + 2.0 * g * sum_b + sum_c <= bound

    gamma = _largest_feasible(feasible, tol)
    return _repeat(mu + gamma * p, num_byzantine)


def min_max(honest: torch.Tensor, num_byzantine: int, *, perturbation: str = "unit",
            tol: float = 1e-6) -> torch.Tensor:
    """Min-Max: ``mu + gamma p`` with the largest ``gamma`` such that
    ``max_i ||m - h_i|| <= max_{i,j} ||h_i - h_j||``.

    Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning
    Attacks and Defenses for Federated Learning", NDSS 2021. ``p`` from
    ``perturbation`` ("unit", "sign" or "std"); ``gamma`` by bisection to relative
    tolerance ``tol``. The malicious row is never farther from any honest row than
    the two farthest honest rows are from each other.
    """
    return _min_max_or_sum(honest, num_byzantine, "max", perturbation, tol)


def min_sum(honest: torch.Tensor, num_byzantine: int, *, perturbation: str = "unit",
            tol: float = 1e-6) -> torch.Tensor:
    """Min-Sum: ``mu + gamma p`` with the largest ``gamma`` such that
    ``sum_i ||m - h_i||^2 <= max_i sum_j ||h_i - h_j||^2``.

    Shejwalkar & Houmansadr, NDSS 2021 (see ``min_max``): the malicious row's sum of
    squared distances to the honest rows stays within the largest honest one.
    """
    return _min_max_or_sum(honest, num_byzantine, "sum", perturbation, tol)


def min_max_noisy(honest: torch.Tensor, num_byzantine: int, *, perturbation: str = "unit",
                  noise: float = 0.5, tol: float = 1e-6) -> torch.Tensor:
    """Min-Max whose copies are made distinct: ``m + e_k`` for colluder ``k``, with ``e_k`` an
    independent Gaussian direction of norm ``noise * median_i nn_i`` (``nn_i`` the distance
    from honest row ``i`` to its nearest other honest row; ``spread``).

    Not from the papers, which send one row: this is the attacker who knows that a defense
    flags copies (``fedapp.robust.detection``, the copy check flags rows ten times closer to another
    than updates typically are) and spends some of its distance budget on looking
    independent. The noise is seeded by the honest rows, so a run is reproducible.
    """
    return spread(min_max(honest, num_byzantine, perturbation=perturbation, tol=tol), honest,
                  noise)


def adaptive_search(
    craft: Callable[[float], torch.Tensor],
    honest: torch.Tensor,
    scales: Sequence[float],
    aggregator: Aggregator,
    **aggregator_params: object,
) -> tuple[float, torch.Tensor, float]:
    """Try every scale; keep the rows that push the aggregate farthest from the honest mean.

    For each ``s`` in ``scales``: ``B = craft(s)``,
    ``damage(s) = ||aggregator([H; B], **aggregator_params) - mu||`` (honest rows
    first, uniform weights). Returns ``(s*, B*, damage(s*))`` for the first ``s``
    with the largest damage. Costs ``len(scales)`` aggregations.
    """
    if not scales:
        raise ValueError("scales must not be empty")
    target = honest.mean(dim=0).to(torch.float64)
    best: tuple[float, torch.Tensor, float] | None = None
    for s in scales:
        rows = craft(float(s))
        agg = aggregator(torch.cat([honest, rows]), **aggregator_params).aggregate
        damage = float(torch.linalg.vector_norm(agg.to(torch.float64) - target))
        if best is None or damage > best[2]:
            best = (float(s), rows, damage)
    assert best is not None
    return best


def alie_adaptive(honest: torch.Tensor, num_byzantine: int, aggregator: Aggregator, *,
                  scales: Sequence[float] = ALIE_Z_GRID,
                  **aggregator_params: object) -> torch.Tensor:
    """ALIE with the ``z`` from ``scales`` that does the most damage to ``aggregator``.

    Baruch et al. 2019 (see ``alie``), made adaptive to the known aggregation rule in
    the spirit of Shejwalkar & Houmansadr 2021: ``adaptive_search`` over ``z``.
    """
    _check(honest, num_byzantine)
    return adaptive_search(lambda z: alie(honest, num_byzantine, z=z), honest, scales,
                           aggregator, **aggregator_params)[1]


def ipm_adaptive(honest: torch.Tensor, num_byzantine: int, aggregator: Aggregator, *,
                 scales: Sequence[float] = IPM_EPS_GRID,
                 **aggregator_params: object) -> torch.Tensor:
    """IPM with the ``epsilon`` from ``scales`` that does the most damage to ``aggregator``.

    Xie et al. 2020 (see ``ipm``), made adaptive: ``adaptive_search`` over ``epsilon``.
    """
    _check(honest, num_byzantine)
    return adaptive_search(lambda e: ipm(honest, num_byzantine, epsilon=e), honest, scales,
                           aggregator, **aggregator_params)[1]


_OWN: dict[str, Callable[..., torch.Tensor]] = {
    "alie": alie,
    "ipm": ipm,
    "min-max": min_max,
    "min-sum": min_sum,
    "min-max-noisy": min_max_noisy,
    "alie-adaptive": alie_adaptive,
    "ipm-adaptive": ipm_adaptive,
}


def __getattr__(name: str) -> dict[str, Callable[..., torch.Tensor]]:
    """``OMNISCIENT_ATTACKS``, every omniscient attack by name as ``f(honest, num_byzantine,
    **params)``: this module's, ``fedapp.attacks.published``'s and ``.evasive``'s. Those build
    on this module, so the registry is assembled on first use (PEP 562), not imported."""
    if name != "OMNISCIENT_ATTACKS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from fedapp.attacks.evasive import EVASIVE_ATTACKS
    from fedapp.attacks.published import PUBLISHED_ATTACKS

    registry = {**_OWN, **PUBLISHED_ATTACKS, **EVASIVE_ATTACKS}
    globals()[name] = registry
    return registry
