"""``python -m fedapp.sweep``: one Flower run per Hydra job, checked and recorded.

Without ``-m`` it submits one run; with ``-m aggregator=krum,median attack=alie,none``
Hydra's launcher runs one job per combination. Each job (``jobs.run_job``):

1. maps the composed config to Flower's flat run config (``to_run_config``) and
   validates it with ``RunConfig`` before anything is submitted;
2. submits a real Flower run with the public CLI (``flwr run APP [CONNECTION]
   --run-config ... --federation-config ...``, see ``flwr_cli``), runtime dependency
   installation disabled (works offline);
3. waits, showing a progress bar of the run's rounds read from the run's
   ``rounds.json`` (``progress``), and fails the job with the run's last log lines
   when the run did not end ``finished:completed`` (``flwr run`` itself exits 0
   either way);
4. records ``result.json`` in the job's directory (run id, status, final and best
   accuracy, wall time of the job and of the Flower run) and returns the final
   accuracy (so Hydra sweepers can optimise it).

MLflow: a multirun opens one parent run; every job's ServerApp logs a child run
(``parent-run-id``) into the same store, by default ``mlflow.db`` in the directory
the sweep was started from.

Modules: ``__main__`` (the Hydra entry), ``jobs``, ``progress``, ``flwr_cli`` (the
``flwr`` CLI wrapper, also used by the benchmarks and tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedapp.sweep.jobs import count_jobs, federation_config, to_run_config

__all__ = ["count_jobs", "federation_config", "to_run_config"]


def __getattr__(name: str) -> Any:
    """Hydra loads on first use (PEP 562): importing ``fedapp.sweep.flwr_cli`` stays light."""
    if name in __all__:
        from fedapp.sweep import jobs

        return getattr(jobs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
