"""``mlflow models serve --env-manager local`` serves the champion: ``POST /invocations``
answers the logits the model gives locally, and refuses rows of the wrong width.

Slow for a unit test (a server process, 10-30 s); no network: the server listens on
127.0.0.1 and the model comes from a SQLite store in the test's folder. The server is
stopped through its own process group, never by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedapp.data import DATASET_SPECS
from fedapp.data.builtin import load_split
from fedapp.task import build_model
from fedapp.tracking import Tracker
from tests.flwr_cli import free_port
from tests.unit.mlflow_store import fresh_store

pytestmark = pytest.mark.timeout(300)
NAME = "fedapp-serve-test"
START_TIMEOUT_S = 120.0


def post(url: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def wait_until_up(base: str, server: subprocess.Popen, log: Path) -> float:
    """Seconds until ``/ping`` answers 200; fails with the server's log otherwise."""
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT_S:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {server.returncode}:\n"
                        f"{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as reply:
                if reply.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"mlflow models serve not up after {START_TIMEOUT_S:.0f} s:\n"
                f"{log.read_text()[-4000:]}")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow and the uvicorn it execs), then SIGKILL."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            break
        server.poll()  # reap the leader so the group can empty
        time.sleep(0.1)
    else:
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, torch.nn.Module]]:
    """(base URL, local model) of a registered champion served on a free local port."""
    uri = fresh_store(tmp_path)
    spec = DATASET_SPECS["digits"]
    torch.manual_seed(5)
    model = build_model("cnn", spec)
    with Tracker.open(uri, "exp", "run", {"dataset": "digits"}) as tracker:
        result = tracker.register_model(model, spec, NAME, 0.9, {}, 0.0)
    assert result.champion == result.version == "1", result.reason
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
           # uvicorn is started by name: the venv's bin must be on PATH
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m",
             f"models:/{NAME}@champion", "--env-manager", "local", "-h", "127.0.0.1",
             "-p", str(port)], cwd=tmp_path, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        took = wait_until_up(base, server, log)
        print(f"mlflow models serve answered /ping after {took:.1f} s")
        yield base, model
    finally:
        stop(server)


def test_served_champion_answers_the_local_logits(served: tuple[str, torch.nn.Module]) -> None:
    base, model = served
    rows = load_split("digits", "test", 0.2, 0).x[:16]
    with torch.no_grad():
        expected = model(torch.from_numpy(rows)).numpy()
    status, body = post(f"{base}/invocations", {"inputs": rows.tolist()})
    assert status == 200, body
    assert np.allclose(np.array(body["predictions"]), expected, rtol=1e-5, atol=1e-5)
    status, body = post(f"{base}/invocations", {"inputs": rows[:1].tolist()})
    assert status == 200 and np.allclose(body["predictions"], expected[:1], atol=1e-5)
    status, body = post(f"{base}/invocations", {"inputs": rows[:, :30].tolist()})
    assert status == 400 and "(-1, 64)" in body.get("message", ""), body
