"""Cold start of the ClientApp: what a fresh process costs per message in deployment.

A SuperNode starts a new ``flwr-clientapp`` process for every message, so each message
pays for the interpreter, Flower's and our imports, the hospital's data file and
Flower's own hand-offs again. The issue's target is a per-message cost within 1 s of the
*floor*: a bare ``flwr-clientapp --help`` process plus a ``python -c "import torch"``
process. This script measures, side by side in one run:

* fresh processes (wall and CPU time; ``cold_start_processes.py``):
  ``floor-clientapp-help`` (``flwr-clientapp --help``), ``floor-import-torch``
  (``python -c "import torch"``), their per-repeat sum ``floor`` (paired samples),
  ``import-client-app`` (``python -c "import fedapp.client_app"``) and
  ``clientapp-imports`` (Flower's ``flwr-clientapp`` module plus ``fedapp.client_app``:
  everything a ClientApp process imports);
* a real deployment on loopback (``cold_start_deployment.py``): ``flower-superlink
  --insecure`` and one ``flower-supernode --insecure`` (a hospital reading the first file
  of the 3-hospital breast-cancer split, with ``FEDAPP_COLD_START_LOG=1``), driven by
  ``flwr run`` with ``--rounds`` train messages per run. From the SuperNode's log lines
  (stamped with the wall clock when read) and the ClientApp's cold-start lines (epoch
  stamps of its process start, handler entry and return) each message is split into

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
    python benchmarks/cold_start.py --repeats 1 --no-deployment --out /tmp/cs.json  # smoke

``--src DIR`` runs another checkout of the app (e.g. ``git archive`` of an older commit):
its ``fedapp`` is imported by the process cases and ``flwr run DIR`` deploys it, so
before/after comparisons use the same script. ``--local-cases`` adds the older in-process
cases (hospital file load with the cache off / warm, one TRAIN message through the
ClientApp object without Flower's runtime; its ``load-s`` is the handler's own
"local data loaded" cold-start line). ``--markdown FILE`` writes the summary table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from _superlink import loopback_deployment  # benchmarks/ is on sys.path
from cold_start_deployment import STAGES, deploy_run, node_env, stage_medians
from cold_start_processes import floor_samples, process_cases, process_row
from common import REPO, command_line, interleave, loadavg, machine, md_table, write_json

DEPLOYMENT = "deployment"  # the interleaved case that is one `flwr run`


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="train messages per flwr run")
    p.add_argument("--poll-interval", type=float, default=None,
                   help="FLWR_SUPEREXEC_TASK_POLL_INTERVAL for the SuperNode's SuperExec "
                   "(seconds; Flower's default 1.0 when not given)")
    p.add_argument("--flwr-debug", action="store_true",
                   help="FLWR_LOG_LEVEL=DEBUG on the SuperNode: finer stages")
    p.add_argument("--no-deployment", action="store_true")
    p.add_argument("--local-cases", action="store_true")
    p.add_argument("--large-rows", type=int, default=50_000)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/cold_start.json")
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--src", type=Path, default=None,
                   help="a source tree to import and deploy fedapp from instead of this checkout")
    return p


def measure(args: argparse.Namespace, app: Path, env: dict[str, str],
            ) -> tuple[dict[str, list[Any]], list[dict[str, float]], list[dict[str, float]]]:
    """Samples of every process case, the counted deployment messages and the warm-up
    run's message, all in one temporary directory."""
    with tempfile.TemporaryDirectory(prefix="fedapp-cold-start-") as tmp:
        small, cases = process_cases(Path(tmp), args.src, args.local_cases, args.large_rows)
        if args.no_deployment:
            return interleave(cases, args.repeats), [], []
        with loopback_deployment(small, env) as dep:
            first = deploy_run(dep, app, 1)  # fills the data cache and the app install
            print(f"warm-up message: {first[0]['per-message']:.2f}s", flush=True)
            runs: dict[str, Callable[[], Any]] = {
                **cases, DEPLOYMENT: partial(deploy_run, dep, app, args.rounds)}
            samples = interleave(runs, args.repeats, partial(_progress, args.repeats))
    messages = [m for run in samples.pop(DEPLOYMENT) for m in run]
    return samples, messages, first


