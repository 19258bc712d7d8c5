"""The runs of ``deployment_scale.py``: its nodes' data files, one deployment and one
``flwr run`` per call, and the per-round rows from the logs (``deployment_scale_rounds``).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from _superlink import Deployment, StampedProcess, loopback_deployment, start_stamped
from cold_start_deployment import run_status
from common import REPO, loadavg
from deployment_scale_rounds import round_rows, train_spans

ROWS_PER_NODE = 152  # a third of the training split, as the cold-start benchmark's node
STATUS_EVERY_S = 30.0
RUN_ID = re.compile(r"Successfully started run (\d+)")
RUN_TIMEOUT_S = 1800.0
SEND_FAILED = "Failed to send message"
LOCKED = "database is locked"


def hospital_files(root: Path, count: int) -> list[Path]:
    """``count`` hospital files of :data:`ROWS_PER_NODE` rows each: file i is drawn
    (seed i, without replacement) from the breast-cancer training split, so every node
    does the same work and no two send the same update (the screening flags duplicates);
    left unmodified long enough for the nodes' data cache."""
    import numpy as np
    import pandas as pd

    from fedapp.data.__main__ import split

    pool = pd.read_csv(split("breast-cancer", 1, root / "split", "csv", "iid", 0.5, 2, 0.2,
                             42)[0])
    files = []
    for i in range(count):
        rows = np.random.default_rng(i).choice(len(pool), ROWS_PER_NODE, replace=False)
        files.append(root / f"node-{i}.csv")
        pool.iloc[np.sort(rows)].to_csv(files[-1], index=False)
    past = time.time() - 60  # the node's data cache keeps only files unmodified a while
    for path in files:
        os.utime(path, (past, past))
    return files


def run_config(nodes: int, rounds: int, out: Path) -> str:
    return (f"num-server-rounds={rounds} dataset='breast-cancer' fraction-train=1.0 "
            f"min-train-nodes={nodes} min-available-nodes={nodes} fraction-evaluate=0.0 "
            f"tracking=false registered-model='off' metrics-port=0 output-dir='{out}'")


def stream_run(dep: Deployment, rounds: int, config: str, out: Path, label: str,
               logs: Path | None = None) -> tuple[str, str]:
    """``flwr run --stream`` (its stamped output kept for errors); a progress line per
    round from ``rounds.json`` (the stream may end before the run does); waits until the
    run has finished. Returns the run ID and its final status (a failed run's output is
    printed)."""
    flwr = str(Path(sys.executable).parent / "flwr")
    started = time.monotonic()
    run = start_stamped("flwr-run", [flwr, "run", str(REPO), dep.connection, "--stream",
                                     "--run-config", config], dep.env, REPO)
    status, reported, checked = "", 0, started
    try:
        while (match := RUN_ID.search(run.text())) is None:
            if run.popen.poll() is not None or time.monotonic() - started > 120:
                raise RuntimeError(f"{label}: flwr run failed:\n{run.text()[-3000:]}")
            time.sleep(0.2)
        run_id = match.group(1)
        rows_path = out / f"run-{run_id}" / "rounds.json"
        while not status.startswith("finished"):
            if time.monotonic() - started > RUN_TIMEOUT_S:
                raise RuntimeError(f"{label}: the run took over {RUN_TIMEOUT_S:.0f}s")
            time.sleep(1)
            reported = _progress(rows_path, reported, label, started)
            # `flwr list` costs a CPU-second: asked once every round's row is there, else
            # every STATUS_EVERY_S (a failed run writes no more rows)
            if reported >= rounds or time.monotonic() - checked > STATUS_EVERY_S:
                status, checked = run_status(dep, run_id), time.monotonic()
    finally:
        run.stop()
        if logs is not None:
            keep_logs([run], logs)
    if status != "finished:completed":
        print(f"{label}: run {run_id} ended {status!r}:\n{run.text()[-3000:]}", flush=True)
    return run_id, status


def _progress(rows_path: Path, reported: int, label: str, started: float) -> int:
    """Print the rounds ``rounds.json`` has gained; how many it has."""
    try:
        rows = [r for r in json.loads(rows_path.read_text()) if "seconds" in r]
    except (OSError, ValueError):
        return reported
    for row in rows[reported:]:
        print(f"  {label} round {int(row['round'])}: {row['seconds']:.1f}s (at "
              f"+{time.monotonic() - started:.0f}s, load {loadavg()[0]})", flush=True)
    return len(rows)


