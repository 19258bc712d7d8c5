"""Anomaly detection on the ``(n, d)`` update matrix, and per-node reputation.

Detection does not aggregate and drops nothing by itself: it scores every row and
says which rows look Byzantine and why. Two scores, both cheap (``O(n d)``):

* **Norm z-score.** Scaled updates (boosting, model replacement, Gaussian noise)
  have large norms. With ``r_i = ||u_i||``, ``med = median_i r_i`` and
  ``MAD = median_i |r_i - med|``, the robust z-score is
  ``z_i = (r_i - med) / (1.4826 * MAD)`` (1.4826 makes the MAD a consistent
  estimate of a Gaussian's standard deviation). Row ``i`` is flagged when
  ``z_i > norm_threshold`` (default 3.5, Iglewicz & Hoaglin's cut-off for modified
  z-scores; one-sided: small norms are not flagged). Even honest rows cross it by
  chance: with Gaussian norms, some honest row of a round is flagged with
  probability about 8% (n=9), 6% (n=20), 4% (n=50) at 3.5, and 13%, 11%, 14% at
  3.0, which is why ``Reputation`` smooths flags over rounds.
  When ``MAD = 0`` (half or more of the norms are equal) the scale falls back to
  ``1.253314 * MeanAD`` with ``MeanAD = mean_i |r_i - med|`` (Iglewicz & Hoaglin's
  modified z-score); when that is 0 too, every norm is equal and every ``z_i = 0``.
* **Cosine to a robust reference.** Sign flipping and inner-product manipulation
  point away from the honest direction. ``cos_i = <u_i, r> / (||u_i|| ||r||)``
  where ``r`` is a robust reference aggregate (default: the coordinate-wise
  median of the rows); row ``i`` is flagged when ``cos_i < cosine_threshold``
  (default 0.0: the update points away from the reference). The cosine of a zero
  row, or to a zero reference, is undefined: it is reported as 0.0 and never
  flagged.

``Reputation`` turns per-round flags into a per-node score that persists across
rounds (server side, keyed by Flower node id).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedapp.robust import coordinate_median
from fedapp.robust.distances import distances_to

#: 1 / Phi^-1(3/4): the MAD of a Gaussian times this is its standard deviation.
MAD_SCALE = 1.4826
#: sqrt(pi / 2): the mean absolute deviation of a Gaussian times this is its std.
MEAN_AD_SCALE = 1.253314


@dataclass(frozen=True)
class DetectionReport:
    """Scores of every row and the rows flagged, by row index of the input matrix.

    ``reasons`` maps each flagged row to a readable reason, e.g.
    ``"norm z=7.3 > 3.5"`` or ``"cosine -0.98 < 0.0"`` (both joined by ``"; "``).
    """

    flagged: tuple[int, ...]
    norm_z: tuple[float, ...]
    cosine: tuple[float, ...]
    reasons: dict[int, str] = field(default_factory=dict)
    norm_threshold: float = 3.5
    cosine_threshold: float = 0.0

    def severity(self, i: int) -> float:
        """How far row ``i`` is past the thresholds: ``max(z_i / t_z, (1 - cos_i) /
        (1 - t_cos))``. Each term exceeds 1 exactly when its check fires, so flagged
        rows have severity > 1 and the scales of the two checks are comparable."""
        by_norm = self.norm_z[i] / self.norm_threshold if self.norm_threshold > 0 else 0.0
        by_cos = (1.0 - self.cosine[i]) / max(1.0 - self.cosine_threshold, 1e-12)
        return max(by_norm, by_cos)

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


def robust_z_scores(values: torch.Tensor) -> torch.Tensor:
    """Robust z-scores ``(v_i - median) / (1.4826 * MAD)`` as float64 (see module doc).

    The median of an even count is the mean of the two middle values. Falls back to
    ``1.253314 * MeanAD`` when ``MAD = 0``, and returns zeros when that is 0 too.
    """
    v = values.detach().to(torch.float64).reshape(-1)
    med = torch.quantile(v, 0.5)
    dev = (v - med).abs()
    scale = MAD_SCALE * torch.quantile(dev, 0.5)
    if float(scale) <= 0.0:
        scale = MEAN_AD_SCALE * dev.mean()
    if float(scale) <= 0.0:
        return torch.zeros_like(v)
    return (v - med) / scale


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


def detect_anomalies(
    updates: torch.Tensor,
    *,
    norm_threshold: float = 3.5,
    cosine_threshold: float = 0.0,
    reference: torch.Tensor | None = None,
) -> DetectionReport:
    """Flag rows with a norm z-score above ``norm_threshold`` or a cosine to ``reference``
    below ``cosine_threshold`` (formulas in the module docstring).

    ``reference`` defaults to the coordinate-wise median of ``updates``; pass the
    aggregate of a robust rule to compare against it instead. ``updates`` is not
    modified. Raises ``ValueError`` on a matrix that is not 2-D or empty, or a
    reference of the wrong length.
    """
    if updates.ndim != 2 or updates.shape[0] == 0:
        raise ValueError(f"updates must be a non-empty (n, d) tensor, got {tuple(updates.shape)}")
    if reference is None:
        reference = coordinate_median(updates).aggregate
    if reference.numel() != updates.shape[1]:
        raise ValueError(f"reference has {reference.numel()} values, updates have "
                         f"{updates.shape[1]} columns")
    norms = row_norms(updates)
    z = robust_z_scores(norms)
    cos, defined = cosine_to(updates, reference, norms)
    by_norm = z > norm_threshold
    by_cos = defined & (cos < cosine_threshold)
    reasons: dict[int, str] = {}
    for i in torch.nonzero(by_norm | by_cos).reshape(-1).tolist():
        parts = []
        if by_norm[i]:
            parts.append(f"norm z={float(z[i]):.1f} > {norm_threshold}")
        if by_cos[i]:
            parts.append(f"cosine {float(cos[i]):.2f} < {cosine_threshold}")
        reasons[i] = "; ".join(parts)
    return DetectionReport(
        flagged=tuple(reasons),
        norm_z=tuple(z.tolist()),
        cosine=tuple(cos.tolist()),
        reasons=reasons,
        norm_threshold=norm_threshold,
        cosine_threshold=cosine_threshold,
    )


@dataclass
class NodeRecord:
    """One node's reputation: its score and how often it was seen and flagged."""

    score: float
    rounds: int = 0
    flagged: int = 0


