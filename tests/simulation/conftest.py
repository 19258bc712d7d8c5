"""A private managed SuperLink for the simulation tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.flwr_cli import free_port, kill_processes_mentioning


@pytest.fixture(scope="session")
def local_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private FLWR_HOME whose managed local SuperLink listens on free ports;
    the SuperLink and everything it started are stopped afterwards."""
    home = tmp_path_factory.mktemp("flwr-home")
    env = {**os.environ, "FLWR_HOME": str(home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "XDG_DATA_HOME": str(home / "xdg-data"),  # DP nodes' privacy ledger
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    try:
        yield env
    finally:
        kill_processes_mentioning(str(home))
