"""What detection reports: every row's scores, the rows flagged, why, and how severely.

The scores and the checks are defined in ``fedapp.robust.detection`` (with their papers);
this module holds the report and the flagging rules applied to the scores, so that a
report can be flagged again with other cosines (``DetectionReport.with_reputation``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

CHECKS = ("norm", "cosine", "sign", "copy", "cluster")  # the checks, as named in reports


@dataclass(frozen=True)
class DetectionReport:
    """Scores of every row and the rows flagged, by row index of the input matrix.

    ``reasons`` maps each flagged row to a readable reason, e.g. ``"norm z=7.3 > 3.5"``,
    ``"cosine -0.98 < 0.0"`` or ``"sign skew -0.83 beyond +-0.5"`` (joined by ``"; "``);
    ``checks`` names the checks behind each (``CHECKS``: norm, cosine, sign, copy, cluster).
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
    cosine_spread: float = 0.0  # margin in robust stds below the round's median (cosine_cut)
    cosine_cut: float = 0.0  # the cosine check's effective threshold this round
    cluster_ratio: tuple[float, ...] = ()  # fedapp.robust.collusion.cluster_ratio per row
    cluster_threshold: float = 0.0  # 0: the cluster check is off
    evidence: tuple[int, ...] = ()  # rounds behind each row's reputation (with_reputation)
    cosine_floor: float | None = None  # reputation_floor: level; None: no floor
    floor_rounds: int = 3  # reputation_floor: the rounds of evidence it needs

    def _cos(self, i: int) -> float:
        return self.cosine_reputation[i] if self.cosine_reputation else self.cosine[i]

    def row_cut(self, i: int) -> float:
        """The cosine check's threshold for row ``i``: the round's ``cosine_cut``, raised to
        the reputation floor when the row's node has enough evidence (``reputation_floor``)."""
        evidence = self.evidence[i] if self.evidence else 0
        return reputation_floor(self.cosine_cut, evidence, self.cosine_floor, self.floor_rounds)

    def severity(self, i: int) -> float:
        """How far row ``i`` is past the thresholds: ``max(z_i / t_z, (1 - c_i) / (1 - t_i),
        |skew_i| / t_skew, t_dup / q_i, t_cl / k_i)`` with ``c_i`` the cosine the check uses,
        ``t_i`` its cosine threshold (``row_cut``), ``q_i`` the row's nearest-neighbour ratio
        and ``k_i`` its cluster ratio. Each term exceeds 1 exactly when its check fires, so
        flagged rows have severity > 1 and the scales of the checks are comparable."""
        by_norm = self.norm_z[i] / self.norm_threshold if self.norm_threshold > 0 else 0.0
        by_cos = (1.0 - self._cos(i)) / max(1.0 - self.row_cut(i), 1e-12)
        by_sign = (abs(self.sign_skew[i]) / self.sign_threshold
                   if self.sign_skew and self.sign_threshold > 0 else 0.0)
        by_copy = (self.duplicate_threshold / max(self.nearest_ratio[i], 1e-12)
                   if self.nearest_ratio else 0.0)
        by_cluster = (self.cluster_threshold / max(self.cluster_ratio[i], 1e-12)
                      if self.cluster_ratio and self.cluster_threshold > 0 else 0.0)
        return max(by_norm, by_cos, by_sign, by_copy, by_cluster)

    @property
    def excludable(self) -> tuple[int, ...]:
        """The flagged rows that exclusion may drop: those flagged by a check of the update's
        direction or of its likeness to other updates (cosine, sign, copy, cluster).

        A row flagged by its norm alone is kept and scaled down to the norm bound
        (``fedapp.server.screen``): its size is all that was seen wrong with it, and the
        clip removes exactly that excess. Under label skew the largest honest hospitals
        (more local steps, larger updates) are such rows; dropping them cost clean
        accuracy, clipping a scaled or noisy attacker to the bound leaves it the influence
        of an ordinary row."""
        return tuple(i for i in self.flagged if set(self.checks.get(i, ())) != {"norm"})

    def most_severe(self, limit: int | None) -> tuple[int, ...]:
        """The ``excludable`` rows to exclude when at most ``limit`` may go (None: all of
        them): the ``limit`` with the highest ``severity``, ties to the lower index, in row
        order.

        Detection flags honest outliers too (non-IID data has them every round), so the
        server never drops half of a round or more (``fedapp.server.screen.exclusion_limit``):
        the rows kept are a strict majority, whatever was flagged."""
        candidates = self.excludable
        if limit is None or limit >= len(candidates):
            return candidates
        ranked = sorted(candidates, key=lambda i: (-self.severity(i), i))
        return tuple(sorted(ranked[: max(limit, 0)]))

    def with_reputation(self, cosine_reputation: Sequence[float],
                        evidence: Sequence[int] = (), *, floor: float | None = None,
                        floor_rounds: int = 3) -> DetectionReport:
        """The same scores, flagged again with each row's smoothed cosine (its node's
        ``Reputation`` score, this round included) in place of this round's cosine;
        ``evidence``: the rounds behind each score, for the reputation ``floor``
        (``reputation_floor``; None: none)."""
        if len(cosine_reputation) != len(self.cosine) or (
                evidence and len(evidence) != len(self.cosine)):
            raise ValueError(f"{len(cosine_reputation)} reputation scores and "
                             f"{len(evidence)} evidence counts for {len(self.cosine)} rows")
        return flag_rows(self.norm_z, self.cosine, self.sign_skew, self.nearest_ratio,
                         self.norm_threshold, self.cosine_threshold, self.sign_threshold,
                         self.duplicate_threshold, tuple(float(c) for c in cosine_reputation),
                         cosine_spread=self.cosine_spread, cluster=self.cluster_ratio,
                         cluster_threshold=self.cluster_threshold,
                         evidence=tuple(int(e) for e in evidence), cosine_floor=floor,
                         floor_rounds=floor_rounds)


