"""Cold start of the ClientApp: what a fresh process costs per message in deployment.

A SuperNode starts a new ``flwr-clientapp`` process for every message, so each message
pays for the interpreter, Flower's and our imports, the hospital's data file and
Flower's own hand-offs again. The issue's target is a per-message cost within 1 s of the
*floor*: a bare ``flwr-clientapp --help`` process plus a ``python -c "import torch"``
process. This script measures, side by side in one run:

* fresh processes (wall and CPU time): ``floor-clientapp-help``
  (``flwr-clientapp --help``), ``floor-import-torch`` (``python -c "import torch"``),
  their per-repeat sum ``floor`` (paired samples), ``import-client-app``
  (``python -c "import fedapp.client_app"``) and ``clientapp-imports`` (Flower's
  ``flwr-clientapp`` module plus ``fedapp.client_app``: everything a ClientApp process
  imports);
* a real deployment on loopback: ``flower-superlink --insecure`` and one
  ``flower-supernode --insecure`` (a hospital reading the first file of the 3-hospital
  breast-cancer split, with ``FEDAPP_COLD_START_LOG=1``), driven by ``flwr run`` with
  ``--rounds`` train messages per run. From the SuperNode's log lines (stamped with the
  wall clock when read) and the ClientApp's cold-start lines (epoch stamps of its process
  start, handler entry and return) each message is split into

  - ``per-message``: SuperNode ``Receiving: train message`` -> ``Sending: train message``,
    the SuperNode's whole time on the message (the issue's per-message cost);
    ``received->sent`` starts at ``Received successfully`` instead, as the deployment
    test does (the SuperNode creates the task, and SuperExec may start the ClientApp,
    before it has pulled the message's arrays and logs that line);
  - ``receiving->process-start``: until the ``flwr-clientapp`` process exists
    (SuperExec's task poll, ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, 1 s by default);
  - ``process-start->handler``: interpreter, imports, pulling the message and FAB,
    FAB check, loading the app (``FEDAPP_COLD_START_LOG``'s "handler entered" age);
  - ``handler``: our train handler (local data, training), mods excluded;
  - ``handler->sent``: the reply's push, the SuperNode's reply poll (0.5 s) and its
    ``Sending`` line.

The blocks alternate: each repeat runs every process case once, then one ``flwr run`` of
``--rounds`` rounds, so load from elsewhere on the machine drifts over both alike. A
1-round warm-up run first fills the data cache and Flower's app install; it is reported
apart (``first-message``) and not counted. With ``--flwr-debug`` the SuperNode (and so
its ClientApps) log at DEBUG and ``process-start->handler`` is split further at Flower's
``Start FAB installation`` and ``Start `ClientApp` Loading`` lines.

    python benchmarks/cold_start.py [--repeats 4] [--rounds 3] [--poll-interval S]
        [--flwr-debug] [--src DIR] [--local-cases] [--out benchmarks/results/cold_start.json]
        [--markdown FILE]

``--src DIR`` runs another checkout of the app (e.g. ``git archive`` of an older commit):
its ``fedapp`` is imported by the process cases and ``flwr run DIR`` deploys it, so
before/after comparisons use the same script. ``--local-cases`` adds the older in-process
cases (hospital file load with the cache off / warm, one TRAIN message through the
ClientApp object without Flower's runtime). ``--markdown FILE`` writes the summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _superlink import REPO, Deployment, loopback_deployment  # benchmarks/ is on sys.path

BIN = Path(sys.executable).parent
HEAVY = ("pandas", "pyarrow", "sklearn", "scipy", "mlflow", "hydra", "matplotlib", "opacus",
         "datasets", "flwr_datasets", "ray")

# Child programs: each prints one JSON line with its in-process timings.
LOAD_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from fedapp.data import DATASET_SPECS
from fedapp.data.local import load_table
t1 = time.perf_counter()
split = load_table(sys.argv[1], "label", DATASET_SPECS["breast-cancer"])
t2 = time.perf_counter()
heavy = [m for m in sys.argv[2].split(",") if m in sys.modules]
print(json.dumps({"import-s": t1 - t0, "load-s": t2 - t1, "rows": len(split), "heavy": heavy}))
"""

