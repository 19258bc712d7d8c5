"""The real Flower runs of ``compression.py``: one ``flwr run`` per (model, codec).

Every run goes through ``fedapp.sweep.flwr_cli`` to a private managed SuperLink
(``_superlink.private_superlink``). From each run's ``rounds.json`` it keeps server
accuracy, the real uplink / downlink array bytes, the nodes' encode time and the round
time; the server's decode time comes from the ServerApp log (the strategy's aggregated
train MetricRecord).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

from _superlink import private_superlink
from common import REPO, loadavg, mean_or_none
from compression_presets import CODECS, FEDERATION, MODELS, SEED

from fedapp.config import RunConfig
from fedapp.sweep import flwr_cli as runner

DECODE_LINE = re.compile(r"'decode-seconds': ([-+0-9.eE]+|nan)")


def run_config(model: str, codec: str, rounds: int, out_dir: Path, big_lr: float,
               big_epochs: int) -> dict[str, Any]:
    """The run-config overrides of one run; checked by ``RunConfig`` before submitting."""
    cfg = {"num-server-rounds": rounds, "seed": SEED, "tracking": False,
           "output-dir": str(out_dir), **MODELS[model]["run-config"], **CODECS[codec]}
    if model == "big":
        cfg |= {"learning-rate": big_lr, "local-epochs": big_epochs}
    RunConfig.from_flower({**RunConfig().to_flower(), **cfg})  # fail before submitting
    return cfg


def decode_seconds(log: str) -> list[float]:
    """Per round, the server's decode time summed over replies (strategy MetricRecord)."""
    return [float(m.group(1)) for line in log.splitlines()
            if "Aggregated MetricRecord" in line and (m := DECODE_LINE.search(line))]


def one_run(model: str, codec: str, cfg: dict[str, Any], env: dict[str, str],
            out_dir: Path, timeout: float) -> dict[str, Any]:
    """One Flower run and what its ``rounds.json`` and log say."""
    load_before = loadavg()
    t0 = time.perf_counter()
    run_id, status = runner.run_and_check(REPO, cfg, federation_config=FEDERATION, env=env,
                                          timeout=timeout)
    wall = time.perf_counter() - t0
    rows = json.loads((out_dir / f"run-{run_id}" / "rounds.json").read_text())
    dec = decode_seconds(runner.logs(run_id, env=env))
    trained = [r for r in rows if "bytes-up" in r]
    accs = [r["server-accuracy"] for r in rows]
    warm = trained[1:] or trained  # round 1 also starts Ray and the node actors
    return {
        "model": model, "codec": codec, "run-config": cfg, "run-id": run_id, "status": status,
        "final-accuracy": accs[-1], "best-accuracy": max(accs),
        "bytes-up": sum(int(r["bytes-up"]) for r in trained),
        "bytes-down": sum(int(r["bytes-down"]) for r in trained),
        "accepted-replies": sum(int(r["accepted"]) for r in trained),
        "rejected-replies": sum(int(r["rejected"]) for r in trained),
        "failed-replies": sum(int(r["failures"]) for r in trained),
        "compress-ratio-mean": mean_or_none([r["compress-ratio"] for r in trained
                                             if "compress-ratio" in r]),
        "encode-seconds-mean": mean_or_none([r["compress-encode-seconds"] for r in trained
                                             if "compress-encode-seconds" in r]),
        "decode-seconds-per-round-mean": mean_or_none(dec) if any(dec) else None,
        "round-seconds-mean": statistics.fmean(r["seconds"] for r in warm),
        "round-1-seconds": trained[0]["seconds"],
        "wall-seconds": wall,
        "flower-elapsed-seconds": runner.elapsed(run_id, env=env),
        "loadavg-before": load_before, "loadavg-after": loadavg(),
        "rounds": rows,
    }


def real_runs(models: list[str], codecs: list[str], rounds: int, big_lr: float,
              big_epochs: int, timeout: float) -> list[dict[str, Any]]:
    """Every (model, codec) run, in order, on one private SuperLink; with ratios."""
    results: list[dict[str, Any]] = []
    total = len(models) * len(codecs)
    with private_superlink() as (env, workdir):
        out_dir = workdir / "runs"
        for model in models:
            for codec in codecs:
                cfg = run_config(model, codec, rounds, out_dir, big_lr, big_epochs)
                print(f"[{len(results) + 1}/{total}] {model} {codec} ... load {loadavg()}",
                      flush=True)
                res = one_run(model, codec, cfg, env, out_dir, timeout)
                print(f"    acc {res['final-accuracy']:.4f} (best {res['best-accuracy']:.4f}) "
                      f"up {res['bytes-up'] / 1e6:.3f} MB, round {res['round-seconds-mean']:.2f}"
                      f" s, encode {res['encode-seconds-mean']} s, decode/round "
                      f"{res['decode-seconds-per-round-mean']} s, wall {res['wall-seconds']:.1f} s",
                      flush=True)
                results.append(res)
    add_ratios(results)
    return results


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Uplink ratio and accuracy change against the same model's 'off' run (real bytes)."""
    base = {r["model"]: r for r in results if r["codec"] == "off"}
    for r in results:
        off = base.get(r["model"])
        r["uplink-ratio"] = off["bytes-up"] / r["bytes-up"] if off else None
        r["delta-final-pt"] = 100 * (r["final-accuracy"] - off["final-accuracy"]) if off else None
        r["delta-best-pt"] = 100 * (r["best-accuracy"] - off["best-accuracy"]) if off else None
