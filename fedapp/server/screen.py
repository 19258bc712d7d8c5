"""Screening of a round's updates: detection, per-node reputation, exclusion.

``Screen`` is the server's defense in front of the aggregation rule:

1. ``fedapp.robust.detection.scan_rows`` (``detect_anomalies`` plus the row norms) scores
   every row (norm z, cosine to a robust reference, sign skew, copies, noisy-copy cluster);
2. each node's cosine joins its ``Reputation`` (a moving average across rounds, part of the
   server state) and the cosine check is made on the reputation
   (``DetectionReport.with_reputation``): one round's cosine is noise on non-IID data;
   a node whose reputation rests on ``floor_rounds`` rounds is also flagged below
   ``cosine_floor`` (``detection_report.reputation_floor``);
3. in ``exclude`` mode at most ``limit`` flagged rows are dropped, the most severe first
   (``exclusion_limit``: fewer than half of the round's rows, whatever the Byzantine
   fraction; all flagged rows when ``limit`` is None; a row flagged by its norm alone is
   not dropped, only scaled down: ``DetectionReport.excludable``), none if fewer than ``min_keep``
   would remain; the rows kept are scaled down to the norm threshold of the
   kept rows' norms (``clip_factors``, as ``clip_to_norm_threshold``), so a large row that
   was not dropped cannot dominate; nothing is dropped while the excludable flagged rows are
   fewer than ``min_share`` of the round (``tolerated``): a lone outlier among many rows.

``Screen.plan`` decides without copying a row (``ScreenPlan``: the rows kept, their scale
factors, the rows dropped); ``Screen.__call__`` also materialises the kept, scaled rows.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any, NamedTuple

import torch
from flwr.common.logger import log

from fedapp.robust.detection import DetectionReport, clip_factors, scan_rows

MODES = ("off", "flag", "exclude")


def tolerated(flagged: int, n: int, min_share: float) -> bool:
    """Whether ``flagged`` excludable rows of ``n`` are kept rather than dropped: fewer
    than ``min_share * n`` (0: never).

    Exclusion trades the flagged rows' data for what they could do. On skewed data an
    honest hospital whose classes the others lack points away from the consensus round
    after round, as a sign flipper does, and no direction check tells them apart; at
    Dirichlet alpha 0.1 and n=40 leaving one such node out in one round moved the final
    accuracy by up to 24 points (``docs/robustness.md``, clean cost over ten seeds). What a
    kept row can do is bounded by its share: after the norm clip it is an ordinary-sized
    row with weight at most ``cap / n`` of the mean (``fedapp.robust.weights``), so ``k``
    kept rows move the aggregate by at most about ``k cap / n`` of the norm bound. The
    default share, 0.06, keeps at most 2 rows of 40 and 1 of 20, and none of fewer than 17:
    an attack with that few nodes is bounded by it, and colluders, which are many, are
    dropped together."""
    return 0 < flagged < min_share * n


def exclusion_limit(n: int) -> int:
    """The most of ``n`` rows exclusion drops: ``floor((n - 1) / 2)``, so the rows kept are
    always a strict majority. It follows how many rows the checks flag, not an assumed
    Byzantine fraction (an operator cannot know it): with fewer than half of the nodes
    Byzantine, every flagged attacker can go, and no flagging, honest outliers included,
    can leave the rule a minority of the round."""
    return max(n - 1, 0) // 2


@dataclass
class NodeRecord:
    """One node's reputation: the moving average of its cosines and what it was seen doing."""

    ema: float = 0.0
    rounds: int = 0
    flagged: int = 0


