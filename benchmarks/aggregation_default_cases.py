"""What ``aggregation_default.py`` times: fedapp's default defence, Flower's FedAvg and
MultiKrum on the same reply Messages, and the floor on the same matrix.

* ``floor``: on the ``(n, d)`` float32 matrix, the coordinate-wise median by selection
  (``np.partition`` at ``n // 2`` along the node axis, column block by column block, as
  fast as it gets here), one Gram matrix ``X @ X.T`` and the mean ``X.mean(0)``;
* ``fedapp/default``: ``RobustStrategy.aggregate_train(1, replies)`` of the strategy that
  ``fedapp.server.build.build_strategy`` builds from the default ``RunConfig``
  (anomaly-detection 'exclude', capped-weight fedavg, byzantine-fraction 0.2): reply
  validation, the update matrix, screening, exclusion, clipping, the mean, the new model.
  Its own ``aggregation_seconds`` (screening plus aggregation on the matrix, measured
  inside the call) is kept as ``fedapp/default-on-matrix``;
* ``flower/FedAvg``, ``flower/MultiKrum`` (num_malicious_nodes = n // 5,
  num_nodes_to_select = n - n // 5): ``aggregate_train(1, replies)``;
* ``fedapp/before`` (timed once, where it fits in memory): the screening and mean as they
  were (``tests/reference_detection.reference_screen`` and the pipeline) on the matrix.

The inputs are ``aggregation_latency_memory.make_updates`` (honest rows and n // 10
sign-flipped, 10x rows: the norm check flags them) as replies of
``aggregation_latency_cases.build_replies``. Peak memory runs in spawned children as in
``aggregation_latency_memory``.
"""

from __future__ import annotations

import gc
import statistics
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from aggregation_latency_cases import (
    StubGrid,
    build_replies,
    global_arrays,
    timed,
    to_flat,
)
from common import REPO, loadavg
from flwr.app import ConfigRecord, Message
from flwr.serverapp.strategy import FedAvg, MultiKrum

from fedapp.config import RunConfig
from fedapp.robust.screening_kernels import column_blocks
from fedapp.server.build import build_strategy
from fedapp.server.pipeline import AggregationPipeline, aggregate_screened
from fedapp.server.screen import Screen, exclusion_limit
from fedapp.server.strategy import RobustStrategy

#: Above this many matrix elements the previous implementation is not timed (it copied
#: the matrix several times, partly in float64).
BEFORE_MAX_ELEMENTS = 300_000_000
#: Above this many elements Flower's MultiKrum is not run: its ``compute_distances``
#: holds the concatenated rows, their stack and their squares (three copies).
MULTIKRUM_MAX_ELEMENTS = 300_000_000


def floor(x: np.ndarray) -> np.ndarray:
    """The floor: median by selection, one Gram matrix, the mean (module docstring)."""
    n, d = x.shape
    for cols in column_blocks(n, d):
        np.partition(x[:, cols], n // 2, axis=0)
    x @ x.T
    return x.mean(axis=0)


def default_strategy(n: int) -> RobustStrategy:
    """The default stack's ``RobustStrategy`` for ``n`` nodes (all sampled)."""
    robust, _ = build_strategy(RunConfig(min_available_nodes=n, fraction_evaluate=0.0))
    return robust


def default_on_matrix(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """What the default strategy does once the matrix is built: screen, then aggregate,
    with the screen and pipeline ``build_strategy`` makes from the default config (every
    check the default runs: norm, copies and sign copies, cluster, sign skew, cosine
    reputation with its floor)."""
    n = len(x)
    robust = default_strategy(n)
    plan = robust.screen_updates.plan(list(range(n)), x, limit=exclusion_limit(n))
    return aggregate_screened(robust.aggregation, x, weights, plan, num_replies=n,
                              num_sampled=n).aggregate


def before_on_matrix(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The same with the previous screening (the tests' frozen reference)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.reference_detection import reference_screen

    n = len(x)
    cfg = RunConfig()
    pipeline = AggregationPipeline.from_config(cfg)
    screen = Screen("exclude", min_keep=cfg.min_train_nodes,
                    cosine_spread=cfg.detect_cosine_spread)
    kept, w, _, _ = reference_screen(screen, list(range(n)), x, weights,
                                     limit=exclusion_limit(n))
    return pipeline(kept, w, num_replies=n).aggregate


def strategies(n: int, d: int) -> dict[str, Callable[[], Any]]:
    """Fresh strategies per call (the default one keeps reputations across rounds)."""
    f = n // 5
    nodes = {"min_available_nodes": n, "min_train_nodes": n}
    out: dict[str, Callable[[], Any]] = {
        "fedapp/default": lambda: default_strategy(n),
        "flower/FedAvg": lambda: FedAvg(**nodes),
    }
    if n * d <= MULTIKRUM_MAX_ELEMENTS:
        out["flower/MultiKrum"] = lambda: MultiKrum(num_malicious_nodes=f,
                                                    num_nodes_to_select=n - f, **nodes)
    return out


def messages_for(strategy: Any, n: int, d: int) -> list[Message]:
    return list(strategy.configure_train(1, global_arrays(d), ConfigRecord(), StubGrid(n)))


def time_size(x: torch.Tensor, repeats: int, log: Callable[[str], None]
              ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Every case's times over interleaved repeats; the default's round facts and the
    aggregates of the first repeat."""
    n, d = x.shape
    x_np = x.numpy()
    makers = strategies(n, d)
    times: dict[str, list[float]] = {name: [] for name in ["floor", *makers]}
    times["fedapp/default-on-matrix"] = []
    facts: dict[str, Any] = {"aggregates": {}}
    for r in range(repeats):
        gc.collect()
        times["floor"].append(timed(lambda: floor(x_np))[0])
        for name, make in makers.items():
            strategy = make()
            replies = build_replies(messages_for(strategy, n, d), x_np)
            seconds, result = timed(lambda s=strategy, rs=replies: s.aggregate_train(1, rs))
            times[name].append(seconds)
            if isinstance(strategy, RobustStrategy):
                stats = strategy.history[1]
                times["fedapp/default-on-matrix"].append(stats.aggregation_seconds)
                facts.update(flagged=len(stats.flagged), excluded=len(stats.excluded_nodes))
            if r == 0:
                facts["aggregates"][name] = to_flat(result)
            del replies, result, strategy
        log(f"  n={n} d={d:.0e} repeat {r + 1}/{repeats} (load {loadavg(None)[0]:.1f})")
    return times, facts


def time_before(x: torch.Tensor) -> tuple[float | None, np.ndarray | None]:
    """The previous implementation on the matrix, once (None where it is skipped)."""
    if x.numel() > BEFORE_MAX_ELEMENTS:
        return None, None
    weights = torch.full((len(x),), 100.0, dtype=torch.float64)
    gc.collect()
    seconds, aggregate = timed(lambda: before_on_matrix(x, weights))
    return seconds, aggregate.numpy()


def summarise(times: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {name: {"times_s": ts, "median_s": statistics.median(ts), "min_s": min(ts)}
            for name, ts in times.items() if ts}
