"""The cache of parsed hospital files (fedapp.data.local) and the ClientApp's lean imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedapp.config import RunConfig
from fedapp.data import DATASET_SPECS, local, preprocess
from fedapp.data.local import DataFileError, cache_path, load_table
from fedapp.data.specs import BREAST_CANCER_FEATURES

SPEC = DATASET_SPECS["breast-cancer"]
REPO = Path(__file__).parents[2]
# Libraries a hospital's ClientApp must not import when it trains from a local file.
NEVER_IMPORTED = ("sklearn", "mlflow", "hydra", "matplotlib", "opacus", "datasets",
                  "flwr_datasets", "ray", "scipy")


def write_hospital(path: Path, rows: int = 40, seed: int = 0, age_s: float = 60.0) -> pd.DataFrame:
    """A breast-cancer-shaped CSV whose mtime lies ``age_s`` in the past (a stable file)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.uniform(0.1, 50.0, (rows, SPEC.num_features)).astype(np.float32),
                      columns=list(BREAST_CANCER_FEATURES))
    df["label"] = rng.integers(0, SPEC.num_classes, rows)
    df.to_csv(path, index=False)
    set_age(path, age_s)
    return df


def set_age(path: Path, age_s: float) -> None:
    past = time.time() - age_s
    os.utime(path, (past, past))