class Reputation:
    """Per-node cosine reputation: a bias-corrected moving average of the node's cosines.

    For every node ``i`` in a round, with its cosine ``c_i`` to the round's robust
    reference: ``e_i <- m e_i + (1 - m) c_i`` (``e_i = 0`` before its first round) and,
    after its ``k``-th round, ``score_i = e_i / (1 - m^k)``: the weighted mean of its
    cosines so far, weights ``m^age`` (Adam's bias correction; ``m = memory``, default
    0.9, so evidence halves in weight every 6.6 rounds). A node is *distrusted* while
    ``score_i < threshold`` (the cosine threshold, default 0.0). One round's cosine is
    noise on non-IID data (honest updates are nearly orthogonal); a sign flipper or an
    inner-product attacker points away from the reference round after round, and its
    score stays below the threshold while honest outliers drift around it. Nodes absent
    from a round keep their score.

    Pure (no I/O, no Flower); ``to_dict`` / ``from_dict`` round-trip through JSON
    (node ids become string keys): it is part of ``fedapp.server.state.ServerState``.
    """

    def __init__(self, memory: float = 0.9, threshold: float = 0.0) -> None:
        if not 0.0 <= memory < 1.0:
            raise ValueError(f"memory must be in [0, 1), got {memory}")
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [-1, 1], got {threshold}")
        self.memory = memory
        self.threshold = threshold
        self.rounds = 0
        self._nodes: dict[int, NodeRecord] = {}

    def _score(self, ema: float, rounds: int) -> float:
        return ema / (1.0 - self.memory**rounds) if rounds else 0.0

    def preview(self, cosines: Mapping[int, float]) -> dict[int, float]:
        """The scores ``cosines`` (node id -> this round's cosine) would give, unrecorded."""
        out = {}
        for node, c in cosines.items():
            rec = self._nodes.get(int(node), NodeRecord())
            ema = self.memory * rec.ema + (1.0 - self.memory) * float(c)
            out[int(node)] = self._score(ema, rec.rounds + 1)
        return out

    def update(self, cosines: Mapping[int, float],
               flagged: Collection[int] = ()) -> dict[int, float]:
        """Record one round: ``cosines`` maps every node that took part to its cosine;
        ``flagged`` are the nodes flagged this round (counted for the report). Returns the
        new scores of the round's nodes. Raises ``ValueError`` if a flagged node did not
        take part."""
        stray = {int(n) for n in flagged} - {int(n) for n in cosines}
        if stray:
            raise ValueError(f"flagged nodes {sorted(stray)} are not among the round's nodes")
        self.rounds += 1
        out = {}
        for node, c in cosines.items():
            rec = self._nodes.setdefault(int(node), NodeRecord())
            rec.ema = self.memory * rec.ema + (1.0 - self.memory) * float(c)
            rec.rounds += 1
            rec.flagged += int(node in flagged)
            out[int(node)] = self._score(rec.ema, rec.rounds)
        return out

    def evidence(self, node: int) -> int:
        """The rounds recorded for ``node`` (0 for a node not seen yet)."""
        rec = self._nodes.get(int(node))
        return rec.rounds if rec else 0

    def scores(self) -> dict[int, float]:
        """Current score of every node seen so far."""
        return {node: self._score(rec.ema, rec.rounds) for node, rec in self._nodes.items()}

    def to_dict(self) -> dict[str, Any]:
        """Whole state as JSON-compatible data; ``score`` is derived, for readers."""
        return {
            "memory": self.memory,
            "threshold": self.threshold,
            "rounds": self.rounds,
            "nodes": {str(node): {"ema": rec.ema, "rounds": rec.rounds, "flagged": rec.flagged,
                                  "score": self._score(rec.ema, rec.rounds)}
                      for node, rec in self._nodes.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reputation:
        """Inverse of ``to_dict``."""
        rep = cls(float(data["memory"]), float(data["threshold"]))
        rep.rounds = int(data["rounds"])
        for node, rec in data["nodes"].items():
            rep._nodes[int(node)] = NodeRecord(float(rec["ema"]), int(rec["rounds"]),
                                               int(rec["flagged"]))
        return rep


class Screened(NamedTuple):
    """What goes on to the rule, and what screening saw."""

    updates: torch.Tensor
    weights: torch.Tensor
    report: DetectionReport
    dropped: tuple[int, ...]  # row indices excluded


class ScreenPlan(NamedTuple):
    """Screening's decision before any row is copied: the rows that go on (``keep``, in
    order), the factor each is scaled by (``scales``, float64 per kept row; None when
    none is scaled), and the rows dropped. ``materialise`` makes the ``Screened`` rows;
    a weighted mean needs no copy (``fedapp.server.pipeline.aggregate_screened``)."""

    report: DetectionReport
    keep: tuple[int, ...]
    scales: torch.Tensor | None
    dropped: tuple[int, ...]

    @property
    def changes_rows(self) -> bool:
        """Whether the rule gets other rows than it was given (some dropped or scaled)."""
        return bool(self.dropped) or self.scales is not None

    def scaled_rows(self) -> tuple[int, ...]:
        """The rows kept but scaled down (their norm above the bound), by row index."""
        if self.scales is None:
            return ()
        return tuple(i for i, s in zip(self.keep, self.scales.tolist(), strict=True) if s < 1.0)

    def materialise(self, updates: torch.Tensor, weights: torch.Tensor) -> Screened:
        """The kept rows, scaled, and their weights: one copy of the kept rows when some
        are dropped (scaled in place), one scaled copy when only scaling, else none."""
        if not self.changes_rows:
            return Screened(updates, weights, self.report, self.dropped)
        if self.dropped:
            keep = list(self.keep)
            updates, weights = updates[keep], weights[keep]
        if self.scales is not None:
            factor = self.scales.to(updates.dtype)[:, None]
            updates = updates.mul_(factor) if self.dropped else updates * factor
        return Screened(updates, weights, self.report, self.dropped)


@dataclass
class Screen:
    """Detection + reputation + exclusion (module docstring), with its thresholds bound."""

    mode: str = "off"
    norm_threshold: float = 3.5
    cosine_threshold: float = 0.0
    sign_threshold: float = 0.5
    duplicate_threshold: float = 0.1
    min_keep: int = 1
    cosine_spread: float = 0.0
    reputation: Reputation = field(default_factory=Reputation)
    cluster_threshold: float = 0.0  # 0: the cluster check (fedapp.robust.collusion) is off
    cosine_floor: float | None = None  # detection_report.reputation_floor; None: no floor
    floor_rounds: int = 3
    sign_copies: bool = False  # the copy check on sign disagreement too (collusion)
    min_share: float = 0.0  # tolerated(): fewer excludable flagged rows are kept; 0: never

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"detection={self.mode!r} is not one of: {', '.join(MODES)}")
        if self.cosine_floor is not None and self.cosine_floor > self.cosine_threshold:
            raise ValueError(f"the reputation floor ({self.cosine_floor}) must not be above "
                             f"the cosine threshold ({self.cosine_threshold})")
        if self.floor_rounds < 1:
            raise ValueError(f"floor_rounds must be >= 1, got {self.floor_rounds}")
        if not 0.0 <= self.min_share < 0.5:
            raise ValueError(f"min_share must be in [0, 0.5), got {self.min_share}")

    def __call__(self, nodes: Sequence[int], updates: torch.Tensor, weights: torch.Tensor, *,
                 limit: int | None, record: bool = True) -> Screened:
        """Screen the rows of ``nodes`` (one node id per row). ``limit`` is the most rows
        exclusion may drop (None: every flagged row). ``record=False`` changes no state (an
        adaptive attacker tries candidate rows against the defense as it stands)."""
        return self.plan(nodes, updates, limit=limit, record=record).materialise(updates,
                                                                                 weights)

    def plan(self, nodes: Sequence[int], updates: torch.Tensor, *, limit: int | None,
             record: bool = True) -> ScreenPlan:
        """What ``__call__`` decides (same arguments), without copying any row."""
        scan = scan_rows(updates, norm_threshold=self.norm_threshold,
                         cosine_threshold=self.cosine_threshold,
                         sign_threshold=self.sign_threshold,
                         duplicate_threshold=self.duplicate_threshold,
                         cosine_spread=self.cosine_spread,
                         cluster_threshold=self.cluster_threshold,
                         sign_copies=self.sign_copies)
        cosines = dict(zip(nodes, scan.report.cosine, strict=True))
        preview = self.reputation.preview(cosines)
        evidence = [self.reputation.evidence(n) + 1 for n in nodes]  # this round included
        report = scan.report.with_reputation([preview[n] for n in nodes], evidence,
                                             floor=self.cosine_floor,
                                             floor_rounds=self.floor_rounds)
        if record:
            self.reputation.update(cosines, flagged={nodes[i] for i in report.flagged})
        every = tuple(range(len(nodes)))
        if self.mode != "exclude":
            return ScreenPlan(report, every, None, ())
        drop = report.most_severe(limit)
        if tolerated(len(report.excludable), len(nodes), self.min_share):
            drop = ()
        keep = tuple(i for i in every if i not in set(drop))
        if drop and len(keep) < max(self.min_keep, 1):
            log(WARNING, "excluding %d flagged updates would leave %d < min-train-nodes; "
                "aggregating all", len(drop), len(keep))
            keep, drop = every, ()
        factors = clip_factors(scan.norms[list(keep)], self.norm_threshold)
        scales = None if bool((factors == 1.0).all()) else factors
        return ScreenPlan(report, keep, scales, drop)
