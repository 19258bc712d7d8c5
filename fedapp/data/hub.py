"""Online path: a HuggingFace dataset partitioned by flwr-datasets.

Used when ``dataset = "hf:<name>"``. It needs network access to the hub, so it
is not exercised by the test suite (this project's machines are offline). The
dataset must have ``train`` and ``test`` splits, an integer label column
(``label-column``) and either numeric feature columns or one image column.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from fedapp.config import HF_PREFIX
from fedapp.data.specs import DatasetSpec, Split


def _to_split(ds: Any, label: str) -> Split:
    """Flatten every non-label column (numbers or images) into float32 features."""
    cols = [c for c in ds.column_names if c != label]
    ds = ds.with_format("numpy")
    parts = []
    for col in cols:
        values = np.asarray(ds[col], dtype=np.float32)
        parts.append(values.reshape(len(values), -1))
    x = np.concatenate(parts, axis=1)
    if x.max(initial=0.0) > 1.0 and len(cols) == 1:  # one image column of 0..255 pixels
        x = x / np.float32(255.0)
    return Split(x, np.asarray(ds[label], dtype=np.int64))


@lru_cache(maxsize=2)
def _federated(name: str, partitioner: str, num: int, alpha: float, shards: int, seed: int,
               label: str) -> Any:
    from flwr_datasets import FederatedDataset

    from fedapp.data.partition import make_partitioner

    part = make_partitioner(partitioner, num, alpha, shards, seed, by=label)
    return FederatedDataset(dataset=name, partitioners={"train": part}, seed=seed)


def load_partition(name: str, pid: int, num: int, partitioner: str, alpha: float,
                   shards: int, seed: int, label: str) -> Split:
    fds = _federated(name, partitioner, num, alpha, shards, seed, label)
    return _to_split(fds.load_partition(pid, "train"), label)


def load_test(name: str, label: str) -> Split:
    from datasets import load_dataset

    return _to_split(load_dataset(name, split="test"), label)


def spec(name: str, label: str) -> DatasetSpec:
    """Infer features and classes from the test split (one download, cached by datasets).

    When every feature column holds one number per row, the columns' names are the
    feature names (a hospital file is matched by name, as for the built-in datasets);
    with an image or array column there are no names and files are matched by position.
    """
    from datasets import load_dataset

    test_ds = load_dataset(name, split="test")
    test = _to_split(test_ds, label)
    cols = [c for c in test_ds.column_names if c != label]
    names = tuple(cols) if len(cols) == test.x.shape[1] else None
    return DatasetSpec(f"{HF_PREFIX}{name}", test.x.shape[1], int(test.y.max()) + 1,
                       feature_names=names)
