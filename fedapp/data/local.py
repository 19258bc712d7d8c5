"""A hospital's own data file (``data-path`` in the SuperNode's node config).

In deployment every message runs in a fresh ClientApp process, so the file would be
parsed (and pandas imported) once per message. ``load_table`` therefore keeps the
validated table in a cache: one ``.npz`` file per data file, holding the raw float32
features (already in the model's column order) and int64 labels plus a JSON header
naming the source file's path, size, mtime and inode, the label column, the ignored
columns, the dataset's shape and column rules, and a digest of the arrays.
A later call that finds a cache entry whose header matches the file as it is now
loads it with numpy alone; anything else (file changed, other label column, ignored
columns or dataset, unreadable, truncated or tampered entry) is a miss: the file is parsed and
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
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedapp.data.schema import validate
from fedapp.data.specs import DatasetSpec, Split, preprocess

SUFFIXES = (".csv", ".parquet", ".pq")
CACHE_ENV = "FEDAPP_DATA_CACHE"
CACHE_OFF = ("off", "0", "false", "no", "none")
CACHE_FORMAT = 2  # bump when the entry layout or the validation rules change
# A file modified less than this long ago is not cached: file systems stamp mtimes with
# a coarse clock (a few ms), so a same-size rewrite right after a read could otherwise
# go unnoticed (git's "racy clean" problem). Stable files are cached on the next read.
STABLE_AFTER_S = 2.0


class DataFileError(ValueError):
    """A hospital data file cannot be used.

    The message names the file, the columns and row numbers, never a value from a row,
    and its first line says everything (a node's error reply carries only that line):
    the later lines are hints for the hospital. ``local_detail`` holds what may quote
    the file (the reader library's own message, the file's column names): for the
    hospital's eyes only (``python -m fedapp.data check`` prints it), never part of the
    message, and the reader's exception is not chained as the cause.
    """

    def __init__(self, message: str, local_detail: str | None = None) -> None:
        super().__init__(message)
        self.local_detail = local_detail


def load_table(path: str, label_column: str, spec: DatasetSpec, *,
               ignore_columns: Sequence[str] = (), cache: bool = True) -> Split:
    """Read a CSV or Parquet file: one row per example, features + one label column.

    The columns are matched to ``spec.feature_names`` by name, in any order, and the
    features are returned in the model's order (``fedapp.data.schema``); columns named in
    ``ignore_columns`` are dropped, any other column is an error. Features must be numbers
    of the spec's kind and range with no missing values; labels integers in
    ``[0, spec.num_classes)``. Every problem is reported at once, in one
    ``DataFileError``. Features get the dataset's fixed preprocessing (``preprocess``).
    With ``cache`` (and ``FEDAPP_DATA_CACHE`` not ``off``) a validated table is
    reused from the cache while the file is unchanged (see the module docstring).
    """
    file, ignore = Path(path), tuple(ignore_columns)
    if not file.is_file():
        raise DataFileError(f"data file {str(file)!r} does not exist (node config data-path)")
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataFileError(f"data file {str(file)!r}: suffix {suffix!r} is not one of {SUFFIXES}")
    entry = cache_path(file, label_column, spec, ignore) if cache else None
    header = _source_header(file, label_column, spec, ignore) if entry else None
    raw = _read_entry(entry, header, spec) if entry and header else None
    if raw is None:
        raw = _parse(file, suffix, label_column, spec, ignore)
        if entry and header and _cacheable(header, file, label_column, spec, ignore):
            _write_entry(entry, header, *raw)
    x, y = raw
    return Split(preprocess(spec.name, x), y)


def _read_frame(file: Path, suffix: str) -> Any:
    """The file as a DataFrame; a ``DataFileError`` whose message quotes nothing from the
    file if the reader fails (pandas' and pyarrow's messages may quote a line)."""
    import pandas as pd

    try:
        return pd.read_csv(file) if suffix == ".csv" else pd.read_parquet(file)
    except Exception as exc:  # pandas raises many types for unreadable files
        what = type(exc).__name__
        if isinstance(exc, pd.errors.EmptyDataError):
            what = "it is empty"
        elif isinstance(exc, UnicodeDecodeError):
            what = "it is not UTF-8 text"
        elif isinstance(exc, pd.errors.ParserError) and (
                line := re.search(r"\bline (\d+)", str(exc))):
            what += f" at line {line.group(1)}"
        detail = f"{type(exc).__name__}: {str(exc).strip()}"
    raise DataFileError(f"data file {str(file)!r} cannot be read: {what}", detail)


def _parse(file: Path, suffix: str, label_column: str, spec: DatasetSpec,
           ignore: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate the file: raw float32 features (model order), int64 labels."""
    frame = _read_frame(file, suffix)
    x, y, problems = validate(frame, spec, label_column, ignore)
    if problems:
        # When no name matched, the message does not repeat the file's column names (without
        # a header row they are the first row's values): the hospital sees them locally.
        names = [str(c) for c in frame.columns]
        listed = ", ".join(map(repr, names[:40])) + (", ..." if len(names) > 40 else "")
        unmatched = spec.feature_names is not None and not set(names) & set(spec.feature_names)
        raise DataFileError(
            f"data file {str(file)!r} cannot be used: {'; '.join(problems)}\n"
            f"The expected columns: python -m fedapp.data schema --dataset {spec.name}. "
            "Data rows are counted from 1, after the header row.",
            local_detail=f"the file's {len(names)} columns: {listed}" if unmatched else None)
    # validate's arrays are fresh and writable (torch.from_numpy warns about read-only ones).
    return x, y


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


def cache_path(file: Path, label_column: str, spec: DatasetSpec,
               ignore_columns: Sequence[str] = ()) -> Path | None:
    """Where the cache entry of ``file`` (read with this label column, dataset and
    ignored columns) lives.

    One entry per (absolute path, label column, dataset, ignored columns): a changed file
    replaces its entry instead of adding one."""
    root = cache_dir()
    if root is None:
        return None
    ident = json.dumps([str(file.resolve()), label_column, spec.name,
                        sorted(set(ignore_columns))])
    return root / f"{hashlib.sha256(ident.encode()).hexdigest()[:32]}.npz"


def _schema_digest(spec: DatasetSpec) -> str:
    """The spec's columns and value rules: an entry made under other rules is a miss."""
    rules = [spec.feature_names, spec.feature_kind, spec.feature_min, spec.feature_max]
    return hashlib.sha256(json.dumps(rules).encode()).hexdigest()[:16]


def _source_header(file: Path, label_column: str, spec: DatasetSpec,
                   ignore: Sequence[str] = ()) -> dict[str, Any] | None:
    """What a valid entry must record about the file and its reading; None if unreadable."""
    try:
        st = file.stat()
    except OSError:
        return None
    return {
        "format": CACHE_FORMAT, "path": str(file.resolve()), "size": st.st_size,
        "mtime-ns": st.st_mtime_ns, "inode": st.st_ino, "label-column": label_column,
        "ignore-columns": sorted(set(ignore)), "dataset": spec.name,
        "num-features": spec.num_features, "num-classes": spec.num_classes,
        "schema": _schema_digest(spec),
    }


def _cacheable(header: dict[str, Any], file: Path, label_column: str, spec: DatasetSpec,
               ignore: Sequence[str] = ()) -> bool:
    """The file did not change while it was parsed and has been stable for a while."""
    stable = time.time_ns() - header["mtime-ns"] >= STABLE_AFTER_S * 1e9
    return stable and header == _source_header(file, label_column, spec, ignore)


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
