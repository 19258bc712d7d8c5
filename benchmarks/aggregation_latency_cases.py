"""What ``aggregation_latency.py`` times, and the timing of one size.

The inputs (an ``(n, d)`` float32 update matrix, and the same updates as Flower train
replies), our rules and the yardsticks on the matrix, Flower's built-in strategies and
our ``RobustStrategy`` on the replies; :func:`bench_size` times them all, interleaved, and
adds the ratios, the agreement with Flower and the peak memory.
"""

from __future__ import annotations

import gc
import itertools
import statistics
from collections.abc import Callable
from typing import Any

import common
import numpy as np
import torch
from aggregation_latency_memory import MEMORY_RULES, make_updates, peak_memory
from aggregation_latency_report import agreement, ratios
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
)
from flwr.supercore.task_identity import TaskIdentity

from fedapp.robust import (
    centered_clipping,
    coordinate_median,
    geometric_median,
    krum,
    multi_krum,
    trimmed_mean,
    weighted_mean,
)
from fedapp.robust.distances import pairwise_sq_distances
from fedapp.server.pipeline import AggregationPipeline
from fedapp.server.strategy import RobustStrategy
from fedapp.updates import flatten

# Messages are created inside a task (a ServerApp process in production); give this
# process the identity a ServerApp would have.
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

NUM_EXAMPLES = 100
BIG = 50_000_000  # n * d from which the repeats drop to 3
#: Slow measurements with no target, timed in the first repeat only (runtime budget).
ONCE = ("flower/Bulyan", "ours/median-unequal-weights", "ours/trimmed-mean-unequal-weights")


class StubGrid:
    """Just enough of a Grid for configure_train to sample all ``n`` nodes."""

    def __init__(self, n: int) -> None:
        self.nodes = list(range(1, n + 1))

    def get_node_ids(self) -> list[int]:
        return self.nodes


# --- inputs -------------------------------------------------------------------------


def layer_sizes(d: int) -> list[int]:
    """Split ``d`` parameters into three 'layers' (a model is several arrays)."""
    return [d // 2, d // 4, d - d // 2 - d // 4]


def global_arrays(d: int) -> ArrayRecord:
    return ArrayRecord({f"layer{i}": Array(np.zeros(s, np.float32))
                        for i, s in enumerate(layer_sizes(d))})


def build_replies(messages: list[Message], x: np.ndarray) -> list[Message]:
    """One train reply per message: row i of ``x`` cut into the layers (weights = update)."""
    bounds = np.cumsum([0, *layer_sizes(x.shape[1])])
    replies = []
    for msg, row in zip(messages, x, strict=True):
        arrays = ArrayRecord({f"layer{i}": Array(np.ascontiguousarray(row[a:b]))
                              for i, (a, b) in enumerate(itertools.pairwise(bounds))})
        content = RecordDict({"arrays": arrays,
                              "metrics": MetricRecord({"num-examples": NUM_EXAMPLES})})
        replies.append(Message(content=content, reply_to=msg))
    return replies


# --- what is timed ------------------------------------------------------------------


def rule_calls(x: torch.Tensor, f: int) -> dict[str, Callable[[], Any]]:
    """Our rules and the yardsticks on the (n, d) tensor, by result name."""
    n = x.shape[0]
    tau = float(torch.linalg.vector_norm(x, dim=1).median())
    w = torch.linspace(1.0, 3.0, n, dtype=torch.float64)  # unequal weights
    return {
        "yardstick/gram-f32": lambda: x @ x.T,
        "yardstick/distances-f64": lambda: pairwise_sq_distances(x),
        "ours/multikrum": lambda: multi_krum(x, f=f),
        "ours/krum": lambda: krum(x, f=f),
        "ours/median": lambda: coordinate_median(x, f=f),
        "ours/trimmed-mean": lambda: trimmed_mean(x, f=f),
        "ours/geomed": lambda: geometric_median(x),
        "ours/centered-clipping": lambda: centered_clipping(x, tau=tau),
        "ours/fedavg": lambda: weighted_mean(x),
        "ours/median-unequal-weights": lambda: coordinate_median(x, w, f=f),
        "ours/trimmed-mean-unequal-weights": lambda: trimmed_mean(x, w, f=f),
    }


def strategies(n: int, f: int) -> dict[str, Any]:
    """Flower's built-ins and our strategy end to end, by result name."""
    nodes = {"min_available_nodes": n, "min_train_nodes": n}
    out: dict[str, Any] = {
        "flower/MultiKrum": MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f,
                                      **nodes),
        "flower/Krum": Krum(num_malicious_nodes=f, **nodes),
        "flower/FedMedian": FedMedian(**nodes),
        "flower/FedTrimmedAvg": FedTrimmedAvg(beta=0.2, **nodes),
        "flower/FedAvg": FedAvg(**nodes),
    }
    if n >= 4 * f + 3:
        out["flower/Bulyan"] = Bulyan(num_malicious_nodes=f, **nodes)
    for rule in ("multikrum", "krum", "median", "trimmed-mean", "fedavg"):
        pipeline = AggregationPipeline(rule=rule, f=0 if rule == "fedavg" else f)
        out[f"e2e/{rule}"] = RobustStrategy(aggregation=pipeline, **nodes)
    return out


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """:func:`common.timed` with Python's cyclic GC paused (it runs between repeats)."""
    gc.disable()
    try:
        return common.timed(fn)
    finally:
        gc.enable()


