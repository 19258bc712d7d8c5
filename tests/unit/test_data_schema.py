"""Hospital files matched by column name (fedapp.data.schema), ``ignore-columns``, the
``schema`` command, and errors that never carry a value from a row."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedapp.config import ConfigError, NodeConfig, RunConfig
from fedapp.data import DATASET_SPECS, DatasetSpec, local
from fedapp.data.__main__ import main as data_cli
from fedapp.data.builtin import load_raw
from fedapp.data.loading import load_node_data
from fedapp.data.local import DataFileError, cache_path, load_table
from fedapp.data.schema import feature_problems
from fedapp.data.specs import BREAST_CANCER_FEATURES, DIGITS_FEATURES

SPEC = DATASET_SPECS["breast-cancer"]
NAMES = list(BREAST_CANCER_FEATURES)
# Identifiable strings a hospital's export may hold; none may appear in an error.
MRN, NAME = "MRN-004512 Jane Doe", "Jane Doe"


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """hospital-0 as ``python -m fedapp.data split`` writes it (real breast-cancer rows)."""
    out = tmp_path_factory.mktemp("split")
    assert data_cli(["split", "--dataset", "breast-cancer", "--hospitals", "3",
                     "--out", str(out)]) == 0
    return pd.read_csv(out / "hospital-0.csv")


def write(df: pd.DataFrame, path: Path) -> str:
    df.to_csv(path, index=False) if path.suffix == ".csv" else df.to_parquet(path, index=False)
    return str(path)


def refusal(path: str, spec: DatasetSpec = SPEC, **kwargs: object) -> str:
    with pytest.raises(DataFileError) as info:
        load_table(path, "label", spec, cache=False, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_feature_names_are_scikit_learns_and_split_writes_them(hospital: pd.DataFrame) -> None:
    from sklearn.datasets import load_breast_cancer, load_digits

    assert list(load_breast_cancer().feature_names) == NAMES
    assert list(load_digits().feature_names) == list(DIGITS_FEATURES)
    assert list(hospital.columns) == [*NAMES, "label"]
    for name, spec in DATASET_SPECS.items():  # the public data obeys each spec's rules
        x, _, names = load_raw(name)
        assert tuple(names) == spec.feature_names
        assert all(feature_problems(col.astype(np.float64), np.zeros(len(col), bool), spec) == ""
                   for col in x.T)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_reordered_columns_give_the_same_arrays(tmp_path: Path, hospital: pd.DataFrame,
                                                suffix: str) -> None:
    """The old reader took columns by position: this file trained a model on scrambled
    features (0.30 accuracy instead of 0.99) after `check` said OK."""
    right = load_table(write(hospital, tmp_path / f"right{suffix}"), "label", SPEC, cache=False)
    rng = np.random.default_rng(3)
    shuffled = hospital[list(rng.permutation(hospital.columns))]
    assert list(shuffled.columns) != list(hospital.columns)
    other = load_table(write(shuffled, tmp_path / f"shuffled{suffix}"), "label", SPEC,
                       cache=False)
    assert np.array_equal(right.x, other.x) and np.array_equal(right.y, other.y)


def test_cache_holds_the_reordered_arrays_keyed_by_ignored_columns(
        tmp_path: Path, hospital: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(local.CACHE_ENV, str(tmp_path / "cache"))
    right = load_table(write(hospital, tmp_path / "right.csv"), "label", SPEC, cache=False)
    shuffled = hospital[hospital.columns[::-1]].assign(patient_id=range(len(hospital)))
    path = tmp_path / "shuffled.csv"
    write(shuffled, path)
    _age(path)  # the cache keeps files left unmodified for a while
    first = load_table(str(path), "label", SPEC, ignore_columns=["patient_id"])
    entry = cache_path(path, "label", SPEC, ["patient_id"])
    assert entry is not None and entry.is_file()
    assert entry != cache_path(path, "label", SPEC)
    with np.load(entry) as npz:
        assert np.array_equal(npz["x"], hospital[NAMES].to_numpy(np.float32))
    monkeypatch.setitem(sys.modules, "pandas", None)  # a hit needs no pandas
    second = load_table(str(path), "label", SPEC, ignore_columns=["patient_id"])
    for split in (first, second):
        assert np.array_equal(split.x, right.x) and np.array_equal(split.y, right.y)
    with pytest.raises(ImportError):  # other ignored columns: another entry, parsed anew
        load_table(str(path), "label", SPEC)


def _age(path: Path) -> None:
    past = time.time() - 60
    os.utime(path, (past, past))


def test_missing_and_unexpected_columns_are_all_named_in_the_first_line(
        tmp_path: Path, hospital: pd.DataFrame) -> None:
    """Two columns swapped for two others kept the old count check at 30 and passed."""
    df = hospital.drop(columns=["mean area", "worst symmetry"])
    df.insert(3, "area", 1.0)
    df["symmetry"] = 1.0
    first = refusal(write(df, tmp_path / "h.csv")).splitlines()[0]
    assert "h.csv' cannot be used" in first
    assert "missing 2 columns 'mean area', 'worst symmetry'" in first
    assert "unexpected 2 columns 'area', 'symmetry'" in first


def test_ignore_columns_drop_id_columns(tmp_path: Path, hospital: pd.DataFrame) -> None:
    clean = load_table(write(hospital, tmp_path / "clean.csv"), "label", SPEC, cache=False)
    ids = hospital.assign(patient_id=[f"P{i}" for i in range(len(hospital))], visit="2024")
    ids = ids[["patient_id", *reversed(hospital.columns), "visit"]]
    path = write(ids, tmp_path / "ids.csv")
    first = refusal(path).splitlines()[0]
    assert "unexpected 2 columns 'patient_id', 'visit'" in first and "ignore-columns" in first
    node = NodeConfig.from_flower({"data-path": path, "ignore-columns": " patient_id, visit,"})
    assert node.ignore_columns == ("patient_id", "visit")
    got = load_table(path, "label", SPEC, ignore_columns=node.ignore_columns, cache=False)
    assert np.array_equal(got.x, clean.x) and np.array_equal(got.y, clean.y)
    train, val = load_node_data(RunConfig(dataset="breast-cancer"), node)  # the ClientApp's path
    assert len(train) + len(val) == len(hospital)
    assert "'mean radius', which the model needs" in refusal(
        path, ignore_columns=("patient_id", "visit", "mean radius"))
    with pytest.raises(ConfigError, match="ignore-columns"):
        NodeConfig.from_flower({"data-path": path, "ignore-columns": 3})
    assert NodeConfig.from_flower({"data-path": path}).ignore_columns == ()


def _cases(hospital: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, list[str]]]:
    """Files holding identifiable strings, and what their error must say instead."""
    feature = hospital.astype({"mean radius": object})
    feature.loc[4, "mean radius"] = MRN
    label = hospital.astype({"label": object})
    label.loc[6, "label"] = NAME
    both = feature.astype({"label": object}).drop(columns=["mean area"])
    both.loc[6, "label"] = NAME
    both.loc[9, "worst area"] = -1.0
    return {
        "feature": (feature, ["column 'mean radius': not a number in 1 row (data row 5)"]),
        "label": (label, ["label column 'label': not an integer in 0..1 in 1 row (data row 7)"]),
        "all": (both, ["missing column 'mean area'", "column 'mean radius': not a number",
                       "column 'worst area': negative in 1 row (data row 10)",
                       "label column 'label': not an integer in 0..1 in 1 row (data row 7)"]),
    }


@pytest.mark.parametrize("case", ["feature", "label", "all"])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_errors_name_column_and_row_never_the_value(tmp_path: Path, hospital: pd.DataFrame,
                                                    case: str, suffix: str) -> None:
    """The old label check quoted the first bad value: `(first: 'Jane Doe')`."""
    df, expected = _cases(hospital)[case]
    if suffix == ".parquet":  # a mixed column is stored as text in Parquet
        df = df.astype({c: str for c in df.columns if df[c].dtype == object})
    message = refusal(write(df, tmp_path / f"h{suffix}"))
    first = message.splitlines()[0]
    for fragment in expected:
        assert fragment in first, (fragment, first)
    assert MRN not in message and NAME not in message and "Jane" not in message


def test_unreadable_or_headerless_files_quote_nothing(tmp_path: Path,
                                                      hospital: pd.DataFrame) -> None:
    """A CSV without a header row turns its first row into column names: the old message
    listed them ('no label column ... (columns: MRN-004512 Jane Doe, 17.99, ...)')."""
    with_ids = hospital.copy()
    with_ids.insert(0, "patient", MRN)
    headerless = tmp_path / "headerless.csv"
    with_ids.to_csv(headerless, index=False, header=False)
    message = refusal(str(headerless))
    assert "no header row, or other names?" in message and MRN not in message
    assert "17.99" not in message and str(hospital.iloc[0, 0]) not in message
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(hospital.to_csv(index=False) + f"1,2,{MRN},4\n" + "1," * 40 + "1\n")
    message = refusal(str(ragged))
    assert "ragged.csv' cannot be read: ParserError at line" in message and MRN not in message
    with pytest.raises(DataFileError) as info:
        load_table(str(ragged), "label", SPEC, cache=False)
    assert info.value.local_detail and info.value.__cause__ is None  # detail stays local
    binary = tmp_path / "h.parquet"
    binary.write_bytes(MRN.encode() * 3)
    assert MRN not in refusal(str(binary))


def test_values_outside_the_specs_range_are_refused_by_row(tmp_path: Path) -> None:
    digits = DATASET_SPECS["digits"]
    df = pd.DataFrame(np.ones((5, 64)), columns=list(DIGITS_FEATURES)).assign(label=1)
    df.loc[1, "pixel_0_3"], df.loc[2, "pixel_0_3"] = 17.0, 2.5
    df.loc[3, "pixel_7_7"] = np.nan
    first = refusal(write(df, tmp_path / "d.csv"), digits).splitlines()[0]
    assert "column 'pixel_0_3': above 16 in 1 row (data row 2), not an integer in 1 row " \
           "(data row 3)" in first
    assert "column 'pixel_7_7': missing in 1 row (data row 4)" in first
    bc = pd.DataFrame(np.ones((4, 30)), columns=NAMES).assign(label=[0, 1, 0, 1])
    bc.loc[2:3, "mean texture"] = -1.0  # the old reader raised a bare ValueError here
    bc.loc[0, "worst area"] = np.inf
    first = refusal(write(bc, tmp_path / "b.csv")).splitlines()[0]
    assert "column 'mean texture': negative in 2 rows (first: data row 3)" in first
    assert "column 'worst area': not a finite float32 in 1 row (data row 1)" in first


def test_a_spec_without_names_matches_by_position_and_says_so(tmp_path: Path) -> None:
    spec = DatasetSpec("hf:some/images", 3, 2)
    df = pd.DataFrame({"image_0": [0.1, 0.2], "b": [1.0, 2.0], "label": [0, 1], "c": [3, 4]})
    got = load_table(write(df, tmp_path / "p.csv"), "label", spec, cache=False)
    assert np.array_equal(got.x, df[["image_0", "b", "c"]].to_numpy(np.float32))
    message = refusal(write(df.drop(columns=["c"]), tmp_path / "q.csv"), spec)
    assert "2 feature columns, but the hf:some/images model expects 3" in message
    assert "matched by" in message and "position" in message


def test_schema_command_lists_the_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert data_cli(["schema", "--dataset", "breast-cancer"]) == 0
    out = capsys.readouterr().out
    assert "matched by" in out and "name" in out
    assert "       0  mean radius              number >= 0" in out
    assert "      29  worst fractal dimension  number >= 0" in out
    assert "label column 'label': integer 0..1" in out and "ignore-columns" in out
    assert data_cli(["schema", "--dataset", "digits", "--label-column", "digit"]) == 0
    out = capsys.readouterr().out
    assert "      63  pixel_7_7  integer 0..16" in out and "label column 'digit'" in out


def test_check_uses_the_clientapps_reader(tmp_path: Path, hospital: pd.DataFrame,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []
    real = local.validate

    def spy(frame, spec, label_column, ignore=()):  # type: ignore[no-untyped-def]
        calls.append(tuple(ignore))
        return real(frame, spec, label_column, ignore)

    monkeypatch.setattr(local, "validate", spy)
    ids = hospital[hospital.columns[::-1]].assign(mrn=MRN)
    path = write(ids, tmp_path / "ids.csv")
    assert data_cli(["check", path]) == 1
    err = capsys.readouterr().err
    assert "unexpected column 'mrn'" in err and MRN not in err
    assert data_cli(["check", path, "--ignore-columns", "mrn"]) == 0
    assert "OK:" in capsys.readouterr().out
    node = NodeConfig.from_flower({"data-path": path, "ignore-columns": "mrn"})
    load_node_data(RunConfig(dataset="breast-cancer"), node)
    assert calls == [(), ("mrn",), ("mrn",)]


def test_hub_spec_names_scalar_columns_and_none_for_arrays(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub dataset's spec is built at load time (offline here: an in-memory dataset)."""
    import datasets

    from fedapp.data import hub

    tables = {
        "tab": {"age": [50.0, 61.0], "bmi": [22.0, 31.0], "label": [0, 1]},
        "img": {"image": [[[0, 255], [9, 3]], [[1, 2], [3, 4]]], "label": [0, 1]},
    }
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda name, split: datasets.Dataset.from_dict(tables[name]))
    tab = hub.spec("tab", "label")
    assert (tab.name, tab.feature_names, tab.num_classes) == ("hf:tab", ("age", "bmi"), 2)
    img = hub.spec("img", "label")
    assert img.feature_names is None and img.num_features == 4
