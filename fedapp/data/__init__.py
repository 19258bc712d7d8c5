"""Datasets for fedapp: built-in offline sets, partitions, hospital files.

Lean on purpose: importing this package imports no heavy library. Each loader
imports what it needs (scikit-learn, datasets, flwr-datasets, pandas) when it is
called, so a hospital's ClientApp reading a local file never pays for the
partitioning stack.
"""

from fedapp.data.specs import DATASET_SPECS, DatasetSpec, Split, preprocess

__all__ = ["DATASET_SPECS", "DatasetSpec", "Split", "preprocess"]
