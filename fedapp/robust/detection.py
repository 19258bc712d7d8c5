"""Anomaly detection on the ``(n, d)`` update matrix: scores and flags, pure.

Detection does not aggregate and drops nothing by itself: it scores every row and
says which rows look Byzantine and why. Four scores, each aimed at a family of attacks
(``O(n d)``, plus one ``n x n`` Gram matrix for the copies):

* **Norm z-score** (scaling, model replacement, Gaussian noise). With
  ``r_i = ||u_i||``, ``med = median_i r_i`` and ``MAD = median_i |r_i - med|``, the
  robust z-score is ``z_i = (r_i - med) / (1.4826 * MAD)`` (1.4826 makes the MAD a
  consistent estimate of a Gaussian's standard deviation). Row ``i`` is flagged when
  ``z_i > norm_threshold`` (default 3.5, Iglewicz & Hoaglin's cut-off for modified
  z-scores; one-sided: small norms are not flagged). With Gaussian norms, some honest
  row of a round crosses 3.5 with probability about 8% (n=9), 6% (n=20), 4% (n=50).
  When ``MAD = 0`` (half or more of the norms are equal) the scale falls back to
  ``1.253314 * MeanAD`` with ``MeanAD = mean_i |r_i - med|`` (Iglewicz & Hoaglin's
  modified z-score); when that is 0 too, every norm is equal and every ``z_i = 0``.
* **Cosine to a robust reference** (sign flipping, inner-product manipulation,
  min-max / min-sum along the mean). ``cos_i = <u_i, r> / (||u_i|| ||r||)`` where
  ``r`` is a robust reference aggregate (default: the coordinate-wise median of the
  rows). Row ``i`` is flagged when ``cos_i < cosine_threshold`` (default 0.0: the
  update points away from the reference). On non-IID data honest updates are nearly
  orthogonal to each other, so one round's cosine flags honest rows too: the strategy
  therefore flags on the node's *cosine reputation* (``Reputation``, its cosines
  smoothed over rounds; ``DetectionReport.with_reputation``). The cosine of a zero
  row, or to a zero reference, is undefined: it is reported as 0.0 and never flagged.
* **Sign skew** (A Little Is Enough, min-max / min-sum along the coordinate-wise std).
  ``skew_i = (P_i - N_i) / (P_i + N_i)`` where ``P_i`` (``N_i``) counts the coordinates
  where ``u_i`` lies above (below) the reference. An honest row sits on either side of
  the coordinate-wise median about equally often (|skew| was at most 0.21 over 15
  rounds of the robustness benchmark's 20 honest nodes), while a row shifted by
  ``-z sigma_j`` on every coordinate sits below it almost everywhere (skew -0.75 at
  ``z = 0.5``). Row ``i`` is flagged when ``|skew_i| > sign_threshold`` (default 0.5:
  three coordinates to one). Sign statistics as a filter come from SignGuard (Xu,
  Huang, Song, Lan, ICDCS 2022, https://arxiv.org/abs/2109.05872); here they are taken
  relative to the median, so a shift that is small in every coordinate still shows.

* **Copies** (colluders that send one crafted update, as ALIE, IPM, min-max and min-sum do
  in their papers). ``q_i = nn_i / median_j nn_j`` with ``nn_i`` the distance from row ``i``
  to its nearest other row; flagged when ``q_i < duplicate_threshold`` (default 0.1: ten
  times closer to another update than updates typically are). Independent training on
  different data never gives two hospitals the same update, and the rule is scale-free:
  an IID federation, where all updates are close, has a larger typical distance too.
  Colluders who add independent noise to their copies escape it (the norm check then sees
  the noise); it is one signal among four. FoolsGold (Fung, Yoon, Beschastnikh, RAID
  2020, https://arxiv.org/abs/1808.04866) down-weights sybils by update similarity in the
  same spirit. The other checks use, as reference, the coordinate-wise median of the rows
  no check suspects (see ``detect_anomalies``).

Per-node cosine reputations across rounds, and exclusion, are the server's
(``fedapp.server.screen``); this module is pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fedapp.robust.coordinate import coordinate_median
from fedapp.robust.distances import distances_to, pairwise_sq_distances, rows_per_block

#: 1 / Phi^-1(3/4): the MAD of a Gaussian times this is its standard deviation.
CHECKS = ("norm", "cosine", "sign", "copy")  # the four checks, as named in reports
MAD_SCALE = 1.4826
#: sqrt(pi / 2): the mean absolute deviation of a Gaussian times this is its std.
MEAN_AD_SCALE = 1.253314


@dataclass(frozen=True)
class DetectionReport:
    """Scores of every row and the rows flagged, by row index of the input matrix.

    ``reasons`` maps each flagged row to a readable reason, e.g. ``"norm z=7.3 > 3.5"``,
    ``"cosine -0.98 < 0.0"`` or ``"sign skew -0.83 beyond +-0.5"`` (joined by ``"; "``);
    ``checks`` names the checks behind each (``CHECKS``: norm, cosine, sign, copy).
    ``cosine_reputation`` is empty, or one smoothed cosine per row that the cosine check
    used instead of ``cosine`` (see ``with_reputation``).
    """

    flagged: tuple[int, ...]
    norm_z: tuple[float, ...]
    cosine: tuple[float, ...]
    reasons: dict[int, str] = field(default_factory=dict)
    checks: dict[int, tuple[str, ...]] = field(default_factory=dict)  # CHECKS that flagged
    norm_threshold: float = 3.5
    cosine_threshold: float = 0.0
    sign_skew: tuple[float, ...] = ()
    sign_threshold: float = 0.5
    cosine_reputation: tuple[float, ...] = ()
    nearest_ratio: tuple[float, ...] = ()
    duplicate_threshold: float = 0.1

    def _cos(self, i: int) -> float:
        return self.cosine_reputation[i] if self.cosine_reputation else self.cosine[i]

    def severity(self, i: int) -> float:
        """How far row ``i`` is past the thresholds: ``max(z_i / t_z, (1 - c_i) / (1 - t_cos),
        |skew_i| / t_skew, t_dup / q_i)`` with ``c_i`` the cosine the check uses and ``q_i``
        the row's nearest-neighbour ratio. Each term exceeds 1 exactly when its check fires,
        so flagged rows have severity > 1 and the scales of the checks are comparable."""
        by_norm = self.norm_z[i] / self.norm_threshold if self.norm_threshold > 0 else 0.0
        by_cos = (1.0 - self._cos(i)) / max(1.0 - self.cosine_threshold, 1e-12)
        by_sign = (abs(self.sign_skew[i]) / self.sign_threshold
                   if self.sign_skew and self.sign_threshold > 0 else 0.0)
        by_copy = (self.duplicate_threshold / max(self.nearest_ratio[i], 1e-12)
                   if self.nearest_ratio else 0.0)
        return max(by_norm, by_cos, by_sign, by_copy)

    def most_severe(self, limit: int | None) -> tuple[int, ...]:
        """The flagged rows to exclude when at most ``limit`` may go (None: all of them):
        the ``limit`` with the highest ``severity``, ties to the lower index, in row order.

        Detection flags honest outliers too (non-IID data has them every round); a defense
        that assumes at most ``f`` Byzantine nodes should not drop more than ``f``, or an
        attacker who can make honest rows look anomalous removes honest nodes for free."""
        if limit is None or limit >= len(self.flagged):
            return self.flagged
        ranked = sorted(self.flagged, key=lambda i: (-self.severity(i), i))
        return tuple(sorted(ranked[: max(limit, 0)]))

    def with_reputation(self, cosine_reputation: Sequence[float]) -> DetectionReport:
        """The same scores, flagged again with each row's smoothed cosine (its node's
        ``Reputation`` score, this round included) in place of this round's cosine."""
        if len(cosine_reputation) != len(self.cosine):
            raise ValueError(f"{len(cosine_reputation)} reputation scores for "
                             f"{len(self.cosine)} rows")
        return _flag(self.norm_z, self.cosine, self.sign_skew, self.nearest_ratio,
                     self.norm_threshold, self.cosine_threshold, self.sign_threshold,
                     self.duplicate_threshold, tuple(float(c) for c in cosine_reputation))


