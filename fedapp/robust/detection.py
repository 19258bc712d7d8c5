"""Anomaly detection on the ``(n, d)`` update matrix: scores and flags, pure.

Detection does not aggregate and drops nothing by itself: it scores every row and
says which rows look Byzantine and why. Five scores, each aimed at a family of attacks
(``O(n d)``, plus one ``n x n`` Gram matrix for the copies and the cluster):

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
  Colluders who add independent noise to their copies escape it (the cluster check
  below sees them). With ``sign_copies`` the ratio is also taken on sign disagreement
  (``collusion.sign_copy_ratio``: colluders who share one sign pattern but draw their
  magnitudes independently, as Fang's attack does). FoolsGold (Fung et al., RAID 2020,
  https://arxiv.org/abs/1808.04866) down-weights sybils by update similarity in the same
  spirit. The other checks use, as
  reference, the median of the rows no check suspects (see ``detect_anomalies``).
* **Cluster** (colluders with independent noise on their copies): two rows that differ
  only by noise no other update shares (``fedapp.robust.collusion``, formula and
  measurements there), from the same Gram matrix; below ``cluster_threshold`` (0: off).

**Copies do not set the yardsticks.** When the copy or cluster check suspects rows, the
norm z-scores use the median and MAD of the other rows, and the sign skews the
coordinate-wise median of the other rows (``robust_stats.z_scores_among``,
``screening_kernels.median_signs``; when those are at least half). Six copies of one ALIE
row among 20 repeat one norm, which shrank the MAD until honest rows had norm z 10-12,
and drag the median of all rows below the honest ones, which gave honest rows sign skews
beyond +0.5: the adaptive attacker found a scale at which three honest nodes were
dropped every round (non-IID digits, 30% Byzantine; ``docs/robustness.md``).

**Computation** (``scan_rows``, kernels in ``fedapp.robust.screening_kernels``): column
blocks, two passes. Pass 1: the float64 row norms (the norm check). Pass 2: the
coordinate-wise median by selection and, per block, each row's sign counts and dot with
it and one Gram matrix of the rows centered on it (copies, cluster); with norm suspects it
also gives the median of the others. A third pass (the median of the clean rows) runs only
when another check suspects rows that the norm check did not. No copy of the matrix.

Per-node cosine reputations across rounds, and exclusion, are the server's
(``fedapp.server.screen``); this module is pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from fedapp.robust.collusion import cluster_scores as _cluster
from fedapp.robust.collusion import nearest_ratio, ratio_to_typical, sign_copy_ratio
from fedapp.robust.detection_report import CHECKS, DetectionReport, flag_rows
from fedapp.robust.distances import distances_to
from fedapp.robust.robust_stats import (
    robust_location_scale,
    robust_z_scores,
    z_scores_among,
)
from fedapp.robust.screening_kernels import (
    RowSums,
    clean_median_dots,
    median_pass,
    median_signs,
    reference_pass,
    sq_distances,
    squared_norms,
)

__all__ = ["CHECKS", "DetectionReport", "Scan", "clip_factors", "clip_to_norm_threshold",
           "cosine_to", "detect_anomalies", "nearest_ratio", "robust_location_scale",
           "robust_z_scores", "row_norms", "scan_rows", "sign_skew"]

def row_norms(updates: torch.Tensor) -> torch.Tensor:
    """``||u_i||`` of every row, float64, in bounded-memory row blocks."""
    return distances_to(updates, torch.zeros(updates.shape[1], dtype=updates.dtype))


def _cosine(dots: torch.Tensor, norms: torch.Tensor, ref_norm: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``dots_i / (norms_i ref_norm)`` clamped to [-1, 1], 0 where undefined; the mask of
    rows where it is defined."""
    denom = norms * ref_norm
    defined = denom > 0
    cos = torch.where(defined, dots / denom.clamp_min(1e-300), torch.zeros_like(dots))
    return cos.clamp(-1.0, 1.0), defined


