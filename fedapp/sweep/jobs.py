"""One Hydra job = one Flower run: map the config, submit, follow, check, record."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedapp.config import RunConfig
from fedapp.sweep import flwr_cli
from fedapp.sweep.progress import round_progress, rounds_file

APP_DIR = Path(__file__).resolve().parents[2]
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


def _job_label(hydra_cfg: Any) -> str:
    """``run``, or ``job K/N`` in a multirun (a job sees its own values; argv has the sweep)."""
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return "run"
    sweep = [a for a in sys.argv[1:]
             if "=" in a and not a.startswith(("-", "hydra."))]
    return f"job {hydra_cfg.job.num + 1}/{count_jobs(sweep)}"


def _prepare(cfg: DictConfig, hydra_cfg: Any) -> dict[str, Any]:
    """The job's flat run config, with the sweep's MLflow store and parent run filled in,
    validated by ``RunConfig`` (every bad key named) before anything reaches Flower."""
    run_config = to_run_config(cfg)
    _tracking_defaults(run_config, Path(hydra_cfg.runtime.cwd))
    parent = _parent_run(run_config, hydra_cfg)
    if parent:
        run_config["parent-run-id"] = parent
    RunConfig.from_flower(run_config)
    return run_config


def _summary(rounds: Path) -> dict[str, Any]:
    """Final and best accuracy of a completed run, from its ``rounds.json``."""
    rows = json.loads(rounds.read_text())
    accs = [r["server-accuracy"] for r in rows]
    return {"final-accuracy": accs[-1], "best-accuracy": max(accs),
            "best-round": int(rows[accs.index(max(accs))]["round"])}


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Submit, follow and check one Flower run; return its result record."""
    t0 = time.perf_counter()
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    run_config = _prepare(cfg, hydra_cfg)
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    connection = cfg.get("connection")
    overrides = " ".join(hydra_cfg.overrides.task) or "defaults"
    label = _job_label(hydra_cfg)
    print(f"{label}: {overrides}", flush=True)

    run_id = flwr_cli.submit(APP_DIR, run_config, connection, federation_config(cfg), env)
    rounds = rounds_file(RunConfig.from_flower(run_config).output_path, run_id)
    progress, on_poll = round_progress(label, run_config["num-server-rounds"], rounds)
    with progress:
        status = flwr_cli.wait(run_id, connection, env, timeout=cfg.sweep.timeout,
                               poll=3.0, on_poll=on_poll)
    result: dict[str, Any] = {"run-id": run_id, "status": status, "overrides": overrides,
                              "job-seconds": round(time.perf_counter() - t0, 2)}
    if status != "finished:completed":
        tail = "\n".join(flwr_cli.logs(run_id, connection, env).splitlines()[-25:])
        (job_dir / "result.json").write_text(json.dumps(result, indent=2))
        raise flwr_cli.RunFailed(f"run {run_id} ({overrides}) ended as {status}:\n{tail}",
                                 run_id)
    result |= _summary(rounds)
    result |= {"flower-run-seconds": flwr_cli.elapsed(run_id, connection, env),
               "outputs": str(rounds.parent)}
    (job_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result
