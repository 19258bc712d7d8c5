"""A synthetic hospital population: each node's rows generated from (seed, partition id).

In the spirit of LEAF's synthetic data (Caldas et al. 2018, "LEAF: A Benchmark for
Federated Settings", arXiv:1812.01097, after Li et al.'s "Synthetic(alpha, beta)" in
FedProx, arXiv:1812.06127): every device has its own number of samples (lognormal), its
own feature shift (beta) and its own model (alpha). LEAF labels ``x`` with a per-device
linear model, so its label mix follows from the features; here the labels come first, so
that label skew is set directly and the population's mixture is known in closed form.

With ``C`` classes, ``d`` features and the run's ``seed``:

* global class means ``mu_c ~ N(0, (S^2 / d) I_d)``, ``S = 3`` (``SEPARATION``: class means
  about ``3 sqrt(2)`` apart against unit noise), drawn from ``seed`` alone;
* node ``k``'s size ``n_k = clip(round(R exp(s z_k - s^2 / 2)), 2, 50 R)``, ``z_k ~ N(0, 1)``:
  lognormal with mean ``R`` (``synthetic-rows``) and log-spread ``s``
  (``synthetic-rows-spread``; 0 gives every node ``R`` rows);
* its label mix (label skew; the run's ``partitioner``): ``iid`` uniform over the classes;
  ``dirichlet`` ``p_k ~ Dir(alpha 1_C)`` (``dirichlet-alpha``; small alpha: few classes per
  node); ``shard`` uniform over ``min(shards-per-node, C)`` classes drawn without
  replacement;
* its feature shift ``v_k ~ N(0, b^2 I_d)`` (``synthetic-feature-shift``: LEAF's beta, a
  per-node mean offset) and its model shift ``delta_kc ~ N(0, a^2 I_d)`` per class
  (``synthetic-model-shift``: LEAF's alpha, here as each node's own class means);
* its rows: ``y_i ~ p_k``, ``x_i = mu_{y_i} + delta_{k y_i} + v_k + eps_i``,
  ``eps_i ~ N(0, I_d)``.

Each part of node ``k`` has its own generator seeded by ``(seed, k, part)``, so a node's
rows cost ``O((n_k + C) d)`` time and memory whatever the number of nodes (nothing here
takes it), and turning one knob leaves the other draws alone. The server's test set is the
population's mixture: every row from a fresh virtual node (its own label, shift and model
shift), labels uniform (the mean of every label mix above), seeded by ``seed`` apart from
every node, ``synthetic-test-rows`` rows.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fedapp.config import RunConfig
from fedapp.data.specs import DatasetSpec, Split

NAME = "synthetic"
SEPARATION = 3.0
MAX_ROWS_FACTOR = 50  # a node has at most 50 x synthetic-rows rows
MIN_ROWS = 2  # a node keeps at least one training row after its validation split
# Stream tags: (seed, TAG, ...) seeds one generator; nodes and the test set never share one.
_MEANS, _NODE, _TEST = 0, 1, 2
_SIZE, _LABELS, _SHIFT, _MODEL, _NOISE = range(5)


def spec(cfg: RunConfig) -> DatasetSpec:
    """``synthetic-features`` unbounded numbers ``feature_0..``, ``synthetic-classes``."""
    names = tuple(f"feature_{j}" for j in range(cfg.synthetic_features))
    return DatasetSpec(NAME, cfg.synthetic_features, cfg.synthetic_classes, None, names)


@lru_cache(maxsize=8)
def class_means(seed: int, classes: int, features: int) -> np.ndarray:
    """The global class means ``mu``, ``(classes, features)`` float64, from ``seed`` only."""
    rng = np.random.default_rng([seed, _MEANS])
    means = rng.normal(0.0, SEPARATION / np.sqrt(features), (classes, features))
    means.setflags(write=False)
    return means


def _rng(seed: int, partition_id: int, part: int) -> np.random.Generator:
    return np.random.default_rng([seed, _NODE, partition_id, part])


def node_rows(cfg: RunConfig, partition_id: int) -> int:
    """How many rows node ``partition_id`` has (module docstring)."""
    spread = cfg.synthetic_rows_spread
    z = _rng(cfg.seed, partition_id, _SIZE).standard_normal()
    n = round(cfg.synthetic_rows * float(np.exp(spread * z - spread**2 / 2)))
    return int(min(max(n, MIN_ROWS), MAX_ROWS_FACTOR * cfg.synthetic_rows))


def node_labels(cfg: RunConfig, partition_id: int, n: int) -> np.ndarray:
    """``n`` labels from node ``partition_id``'s label mix (the run's ``partitioner``)."""
    rng, classes = _rng(cfg.seed, partition_id, _LABELS), cfg.synthetic_classes
    if cfg.partitioner == "iid":
        return rng.integers(classes, size=n)
    if cfg.partitioner == "shard":
        chosen = rng.choice(classes, size=min(cfg.shards_per_node, classes), replace=False)
        return chosen[rng.integers(len(chosen), size=n)]
    p = rng.dirichlet(np.full(classes, cfg.dirichlet_alpha))
    if not np.isfinite(p).all() or p.sum() <= 0:  # tiny alpha can underflow to all zeros
        p = np.eye(classes)[int(np.nanargmax(np.nan_to_num(p, nan=-1.0)))]
    return rng.choice(classes, size=n, p=p / p.sum())


def node_split(cfg: RunConfig, partition_id: int) -> Split:
    """All of node ``partition_id``'s rows (before its validation split), float32 features
    and int64 labels; the same for the same run config and id, whatever the number of
    nodes."""
    if partition_id < 0:
        raise ValueError(f"partition-id={partition_id} must be >= 0")
    d = cfg.synthetic_features
    y = node_labels(cfg, partition_id, node_rows(cfg, partition_id))
    x = _rng(cfg.seed, partition_id, _NOISE).standard_normal((len(y), d))
    x += class_means(cfg.seed, cfg.synthetic_classes, d)[y]
    x += cfg.synthetic_feature_shift * _rng(cfg.seed, partition_id, _SHIFT).standard_normal(d)
    if cfg.synthetic_model_shift > 0:
        delta = _rng(cfg.seed, partition_id, _MODEL).standard_normal((cfg.synthetic_classes, d))
        x += cfg.synthetic_model_shift * delta[y]
    return Split(x.astype(np.float32), y.astype(np.int64))


def server_test(cfg: RunConfig) -> Split:
    """``synthetic-test-rows`` rows of the population's mixture (module docstring)."""
    rng, n, d = np.random.default_rng([cfg.seed, _TEST]), cfg.synthetic_test_rows, \
        cfg.synthetic_features
    y = rng.integers(cfg.synthetic_classes, size=n)
    x = rng.standard_normal((n, d))
    x += class_means(cfg.seed, cfg.synthetic_classes, d)[y]
    x += cfg.synthetic_feature_shift * rng.standard_normal((n, d))
    x += cfg.synthetic_model_shift * rng.standard_normal((n, d))
    return Split(x.astype(np.float32), y.astype(np.int64))
