"""compression_mod: a train reply becomes one compressed update that the server decodes back
to the local weights (within the codec's error), with error feedback kept in context.state;
everything else passes through untouched."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from fedapp.compression import CodecSpec, decode, encode
from fedapp.compression.mod import RESIDUAL_KEY, compression_mod, round_seed, spec_from_config
from fedapp.compression.wire import (
    METRIC_RATIO,
    METRIC_SECONDS,
    PAYLOAD_KEY,
    RECORD_KEY,
    serialized_bytes,
)
from fedapp.config import RunConfig
from fedapp.updates import is_compressed
from fedapp.validation import array_specs, check_train_reply
from tests.unit.compression_client import (
    NODE_ID,
    SHAPES,
    SMALL,
    Trainer,
    context,
    decoded,
    flat,
    instruction,
    model,
    nudge,
    records,
    run,
)

# (a) decoded update + global == local within the codec's error bound -------------------


@pytest.mark.parametrize("feedback", [True, False])
def test_topk_full_fraction_is_exact(feedback: bool) -> None:
    g = model(SMALL, 0)
    local = nudge(g, 1)
    out, _ = run(g, local, context(compression="topk", compression_topk=1.0,
                                   compression_feedback=feedback))
    update = decoded(out, g)
    np.testing.assert_array_equal(update, flat(local) - flat(g))
    np.testing.assert_allclose(flat(g) + update, flat(local), rtol=0, atol=1e-6)


def test_fp16_within_half_precision_rounding() -> None:
    g = model(SMALL, 0)
    local = nudge(g, 2, scale=0.5)
    out, _ = run(g, local, context(compression="fp16"))
    true = flat(local) - flat(g)
    err = np.abs(decoded(out, g) - true)
    assert np.all(err <= 2.0**-11 * np.abs(true) + 2.0**-25)
    assert np.any(err > 0)  # it really went through half precision


@pytest.mark.parametrize("codec", ["qsgd", "topk-qsgd"])
def test_quantised_within_half_a_step(codec: str) -> None:
    g = model(SMALL, 0)
    local = nudge(g, 3)
    out, _ = run(g, local, context(compression=codec, compression_topk=1.0,
                                   compression_bits=8))
    true = flat(local) - flat(g)
    bound = np.abs(true).max() / 255 * (1 + 1e-5) + 1e-9
    assert np.abs(decoded(out, g) - true).max() <= bound


def test_reply_holds_one_uint8_payload_header_and_metrics() -> None:
    g = model(SMALL, 0)
    out, trainer = run(g, nudge(g, 4), context(compression="qsgd", compression_bits=4))
    content = out.content
    assert out is trainer.last  # the handler's reply, metadata intact, content replaced
    assert list(content.array_records) == ["arrays"]
    (array,) = content.array_records["arrays"].values()
    assert list(content.array_records["arrays"]) == [PAYLOAD_KEY]
    assert array.dtype == "uint8" and len(array.shape) == 1
    header = content.config_records[RECORD_KEY]
    assert header["codec"] == "qsgd" and header["d"] == 200 and header["bits"] == 4
    metrics = content.metric_records["metrics"]
    assert metrics[METRIC_SECONDS] >= 0
    assert metrics[METRIC_RATIO] == pytest.approx(4 * 200 / array.shape[0])


# (b) uplink bytes shrink -------------------------------------------------------------


@pytest.mark.parametrize(("codec", "min_factor"),
                         [("topk-qsgd", 50.0), ("topk", 40.0), ("qsgd", 3.9), ("fp16", 1.99)])
def test_uplink_bytes_shrink(codec: str, min_factor: float) -> None:
    g = model(SHAPES, 0)
    out, trainer = run(g, nudge(g, 5), context(compression=codec, compression_topk=0.01,
                                               compression_bits=8))
    dense = trainer.last  # the handler's reply object, its content replaced by the mod
    dense_bytes = records(trainer.local).count_bytes()
    assert dense is out
    compressed = serialized_bytes(out.content)
    assert dense_bytes / compressed > min_factor, (codec, dense_bytes, compressed)
    assert dense_bytes >= 4 * 100_400


# (c) error feedback: residual persists, running sums track each other ----------------------


def test_residual_persists_and_running_sum_tracks_true_sum() -> None:
    g = model(SHAPES, 0)
    ctx = context(compression="topk", compression_topk=0.01)
    l1, l2 = nudge(g, 6), nudge(g, 7)
    u1, u2 = flat(l1) - flat(g), flat(l2) - flat(g)

    d1 = decoded(run(g, l1, ctx, server_round=1)[0], g)
    e1 = ctx.state[RESIDUAL_KEY]["residual"].numpy()
    np.testing.assert_allclose(e1, u1 - d1, atol=1e-7)
    assert np.count_nonzero(d1) == 1004

    d2 = decoded(run(g, l2, ctx, server_round=2)[0], g)
    e2 = ctx.state[RESIDUAL_KEY]["residual"].numpy()
    # round 2 sends top-k of (u2 + e1), not of u2 alone
    np.testing.assert_array_equal(d2, decode(encode(u2 + e1, CodecSpec("topk", topk=0.01))))
    # telescoping: d1 + d2 == u1 + u2 - e2
    np.testing.assert_allclose(d1 + d2, u1 + u2 - e2, atol=1e-6)


@pytest.mark.parametrize("feedback", [True, False])
def test_running_sum_over_many_rounds(feedback: bool) -> None:
    """The same update every round: with feedback the running sum of what was sent tracks
    the true running sum (error = the bounded residual); without, the error grows by
    ``u - topk(u)`` every round."""
    g = model(SMALL, 0)
    local = nudge(g, 14)
    u = flat(local) - flat(g)
    ctx = context(compression="topk", compression_topk=0.1, compression_feedback=feedback)
    rounds = 100
    sent = sum(decoded(run(g, local, ctx, server_round=t)[0], g) for t in range(1, rounds + 1))
    rel = np.linalg.norm(sent - rounds * u) / np.linalg.norm(rounds * u)
    if feedback:
        assert rel < 0.1, rel
        np.testing.assert_allclose(sent, rounds * u - ctx.state[RESIDUAL_KEY]["residual"].numpy(),
                                   atol=1e-4)
    else:
        assert rel > 0.5, rel


def test_residual_of_another_length_is_reset() -> None:
    g = model(SMALL, 0)
    ctx = context(compression="topk", compression_topk=0.1)
    ctx.state[RESIDUAL_KEY] = ArrayRecord({"residual": Array(np.ones(5, np.float32))})
    local = nudge(g, 8)
    update = decoded(run(g, local, ctx)[0], g)
    expected = decode(encode(flat(local) - flat(g), CodecSpec("topk", topk=0.1)))
    np.testing.assert_array_equal(update, expected)
    assert ctx.state[RESIDUAL_KEY]["residual"].numpy().shape == (200,)


def test_no_feedback_keeps_no_residual() -> None:
    g = model(SMALL, 0)
    ctx = context(compression="topk", compression_topk=0.1, compression_feedback=False)
    ctx.state[RESIDUAL_KEY] = ArrayRecord({"residual": Array(np.ones(200, np.float32))})
    local = nudge(g, 9)
    update = decoded(run(g, local, ctx)[0], g)
    expected = decode(encode(flat(local) - flat(g), CodecSpec("topk", topk=0.1)))
    np.testing.assert_array_equal(update, expected)
    assert RESIDUAL_KEY not in ctx.state


def test_stochastic_rounding_differs_across_rounds_and_repeats_within_one() -> None:
    g = model(SMALL, 0)
    local = nudge(g, 10)

    def payload(server_round: int) -> bytes:
        ctx = context(compression="qsgd", compression_bits=2, compression_stochastic=True,
                      compression_feedback=False)
        out, _ = run(g, local, ctx, server_round=server_round)
        return out.content.array_records["arrays"][PAYLOAD_KEY].data

    assert payload(1) == payload(1)
    assert payload(1) != payload(2)
    assert round_seed(42, 1, NODE_ID) != round_seed(42, 1, NODE_ID + 1)


# (d) evaluate, error replies and odd replies pass through; (e) compression off ---------------


def passes_through(msg: Message, ctx: Context,
                   call_next: Callable[[Message, Context], Message]) -> Message:
    reply = call_next(msg, ctx)
    before = reply.content if reply.has_content() else None
    snapshot = dict(before) if before is not None else None

    def again(m: Message, c: Context) -> Message:
        return reply

    out = compression_mod(msg, ctx, again)
    assert out is reply
    if snapshot is not None:
        assert dict(out.content) == snapshot
        assert not is_compressed(out.content)
    assert RESIDUAL_KEY not in ctx.state
    return out


def test_evaluate_passes_through() -> None:
    g = model(SMALL, 0)
    msg = instruction(g, message_type=MessageType.EVALUATE)

    def evaluate(m: Message, c: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 3})}), reply_to=m)

    passes_through(msg, context(), evaluate)
    # even an evaluate reply carrying arrays is left alone
    passes_through(msg, context(), Trainer(nudge(g, 11)))


def test_error_reply_passes_through() -> None:
    msg = instruction(model(SMALL, 0))

    def failing(m: Message, c: Context) -> Message:
        return Message(Error(code=0, reason="boom"), reply_to=m)

    out = passes_through(msg, context(), failing)
    assert out.has_error() and out.error.reason == "boom"


@pytest.mark.parametrize("why", ["nan", "keys", "shape"])
def test_reply_that_is_no_update_is_sent_dense(why: str) -> None:
    g = model(SMALL, 0)
    local = nudge(g, 12)
    if why == "nan":
        local["bias"][0] = np.nan
    elif why == "keys":
        local["extra"] = np.zeros(3, np.float32)
    else:
        local["bias"] = np.zeros(5, np.float32)
    passes_through(instruction(g), context(), Trainer(local))


def test_compression_off_leaves_reply_untouched() -> None:
    g = model(SMALL, 0)
    ctx = context(compression="off")
    out = passes_through(instruction(g), ctx, Trainer(nudge(g, 13)))
    local, _ = check_train_reply(out.content, array_specs(records(g)))
    np.testing.assert_array_equal(local, flat(nudge(g, 13)))
    assert METRIC_RATIO not in out.content.metric_records["metrics"]


def test_spec_from_config() -> None:
    assert spec_from_config(RunConfig()) is None
    spec = spec_from_config(RunConfig(compression="topk-qsgd", compression_topk=0.05,
                                      compression_bits=4, compression_block=64,
                                      compression_stochastic=True, seed=3))
    assert spec == CodecSpec("topk-qsgd", topk=0.05, bits=4, block_size=64, stochastic=True,
                             seed=3)
