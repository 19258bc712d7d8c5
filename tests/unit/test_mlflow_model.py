"""A registered version is an MLflow Model: ``mlflow.pytorch.load_model`` of the champion
predicts what its state dict does in ``task.build_model``, its signature is the dataset's,
and it loads in a process that cannot import fedapp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from fedapp.data import DATASET_SPECS, DatasetSpec, preprocess
from fedapp.data.builtin import load_raw, load_split
from fedapp.task import build_model
from fedapp.tracking import Tracker, connect, registry
from fedapp.tracking import model as logged_model
from tests.unit.mlflow_store import fresh_store

NAME = "fedapp-flavor-test"


@pytest.fixture
def uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh store, also the process's tracking and registry URI (``models:/`` URIs)."""
    store = fresh_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", store)
    return store


def trained_like(kind: str, spec: DatasetSpec, seed: int) -> torch.nn.Module:
    """A model with seeded random weights (the flavor does not care how they were found)."""
    torch.manual_seed(seed)
    return build_model(kind, spec, 16)


def register(uri: str, model: torch.nn.Module, spec: DatasetSpec, accuracy: float) -> str:
    with Tracker.open(uri, "exp", "run", {"dataset": spec.name}) as tracker:
        result = tracker.register_model(model, spec, NAME, accuracy, {}, 0.0)
    assert result.version is not None, result.reason
    return result.version


def rows(dataset: str, n: int = 40) -> np.ndarray:
    """Real, preprocessed rows: the server's held-out split of a built-in dataset."""
    return load_split(dataset, "test", 0.2, 0).x[:n]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_champion_loads_and_predicts_as_its_state_dict(uri: str, kind: str) -> None:
    import mlflow.pytorch

    spec = DATASET_SPECS["digits"]
    register(uri, trained_like(kind, spec, 1), spec, 0.5)
    register(uri, trained_like(kind, spec, 2), spec, 0.9)  # the champion
    loaded = mlflow.pytorch.load_model(f"models:/{NAME}@champion")
    path = registry.champion_state_dict_path(uri, NAME)
    assert path is not None
    reference = build_model(kind, spec, 16)
    reference.load_state_dict(torch.load(path, weights_only=True))
    x = torch.from_numpy(rows("digits"))
    with torch.no_grad():
        expected = reference(x)
        assert torch.allclose(loaded(x), expected, rtol=1e-5, atol=1e-6)
        assert torch.allclose(loaded(x[:1]), expected[:1], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(trained_like(kind, spec, 1)(x), expected, atol=1e-3)


@pytest.mark.parametrize("dataset", ["digits", "breast-cancer"])
def test_signature_example_and_requirements_follow_the_dataset_spec(
        uri: str, tmp_path: Path, dataset: str) -> None:
    import mlflow.models

    spec = DATASET_SPECS[dataset]
    version = register(uri, trained_like("mlp", spec, 0), spec, 0.5)
    info = mlflow.models.get_model_info(f"models:/{NAME}/{version}")
    [inputs], [outputs] = info.signature.inputs.inputs, info.signature.outputs.inputs
    assert (inputs.type, inputs.shape) == (np.dtype(np.float32), (-1, spec.num_features))
    assert (outputs.type, outputs.shape) == (np.dtype(np.float32), (-1, spec.num_classes))
    assert set(info.flavors) == {"pytorch", "python_function"}
    assert info.metadata["feature_names"] == list(spec.feature_names or ())
    folder = registry.download_version(connect(uri), uri, NAME, version, tmp_path / "dl")
    example = np.array(json.loads((folder / "input_example.json").read_text()))
    raw, _, _ = load_raw(dataset)  # the first public rows, as the model takes them
    assert example.shape == (logged_model.EXAMPLE_ROWS, spec.num_features)
    assert np.allclose(example, preprocess(dataset, raw[:logged_model.EXAMPLE_ROWS]))
    serving = json.loads((folder / "serving_input_example.json").read_text())
    assert np.allclose(np.array(serving["inputs"]), example)
    lines = (folder / "requirements.txt").read_text().split()
    assert not any("+" in line for line in lines)  # never the local build (+cpu, +cu124)
    [torch_req] = [Requirement(line) for line in lines if line.startswith("torch")]
    release = Version(Version(torch.__version__).base_version)
    major, minor = release.release[:2]
    assert release in torch_req.specifier and Version(f"{major}.{minor}.99") in torch_req.specifier
    assert Version(f"{major}.{minor - 1}") not in torch_req.specifier  # older: not promised
    assert Version(f"{major + 1}.0") not in torch_req.specifier


def test_input_example_without_data_is_synthetic_within_range() -> None:
    spec = DatasetSpec("hf:someone/table", 7, 3, feature_min=1.5, feature_max=4.0)
    example = logged_model.input_example(spec)
    assert example.dtype == np.float32 and example.shape == (logged_model.EXAMPLE_ROWS, 7)
    assert (example == 1.5).all()
    digits = logged_model.input_example(DATASET_SPECS["digits"], rows=3)
    assert digits.shape == (3, 64) and digits.min() >= 0.0 and digits.max() <= 1.0
    with pytest.raises(ValueError, match="rows=1 must be >= 2"):
        logged_model.input_example(spec, rows=1)


def test_loads_in_a_process_that_cannot_import_fedapp(uri: str, tmp_path: Path) -> None:
    """The pt2 graph names no fedapp class: torch and MLflow suffice (no code_paths)."""
    spec = DATASET_SPECS["digits"]
    model = trained_like("cnn", spec, 3)
    register(uri, model, spec, 0.5)
    x = rows("digits", 8)
    script = (
        "import json, sys\n"
        "sys.modules['fedapp'] = None  # any import of fedapp raises ImportError\n"
        "import numpy, torch, mlflow.pytorch\n"
        f"m = mlflow.pytorch.load_model('models:/{NAME}@champion')\n"
        "x = torch.tensor(json.loads(sys.stdin.read()), dtype=torch.float32)\n"
        "print(json.dumps(m(x).tolist()))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(x.tolist()),
                          capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.allclose(np.array(json.loads(done.stdout.splitlines()[-1])), expected,
                       rtol=1e-5, atol=1e-6)


def test_save_restores_the_mode_and_refuses_a_model_of_other_classes(tmp_path: Path) -> None:
    spec = DATASET_SPECS["breast-cancer"]
    model = trained_like("mlp", spec, 0).train()
    folder = logged_model.save(model, spec, {"seed": 0}, tmp_path / "m")
    assert model.training  # exported in eval mode, handed back as it came
    state = torch.load(folder / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert json.loads((folder / "config.json").read_text()) == {"seed": 0}
    three = DatasetSpec("three", spec.num_features, 3)
    with pytest.raises(ValueError, match=r"to shape \(2,\), not to its 3 classes"):
        logged_model.save(model, three, {}, tmp_path / "other")
