"""A hospital's own data file (``data-path`` in the SuperNode's node config).

In deployment every message runs in a fresh ClientApp process, so the file would be
parsed (and pandas imported) once per message. ``load_table`` therefore keeps the
validated table in a cache: one ``.npz`` file per data file, holding the raw float32
features and int64 labels plus a JSON header naming the source file's path, size,
mtime and inode, the label column, the dataset's shape and a digest of the arrays.
A later call that finds a cache entry whose header matches the file as it is now
loads it with numpy alone; anything else (file changed, other label column or
dataset, unreadable, truncated or tampered entry) is a miss: the file is parsed and
validated again and the entry rewritten atomically (only once the file has been left
unmodified for ``STABLE_AFTER_S``). The fixed feature transform is applied after
loading, so the cache never holds a stale preprocessing.

``FEDAPP_DATA_CACHE`` chooses the cache directory (default
``$XDG_CACHE_HOME/fedapp/data``, else ``~/.cache/fedapp/data``); ``off`` disables it.
The data file's own directory is never written to: it may be read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedapp.data.specs import DatasetSpec, Split, preprocess

SUFFIXES = (".csv", ".parquet", ".pq")
CACHE_ENV = "FEDAPP_DATA_CACHE"
CACHE_OFF = ("off", "0", "false", "no", "none")
CACHE_FORMAT = 1  # bump when the entry layout or the validation rules change
# A file modified less than this long ago is not cached: file systems stamp mtimes with
# a coarse clock (a few ms), so a same-size rewrite right after a read could otherwise
# go unnoticed (git's "racy clean" problem). Stable files are cached on the next read.
STABLE_AFTER_S = 2.0


class DataFileError(ValueError):
    """A hospital data file cannot be used; the message names the file and column."""


def load_table(path: str, label_column: str, spec: DatasetSpec, *, cache: bool = True) -> Split:
    """Read a CSV or Parquet file: one row per example, features + one label column.

    Every column other than ``label_column`` is a feature and must be numeric
    with no missing values; there must be ``spec.num_features`` of them, in the
    order the model expects. Labels must be integers in ``[0, spec.num_classes)``.
    Features get the dataset's fixed preprocessing (see ``preprocess``).
    With ``cache`` (and ``FEDAPP_DATA_CACHE`` not ``off``) a validated table is
    reused from the cache while the file is unchanged (see the module docstring).
    """
    file = Path(path)
    if not file.is_file():
        raise DataFileError(f"data file {str(file)!r} does not exist (node config data-path)")
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataFileError(f"data file {str(file)!r}: suffix {suffix!r} is not one of {SUFFIXES}")
    entry = cache_path(file, label_column, spec) if cache else None
    header = _source_header(file, label_column, spec) if entry else None
    raw = _read_entry(entry, header, spec) if entry and header else None
    if raw is None:
        raw = _parse(file, suffix, label_column, spec)
        if entry and header and _cacheable(header, file, label_column, spec):
            _write_entry(entry, header, *raw)
    x, y = raw
    return Split(preprocess(spec.name, x), y)


def _parse(file: Path, suffix: str, label_column: str,
           spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate the file: raw float32 features and int64 labels."""
    import pandas as pd

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
    # copy=True: with pandas' copy-on-write, to_numpy may return a read-only view, which
    # torch.from_numpy warns about.
    return features.to_numpy(dtype=np.float32), numeric.to_numpy(dtype=np.int64, copy=True)


# ------------------------------------------------------------------------- cache


def cache_dir() -> Path | None:
    """The cache directory, or None when ``FEDAPP_DATA_CACHE`` is ``off``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in CACHE_OFF:
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedapp" / "data"


def cache_path(file: Path, label_column: str, spec: DatasetSpec) -> Path | None:
    """Where the cache entry of ``file`` (read with this label column and dataset) lives.

    One entry per (absolute path, label column, dataset): a changed file replaces
    its entry instead of adding one."""
    root = cache_dir()
    if root is None:
        return None
    ident = json.dumps([str(file.resolve()), label_column, spec.name])
    return root / f"{hashlib.sha256(ident.encode()).hexdigest()[:32]}.npz"


def _source_header(file: Path, label_column: str, spec: DatasetSpec) -> dict[str, Any] | None:
    """What a valid entry must record about the file and its reading; None if unreadable."""
    try:
        st = file.stat()
    except OSError:
        return None
    return {
        "format": CACHE_FORMAT, "path": str(file.resolve()), "size": st.st_size,
        "mtime-ns": st.st_mtime_ns, "inode": st.st_ino, "label-column": label_column,
        "dataset": spec.name, "num-features": spec.num_features,
        "num-classes": spec.num_classes,
    }


def _cacheable(header: dict[str, Any], file: Path, label_column: str,
               spec: DatasetSpec) -> bool:
    """The file did not change while it was parsed and has been stable for a while."""
    stable = time.time_ns() - header["mtime-ns"] >= STABLE_AFTER_S * 1e9
    return stable and header == _source_header(file, label_column, spec)


def _digest(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((x.shape, y.shape)).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def _read_entry(entry: Path, header: dict[str, Any],
                spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (x, y) if the entry exists, is intact and matches ``header``; else None."""
    try:
        with np.load(entry, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"][()]))
            # Copies: arrays read from a zip member are read-only views of its bytes,
            # and callers (torch.from_numpy) expect writable arrays, as a parse gives.
            x, y = np.array(npz["x"]), np.array(npz["y"])
    except Exception:  # missing, truncated, not a zip, bad CRC, bad JSON: all a miss
        return None
    if not isinstance(meta, dict) or meta.get("source") != header:
        return None
    if (x.dtype != np.float32 or y.dtype != np.int64 or x.ndim != 2 or y.ndim != 1
            or len(x) != len(y) or len(y) == 0 or x.shape[1] != spec.num_features):
        return None
    if y.min() < 0 or y.max() >= spec.num_classes or meta.get("digest") != _digest(x, y):
        return None
    return x, y


def _write_entry(entry: Path, header: dict[str, Any], x: np.ndarray, y: np.ndarray) -> None:
    """Write the entry atomically (temp file + rename); any failure just skips caching."""
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        meta = json.dumps({"source": header, "digest": _digest(x, y)})
        with tempfile.NamedTemporaryFile(dir=entry.parent, prefix=".tmp-", suffix=".npz",
                                         delete=False) as f:
            tmp = Path(f.name)
            np.savez(f, x=x, y=y, meta=np.array(meta))
        os.replace(tmp, entry)
        tmp = None
    except OSError:
        pass  # read-only or full disk: the next call parses the file again
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
