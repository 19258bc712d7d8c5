"""Fresh-process cases of ``cold_start.py``: each sample is one new Python process.

A case is a command line and an environment; :func:`run_child` runs it once and returns
its wall time, its CPU time (user + system, far less sensitive than wall time to other
load on the machine) and the JSON line it printed, if any. The floor cases, the import
cases and (with ``--local-cases``) the in-process data-load and TRAIN-message cases are
built by :func:`process_cases`.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from common import REPO

BIN = Path(sys.executable).parent
HEAVY = ("pandas", "pyarrow", "sklearn", "scipy", "mlflow", "hydra", "matplotlib", "opacus",
         "datasets", "flwr_datasets", "ray")

Sample = tuple[float, float, dict[str, Any]]  # wall s, CPU s, the JSON the child printed

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

# One TRAIN message through the ClientApp object, without Flower's runtime. The local
# data's load time is the handler's own cold-start line (FEDAPP_COLD_START_LOG=1, the
# line the deployment part reads too), kept by a logging handler on Flower's logger.
TRAIN_CHILD = """
import json, logging, os, re, sys, time
from pathlib import Path

def process_age():  # seconds since this process started (Linux)
    stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")

import fedapp.client_app as ca
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.logger import LOGGER_NAME
from flwr.supercore.task_identity import TaskIdentity
from fedapp import task
from fedapp.config import RunConfig
from fedapp.data import DATASET_SPECS

class Kept(logging.Handler):
    lines = []
    def emit(self, record):
        self.lines.append(record.getMessage())

logging.getLogger(LOGGER_NAME).addHandler(Kept())
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
out = {"handler-entered-age-s": entered, "handler-s": handler_s, "heavy": heavy}
loaded = [m for line in Kept.lines if (m := re.search(r"local data loaded in ([0-9.]+)s", line))]
if loaded:
    out["load-s"] = float(loaded[-1].group(1))
print(json.dumps(out))
"""


def child_env(cache: str, src: Path | None) -> dict[str, str]:
    """The environment of a case: ``src``'s fedapp (if given) before this checkout's,
    ``FEDAPP_DATA_CACHE=cache``, telemetry off."""
    env = dict(os.environ)
    paths = [str(src)] if src else []
    paths.append(str(REPO))
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["FEDAPP_DATA_CACHE"] = cache
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    return env


def run_child(argv: list[str], env: dict[str, str]) -> Sample:
    """Run a fresh process; its wall time, its CPU time (user + system) and the JSON it
    printed last (``{}`` if none)."""
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


def process_row(name: str, samples: list[Sample]) -> dict[str, Any]:
    """A case's row in the results: medians of wall and CPU time and of every number its
    child reported (other values: the last one), plus the samples."""
    walls = [w for w, _, _ in samples]
    cpus = [c for _, c, _ in samples]
    row: dict[str, Any] = {
        "name": name,
        "process-wall-s (median)": statistics.median(walls),
        "process-cpu-s (median)": statistics.median(cpus),
        "samples-wall-s": [round(w, 4) for w in walls],
        "samples-cpu-s": [round(c, 4) for c in cpus],
    }
    reported = [d for _, _, d in samples if d]
    for key in sorted(reported[0]) if reported else []:
        values = [d[key] for d in reported if key in d]
        if all(isinstance(v, int | float) for v in values):
            row[f"{key} (median)"] = statistics.median(values)
        else:
            row[key] = values[-1]
    return row


def floor_samples(samples: dict[str, list[Sample]]) -> tuple[list[float], list[float]]:
    """Per repeat, the floor's wall and CPU time: ``flwr-clientapp --help`` plus
    ``import torch`` of the same repeat (paired samples)."""
    pairs = list(zip(samples["floor-clientapp-help"], samples["floor-import-torch"],
                     strict=True))
    return [a[0] + b[0] for a, b in pairs], [a[1] + b[1] for a, b in pairs]


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


def process_cases(root: Path, src: Path | None, local_cases: bool, large_rows: int,
                  ) -> tuple[Path, dict[str, Callable[[], Sample]]]:
    """The hospital file for the deployment, and the process cases by name, in the
    order they run: floor, imports, then (``local_cases``) data loads and TRAIN messages
    with the cache off and warm (the warm cache is filled here)."""
    small, large = write_data(root, large_rows if local_cases else None)
    py, heavy = sys.executable, ",".join(HEAVY)
    off, warm = child_env("off", src), child_env(str(root / "cache"), src)
    argvs: dict[str, tuple[list[str], dict[str, str]]] = {
        "floor-clientapp-help": ([str(BIN / "flwr-clientapp"), "--help"], off),
        "floor-import-torch": ([py, "-c", "import torch"], off),
        "import-client-app": ([py, "-c", "import fedapp.client_app"], off),
        "clientapp-imports": ([py, "-c", "import flwr.supernode.cli.flwr_clientapp, "
                               "flwr.supernode.runtime.run_clientapp, fedapp.client_app"], off),
    }
    if local_cases:
        assert large is not None
        for path in (small, large):  # fill the cache for the "warm" cases
            run_child([py, "-c", LOAD_CHILD, str(path), heavy], warm)
        caches = (("cache-off", off), ("cache-warm", warm))
        for size, path in (("small", small), ("large", large)):
            for label, env in caches:
                argvs[f"load-{size}-{label}"] = ([py, "-c", LOAD_CHILD, str(path), heavy], env)
        for label, env in caches:
            argvs[f"train-message-{label}"] = (
                [py, "-c", TRAIN_CHILD, str(small), heavy], {**env, "FEDAPP_COLD_START_LOG": "1"})
    return small, {name: partial(run_child, argv, env) for name, (argv, env) in argvs.items()}
