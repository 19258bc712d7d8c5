"""The screening as it was before the blocked kernels (commit bd315df), kept as the
reference the tests compare the current code with: ``fedapp/robust/detection.py``'s
scoring functions and ``fedapp/server/screen.py``'s ``Screen.__call__``, copied verbatim
(the report type and the flagging rules are imported, so their later changes, such as
which flagged rows exclusion may drop, apply to both), with one
later change of behaviour made here too: with copies among the rows, the norm z-scores and
the sign skews are taken among the rows that are no copy.

Do not optimise this module: it is the yardstick for "same results".
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import WARNING
from typing import NamedTuple

import torch
from flwr.common.logger import log

from fedapp.robust.coordinate import coordinate_median
from fedapp.robust.detection_report import DetectionReport
from fedapp.robust.detection_report import flag_rows as _flag
from fedapp.robust.distances import distances_to, pairwise_sq_distances, rows_per_block
from fedapp.robust.robust_stats import MAD_SCALE, MEAN_AD_SCALE
from fedapp.server.screen import Screen


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
    cosine_spread: float = 0.0,
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
    copies = similarity < duplicate_threshold
    if bool(copies.any()) and 2 * int((~copies).sum()) >= n:
        med, scale = robust_location_scale(norms[~copies])
        z = (norms - med) / scale if float(scale) > 0 else z
    median_all = coordinate_median(updates).aggregate if reference is None else reference
    distinct = torch.nonzero(~copies & ~(z > norm_threshold)).reshape(-1)
    skew = sign_skew(updates, coordinate_median(updates[distinct]).aggregate
                     if reference is None and bool(copies.any()) and 2 * len(distinct) >= n
                     else median_all)
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
                 duplicate_threshold, cosine_spread=cosine_spread)


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


class ReferenceScreened(NamedTuple):
    updates: torch.Tensor
    weights: torch.Tensor
    report: DetectionReport
    dropped: tuple[int, ...]


def reference_screen(screen: Screen, nodes: Sequence[int], updates: torch.Tensor,
                     weights: torch.Tensor, *, limit: int | None, record: bool = True
                     ) -> ReferenceScreened:
    """``Screen.__call__`` as it was, with ``screen``'s thresholds, mode, ``min_keep`` and
    ``reputation`` (a ``fedapp.server.screen.Screen``)."""
    raw = detect_anomalies(updates, norm_threshold=screen.norm_threshold,
                           cosine_threshold=screen.cosine_threshold,
                           sign_threshold=screen.sign_threshold,
                           duplicate_threshold=screen.duplicate_threshold,
                           cosine_spread=screen.cosine_spread)
    cosines = dict(zip(nodes, raw.cosine, strict=True))
    preview = screen.reputation.preview(cosines)
    evidence = [screen.reputation.evidence(n) + 1 for n in nodes]
    report = raw.with_reputation([preview[n] for n in nodes], evidence,
                                 floor=screen.cosine_floor, floor_rounds=screen.floor_rounds)
    if record:
        screen.reputation.update(cosines, flagged={nodes[i] for i in report.flagged})
    if screen.mode != "exclude":
        return ReferenceScreened(updates, weights, report, ())
    drop = report.most_severe(limit)
    keep = [i for i in range(len(nodes)) if i not in set(drop)]
    if drop and len(keep) < max(screen.min_keep, 1):
        log(WARNING, "excluding %d flagged updates would leave %d < min-train-nodes; "
            "aggregating all", len(drop), len(keep))
        keep, drop = list(range(len(nodes))), ()
    if drop:
        updates, weights = updates[keep], weights[keep]
    return ReferenceScreened(clip_to_norm_threshold(updates, screen.norm_threshold), weights,
                             report, drop)
