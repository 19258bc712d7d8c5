"""What the models need to know about a dataset, and its fixed preprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DatasetSpec:
    """Shape of one example and the number of classes.

    ``image_shape`` is ``(channels, height, width)`` for image data, None for
    tabular data; images are stored flattened in row-major order.
    """

    name: str
    num_features: int
    num_classes: int
    image_shape: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Split:
    """Features (float32, ``(n, num_features)``) and integer labels (int64, ``(n,)``)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise ValueError(f"bad split shapes: x {self.x.shape}, y {self.y.shape}")

    def __len__(self) -> int:
        return len(self.y)


DATASET_SPECS: dict[str, DatasetSpec] = {
    # scikit-learn's copy of the UCI optical digits: 1797 images of 8x8, values 0..16.
    "digits": DatasetSpec("digits", 64, 10, (1, 8, 8)),
    # Wisconsin diagnostic breast cancer: 569 patients, 30 non-negative features.
    "breast-cancer": DatasetSpec("breast-cancer", 30, 2),
}


def preprocess(dataset: str, x: np.ndarray) -> np.ndarray:
    """Fixed, stateless feature transform of a dataset, the same on every node.

    digits: ``x / 16`` (pixel intensities to [0, 1]).
    breast-cancer: ``log1p(x)`` (features are non-negative and span four orders
    of magnitude; a log keeps them comparable without statistics that would
    have to be shared between hospitals).
    Anything else: unchanged.
    Stateless on purpose: per-node standardisation would give every hospital a
    different input space, and global statistics would leak data.
    """
    x = np.asarray(x, dtype=np.float32)
    if dataset == "digits":
        return x / np.float32(16.0)
    if dataset == "breast-cancer":
        if (x < 0).any():
            raise ValueError("breast-cancer features must be >= 0 (raw values expected)")
        return np.log1p(x)
    return x