def _flag(norm_z: tuple[float, ...], cosine: tuple[float, ...], skew: tuple[float, ...],
          ratio: tuple[float, ...], norm_threshold: float, cosine_threshold: float,
          sign_threshold: float, duplicate_threshold: float,
          reputation: tuple[float, ...] = ()) -> DetectionReport:
    """Apply the four checks to the scores (see the module docstring)."""
    reasons: dict[int, str] = {}
    checks: dict[int, tuple[str, ...]] = {}
    for i in range(len(norm_z)):
        parts: list[tuple[str, str]] = []
        if norm_z[i] > norm_threshold:
            parts.append(("norm", f"norm z={norm_z[i]:.1f} > {norm_threshold}"))
        if reputation and reputation[i] < cosine_threshold:
            parts.append(("cosine", f"cosine reputation {reputation[i]:.2f} < "
                          f"{cosine_threshold} (this round {cosine[i]:.2f})"))
        elif not reputation and cosine[i] < cosine_threshold:
            parts.append(("cosine", f"cosine {cosine[i]:.2f} < {cosine_threshold}"))
        if skew and sign_threshold > 0 and abs(skew[i]) > sign_threshold:
            parts.append(("sign", f"sign skew {skew[i]:+.2f} beyond +-{sign_threshold}"))
        if ratio and ratio[i] < duplicate_threshold:
            parts.append(("copy", f"nearest update at {ratio[i]:.3f} x the typical distance "
                          f"< {duplicate_threshold}"))
        if parts:
            reasons[i] = "; ".join(text for _, text in parts)
            checks[i] = tuple(check for check, _ in parts)
    return DetectionReport(flagged=tuple(reasons), norm_z=norm_z, cosine=cosine,
                           reasons=reasons, checks=checks, norm_threshold=norm_threshold,
                           cosine_threshold=cosine_threshold, sign_skew=skew,
                           sign_threshold=sign_threshold, cosine_reputation=reputation,
                           nearest_ratio=ratio, duplicate_threshold=duplicate_threshold)