TRAIN_CHILD = """
import json, os, sys, time
from pathlib import Path

def process_age():  # seconds since this process started (Linux)
    stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")

import fedapp.client_app as ca
import fedapp.data.local as local
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from fedapp import task
from fedapp.config import RunConfig
from fedapp.data import DATASET_SPECS

timings = {}
load_table = local.load_table
def timed_load(*args, **kwargs):
    t = time.perf_counter()
    try:
        return load_table(*args, **kwargs)
    finally:
        timings["load-s"] = time.perf_counter() - t
local.load_table = timed_load

TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1  # as flwr-clientapp sets
cfg = RunConfig(dataset="breast-cancer", tracking=False)
model = task.build_model(cfg.model, DATASET_SPECS["breast-cancer"], cfg.hidden_units)
content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                      "config": ConfigRecord({"server-round": 1})})
msg = Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)
ctx = Context(run_id=1, node_id=1, node_config={"data-path": sys.argv[1]},
              state=RecordDict(), run_config=cfg.to_flower())
entered = process_age()
t = time.perf_counter()
reply = ca.app(msg, ctx)
handler_s = time.perf_counter() - t
assert not reply.has_error(), reply.error
heavy = [m for m in sys.argv[2].split(",") if m in sys.modules]
print(json.dumps({"handler-entered-age-s": entered, "handler-s": handler_s,
                  "load-s": timings["load-s"], "heavy": heavy}))
"""


def child_env(cache: str, src: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(src)] if src else []
    paths.append(str(REPO))
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["FEDAPP_DATA_CACHE"] = cache
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    return env


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, float, dict[str, Any]]:
    """Run a fresh process; returns its wall time, its CPU time (user + system) and the
    JSON it printed (if any). CPU time is far less sensitive than wall time to other
    load on the machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False,
                            cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    return wall, cpu, (json.loads(lines[-1]) if lines else {})


@dataclass
class Case:
    name: str
    argv: list[str]
    env: dict[str, str]
    samples: list[tuple[float, float, dict[str, Any]]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        walls = [w for w, _, _ in self.samples]
        cpus = [c for _, c, _ in self.samples]
        row: dict[str, Any] = {
            "name": self.name,
            "process-wall-s (median)": statistics.median(walls),
            "process-cpu-s (median)": statistics.median(cpus),
            "samples-wall-s": [round(w, 4) for w in walls],
            "samples-cpu-s": [round(c, 4) for c in cpus],
        }
        reported = [d for _, _, d in self.samples if d]
        for key in sorted(reported[0]) if reported else []:
            values = [d[key] for d in reported]
            if all(isinstance(v, int | float) for v in values):
                row[f"{key} (median)"] = statistics.median(values)
            else:
                row[key] = values[-1]
        return row


def run_round_robin(cases: list[Case]) -> None:
    """One sample of every case, in order."""
    for case in cases:
        case.samples.append(run_child(case.argv, case.env))


def print_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(f"{row['name']:26s} " + "  ".join(
            f"{k.removesuffix(' (median)')} {v:.3f}" for k, v in row.items()
            if k.endswith("(median)")), flush=True)


def write_data(root: Path, large_rows: int | None) -> tuple[Path, Path | None]:
    """The 3-hospital breast-cancer split's first file, and (if asked) a larger copy."""
    from fedapp.data.__main__ import split

    small = split("breast-cancer", 3, root / "split", "csv", "iid", 0.5, 2, 0.2, 42)[0]
    large = None
    if large_rows:
        import numpy as np
        import pandas as pd

        df = pd.read_csv(small)
        rng = np.random.default_rng(0)
        large = root / "large.csv"
        df.iloc[rng.integers(0, len(df), large_rows)].to_csv(large, index=False)
    past = time.time() - 60  # the cache only keeps files left unmodified for a while
    for path in (small, large):
        if path is not None:
            os.utime(path, (past, past))
    return small, large


# ------------------------------------------------------------------ the deployment part

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


def parse_messages(lines: list[tuple[float, str]]) -> list[dict[str, float]]:
    """Per train message, the stages (seconds) named in ``STAGES`` that one SuperNode's
    stamped log lines allow (it handles one message at a time)."""
    out: list[dict[str, float]] = []
    cur: dict[str, float] = {}
    for stamp, text in lines:
        if m := RECEIVING.search(text):
            cur = {"receiving": stamp} if m.group(1) == "train" else {}
        elif not cur:
            continue
        elif RECEIVED in text:
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
        elif SENDING.search(text):
            row = {"per-message": stamp - cur["receiving"]}
            if "received" in cur:
                row["received->sent"] = stamp - cur["received"]
            if "age" in cur:
                row["process-start->handler"] = cur["age"]
                row["local-data"] = cur["local-data"]
            if "process-start" in cur:
                row["receiving->process-start"] = cur["process-start"] - cur["receiving"]
                if "returned" in cur:
                    row["handler"] = cur["returned"] - cur["entered"]
                    row["handler->sent"] = stamp - cur["returned"]
                if {"fab-install", "app-loading"} <= cur.keys():
                    row["process-start->fab-install"] = cur["fab-install"] - cur["process-start"]
                    row["fab-install->app-loading"] = cur["app-loading"] - cur["fab-install"]
                    row["app-loading->handler"] = cur["entered"] - cur["app-loading"]
            out.append(row)
            cur = {}
    return out


