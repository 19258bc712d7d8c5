"""A hospital's own data file (``data-path`` in the SuperNode's node config)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedapp.data.specs import DatasetSpec, Split, preprocess

SUFFIXES = (".csv", ".parquet", ".pq")


class DataFileError(ValueError):
    """A hospital data file cannot be used; the message names the file and column."""


def load_table(path: str, label_column: str, spec: DatasetSpec) -> Split:
    """Read a CSV or Parquet file: one row per example, features + one label column.

    Every column other than ``label_column`` is a feature and must be numeric
    with no missing values; there must be ``spec.num_features`` of them, in the
    order the model expects. Labels must be integers in ``[0, spec.num_classes)``.
    Features get the dataset's fixed preprocessing (see ``preprocess``).
    """
    import pandas as pd

    file = Path(path)
    if not file.is_file():
        raise DataFileError(f"data file {str(file)!r} does not exist (node config data-path)")
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataFileError(f"data file {str(file)!r}: suffix {suffix!r} is not one of {SUFFIXES}")
    try:
        df = pd.read_csv(file) if suffix == ".csv" else pd.read_parquet(file)
    except Exception as exc:  # pandas raises many types for unreadable files
        raise DataFileError(f"data file {str(file)!r} cannot be read: {exc}") from exc
    if label_column not in df.columns:
        raise DataFileError(
            f"data file {str(file)!r} has no label column {label_column!r} "
            f"(columns: {', '.join(map(str, df.columns[:12]))}{'...' if df.shape[1] > 12 else ''})"
        )
    if len(df) == 0:
        raise DataFileError(f"data file {str(file)!r} has no rows")
    features = df.drop(columns=[label_column])
    for col in features.columns:
        if not pd.api.types.is_numeric_dtype(features[col]) or features[col].dtype == bool:
            raise DataFileError(
                f"data file {str(file)!r}: feature column {col!r} is not numeric "
                f"(dtype {features[col].dtype})"
            )
        if features[col].isna().any():
            raise DataFileError(
                f"data file {str(file)!r}: feature column {col!r} has missing values"
            )
    if features.shape[1] != spec.num_features:
        raise DataFileError(
            f"data file {str(file)!r} has {features.shape[1]} feature columns, but the "
            f"{spec.name} model expects {spec.num_features}"
        )
    labels = df[label_column]
    numeric = pd.to_numeric(labels, errors="coerce")
    bad = numeric.isna() | (numeric % 1 != 0) | (numeric < 0) | (numeric >= spec.num_classes)
    if bad.any():
        first = labels[bad].iloc[0]
        raise DataFileError(
            f"data file {str(file)!r}: label column {label_column!r} has {int(bad.sum())} "
            f"values outside the integers 0..{spec.num_classes - 1} (first: {first!r})"
        )
    x = preprocess(spec.name, features.to_numpy(dtype=np.float32))
    return Split(x, numeric.to_numpy(dtype=np.int64))
