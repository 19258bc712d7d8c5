"""The offline datasets that ship in scikit-learn, and the held-out test split."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fedapp.data.specs import DATASET_SPECS, Split, preprocess


def load_raw(dataset: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Raw features, labels and feature names of a built-in dataset."""
    from sklearn import datasets as skd

    loaders = {"digits": skd.load_digits, "breast-cancer": skd.load_breast_cancer}
    if dataset not in loaders:
        raise ValueError(f"dataset={dataset!r} is not one of: {', '.join(DATASET_SPECS)}")
    bunch = loaders[dataset]()
    names = [str(n) for n in bunch.feature_names]
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64), names


@lru_cache(maxsize=8)
def train_test_indices(dataset: str, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified, seeded split of a built-in dataset into (train, test) row indices.

    The test rows are the server's held-out set: no node ever trains on them.
    """
    from sklearn.model_selection import train_test_split

    _, y, _ = load_raw(dataset)
    idx = np.arange(len(y))
    train, test = train_test_split(
        idx, test_size=test_fraction, random_state=seed, shuffle=True, stratify=y
    )
    return train, np.sort(test)  # train keeps the shuffled order (iid shards)


def load_split(dataset: str, part: str, test_fraction: float, seed: int) -> Split:
    """The preprocessed ``train`` or ``test`` part of a built-in dataset."""
    x, y, _ = load_raw(dataset)
    train, test = train_test_indices(dataset, test_fraction, seed)
    rows = {"train": train, "test": test}[part]
    return Split(preprocess(dataset, x[rows]), y[rows])
