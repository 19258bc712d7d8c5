"""Key pairs kept across rounds (``secagg-key-rounds``): setup runs only when a node needs
new keys, every round's sums stay exact, and a node whose key may have been revealed or
whose state was lost is re-keyed."""

from __future__ import annotations

from collections import Counter

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.supercore.task_identity import TaskIdentity

from fedapp.secagg import masking
from fedapp.secagg.client import ROUND_KEY
from fedapp.secagg.keys import KeyDirectory
from fedapp.secagg.protocol import Settings
from tests.unit.secagg_loopback import COLLECT, LoopbackGrid, run_round, secure_stack, stage_of

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
DIM = 30
BASE = 2**63 + 7


def updates(n: int, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {BASE + i: rng.normal(0.0, 0.3, DIM) for i in range(n)}


class CountingGrid(LoopbackGrid):
    """A loopback grid that counts the stage messages it delivers, per round."""

    def __init__(self, ups: dict[int, np.ndarray]) -> None:
        super().__init__(ups)
        self.stages: list[Counter[str]] = []

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        messages = list(messages)
        self.stages[-1].update(stage_of(m) for m in messages)
        return super().send_and_receive(messages, timeout=timeout)


def rounds(grid: CountingGrid, layer, first: int, last: int) -> list:  # type: ignore[no-untyped-def]
    out = []
    for r in range(first, last + 1):
        grid.stages.append(Counter())
        out.append(run_round(grid, layer, DIM, server_round=r))
    return out


def public_key(grid: LoopbackGrid, node: int) -> bytes:
    return bytes(grid.contexts[node].state.config_records[RECORD_KEY_STATE]["pk1"])  # type: ignore[arg-type]


def test_setup_runs_once_and_every_round_stays_exact() -> None:
    ups = updates(6, seed=0)
    _, layer = secure_stack(6, Settings(bucket_size=3, clip_norm=10.0, key_rounds=10))
    grid = CountingGrid(ups)
    results = rounds(grid, layer, 1, 3)
    keys_after_1 = {n: public_key(grid, n) for n in ups}
    assert grid.stages[0][Stage.SETUP] == 6
    assert [c[Stage.SETUP] for c in grid.stages[1:]] == [0, 0]
    assert all(c[Stage.SHARE_KEYS] == 6 and c[Stage.UNMASK] == 6 for c in grid.stages)
    for arrays, metrics in results:
        assert arrays is not None and metrics is not None
        np.testing.assert_allclose(arrays["w"].numpy(), np.mean(list(ups.values()), axis=0),
                                   atol=1e-5)
    assert [m["secagg-setup-nodes"] for _, m in results] == [6, 0, 0]
    assert results[1][1]["secagg-bytes"] < results[0][1]["secagg-bytes"]
    assert keys_after_1 == {n: public_key(grid, n) for n in ups}


def test_keys_are_renewed_after_their_lifetime() -> None:
    ups = updates(4, seed=1)
    _, layer = secure_stack(4, Settings(bucket_size=2, clip_norm=10.0, key_rounds=2))
    grid = CountingGrid(ups)
    rounds(grid, layer, 1, 2)
    before = {n: public_key(grid, n) for n in ups}
    rounds(grid, layer, 3, 3)
    assert [c[Stage.SETUP] for c in grid.stages] == [4, 0, 4]
    assert all(before[n] != public_key(grid, n) for n in ups)


def test_one_round_keys_are_the_original_protocol() -> None:
    ups = updates(4, seed=2)
    _, layer = secure_stack(4, Settings(bucket_size=4, clip_norm=10.0, key_rounds=1))
    grid = CountingGrid(ups)
    rounds(grid, layer, 1, 3)
    assert [c[Stage.SETUP] for c in grid.stages] == [4, 4, 4]


def test_a_node_dropped_after_sharing_keys_is_rekeyed() -> None:
    ups = updates(4, seed=3)
    _, layer = secure_stack(4, Settings(bucket_size=4, clip_norm=10.0, key_rounds=10))
    grid = CountingGrid(ups)
    rounds(grid, layer, 1, 1)
    keys = {n: public_key(grid, n) for n in ups}
    grid.faults[(BASE + 1, COLLECT)] = lambda m: None  # its first key is reconstructed
    rounds(grid, layer, 2, 2)
    del grid.faults[(BASE + 1, COLLECT)]
    (arrays, metrics), = rounds(grid, layer, 3, 3)
    assert grid.stages[2][Stage.SETUP] == 1 and metrics is not None
    assert metrics["secagg-setup-nodes"] == 1 and metrics["accepted"] == 4
    assert public_key(grid, BASE + 1) != keys[BASE + 1]
    assert all(public_key(grid, n) == keys[n] for n in ups if n != BASE + 1)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.mean(list(ups.values()), axis=0),
                               atol=1e-5)


