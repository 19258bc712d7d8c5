"""Model registry: versions of a registered model, the champion, promotion, rollback.

The ServerApp registers every run's final model as a new version (tags: run-id,
accuracy, config, model-id). The ``champion`` alias names the version to deploy; it moves
only through ``gate`` (a better accuracy by more than a margin) or ``promote``.
Each move records the replaced champion: alias ``previous-champion`` and the
model tag ``champion-history`` (comma-separated, oldest first), which
``rollback`` pops.

A version's source is an MLflow Model (``fedapp.tracking.model``): load it with
``mlflow.pytorch.load_model("models:/<name>@champion")`` or serve it with ``mlflow models
serve``. Its folder also holds ``model.pt`` (the state dict) and ``config.json``, what
``export`` writes and ``initial-model=champion`` reads.

Command line (``fedapp.tracking.registry_cli``)::

    python -m fedapp.tracking.registry [--tracking-uri URI] [--name NAME] list
    python -m fedapp.tracking.registry promote VERSION
    python -m fedapp.tracking.registry rollback
    python -m fedapp.tracking.registry export VERSION PATH   # PATH/ or PATH.pt (+ PATH.json)
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedapp.tracking.store import connect, resolve_tracking_uri

LOG = logging.getLogger("flwr.fedapp.registry")
CHAMPION = "champion"
PREVIOUS = "previous-champion"
HISTORY_TAG = "champion-history"
HISTORY_MAX = 50


class RegistryError(RuntimeError):
    """A registry operation cannot be done (unknown model or version, no history)."""


@dataclass(frozen=True)
class VersionInfo:
    version: str
    run_id: str
    accuracy: str
    aliases: tuple[str, ...]
    created: str


def model_name_for(dataset: str) -> str:
    """Default registered-model name of a dataset (registry names forbid '/' and ':')."""
    return "fedapp-" + dataset.replace(":", "-").replace("/", "-")


def _model(client: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        known = ", ".join(sorted(m.name for m in client.search_registered_models())) or "none"
        raise RegistryError(f"no registered model {name!r}; registered models: {known}") from None


def _version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        known = ", ".join(v.version for v in list_versions(client, name)) or "none"
        raise RegistryError(
            f"model {name!r} has no version {version!r}; versions: {known}") from None


def create_version(client: Any, name: str, source: str, run_id: str | None,
                   tags: dict[str, str], model_id: str | None = None) -> str:
    """Add a version of ``source`` (creating the registered model if new); returns its
    number. ``model_id``: the MLflow LoggedModel whose files ``source`` holds."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    created = client.create_model_version(name, source, run_id=run_id, tags=tags,
                                          await_creation_for=0, model_id=model_id)
    return str(created.version)


def champion_of(client: Any, name: str) -> str | None:
    """The version holding the ``champion`` alias (None if none)."""
    version = _model(client, name).aliases.get(CHAMPION)
    return None if version is None else str(version)


def history(client: Any, name: str) -> list[str]:
    """Replaced champions, oldest first."""
    raw = _model(client, name).tags.get(HISTORY_TAG, "")
    return [v for v in raw.split(",") if v]


def accuracy_of(client: Any, name: str, version: str) -> float | None:
    """The ``accuracy`` tag of a version as a float (None if missing or not a number)."""
    try:
        return float(_version(client, name, version).tags["accuracy"])
    except (KeyError, ValueError):
        return None


def _move_champion(client: Any, name: str, version: str, past: list[str]) -> None:
    """Record ``past`` (history, oldest first), then point the aliases."""
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(past[-HISTORY_MAX:]))
    if past:
        client.set_registered_model_alias(name, PREVIOUS, past[-1])
    else:
        _delete_alias(client, name, PREVIOUS)
    client.set_registered_model_alias(name, CHAMPION, version)


def _delete_alias(client: Any, name: str, alias: str) -> None:
    if alias in _model(client, name).aliases:
        client.delete_registered_model_alias(name, alias)


def promote(client: Any, name: str, version: str) -> str | None:
    """Make ``version`` the champion; returns the replaced champion (None if none)."""
    version = str(_version(client, name, version).version)
    current = champion_of(client, name)
    if current == version:
        return None
    past = history(client, name) + ([current] if current is not None else [])
    _move_champion(client, name, version, past)
    return current


def gate(client: Any, name: str, version: str, accuracy: float,
         margin: float) -> tuple[bool, str | None, str | None, str]:
    """Promote ``version`` iff ``accuracy`` > champion's accuracy + ``margin``.

    Returns (promoted, champion afterwards, replaced champion, reason). A NaN
    accuracy never wins; a champion without an accuracy tag always loses.
    """
    current = champion_of(client, name)
    if not math.isfinite(accuracy):
        return False, current, None, f"not promoted: accuracy {accuracy} is not finite"
    if current is None:
        promote(client, name, version)
        return True, version, None, f"promoted: first champion (accuracy {accuracy:.4f})"
    best = accuracy_of(client, name, current)
    if best is not None and not accuracy > best + margin:
        return False, current, None, (
            f"not promoted: accuracy {accuracy:.4f} does not beat champion v{current} "
            f"({best:.4f}) by more than margin {margin:g}")
    previous = promote(client, name, version)
    shown = "no accuracy tag" if best is None else f"{best:.4f}"
    return True, version, previous, (
        f"promoted: accuracy {accuracy:.4f} beats champion v{current} ({shown}) "
        f"by more than margin {margin:g}")


