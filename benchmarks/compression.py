"""Uplink compression benchmark: real Flower simulations, bytes on the wire vs accuracy.

    python benchmarks/compression.py            # full: ~30 min on 2 cores
    python benchmarks/compression.py --quick    # smoke: 2 codecs, 3 rounds, outputs in /tmp

Every run is a real ``flwr run`` of this app (through :mod:`fedapp.runner`) on a private
managed SuperLink (its own ``FLWR_HOME`` and ports, stopped at the end): digits, 10 simulated
nodes with one CPU each, a fixed number of rounds and seed, tracking off. For each model
(the default small CNN and a ~1.07M-parameter MLP) and each codec it reads the run's
``rounds.json``: server accuracy, the real uplink / downlink array bytes per round
(``ArrayRecord.count_bytes()``, as the strategy counts them), the encode time the nodes
report, the round time; the server's decode time comes from the ServerApp log (the
strategy's aggregated train MetricRecord). In-process it then measures what the runs cannot:
Flower's per-message framing (a reply serialised with ``message_to_proto``), the local
training time of one node, and codec throughput at d = 1e6 and 1e7.

Outputs (full run): ``benchmarks/results/compression.json``, ``docs/compression.md``,
``docs/compression_accuracy_vs_bytes.png``. A run with ``--quick`` or with a subset of
models / codecs writes the same three files to a temporary directory (or ``--out-dir``).
Benchmarks are not tests: nothing here asserts on times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _superlink import REPO, private_superlink

from fedapp import runner
from fedapp.compression import CodecSpec, compress_with_feedback, decode, encode
from fedapp.config import RunConfig

NUM_NODES = 10
FEDERATION = f"num-supernodes={NUM_NODES} client-resources-num-cpus=1"
SEED = 42
ROUNDS = 10
QUICK_ROUNDS = 3
# The big MLP's local training, the same for all its codecs. Chosen on the 'off' baseline
# (10 rounds, seed 42) with `--models big --codecs off --big-lr LR --big-epochs E`; those
# runs' results, copied here, go into the report. lr 0.05 x 5 epochs converges smoothly
# (no late dips that would blur a final-accuracy comparison) to about the CNN's accuracy.
BIG_LR = 0.05
BIG_EPOCHS = 5
BIG_CALIBRATION: list[dict[str, Any]] = [
    {"learning-rate": lr, "local-epochs": ep, "final-accuracy": fin, "best-accuracy": best,
     "measured": "2026-11-23, flwr 1.41.0, 2 shared cores"}
    for lr, ep, fin, best in ((0.01, 3, 0.8361, 0.8361), (0.05, 3, 0.9194, 0.9194),
                              (0.1, 3, 0.9278, 0.9444), (0.05, 5, 0.9306, 0.9306))
]

MODELS: dict[str, dict[str, Any]] = {
    "small": {"label": "small CNN (model='auto')", "run-config": {"model": "auto"}},
    "big": {"label": "MLP, hidden-units=1000", "run-config": {"model": "mlp",
                                                              "hidden-units": 1000}},
}


def _codec(name: str, feedback: bool, topk: float | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"compression": name, "compression-feedback": feedback}
    if name in ("qsgd", "topk-qsgd"):
        cfg["compression-bits"] = 8
    if topk is not None:
        cfg["compression-topk"] = topk
    return cfg


# id -> run-config overrides. fp16 is a plain cast (error feedback off); top-k and qsgd
# run with and without error feedback.
CODECS: dict[str, dict[str, Any]] = {
    "off": {"compression": "off"},
    "fp16": _codec("fp16", False),
    "qsgd8-ef": _codec("qsgd", True),
    "qsgd8": _codec("qsgd", False),
    "topk10-q8-ef": _codec("topk-qsgd", True, 0.1),
    "topk10-q8": _codec("topk-qsgd", False, 0.1),
    "topk1-q8-ef": _codec("topk-qsgd", True, 0.01),
    "topk1-q8": _codec("topk-qsgd", False, 0.01),
    "topk0.1-q8-ef": _codec("topk-qsgd", True, 0.001),
    "topk0.1-q8": _codec("topk-qsgd", False, 0.001),
}
QUICK_CODECS = ("off", "topk1-q8-ef")
THROUGHPUT_SPECS: dict[str, CodecSpec] = {
    "none": CodecSpec("none"),
    "fp16": CodecSpec("fp16"),
    "qsgd8": CodecSpec("qsgd", bits=8),
    "topk10-q8": CodecSpec("topk-qsgd", topk=0.1, bits=8),
    "topk1-q8": CodecSpec("topk-qsgd", topk=0.01, bits=8),
    "topk0.1-q8": CodecSpec("topk-qsgd", topk=0.001, bits=8),
}
DECODE_LINE = re.compile(r"'decode-seconds': ([-+0-9.eE]+|nan)")


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ---------------------------------------------------------------- real Flower runs


def run_config(model: str, codec: str, rounds: int, out_dir: Path, big_lr: float,
               big_epochs: int) -> dict[str, Any]:
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


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def one_run(model: str, codec: str, cfg: dict[str, Any], env: dict[str, str],
            out_dir: Path, timeout: float) -> dict[str, Any]:
    load_before = loadavg()
    t0 = time.perf_counter()
    run_id, status = runner.run_and_check(REPO, cfg, federation_config=FEDERATION, env=env,
                                          timeout=timeout)
    wall = time.perf_counter() - t0
    rows = json.loads((out_dir / f"run-{run_id}" / "rounds.json").read_text())
    dec = decode_seconds(runner.logs(run_id, env=env))
    trained = [r for r in rows if "bytes-up" in r]
    accs = [r["server-accuracy"] for r in rows]
    enc = [r["compress-encode-seconds"] for r in trained if "compress-encode-seconds" in r]
    accepted = sum(int(r["accepted"]) for r in trained)
    warm = trained[1:] or trained  # round 1 also starts Ray and the node actors
    return {
        "model": model, "codec": codec, "run-config": cfg, "run-id": run_id, "status": status,
        "final-accuracy": accs[-1], "best-accuracy": max(accs),
        "bytes-up": sum(int(r["bytes-up"]) for r in trained),
        "bytes-down": sum(int(r["bytes-down"]) for r in trained),
        "accepted-replies": accepted,
        "rejected-replies": sum(int(r["rejected"]) for r in trained),
        "failed-replies": sum(int(r["failures"]) for r in trained),
        "compress-ratio-mean": _mean([r["compress-ratio"] for r in trained
                                      if "compress-ratio" in r]),
        "encode-seconds-mean": _mean(enc),
        "decode-seconds-per-round-mean": _mean(dec) if any(dec) else None,
        "round-seconds-mean": statistics.fmean(r["seconds"] for r in warm),
        "round-1-seconds": trained[0]["seconds"],
        "wall-seconds": wall,
        "flower-elapsed-seconds": runner.elapsed(run_id, env=env),
        "loadavg-before": load_before, "loadavg-after": loadavg(),
        "rounds": rows,
    }


def real_runs(models: list[str], codecs: list[str], rounds: int, big_lr: float,
              big_epochs: int, timeout: float) -> list[dict[str, Any]]:
    results = []
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


# ---------------------------------------------------------------- in-process measurements


def model_facts(model: str, big_lr: float, big_epochs: int) -> dict[str, Any]:
    """Parameter count, arrays, and the local training time of each node (1 torch thread)."""
    import torch

    from fedapp import task
    from fedapp.config import NodeConfig
    from fedapp.data.loading import dataset_spec, load_node_data

    over = dict(MODELS[model]["run-config"])
    if model == "big":
        over |= {"learning-rate": big_lr, "local-epochs": big_epochs}
    cfg = RunConfig.from_flower({**RunConfig().to_flower(), **over})
    torch.set_num_threads(1)
    spec = dataset_spec(cfg)
    net = task.build_model(cfg.model, spec, cfg.hidden_units)
    seconds = []
    for pid in range(NUM_NODES):
        data, _ = load_node_data(cfg, NodeConfig(partition_id=pid, num_partitions=NUM_NODES))
        local = task.build_model(cfg.model, spec, cfg.hidden_units)
        local.load_state_dict(net.state_dict())
        t0 = time.perf_counter()
        task.train(local, data, cfg.local_epochs, cfg.batch_size, cfg.learning_rate, cfg.seed)
        seconds.append(time.perf_counter() - t0)
    return {"class": type(net).__name__, "parameters": sum(p.numel() for p in net.parameters()),
            "arrays": len(net.state_dict()), "learning-rate": cfg.learning_rate,
            "local-epochs": cfg.local_epochs, "batch-size": cfg.batch_size,
            "train-seconds-per-node": statistics.fmean(seconds), "_state": net.state_dict()}


def wire_sizes(state: dict[str, Any], codec: str) -> dict[str, int]:
    """One train reply as Flower serialises it (``message_to_proto``), built by the real
    compression mod from a random update: full message bytes vs the arrays the runs count."""
    from flwr.app import (
        Array,
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MessageType,
        MetricRecord,
        RecordDict,
    )
    from flwr.common.serde import message_to_proto
    from flwr.supercore.task_identity import TaskIdentity

    from fedapp.compression.mod import compression_mod
    from fedapp.compression.wire import serialized_bytes

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    rng = np.random.default_rng(0)
    glob = {k: v.numpy() for k, v in state.items()}
    local = {k: v + 0.01 * rng.standard_normal(v.shape).astype(v.dtype) for k, v in glob.items()}
    glob_rec = ArrayRecord({k: Array(v) for k, v in glob.items()})
    local_rec = ArrayRecord({k: Array(v) for k, v in local.items()})
    cfg = {**RunConfig().to_flower(), **CODECS[codec]}
    instruction = Message(RecordDict({"arrays": glob_rec,
                                      "config": ConfigRecord({"server-round": 1})}),
                          dst_node_id=7, message_type=MessageType.TRAIN)
    ctx = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config=cfg)

    def trainer(msg: Message, _: Context) -> Message:
        metrics = MetricRecord({"num-examples": 144, "train-loss": 0.1, "train-accuracy": 0.9})
        return Message(RecordDict({"arrays": local_rec, "metrics": metrics}),
                       reply_to=msg)

    reply = compression_mod(instruction, ctx, trainer)
    arrays = serialized_bytes(reply.content)
    payload = sum(a.numpy().nbytes for rec in reply.content.array_records.values()
                  for a in rec.values())
    full = len(message_to_proto(reply).SerializeToString())
    return {"message-bytes": full, "array-bytes": arrays, "payload-bytes": payload,
            "framing-bytes": full - arrays, "fixed-bytes": full - payload}


def throughput(sizes: list[int], repeats: dict[int, int]) -> list[dict[str, Any]]:
    """Median encode / decode / error-feedback-encode seconds on a N(0, 1) float32 vector."""
    out = []
    for d in sizes:
        x = np.random.default_rng(d).standard_normal(d).astype(np.float32)
        for name, spec in THROUGHPUT_SPECS.items():
            enc_t, dec_t, ef_t = [], [], []
            for _ in range(repeats[d]):
                t0 = time.perf_counter()
                e = encode(x, spec)
                t1 = time.perf_counter()
                decode(e)
                t2 = time.perf_counter()
                compress_with_feedback(x, None, spec)
                enc_t.append(t1 - t0)
                dec_t.append(t2 - t1)
                ef_t.append(time.perf_counter() - t2)
            enc, dec = statistics.median(enc_t), statistics.median(dec_t)
            out.append({"codec": name, "d": d, "repeats": repeats[d], "encode-seconds": enc,
                        "decode-seconds": dec, "ef-encode-seconds": statistics.median(ef_t),
                        "payload-bytes": int(e.payload.nbytes),
                        "mb-per-s": 4 * d / 1e6 / (enc + dec), "loadavg": loadavg()})
            print(f"    {name:11s} d={d:.0e}: {out[-1]['mb-per-s']:8.1f} MB/s", flush=True)
        del x
    return out


# ---------------------------------------------------------------- report


def versions() -> dict[str, Any]:
    import flwr
    import ray
    import torch

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=False)
        return proc.stdout.strip()

    return {"python": platform.python_version(), "flwr": flwr.__version__,
            "torch": torch.__version__, "numpy": np.__version__, "ray": ray.__version__,
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "git-commit": git("rev-parse", "HEAD"),
            "git-dirty": git("status", "--porcelain", "--untracked-files=no").splitlines()}


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if n < 100 * scale else f"{n / scale:.0f} {unit}"
    return f"{n:.0f} B"


def _opt(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def run_table(runs: list[dict[str, Any]], facts: dict[str, Any],
              wire: dict[str, dict[str, int]]) -> list[str]:
    off = next((r for r in runs if r["codec"] == "off"), None)
    train_s = facts["train-seconds-per-node"]
    lines = ["| codec | EF | final acc | best acc | Δ final (pt) | uplink total | uplink ratio "
             "| ratio incl. framing | downlink total | encode ms/node | decode ms/reply "
             "| (enc+dec)/local train | round s | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        ef = ("-" if r["codec"] in ("off", "fp16")
              else "on" if r["run-config"]["compression-feedback"] else "off")
        n = r["accepted-replies"] or 1
        dec = r["decode-seconds-per-round-mean"]
        rounds = len([x for x in r["rounds"] if "bytes-up" in x])
        dec_reply = dec * rounds / n if dec is not None else None
        enc = r["encode-seconds-mean"]
        cost = ((enc or 0) + (dec_reply or 0)) / train_s if enc is not None else None
        framed = None
        if off is not None and r["codec"] in wire and "off" in wire:
            framed = ((off["bytes-up"] + off["accepted-replies"] * wire["off"]["framing-bytes"])
                      / (r["bytes-up"] + n * wire[r["codec"]]["framing-bytes"]))
        lines.append(
            f"| {r['codec']} | {ef} | {r['final-accuracy']:.4f} | {r['best-accuracy']:.4f} | "
            f"{_opt(r['delta-final-pt'], '+.2f')} | {_fmt_bytes(r['bytes-up'])} | "
            f"{_opt(r['uplink-ratio'], '.1f')}x | {_opt(framed, '.1f')}x | "
            f"{_fmt_bytes(r['bytes-down'])} | {_opt(enc and enc * 1e3, '.2f')} | "
            f"{_opt(dec_reply and dec_reply * 1e3, '.2f')} | {_opt(cost and 100 * cost, '.1f')}%"
            f" | {r['round-seconds-mean']:.2f} | {r['wall-seconds']:.0f} |".replace("n/a%", "n/a"))
        r["ratio-incl-framing"] = framed
        r["codec-cost-vs-local-train"] = cost
    return lines


def _preset(r: dict[str, Any]) -> str:
    c = r["run-config"]
    keys = ["compression", *(k for k in ("compression-topk", "compression-bits") if k in c),
            "compression-feedback"]
    return " ".join(f"{k}={runner.format_run_config({k: c[k]}).split('=', 1)[1]}"
                    for k in keys).replace('"', "'")


def _lag(off: dict[str, Any], r: dict[str, Any]) -> int:
    """The first round at which 'off' had reached ``r``'s final accuracy."""
    return next((int(x["round"]) for x in off["rounds"]
                 if x["server-accuracy"] >= r["final-accuracy"]), len(off["rounds"]))


