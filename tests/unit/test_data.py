"""Partitioning, the held-out split, and hospital data files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedapp.config import NodeConfig, RunConfig
from fedapp.data import DATASET_SPECS, preprocess
from fedapp.data.__main__ import main as data_cli
from fedapp.data.builtin import load_raw, train_test_indices
from fedapp.data.loading import load_node_data, load_server_test
from fedapp.data.local import DataFileError, load_table
from fedapp.data.partition import partition_rows
from fedapp.data.specs import BREAST_CANCER_FEATURES


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "shard"])
def test_partitions_are_disjoint_cover_train_and_reproducible(partitioner: str) -> None:
    _, y, _ = load_raw("digits")
    train, test = train_test_indices("digits", 0.2, 42)
    labels = tuple(y[train].tolist())
    parts = [partition_rows(labels, partitioner, 8, i, 0.5, 2, 7) for i in range(8)]
    rows = np.concatenate(parts)
    assert len(rows) == len(set(rows.tolist())), "a row is in two partitions"
    if partitioner != "shard":  # shard may drop an incomplete last shard by design
        assert sorted(rows.tolist()) == list(range(len(train)))
    assert all(len(p) > 0 for p in parts)
    partition_rows.cache_clear()
    again = [partition_rows(labels, partitioner, 8, i, 0.5, 2, 7) for i in range(8)]
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not set(train.tolist()) & set(test.tolist())


def test_dirichlet_is_non_iid_and_seed_matters() -> None:
    _, y, _ = load_raw("digits")
    train, _ = train_test_indices("digits", 0.2, 42)
    labels = tuple(y[train].tolist())
    a = partition_rows(labels, "dirichlet", 5, 0, 0.1, 2, 1)
    b = partition_rows(labels, "dirichlet", 5, 0, 0.1, 2, 2)
    assert not np.array_equal(a, b)
    counts = np.bincount(y[train][a], minlength=10) / len(a)
    assert counts.max() > 0.3  # alpha=0.1 concentrates a node on few classes


def test_node_data_never_contains_server_test_rows() -> None:
    cfg = RunConfig(dataset="breast-cancer")
    test = load_server_test(cfg)
    test_rows = {r.tobytes() for r in test.x}
    for pid in range(3):
        train, val = load_node_data(cfg, NodeConfig(pid, 3))
        assert train.x.dtype == np.float32 and train.y.dtype == np.int64
        assert not {r.tobytes() for r in np.concatenate([train.x, val.x])} & test_rows
        assert len(val) == round(cfg.test_fraction * (len(train) + len(val)))


def test_split_cli_writes_loadable_hospital_files(tmp_path: Path) -> None:
    assert data_cli(["split", "--dataset", "breast-cancer", "--hospitals", "3",
                     "--out", str(tmp_path), "--format", "parquet"]) == 0
    files = sorted(tmp_path.glob("hospital-*.parquet"))
    assert len(files) == 3
    total = sum(len(load_table(str(f), "label", DATASET_SPECS["breast-cancer"])) for f in files)
    train, _ = train_test_indices("breast-cancer", 0.2, 42)
    assert total == len(train)


def test_check_cli_accepts_a_good_file_and_names_the_problem_in_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _valid_frame(6)
    assert data_cli(["check", _csv(tmp_path, good, "good.csv"), "--dataset",
                     "breast-cancer"]) == 0
    assert "OK:" in capsys.readouterr().out
    renamed = good.rename(columns={"label": "diagnosis"})
    assert data_cli(["check", _csv(tmp_path, renamed, "renamed.csv")]) == 1
    assert "label" in capsys.readouterr().err
    assert data_cli(["check", _csv(tmp_path, renamed, "renamed.csv"),
                     "--label-column", "diagnosis"]) == 0
    assert data_cli(["check", _csv(tmp_path, good.drop(columns=["mean area"]))]) == 1
    assert "missing column 'mean area'" in capsys.readouterr().err


def _csv(tmp_path: Path, df: pd.DataFrame, name: str = "bad.csv") -> str:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return str(path)


def _valid_frame(rows: int = 4) -> pd.DataFrame:
    df = pd.DataFrame(np.ones((rows, 30)), columns=list(BREAST_CANCER_FEATURES))
    df["label"] = [0, 1] * (rows // 2)
    return df


def test_local_file_errors_name_file_and_column(tmp_path: Path) -> None:
    spec = DATASET_SPECS["breast-cancer"]
    with pytest.raises(DataFileError, match="does not exist"):
        load_table(str(tmp_path / "missing.csv"), "label", spec)
    path = _csv(tmp_path, _valid_frame(), "good.csv")
    with pytest.raises(DataFileError,
                       match=r"good\.csv' cannot be used: no label column 'diagnosis'"):
        load_table(path, "diagnosis", spec)
    df = _valid_frame()
    df["mean area"] = ["a", "b", "c", "d"]
    with pytest.raises(DataFileError, match=r"column 'mean area': not a number in 4 rows "
                                            r"\(first: data row 1\)"):
        load_table(_csv(tmp_path, df), "label", spec)
    df = _valid_frame().drop(columns=["mean radius"])
    with pytest.raises(DataFileError, match="missing column 'mean radius'"):
        load_table(_csv(tmp_path, df), "label", spec)
    df = _valid_frame()
    df["label"] = [0, 1, 2, 1]
    with pytest.raises(DataFileError, match=r"label column 'label': not an integer in 0..1 in "
                                            r"1 row \(data row 3\)"):
        load_table(_csv(tmp_path, df), "label", spec)
    df = _valid_frame()
    df.loc[1, "mean compactness"] = np.nan
    with pytest.raises(DataFileError, match=r"column 'mean compactness': missing in 1 row "
                                            r"\(data row 2\)"):
        load_table(_csv(tmp_path, df), "label", spec)
    ok = load_table(path, "label", spec)
    assert ok.x.shape == (4, 30)
    np.testing.assert_allclose(ok.x[0], preprocess("breast-cancer", np.ones((1, 30)))[0])


def test_breast_cancer_constants_match_the_dataset() -> None:
    x, _, _ = load_raw("breast-cancer")
    z = preprocess("breast-cancer", x)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=0.01)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=0.01)
