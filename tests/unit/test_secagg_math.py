"""The arithmetic and the plan of secure aggregation (fedapp.secagg.masking, .protocol)."""

from __future__ import annotations

import numpy as np
import pytest

from fedapp.config import ConfigError, RunConfig
from fedapp.secagg import masking, protocol


@pytest.mark.parametrize("bits,size", [(32, 4), (16, 3), (16, 64), (8, 2)])
def test_a_full_bucket_of_extreme_values_never_wraps(bits: int, size: int) -> None:
    levels = masking.levels(bits, size)
    for extreme in (levels, -levels):
        total = np.zeros(3, np.uint64)
        for _ in range(size):
            total = masking.add_mask(total, masking.to_ring(np.full(3, extreme), bits), 1, bits)
        assert (masking.centered(total, bits) == size * extreme).all()
    with pytest.raises(ValueError, match="cannot hold"):
        masking.levels(8, 200)


def test_quantization_is_unbiased_and_bounded() -> None:
    rng = np.random.default_rng(0)
    x = np.array([0.3, -0.71, 1.0, -1.0, 0.0])
    draws = np.stack([masking.quantize(x, 1.0, 10, rng) for _ in range(20000)])
    assert draws.min() >= -10 and draws.max() <= 10
    np.testing.assert_allclose(masking.dequantize(draws.mean(axis=0), 1.0, 10), x, atol=0.005)
    assert set(np.unique(draws[:, 0])) == {3}  # 0.3 x 10 is exact


def test_clip_to_norm_scales_down_only() -> None:
    x = np.array([3.0, 4.0])
    np.testing.assert_allclose(masking.clip_to_norm(x, 1.0), [0.6, 0.8])
    np.testing.assert_allclose(masking.clip_to_norm(x, 10.0), x)


def test_masks_cancel_and_depend_on_every_key_bit() -> None:
    a, b = masking.prg(b"k" * 32, 1000, 32), masking.prg(b"k" * 32, 1000, 32)
    assert (a == b).all() and a.max() < 2**32
    other = masking.prg(b"k" * 31 + b"l", 1000, 32)
    assert (a != other).mean() > 0.99
    v = masking.to_ring(np.arange(-5, 5), 16)
    mask = masking.prg(b"s" * 32, 10, 16)
    back = masking.add_mask(masking.add_mask(v, mask, 1, 16), mask, -1, 16)
    assert (masking.centered(back, 16) == np.arange(-5, 5)).all()


def test_masks_look_uniform() -> None:
    m = masking.prg(b"seed" * 8, 200_000, 16)
    counts = np.bincount((m >> np.uint64(12)).astype(np.int64), minlength=16)
    assert counts.min() > 0.9 * 200_000 / 16  # 16 bins of equal mass


def test_the_bound_accepts_sums_and_rejects_wrapped_or_random_ones() -> None:
    rng = np.random.default_rng(1)
    bits, k, bound = 32, 4, 2.0
    levels = masking.levels(bits, k)
    rows = [masking.clip_to_norm(rng.normal(size=100), bound) for _ in range(k)]
    total = sum(masking.quantize(r, bound, levels, rng) for r in rows)
    assert masking.sum_bound_ok(total, k, bound, levels) is None
    uniform = masking.centered(masking.prg(b"x" * 32, 100, bits), bits)
    assert masking.sum_bound_ok(uniform, k, bound, levels) is not None  # a wrong mask
    assert "beyond" in masking.sum_bound_ok(total + k * levels, k, bound, levels)  # type: ignore[operator]
    big = np.full(100, levels)  # every coordinate at its limit: norm 10 x the bound
    assert "norm" in masking.sum_bound_ok(big * k, k, bound, levels)  # type: ignore[operator]


def test_buckets_cover_the_round_once_and_change_every_round() -> None:
    nodes = list(range(10, 33))  # 23 nodes in buckets of 4: five buckets of 4 or 5
    b1 = protocol.assign_buckets(nodes, 4, seed=7, server_round=1)
    assert sorted(n for b in b1 for n in b) == nodes
    assert sorted(map(len, b1)) == [4, 4, 5, 5, 5]
    assert b1 == protocol.assign_buckets(nodes, 4, seed=7, server_round=1)
    assert b1 != protocol.assign_buckets(nodes, 4, seed=7, server_round=2)
    assert protocol.assign_buckets([1, 2, 3], 4, 0, 1) == [protocol.assign_buckets(
        [1, 2, 3], 4, 0, 1)[0]] and len(protocol.assign_buckets([1, 2, 3], 4, 0, 1)[0]) == 3


def test_ring_neighbours_are_symmetric() -> None:
    bucket = (5, 9, 2, 7, 11, 3, 8)
    graph = protocol.neighbours(bucket, 4)
    assert all(len(h) == 5 and node in h for node, h in graph.items())
    assert all(i in graph[j] for i in bucket for j in graph[i])
    assert protocol.neighbours(bucket, 0)[5] == bucket
    with pytest.raises(ValueError, match="even"):
        protocol.neighbours(bucket, 3)


def test_threshold_and_recoverability() -> None:
    assert protocol.threshold(0.75, 4) == 3 and protocol.threshold(0.51, 2) == 2
    assert protocol.threshold(0.9, 1) == 2  # never a sum of one
    with pytest.raises(ValueError, match=r"\(0\.5, 1\]"):
        protocol.threshold(0.5, 4)
    graph = {n: (1, 2, 3, 4) for n in (1, 2, 3, 4)}
    assert protocol.recoverable(graph, {1, 2, 3}, {1, 2, 3}, 3) is None
    assert "fewer than the threshold" in protocol.recoverable(graph, {1, 2}, {1, 2}, 3)  # type: ignore[operator]


def test_config_names_what_secagg_cannot_compose_with() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig(secagg=True, compression="topk", attack="alie-adaptive", dp="central",
                  anomaly_detection="flag")
    text = str(err.value)
    assert "compression='off'" in text and "attack='alie-adaptive'" in text
    assert "dp='central'" in text
    RunConfig(secagg=True, attack="label-flip", dp="local")  # node-side attack, local DP: fine
