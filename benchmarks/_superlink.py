"""A private managed SuperLink for benchmark scripts (the same helpers the tests use).

``with private_superlink() as (env, workdir): runner.run_and_check(..., env=env)`` gives a
fresh ``FLWR_HOME`` in a temporary directory, free ports for the managed SuperLink, runtime
dependency installation disabled (works offline), and stops the SuperLink and everything it
started (the processes whose command line mentions that ``FLWR_HOME``) at the end.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def private_superlink(prefix: str = "fedapp-bench-",
                      keep: bool = False) -> Iterator[tuple[dict[str, str], Path]]:
    """Yield ``(env, workdir)``: the environment for `flwr` and a scratch directory."""
    if str(REPO) not in sys.path:  # tests/ is not installed; reuse its helpers in place
        sys.path.insert(0, str(REPO))
    from tests.flwr_cli import free_port, kill_processes_mentioning

    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    home = workdir / "flwr-home"
    home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    try:
        yield env, workdir
    finally:
        kill_processes_mentioning(str(home))
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
