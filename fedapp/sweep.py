"""``python -m fedapp.sweep``: one Flower run per Hydra job, checked and recorded.

Without ``-m`` it submits one run; with ``-m aggregator=krum,median attack=alie,none``
Hydra's launcher calls ``main`` once per combination. Each job:

1. maps the composed config to Flower's flat run config (``to_run_config``) and
   validates it with ``RunConfig`` before anything is submitted;
2. submits a real Flower run with the public CLI (``flwr run APP [CONNECTION]
   --run-config ... --federation-config ...``), runtime dependency installation
   disabled (works offline);
3. waits, showing a progress bar of the run's rounds, and fails the job with the
   run's last log lines when the run did not end ``finished:completed``
   (``flwr run`` itself exits 0 either way);
4. records ``result.json`` in the job's directory (run id, status, final and best
   accuracy, wall time of the job and of the Flower run) and returns the final
   accuracy (so Hydra sweepers can optimise it).

MLflow: a multirun opens one parent run; every job's ServerApp logs a child run
(``parent-run-id``) into the same store, by default ``mlflow.db`` in the directory
the sweep was started from.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedapp import runner
from fedapp.config import RunConfig

APP_DIR = Path(__file__).resolve().parents[1]
ROUND_LINE = re.compile(r"\[fedapp\] round (\d+)/(\d+): acc ([0-9.]+)")
_PARENT: dict[str, str] = {}  # sweep dir -> parent MLflow run id (one per multirun)


def to_run_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed Hydra config's ``run`` section: Flower's flat run config."""
    return dict(OmegaConf.to_container(cfg.run, resolve=True))  # type: ignore[arg-type]


def federation_config(cfg: DictConfig) -> str | None:
    """``federation`` as the ``k=v`` string of ``flwr run --federation-config``."""
    fed = cfg.get("federation")
    if not fed:
        return None
    items = OmegaConf.to_container(fed).items()  # type: ignore[union-attr]
    return " ".join(f"{k}={v}" for k, v in items)


def count_jobs(task_overrides: list[str]) -> int:
    """Number of jobs a multirun's overrides expand to (product of sweep lengths)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    total = 1
    for override in OverridesParser.create().parse_overrides(task_overrides):
        if override.is_sweep_override():
            total *= sum(1 for _ in override.sweep_string_iterator())
    return total


def _tracking_defaults(run_config: dict[str, Any], start_dir: Path) -> None:
    """Runs of one sweep share one MLflow store: ``<start dir>/mlflow.db`` unless set.
    The ServerApp runs in the SuperLink's process, so the URI travels in the run config."""
    if run_config["tracking"] and not run_config["tracking-uri"]:
        run_config["tracking-uri"] = os.environ.get(
            "MLFLOW_TRACKING_URI", f"sqlite:///{start_dir / 'mlflow.db'}")


def _parent_run(run_config: dict[str, Any], hydra_cfg: Any) -> str | None:
    """The multirun's parent MLflow run id (created by the first job)."""
    if hydra_cfg.mode != RunMode.MULTIRUN or not run_config["tracking"]:
        return None
    sweep_dir = str(Path(hydra_cfg.sweep.dir).resolve())
    if sweep_dir not in _PARENT:
        from fedapp.tracking import Tracker

        overrides = list(hydra_cfg.overrides.task)
        parent = Tracker.open(run_config["tracking-uri"], run_config["experiment"],
                              f"sweep {Path(sweep_dir).name}", {"overrides": " ".join(overrides)},
                              tags={"fedapp.sweep-dir": sweep_dir})
        if parent.run_id is None:
            return None
        parent.close("FINISHED")  # children attach by id; the parent only groups them
        _PARENT[sweep_dir] = parent.run_id
    return _PARENT[sweep_dir]


def _progress_poll(run_id: int, cfg: dict[str, Any], label: str, env: dict[str, str],
                   connection: str | None):  # type: ignore[no-untyped-def]
    """A rich progress bar of the run's rounds, refreshed from its log on each poll."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("round {task.completed:.0f}/{task.total:.0f}"),
                        TextColumn("{task.fields[acc]}"), TimeElapsedColumn())
    task = progress.add_task(label, total=cfg["num-server-rounds"], acc="")

    def on_poll(status: str) -> None:
        matches = ROUND_LINE.findall(runner.logs(run_id, connection, env))
        if matches:
            rnd, _, acc = matches[-1]
            progress.update(task, completed=int(rnd), acc=f"acc {float(acc):.3f}")
        progress.update(task, description=f"{label} [{status}]")

    return progress, on_poll


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Submit, follow and check one Flower run; return its result record."""
    t0 = time.perf_counter()
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    run_config = to_run_config(cfg)
    _tracking_defaults(run_config, Path(hydra_cfg.runtime.cwd))
    parent = _parent_run(run_config, hydra_cfg)
    if parent:
        run_config["parent-run-id"] = parent
    RunConfig.from_flower(run_config)  # fail here, with every bad key named, not in Flower
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    connection = cfg.get("connection")
    overrides = " ".join(hydra_cfg.overrides.task) or "defaults"
    label = "run"
    if hydra_cfg.mode == RunMode.MULTIRUN:  # a job sees its own values; argv has the sweep
        sweep = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
        label = f"job {hydra_cfg.job.num + 1}/{count_jobs(sweep)}"
    print(f"{label}: {overrides}", flush=True)

    run_id = runner.submit(APP_DIR, run_config, connection, federation_config(cfg), env)
    progress, on_poll = _progress_poll(run_id, run_config, label, env, connection)
    with progress:
        status = runner.wait(run_id, connection, env, timeout=cfg.sweep.timeout,
                             poll=3.0, on_poll=on_poll)
    result: dict[str, Any] = {"run-id": run_id, "status": status, "overrides": overrides,
                              "job-seconds": round(time.perf_counter() - t0, 2)}
    if status != "finished:completed":
        tail = "\n".join(runner.logs(run_id, connection, env).splitlines()[-25:])
        (job_dir / "result.json").write_text(json.dumps(result, indent=2))
        raise runner.RunFailed(f"run {run_id} ({overrides}) ended as {status}:\n{tail}", run_id)
    out_dir = Path(RunConfig.from_flower(run_config).output_path) / f"run-{run_id}"
    rounds_file = out_dir / "rounds.json"
    rows = json.loads(rounds_file.read_text())
    accs = [r["server-accuracy"] for r in rows]
    result |= {"final-accuracy": accs[-1], "best-accuracy": max(accs),
               "best-round": int(rows[accs.index(max(accs))]["round"]),
               "flower-run-seconds": runner.elapsed(run_id, connection, env),
               "outputs": str(rounds_file.parent)}
    (job_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    result = run_job(cfg)
    print(f"{result['overrides']}: run {result['run-id']} {result['status']}, final accuracy "
          f"{result['final-accuracy']:.4f}, job {result['job-seconds']:.1f}s "
          f"(Flower run {result['flower-run-seconds']:.1f}s)")
    return float(result["final-accuracy"])


if __name__ == "__main__":
    main()
