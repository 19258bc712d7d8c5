"""The columns a hospital's file must have, matched by name, and the checks of its values.

A file is matched to its dataset's spec by column name (``DatasetSpec.feature_names``):
the columns may come in any order, the features are taken in the model's order, and a
file is refused with one list of problems that names every missing and every unexpected
column. Columns named in the node config's ``ignore-columns`` (ids such as
``patient_id``) are dropped unread. A dataset whose spec names no columns (a hub dataset
with an image or array column) can only be matched by position: every column other than
the label column and the ignored ones is a feature, in the file's order.

No problem text ever holds a value from a row. A node's error reply, and the server's
log with it, carry only the file, the column, how many rows and the first row's number
(``data row N``, counted from 1 after the header). A file without a header row would
turn its first row into column names, so when no column name at all is an expected
one the file's column names are not repeated either.

``python -m fedapp.data schema`` prints ``describe``; ``check`` and the ClientApp both
go through ``fedapp.data.local.load_table``, which calls ``validate``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedapp.data.specs import DatasetSpec

MAX_COLUMN_PROBLEMS = 6  # columns with bad values named one by one; the rest are counted
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _columns(what: str, names: Sequence[str]) -> str:
    """``missing column 'a'`` or ``missing 2 columns 'a', 'b'``."""
    counted = "column" if len(names) == 1 else f"{len(names)} columns"
    return f"{what} {counted} {_names(names)}"


def match_columns(columns: Sequence[str], spec: DatasetSpec, label_column: str,
                  ignore: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """The file's feature columns in the model's order, and the problems of the match.

    ``columns`` are the file's column names. The features are complete only when there
    are no problems; with problems they are the expected columns the file does have.
    """
    problems = []
    dupes = sorted(c for c, n in Counter(columns).items() if n > 1)
    if dupes:
        problems.append(f"duplicate column names {_names(dupes)}")
    needed = {label_column, *(spec.feature_names or ())}
    if clash := [c for c in ignore if c in needed]:
        problems.append(f"ignore-columns names {_names(clash)}, which the model needs")
    if label_column not in columns:
        problems.append(f"no label column {label_column!r} (node config label-column "
                        "names another)")
    dropped = {label_column, *ignore}
    rest = [c for c in dict.fromkeys(columns) if c not in dropped]
    if spec.feature_names is None:
        if len(rest) != spec.num_features:
            problems.append(
                f"{len(rest)} feature columns, but the {spec.name} model expects "
                f"{spec.num_features} (this dataset names no columns, so they are matched by "
                "position: every column other than the label column and ignore-columns)")
        return rest, problems
    expected = spec.feature_names
    present = set(rest)
    features = [c for c in expected if c in present]
    if not features and rest:
        # Likely no header row: the "names" would be the first row's values.
        problems.append(f"none of its {len(rest)} other columns has a {spec.name} feature "
                        "name (no header row, or other names?)")
        return features, problems
    if missing := [c for c in expected if c not in present]:
        problems.append(_columns("missing", missing))
    if unexpected := [c for c in rest if c not in set(expected)]:
        problems.append(_columns("unexpected", unexpected)
                        + " (node config ignore-columns drops id columns)")
    return features, problems


def _rows(bad: np.ndarray) -> str:
    """``3 rows (first: data row 12)``: a count and a row number, never a value."""
    n, first = int(bad.sum()), int(np.flatnonzero(bad)[0]) + 1
    return f"1 row (data row {first})" if n == 1 else f"{n} rows (first: data row {first})"


def _numbers(series: Any) -> tuple[np.ndarray | None, np.ndarray]:
    """float64 values of a column (NaN where missing or not a number) and the mask of cells
    that hold something other than a number; None if the column's type is not numeric."""
    import pandas as pd

    dtype = series.dtype
    present = series.notna().to_numpy()
    if pd.api.types.is_bool_dtype(dtype):
        return None, present
    if pd.api.types.is_numeric_dtype(dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    elif pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        values = pd.to_numeric(series, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    else:  # dates, categories, ...
        return None, present
    return values, np.isnan(values) & present


def feature_problems(values: np.ndarray, not_number: np.ndarray, spec: DatasetSpec) -> str:
    """What is wrong with one feature column's values, '' if nothing."""
    finite = np.isfinite(values) & (np.abs(values) <= FLOAT32_MAX)
    checks = [("not a number", not_number),
              ("missing", np.isnan(values) & ~not_number),
              ("not a finite float32", ~np.isnan(values) & ~finite)]
    lo, hi = spec.feature_min, spec.feature_max
    if lo is not None:
        checks.append(("negative" if lo == 0 else f"below {lo:g}", finite & (values < lo)))
    if hi is not None:
        checks.append((f"above {hi:g}", finite & (values > hi)))
    if spec.feature_kind == "integer":
        checks.append(("not an integer", finite & (np.mod(values, 1) != 0)))
    return ", ".join(f"{what} in {_rows(bad)}" for what, bad in checks if bad.any())


def label_values(series: Any, num_classes: int) -> tuple[np.ndarray, str]:
    """int64 labels, and what is wrong with them ('' if nothing)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series.dtype):
        series = series.astype("Int64")
    values, _ = _numbers(series)
    if values is None:
        return np.zeros(len(series), np.int64), f"type {series.dtype}, not integers"
    with np.errstate(invalid="ignore"):
        bad = ~((values >= 0) & (values < num_classes) & (np.mod(values, 1) == 0))
    if bad.any():
        return np.zeros(len(series), np.int64), (
            f"not an integer in 0..{num_classes - 1} in {_rows(bad)}")
    return values.astype(np.int64), ""


def validate(frame: Any, spec: DatasetSpec, label_column: str,
             ignore: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Match ``frame``'s columns (a pandas DataFrame) and check its values.

    Returns raw float32 features in the model's order, int64 labels, and every problem
    found (the arrays are only meaningful when there are none)."""
    frame.columns = [str(c) for c in frame.columns]
    features, problems = match_columns(list(frame.columns), spec, label_column, ignore)
    empty = (np.zeros((0, spec.num_features), np.float32), np.zeros(0, np.int64))
    if len(frame) == 0:
        return *empty, [*problems, "no data rows"]
    if frame.columns.duplicated().any():  # frame[name] would be a frame: stop at the names
        return *empty, problems
    bad_columns, columns = [], []
    for name in features:
        values, not_number = _numbers(frame[name])
        if values is None:
            bad_columns.append(f"column {name!r}: type {frame[name].dtype}, not numbers")
        elif found := feature_problems(values, not_number, spec):
            bad_columns.append(f"column {name!r}: {found}")
        columns.append(values)
    if len(bad_columns) > MAX_COLUMN_PROBLEMS:
        more = len(bad_columns) - MAX_COLUMN_PROBLEMS + 1
        bad_columns[MAX_COLUMN_PROBLEMS - 1:] = [f"and {more} more columns with bad values"]
    problems += bad_columns
    if label_column in frame.columns:
        y, found = label_values(frame[label_column], spec.num_classes)
        if found:
            problems.append(f"label column {label_column!r}: {found}")
    if problems:
        return *empty, problems
    return np.stack(columns, axis=1).astype(np.float32), y, problems

def feature_rule(spec: DatasetSpec) -> str:
    """``number >= 0``, ``integer 0..16``: the type and range every feature must have."""
    lo, hi = spec.feature_min, spec.feature_max
    if lo is not None and hi is not None:
        return f"{spec.feature_kind} {lo:g}..{hi:g}"
    if lo is not None:
        return f"{spec.feature_kind} >= {lo:g}"
    return f"{spec.feature_kind} <= {hi:g}" if hi is not None else spec.feature_kind


def describe(spec: DatasetSpec, label_column: str = "label") -> str:
    """The expected columns of a hospital file for ``spec``, as ``schema`` prints them."""
    rule = feature_rule(spec)
    label = (f"label column {label_column!r}: integer 0..{spec.num_classes - 1} "
             "(node config label-column, else the run config's)")
    ignore = ["Any other column is refused unless the node config's ignore-columns names it,",
              "e.g. ignore-columns='patient_id,visit_date'."]
    if spec.feature_names is None:
        return "\n".join([
            f"{spec.name}: {spec.num_features} feature columns, each a {rule}, with no names:",
            "they are matched by position (every column other than the label column and",
            "ignore-columns is a feature, in the file's order).", label, *ignore])
    width = max(len(n) for n in spec.feature_names) + 2
    lines = [f"{spec.name}: {spec.num_features} feature columns and a label column, matched by",
             "name (in any order in the file); the model takes the features in this order:",
             f"{'position':>8}  {'column':<{width}}type"]
    lines += [f"{i:>8}  {name:<{width}}{rule}" for i, name in enumerate(spec.feature_names)]
    return "\n".join([*lines, label, *ignore])