def expected(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    x = df.drop(columns=["label"]).to_numpy(np.float32)
    return preprocess(SPEC.name, x), df["label"].to_numpy(np.int64)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv(local.CACHE_ENV, str(directory))
    return directory


def without_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import pandas`` fail, so a load that parses the file raises."""
    monkeypatch.setitem(sys.modules, "pandas", None)


def test_second_load_comes_from_the_cache_without_pandas(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    df = write_hospital(tmp_path / "h.csv")
    first = load_table(str(tmp_path / "h.csv"), "label", SPEC)
    entry = cache_path(tmp_path / "h.csv", "label", SPEC)
    assert entry is not None and entry.is_file() and entry.parent == cache
    x, y = expected(df)
    without_pandas(monkeypatch)
    second = load_table(str(tmp_path / "h.csv"), "label", SPEC)
    for split in (first, second):
        np.testing.assert_allclose(split.x, x, rtol=1e-6)
        assert np.array_equal(split.y, y) and split.x.dtype == np.float32
    assert np.array_equal(first.x, second.x)
    for split in (first, second):  # torch.from_numpy warns about read-only arrays
        assert split.x.flags.writeable and split.y.flags.writeable


def test_changed_file_invalidates_the_entry(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "h.csv"
    write_hospital(path, rows=40, seed=0)
    load_table(str(path), "label", SPEC)
    changed = write_hospital(path, rows=40, seed=1, age_s=30.0)  # new content, new mtime
    split = load_table(str(path), "label", SPEC)
    x, y = expected(changed)
    np.testing.assert_allclose(split.x, x, rtol=1e-6)
    assert np.array_equal(split.y, y)


def test_replaced_file_with_same_size_and_mtime_is_reparsed(tmp_path: Path, cache: Path) -> None:
    """A file replaced by rename (new inode) is noticed even with equal size and mtime."""
    path = tmp_path / "h.csv"
    write_hospital(path, seed=0)
    load_table(str(path), "label", SPEC)
    stat = path.stat()
    df = pd.read_csv(path)
    df["label"] = 1 - df["label"]  # same bytes per row: same size
    df.to_csv(tmp_path / "new.csv", index=False)
    os.replace(tmp_path / "new.csv", path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    split = load_table(str(path), "label", SPEC)
    assert np.array_equal(split.y, df["label"].to_numpy())


@pytest.mark.parametrize("damage", ["garbage", "truncated", "tampered-array", "other-header"])
def test_damaged_entry_is_never_trusted(
    tmp_path: Path, cache: Path, damage: str
) -> None:
    path = tmp_path / "h.csv"
    df = write_hospital(path)
    load_table(str(path), "label", SPEC)
    entry = cache_path(path, "label", SPEC)
    assert entry is not None
    if damage == "garbage":
        entry.write_bytes(b"not a zip file")
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    else:
        with np.load(entry) as npz:
            x, y, meta = npz["x"].copy(), npz["y"].copy(), json.loads(str(npz["meta"][()]))
        if damage == "tampered-array":
            x[0, 0] += 1000.0  # a valid zip whose arrays no longer match the digest
        else:
            meta["source"]["size"] += 1
        np.savez(entry, x=x, y=y, meta=np.array(json.dumps(meta)))
    split = load_table(str(path), "label", SPEC)
    x_ok, y_ok = expected(df)
    np.testing.assert_allclose(split.x, x_ok, rtol=1e-6)
    assert np.array_equal(split.y, y_ok)
    # ... and the entry was rewritten with the good data.
    with np.load(entry) as npz:
        np.testing.assert_array_equal(npz["x"], df.drop(columns=["label"]).to_numpy(np.float32))


def test_recently_modified_file_is_not_cached(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "h.csv"
    write_hospital(path, age_s=0.0)
    load_table(str(path), "label", SPEC)
    entry = cache_path(path, "label", SPEC)
    assert entry is not None and not entry.exists()


def test_cache_off_and_unwritable_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "h.csv"
    df = write_hospital(path)
    monkeypatch.setenv(local.CACHE_ENV, "off")
    assert cache_path(path, "label", SPEC) is None
    load_table(str(path), "label", SPEC)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv(local.CACHE_ENV, str(blocker / "cache"))
    split = load_table(str(path), "label", SPEC)  # cannot cache: still loads
    assert np.array_equal(split.y, df["label"].to_numpy())
    assert list(tmp_path.glob("**/*.npz")) == []


def test_label_column_and_dataset_key_the_entry(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "h.csv"
    write_hospital(path)
    load_table(str(path), "label", SPEC)
    with pytest.raises(DataFileError, match="no label column 'diagnosis'"):
        load_table(str(path), "diagnosis", SPEC)
    with pytest.raises(DataFileError, match="none of its 30 other columns has a digits "
                                            "feature name"):
        load_table(str(path), "label", DATASET_SPECS["digits"])


def test_bad_file_is_refused_every_time_and_never_cached(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "bad.csv"
    df = write_hospital(path)
    df.drop(columns=["mean area"]).to_csv(path, index=False)
    set_age(path, 60.0)
    for _ in range(2):
        with pytest.raises(DataFileError, match=r"bad\.csv.* missing column 'mean area'"):
            load_table(str(path), "label", SPEC)
    assert not cache.exists() or list(cache.iterdir()) == []


def train_message(data_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Message, Context]:
    """A TRAIN message as flwr-clientapp would hand it to the app (task identity set)."""
    from fedapp import task

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    cfg = RunConfig(dataset="breast-cancer", tracking=False, local_epochs=1)
    model = task.build_model(cfg.model, SPEC, cfg.hidden_units)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "config": ConfigRecord({"server-round": 1})})
    msg = Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)
    ctx = Context(run_id=1, node_id=1, node_config={"data-path": str(data_path)},
                  state=RecordDict(), run_config=cfg.to_flower())
    return msg, ctx


def test_train_handler_with_a_bad_file_replies_with_a_data_error(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ClientApp answers a ``DataFileError`` with an error reply carrying the first line
    of its message (the deployment test shows the SuperNode survives it and the server
    counts it)."""
    from fedapp.client_app import app
    from fedapp.node_errors import DATA_ERROR

    path = tmp_path / "bad.csv"
    write_hospital(path).drop(columns=["mean concave points"]).to_csv(path, index=False)
    msg, ctx = train_message(path, monkeypatch)
    reply = app(msg, ctx)
    assert reply.has_error() and reply.error.code == DATA_ERROR
    assert "bad.csv' cannot be used: missing column 'mean concave points'" in reply.error.reason
    good = tmp_path / "good.csv"
    write_hospital(good)
    msg, ctx = train_message(good, monkeypatch)
    reply = app(msg, ctx)
    assert not reply.has_error() and reply.content["metrics"]["num-examples"] > 0


IMPORT_PROBE = """
import json, sys
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
import fedapp.client_app as client_app
from fedapp import task
from fedapp.config import RunConfig
from fedapp.data import DATASET_SPECS

TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1  # as flwr-clientapp
cfg = RunConfig(dataset="breast-cancer", local_epochs=1)
model = task.build_model(cfg.model, DATASET_SPECS["breast-cancer"], cfg.hidden_units)
msg = Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                  "config": ConfigRecord({"server-round": 1})}),
              dst_node_id=1, message_type=MessageType.TRAIN)
ctx = Context(run_id=1, node_id=1, node_config={"data-path": sys.argv[1]},
              state=RecordDict(), run_config=cfg.to_flower())
reply = client_app.app(msg, ctx)
assert not reply.has_error(), reply.error
rows = int(reply.content["metrics"]["num-examples"])
print(json.dumps({"rows": rows, "modules": sorted(sys.modules)}))
"""


def probe_imports(path: Path, cache: Path) -> tuple[int, set[str]]:
    env = dict(os.environ, FEDAPP_DATA_CACHE=str(cache), PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", IMPORT_PROBE, str(path)], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return out["rows"], {m.split(".")[0] for m in out["modules"]}


def test_fresh_client_process_imports_no_heavy_library(tmp_path: Path) -> None:
    """In a fresh process, as in deployment: a TRAIN message through the ClientApp on a
    hospital file imports none of the heavy libraries, and pandas only until the file
    is cached."""
    path = tmp_path / "h.csv"
    write_hospital(path, rows=25)
    train_rows = 25 - round(0.2 * 25)  # test-fraction 0.2 held out for evaluation
    rows, cold = probe_imports(path, tmp_path / "cache")
    assert rows == train_rows
    assert "pandas" in cold and "torch" in cold
    assert not cold & set(NEVER_IMPORTED), sorted(cold & set(NEVER_IMPORTED))
    rows, warm = probe_imports(path, tmp_path / "cache")
    assert rows == train_rows
    assert not warm & {"pandas", "pyarrow", *NEVER_IMPORTED}, sorted(
        warm & {"pandas", "pyarrow", *NEVER_IMPORTED})
