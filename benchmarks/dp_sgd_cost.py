"""DP-SGD's local-epoch cost: ``dp_train`` in each per-sample-gradient mode vs ``task.train``.

For the MLP (64-64-10) and the default model on digits (the SmallCNN) on node 0's
training rows of the privacy benchmark's 2-node iid split, at batch 32, 64 and 128: one
call per mode and repeat (``epochs`` local epochs, what a node runs per round), the modes
interleaved within each repeat in one process, one torch thread; medians of the wall time
and of the thread's CPU time per epoch, and each mode's ratio to the non-private epoch
(same batch size). CPU time is what a mode costs the machine; wall time is what a node
waits, and on a loaded machine it carries the other processes' scheduling too.

    python benchmarks/dp_sgd_cost.py [--repeats 7] [--epochs 4] [--modes fused,ew,...]

Writes ``benchmarks/results/dp_sgd_cost.json`` and ``docs/dp_sgd_cost.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import REPO, command_line, interleave, loadavg, md_table, versions, write_json
from torch import nn

from fedapp import task
from fedapp.config import NodeConfig, RunConfig
from fedapp.data.loading import load_node_data
from fedapp.data.specs import DATASET_SPECS, Split
from fedapp.privacy import DPState, choose_grad_sample_mode, dp_train, plan_steps

JSON_PATH = REPO / "benchmarks" / "results" / "dp_sgd_cost.json"
DOC_PATH = REPO / "docs" / "dp_sgd_cost.md"
MODES = ("fused", "ew", "ghost", "hooks", "functorch")
BATCH_SIZES = (32, 64, 128)
TARGET = 1.6
LR, CLIP, DELTA, EPSILON = 0.1, 1.0, 1e-5, 3.0
SEED, NUM_NODES = 42, 2


def node0_rows() -> tuple[RunConfig, Split]:
    """The privacy benchmark's setting (digits, 2-node iid split, seed 42): node 0's
    training rows."""
    cfg = RunConfig.from_flower({**RunConfig().to_flower(), "dataset": "digits",
                                 "partitioner": "iid", "seed": SEED, "tracking": False})
    return cfg, load_node_data(cfg, NodeConfig(0, NUM_NODES))[0]


def one_call(build: Callable[[], nn.Module], data: Split, epochs: int, batch_size: int,
             mode: str) -> tuple[float, float]:
    """(wall, CPU) seconds per epoch of one ``epochs``-epoch call; ``mode`` "off" is
    ``task.train``, else ``dp_train`` in that mode (noise for epsilon 3 over 10 rounds)."""
    model = build()
    if mode == "off":
        def run() -> object:
            return task.train(model, data, epochs, batch_size, LR, SEED)
    else:
        state = DPState.plan(target_epsilon=EPSILON, delta=DELTA, num_examples=len(data),
                             batch_size=batch_size, local_epochs=epochs, num_rounds=10)

        def run() -> object:
            return dp_train(model, data, epochs, batch_size, LR, SEED, CLIP,
                            state.noise_multiplier, DELTA, state, deterministic_noise=True,
                            grad_sample_mode=mode)
    wall, cpu = time.perf_counter(), time.thread_time()
    run()
    return (time.perf_counter() - wall) / epochs, (time.thread_time() - cpu) / epochs


def time_case(build: Callable[[], nn.Module], data: Split, batch_size: int, modes: list[str],
              repeats: int, epochs: int) -> dict[str, Any]:
    """Medians per mode ("off" first) after a 1-epoch warm-up call each, and the ratios."""
    names = ["off", *modes]
    interleave({m: lambda m=m: one_call(build, data, 1, batch_size, m) for m in names}, 1)
    samples = interleave({m: lambda m=m: one_call(build, data, epochs, batch_size, m)
                          for m in names}, repeats)
    wall = {m: statistics.median(s[0] for s in v) for m, v in samples.items()}
    cpu = {m: statistics.median(s[1] for s in v) for m, v in samples.items()}
    q, _ = plan_steps(len(data), batch_size)
    return {"batch-size": batch_size, "auto-mode": choose_grad_sample_mode(build(), q * len(data)),
            "wall-seconds-per-epoch": wall, "cpu-seconds-per-epoch": cpu,
            "wall-ratio": {m: wall[m] / wall["off"] for m in modes},
            "cpu-ratio": {m: cpu[m] / cpu["off"] for m in modes},
            "samples": {m: [list(s) for s in v] for m, v in samples.items()}}


def measure(modes: list[str], repeats: int, epochs: int) -> list[dict[str, Any]]:
    cfg, node0 = node0_rows()
    spec = DATASET_SPECS[cfg.dataset]
    cases = {"mlp-64": lambda: task.build_model("mlp", spec, 64),
             "default (cnn)": lambda: task.build_model("auto", spec, 64)}
    out = []
    for name, build in cases.items():
        for bs in BATCH_SIZES:
            task.set_seed(SEED)
            row = {"case": name, "model": type(build()).__name__, "rows": len(node0),
                   **time_case(build, node0, bs, modes, repeats, epochs), "loadavg": loadavg()}
            print(f"[dp-sgd-cost] {name} bs={bs} " + " ".join(
                f"{m} {row['wall-ratio'][m]:.2f}x/{row['cpu-ratio'][m]:.2f}x" for m in modes)
                + f" load {loadavg()}", flush=True)
            out.append(row)
    return out


def _verdict(wall: float, cpu: float) -> str:
    if max(wall, cpu) <= TARGET:
        return "met"
    return "met on CPU time only" if cpu <= TARGET else "NOT met"


def report(result: dict[str, Any]) -> str:
    """docs/dp_sgd_cost.md: the ratio table (wall / CPU) and the target's verdict."""
    modes = result["modes"]
    rows = [[r["case"], r["batch-size"],
             f"{r['wall-seconds-per-epoch']['off'] * 1e3:.1f} / "
             f"{r['cpu-seconds-per-epoch']['off'] * 1e3:.1f} ms",
             *(f"{r['wall-ratio'][m]:.2f}x / {r['cpu-ratio'][m]:.2f}x" for m in modes),
             r["auto-mode"]] for r in result["rows"]]
    auto = [(r["case"], r["batch-size"], r["wall-ratio"][r["auto-mode"]],
             r["cpu-ratio"][r["auto-mode"]]) for r in result["rows"]]
    verdict = [f"| {c} | {b} | {w:.2f}x | {p:.2f}x | {_verdict(w, p)} |" for c, b, w, p in auto]
    return "\n".join([
        "# DP-SGD cost per local epoch",
        "",
        f"Generated by `{result['command']}` in {result['minutes']:.1f} min; load average "
        f"{result['loadavg-start']} at start, {result['loadavg-end']} at the end; "
        f"{result['versions']['cpus']} CPUs, 1 torch thread, torch "
        f"{result['versions'].get('torch')}, Opacus {result['versions'].get('opacus')}. "
        f"Raw numbers: `benchmarks/results/dp_sgd_cost.json`.",
        "",
        f"Node 0's training rows ({result['rows'][0]['rows']} of digits, 2-node iid split), "
        f"{result['epochs']} local epochs per call (one round), lr {LR}, C = {CLIP}, noise for "
        f"epsilon {EPSILON:g} over 10 rounds; {result['repeats']} interleaved repeats, medians. "
        "Each cell: DP-SGD epoch / non-private epoch (`task.train`, same batch size), "
        "wall time / CPU time of the thread. `fused` is fedapp's own mode "
        "(`fedapp/privacy/fused.py`); the others are Opacus's `grad_sample_mode`s.",
        "",
        *md_table(["case", "batch", "non-private (wall / CPU)", *modes, "auto picks"], rows),
        "",
        f"## Target: DP epoch <= {TARGET}x non-private (auto's mode)",
        "",
        "| case | batch | wall | CPU | verdict |",
        "|---|---|---|---|---|",
        *verdict,
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    modes = [m for m in args.modes.split(",") if m]
    start, load0 = time.perf_counter(), loadavg()
    rows = measure(modes, args.repeats, args.epochs)
    result = {"command": command_line("dp_sgd_cost.py", argv), "versions":
              versions("torch", "opacus"), "modes": modes, "repeats": args.repeats,
              "epochs": args.epochs, "nodes": NUM_NODES, "loadavg-start": load0,
              "loadavg-end": loadavg(), "minutes": (time.perf_counter() - start) / 60,
              "rows": rows}
    write_json(JSON_PATH, result)
    Path(DOC_PATH).write_text(report(result))
    print(f"wrote {JSON_PATH} and {DOC_PATH}")


if __name__ == "__main__":
    main()
