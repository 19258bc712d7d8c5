"""Driving the real `flwr` CLI from tests: submit a run, wait for its final status.

`flwr run` exits 0 even when the run fails, so tests read the run's status with
`flwr list --run-id ID --format json` and assert on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flwr(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the `flwr` CLI of this venv; its children (flower-superlink) come from it too."""
    env = {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
    return subprocess.run([str(BIN / "flwr"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def submit(env: dict[str, str], connection: list[str], run_config: str,
           federation_config: str | None = None) -> int:
    """`flwr run . [CONNECTION] --format json`; returns the run id."""
    args = ["run", ".", *connection, "--format", "json", "--run-config", run_config]
    if federation_config:
        args += ["--federation-config", federation_config]
    proc = flwr(args, env)
    try:
        out = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError as exc:
        raise AssertionError(f"flwr run gave no JSON:\n{proc.stdout}\n{proc.stderr}") from exc
    assert out.get("success"), out
    return int(out["run-id"])


def wait_finished(env: dict[str, str], connection: list[str], run_id: int,
                  timeout: float) -> str:
    """Poll the run's status until it starts with 'finished'; return it."""
    deadline = time.monotonic() + timeout
    status = "unknown"
    while time.monotonic() < deadline:
        proc = flwr(["list", *connection, "--run-id", str(run_id), "--format", "json"], env)
        if proc.returncode == 0 and "{" in proc.stdout:
            runs = json.loads(proc.stdout[proc.stdout.index("{"):]).get("runs", [])
            status = runs[0]["status"] if runs else "missing"
            if status.startswith("finished"):
                return status
        time.sleep(2)
    raise AssertionError(f"run {run_id} not finished after {timeout:.0f}s (status {status})")


def run_log(env: dict[str, str], connection: list[str], run_id: int) -> str:
    """The ServerApp's log of a finished run."""
    proc = flwr(["log", str(run_id), *connection, "--show"], env, timeout=60)
    return proc.stdout + proc.stderr


def kill_processes_mentioning(text: str) -> None:
    """SIGTERM, then SIGKILL, every process whose command line contains ``text``,
    together with its process group (detached SuperLinks start their own)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(OSError, ProcessLookupError):
                    kill(pid, sig)
        if sig == signal.SIGTERM:
            time.sleep(2)
