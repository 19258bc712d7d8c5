"""Robust location, scale and z-scores (median and MAD), as anomaly detection uses them.

The median absolute deviation times 1.4826 estimates a Gaussian's standard deviation and
ignores up to half of the values (Hampel, "The influence curve and its role in robust
estimation", JASA 1974); its z-scores are Iglewicz & Hoaglin's modified z-scores ("How to
Detect and Handle Outliers", ASQC 1993), with their mean-absolute-deviation fallback when
the MAD is 0.
"""

from __future__ import annotations

import torch

#: 1 / Phi^-1(3/4): the MAD of a Gaussian times this is its standard deviation.
MAD_SCALE = 1.4826
#: sqrt(pi / 2): the mean absolute deviation of a Gaussian times this is its std.
MEAN_AD_SCALE = 1.253314


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


def z_scores_among(norms: torch.Tensor, z: torch.Tensor, copies: torch.Tensor
                      ) -> torch.Tensor:
    """Robust z-scores of ``norms`` with the median and MAD of the rows that are no copy
    (``copies``: the copy or cluster check suspects them), when those are at least half;
    else ``z`` (their z-scores among all rows).
    A group of copies repeats one norm, which collapses the MAD of all rows: under ALIE at
    30% the honest rows with the largest norms reached z = 10-12 and were dropped (found
    by the adaptive attacker's search)."""
    if not bool(copies.any()) or 2 * int((~copies).sum()) < len(norms):
        return z
    med, scale = robust_location_scale(norms[~copies])
    if float(scale) <= 0.0:
        return z
    return (norms - med) / scale
