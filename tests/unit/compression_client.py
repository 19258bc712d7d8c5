"""A ClientApp's train round through ``compression_mod`` for the compression_mod tests: fake
models, the server's instruction, a node's context with a compression run config, a
``call_next`` that replies with fixed local weights, and the server's decoding of the reply."""

from __future__ import annotations

import numpy as np
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
from flwr.supercore.task_identity import TaskIdentity

from fedapp.compression.mod import compression_mod
from fedapp.compression.server import decode_update
from fedapp.config import RunConfig
from fedapp.updates import is_compressed
from fedapp.validation import array_specs

# Messages are created inside a task: importing this module gives the test process a task
# identity.
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

NODE_ID = 7
SHAPES = {"w1": (250, 400), "b1": (400,)}  # d = 100_400: a 100k-parameter fake model
SMALL = {"conv": (4, 1, 3, 3), "bias": (4,), "head": (10, 16)}  # d = 200


def model(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def records(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def flat(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([v.ravel() for v in arrays.values()]).astype(np.float32)


def instruction(global_arrays: dict[str, np.ndarray], server_round: int = 1,
                message_type: str = MessageType.TRAIN) -> Message:
    content = RecordDict({"arrays": records(global_arrays),
                          "config": ConfigRecord({"server-round": server_round})})
    return Message(content, dst_node_id=NODE_ID, message_type=message_type)


def context(**overrides: object) -> Context:
    cfg = RunConfig(**{"compression": "topk-qsgd", **overrides})  # type: ignore[arg-type]
    return Context(run_id=1, node_id=NODE_ID, node_config={}, state=RecordDict(),
                   run_config=cfg.to_flower())


class Trainer:
    """A ``call_next`` that replies with fixed local weights and counts its calls."""

    def __init__(self, local: dict[str, np.ndarray]) -> None:
        self.local = local
        self.calls = 0
        self.last: Message | None = None

    def __call__(self, msg: Message, ctx: Context) -> Message:
        self.calls += 1
        metrics = MetricRecord({"num-examples": 12, "train-loss": 0.25})
        self.last = Message(RecordDict({"arrays": records(self.local), "metrics": metrics}),
                            reply_to=msg)
        return self.last


def run(global_arrays: dict[str, np.ndarray], local: dict[str, np.ndarray], ctx: Context,
        server_round: int = 1) -> tuple[Message, Trainer]:
    trainer = Trainer(local)
    out = compression_mod(instruction(global_arrays, server_round), ctx, trainer)
    assert trainer.calls == 1
    return out, trainer


def decoded(out: Message, global_arrays: dict[str, np.ndarray]) -> np.ndarray:
    assert is_compressed(out.content)
    update, metrics = decode_update(out.content, array_specs(records(global_arrays)))
    assert metrics["num-examples"] == 12 and metrics["train-loss"] == 0.25
    return update


def nudge(arrays: dict[str, np.ndarray], seed: int, scale: float = 0.01) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + scale * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in arrays.items()}
