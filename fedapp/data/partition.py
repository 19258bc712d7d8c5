"""Splitting the training set across simulated nodes with flwr-datasets partitioners."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def make_partitioner(  # type: ignore[no-untyped-def]
    name: str, num_partitions: int, alpha: float, shards: int, seed: int, by: str = "label"
):
    """A flwr-datasets partitioner that splits by the label column ``by``.

    iid: equal contiguous shards of the (already shuffled) training set.
    dirichlet: per-class proportions drawn from Dir(alpha) (Hsu et al. 2019);
    small alpha means few classes per node.
    shard: sort by label, cut into shards, give each node ``shards`` of them
    (McMahan et al. 2017's pathological non-IID split).
    """
    from flwr_datasets import partitioner as fp

    if name == "iid":
        return fp.IidPartitioner(num_partitions=num_partitions)
    if name == "dirichlet":
        return fp.DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by=by,
            alpha=alpha,
            min_partition_size=2,
            self_balancing=True,
            seed=seed,
        )
    if name == "shard":
        return fp.ShardPartitioner(
            num_partitions=num_partitions,
            partition_by=by,
            num_shards_per_partition=shards,
            seed=seed,
        )
    raise ValueError(f"partitioner={name!r} is not one of: iid, dirichlet, shard")


@lru_cache(maxsize=64)
def partition_rows(
    labels: tuple[int, ...],
    partitioner: str,
    num_partitions: int,
    partition_id: int,
    alpha: float,
    shards: int,
    seed: int,
) -> np.ndarray:
    """Row indices (into ``labels``) that belong to one partition.

    The partitioner sees a ``datasets.Dataset`` with two columns, the row index
    and the label, so only labels drive the split and features are indexed
    afterwards. Deterministic for a given seed.
    """
    import datasets

    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id={partition_id} must be in [0, {num_partitions})")
    if num_partitions > len(labels):
        raise ValueError(f"num-partitions={num_partitions} exceeds {len(labels)} training rows")
    ds = datasets.Dataset.from_dict({"row": np.arange(len(labels)), "label": list(labels)})
    part = make_partitioner(partitioner, num_partitions, alpha, shards, seed)
    part.dataset = ds
    return np.asarray(part.load_partition(partition_id)["row"], dtype=np.int64)