def findings(results: dict[str, Any]) -> list[str]:
    """The sentences under Findings: data-driven, so a re-run rewrites them from its numbers."""
    runs, out, rows = results["runs"], [], results["test-rows"]
    off = {r["model"]: r for r in runs if r["codec"] == "off"}
    big = [r for r in runs if r["model"] == "big" and r["codec"] != "off"]
    small = [r for r in runs if r["model"] == "small" and r["codec"] != "off"]
    if big and "big" in off:
        hits = [r for r in big if r["uplink-ratio"] >= 100 and r["delta-final-pt"] >= -0.5]
        high = [r for r in big if r["uplink-ratio"] >= 100]
        if hits:
            names = ", ".join(f"`{r['codec']}` ({r['uplink-ratio']:.0f}x, "
                              f"{r['delta-final-pt']:+.2f} pt)" for r in hits)
            out.append(f"On the {results['models']['big']['parameters']:,}-parameter MLP "
                       f"{names} reach >= 100x less uplink at <= 0.5 pt final-accuracy loss.")
        elif high:
            c = max(high, key=lambda r: r["final-accuracy"])
            lost = round(-c["delta-final-pt"] * rows / 100)
            rising = c["rounds"][-1]["server-accuracy"] > c["rounds"][-2]["server-accuracy"]
            out.append(
                f"On the {results['models']['big']['parameters']:,}-parameter MLP no preset "
                f"reaches >= 100x less uplink at <= 0.5 pt loss: the closest, `{c['codec']}` "
                f"({c['uplink-ratio']:.0f}x), ends {-c['delta-final-pt']:.2f} pt ({lost} of "
                f"{rows} test rows) below 'off', at the accuracy 'off' had after round "
                f"{_lag(off['big'], c)} of {results['rounds']}: top-k sends the largest "
                "coordinates now and error feedback delivers the rest rounds later, so a short "
                "run ends behind"
                + (" (its curve is still rising at the last round)." if rising else "."))
        curve = ", ".join(f"{r['codec']} {r['uplink-ratio']:.0f}x / {r['delta-final-pt']:+.1f}"
                          for r in sorted(big, key=lambda r: r["uplink-ratio"]))
        acc = {r["codec"]: r["final-accuracy"] for r in big}
        gains = ", ".join(f"{100 * (acc[c] - acc[c[:-3]]):+.1f} pt ({c[:-3]})" for c in acc
                          if c.endswith("-ef") and c[:-3] in acc)
        out.append(f"The big model's curve (uplink ratio / final-accuracy pt vs 'off'): {curve}"
                   + (f"; error feedback changes final accuracy by {gains}." if gains else "."))
    if small and "small" in results["wire"]:
        w = results["wire"]["small"]
        dense = w["off"]["message-bytes"]
        fixed = min(v["fixed-bytes"] for k, v in w.items() if k != "off")
        fixed_arrays = min(v["array-bytes"] - v["payload-bytes"] for k, v in w.items()
                           if k != "off")
        topk = ", ".join(f"{r['codec']} {r['uplink-ratio']:.0f}x / "
                         f"{r.get('ratio-incl-framing') or float('nan'):.0f}x"
                         for r in small if r["codec"].startswith("topk") and
                         r["codec"].endswith("-ef"))
        out.append(
            f"The small CNN ({results['models']['small']['parameters']:,} parameters in "
            f"{results['models']['small']['arrays']} arrays, {dense:,} B per dense reply on "
            f"the wire) hits the fixed per-message floor: every compressed reply costs {fixed} B "
            f"before its payload (Flower's framing, metrics, codec header, and {fixed_arrays} B "
            f"of .npy header and key that `bytes-up` counts), which caps any codec at "
            f"{dense / fixed:.0f}x on the wire and {w['off']['array-bytes'] / fixed_arrays:.0f}x "
            f"in counted array bytes; measured (array bytes / with framing): {topk}.")
    cost = [r for r in runs if r.get("codec-cost-vs-local-train") is not None]
    if cost:
        parts = []
        for key in ("big", "small"):
            c = [100 * r["codec-cost-vs-local-train"] for r in cost if r["model"] == key]
            if c:
                span = f"{min(c):.1f}" if f"{min(c):.1f}" == f"{max(c):.1f}" else (
                    f"{min(c):.1f}-{max(c):.1f}")
                parts.append(f"{span}% on the {key} model")
        enc = {(r["model"], r["codec"]): r["encode-seconds-mean"] for r in cost}
        slow = [enc[m, c] / enc[m, c[:-3]] for m, c in enc if c.endswith("-ef")
                and enc.get((m, c[:-3]))]
        extra = (f"; error feedback makes encoding {min(slow):.1f}-{max(slow):.1f}x slower "
                 "(it also decodes, to update the residual)" if slow else "")
        out.append("Encode (on the node) plus decode (per reply, on the server) cost "
                   f"{' and '.join(parts)} relative to one node's local training{extra}.")
    rec = recommend(runs)
    if rec is not None:
        c = rec["run-config"]
        per_model = "; ".join(f"{r['model']} {r['uplink-ratio']:.0f}x, "
                              f"{r['delta-final-pt']:+.2f} pt" for r in runs
                              if r["codec"] == rec["codec"])
        aggressive = [r for r in big if r["uplink-ratio"] >= 100]
        alt = ""
        a = max(aggressive, key=lambda r: r["final-accuracy"]) if aggressive else None
        if a is not None and a["codec"] != rec["codec"]:
            alt = (f" Where uplink dominates and ~{-a['delta-final-pt']:.1f} pt at "
                   f"{results['rounds']} rounds is acceptable, `{_preset(a)}` gives "
                   f"{a['uplink-ratio']:.0f}x on the big MLP, but not on small models (floor).")
        why = ("the highest-ratio preset within 0.5 pt of 'off' on every model" if rec["_ok"]
               else "the big model's most accurate one (none stays within 0.5 pt everywhere)")
        unused = f"; compression-topk is unused by {c['compression']}" if (
            "compression-topk" not in c) else ""
        out.append(f"Recommended preset: `{_preset(rec)}`, {why} ({per_model}{unused}).")
        out[-1] += alt
    return out


