"""What each app loads: a node's (train, validation) data and the server's test set."""

from __future__ import annotations

import numpy as np

from fedapp.config import HF_PREFIX, SYNTHETIC, NodeConfig, RunConfig
from fedapp.data.specs import DATASET_SPECS, DatasetSpec, Split


def dataset_spec(cfg: RunConfig) -> DatasetSpec:
    """Shape and classes of the configured dataset (the hub path downloads metadata)."""
    if cfg.dataset in DATASET_SPECS:
        return DATASET_SPECS[cfg.dataset]
    if cfg.dataset == SYNTHETIC:
        from fedapp.data import synthetic

        return synthetic.spec(cfg)
    from fedapp.data import hub

    return hub.spec(cfg.dataset.removeprefix(HF_PREFIX), cfg.label_column)


def holdout(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Seeded random (train, validation) split of a node's data; validation may be empty
    for tiny nodes but train never is."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split))
    n_val = min(round(fraction * len(split)), len(split) - 1)
    val, train = order[:n_val], order[n_val:]
    return Split(split.x[train], split.y[train]), Split(split.x[val], split.y[val])


def load_node_data(cfg: RunConfig, node: NodeConfig) -> tuple[Split, Split]:
    """A node's local (train, validation) data.

    With ``data-path`` (a hospital in deployment) the node reads its own file, matched to
    the dataset's columns by name (less ``ignore-columns``); otherwise (simulation) it
    takes partition ``partition-id`` of the training part of the configured dataset, or,
    for ``dataset='synthetic'``, generates node ``partition-id``'s rows (whatever
    ``num-partitions``). The server's test rows are never included.
    """
    seed = cfg.seed + 7919 * (node.partition_id or 0)
    if node.data_path:
        from fedapp.data.local import load_table

        data = load_table(node.data_path, node.label_column or cfg.label_column, dataset_spec(cfg),
                          ignore_columns=node.ignore_columns)
        return holdout(data, cfg.test_fraction, seed)
    assert node.partition_id is not None and node.num_partitions is not None
    if cfg.dataset == SYNTHETIC:
        from fedapp.data import synthetic

        return holdout(synthetic.node_split(cfg, node.partition_id), cfg.test_fraction, seed)
    if cfg.dataset.startswith(HF_PREFIX):
        from fedapp.data import hub

        data = hub.load_partition(
            cfg.dataset.removeprefix(HF_PREFIX), node.partition_id, node.num_partitions,
            cfg.partitioner, cfg.dirichlet_alpha, cfg.shards_per_node, cfg.seed, cfg.label_column,
        )
        return holdout(data, cfg.test_fraction, seed)
    from fedapp.data.builtin import load_split
    from fedapp.data.partition import partition_rows

    train = load_split(cfg.dataset, "train", cfg.test_fraction, cfg.seed)
    rows = partition_rows(
        tuple(train.y.tolist()), cfg.partitioner, node.num_partitions, node.partition_id,
        cfg.dirichlet_alpha, cfg.shards_per_node, cfg.seed,
    )
    return holdout(Split(train.x[rows], train.y[rows]), cfg.test_fraction, seed)


def load_server_test(cfg: RunConfig) -> Split:
    """The held-out test set the ServerApp evaluates the global model on."""
    if cfg.dataset == SYNTHETIC:
        from fedapp.data import synthetic

        return synthetic.server_test(cfg)
    if cfg.dataset.startswith(HF_PREFIX):
        from fedapp.data import hub

        return hub.load_test(cfg.dataset.removeprefix(HF_PREFIX), cfg.label_column)
    from fedapp.data.builtin import load_split

    return load_split(cfg.dataset, "test", cfg.test_fraction, cfg.seed)
