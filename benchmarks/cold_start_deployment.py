"""The deployment part of ``cold_start.py``: ``flwr run`` on a loopback deployment, and
each train message split into stages from the SuperNode's stamped log lines.

The SuperNode handles one message at a time, so its lines between ``Receiving: train
message`` and ``Sending: train message`` are one message's: Flower's own lines
(``Received successfully``; with DEBUG, ``Start FAB installation`` and ``Start `ClientApp`
Loading``) and the ClientApp's cold-start lines (``FEDAPP_COLD_START_LOG=1``: epoch stamps
of its process start, handler entry and return). :data:`STAGES` names what they give.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

from _superlink import Deployment

RECEIVING = re.compile(r"Receiving: (\w+) message")
RECEIVED = "Received successfully"
SENDING = re.compile(r"Sending: (\w+) message")
ENTERED = re.compile(r"\[fedapp\] cold start: (\w+) handler entered ([0-9.]+)s after process "
                     r"start; local data loaded in ([0-9.]+)s(?: \(process start ([0-9.]+), "
                     r"entered ([0-9.]+) epoch\))?")
RETURNED = re.compile(r"\[fedapp\] cold start: (\w+) handler returned at ([0-9.]+) \(epoch\)")
FAB_INSTALL = "[flwr-clientapp] Start FAB installation."
APP_LOADING = "[flwr-clientapp] Start `ClientApp` Loading."
STAGES = ("per-message", "received->sent", "receiving->process-start",
          "process-start->handler", "handler", "handler->sent", "process-start->fab-install",
          "fab-install->app-loading", "app-loading->handler", "local-data")


def node_env(poll_interval: float | None, flwr_debug: bool) -> dict[str, str]:
    """The SuperNode's extra environment: SuperExec's task poll, Flower's DEBUG lines."""
    env = {}
    if poll_interval is not None:
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(poll_interval)
    if flwr_debug:
        env["FLWR_LOG_LEVEL"] = "DEBUG"
    return env


def _mark(cur: dict[str, float], stamp: float, text: str) -> None:
    """Record what one log line (read at ``stamp``) says about the current message."""
    if RECEIVED in text:
        cur["received"] = stamp
    elif FAB_INSTALL in text:
        cur["fab-install"] = stamp
    elif APP_LOADING in text:
        cur["app-loading"] = stamp
    elif m := ENTERED.search(text):
        cur.update({"age": float(m.group(2)), "local-data": float(m.group(3))})
        if m.group(4):
            cur.update({"process-start": float(m.group(4)), "entered": float(m.group(5))})
    elif m := RETURNED.search(text):
        cur["returned"] = float(m.group(2))


def _stages(cur: dict[str, float], sent: float) -> dict[str, float]:
    """One message's stages (seconds) from its marks and the stamp of its ``Sending``."""
    row = {"per-message": sent - cur["receiving"]}
    if "received" in cur:
        row["received->sent"] = sent - cur["received"]
    if "age" in cur:
        row["process-start->handler"] = cur["age"]
        row["local-data"] = cur["local-data"]
    if "process-start" in cur:
        row["receiving->process-start"] = cur["process-start"] - cur["receiving"]
        if "returned" in cur:
            row["handler"] = cur["returned"] - cur["entered"]
            row["handler->sent"] = sent - cur["returned"]
        if {"fab-install", "app-loading"} <= cur.keys():
            row["process-start->fab-install"] = cur["fab-install"] - cur["process-start"]
            row["fab-install->app-loading"] = cur["app-loading"] - cur["fab-install"]
            row["app-loading->handler"] = cur["entered"] - cur["app-loading"]
    return row


def parse_messages(lines: list[tuple[float, str]]) -> list[dict[str, float]]:
    """Per train message, the stages (seconds) named in :data:`STAGES` that one
    SuperNode's stamped log lines allow."""
    out: list[dict[str, float]] = []
    cur: dict[str, float] = {}
    for stamp, text in lines:
        if m := RECEIVING.search(text):
            cur = {"receiving": stamp} if m.group(1) == "train" else {}
        elif cur and SENDING.search(text):
            out.append(_stages(cur, stamp))
            cur = {}
        elif cur:
            _mark(cur, stamp, text)
    return out


def run_status(dep: Deployment, run_id: str) -> str:
    """The run's status from ``flwr list`` (``finished:completed``, ``running``, ...)."""
    listed = dep.flwr("list", dep.connection, "--run-id", run_id, "--format", "json")
    runs = json.loads(listed.stdout[listed.stdout.index("{"):]).get("runs", [])
    return str(runs[0]["status"]) if runs else ""


def wait_finished(dep: Deployment, run_id: str, output: str) -> None:
    """Poll ``flwr list`` until the run has finished; fail unless it completed."""
    status = ""
    for _ in range(60):
        status = run_status(dep, run_id)
        if status.startswith("finished"):
            break
        time.sleep(1)
    if status != "finished:completed":
        raise RuntimeError(f"run {run_id} ended {status!r}:\n{output[-3000:]}\n"
                           f"SuperNode:\n{dep.supernode.text()[-3000:]}")


def deploy_run(dep: Deployment, app: Path, rounds: int) -> list[dict[str, float]]:
    """One ``flwr run`` of ``rounds`` train rounds on the single SuperNode; its messages'
    stages. Fails if the run does not complete."""
    first_line = len(dep.supernode.lines)
    config = (f"num-server-rounds={rounds} dataset='breast-cancer' min-train-nodes=1 "
              f"min-available-nodes=1 fraction-evaluate=0.0 tracking=false "
              f"registered-model='off' output-dir='{dep.workdir / 'out'}'")
    result = dep.flwr("run", str(app), dep.connection, "--stream", "--run-config", config)
    if result.returncode != 0:
        raise RuntimeError(f"flwr run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    match = re.search(r"Successfully started run (\d+)", result.stdout + result.stderr)
    if match is None:
        raise RuntimeError(f"no run ID in:\n{result.stdout[-3000:]}")
    wait_finished(dep, match.group(1), result.stdout)
    time.sleep(0.5)  # the SuperNode's "Sending" line of the last reply
    lines = dep.supernode.lines[first_line:]
    messages = parse_messages(lines)
    if len(messages) != rounds:
        raise RuntimeError(f"expected {rounds} train messages, parsed {len(messages)}:\n"
                           + "\n".join(t for _, t in lines)[-4000:])
    return messages


def stage_medians(messages: list[dict[str, float]]) -> dict[str, Any]:
    """Per stage: median, min, max and the samples over ``messages``."""
    row: dict[str, Any] = {"n": len(messages)}
    for stage in STAGES:
        values = [m[stage] for m in messages if stage in m]
        if values:
            row[stage] = {"median": statistics.median(values), "min": min(values),
                          "max": max(values), "samples": [round(v, 3) for v in values]}
    return row
