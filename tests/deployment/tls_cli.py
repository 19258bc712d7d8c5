"""The command line of the deployment tiers (``tests/deployment``, ``tests/chaos``):
where the Flower executables are, polling with a timeout, short commands that must
succeed, ``flwr ... --format json`` against the loopback SuperLink, free ports, and the
environment of every child process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # the fixtures come from conftest.py; never import it at run time
    from tests.deployment.conftest import ManagedProcess

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
# The venv running the tests holds the Flower executables; Flower itself spawns
# helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name from PATH.
BIN_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
FLWR = shutil.which("flwr", path=BIN_PATH) or "flwr"
CONNECTION = "tls-loopback"


def wait_until(condition: Callable[[], T | None], timeout_s: float, what: str,
               watch: Sequence[ManagedProcess] = (), interval_s: float = 0.5) -> T:
    """Poll ``condition`` until it returns a truthy value; fail if a watched process
    exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        for proc in watch:
            assert proc.running(), (
                f"{proc.name} exited with code {proc.popen.returncode} while waiting for {what}"
            )
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(interval_s)


def run_checked(argv: Sequence[str], env: dict[str, str], timeout_s: float,
                cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """Run a short command; fail with its output if it exits non-zero."""
    result = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout_s, check=False)
    assert result.returncode == 0, (
        f"{' '.join(argv)} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def parse_json_output(text: str) -> dict[str, Any]:
    """The JSON object a ``flwr ... --format json`` command printed (skipping any banner)."""
    start = text.find("{")
    assert start >= 0, f"no JSON in output:\n{text}"
    value, _ = json.JSONDecoder().raw_decode(text[start:])
    return value


def flwr_json(env: dict[str, str], *args: str, must_succeed: bool = True) -> dict[str, Any]:
    """Run ``flwr ARGS CONNECTION --format json``. It exits 0 even when the SuperLink
    refused the request, so ``success`` in its JSON is checked instead."""
    result = run_checked([FLWR, *args, CONNECTION, "--format", "json"], env, 60)
    value = parse_json_output(result.stdout)
    if must_succeed:
        assert value.get("success", True), f"flwr {' '.join(args)} failed: {value}"
    return value


def flwr_json_parallel(env: dict[str, str], calls: dict[str, list[str]]) -> dict[str, Any]:
    """Several ``flwr ... --format json`` calls at once (each CLI start costs seconds)."""
    procs = {
        key: subprocess.Popen([FLWR, *args, CONNECTION, "--format", "json"], cwd=REPO_ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for key, args in calls.items()
    }
    results = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"flwr {calls[key]} exited {proc.returncode}:\n{out}\n{err}"
        value = parse_json_output(out)
        assert value.get("success"), f"flwr {calls[key]} failed: {value}"
        results[key] = value
    return results


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def child_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=BIN_PATH,
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    env.pop("MLFLOW_TRACKING_URI", None)  # the run's MLflow store: under its output-dir
    return env
