"""Peak memory of the default defence, each case in a fresh spawned child process.

``aggregation_latency_memory.peak_of`` measures: peak RSS (``VmHWM`` after a reset by
``/proc/self/clear_refs``) minus the RSS just before the call. Cases:

* ``fedapp/default-on-matrix``: screening and the mean on the ``(n, d)`` matrix built
  before the call (what ``RobustStrategy`` does once it has the matrix);
* ``fedapp/default``: ``aggregate_train`` on reply Messages built before the call (the
  matrix itself, ``n d`` float32, is allocated inside; ``beyond_matrix_bytes`` leaves it
  out);
* ``floor``: ``aggregation_default_cases.floor`` on the matrix;
* ``fedapp/before-on-matrix``: the previous screening, where it is timed.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from typing import Any

import torch
from aggregation_default_cases import (
    BEFORE_MAX_ELEMENTS,
    before_on_matrix,
    default_on_matrix,
    default_strategy,
    floor,
    messages_for,
)
from aggregation_latency_cases import build_replies
from aggregation_latency_memory import make_updates, peak_of


def _run(case: str, n: int, d: int) -> dict[str, Any]:
    weights = torch.full((n,), 100.0, dtype=torch.float64)
    if case == "fedapp/default":
        strategy = default_strategy(n)
        x = make_updates(n, d)
        replies = build_replies(messages_for(strategy, n, d), x.numpy())
        del x
        return peak_of(lambda: strategy.aggregate_train(1, replies))
    x = make_updates(n, d)
    if case == "floor":
        x_np = x.numpy()
        return peak_of(lambda: floor(x_np))
    call = before_on_matrix if case == "fedapp/before-on-matrix" else default_on_matrix
    return peak_of(lambda: call(x, weights))


def _child(case: str, n: int, d: int, threads: int) -> dict[str, Any]:
    logging.getLogger("flwr").setLevel(logging.ERROR)  # not every flagged node
    if threads > 0:
        torch.set_num_threads(threads)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=threads)
        except ImportError:
            pass
    _run(case, n, 5000)  # warm-up: lazy library set-up is not the call's memory
    out = _run(case, n, d)
    out["matrix_bytes"] = n * d * 4
    inside = out["matrix_bytes"] if case == "fedapp/default" else 0
    out["beyond_matrix_bytes"] = out["peak_beyond_inputs_bytes"] - inside
    out["fraction_of_matrix"] = out["beyond_matrix_bytes"] / out["matrix_bytes"]
    return out


def peak_memory(n: int, d: int, threads: int) -> dict[str, dict[str, Any]]:
    """Each case's peak beyond its inputs (and beyond the matrix), in fresh children."""
    cases = ["fedapp/default-on-matrix", "fedapp/default", "floor"]
    if n * d <= BEFORE_MAX_ELEMENTS:
        cases.append("fedapp/before-on-matrix")
    ctx = mp.get_context("spawn")
    out: dict[str, dict[str, Any]] = {}
    for case in cases:
        with ctx.Pool(1) as pool:
            out[case] = pool.apply(_child, (case, n, d, threads))
    return out
