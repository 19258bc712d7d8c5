"""``python -m fedapp.data split|check``: hospital data files for a deployment.

``split`` writes per-hospital files from a built-in dataset, for demos and tests:
each hospital gets one CSV or Parquet file of raw features plus a ``label`` column,
cut from the *training* part of the dataset (the server's held-out test rows are
never written), partitioned like the simulation would (iid, dirichlet or shard).

``check FILE --dataset NAME [--label-column COL]`` validates a hospital's file exactly
as its ClientApp will (same reader, same checks, no cache): it prints the row count
and label counts, or the error the ClientApp would reply with, and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def split(dataset: str, hospitals: int, out: Path, fmt: str, partitioner: str, alpha: float,
          shards: int, test_fraction: float, seed: int, label: str = "label") -> list[Path]:
    import pandas as pd

    from fedapp.data.builtin import load_raw, train_test_indices
    from fedapp.data.partition import partition_rows

    x, y, names = load_raw(dataset)
    train, _ = train_test_indices(dataset, test_fraction, seed)
    labels = tuple(y[train].tolist())
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for h in range(hospitals):
        rows = train[partition_rows(labels, partitioner, hospitals, h, alpha, shards, seed)]
        df = pd.DataFrame(x[rows], columns=names)
        df[label] = y[rows]
        path = out / f"hospital-{h}.{fmt}"
        df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False)
        written.append(path)
        counts = np.bincount(y[rows], minlength=int(y.max()) + 1).tolist()
        print(f"{path}: {len(rows)} rows, label counts {counts}")
    return written


def check(file: Path, dataset: str, label_column: str) -> int:
    """Validate ``file`` with the ClientApp's own reader; 0 if it would be accepted."""
    from fedapp.data.local import DataFileError, load_table
    from fedapp.data.specs import DATASET_SPECS

    spec = DATASET_SPECS[dataset]
    try:
        data = load_table(str(file), label_column, spec, cache=False)
    except DataFileError as exc:
        print(f"REJECTED: {exc}", file=sys.stderr)
        return 1
    counts = np.bincount(data.y, minlength=spec.num_classes).tolist()
    print(f"OK: {file}: {len(data)} rows, {spec.num_features} features, label counts {counts} "
          f"({dataset}, label column {label_column!r})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedapp.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("split", help="write one data file per hospital")
    p.add_argument("--dataset", choices=["digits", "breast-cancer"], default="breast-cancer")
    p.add_argument("--hospitals", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    p.add_argument("--partitioner", choices=["iid", "dirichlet", "shard"], default="iid")
    p.add_argument("--dirichlet-alpha", type=float, default=0.5)
    p.add_argument("--shards-per-node", type=int, default=2)
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="must equal the run config's test-fraction (same held-out rows)")
    p.add_argument("--seed", type=int, default=42, help="must equal the run config's seed")
    c = sub.add_parser("check", help="validate one hospital file as its ClientApp would")
    c.add_argument("file", type=Path)
    c.add_argument("--dataset", choices=["digits", "breast-cancer"], default="breast-cancer",
                   help="the run config's dataset")
    c.add_argument("--label-column", default="label",
                   help="the node config's label-column (else the run config's)")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.file, args.dataset, args.label_column)
    if args.hospitals < 1:
        parser.error(f"--hospitals={args.hospitals} must be >= 1")
    split(args.dataset, args.hospitals, args.out, args.format, args.partitioner,
          args.dirichlet_alpha, args.shards_per_node, args.test_fraction, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
