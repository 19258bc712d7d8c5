"""Checkpoints of the server state: written atomically after every round, verified on read.

A checkpoint is one file ``round-<r>.ckpt`` in ``output-dir/run-<id>/checkpoints/``:

    fedapp-checkpoint 1\\n<sha256 of the payload, hex>\\n<payload>

where the payload is the ``RecordDict`` of ``ServerState.to_record()`` plus a
ConfigRecord ``checkpoint`` (the run config, the Flower run id, the MLflow run id),
serialized with Flower's own protobuf serde. Writing is atomic: a temporary file in the
same directory is written, flushed and fsynced, renamed over the final name, and the
directory is fsynced; only then are checkpoints beyond the newest ``keep`` deleted. On
read, a file with a wrong magic line, a digest that does not match (torn or corrupted) or a
payload that does not parse is skipped with a warning and the previous one is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from logging import WARNING
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord
from flwr.common import serde
from flwr.common.logger import log
from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto

from fedapp.server.state import ServerState

MAGIC = b"fedapp-checkpoint 1\n"
DIRECTORY = "checkpoints"
META = "checkpoint"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was asked for."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: the server state and what it was written with."""

    path: Path
    state: ServerState
    run_config: dict[str, Any]
    flwr_run_id: int
    mlflow_run_id: str


def encode(state: ServerState, run_config: dict[str, Any], flwr_run_id: int,
           mlflow_run_id: str) -> bytes:
    """The bytes of a checkpoint file (module docstring)."""
    record = state.to_record()
    record[META] = ConfigRecord({"run-config": json.dumps(run_config, sort_keys=True),
                                 "flwr-run-id": int(flwr_run_id),
                                 "mlflow-run-id": mlflow_run_id or ""})
    payload = serde.recorddict_to_proto(record).SerializeToString()
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def decode(data: bytes, path: Path) -> Checkpoint:
    """Inverse of ``encode``; raises ``CheckpointError`` naming what is wrong."""
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a fedapp checkpoint (bad magic line)")
    digest, _, payload = data[len(MAGIC):].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"{path}: digest mismatch (torn or corrupted file)")
    try:
        proto = RecordDictProto()
        proto.ParseFromString(payload)
        record = serde.recorddict_from_proto(proto)
        meta = record.config_records[META]
        return Checkpoint(path, ServerState.from_record(record),
                          json.loads(str(meta["run-config"])), int(meta["flwr-run-id"]),
                          str(meta["mlflow-run-id"]))
    except (KeyError, ValueError, TypeError) as exc:  # protobuf DecodeError is a ValueError
        raise CheckpointError(f"{path}: unreadable payload ({type(exc).__name__}: {exc})") \
            from exc


def write(directory: Path, server_round: int, data: bytes, keep: int) -> Path:
    """Write one checkpoint atomically, then keep only the newest ``keep`` (>= 1)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"round-{server_round:06d}.ckpt"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".ckpt")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    for old in sorted(directory.glob("round-*.ckpt"))[:-max(keep, 1)]:
        old.unlink(missing_ok=True)
    return final


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read(path: Path) -> Checkpoint:
    """The checkpoint at ``path`` (a file), verified."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    return decode(data, path)


def newest(directory: Path) -> Checkpoint | None:
    """The newest valid checkpoint in ``directory``; invalid ones are skipped with a
    warning naming them; None when there is none."""
    for path in sorted(directory.glob("round-*.ckpt"), reverse=True):
        try:
            return read(path)
        except CheckpointError as exc:
            log(WARNING, "[fedapp] skipping a checkpoint: %s; using the previous one", exc)
    return None

