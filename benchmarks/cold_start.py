"""Cold start of the ClientApp: what a fresh process pays per message in deployment.

A SuperNode starts a new ``flwr-clientapp`` process for every message, so each
message pays for the interpreter, the imports and the hospital's data file again.
This script measures, each in a fresh ``python`` process and as the median of
``--repeats`` runs:

* ``interpreter``: ``python -c pass`` (the floor);
* ``import-client-app``: ``import fedapp.client_app``;
* ``load-<size>-<cache>``: reading a hospital CSV with ``fedapp.data.local.load_table``,
  with the cache off (the file is parsed with pandas, as before the cache existed)
  or warm (the ``.npz`` cache entry is read with numpy alone), for the 3-hospital
  breast-cancer split (``small``, ~150 rows) and a synthetic ``large`` file;
* ``train-message-<cache>``: one TRAIN message through the real ClientApp
  (``fedapp.client_app.app(message, context)``, mods included) on the small file:
  the process age when the handler is entered, the data load inside the handler,
  the whole handler, and the process wall time.

Each case records the child's wall time and CPU time (user + system; much less
sensitive to other load on a shared machine), and the cases run round-robin.

It also records which heavy libraries (pandas, sklearn, mlflow, ...) each child had
imported. Flower's own transport (SuperNode polling, ``flwr-clientapp`` start-up)
is not included: the deployment test reports that per message.

    python benchmarks/cold_start.py [--repeats 5] [--large-rows 50000]
        [--out benchmarks/results/cold_start.json] [--src DIR]

``--src DIR`` puts another checkout of the package first on ``PYTHONPATH`` (e.g. an
export of an older commit) to compare before/after with the same script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
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


def run_cases(cases: list[Case], repeats: int) -> list[dict[str, Any]]:
    """Run every case ``repeats`` times, round-robin, so that load from elsewhere on the
    machine drifts over all cases alike; returns one row of medians per case."""
    for _ in range(repeats):
        for case in cases:
            case.samples.append(run_child(case.argv, case.env))
    rows = [case.row() for case in cases]
    for row in rows:
        print(f"{row['name']:26s} " + "  ".join(
            f"{k.removesuffix(' (median)')} {v:.3f}" for k, v in row.items()
            if k.endswith("(median)")), flush=True)
    return rows


def write_data(root: Path, large_rows: int) -> tuple[Path, Path]:
    """The 3-hospital breast-cancer split's first file, and a larger resampled copy."""
    import numpy as np
    import pandas as pd

    from fedapp.data.__main__ import split

    small = split("breast-cancer", 3, root / "split", "csv", "iid", 0.5, 2, 0.2, 42)[0]
    df = pd.read_csv(small)
    rng = np.random.default_rng(0)
    large = root / "large.csv"
    df.iloc[rng.integers(0, len(df), large_rows)].to_csv(large, index=False)
    past = time.time() - 60  # the cache only keeps files left unmodified for a while
    for path in (small, large):
        os.utime(path, (past, past))
    return small, large


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--large-rows", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/cold_start.json")
    parser.add_argument("--src", type=Path, default=None,
                        help="a source tree to import fedapp from instead of this checkout")
    args = parser.parse_args(argv)
    py, heavy = sys.executable, ",".join(HEAVY)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fedapp-cold-start-") as tmp:
        root = Path(tmp)
        small, large = write_data(root, args.large_rows)
        cache = str(root / "cache")
        off, warm = child_env("off", args.src), child_env(cache, args.src)
        for path in (small, large):  # fill the cache for the "warm" cases
            run_child([py, "-c", LOAD_CHILD, str(path), heavy], warm)
        cases = [
            Case("interpreter", [py, "-c", "pass"], off),
            Case("import-client-app", [py, "-c", "import fedapp.client_app"], off),
        ]
        for size, path in (("small", small), ("large", large)):
            for label, env in (("cache-off", off), ("cache-warm", warm)):
                cases.append(Case(f"load-{size}-{label}", [py, "-c", LOAD_CHILD, str(path),
                                                          heavy], env))
        for label, env in (("cache-off", off), ("cache-warm", warm)):
            cases.append(Case(f"train-message-{label}", [py, "-c", TRAIN_CHILD, str(small),
                                                          heavy], env))
        rows = run_cases(cases, args.repeats)
    result = {
        "command": "python benchmarks/cold_start.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "load-avg-before": load_before,
                    "load-avg-after": os.getloadavg()},
        "src": str(args.src or REPO), "repeats": args.repeats, "large-rows": args.large_rows,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
