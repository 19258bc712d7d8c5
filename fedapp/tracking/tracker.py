"""MLflow tracking for the ServerApp: one MLflow run per Flower run.

A ``Tracker`` logs the flat run config as params, per-round metrics, the output
files, a PNG of the learning curves, and the final model as an MLflow Model (the
``mlflow.pytorch`` flavor, ``fedapp.tracking.model``), registered as a new version of a
registered model behind a promotion gate (``fedapp.tracking.registry``).

Tracking must never stop training. Every MLflow failure (server down, bad URI,
registry error) is caught, logged once as a WARNING with its reason, and turns
the tracker into a no-op for the rest of the run (see ``fedapp.tracking.store``
for how a dead server is detected quickly).

MLflow and matplotlib are imported inside the functions: importing this module
is cheap.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fedapp.tracking import model as logged_model
from fedapp.tracking.registry import create_version, gate
from fedapp.tracking.report import save_curves
from fedapp.tracking.store import (
    ARTIFACT_DIR,
    RegistrationResult,
    TrackingError,
    connect,
    resolve_tracking_uri,
    sqlite_path,
)

if TYPE_CHECKING:
    import torch

    from fedapp.data.specs import DatasetSpec

LOG = logging.getLogger("flwr.fedapp.tracking")  # a child of Flower's logger: same console
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
SUMMARY_KEYS = ("dataset", "model", "aggregator", "aggregator-f", "attack", "dp",
                "dp-epsilon", "compression", "num-server-rounds", "seed")


def config_summary(params: Mapping[str, Any]) -> str:
    """One line of the key settings, e.g. ``dataset=digits aggregator=krum ...``."""
    return " ".join(f"{k}={_param_value(params[k])}" for k in SUMMARY_KEYS if k in params)


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as Flower's run config writes it
    return str(value)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    return (items[i:i + size] for i in range(0, len(items), size))


class Tracker:
    """One MLflow run; a no-op once disabled (``enabled`` is False, ``reason`` says why)."""

    def __init__(self, client: Any = None, run_id: str | None = None, uri: str = "",
                 params: Mapping[str, Any] | None = None, reason: str = "") -> None:
        self._client = client
        self.run_id = run_id
        self.tracking_uri = uri
        self.reason = reason
        self._params = dict(params or {})

    @classmethod
    def disabled(cls, reason: str) -> Tracker:
        """A tracker that does nothing (tracking switched off by configuration)."""
        return cls(reason=reason)

    @classmethod
    def open(cls, tracking_uri: str, experiment: str, run_name: str, params: Mapping[str, Any],
             parent_run_id: str | None = None, tags: Mapping[str, str] | None = None,
             store_dir: str | Path | None = None) -> Tracker:
        """Start a run in ``experiment``; on any failure return a disabled tracker.

        ``tracking_uri`` empty means ``$MLFLOW_TRACKING_URI``, else an SQLite store in
        ``store_dir``. A ``parent_run_id`` makes the run a child (sweeps).
        """
        uri = resolve_tracking_uri(tracking_uri, store_dir)
        tracker = cls(uri=uri, params=params)
        try:
            client = connect(uri)
            experiment_id = _experiment_id(client, experiment, uri)
            run_tags = {k: str(v) for k, v in (tags or {}).items()}
            if parent_run_id:
                run_tags["mlflow.parentRunId"] = parent_run_id
            run = client.create_run(experiment_id, run_name=run_name or None, tags=run_tags)
            tracker._client, tracker.run_id = client, run.info.run_id
            tracker._log_params(params)
        except Exception as exc:
            tracker._disable(f"cannot start a run in experiment {experiment!r} at {uri}", exc)
        return tracker

    @classmethod
    def resume(cls, tracking_uri: str, run_id: str, params: Mapping[str, Any],
               tags: Mapping[str, str] | None = None,
               store_dir: str | Path | None = None) -> Tracker:
        """Continue the MLflow run ``run_id`` (a resumed Flower run): its status is RUNNING
        again and ``tags`` are set; params stay as first logged (MLflow keeps one value per
        param; what a resume may change is recorded as tags). On any failure, a disabled
        tracker."""
        uri = resolve_tracking_uri(tracking_uri, store_dir)
        tracker = cls(uri=uri, params=params)
        try:
            client = connect(uri)
            client.update_run(run_id, status="RUNNING")
            for key, value in (tags or {}).items():
                client.set_tag(run_id, key, str(value))
            tracker._client, tracker.run_id = client, run_id
        except Exception as exc:
            tracker._disable(f"cannot resume MLflow run {run_id} at {uri}", exc)
        return tracker

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def _disable(self, where: str, exc: BaseException) -> None:
        if self._client is None and self.reason:
            return
        self.reason = f"{where}: {type(exc).__name__}: {exc}".strip()
        LOG.warning("[fedapp] MLflow tracking disabled for the rest of this run (%s); "
                    "training goes on without it", self.reason)
        self._client = None

    def _log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for chunk in _chunks(items, 100):
            self._client.log_batch(self.run_id, params=chunk)

    def log_round(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Log the numeric entries of ``metrics`` at ``step`` (others are skipped)."""
        if self._client is None:
            return
        try:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(str(k), float(v), now, int(step)) for k, v in metrics.items()
                     if isinstance(v, numbers.Real)]
            for chunk in _chunks(items, 1000):
                self._client.log_batch(self.run_id, metrics=chunk)
        except Exception as exc:
            self._disable(f"cannot log metrics of step {step}", exc)

    def log_artifacts(self, files: Iterable[Path], artifact_path: str | None = None) -> None:
        """Upload each existing file (a missing one is skipped with a warning)."""
        for file in map(Path, files):
            if self._client is None:
                return
            if not file.is_file():
                LOG.warning("[fedapp] not logging artifact %s: no such file", file)
                continue
            try:
                self._client.log_artifact(self.run_id, str(file), artifact_path)
            except Exception as exc:
                self._disable(f"cannot log artifact {file}", exc)

    def log_curves(self, rows: list[Mapping[str, Any]], path: Path) -> Path | None:
        """Write a PNG of server accuracy and loss per round to ``path`` and log it.

        The PNG is written even when tracking is disabled; returns its path, or None
        when drawing failed (logged as a warning).
        """
        try:
            save_curves(rows, path)
        except Exception as exc:
            LOG.warning("[fedapp] cannot draw learning curves to %s: %s", path, exc)
            return None
        self.log_artifacts([path])
        return path

    def log_model(self, model: torch.nn.Module, spec: DatasetSpec) -> str | None:
        """Log the final model as an MLflow Model (``fedapp.tracking.model``) without
        registering it; returns its LoggedModel id (None when disabled or on failure)."""
        if self._client is None:
            return None
        try:
            return str(logged_model.log(self._client, str(self.run_id), model, spec,
                                        self._params).model_id)
        except Exception as exc:
            self._disable("cannot log the model", exc)
            return None

    def register_model(self, model: torch.nn.Module, spec: DatasetSpec, registered_name: str,
                       accuracy: float, tags: Mapping[str, str],
                       margin: float) -> RegistrationResult:
        """Log ``model`` (an MLflow Model of ``spec``'s inputs, see ``fedapp.tracking.model``),
        add it as a version of ``registered_name``, apply the gate.

        The version's source is the LoggedModel's artifact location (tag ``model-id``).
        The ``champion`` alias moves to the new version only if ``accuracy`` beats
        the champion's ``accuracy`` tag by more than ``margin``; the replaced
        champion is recorded (see ``fedapp.tracking.registry``) so that rollback works.
        """
        if not margin >= 0.0:
            raise ValueError(f"margin={margin!r} must be a number >= 0")
        if self._client is None:
            return RegistrationResult(registered_name, None, False, None, None,
                                      f"not registered: tracking disabled ({self.reason})")
        try:
            logged = logged_model.log(self._client, str(self.run_id), model, spec, self._params)
            version_tags = {"run-id": str(self.run_id), "accuracy": repr(float(accuracy)),
                            "config": config_summary(self._params), "model-id": logged.model_id}
            version_tags |= {k: str(v) for k, v in tags.items()}
            version = create_version(self._client, registered_name, logged.artifact_location,
                                     self.run_id, version_tags, model_id=logged.model_id)
            promoted, champion, previous, reason = gate(
                self._client, registered_name, version, float(accuracy), margin)
        except Exception as exc:
            self._disable(f"cannot register model {registered_name!r}", exc)
            return RegistrationResult(registered_name, None, False, None, None,
                                      f"not registered: {self.reason}")
        LOG.info("[fedapp] model %r version %s: %s", registered_name, version, reason)
        return RegistrationResult(registered_name, version, promoted, champion, previous, reason)

    def close(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status={status!r} is not one of: {', '.join(RUN_STATUSES)}")
        if self._client is None:
            return
        try:
            self._client.set_terminated(self.run_id, status)
        except Exception as exc:
            self._disable(f"cannot end run {self.run_id}", exc)
        self._client = None
        self.reason = self.reason or "run closed"

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


def _experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (artifacts next to an SQLite store) if new."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage != "active":
            raise TrackingError(f"experiment {name!r} is deleted; restore it or pick another")
        return found.experiment_id
    db = sqlite_path(uri)
    location = (db.expanduser().resolve().parent / ARTIFACT_DIR).as_uri() if db else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as exc:  # created concurrently by another run
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id
