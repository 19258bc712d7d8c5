"""The tracking store: URI resolution, connection, and the errors and results shared
by the tracker, the registry and the report (the bottom layer of ``fedapp.tracking``).

A dead server costs little: an HTTP(S) server is probed with a short TCP connect
first, and MLflow's HTTP retries are switched off for the process unless the
environment already sets them (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
``MLFLOW_HTTP_REQUEST_TIMEOUT``).

MLflow is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_STORE_DIR = "~/.fedapp/runs"  # RunConfig's default output-dir
STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"  # next to an SQLite store, never in the working directory
PROBE_TIMEOUT_S = 3.0
_BOUNDED_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


class TrackingError(RuntimeError):
    """The tracking store cannot be used (bad URI, unreachable server)."""


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of ``Tracker.register_model``.

    ``version`` is the new model version (None when nothing was registered),
    ``champion`` the version holding the ``champion`` alias afterwards and
    ``previous`` the champion it replaced (None when not promoted).
    """

    name: str
    version: str | None
    promoted: bool
    champion: str | None
    previous: str | None
    reason: str


def resolve_tracking_uri(uri: str = "", store_dir: str | Path | None = None) -> str:
    """``uri`` if set, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<store_dir>/mlflow.db``.

    ``store_dir`` defaults to ``~/.fedapp/runs`` (RunConfig's default output-dir).
    """
    if uri.strip():
        return uri.strip()
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    directory = Path(store_dir if store_dir is not None else DEFAULT_STORE_DIR).expanduser()
    return f"sqlite:///{directory.resolve() / STORE_FILE}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI (None for any other URI)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def connect(uri: str) -> Any:
    """An ``MlflowClient`` for tracking and registry at ``uri``, with bounded HTTP time.

    Raises TrackingError naming the URI when the scheme is unusable or an HTTP(S)
    server does not accept a TCP connection within ``PROBE_TIMEOUT_S`` seconds.
    """
    for key, value in _BOUNDED_HTTP_ENV.items():
        os.environ.setdefault(key, value)
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        _probe(uri, *_probe_target(parsed.scheme, parsed.hostname, parsed.port))
    db = sqlite_path(uri)
    if db is not None:
        db.expanduser().parent.mkdir(parents=True, exist_ok=True)
    from mlflow import MlflowClient

    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as exc:
        raise TrackingError(f"tracking URI {uri!r} is not usable: {exc}") from exc


def _probe_target(scheme: str, host: str | None, port: int | None) -> tuple[str | None, int]:
    """Where the HTTP client will connect: the server, or the proxy that serves it."""
    import urllib.request

    proxy = urllib.request.getproxies().get(scheme)
    if host and proxy and not urllib.request.proxy_bypass(host):
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return parsed.hostname, parsed.port or 80
    return host, port or (443 if scheme == "https" else 80)


def _probe(uri: str, host: str | None, port: int) -> None:
    if not host:
        raise TrackingError(f"tracking URI {uri!r} has no host")
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise TrackingError(
            f"tracking server {uri!r} is unreachable ({host}:{port}: {exc})"
        ) from exc