def robust_z_scores(values: torch.Tensor) -> torch.Tensor:
    """Robust z-scores ``(v_i - median) / (1.4826 * MAD)`` as float64 (see module doc).

    The median of an even count is the mean of the two middle values. Falls back to
    ``1.253314 * MeanAD`` when ``MAD = 0``, and returns zeros when that is 0 too.
    """
    v = values.detach().to(torch.float64).reshape(-1)
    med, scale = robust_location_scale(v)
    if float(scale) <= 0.0:
        return torch.zeros_like(v)
    return (v - med) / scale


def robust_location_scale(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(median, 1.4826 * MAD)`` of a float64 vector, with ``1.253314 * MeanAD`` as the
    scale when ``MAD = 0`` (the denominators of ``robust_z_scores``)."""
    med = torch.quantile(v, 0.5)
    dev = (v - med).abs()
    scale = MAD_SCALE * torch.quantile(dev, 0.5)
    if float(scale) <= 0.0:
        scale = MEAN_AD_SCALE * dev.mean()
    return med, scale


def row_norms(updates: torch.Tensor) -> torch.Tensor:
    """``||u_i||`` of every row, float64, in bounded-memory row blocks."""
    return distances_to(updates, torch.zeros(updates.shape[1], dtype=updates.dtype))


def cosine_to(
    updates: torch.Tensor, reference: torch.Tensor, norms: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos_i = <u_i, r> / (||u_i|| ||r||)`` as float64, and a mask of rows where it is defined.

    ``norms`` (the rows' norms) is computed when not given.
    """
    ref = reference.detach().reshape(-1)
    dots = (updates.detach() @ ref.to(updates.dtype)).to(torch.float64)
    norms = row_norms(updates) if norms is None else norms
    ref_norm = torch.linalg.vector_norm(ref.to(torch.float64))
    denom = norms * ref_norm
    defined = denom > 0
    cos = torch.where(defined, dots / denom.clamp_min(1e-300), torch.zeros_like(dots))
    return cos.clamp(-1.0, 1.0), defined


def sign_skew(updates: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``skew_i = (P_i - N_i) / (P_i + N_i)`` as float64: ``P_i`` (``N_i``) counts the
    coordinates where row ``i`` is above (below) ``reference``; 0 for a row equal to it.
    Computed in bounded-memory row blocks."""
    n, d = updates.shape
    rows = rows_per_block(d)
    ref = reference.detach().reshape(-1).to(updates.dtype)
    out = torch.empty(n, dtype=torch.float64)
    for i in range(0, n, rows):
        diff = updates[i : i + rows].detach() - ref
        pos = (diff > 0).sum(dim=1).to(torch.float64)
        neg = (diff < 0).sum(dim=1).to(torch.float64)
        out[i : i + rows] = (pos - neg) / (pos + neg).clamp_min(1.0)
    return out


def nearest_ratio(updates: torch.Tensor) -> torch.Tensor:
    """``q_i = nn_i / median_j nn_j`` as float64, where ``nn_i = min_{j != i} ||u_i - u_j||``
    (one Gram matrix, ``pairwise_sq_distances``). Copies have ``q = 0``. When half or more
    of the rows have a copy (median 0), rows with a copy get 0 and the others infinity; a
    single row gets 1."""
    n = updates.shape[0]
    if n < 2:
        return torch.ones(n, dtype=torch.float64)
    dist = pairwise_sq_distances(updates)
    dist.fill_diagonal_(float("inf"))
    nearest = dist.min(dim=1).values.sqrt()
    typical = torch.quantile(nearest, 0.5)
    if float(typical) > 0:
        return nearest / typical
    return torch.where(nearest > 0, torch.full_like(nearest, float("inf")),
                       torch.zeros_like(nearest))


def detect_anomalies(
    updates: torch.Tensor,
    *,
    norm_threshold: float = 3.5,
    cosine_threshold: float = 0.0,
    sign_threshold: float = 0.5,
    duplicate_threshold: float = 0.1,
    reference: torch.Tensor | None = None,
) -> DetectionReport:
    """Score and flag every row (module docstring): norm z-score above ``norm_threshold``,
    sign skew beyond ``+-sign_threshold`` (0 turns it off), nearest-neighbour ratio below
    ``duplicate_threshold`` (0 turns it off), cosine to the reference below
    ``cosine_threshold``.

    Without ``reference`` the sign skew is taken to the coordinate-wise median of all rows
    and the cosine to the coordinate-wise median of the rows the other three checks leave
    (all rows if they leave fewer than half): a cluster of crafted rows pulls the median of
    all rows towards itself, enough at 30% to make the crafted rows look the most aligned.
    With ``reference`` both use it. ``updates`` is not modified. Raises ``ValueError`` on a
    matrix that is not 2-D or empty, or a reference of the wrong length.
    """
    if updates.ndim != 2 or updates.shape[0] == 0:
        raise ValueError(f"updates must be a non-empty (n, d) tensor, got {tuple(updates.shape)}")
    if reference is not None and reference.numel() != updates.shape[1]:
        raise ValueError(f"reference has {reference.numel()} values, updates have "
                         f"{updates.shape[1]} columns")
    n = updates.shape[0]
    norms = row_norms(updates)
    z = robust_z_scores(norms)
    similarity = nearest_ratio(updates)
    median_all = coordinate_median(updates).aggregate if reference is None else reference
    skew = sign_skew(updates, median_all)
    if reference is None:
        suspect = (z > norm_threshold) | (similarity < duplicate_threshold)
        if sign_threshold > 0:
            suspect |= skew.abs() > sign_threshold
        clean = torch.nonzero(~suspect).reshape(-1)
        reference = (coordinate_median(updates[clean]).aggregate
                     if 0 < len(clean) < n and 2 * len(clean) >= n else median_all)
    cos, _ = cosine_to(updates, reference, norms)
    return _flag(tuple(z.tolist()), tuple(cos.tolist()), tuple(skew.tolist()),
                 tuple(similarity.tolist()), norm_threshold, cosine_threshold, sign_threshold,
                 duplicate_threshold)


def clip_to_norm_threshold(updates: torch.Tensor, norm_threshold: float) -> torch.Tensor:
    """Scale the rows whose norm z-score exceeds ``norm_threshold`` down to the norm where
    it equals the threshold, ``med + norm_threshold * 1.4826 * MAD`` (the MeanAD fallback
    when ``MAD = 0``); other rows are returned unchanged. Bounds what an unexcluded
    large row can do to a mean without dropping it."""
    norms = row_norms(updates)
    med, scale = robust_location_scale(norms)
    bound = med + norm_threshold * scale
    factor = torch.where(norms > bound, bound / norms.clamp_min(1e-300), torch.ones_like(norms))
    if bool((factor == 1.0).all()):
        return updates
    return updates * factor.to(updates.dtype)[:, None]
