"""What detection reports: every row's scores, the rows flagged, why, and how severely.

The scores and the checks are defined in ``fedapp.robust.detection`` (with their papers);
this module holds the report and the flagging rules applied to the scores, so that a
report can be flagged again with other cosines (``DetectionReport.with_reputation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

CHECKS = ("norm", "cosine", "sign", "copy")  # the four checks, as named in reports


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
        return flag_rows(self.norm_z, self.cosine, self.sign_skew, self.nearest_ratio,
                     self.norm_threshold, self.cosine_threshold, self.sign_threshold,
                     self.duplicate_threshold, tuple(float(c) for c in cosine_reputation))


def flag_rows(norm_z: tuple[float, ...], cosine: tuple[float, ...], skew: tuple[float, ...],
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
