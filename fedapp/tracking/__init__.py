"""MLflow tracking, model registry and experiment report.

Layers, each importing only the ones before it::

    store         tracking URI, connect/probe, TrackingError, RegistrationResult
    registry      registered models, the champion, promote/rollback/export
    registry_cli  its command line: python -m fedapp.tracking.registry
    report        report.md and figures of an experiment's runs
                  (CLI: python -m fedapp.tracking.report)
    model         the final model as an MLflow Model (mlflow.pytorch flavor, signature,
                  input example, requirements), logged as a LoggedModel of the run
    tracker       Tracker: one MLflow run per Flower run

Importing this package is cheap: MLflow and matplotlib are imported inside the
functions that use them. ``Tracker`` and ``config_summary`` are loaded on first
use (PEP 562) rather than here: ``tracker`` imports ``registry``, ``report`` and ``model``,
and a package that imported them would make ``python -m fedapp.tracking.registry``
(and ``.report``) find its own module already imported, which runpy warns about.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedapp.tracking.store import (
    RegistrationResult,
    TrackingError,
    connect,
    resolve_tracking_uri,
    sqlite_path,
)

if TYPE_CHECKING:
    from fedapp.tracking.tracker import Tracker, config_summary

__all__ = [
    "RegistrationResult",
    "Tracker",
    "TrackingError",
    "config_summary",
    "connect",
    "resolve_tracking_uri",
    "sqlite_path",
]
_FROM_TRACKER = ("Tracker", "config_summary")


def __getattr__(name: str) -> Any:
    """``Tracker`` and ``config_summary``, imported from ``tracker`` on first access."""
    if name in _FROM_TRACKER:
        value = getattr(importlib.import_module("fedapp.tracking.tracker"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
