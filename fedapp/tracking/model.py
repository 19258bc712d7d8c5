"""The final model as an MLflow Model: the ``mlflow.pytorch`` flavor (and ``python_function``,
so ``mlflow models serve`` works), with a signature, an input example and pip requirements,
logged as an MLflow 3 LoggedModel of the run.

What the model takes and gives (the signature, tensor-based, no column names):

* input: float32 ``(n, num_features)``, the dataset's features in the spec's order
  (``DatasetSpec.feature_names``, also in the MLmodel's ``metadata``) *after*
  ``fedapp.data.specs.preprocess(dataset, x)`` (digits: pixel counts / 16;
  breast-cancer: standardised ``log1p``), as the ClientApp and the ServerApp feed it;
* output: float32 ``(n, num_classes)``, the logits (unnormalised class scores): softmax
  gives the probabilities, argmax the predicted label.

Serialization is ``pt2`` (``torch.export``: a graph and its tensors), not a pickled
``nn.Module`` nor TorchScript:

* MLflow 3.17 refuses to unpickle a model (a pickled module, or TorchScript, which its
  flavor also reads through ``torch.load``) unless ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``
  is set; a ``pt2`` archive is checked pickle-free and loads without it (torch >= 2.10);
* the graph does not refer to fedapp's classes: loading and serving need torch and MLflow,
  not fedapp (no ``code_paths``), so a serving host can install ``requirements.txt`` alone;
* exported from an example of several rows, the batch dimension stays dynamic (one row
  to any number; ``torch.export`` would fix a dimension it only saw at size 1).
TorchScript is deprecated since torch 2.5 (``torch.jit``'s own docstrings).

Beside the flavor's files, the directory holds ``model.pt`` (the state dict) and
``config.json`` (the run config), which ``registry.export``, ``initial-model=champion``
(``registry.champion_state_dict_path``) and older fedapp versions read.

torch, MLflow and scikit-learn are imported inside the functions: importing this module
(the Tracker does, and the sweep driver imports the Tracker) is cheap.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedapp.data.specs import DATASET_SPECS, DatasetSpec, preprocess

if TYPE_CHECKING:
    import torch

ARTIFACT_NAME = "model"
STATE_DICT_FILE = "model.pt"
CONFIG_FILE = "config.json"
EXAMPLE_ROWS = 5  # more than 1: torch.export keeps a batch seen only at size 1 static


def input_example(spec: DatasetSpec, rows: int = EXAMPLE_ROWS) -> np.ndarray:
    """``rows`` model inputs, float32 ``(rows, num_features)``, stored with the model.

    A built-in dataset (public, shipped with scikit-learn, no network) gives its first
    rows, preprocessed; any other dataset a synthetic batch of the spec's width (zeros,
    moved into ``[feature_min, feature_max]``). Never a hospital's or the server's test
    rows: the example is kept in the registry for anyone who can read it.
    """
    if rows < 2:
        raise ValueError(f"rows={rows} must be >= 2 (a dynamic batch dimension)")
    if spec.name in DATASET_SPECS:
        from fedapp.data.builtin import load_raw

        x, _, _ = load_raw(spec.name)
        return np.ascontiguousarray(preprocess(spec.name, x[:rows]), dtype=np.float32)
    value = 0.0 if spec.feature_min is None else max(0.0, spec.feature_min)
    value = value if spec.feature_max is None else min(value, spec.feature_max)
    return np.full((rows, spec.num_features), value, dtype=np.float32)


def signature(spec: DatasetSpec) -> Any:
    """float32 ``(-1, num_features)`` in, float32 ``(-1, num_classes)`` logits out."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    float32 = np.dtype(np.float32)
    return ModelSignature(inputs=Schema([TensorSpec(float32, (-1, spec.num_features))]),
                          outputs=Schema([TensorSpec(float32, (-1, spec.num_classes))]))


def pip_requirements() -> list[str]:
    """What loading the model needs besides MLflow (which MLflow adds, pinned, itself).

    torch from the release that exported the graph (an older one is not promised to read
    its ``pt2`` archive; pyproject's ``torch>=2.4`` is what training needs) up to the next
    major release; the version number only, never the local build (``+cpu``, ``+cu124``).
    """
    import torch

    major, minor = (int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return [f"torch>={major}.{minor},<{major + 1}"]


def metadata(spec: DatasetSpec) -> dict[str, Any]:
    """What the signature cannot say: the dataset, the columns, the transform, the output."""
    return {
        "dataset": spec.name,
        "feature_names": list(spec.feature_names) if spec.feature_names else None,
        "input": "float32 features after fedapp.data.specs.preprocess(dataset, x)",
        "output": "logits (unnormalised class scores); argmax is the predicted label",
    }


def save(model: torch.nn.Module, spec: DatasetSpec, config: Mapping[str, Any], path: Path,
         mlflow_model: Any = None) -> Path:
    """Write the MLflow Model directory ``path`` (must not exist); returns it.

    ``mlflow_model`` (an ``mlflow.models.Model``) carries the LoggedModel's ids into the
    MLmodel file. The graph is exported in eval mode (``model``'s mode is restored).
    Raises ValueError when ``model`` does not map the spec's features to its classes.
    """
    import mlflow.pytorch
    import torch

    example = input_example(spec)
    training = model.training
    model.eval()  # the graph is traced in inference mode; the caller's mode comes back
    try:
        _check_fits(model, spec, example)
        mlflow.pytorch.save_model(model, str(path), mlflow_model=mlflow_model,
                                  signature=signature(spec), input_example=example,
                                  pip_requirements=pip_requirements(), metadata=metadata(spec),
                                  serialization_format="pt2")
    finally:
        model.train(training)
    torch.save(model.state_dict(), path / STATE_DICT_FILE)
    (path / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2, default=str))
    return path


def _check_fits(model: torch.nn.Module, spec: DatasetSpec, example: np.ndarray) -> None:
    """Raise ValueError unless ``model`` maps ``example`` to one score per class."""
    import torch

    name = type(model).__name__
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(example))
    except RuntimeError as exc:
        raise ValueError(f"{name} does not take the {spec.num_features} features of "
                         f"{spec.name!r}: {exc}") from exc
    if tuple(out.shape) != (len(example), spec.num_classes):
        raise ValueError(f"{name} maps the {spec.num_features} features of {spec.name!r} to "
                         f"shape {tuple(out.shape)[1:]}, not to its {spec.num_classes} classes")


def log(client: Any, run_id: str, model: torch.nn.Module, spec: DatasetSpec,
        config: Mapping[str, Any]) -> Any:
    """Log ``model`` as a LoggedModel of run ``run_id``; returns the ``LoggedModel``.

    Through ``client`` (an ``MlflowClient``) with explicit ids, as the Tracker does:
    ``mlflow.pytorch.log_model`` would use the process's global tracking URI and run.
    The LoggedModel is marked READY once its files are uploaded (FAILED, best effort,
    if that fails) and recorded as an output of the run.
    """
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(experiment_id, name=ARTIFACT_NAME, source_run_id=run_id)
    try:
        with tempfile.TemporaryDirectory(prefix="fedapp-model-") as tmp:
            ids = Model(artifact_path=logged.artifact_location, run_id=run_id,
                        model_uuid=logged.model_id, model_id=logged.model_id)
            folder = save(model, spec, config, Path(tmp) / ARTIFACT_NAME, ids)
            client.log_model_artifacts(logged.model_id, str(folder))
        client.finalize_logged_model(logged.model_id, "READY")
    except Exception:
        with contextlib.suppress(Exception):  # the first error is the one to report
            client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return logged
