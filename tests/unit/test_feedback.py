"""Error feedback: the decoded running sum tracks the true one up to a bounded residual."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedapp.compression import CodecSpec, compress_with_feedback, decode, encode

D, ROUNDS = 200, 50


def updates(seed: int = 0) -> np.ndarray:
    """ROUNDS updates: noise plus a small persistent drift on every coordinate (the part
    that plain top-k never sends)."""
    rng = np.random.default_rng(seed)
    drift = np.full(D, 0.05, np.float32)
    return (rng.standard_normal((ROUNDS, D)) * 0.5 + drift).astype(np.float32)


def contraction(spec: CodecSpec) -> float:
    """q with ||c - D(C(c))|| <= q ||c||: sqrt(1 - k/d) for top-k (Stich et al. 2018), plus
    sqrt(n) * (half a step, or a full step if stochastic) for quantising n values, since
    step = 2 m / (2**b - 1) and m <= ||c||."""
    k = round(spec.topk * D) if spec.name.startswith("topk") else D
    q = math.sqrt(1.0 - k / D)
    if spec.name.endswith("qsgd"):
        q += math.sqrt(k) * (2.0 if spec.stochastic else 1.0) / ((1 << spec.bits) - 1)
    return q


SPECS = [
    CodecSpec("topk", topk=0.1),
    CodecSpec("topk-qsgd", topk=0.1, bits=8),
    CodecSpec("topk-qsgd", topk=0.1, bits=8, stochastic=True),
    CodecSpec("qsgd", bits=8, block_size=16),
]


@pytest.mark.parametrize(
    "spec", SPECS, ids=lambda s: f"{s.name}-{'sto' if s.stochastic else 'det'}"
)
def test_running_sums_differ_by_bounded_residual(spec: CodecSpec) -> None:
    u = updates()
    q = contraction(spec)
    assert q < 1.0
    bound = q / (1.0 - q) * float(np.linalg.norm(u, axis=1).max())
    residual = None
    sent = np.zeros(D, np.float64)
    for t in range(ROUNDS):
        enc, residual = compress_with_feedback(u[t], residual, spec, seed=t)
        sent += decode(enc)
        true = u[: t + 1].sum(axis=0, dtype=np.float64)
        # telescoping: sum of decoded = sum of true - e_{t+1} (up to float32 rounding)
        np.testing.assert_allclose(true - sent, residual, rtol=0, atol=1e-4)
        assert np.linalg.norm(residual) <= bound
    assert np.abs(u.sum(axis=0) - sent).max() < 0.5 * np.abs(u.sum(axis=0)).max()


def gaps(spec: CodecSpec, rounds: int) -> tuple[float, float]:
    """||sum true - sum decoded|| after `rounds`: (without feedback, with feedback)."""
    u = updates()[:rounds]
    true = u.sum(axis=0, dtype=np.float64)
    plain = sum(decode(encode(x, spec)).astype(np.float64) for x in u)
    residual, sent = None, np.zeros(D, np.float64)
    for x in u:
        enc, residual = compress_with_feedback(x, residual, spec)
        sent += decode(enc)
    return float(np.linalg.norm(true - plain)), float(np.linalg.norm(true - sent))


def test_without_feedback_top_k_drifts_and_with_feedback_it_does_not() -> None:
    spec = SPECS[0]
    drift10, ef10 = gaps(spec, 10)
    drift50, ef50 = gaps(spec, ROUNDS)
    assert drift50 > 2 * drift10  # the unsent drift accumulates round after round
    assert ef50 < 1.5 * ef10  # the residual carries it instead: no growth
    assert ef50 < drift50 / 4


def test_first_round_and_lossless_codec() -> None:
    u = updates()[0]
    enc, e = compress_with_feedback(u, None, CodecSpec("none"))
    np.testing.assert_array_equal(decode(enc), u)
    np.testing.assert_array_equal(e, 0.0)
    enc, e2 = compress_with_feedback(u, np.ones(D, np.float32), CodecSpec("topk", topk=0.05))
    np.testing.assert_allclose(decode(enc) + e2, u + 1.0, atol=1e-6)


@pytest.mark.parametrize("residual", [np.zeros(D + 1, np.float32), np.full(D, np.nan, np.float32)])
def test_rejects_bad_residual(residual: np.ndarray) -> None:
    with pytest.raises(ValueError, match="residual"):
        compress_with_feedback(updates()[0], residual, CodecSpec("topk"))