def rollback(client: Any, name: str) -> tuple[str | None, str]:
    """Give ``champion`` back to the latest replaced champion that still exists.

    Returns (champion before, champion after); raises RegistryError if none is recorded.
    """
    current = champion_of(client, name)
    past = history(client, name)
    existing = {v.version for v in list_versions(client, name)}
    while past:
        candidate = past.pop()
        if candidate != current and candidate in existing:
            _move_champion(client, name, candidate, past)
            return current, candidate
    raise RegistryError(
        f"cannot roll back model {name!r}: no previous champion is recorded "
        f"(champion is {'v' + current if current else 'unset'}; tag {HISTORY_TAG!r} is empty)")


def list_versions(client: Any, name: str) -> list[VersionInfo]:
    """Every version of ``name``, oldest first."""
    model = _model(client, name)
    aliases: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    quoted = name.replace("'", "\\'")
    found = client.search_model_versions(f"name='{quoted}'")
    return [VersionInfo(
        version=str(v.version), run_id=v.run_id or "",
        accuracy=v.tags.get("accuracy", ""),
        aliases=tuple(sorted(aliases.get(str(v.version), []))),
        created=datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).strftime(
            "%Y-%m-%d %H:%M:%S UTC"),
    ) for v in sorted(found, key=lambda v: int(v.version))]


def format_table(rows: list[VersionInfo]) -> str:
    """A plain-text table of versions."""
    head = ("version", "run id", "accuracy", "aliases", "created")
    cells = [head] + [(r.version, r.run_id, _short(r.accuracy), ",".join(r.aliases), r.created)
                      for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _short(accuracy: str) -> str:
    try:
        return f"{float(accuracy):.4f}"
    except ValueError:
        return accuracy or "-"


def download_version(client: Any, uri: str, name: str, version: str, dst: Path) -> Path:
    """Download a version's files into ``dst``; returns the folder.

    The folder holds ``model.pt`` (the state dict) and ``config.json``: beside the MLflow
    Model's files (``fedapp.tracking.model``), or alone in versions made before it.
    """
    import mlflow.artifacts

    found = _version(client, name, version)
    folder = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=found.source, dst_path=str(dst), tracking_uri=uri))
    if not (folder / "model.pt").is_file():
        files = ", ".join(sorted(p.name for p in folder.iterdir())) or "none"
        raise RegistryError(f"model {name!r} version {version} (source {found.source}) "
                            f"has no model.pt; files: {files}")
    return folder


def export(client: Any, uri: str, name: str, version: str, path: Path) -> list[Path]:
    """Write a version's ``model.pt`` and ``config.json`` to ``path``.

    ``path`` ending in ``.pt`` names the model file (config beside it as ``.json``);
    any other ``path`` is a folder that receives both files.
    """
    path = Path(path).expanduser()
    model_out, config_out = ((path, path.with_suffix(".json")) if path.suffix == ".pt"
                             else (path / "model.pt", path / "config.json"))
    model_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedapp-export-") as tmp:
        folder = download_version(client, uri, name, version, Path(tmp))
        shutil.copyfile(folder / "model.pt", model_out)
        written = [model_out]
        if (folder / "config.json").is_file():
            shutil.copyfile(folder / "config.json", config_out)
            written.append(config_out)
    return written


def champion_state_dict_path(tracking_uri: str, name: str) -> Path | None:
    """The champion's ``model.pt`` downloaded to a new temporary folder.

    For ``initial-model=champion``. Returns None (with a warning naming the reason)
    when there is no champion or the registry cannot be read; the caller then
    starts from a fresh model.
    """
    uri = resolve_tracking_uri(tracking_uri)
    try:
        client = connect(uri)
        version = champion_of(client, name)
        if version is None:
            LOG.warning("[fedapp] model %r has no champion at %s", name, uri)
            return None
        folder = download_version(client, uri, name, version,
                                  Path(tempfile.mkdtemp(prefix="fedapp-champion-")))
        return folder / "model.pt"
    except Exception as exc:
        LOG.warning("[fedapp] cannot fetch the champion of model %r from %s: %s: %s",
                    name, uri, type(exc).__name__, exc)
        return None


if __name__ == "__main__":  # the command keeps its name; its code is the layer above
    from fedapp.tracking.registry_cli import main

    sys.exit(main())
