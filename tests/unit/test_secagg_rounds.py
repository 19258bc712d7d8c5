"""Secure aggregation end to end in one process: Flower's SecAgg+ stages through a
loopback Grid into each node's ``secagg_mod``, the server layer, the robust strategy."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity

from fedapp.node_errors import SECAGG_ERROR
from fedapp.secagg import masking
from fedapp.secagg.client import MASKED_KEY
from fedapp.secagg.protocol import Settings
from fedapp.server.strategy import RobustStrategy
from tests.unit.secagg_loopback import COLLECT, LoopbackGrid, run_round, secure_stack

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
DIM = 50
BIG = 2**63 + 100  # Flower's node ids are uint64: above numpy's int64


def updates(n: int, seed: int = 0, scale: float = 0.3) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {BIG + i: rng.normal(0.0, scale, DIM) for i in range(n)}


def captured_rows(strategy: RobustStrategy, monkeypatch: pytest.MonkeyPatch) -> list:
    """Every row matrix the robust strategy aggregates, with the buckets it was told of."""
    seen: list = []
    original = strategy._apply

    def spy(server_round, stats, nodes, rows, weights, **kw):  # type: ignore[no-untyped-def]
        seen.append((np.array(rows, copy=True), list(strategy._buckets or []), list(weights)))
        return original(server_round, stats, nodes, rows, weights, **kw)

    monkeypatch.setattr(strategy, "_apply", spy)
    return seen


def bucket_means(ups: dict[int, np.ndarray], members: list[tuple[int, ...]]) -> np.ndarray:
    return np.stack([np.mean([ups[n] for n in m], axis=0) for m in members])


def test_rows_are_bucket_means_and_never_one_update(monkeypatch: pytest.MonkeyPatch) -> None:
    ups = updates(8)
    strategy, layer = secure_stack(8, Settings(bucket_size=4, clip_norm=10.0, seed=3))
    seen = captured_rows(strategy, monkeypatch)
    grid = LoopbackGrid(ups)
    arrays, metrics = run_round(grid, layer, DIM)
    assert metrics is not None and arrays is not None
    rows, members, weights = seen[0]
    assert sorted(map(len, members)) == [4, 4] and weights == [4.0, 4.0]
    assert sorted(n for m in members for n in m) == sorted(ups)
    # 32-bit encoding: error per coordinate <= C / L with L ~ 2^29
    np.testing.assert_allclose(rows, bucket_means(ups, members), atol=1e-6)
    for row in rows:  # the strategy holds sums of 4, not one node's update
        assert min(np.linalg.norm(row - u) for u in ups.values()) > 0.1
    np.testing.assert_allclose(arrays["w"].numpy(), np.mean(list(ups.values()), axis=0),
                               atol=1e-5)
    assert metrics["secagg-buckets"] == 2 and metrics["secagg-buckets-dropped"] == 0
    # keys (2 x 91 bytes per node), 3 encrypted share pairs per node, shares at unmask
    assert 8 * 3 * 100 < metrics["secagg-bytes"] < 100_000
    assert metrics["accepted"] == 8 and metrics["failures"] == 0


def test_the_wire_carries_masked_vectors_only(monkeypatch: pytest.MonkeyPatch) -> None:
    ups = updates(6, seed=1)
    _, layer = secure_stack(6, Settings(bucket_size=3, clip_norm=10.0, bits=16))
    grid = LoopbackGrid(ups)
    sent: list[Message] = []
    for node in ups:  # record each node's stage-3 answer on its way to the server
        grid.reply_faults[(node, COLLECT)] = lambda m: sent.append(m) or m
    run_round(grid, layer, DIM)
    levels = masking.levels(16, 3)
    for reply in sent:
        assert set(reply.content.array_records) == {MASKED_KEY}
        masked = reply.content[MASKED_KEY]["masked"].numpy()
        assert masked.dtype == np.uint16  # 16 bits on the wire: half of float32
        plain = {n: np.round(masking.clip_to_norm(u, 10.0) * levels / 10.0) for n, u in ups.items()}
        decoded = masking.centered(masked, 16)
        assert all(np.abs(decoded - p).max() > levels for p in plain.values())


def test_clipping_bounds_a_huge_update() -> None:
    ups = updates(4, seed=2)
    ups[BIG + 3] = ups[BIG + 3] * 1e6
    _strategy, layer = secure_stack(4, Settings(bucket_size=4, clip_norm=1.0))
    arrays, _ = run_round(LoopbackGrid(ups), layer, DIM)
    assert arrays is not None
    expected = np.mean([masking.clip_to_norm(u, 1.0) for u in ups.values()], axis=0)
    np.testing.assert_allclose(arrays["w"].numpy(), expected, atol=1e-6)


def test_a_dropout_after_sharing_keys_is_recovered(monkeypatch: pytest.MonkeyPatch) -> None:
    ups = updates(4, seed=4)
    strategy, layer = secure_stack(4, Settings(bucket_size=4, threshold=0.75, clip_norm=10.0))
    seen = captured_rows(strategy, monkeypatch)
    grid = LoopbackGrid(ups)
    grid.faults[(BIG + 1, COLLECT)] = lambda m: None  # trains never: gone after share_keys
    _arrays, metrics = run_round(grid, layer, DIM)
    assert metrics is not None and metrics["failures"] == 1 and metrics["failed-timeout"] == 1
    rows, members, _ = seen[0]
    assert len(members) == 1 and sorted(members[0]) == [BIG, BIG + 2, BIG + 3]
    np.testing.assert_allclose(rows[0], np.mean([ups[BIG + k] for k in (0, 2, 3)], axis=0),
                               atol=1e-6)
    assert strategy.history[1].failed[BIG + 1].startswith("timeout")


def test_too_many_dropouts_leave_their_bucket_out(caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ups = updates(8, seed=5)
    strategy, layer = secure_stack(8, Settings(bucket_size=4, threshold=0.75, clip_norm=10.0,
                                               seed=1))
    seen = captured_rows(strategy, monkeypatch)
    grid = LoopbackGrid(ups)

    def two_of_the_first_bucket(m: Message) -> Message | None:  # gone after share_keys
        return None if m.metadata.dst_node_id in layer._buckets[0].members[:2] else m

    for node in ups:
        grid.faults[(node, COLLECT)] = two_of_the_first_bucket
    with caplog.at_level(logging.WARNING):
        arrays, metrics = run_round(grid, layer, DIM)
    assert metrics is not None and metrics["secagg-buckets-dropped"] == 1
    rows, members, _ = seen[0]
    assert len(members) == 1 and len(members[0]) == 4
    np.testing.assert_allclose(rows[0], bucket_means(ups, members)[0], atol=1e-6)
    assert "2 masked vectors accepted, fewer than the threshold 3" in caplog.text
    assert arrays is not None


def test_a_tampered_share_is_caught_by_its_receiver() -> None:
    ups = updates(4, seed=6)
    strategy, layer = secure_stack(4, Settings(bucket_size=4, threshold=0.75, clip_norm=10.0))
    grid = LoopbackGrid(ups)

    def flip(m: Message) -> Message:
        rec = m.content.config_records[RECORD_KEY_CONFIGS]
        cts = list(rec[Key.CIPHERTEXT_LIST])  # type: ignore[arg-type]
        cts[0] = cts[0][:-5] + bytes([cts[0][-5] ^ 1]) + cts[0][-4:]
        rec[Key.CIPHERTEXT_LIST] = cts
        return m

    grid.faults[(BIG + 2, COLLECT)] = flip
    arrays, metrics = run_round(grid, layer, DIM)
    failed = strategy.history[1].failed
    assert list(failed) == [BIG + 2] and "failed authentication" in failed[BIG + 2]
    assert metrics is not None and metrics["failed-secagg"] == 1
    assert arrays is not None  # three contributors, threshold 3: recovered
    np.testing.assert_allclose(arrays["w"].numpy(),
                               np.mean([ups[BIG + k] for k in (0, 1, 3)], axis=0), atol=1e-6)


def test_a_tampered_masked_vector_fails_its_bucket_bound(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    ups = updates(4, seed=7)
    _strategy, layer = secure_stack(4, Settings(bucket_size=4, clip_norm=10.0))
    grid = LoopbackGrid(ups)

    def scramble(m: Message) -> Message:
        masked = m.content[MASKED_KEY]["masked"].numpy()
        noise = np.random.default_rng(0).integers(0, 2**32, masked.size, dtype=np.uint64)
        m.content[MASKED_KEY]["masked"] = type(m.content[MASKED_KEY]["masked"])(
            masked ^ noise.astype(np.uint32))
        return m

    grid.reply_faults[(BIG + 1, COLLECT)] = scramble
    with caplog.at_level(logging.WARNING):
        _arrays, metrics = run_round(grid, layer, DIM)
    assert metrics is not None and metrics["secagg-buckets-dropped"] == 1
    assert metrics["kept-previous"] == 1
    assert "the sum fails its bound" in caplog.text


def test_a_masked_vector_of_the_wrong_shape_is_rejected_and_its_node_recovered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ups = updates(4, seed=11)
    strategy, layer = secure_stack(4, Settings(bucket_size=4, threshold=0.75, clip_norm=10.0))
    seen = captured_rows(strategy, monkeypatch)
    grid = LoopbackGrid(ups)

    def truncate(m: Message) -> Message:
        record = m.content[MASKED_KEY]
        record["masked"] = type(record["masked"])(record["masked"].numpy()[:-1].copy())
        return m

    grid.reply_faults[(BIG + 2, COLLECT)] = truncate
    _, metrics = run_round(grid, layer, DIM)
    assert metrics is not None and metrics["rejected"] == 1
    assert "masked vector of uint32 (49,)" in strategy.history[1].rejected[BIG + 2]
    np.testing.assert_allclose(seen[0][0][0], np.mean([ups[BIG + k] for k in (0, 1, 3)], axis=0),
                               atol=1e-6)


def test_a_tampered_unmask_share_is_detected(caplog: pytest.LogCaptureFixture) -> None:
    ups = updates(4, seed=8)
    _strategy, layer = secure_stack(4, Settings(bucket_size=4, threshold=0.75, clip_norm=10.0))
    grid = LoopbackGrid(ups)

    def corrupt(m: Message) -> Message:
        rec = m.content.config_records[RECORD_KEY_CONFIGS]
        shares = list(rec[Key.SHARE_LIST])  # type: ignore[arg-type]
        shares[0] = shares[0][:4] + bytes(b ^ 0x5A for b in shares[0][4:])
        rec[Key.SHARE_LIST] = shares
        return m

    grid.reply_faults[(BIG + 3, Stage.UNMASK)] = corrupt
    with caplog.at_level(logging.WARNING):
        _, metrics = run_round(grid, layer, DIM)
    assert metrics is not None and metrics["secagg-buckets-dropped"] == 1
    assert "the shares disagree" in caplog.text or "do not combine" in caplog.text


def test_a_node_refuses_to_give_both_secrets_of_a_node() -> None:
    ups = updates(4, seed=9)
    _, layer = secure_stack(4, Settings(bucket_size=4, clip_norm=10.0))
    grid = LoopbackGrid(ups)
    answers: list[Message] = []

    def greedy(m: Message) -> Message:  # a curious server: node BIG contributed AND dropped
        rec = m.content.config_records[RECORD_KEY_CONFIGS]
        rec[Key.DEAD_NODE_ID_LIST] = [BIG]
        return m

    grid.faults[(BIG + 1, Stage.UNMASK)] = greedy
    grid.reply_faults[(BIG + 1, Stage.UNMASK)] = lambda m: answers.append(m) or m
    run_round(grid, layer, DIM)
    assert answers[0].has_error() and answers[0].error.code == SECAGG_ERROR
    assert "both contributing and dropped" in answers[0].error.reason


def test_a_bucket_of_a_sign_flipper_is_flagged_on_its_members(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(10)
    common = rng.normal(0.0, 1.0, DIM)
    ups = {BIG + i: common * 0.2 + rng.normal(0.0, 0.05, DIM) for i in range(12)}
    ups[BIG] = -25.0 * common  # one attacker in a bucket of 2: the bucket's mean flips
    strategy, layer = secure_stack(12, Settings(bucket_size=2, clip_norm=20.0, seed=0),
                                   detection="exclude")
    run_round(LoopbackGrid(ups), layer, DIM)
    stats = strategy.history[1]
    assert BIG in stats.flagged and BIG in stats.excluded_nodes
    assert len(stats.flagged) == 2  # the attacker and its one bucket-mate
    assert stats.flagged[BIG].startswith("bucket of 2")


def test_no_secagg_record_passes_through() -> None:
    grid = LoopbackGrid(updates(1))
    msg = Message(RecordDict({}), dst_node_id=BIG, message_type="train")
    called = []
    from fedapp.secagg.client import secagg_mod

    secagg_mod(msg, grid.contexts[BIG], lambda m, c: called.append(m) or m)
    assert called == [msg]
