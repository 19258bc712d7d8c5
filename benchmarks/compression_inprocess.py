"""The in-process measurements of ``compression.py``: what the Flower runs cannot show.

Per model: its size and one node's local training time (one torch thread); per codec:
one train reply as Flower serialises it (``message_to_proto``), built by the real
compression mod, so Flower's per-message framing is known; and codec throughput on a
N(0, 1) float32 vector (median of repeats).
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
from common import loadavg, timed
from compression_presets import CODECS, NUM_NODES, model_overrides

from fedapp.compression import CodecSpec, compress_with_feedback, decode, encode
from fedapp.config import RunConfig

THROUGHPUT_SPECS: dict[str, CodecSpec] = {
    "none": CodecSpec("none"),
    "fp16": CodecSpec("fp16"),
    "qsgd8": CodecSpec("qsgd", bits=8),
    "topk10-q8": CodecSpec("topk-qsgd", topk=0.1, bits=8),
    "topk1-q8": CodecSpec("topk-qsgd", topk=0.01, bits=8),
    "topk0.1-q8": CodecSpec("topk-qsgd", topk=0.001, bits=8),
}


def model_facts(model: str, big_lr: float, big_epochs: int) -> dict[str, Any]:
    """Parameter count, arrays, and the local training time of each node (1 torch thread)."""
    import torch

    from fedapp import task
    from fedapp.config import NodeConfig
    from fedapp.data.loading import dataset_spec, load_node_data

    cfg = RunConfig.from_flower({**RunConfig().to_flower(),
                                 **model_overrides(model, big_lr, big_epochs)})
    torch.set_num_threads(1)
    spec = dataset_spec(cfg)
    net = task.build_model(cfg.model, spec, cfg.hidden_units)
    seconds = []
    for pid in range(NUM_NODES):
        data, _ = load_node_data(cfg, NodeConfig(partition_id=pid, num_partitions=NUM_NODES))
        local = task.build_model(cfg.model, spec, cfg.hidden_units)
        local.load_state_dict(net.state_dict())
        seconds.append(timed(lambda local=local, data=data: task.train(
            local, data, cfg.local_epochs, cfg.batch_size, cfg.learning_rate, cfg.seed))[0])
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


def _codec_times(x: np.ndarray, spec: CodecSpec, repeats: int,
                 ) -> tuple[list[float], list[float], list[float], int]:
    """Per repeat: encode, decode (of that encoding) and error-feedback encode seconds;
    and the encoded payload's bytes."""
    def once() -> tuple[float, float, float, int]:
        enc_s, e = timed(lambda: encode(x, spec))
        dec_s, _ = timed(lambda: decode(e))
        ef_s, _ = timed(lambda: compress_with_feedback(x, None, spec))
        return enc_s, dec_s, ef_s, int(e.payload.nbytes)

    samples = [once() for _ in range(repeats)]
    return ([s[0] for s in samples], [s[1] for s in samples], [s[2] for s in samples],
            samples[-1][3])


def throughput(sizes: list[int], repeats: dict[int, int]) -> list[dict[str, Any]]:
    """Median encode / decode / error-feedback-encode seconds on a N(0, 1) float32 vector."""
    out = []
    for d in sizes:
        x = np.random.default_rng(d).standard_normal(d).astype(np.float32)
        for name, spec in THROUGHPUT_SPECS.items():
            enc_t, dec_t, ef_t, payload = _codec_times(x, spec, repeats[d])
            enc, dec = statistics.median(enc_t), statistics.median(dec_t)
            out.append({"codec": name, "d": d, "repeats": repeats[d], "encode-seconds": enc,
                        "decode-seconds": dec, "ef-encode-seconds": statistics.median(ef_t),
                        "payload-bytes": payload,
                        "mb-per-s": 4 * d / 1e6 / (enc + dec), "loadavg": loadavg()})
            print(f"    {name:11s} d={d:.0e}: {out[-1]['mb-per-s']:8.1f} MB/s", flush=True)
        del x
    return out


def measure(models: list[str], codecs: list[str], big_lr: float, big_epochs: int,
            quick: bool, with_throughput: bool,
            ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Model facts and wire sizes per model (and codec), and codec throughput."""
    print("in-process: model facts, wire framing", flush=True)
    facts, wire = {}, {}
    for model in models:
        f = model_facts(model, big_lr, big_epochs)
        state = f.pop("_state")
        facts[model] = f
        wire[model] = {c: wire_sizes(state, c) for c in codecs}
    tp: list[dict[str, Any]] = []
    if with_throughput:
        print("in-process: codec throughput", flush=True)
        sizes = [10**6] if quick else [10**6, 10**7]
        tp = throughput(sizes, {10**6: 3 if quick else 7, 10**7: 3})
    return facts, wire, tp


def test_rows() -> int:
    """The number of server test rows (digits, default settings)."""
    from fedapp.data.loading import load_server_test

    return len(load_server_test(RunConfig()))
