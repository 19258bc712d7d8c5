"""``python -m fedapp.data split|schema|check``: hospital data files for a deployment.

``split`` writes per-hospital files from a built-in dataset, for demos and tests:
each hospital gets one CSV or Parquet file of raw features plus a ``label`` column,
cut from the *training* part of the dataset (the server's held-out test rows are
never written), partitioned like the simulation would (iid, dirichlet or shard).

``schema --dataset NAME`` prints the columns a hospital's file must have: each feature
column's name, its position in the model's input, its type and range, and the label
column. A file's columns are matched by name, in any order.

``check FILE --dataset NAME [--label-column COL] [--ignore-columns A,B]`` validates a
hospital's file exactly as its ClientApp will (same reader, same matching, same checks,
no cache): it prints the row count and label counts, or the error the ClientApp would
reply with, and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fedapp.data.specs import DatasetSpec


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


def _spec(dataset: str, label_column: str) -> DatasetSpec:
    """A built-in dataset's spec, or a hub dataset's (downloads its test split)."""
    from fedapp.config import HF_PREFIX
    from fedapp.data.specs import DATASET_SPECS

    if dataset in DATASET_SPECS:
        return DATASET_SPECS[dataset]
    from fedapp.data import hub

    return hub.spec(dataset.removeprefix(HF_PREFIX), label_column)


def schema(dataset: str, label_column: str) -> int:
    """Print the columns a hospital file for ``dataset`` must have."""
    from fedapp.data.schema import describe

    print(describe(_spec(dataset, label_column), label_column))
    return 0


def check(file: Path, dataset: str, label_column: str, ignore_columns: str = "") -> int:
    """Validate ``file`` with the ClientApp's own reader; 0 if it would be accepted."""
    from fedapp.config import ConfigError, NodeConfig
    from fedapp.data.local import DataFileError, load_table

    try:  # the ClientApp's own parsing of the node config's ignore-columns
        node = NodeConfig.from_flower({"data-path": str(file), "ignore-columns": ignore_columns})
    except ConfigError as exc:
        print(f"REJECTED: {exc}", file=sys.stderr)
        return 1
    spec = _spec(dataset, label_column)
    try:
        data = load_table(str(file), label_column, spec, ignore_columns=node.ignore_columns,
                          cache=False)
    except DataFileError as exc:
        print(f"REJECTED: {exc}", file=sys.stderr)
        if exc.local_detail:  # may quote the file: shown here, never sent by a node
            print(f"(on this machine only: {exc.local_detail})", file=sys.stderr)
        return 1
    counts = np.bincount(data.y, minlength=spec.num_classes).tolist()
    ignored = f", ignoring {', '.join(map(repr, node.ignore_columns))}" if node.ignore_columns \
        else ""
    print(f"OK: {file}: {len(data)} rows, {spec.num_features} features, label counts {counts} "
          f"({dataset}, label column {label_column!r}{ignored})")
    return 0


def _dataset(value: str) -> str:
    from fedapp.config import BUILTIN_DATASETS, HF_PREFIX

    if value in BUILTIN_DATASETS or (value.startswith(HF_PREFIX) and len(value) > 3):
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r} is not one of {', '.join(BUILTIN_DATASETS)} or hf:<hub name>")


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
    dataset_help = "the run config's dataset (hf:<name> downloads its test split)"
    label_help = "the node config's label-column (else the run config's)"
    d = sub.add_parser("schema", help="print the columns a hospital file must have")
    d.add_argument("--dataset", type=_dataset, default="breast-cancer", help=dataset_help)
    d.add_argument("--label-column", default="label", help=label_help)
    c = sub.add_parser("check", help="validate one hospital file as its ClientApp would")
    c.add_argument("file", type=Path)
    c.add_argument("--dataset", type=_dataset, default="breast-cancer", help=dataset_help)
    c.add_argument("--label-column", default="label", help=label_help)
    c.add_argument("--ignore-columns", default="",
                   help="the node config's ignore-columns: comma-separated names of columns "
                        "to drop (ids), e.g. patient_id,visit_date")
    args = parser.parse_args(argv)
    if args.command == "schema":
        return schema(args.dataset, args.label_column)
    if args.command == "check":
        return check(args.file, args.dataset, args.label_column, args.ignore_columns)
    if args.hospitals < 1:
        parser.error(f"--hospitals={args.hospitals} must be >= 1")
    split(args.dataset, args.hospitals, args.out, args.format, args.partitioner,
          args.dirichlet_alpha, args.shards_per_node, args.test_fraction, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