def node_lines(dep: Deployment, marks: list[int], rounds: int) -> list[list[tuple[float, str]]]:
    """Each node's lines since ``marks``; waits (up to 20 s) until every node has logged
    ``Sent successfully`` (or ``Failed to send message``) for every round."""
    deadline = time.monotonic() + 20
    while True:
        lines = [list(node.lines[mark:]) for node, mark in zip(dep.supernodes, marks,
                                                               strict=True)]
        ended = [sum(s.sent is not None for s in train_spans(nl))
                 + sum(SEND_FAILED in text for _, text in nl) for nl in lines]
        if min(ended) >= rounds or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def errors(dep: Deployment, marks: list[int]) -> dict[str, int]:
    """Counts of the failures seen in this run: the SuperLink's ``database is locked``
    errors (its SQLite state, 5 s busy timeout), the replies nodes failed to send and
    the SuperNodes that quit (one does on an HTTP 500 to its pull)."""
    link = sum(LOCKED in text for _, text in dep.superlink.lines[marks[0]:])
    nodes = sum(SEND_FAILED in text for node, mark in zip(dep.supernodes, marks[1:],
                                                          strict=True)
                for _, text in node.lines[mark:])
    exited = sum(node.popen.poll() is not None for node in dep.supernodes)
    return {"superlink-database-locked": link, "node-reply-send-failed": nodes,
            "supernodes-exited": exited}


def keep_logs(procs: list[StampedProcess], where: Path) -> None:
    """Every process's lines as ``EPOCH-STAMP TEXT``, one file per process."""
    where.mkdir(parents=True, exist_ok=True)
    for proc in procs:
        (where / f"{proc.name}.log").write_text(
            "".join(f"{stamp:.3f} {text}\n" for stamp, text in list(proc.lines)))


def one_run(files: list[Path], nodes: int, rounds: int, label: str,
            logs: Path | None = None, nice: int = 0) -> dict[str, Any]:
    """A fresh deployment of ``nodes`` SuperNodes (under ``nice -n NICE``) and one run of
    ``rounds`` rounds: its status, round rows, failures, start-up time and load (and, with
    ``logs``, every process's lines)."""
    t0 = time.monotonic()
    print(f"{label}: starting the SuperLink and {nodes} SuperNodes", flush=True)
    with loopback_deployment(files[:nodes], prefix="fedapp-deploy-scale-",
                             supernode_nice=nice) as dep:
        online_s = time.monotonic() - t0
        print(f"{label}: all {nodes} SuperNodes online after {online_s:.1f}s", flush=True)
        marks = [len(node.lines) for node in dep.supernodes]
        link_mark = len(dep.superlink.lines)
        load_before = loadavg()
        out = dep.workdir / "out"
        try:
            run_id, status = stream_run(dep, rounds, run_config(nodes, rounds, out), out,
                                        label, logs)
            history = _history(out / f"run-{run_id}" / "rounds.json")
            lines = node_lines(dep, marks, len(history))
        finally:
            if logs is not None:
                keep_logs([dep.superlink, *dep.supernodes], logs)
        rows = round_rows(lines, [float(row["seconds"]) for row in history])
        spans, failures = node_spans(lines), errors(dep, [link_mark, *marks])
    for row, server in zip(rows, history, strict=True):
        row["aggregation-s"] = server["aggregation-seconds"] + server["decode-seconds"]
        row["replies"], row["failures"] = server["replies"], server["failures"]
        _print_row(label, row)
    return {"nodes": nodes, "status": status, "online-s": round(online_s, 2),
            "load-avg-before": load_before, "load-avg-after": loadavg(),
            "errors": failures, "rounds": rows, "node-spans": spans}


def _history(path: Path) -> list[dict[str, Any]]:
    """The rounds ``rounds.json`` recorded (none if the run wrote none)."""
    if not path.is_file():
        return []
    return [row for row in json.loads(path.read_text()) if "seconds" in row]


def _print_row(label: str, row: dict[str, Any]) -> None:
    print(f"  {label} round {row['round']}: " + (
        f"round {row['round-s']:.2f}s, slowest node {row['slowest-node-s']:.2f}s, "
        f"overhead {row['overhead-s']:.2f}s, median node {row['median-node-s']:.2f}s"
        if "unfinished-nodes" not in row else
        f"round {row['round-s']:.2f}s, {row['unfinished-nodes']} node(s) unfinished, "
        f"{row['replies']} replies, not counted"), flush=True)


def node_spans(lines: list[list[tuple[float, str]]]) -> dict[str, Any]:
    """Every node's ``[receiving, sending, sent]`` per round, in seconds after the run's
    first ``Receiving`` (kept in the JSON for later analysis)."""
    spans = [train_spans(nl) for nl in lines]
    t0 = min((s[0].receiving for s in spans if s), default=0.0)

    def rel(v: float | None) -> float | None:
        return None if v is None else round(v - t0, 3)

    return {"t0-epoch": t0, "columns": ["receiving", "sending", "sent"],
            "nodes": [[[rel(x.receiving), rel(x.sending), rel(x.sent)] for x in s]
                      for s in spans]}