def _progress(repeats: int, r: int, this: dict[str, Any]) -> None:
    print(f"repeat {r + 1}/{repeats}: per-message " + ", ".join(
        f"{m['per-message']:.2f}s" for m in this[DEPLOYMENT]) + f"; load {os.getloadavg()}",
        flush=True)


def print_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(f"{row['name']:26s} " + "  ".join(
            f"{k.removesuffix(' (median)')} {v:.3f}" for k, v in row.items()
            if k.endswith("(median)")), flush=True)


def deployment_result(result: dict[str, Any], messages: list[dict[str, float]],
                      first: list[dict[str, float]]) -> None:
    """Add the deployment's stages and the gaps to the floor to ``result``."""
    summary = stage_medians(messages)
    result["deployment"] = {
        "setup": "flower-superlink --insecure + 1 flower-supernode --insecure on "
                 "loopback; flwr run with fraction-evaluate=0 (train messages only)",
        "first-message": first[0] if first else None,
        "messages": summary,
    }
    per_message = summary["per-message"]["median"]
    to_handler = summary["process-start->handler"]["median"]
    result["gap-per-message-s"] = per_message - result["floor-s"]
    result["gap-handler-entered-s"] = to_handler - result["floor-s"]
    print(f"floor {result['floor-s']:.2f}s; per-message {per_message:.2f}s "
          f"(gap {result['gap-per-message-s']:+.2f}s); process start -> handler "
          f"{to_handler:.2f}s (gap {result['gap-handler-entered-s']:+.2f}s)")


def process_table(result: dict[str, Any]) -> list[str]:
    proc = {r["name"]: r for r in result["processes"]}

    def p(name: str) -> str:
        r = proc[name]
        return f"{r['process-wall-s (median)']:.2f} | {r['process-cpu-s (median)']:.2f}"

    return md_table(["what (fresh process per sample)", "wall s", "CPU s"], [
        ["`flwr-clientapp --help`", p("floor-clientapp-help")],
        ['`python -c "import torch"`', p("floor-import-torch")],
        ["**floor** (sum of the two, paired)", f"**{result['floor-s']:.2f}**",
         f"{result['floor-cpu-s']:.2f}"],
        ['`python -c "import fedapp.client_app"`', p("import-client-app")],
        ["`flwr-clientapp` module + `fedapp.client_app`", p("clientapp-imports")],
    ], numeric=True)


def deployment_table(result: dict[str, Any]) -> list[str]:
    dep = result["deployment"]["messages"]
    rows = [["**per-message (SuperNode receiving -> sending)**" if stage == "per-message"
             else stage, f"{dep[stage]['median']:.2f}", f"{dep[stage]['min']:.2f}",
             f"{dep[stage]['max']:.2f}"] for stage in STAGES if stage in dep]
    return ["", *md_table([f"per train message in deployment (n={dep['n']})", "median s",
                           "min s", "max s"], rows, numeric=True),
            "", f"Gap to the floor: per-message {result['gap-per-message-s']:+.2f} s; "
            f"process start -> handler entered {result['gap-handler-entered-s']:+.2f} s."]


def markdown_table(result: dict[str, Any]) -> str:
    """The summary as a markdown table (medians, seconds)."""
    lines = process_table(result)
    if result.get("deployment", {}).get("messages"):
        lines += deployment_table(result)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    app = (args.src or REPO).resolve()
    env = node_env(args.poll_interval, args.flwr_debug)
    load_before, started = loadavg(None), time.time()
    samples, messages, first = measure(args, app, env)
    rows = [process_row(name, s) for name, s in samples.items()]
    print_rows(rows)
    floor_walls, floor_cpus = floor_samples(samples)
    result: dict[str, Any] = {
        "command": command_line("cold_start.py", argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 1),
        "machine": {**machine(), "load-avg-before": load_before,
                    "load-avg-after": loadavg(None)},
        "src": str(app), "repeats": args.repeats, "rounds": args.rounds,
        "supernode-env": env,
        "floor-s": statistics.median(floor_walls),
        "floor-cpu-s": statistics.median(floor_cpus),
        "floor-samples-s": [round(w, 3) for w in floor_walls],
        "processes": rows,
    }
    if messages:
        deployment_result(result, messages, first)
    result["table-md"] = markdown_table(result)
    print(result["table-md"])
    write_json(args.out, result)
    if args.markdown:
        args.markdown.write_text(result["table-md"] + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
