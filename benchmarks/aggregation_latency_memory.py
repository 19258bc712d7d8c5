"""The inputs of ``aggregation_latency.py`` and the peak memory of our rules.

:func:`make_updates` builds the ``(n, d)`` update matrix (for the timing too).
:func:`peak_memory` runs each of ``MEMORY_RULES`` once in a fresh spawned child process
(it holds none of the parent's arrays): the child runs the rule on a small matrix (lazy
library set-up), builds the inputs in place, resets the kernel's peak-RSS mark
(``echo 5 > /proc/self/clear_refs``), calls the rule and reads ``VmHWM`` from
``/proc/self/status``: peak beyond inputs = VmHWM - VmRSS just before the call. Where
clear_refs is not writable it uses ``ru_maxrss`` after - before (a lower bound).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import resource
from collections.abc import Callable
from typing import Any

import torch

from fedapp.robust import coordinate_median, krum, multi_krum, trimmed_mean

SEED = 20251123
MEMORY_RULES = ("multikrum", "krum", "median", "trimmed-mean")


def make_updates(n: int, d: int, seed: int = SEED) -> torch.Tensor:
    """Honest rows ~ N(0.001, 0.01^2) per coordinate; max(1, n//10) outlier rows.

    Outliers: rows 0, 1, ... are replaced by ``-10 x`` (sign flip, scaled). Built in
    place, so creating the inputs leaves no temporary of the matrix's size behind.
    """
    gen = torch.Generator().manual_seed(seed + 1000 * n + d)
    x = torch.empty(n, d, dtype=torch.float32)
    x.normal_(0.001, 0.01, generator=gen)
    x[: max(1, n // 10)].mul_(-10.0)
    return x


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def _peak_memory_child(rule: str, n: int, d: int, threads: int) -> dict[str, Any]:
    """Runs in a fresh process: peak RSS of one rule call beyond its inputs."""
    if threads > 0:
        torch.set_num_threads(threads)
    f = n // 5
    call = {
        "multikrum": lambda x: multi_krum(x, f=f),
        "krum": lambda x: krum(x, f=f),
        "median": lambda x: coordinate_median(x, f=f),
        "trimmed-mean": lambda x: trimmed_mean(x, f=f),
    }[rule]
    call(make_updates(n, 1000))  # warm-up: lazy library set-up is not the rule's memory
    x = make_updates(n, d)
    return {**peak_of(lambda: call(x)), "inputs_bytes": n * d * 4}


def peak_of(call: Callable[[], object]) -> dict[str, Any]:
    """Peak RSS of ``call()`` beyond what the process holds just before it (module
    docstring): ``peak_beyond_inputs_bytes``, ``rss_before_bytes`` and the ``method``."""
    gc.collect()
    rss_before = _status_kib("VmRSS")
    ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if _reset_peak_rss():
        method = "VmHWM after - VmRSS before (clear_refs reset)"
    else:
        method = "ru_maxrss after - before (lower bound: clear_refs not writable)"
    result = call()
    hwm_after = _status_kib("VmHWM")
    ru_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del result
    extra_kib = (hwm_after - rss_before if method.startswith("VmHWM")
                 else max(0, ru_after - ru_before))
    return {"peak_beyond_inputs_bytes": extra_kib * 1024, "rss_before_bytes": rss_before * 1024,
            "method": method}


def peak_memory(n: int, d: int, threads: int) -> dict[str, dict[str, Any]]:
    """Peak memory of each of MEMORY_RULES at one size, each in a fresh child process.

    One child per rule: memory a previous rule freed can stay resident in the
    allocator and would hide the next rule's peak.
    """
    ctx = mp.get_context("spawn")
    out: dict[str, dict[str, Any]] = {}
    for rule in MEMORY_RULES:
        with ctx.Pool(1) as pool:
            out[rule] = pool.apply(_peak_memory_child, (rule, n, d, threads))
    for mem in out.values():
        mem["budget_bytes"] = 2 * n * d * 4
        mem["within_budget"] = mem["peak_beyond_inputs_bytes"] <= mem["budget_bytes"]
    return out
