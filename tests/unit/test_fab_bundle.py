"""The FAB that `flwr run .` builds from the checkout: the apps' code, under Flower's limit.

Flower packs every .py/.toml/.md/.yaml/.json of the app directory unless ``fab-include``
narrows it; the benchmark results alone once pushed the bundle over Flower's 10 MiB
limit and `flwr run .` failed before any round. The test builds the bundle the way the
CLI does (``flwr.cli.build.build_fab_from_disk``).
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import FAB_MAX_SIZE

REPO = Path(__file__).resolve().parents[2]


def test_the_bundle_holds_every_module_of_the_apps_and_nothing_else() -> None:
    fab = build_fab_from_disk(REPO)
    names = set(zipfile.ZipFile(io.BytesIO(fab)).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "fedapp").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert {"fedapp/server_app.py", "fedapp/client_app.py"} <= modules
    assert modules <= names, f"missing from the FAB: {sorted(modules - names)[:5]}"
    assert "pyproject.toml" in names
    others = {n for n in names - modules - {"pyproject.toml"} if not n.startswith(".info/")}
    assert not others, f"the FAB carries more than the apps: {sorted(others)[:5]}"
    assert len(fab) < FAB_MAX_SIZE / 4


def test_the_robustness_benchmarks_bundle_carries_its_serverapp(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from robustness_cells import build_app

    app, _ = build_app(tmp_path)
    names = set(zipfile.ZipFile(io.BytesIO(build_fab_from_disk(app))).namelist())
    assert {"robustness_server.py", "fedapp/server_app.py", "fedapp/client_app.py"} <= names
    assert 'serverapp = "robustness_server:app"' in (app / "pyproject.toml").read_text()
