"""Submitting Flower runs through the public `flwr` CLI and waiting for their outcome.

Used by the sweep driver, the benchmarks and the tests. `flwr run` exits 0 even when
the run fails, so the outcome is read from `flwr list --run-id ID --format json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


class RunFailed(RuntimeError):
    """A Flower run was refused or ended in a status other than ``finished:completed``."""

    def __init__(self, message: str, run_id: int | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


def format_run_config(values: Mapping[str, Any]) -> str:
    """Flat mapping -> the TOML-ish ``k=v`` list `flwr run --run-config` parses."""
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        return repr(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in values.items())


def flwr(args: list[str], env: Mapping[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run this environment's `flwr` CLI (its children, e.g. a managed SuperLink, too)."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(BIN / "flwr"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    out = proc.stdout
    if "{" not in out:
        raise RunFailed(f"`flwr` printed no JSON (exit {proc.returncode}):\n{out}\n{proc.stderr}")
    return json.loads(out[out.index("{"):])


def submit(app_dir: Path, run_config: Mapping[str, Any], connection: str | None = None,
           federation_config: str | None = None, env: Mapping[str, str] | None = None) -> int:
    """`flwr run APP [CONNECTION] --format json ...`; returns the new run's id."""
    args = ["run", str(app_dir), *([connection] if connection else []), "--format", "json",
            "--run-config", format_run_config(run_config)]
    if federation_config:
        args += ["--federation-config", federation_config]
    out = _json(flwr(args, env, cwd=app_dir))
    if not out.get("success"):
        raise RunFailed(f"flwr run refused the run: {out.get('error-message', out)}")
    return int(out["run-id"])


def run_info(run_id: int, connection: str | None = None,
             env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`flwr list --run-id ID --format json`'s record of the run ({} if unknown)."""
    args = ["list", *([connection] if connection else []), "--run-id", str(run_id),
            "--format", "json"]
    runs = _json(flwr(args, env)).get("runs", [])
    return dict(runs[0]) if runs else {}


def status(run_id: int, connection: str | None = None,
           env: Mapping[str, str] | None = None) -> str:
    """The run's status, e.g. ``running`` or ``finished:completed``."""
    return str(run_info(run_id, connection, env).get("status", "missing"))


def elapsed(run_id: int, connection: str | None = None,
            env: Mapping[str, str] | None = None) -> float:
    """Seconds the SuperLink counts for the run (pending to finished)."""
    return float(run_info(run_id, connection, env).get("elapsed", float("nan")))


def logs(run_id: int, connection: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The ServerApp's log of a run so far."""
    proc = flwr(["log", str(run_id), *([connection] if connection else []), "--show"], env,
                timeout=60)
    return proc.stdout + proc.stderr


def wait(run_id: int, connection: str | None = None, env: Mapping[str, str] | None = None,
         timeout: float = 3600, poll: float = 2.0,
         on_poll: Callable[[str], None] | None = None) -> str:
    """Poll until the run's status starts with ``finished``; return it.

    ``on_poll`` gets the current status on every poll (e.g. to refresh a progress
    display). Raises ``TimeoutError`` when the run has not finished in time.
    """
    deadline = time.monotonic() + timeout
    current = "unknown"
    while time.monotonic() < deadline:
        current = status(run_id, connection, env)
        if on_poll is not None:
            on_poll(current)
        if current.startswith("finished"):
            return current
        time.sleep(poll)
    raise TimeoutError(f"run {run_id} not finished after {timeout:.0f}s (status {current})")


def run_and_check(app_dir: Path, run_config: Mapping[str, Any], connection: str | None = None,
                  federation_config: str | None = None, env: Mapping[str, str] | None = None,
                  timeout: float = 3600,
                  on_poll: Callable[[str], None] | None = None) -> tuple[int, str]:
    """Submit, wait, and raise ``RunFailed`` with the log tail unless it completed."""
    run_id = submit(app_dir, run_config, connection, federation_config, env)
    final = wait(run_id, connection, env, timeout, on_poll=on_poll)
    if final != "finished:completed":
        tail = "\n".join(logs(run_id, connection, env).splitlines()[-25:])
        raise RunFailed(f"run {run_id} ended as {final}; last log lines:\n{tail}", run_id)
    return run_id, final