def test_a_node_that_lost_its_state_fails_one_round_and_is_rekeyed() -> None:
    ups = updates(4, seed=4)
    strategy, layer = secure_stack(4, Settings(bucket_size=4, clip_norm=10.0, key_rounds=10))
    grid = CountingGrid(ups)
    rounds(grid, layer, 1, 1)
    lost = BASE + 2
    grid.contexts[lost].state = RecordDict()  # e.g. its SuperNode restarted
    (_, metrics), = rounds(grid, layer, 2, 2)
    assert metrics is not None and metrics["accepted"] == 3
    assert "no key pairs kept" in strategy.history[2].failed[lost]
    (arrays, metrics), = rounds(grid, layer, 3, 3)
    assert grid.stages[2][Stage.SETUP] == 1 and metrics is not None
    assert metrics["accepted"] == 4 and arrays is not None


def share_keys_again(grid: LoopbackGrid, layer, node: int, server_round: int) -> Message:  # type: ignore[no-untyped-def]
    """The share_keys message of ``node``'s last round, replayed with ``server_round``."""
    from fedapp.secagg.client import secagg_mod

    bucket_keys = {str(n): list(k) for n, k in layer.directory.keys.items()}
    params = {"round": server_round, Key.SAMPLE_NUMBER: 4}
    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: Stage.SHARE_KEYS,
                                                            **bucket_keys}),
                          ROUND_KEY: ConfigRecord(params)})
    msg = Message(content, dst_node_id=node, message_type="train")
    return secagg_mod(msg, grid.contexts[node], grid._train)


def test_a_node_with_kept_keys_refuses_a_round_that_is_not_after_its_last() -> None:
    ups = updates(4, seed=5)
    _, layer = secure_stack(4, Settings(bucket_size=4, clip_norm=10.0, key_rounds=10))
    grid = CountingGrid(ups)
    rounds(grid, layer, 1, 2)
    reply = share_keys_again(grid, layer, BASE, server_round=2)
    assert reply.has_error() and "round 2 is not after round 2" in reply.error.reason


def test_pairwise_masks_are_bound_to_their_round() -> None:
    secret = b"s" * 32
    one, two = (masking.prg(secret, 64, 32, masking.round_context(r)) for r in (1, 2))
    assert not np.array_equal(one, two)
    np.testing.assert_array_equal(one, masking.prg(secret, 64, 32, masking.round_context(1)))


def test_key_directory_bookkeeping() -> None:
    d = KeyDirectory(lifetime=3)
    assert d.needs_setup([1, 2], 1) == [1, 2]
    d.register(1, (b"a", b"b"), 1)
    d.register(2, (b"c", b"d"), 2)
    assert d.needs_setup([1, 2], 3) == []
    assert d.needs_setup([1, 2], 4) == [1]  # 3 rounds old
    d.settle(took_part=[1, 2], completed=[1])
    assert 2 not in d.keys and 1 in d.keys


def test_strategy_history_is_untouched_by_key_reuse() -> None:
    """A run with kept keys and one with fresh keys every round aggregate the same."""
    ups = updates(6, seed=6)
    got = []
    for key_rounds in (1, 10):
        _, layer = secure_stack(6, Settings(bucket_size=3, clip_norm=10.0, seed=2,
                                            key_rounds=key_rounds))
        got.append([a["w"].numpy() for a, _ in rounds(CountingGrid(ups), layer, 1, 3)])
    np.testing.assert_allclose(np.array(got[0]), np.array(got[1]), atol=1e-5)
