"""dataset='synthetic': every node's rows from (seed, partition id), nothing global."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fedapp import task
from fedapp.config import NodeConfig, RunConfig
from fedapp.data import Split, synthetic
from fedapp.data.loading import dataset_spec, load_node_data, load_server_test
from fedapp.privacy.ledger import node_budget

CFG = RunConfig(dataset="synthetic")


def same(a: Split, b: Split) -> bool:
    return np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)


def test_same_seed_and_id_give_the_same_rows_whatever_the_number_of_nodes() -> None:
    a = synthetic.node_split(CFG, 7)
    synthetic.class_means.cache_clear()
    assert same(a, synthetic.node_split(CFG, 7))
    assert a.x.dtype == np.float32 and a.y.dtype == np.int64 and a.x.shape[1] == 32
    small = load_node_data(CFG, NodeConfig(7, 10))
    large = load_node_data(CFG, NodeConfig(7, 10_000))
    assert all(same(s, t) for s, t in zip(small, large, strict=True))


def test_different_ids_and_seeds_give_different_rows() -> None:
    rows = [synthetic.node_split(CFG, i) for i in range(20)]
    assert len({r.x.tobytes() for r in rows}) == 20
    other_seed = synthetic.node_split(RunConfig(dataset="synthetic", seed=43), 0)
    assert not np.array_equal(other_seed.x[:2], rows[0].x[:2])


def test_node_sizes_are_lognormal_around_synthetic_rows() -> None:
    cfg = RunConfig(dataset="synthetic", synthetic_rows=60, synthetic_rows_spread=0.8)
    sizes = np.array([synthetic.node_rows(cfg, i) for i in range(4000)])
    assert abs(sizes.mean() / 60 - 1) < 0.05
    assert sizes.std() > 30 and sizes.min() >= synthetic.MIN_ROWS
    assert sizes.max() <= synthetic.MAX_ROWS_FACTOR * 60
    fixed = RunConfig(dataset="synthetic", synthetic_rows=25, synthetic_rows_spread=0.0)
    assert {len(synthetic.node_split(fixed, i)) for i in range(50)} == {25}


def max_class_share(cfg: RunConfig, nodes: int = 200) -> float:
    shares = [np.bincount(s.y, minlength=cfg.synthetic_classes).max() / len(s)
              for s in (synthetic.node_split(cfg, i) for i in range(nodes))]
    return float(np.mean(shares))


def test_label_skew_follows_the_partitioner() -> None:
    iid = max_class_share(RunConfig(dataset="synthetic", partitioner="iid",
                                    synthetic_rows=400, synthetic_rows_spread=0.0))
    skewed = max_class_share(RunConfig(dataset="synthetic", dirichlet_alpha=0.05))
    mild = max_class_share(RunConfig(dataset="synthetic", dirichlet_alpha=10.0))
    assert iid < 0.2 and mild < 0.35 and skewed > 0.7
    shard = RunConfig(dataset="synthetic", partitioner="shard", shards_per_node=2)
    assert {len(np.unique(synthetic.node_split(shard, i).y)) for i in range(100)} <= {1, 2}
    tiny = RunConfig(dataset="synthetic", dirichlet_alpha=1e-3)  # no NaN from Dir(0.001)
    assert all(len(synthetic.node_split(tiny, i)) for i in range(100))


@pytest.mark.parametrize("shift", [0.0, 1.5])
def test_feature_shift_is_a_per_node_mean_offset_of_that_size(shift: float) -> None:
    cfg = RunConfig(dataset="synthetic", synthetic_feature_shift=shift,
                    synthetic_model_shift=0.0, synthetic_rows=2000, synthetic_rows_spread=0.0)
    means = synthetic.class_means(cfg.seed, cfg.synthetic_classes, cfg.synthetic_features)
    offsets = [(s.x - means[s.y]).mean(axis=0)
               for s in (synthetic.node_split(cfg, i) for i in range(60))]
    expected = np.sqrt(shift**2 + 1 / 2000)  # the node's offset plus the mean of its noise
    assert abs(np.std(offsets) / expected - 1) < 0.1


def nearest_mean_accuracy(train: Split, test: Split, classes: int) -> float:
    centers = np.stack([train.x[train.y == c].mean(axis=0) for c in range(classes)])
    guess = ((test.x[:, None, :] - centers[None]) ** 2).sum(axis=2).argmin(axis=1)
    return float((guess == test.y).mean())


def test_the_server_test_set_is_the_populations_mixture() -> None:
    test = load_server_test(CFG)
    assert len(test) == CFG.synthetic_test_rows and same(test, load_server_test(CFG))
    assert np.bincount(test.y, minlength=10).min() > 0.7 * len(test) / 10  # labels uniform
    parts = [synthetic.node_split(CFG, i) for i in range(300)]
    pooled = Split(np.concatenate([p.x for p in parts]),
                             np.concatenate([p.y for p in parts]))
    acc = nearest_mean_accuracy(pooled, test, 10)
    assert acc > 0.6  # chance is 0.1
    # the pooled nodes and the test set are one distribution: fresh nodes score alike
    fresh = [synthetic.node_split(CFG, 10_000 + i) for i in range(300)]
    held = Split(np.concatenate([p.x for p in fresh]),
                           np.concatenate([p.y for p in fresh]))
    assert abs(nearest_mean_accuracy(pooled, held, 10) - acc) < 0.05
    assert not {r.tobytes() for r in test.x} & {r.tobytes() for r in pooled.x}


def peak_bytes(partition_id: int, num_partitions: int) -> int:
    tracemalloc.start()
    try:
        load_node_data(CFG, NodeConfig(partition_id, num_partitions))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_node_costs_its_own_rows_only_whatever_the_number_of_nodes() -> None:
    load_node_data(CFG, NodeConfig(0, 1))  # class means cached, modules imported
    node = synthetic.node_rows(CFG, 9)
    small = peak_bytes(9, 10)
    large = peak_bytes(9, 10_000)
    last = peak_bytes(9_999, 10_000)
    last_rows = synthetic.node_rows(CFG, 9_999)
    row_bytes = 8 * CFG.synthetic_features  # float64 while generated
    assert large <= 1.1 * small + 4096
    assert small < 6 * row_bytes * node + 64_000  # a few copies of its rows, no more
    assert last < 6 * row_bytes * last_rows + 64_000


def test_the_spec_and_model_follow_the_synthetic_keys(tmp_path: Path) -> None:
    cfg = RunConfig(dataset="synthetic", synthetic_features=5, synthetic_classes=3)
    spec = dataset_spec(cfg)
    assert (spec.num_features, spec.num_classes, spec.image_shape) == (5, 3, None)
    train, _ = load_node_data(cfg, NodeConfig(0, 2))
    model = task.build_model("auto", spec, 8)
    assert model(__import__("torch").from_numpy(train.x)).shape == (len(train), 3)
    budget = node_budget(cfg, NodeConfig(0, 2, privacy_ledger=str(tmp_path / "l.json")), 1, 1)
    assert budget.describe["synthetic-features"] == 5  # the ledger names what made the rows
