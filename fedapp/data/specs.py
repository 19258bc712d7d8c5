"""What the models need to know about a dataset, and its fixed preprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DatasetSpec:
    """Shape of one example, the number of classes, and the feature columns' schema.

    ``image_shape`` is ``(channels, height, width)`` for image data, None for
    tabular data; images are stored flattened in row-major order.
    ``feature_names`` are the feature columns in the order the model takes them: a
    hospital's file is matched to them by name (``fedapp.data.schema``). None when
    the dataset names no columns (some hub datasets): then position is all there is.
    Every feature is a ``feature_kind`` (``"number"`` or ``"integer"``) within
    ``[feature_min, feature_max]`` (None: unbounded on that side).
    """

    name: str
    num_features: int
    num_classes: int
    image_shape: tuple[int, int, int] | None = None
    feature_names: tuple[str, ...] | None = None
    feature_kind: str = "number"
    feature_min: float | None = None
    feature_max: float | None = None

    def __post_init__(self) -> None:
        names = self.feature_names
        if names is not None and not len(names) == len(set(names)) == self.num_features:
            raise ValueError(f"{self.name}: feature_names must be {self.num_features} distinct "
                             f"names, got {len(names)} ({len(set(names))} distinct)")
        if self.feature_kind not in ("number", "integer"):
            raise ValueError(f"{self.name}: feature_kind={self.feature_kind!r}")


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


# The column names ``python -m fedapp.data split`` writes: scikit-learn's ``feature_names``
# (a test checks they agree; the ClientApp must not import scikit-learn to know them).
BREAST_CANCER_FEATURES = (
    "mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness",
    "mean compactness", "mean concavity", "mean concave points", "mean symmetry",
    "mean fractal dimension", "radius error", "texture error", "perimeter error",
    "area error", "smoothness error", "compactness error", "concavity error",
    "concave points error", "symmetry error", "fractal dimension error", "worst radius",
    "worst texture", "worst perimeter", "worst area", "worst smoothness",
    "worst compactness", "worst concavity", "worst concave points", "worst symmetry",
    "worst fractal dimension",
)
# pixel_<row>_<column> of the 8x8 image, row-major: pixel_0_0, pixel_0_1, ..., pixel_7_7.
DIGITS_FEATURES = tuple(f"pixel_{r}_{c}" for r in range(8) for c in range(8))

DATASET_SPECS: dict[str, DatasetSpec] = {
    # scikit-learn's copy of the UCI optical digits: 1797 images of 8x8, each pixel the
    # count (0..16) of set pixels in a 4x4 block of the original 32x32 bitmap.
    "digits": DatasetSpec("digits", 64, 10, (1, 8, 8), DIGITS_FEATURES, "integer", 0.0, 16.0),
    # Wisconsin diagnostic breast cancer: 569 patients, 30 non-negative features.
    "breast-cancer": DatasetSpec("breast-cancer", 30, 2, None, BREAST_CANCER_FEATURES,
                                 "number", 0.0, None),
}


# Per-feature mean and standard deviation of log1p(x) over the public WDBC data set
# (all 569 rows, as shipped in scikit-learn; a test recomputes them). Fixed numbers,
# so every hospital and the server map raw measurements to the same input space.
BREAST_CANCER_LOG_MEAN = np.array((
    2.691, 2.988, 4.501, 6.365, 0.09191, 0.09814, 0.08255, 0.0471, 0.1662, 0.06088,
    0.3249, 0.7691, 1.262, 3.421, 0.007012, 0.02501, 0.031, 0.01171, 0.0203, 0.003784,
    2.814, 3.257, 4.641, 6.617, 0.1241, 0.2194, 0.2284, 0.1068, 0.2536, 0.08047,
), dtype=np.float32)
BREAST_CANCER_LOG_STD = np.array((
    0.222, 0.2092, 0.2481, 0.4819, 0.01278, 0.04661, 0.07005, 0.03624, 0.02302, 0.006609,
    0.1662, 0.2265, 0.3955, 0.7053, 0.002969, 0.01717, 0.02745, 0.006067, 0.008023, 0.00262,
    0.2602, 0.2309, 0.2879, 0.5537, 0.02007, 0.1173, 0.1544, 0.05826, 0.04656, 0.01643,
), dtype=np.float32)


def preprocess(dataset: str, x: np.ndarray) -> np.ndarray:
    """Fixed, stateless feature transform of a dataset, the same on every node.

    digits: ``x / 16`` (pixel intensities to [0, 1]).
    breast-cancer: ``(log1p(x) - m) / s`` with the fixed per-feature constants
    above (features are non-negative and span four orders of magnitude).
    Anything else: unchanged.
    Stateless on purpose: per-node standardisation would give every hospital a
    different input space, and statistics of the federation's own data would
    have to be shared between hospitals.
    """
    x = np.asarray(x, dtype=np.float32)
    if dataset == "digits":
        return x / np.float32(16.0)
    if dataset == "breast-cancer":
        if (x < 0).any():
            raise ValueError("breast-cancer features must be >= 0 (raw values expected)")
        return (np.log1p(x) - BREAST_CANCER_LOG_MEAN) / BREAST_CANCER_LOG_STD
    return x