def cosine_to(
    updates: torch.Tensor, reference: torch.Tensor, norms: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos_i = <u_i, r> / (||u_i|| ||r||)`` as float64, and a mask of rows where it is defined.

    ``norms`` (the rows' norms) is computed when not given.
    """
    ref = reference.detach().reshape(-1)
    dots = (updates.detach() @ ref.to(updates.dtype)).to(torch.float64)
    norms = row_norms(updates) if norms is None else norms
    return _cosine(dots, norms, torch.linalg.vector_norm(ref.to(torch.float64)))


def _skew(pos: np.ndarray, neg: np.ndarray) -> torch.Tensor:
    p, q = torch.from_numpy(pos).to(torch.float64), torch.from_numpy(neg).to(torch.float64)
    return (p - q) / (p + q).clamp_min(1.0)


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU float32 / float64 tensor as a numpy array without a copy (others: float32)."""
    t = t.detach()
    return (t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)).cpu().numpy()


def sign_skew(updates: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``skew_i = (P_i - N_i) / (P_i + N_i)`` as float64: ``P_i`` (``N_i``) counts the
    coordinates where row ``i`` is above (below) ``reference``; 0 for a row equal to it.
    Computed in bounded-memory column blocks."""
    pos, neg, _, _ = reference_pass(_as_numpy(updates), _as_numpy(reference.reshape(-1)))
    return _skew(pos, neg)


@dataclass(frozen=True)
class Scan:
    """``detect_anomalies``' report, and the rows' norms ``||u_i||`` (float64) it used."""

    report: DetectionReport
    norms: torch.Tensor


def _median_reference(x: np.ndarray, norms: torch.Tensor, z: torch.Tensor,
                      thresholds: tuple[float, float, float, float],
                      sign_copies: bool) -> _Scores:
    """Nearest-neighbour and cluster ratios; the norm z-scores and sign skews against the
    rows that are no copy (``robust_stats.z_scores_among``; the median of all rows when nothing is a
    copy); the dots of every row with the cosine's reference: the median of the rows no
    check suspects, or of all rows when those are fewer than half (or all). Pass 2 gives
    the median of all rows and, when the norm check suspects rows, that of the others; a
    further pass for the signs only when there are copies, and for the dots only if the
    checks suspect other rows than the norm check did first."""
    norm_threshold, sign_threshold, duplicate_threshold, cluster_threshold = thresholds
    n = x.shape[0]
    early = z > norm_threshold
    listed = torch.nonzero(early).reshape(-1).tolist()
    merged = median_pass(x, listed if listed and 2 * (n - len(listed)) >= n else (),
                         signs=sign_copies)
    similarity = ratio_to_typical(torch.from_numpy(sq_distances(merged.gram)))
    if merged.sign_gram is not None and merged.sign_support is not None:
        similarity = torch.minimum(similarity, torch.from_numpy(
            sign_copy_ratio(merged.sign_gram, merged.sign_support)))
    cluster = _cluster(merged.gram, cluster_threshold, ~early)
    copies = (similarity < duplicate_threshold) | (cluster < cluster_threshold)
    z = z_scores_among(norms, z, copies)
    distinct = torch.nonzero(~copies & ~(z > norm_threshold)).reshape(-1).tolist()
    if bool(copies.any()) and 2 * len(distinct) >= n:
        skew = _skew(*median_signs(x, distinct))
    else:
        skew = _skew(merged.pos, merged.neg)
    suspect = (z > norm_threshold) | copies
    if sign_threshold > 0:
        suspect |= skew.abs() > sign_threshold
    clean = torch.nonzero(~suspect).reshape(-1).tolist()
    if not 0 < len(clean) < n or 2 * len(clean) < n:
        sums = merged.all_rows
    elif merged.others is not None and torch.equal(suspect, early):
        sums = merged.others
    else:
        sums = clean_median_dots(x, clean)
    return _Scores(z, skew, similarity, cluster, sums)


class _Scores(NamedTuple):
    z: torch.Tensor
    skew: torch.Tensor
    similarity: torch.Tensor
    cluster: torch.Tensor
    sums: RowSums


def scan_rows(updates: torch.Tensor, *, norm_threshold: float = 3.5,
              cosine_threshold: float = 0.0, sign_threshold: float = 0.5,
              duplicate_threshold: float = 0.1, reference: torch.Tensor | None = None,
              cosine_spread: float = 0.0, cluster_threshold: float = 0.0,
              sign_copies: bool = False) -> Scan:
    """``detect_anomalies`` (same arguments), with the row norms for clipping; with
    ``sign_copies`` (and no ``reference``) a row's copy ratio is the smaller of its
    distance ratio and its ``collusion.sign_copy_ratio``. Two passes
    over the matrix (``screening_kernels``): the norms, then the median with the sign
    counts, the Gram matrix and the dots against it; a third only when the copy or sign
    check suspects rows the norm check did not."""
    if updates.ndim != 2 or updates.shape[0] == 0:
        raise ValueError(f"updates must be a non-empty (n, d) tensor, got {tuple(updates.shape)}")
    if reference is not None and reference.numel() != updates.shape[1]:
        raise ValueError(f"reference has {reference.numel()} values, updates have "
                         f"{updates.shape[1]} columns")
    x = _as_numpy(updates)
    norms = torch.from_numpy(np.sqrt(squared_norms(x)))
    z = robust_z_scores(norms)
    if reference is None:
        thresholds = (norm_threshold, sign_threshold, duplicate_threshold, cluster_threshold)
        z, skew, similarity, cluster, sums = _median_reference(x, norms, z, thresholds,
                                                               sign_copies)
    else:
        pos, neg, gram, sums = reference_pass(x, _as_numpy(reference.reshape(-1)))
        skew = _skew(pos, neg)
        similarity = ratio_to_typical(torch.from_numpy(sq_distances(gram)))
        cluster = _cluster(gram, cluster_threshold, ~(z > norm_threshold))
        z = z_scores_among(norms, z, (similarity < duplicate_threshold)
                              | (cluster < cluster_threshold))
    ref_norm = torch.tensor(sums.ref_sq, dtype=torch.float64).sqrt()
    cos, _ = _cosine(torch.from_numpy(sums.dots), norms, ref_norm)
    report = flag_rows(tuple(z.tolist()), tuple(cos.tolist()), tuple(skew.tolist()),
                       tuple(similarity.tolist()), norm_threshold, cosine_threshold,
                       sign_threshold, duplicate_threshold, cosine_spread=cosine_spread,
                       cluster=tuple(cluster.tolist()) if cluster_threshold > 0 else (),
                       cluster_threshold=cluster_threshold)
    return Scan(report, norms)


def detect_anomalies(
    updates: torch.Tensor,
    *,
    norm_threshold: float = 3.5,
    cosine_threshold: float = 0.0,
    sign_threshold: float = 0.5,
    duplicate_threshold: float = 0.1,
    reference: torch.Tensor | None = None,
    cosine_spread: float = 0.0,
    cluster_threshold: float = 0.0,
    sign_copies: bool = False,
) -> DetectionReport:
    """Score and flag every row (module docstring): norm z-score above ``norm_threshold``,
    sign skew beyond ``+-sign_threshold`` (0 turns it off), nearest-neighbour ratio below
    ``duplicate_threshold`` (0 turns it off), cosine to the reference below
    ``cosine_threshold`` and, with ``cosine_spread = k > 0``, ``k`` robust stds below the
    round's median cosine (``detection_report.cosine_cut``); cluster ratio below
    ``cluster_threshold`` (default 0: off).

    Without ``reference`` the sign skew is taken to the coordinate-wise median of all rows
    and the cosine to the coordinate-wise median of the rows the other three checks leave
    (all rows if they leave fewer than half): a cluster of crafted rows pulls the median of
    all rows towards itself, enough at 30% to make the crafted rows look the most aligned.
    With ``reference`` both use it. ``updates`` is not modified. Raises ``ValueError`` on a
    matrix that is not 2-D or empty, or a reference of the wrong length.
    """
    return scan_rows(updates, norm_threshold=norm_threshold, cosine_threshold=cosine_threshold,
                     sign_threshold=sign_threshold, duplicate_threshold=duplicate_threshold,
                     reference=reference, cosine_spread=cosine_spread,
                     cluster_threshold=cluster_threshold, sign_copies=sign_copies).report


def clip_factors(norms: torch.Tensor, norm_threshold: float) -> torch.Tensor:
    """Per row (float64), ``bound / ||u_i||`` where the norm exceeds ``bound = med +
    norm_threshold * 1.4826 * MAD`` of ``norms`` (the MeanAD fallback when ``MAD = 0``;
    the norm where the z-score equals the threshold), else 1."""
    med, scale = robust_location_scale(norms)
    bound = med + norm_threshold * scale
    return torch.where(norms > bound, bound / norms.clamp_min(1e-300), torch.ones_like(norms))


def clip_to_norm_threshold(updates: torch.Tensor, norm_threshold: float) -> torch.Tensor:
    """Scale the rows whose norm z-score exceeds ``norm_threshold`` down to the norm where
    it equals the threshold (``clip_factors``); other rows are returned unchanged. Bounds
    what an unexcluded large row can do to a mean without dropping it."""
    factor = clip_factors(row_norms(updates), norm_threshold)
    if bool((factor == 1.0).all()):
        return updates
    return updates * factor.to(updates.dtype)[:, None]
