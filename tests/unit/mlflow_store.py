"""An empty MLflow SQLite store for tests, made once per MLflow version and copied (shared
by the tracking, registry, model, report and serve tests)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fresh_store(directory: Path) -> str:
    """URI of a new, empty SQLite store in ``directory``.

    Creating an MLflow database runs its schema migrations (5-10 s here), so an
    empty migrated database is made once per MLflow version, cached in the temp
    folder, and copied.
    """
    import mlflow

    template = Path(tempfile.gettempdir()) / f"fedapp-test-mlflow-{mlflow.__version__}.db"
    if not template.is_file():
        scratch = Path(tempfile.mkdtemp(prefix="fedapp-mlflow-template-"))
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{scratch / 'mlflow.db'}").search_experiments()
        os.replace(scratch / "mlflow.db", template)  # atomic: never a half-made template
        shutil.rmtree(scratch, ignore_errors=True)
    shutil.copyfile(template, directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"