def to_flat(result: Any) -> np.ndarray:
    """The aggregate of any timed call, as one float32 vector."""
    if isinstance(result, tuple) and result and isinstance(result[0], ArrayRecord):
        return flatten(result[0])
    return result.aggregate.numpy()


def thread_settings(threads: int) -> dict[str, Any]:
    """Cap torch's, OpenMP's and numpy's BLAS threads at ``threads`` (0: leave them);
    what each library then uses."""
    info: dict[str, Any] = {"requested": threads}
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_info, threadpool_limits

        if threads > 0:
            threadpool_limits(limits=threads)  # numpy's OpenBLAS (and any OpenMP)
        info["threadpools"] = [{k: p[k] for k in ("internal_api", "num_threads", "filepath")}
                               for p in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed: numpy's BLAS threads not capped"
    info["torch_num_threads"] = torch.get_num_threads()
    return info


# --- one size -----------------------------------------------------------------------


def time_cases(x: torch.Tensor, f: int, repeats: int, log_repeat: Callable[[int], None],
               ) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Every measurement's times, interleaved over the repeats (``ONCE``: first repeat
    only; GC collected before each repeat), and each aggregate of the first repeat but
    the yardsticks'."""
    n, d = x.shape
    x_np = x.numpy()
    calls = rule_calls(x, f)
    strats = strategies(n, f)
    messages = {name: list(s.configure_train(1, global_arrays(d), ConfigRecord(), StubGrid(n)))
                for name, s in strats.items()}
    times: dict[str, list[float]] = {name: [] for name in [*calls, *strats]}
    flats: dict[str, np.ndarray] = {}
    for r in range(repeats):
        gc.collect()
        for name, fn in calls.items():
            if r > 0 and name in ONCE:
                continue
            seconds, result = timed(fn)
            times[name].append(seconds)
            if r == 0 and name.startswith("ours/"):
                flats[name] = to_flat(result)
            del result
        for name, strategy in strats.items():
            if r > 0 and name in ONCE:
                continue
            replies = build_replies(messages[name], x_np)
            seconds, result = timed(lambda s=strategy, rs=replies: s.aggregate_train(1, rs))
            times[name].append(seconds)
            if r == 0:
                if result[0] is None:
                    raise RuntimeError(f"{name} returned no arrays at n={n}, d={d}")
                flats[name] = to_flat(result)
            del replies, result
        log_repeat(r)
    return times, flats


def bench_size(n: int, d: int, repeats: int, threads: int, log: Callable[[str], None]
               ) -> dict[str, Any]:
    """One size's results: times, ratios, agreement with Flower, peak memory."""
    f = n // 5
    load_before = common.loadavg(None)
    x = make_updates(n, d)
    times, flats = time_cases(x, f, repeats, lambda r: log(
        f"  n={n} d={d} repeat {r + 1}/{repeats} done (load {common.loadavg(None)[0]:.1f})"))
    measurements = {name: {"times_s": ts, "median_s": statistics.median(ts), "min_s": min(ts)}
                    for name, ts in times.items()}
    agree = agreement(flats)
    del x, flats
    gc.collect()
    memory = peak_memory(n, d, threads)
    for rule in MEMORY_RULES:
        log(f"  n={n} d={d} peak memory {rule}: "
            f"{memory[rule]['peak_beyond_inputs_bytes'] / 2**20:.0f} MiB beyond inputs "
            f"(budget {memory[rule]['budget_bytes'] / 2**20:.0f} MiB)")
    return {"n": n, "d": d, "f": f, "repeats": repeats,
            "load_average_before": load_before, "load_average_after": common.loadavg(None),
            "measurements": measurements, "ratios": ratios(measurements), "agreement": agree,
            "peak_memory": memory}