def recommend(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The big model's highest-ratio preset that stays within 0.5 pt of 'off' (final
    accuracy) on every model measured; if none does, the big model's best one."""
    big = [r for r in runs if r["model"] == "big" and r["codec"] != "off"
           and r["uplink-ratio"] is not None]
    if not big:
        return None
    worst = {r["codec"]: min(x["delta-final-pt"] for x in runs if x["codec"] == r["codec"])
             for r in big}
    ok = [r for r in big if worst[r["codec"]] >= -0.5]
    best = max(ok or big, key=lambda r: (r["uplink-ratio"] if ok else r["final-accuracy"]))
    return {**best, "_ok": bool(ok)}


def write_doc(results: dict[str, Any], path: Path, png: Path, json_path: Path) -> None:
    shown = json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path
    lines = ["# Uplink compression: bytes on the wire vs accuracy", "",
             "Generated by `benchmarks/compression.py` from real Flower simulations; numbers "
             f"in `{shown}`.", "", "Command:", "", "```bash",
             results["command"], "```", "",
             f"Setup: digits, {NUM_NODES} simulated nodes (`--federation-config "
             f"\"{FEDERATION}\"`), {results['rounds']} rounds, seed {SEED}, `tracking=false`, "
             "defaults otherwise (Dirichlet 0.5 split, FedAvg on updates, anomaly detection "
             "`flag`). 8-bit codes are per-tensor (`compression-block=0`), deterministic. "
             f"One run per preset: accuracies are on {results['test-rows']} server test rows "
             f"(one row = {100 / results['test-rows']:.2f} pt). "
             f"Machine: {results['versions']['cpus']} cores shared with other work, load "
             f"average {results['loadavg-range'][0]:.1f} to {results['loadavg-range'][1]:.1f} "
             f"(1 min) during the runs; flwr {results['versions']['flwr']}, torch "
             f"{results['versions']['torch']}. Benchmark wall time "
             f"{results['wall-seconds'] / 60:.1f} min.", ""]
    lines += ["Columns: *uplink total* is the sum over rounds of the train replies' array bytes "
              "(`bytes-up` in `rounds.json`: payload plus .npy headers); *uplink ratio* is "
              "'off' / codec on those real bytes; *ratio incl. framing* adds Flower's "
              "per-message framing measured in-process (`message_to_proto` of a reply built by "
              "the real compression mod). *encode ms/node* is the mean `compress-encode-seconds` "
              "(with error feedback it includes the client-side decode for the residual); "
              "*decode ms/reply* is the strategy's `decode-seconds` (from the ServerApp log) per "
              "reply; *local train* is one node's `task.train` timed in-process with one torch "
              "thread; *round s* is the mean round time of rounds 2.. (round 1 also starts Ray).",
              ""]
    for key, m in results["models"].items():
        runs = [r for r in results["runs"] if r["model"] == key]
        if not runs:
            continue
        lines += [f"## {MODELS[key]['label']}: {m['parameters']:,} parameters in {m['arrays']} "
                  f"arrays, lr {m['learning-rate']}, {m['local-epochs']} local epochs", "",
                  f"Local training: {m['train-seconds-per-node'] * 1e3:.0f} ms per node "
                  "(in-process).", ""]
        lines += [*run_table(runs, m, results["wire"].get(key, {})), ""]
    if results.get("calibration"):
        lines += ["Big-MLP learning rate and epochs, checked on the 'off' baseline first "
                  "(same rounds and seed):", "",
                  "| learning-rate | local-epochs | final acc | best acc |", "|---|---|---|---|"]
        lines += [f"| {c['learning-rate']} | {c['local-epochs']} | {c['final-accuracy']:.4f} | "
                  f"{c['best-accuracy']:.4f} |" for c in results["calibration"]] + [""]
    if results["throughput"]:
        lines += ["## Codec throughput (in-process, float32 N(0,1) input)", "",
                  "MB/s of float32 input for encode + decode (median of repeats); the EF "
                  "column is `compress_with_feedback` (encode, decode, residual).", "",
                  "| codec | d | encode ms | decode ms | EF encode ms | payload | MB/s |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {t['codec']} | {t['d']:.0e} | {t['encode-seconds'] * 1e3:.1f} | "
                  f"{t['decode-seconds'] * 1e3:.1f} | {t['ef-encode-seconds'] * 1e3:.1f} | "
                  f"{_fmt_bytes(t['payload-bytes'])} | {t['mb-per-s']:.0f} |"
                  for t in results["throughput"]] + [""]
    lines += ["## One train reply on the wire (in-process)", "",
              "The real compression mod on a random update of each model, serialised with "
              "`message_to_proto`: *arrays* is what `bytes-up` counts, *fixed* is everything "
              "but the codec payload (framing, metrics, codec header, the payload's .npy "
              "header).", "",
              "| model | codec | message B | arrays B | payload B | fixed B |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {key} | {codec} | {w['message-bytes']:,} | {w['array-bytes']:,} | "
              f"{w['payload-bytes']:,} | {w['fixed-bytes']:,} |"
              for key, per in results["wire"].items() for codec, w in per.items()] + [""]
    lines += ["## Findings", "", " ".join(findings(results)), "",
              f"![accuracy vs uplink bytes]({png.name})", ""]
    path.write_text("\n".join(lines))


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"off": "black", "fp16": "tab:gray", "qsgd8": "tab:blue", "topk10": "tab:green",
              "topk1": "tab:orange", "topk0.1": "tab:red"}
    models = [k for k in MODELS if any(r["model"] == k for r in results["runs"])]
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, key in zip(axes[0], models, strict=True):
        runs = [r for r in results["runs"] if r["model"] == key]
        for r in runs:
            family = r["codec"].split("-")[0]
            ef = r["codec"].endswith("-ef")
            ax.scatter(r["bytes-up"], 100 * r["final-accuracy"], s=60,
                       marker="s" if family in ("off", "fp16") else "o",
                       facecolors=colors[family] if ef or family in ("off", "fp16") else "none",
                       edgecolors=colors[family], linewidths=1.6, zorder=3)
            below = family not in ("off", "fp16") and not ef  # EF-off twins sit on EF-on
            ax.annotate(r["codec"], (r["bytes-up"], 100 * r["final-accuracy"]), fontsize=7,
                        xytext=(5, -11 if below else 4), textcoords="offset points")
        for ef, style in ((True, "-"), (False, "--")):
            pts = sorted((r["bytes-up"], 100 * r["final-accuracy"]) for r in runs
                         if r["codec"].startswith("topk") and r["codec"].endswith("-ef") == ef)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, color="tab:purple", alpha=0.5,
                        label=f"top-k 8-bit, EF {'on' if ef else 'off'}")
        off = next((r for r in runs if r["codec"] == "off"), None)
        if off is not None:
            ax.axhline(100 * off["final-accuracy"] - 0.5, color="gray", ls=":", lw=1,
                       label="'off' - 0.5 pt")
            ax.axvline(off["bytes-up"] / 100, color="gray", ls="-.", lw=1,
                       label="'off' / 100 bytes")
            w = results["wire"].get(key, {})
            fixed = [v["array-bytes"] - v["payload-bytes"] for k, v in w.items() if k != "off"]
            if fixed:
                ax.axvline(off["accepted-replies"] * min(fixed), color="tab:brown", ls="--",
                           lw=1, label="floor: .npy header + key per reply")
        m = results["models"][key]
        ax.set(xscale="log", xlabel="total uplink bytes (all nodes, all rounds)",
               ylabel="final server accuracy (%)",
               title=f"{MODELS[key]['label']} ({m['parameters']:,} params)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right", title="filled = EF on, hollow = EF off",
                  title_fontsize=7)
    fig.suptitle(f"digits, {NUM_NODES} nodes, {results['rounds']} rounds, seed {SEED}")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: codecs {', '.join(QUICK_CODECS)}, {QUICK_ROUNDS} rounds")
    parser.add_argument("--rounds", type=int, help=f"default {ROUNDS} ({QUICK_ROUNDS} quick)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma list of small, big")
    parser.add_argument("--codecs", help=f"comma list of {', '.join(CODECS)} (default all)")
    parser.add_argument("--big-lr", type=float, default=BIG_LR)
    parser.add_argument("--big-epochs", type=int, default=BIG_EPOCHS)
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per Flower run")
    parser.add_argument("--from-json", type=Path,
                        help="rewrite the report from an earlier results file: its Flower runs "
                             "and (if present) its in-process measurements")
    parser.add_argument("--out-dir", type=Path,
                        help="where the json, md and png go (default: the repo's paths for "
                             "the full benchmark, a temporary directory otherwise)")
    args = parser.parse_args()
    models = args.models.split(",")
    codecs = (args.codecs.split(",") if args.codecs else
              list(QUICK_CODECS) if args.quick else list(CODECS))
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    bad = [m for m in models if m not in MODELS] + [c for c in codecs if c not in CODECS]
    if bad:
        parser.error(f"unknown models / codecs: {bad}")
    if "off" in codecs:  # the baseline first: ratios are against it
        codecs.remove("off")
        codecs.insert(0, "off")
    full = (not args.quick and set(models) == set(MODELS) and set(codecs) == set(CODECS)
            and (args.big_lr, args.big_epochs) == (BIG_LR, BIG_EPOCHS))
    if args.out_dir is not None:
        json_path = args.out_dir / "compression.json"
        doc_path = args.out_dir / "compression.md"
        png_path = args.out_dir / "compression_accuracy_vs_bytes.png"
    elif full:
        json_path = REPO / "benchmarks" / "results" / "compression.json"
        doc_path = REPO / "docs" / "compression.md"
        png_path = REPO / "docs" / "compression_accuracy_vs_bytes.png"
    else:
        tmp = Path(tempfile.mkdtemp(prefix="fedapp-compression-bench-"))
        json_path, doc_path = tmp / "compression.json", tmp / "compression.md"
        png_path = tmp / "compression_accuracy_vs_bytes.png"

    command = " ".join(["python", "benchmarks/compression.py", *sys.argv[1:]])
    t0 = time.perf_counter()
    load_start = loadavg()
    print(f"compression benchmark: models {models}, codecs {codecs}, {rounds} rounds; "
          f"load {load_start}", flush=True)
    earlier: dict[str, Any] = {}
    if args.from_json is not None:
        earlier = json.loads(args.from_json.read_text())
        runs, rounds = earlier["runs"], earlier["rounds"]
        models = [m for m in MODELS if any(r["model"] == m for r in runs)]
        codecs = [c for c in CODECS if any(r["codec"] == c for r in runs)]
        add_ratios(runs)
        big = next((r["run-config"] for r in runs if r["model"] == "big"), None)
        if big is not None:
            args.big_lr, args.big_epochs = big["learning-rate"], big["local-epochs"]
        command = earlier.get("command", command)
    else:
        runs = real_runs(models, codecs, rounds, args.big_lr, args.big_epochs, args.timeout)
        json_path.parent.mkdir(parents=True, exist_ok=True)  # keep the runs if the rest fails
        json_path.write_text(json.dumps({"partial": True, "command": command, "rounds": rounds,
                                         "runs": runs}, indent=2))
    if "wire" in earlier:  # a pure report regeneration: keep the earlier measurements
        facts, wire, tp = earlier["models"], earlier["wire"], earlier["throughput"]
    else:
        print("in-process: model facts, wire framing", flush=True)
        facts, wire = {}, {}
        for model in models:
            f = model_facts(model, args.big_lr, args.big_epochs)
            state = f.pop("_state")
            facts[model] = f
            wire[model] = {c: wire_sizes(state, c) for c in codecs}
        tp = []
        if not args.no_throughput:
            print("in-process: codec throughput", flush=True)
            sizes = [10**6] if args.quick else [10**6, 10**7]
            tp = throughput(sizes, {10**6: 3 if args.quick else 7, 10**7: 3})
    from fedapp.data.loading import load_server_test

    loads = [v for r in runs for v in (r["loadavg-before"][0], r["loadavg-after"][0])]
    results = {
        "command": command,
        "quick": args.quick, "rounds": rounds, "seed": SEED, "num-nodes": NUM_NODES,
        "federation-config": FEDERATION,
        "test-rows": len(load_server_test(RunConfig())),
        "models": facts, "codecs": {c: CODECS[c] for c in codecs},
        "calibration": BIG_CALIBRATION if "big" in models else [],
        "runs": runs, "wire": wire, "throughput": tp,
        "loadavg-start": load_start, "loadavg-end": loadavg(),
        "loadavg-range": [min(loads), max(loads)] if loads else [0.0, 0.0],
        "wall-seconds": time.perf_counter() - t0, "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if "wire" in earlier:
        for key in ("quick", "loadavg-start", "loadavg-end", "wall-seconds", "versions", "date"):
            results[key] = earlier[key]
        results["report-regenerated"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    for path in (json_path, doc_path, png_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_doc(results, doc_path, png_path, json_path)  # also fills per-run derived columns
    results["recommended"] = (lambda r: r and {"codec": r["codec"], **r["run-config"]})(
        recommend(runs))
    json_path.write_text(json.dumps(results, indent=2, default=float))
    plot(results, png_path)
    print(f"wrote {json_path}\n      {doc_path}\n      {png_path}\n"
          f"benchmark wall time {results['wall-seconds'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