def deploy_run(dep: Deployment, app: Path, rounds: int) -> list[dict[str, float]]:
    """One ``flwr run`` of ``rounds`` train rounds on the single SuperNode; returns its
    messages' stages. Fails if the run does not complete."""
    first_line = len(dep.supernode.lines)
    out_dir = dep.workdir / "out"
    config = (f"num-server-rounds={rounds} dataset='breast-cancer' min-train-nodes=1 "
              f"min-available-nodes=1 fraction-evaluate=0.0 tracking=false "
              f"registered-model='off' output-dir='{out_dir}'")
    result = dep.flwr("run", str(app), dep.connection, "--stream", "--run-config", config)
    if result.returncode != 0:
        raise RuntimeError(f"flwr run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    match = re.search(r"Successfully started run (\d+)", result.stdout + result.stderr)
    if match is None:
        raise RuntimeError(f"no run ID in:\n{result.stdout[-3000:]}")
    status = ""
    for _ in range(60):
        listed = dep.flwr("list", dep.connection, "--run-id", match.group(1), "--format", "json")
        runs = json.loads(listed.stdout[listed.stdout.index("{"):]).get("runs", [])
        status = str(runs[0]["status"]) if runs else ""
        if status.startswith("finished"):
            break
        time.sleep(1)
    if status != "finished:completed":
        raise RuntimeError(f"run {match.group(1)} ended {status!r}:\n{result.stdout[-3000:]}\n"
                           f"SuperNode:\n{dep.supernode.text()[-3000:]}")
    time.sleep(0.5)  # the SuperNode's "Sending" line of the last reply
    messages = parse_messages(dep.supernode.lines[first_line:])
    if len(messages) != rounds:
        raise RuntimeError(f"expected {rounds} train messages, parsed {len(messages)}:\n"
                           + "\n".join(t for _, t in dep.supernode.lines[first_line:])[-4000:])
    return messages


def stage_medians(messages: list[dict[str, float]]) -> dict[str, Any]:
    row: dict[str, Any] = {"n": len(messages)}
    for stage in STAGES:
        values = [m[stage] for m in messages if stage in m]
        if values:
            row[stage] = {"median": statistics.median(values), "min": min(values),
                          "max": max(values), "samples": [round(v, 3) for v in values]}
    return row


def markdown_table(result: dict[str, Any]) -> str:
    """The summary as a markdown table (medians, seconds)."""
    proc = {r["name"]: r for r in result["processes"]}
    dep = result.get("deployment", {}).get("messages", {})
    floor = result["floor-s"]

    def p(name: str) -> str:
        r = proc[name]
        return f"{r['process-wall-s (median)']:.2f} | {r['process-cpu-s (median)']:.2f}"

    lines = ["| what (fresh process per sample) | wall s | CPU s |", "|---|---:|---:|",
             f"| `flwr-clientapp --help` | {p('floor-clientapp-help')} |",
             f"| `python -c \"import torch\"` | {p('floor-import-torch')} |",
             f"| **floor** (sum of the two, paired) | **{floor:.2f}** | "
             f"{result['floor-cpu-s']:.2f} |",
             f"| `python -c \"import fedapp.client_app\"` | {p('import-client-app')} |",
             f"| `flwr-clientapp` module + `fedapp.client_app` | {p('clientapp-imports')} |"]
    if dep:
        lines += ["", "| per train message in deployment (n={}) | median s | min s | max s |"
                  .format(dep["n"]), "|---|---:|---:|---:|"]
        for stage in STAGES:
            if stage in dep:
                v = dep[stage]
                name = "**per-message (SuperNode receiving -> sending)**" \
                    if stage == "per-message" else stage
                lines.append(f"| {name} | {v['median']:.2f} | {v['min']:.2f} | "
                             f"{v['max']:.2f} |")
        lines += ["", f"Gap to the floor: per-message {result['gap-per-message-s']:+.2f} s; "
                  f"process start -> handler entered {result['gap-handler-entered-s']:+.2f} s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="train messages per flwr run")
    parser.add_argument("--poll-interval", type=float, default=None,
                        help="FLWR_SUPEREXEC_TASK_POLL_INTERVAL for the SuperNode's SuperExec "
                        "(seconds; Flower's default 1.0 when not given)")
    parser.add_argument("--flwr-debug", action="store_true",
                        help="FLWR_LOG_LEVEL=DEBUG on the SuperNode: finer stages")
    parser.add_argument("--no-deployment", action="store_true")
    parser.add_argument("--local-cases", action="store_true")
    parser.add_argument("--large-rows", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/cold_start.json")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--src", type=Path, default=None,
                        help="a source tree to import and deploy fedapp from instead of this "
                        "checkout")
    args = parser.parse_args(argv)
    py, heavy = sys.executable, ",".join(HEAVY)
    app = (args.src or REPO).resolve()
    load_before = os.getloadavg()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fedapp-cold-start-") as tmp:
        root = Path(tmp)
        small, large = write_data(root, args.large_rows if args.local_cases else None)
        cache = str(root / "cache")
        off, warm = child_env("off", args.src), child_env(cache, args.src)
        cases = [
            Case("floor-clientapp-help", [str(BIN / "flwr-clientapp"), "--help"], off),
            Case("floor-import-torch", [py, "-c", "import torch"], off),
            Case("import-client-app", [py, "-c", "import fedapp.client_app"], off),
            Case("clientapp-imports", [py, "-c", "import flwr.supernode.cli.flwr_clientapp, "
                                       "flwr.supernode.runtime.run_clientapp, "
                                       "fedapp.client_app"], off),
        ]
        if args.local_cases:
            assert large is not None
            for path in (small, large):  # fill the cache for the "warm" cases
                run_child([py, "-c", LOAD_CHILD, str(path), heavy], warm)
            for size, path in (("small", small), ("large", large)):
                for label, env in (("cache-off", off), ("cache-warm", warm)):
                    cases.append(Case(f"load-{size}-{label}",
                                      [py, "-c", LOAD_CHILD, str(path), heavy], env))
            for label, env in (("cache-off", off), ("cache-warm", warm)):
                cases.append(Case(f"train-message-{label}",
                                  [py, "-c", TRAIN_CHILD, str(small), heavy], env))
        messages: list[dict[str, float]] = []
        first: list[dict[str, float]] = []
        node_env = {}
        if args.poll_interval is not None:
            node_env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(args.poll_interval)
        if args.flwr_debug:
            node_env["FLWR_LOG_LEVEL"] = "DEBUG"
        if args.no_deployment:
            for _ in range(args.repeats):
                run_round_robin(cases)
        else:
            with loopback_deployment(small, node_env) as dep:
                first = deploy_run(dep, app, 1)  # fills the data cache and the app install
                print(f"warm-up message: {first[0]['per-message']:.2f}s", flush=True)
                for r in range(args.repeats):
                    run_round_robin(cases)
                    got = deploy_run(dep, app, args.rounds)
                    messages += got
                    print(f"repeat {r + 1}/{args.repeats}: per-message " + ", ".join(
                        f"{m['per-message']:.2f}s" for m in got) + f"; load {os.getloadavg()}",
                        flush=True)
        rows = [case.row() for case in cases]
    print_rows(rows)
    help_case, torch_case = cases[0], cases[1]
    floor_walls = [a[0] + b[0] for a, b in zip(help_case.samples, torch_case.samples,
                                               strict=True)]
    floor_cpus = [a[1] + b[1] for a, b in zip(help_case.samples, torch_case.samples,
                                              strict=True)]
    result: dict[str, Any] = {
        "command": "python benchmarks/cold_start.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 1),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "load-avg-before": load_before,
                    "load-avg-after": os.getloadavg()},
        "src": str(app), "repeats": args.repeats, "rounds": args.rounds,
        "supernode-env": node_env,
        "floor-s": statistics.median(floor_walls),
        "floor-cpu-s": statistics.median(floor_cpus),
        "floor-samples-s": [round(w, 3) for w in floor_walls],
        "processes": rows,
    }
    if messages:
        summary = stage_medians(messages)
        result["deployment"] = {
            "setup": "flower-superlink --insecure + 1 flower-supernode --insecure on "
                     "loopback; flwr run with fraction-evaluate=0 (train messages only)",
            "first-message": first[0] if first else None,
            "messages": summary,
        }
        result["gap-per-message-s"] = summary["per-message"]["median"] - result["floor-s"]
        result["gap-handler-entered-s"] = (summary["process-start->handler"]["median"]
                                           - result["floor-s"])
        print(f"floor {result['floor-s']:.2f}s; per-message "
              f"{summary['per-message']['median']:.2f}s (gap {result['gap-per-message-s']:+.2f}s)"
              f"; process start -> handler {summary['process-start->handler']['median']:.2f}s "
              f"(gap {result['gap-handler-entered-s']:+.2f}s)")
    result["table-md"] = markdown_table(result)
    print(result["table-md"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(result["table-md"] + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