def reputation_floor(cut: float, evidence: int, floor: float | None, rounds: int) -> float:
    """A node's cosine threshold: ``max(cut, floor)`` once its reputation rests on at
    least ``rounds`` rounds, else ``cut`` (``floor`` None: ``cut``).

    ``cosine_cut``'s margin is in robust stds of the round's reputations, and 30%
    attackers who all point away from the consensus widen that spread themselves (a
    bimodal round: honest 0.05 to 0.42, sign flippers at -0.2, cut -0.5). A reputation is
    a mean of cosines to the robust reference; an honest node's is near or above 0
    (honest updates are nearly orthogonal, and agree more as training converges), so a
    mean clearly below 0 (``floor``, default -0.05: a margin for honest nodes that sit
    just below 0) over enough rounds (``rounds``, default 3: one round's cosine is noise)
    means a node that pulls against the others whatever the spread."""
    if floor is None or evidence < rounds:
        return cut
    return max(cut, floor)


def cosine_cut(values: Sequence[float], threshold: float, spread: float) -> float:
    """The cosine check's threshold for one round: ``min(t, med - k * s)`` with ``t`` the
    fixed threshold, ``med`` the median of the round's cosines (or reputations), ``s =
    1.4826 * MAD`` their robust standard deviation (Hampel's; ``1.253314 * MeanAD`` when
    the MAD is 0) and ``k = spread``; ``t`` alone when ``k <= 0`` or fewer than 3 values.

    A fixed ``t = 0`` flags every honest node whose smoothed cosine dips just below 0 on
    skewed data, where honest cosines spread widely around a small positive median; the
    margin asks a node to be an outlier of the round too. With fewer than half of the
    nodes attacking, ``med`` and ``s`` are those of the honest majority's range."""
    if spread <= 0 or len(values) < 3:
        return threshold
    med = statistics.median(values)
    dev = [abs(v - med) for v in values]
    scale = 1.4826 * statistics.median(dev) or 1.253314 * statistics.fmean(dev)
    return min(threshold, med - spread * scale)


def flag_rows(norm_z: tuple[float, ...], cosine: tuple[float, ...], skew: tuple[float, ...],
              ratio: tuple[float, ...], norm_threshold: float, cosine_threshold: float,
              sign_threshold: float, duplicate_threshold: float,
              reputation: tuple[float, ...] = (), *, cosine_spread: float = 0.0,
              cluster: tuple[float, ...] = (), cluster_threshold: float = 0.0,
              evidence: tuple[int, ...] = (), cosine_floor: float | None = None,
              floor_rounds: int = 3) -> DetectionReport:
    """Apply the checks to the scores (see the module docstring); the cosine check
    against ``cosine_cut`` of the cosines it uses (the reputations when given), raised to
    ``cosine_floor`` for rows with ``floor_rounds`` rounds of ``evidence``
    (``reputation_floor``); the cluster check (``cluster`` ratios below
    ``cluster_threshold``) when both are given."""
    reasons: dict[int, str] = {}
    checks: dict[int, tuple[str, ...]] = {}
    used = reputation or cosine
    cut = cosine_cut(used, cosine_threshold, cosine_spread)
    cut_text = (f"{cosine_threshold}" if cut == cosine_threshold else
                f"{cut:.2f} ({cosine_spread:g} robust stds below the round's median)")
    for i in range(len(norm_z)):
        parts: list[tuple[str, str]] = []
        if norm_z[i] > norm_threshold:
            parts.append(("norm", f"norm z={norm_z[i]:.1f} > {norm_threshold}"))
        row = reputation_floor(cut, evidence[i] if evidence else 0, cosine_floor,
                               floor_rounds)
        if used[i] < row:
            what = "cosine reputation" if reputation else "cosine"
            now = f" (this round {cosine[i]:.2f})" if reputation else ""
            why = (cut_text if row == cut else
                   f"{row:g} (the floor, after {evidence[i]} rounds)")
            parts.append(("cosine", f"{what} {used[i]:.2f} < {why}{now}"))
        if skew and sign_threshold > 0 and abs(skew[i]) > sign_threshold:
            parts.append(("sign", f"sign skew {skew[i]:+.2f} beyond +-{sign_threshold}"))
        if ratio and ratio[i] < duplicate_threshold:
            parts.append(("copy", f"nearest update at {ratio[i]:.3f} x the typical distance "
                          f"(or sign disagreement) < {duplicate_threshold}"))
        if cluster and cluster_threshold > 0 and cluster[i] < cluster_threshold:
            parts.append(("cluster", f"differs from another update only by unshared noise: "
                          f"cluster ratio {cluster[i]:.3f} < {cluster_threshold}"))
        if parts:
            reasons[i] = "; ".join(text for _, text in parts)
            checks[i] = tuple(check for check, _ in parts)
    return DetectionReport(flagged=tuple(reasons), norm_z=norm_z, cosine=cosine,
                           reasons=reasons, checks=checks, norm_threshold=norm_threshold,
                           cosine_threshold=cosine_threshold, sign_skew=skew,
                           sign_threshold=sign_threshold, cosine_reputation=reputation,
                           nearest_ratio=ratio, duplicate_threshold=duplicate_threshold,
                           cosine_spread=cosine_spread, cosine_cut=cut,
                           cluster_ratio=cluster, cluster_threshold=cluster_threshold,
                           evidence=evidence, cosine_floor=cosine_floor,
                           floor_rounds=floor_rounds)