class Reputation:
    """Per-node trust score: an exponential moving average of *not* being flagged.

    For every node that took part in a round (``update(node_ids, flagged)``):
    ``s_i <- memory * s_i + (1 - memory) * (1 - f_i)``, with ``f_i = 1`` if the
    node was flagged (or left out by a selecting rule such as Krum) and 0
    otherwise. A new node starts at ``initial`` (default 1.0: trusted until
    flagged). After ``k`` consecutive flags a node that started at 1 has
    ``memory**k`` (default ``memory = 0.8``: 0.8, 0.64, 0.51, ...); after that, ``k``
    clean rounds bring it back to ``1 - (1 - s) * memory**k``, so old evidence
    decays geometrically. Nodes absent from a round keep their score (no new
    evidence). A node is *distrusted* while ``s_i < threshold`` (default 0.5).

    Pure (no I/O, no Flower); ``to_dict`` / ``from_dict`` round-trip through JSON
    (node ids become string keys), e.g. to keep it in ``context.state``.
    """

    def __init__(self, memory: float = 0.8, initial: float = 1.0, threshold: float = 0.5) -> None:
        if not 0.0 <= memory < 1.0:
            raise ValueError(f"memory must be in [0, 1), got {memory}")
        if not 0.0 <= initial <= 1.0 or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"initial and threshold must be in [0, 1], got {initial}, "
                             f"{threshold}")
        self.memory = memory
        self.initial = initial
        self.threshold = threshold
        self.rounds = 0
        self._nodes: dict[int, NodeRecord] = {}

    def update(self, node_ids: Iterable[int], flagged: Collection[int]) -> None:
        """Record one round: ``node_ids`` took part, the ones in ``flagged`` were flagged.

        Raises ``ValueError`` if a flagged node did not take part.
        """
        present = [int(n) for n in node_ids]
        stray = set(flagged) - set(present)
        if stray:
            raise ValueError(f"flagged nodes {sorted(stray)} are not among the round's nodes")
        self.rounds += 1
        for node in dict.fromkeys(present):
            rec = self._nodes.setdefault(node, NodeRecord(self.initial))
            bad = node in flagged
            rec.score = self.memory * rec.score + (1.0 - self.memory) * (0.0 if bad else 1.0)
            rec.rounds += 1
            rec.flagged += int(bad)

    def scores(self) -> dict[int, float]:
        """Current score of every node seen so far."""
        return {node: rec.score for node, rec in self._nodes.items()}

    def distrusted(self) -> set[int]:
        """Nodes whose score is below ``threshold``."""
        return {node for node, rec in self._nodes.items() if rec.score < self.threshold}

    def report(self) -> dict[str, float]:
        """Flat summary for logs and metrics trackers."""
        values = [rec.score for rec in self._nodes.values()]
        return {
            "reputation-rounds": float(self.rounds),
            "reputation-nodes": float(len(values)),
            "reputation-mean": sum(values) / len(values) if values else self.initial,
            "reputation-min": min(values, default=self.initial),
            "reputation-distrusted": float(len(self.distrusted())),
        }

    def to_dict(self) -> dict[str, Any]:
        """Whole state as JSON-compatible data."""
        return {
            "memory": self.memory,
            "initial": self.initial,
            "threshold": self.threshold,
            "rounds": self.rounds,
            "nodes": {str(node): {"score": rec.score, "rounds": rec.rounds,
                                  "flagged": rec.flagged}
                      for node, rec in self._nodes.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reputation:
        """Inverse of ``to_dict``."""
        rep = cls(float(data["memory"]), float(data["initial"]), float(data["threshold"]))
        rep.rounds = int(data["rounds"])
        for node, rec in data["nodes"].items():
            rep._nodes[int(node)] = NodeRecord(float(rec["score"]), int(rec["rounds"]),
                                               int(rec["flagged"]))
        return rep
