"""Robust aggregation rules: pure functions on an ``(n, d)`` update matrix."""

from fedapp.robust.base import (
    AGGREGATORS,
    AggregationReport,
    AggregationResult,
    weighted_mean,
)
from fedapp.robust.clipping import centered_clipping
from fedapp.robust.coordinate import coordinate_median, trimmed_mean
from fedapp.robust.geomed import geometric_median
from fedapp.robust.krum import krum, multi_krum
from fedapp.robust.preaggregation import bucketing, clip_norm, nearest_neighbor_mixing
from fedapp.robust.spectral import spectral_filter
from fedapp.robust.weights import capped_weights, node_weights, uniform_weights

AGGREGATORS.update(
    {
        "krum": krum,
        "multikrum": multi_krum,
        "median": coordinate_median,
        "trimmed-mean": trimmed_mean,
        "geomed": geometric_median,
        "centered-clipping": centered_clipping,
        "spectral": spectral_filter,
    }
)

__all__ = [
    "AGGREGATORS",
    "AggregationReport",
    "AggregationResult",
    "bucketing",
    "capped_weights",
    "centered_clipping",
    "clip_norm",
    "coordinate_median",
    "geometric_median",
    "krum",
    "multi_krum",
    "nearest_neighbor_mixing",
    "node_weights",
    "spectral_filter",
    "trimmed_mean",
    "uniform_weights",
    "weighted_mean",
]
