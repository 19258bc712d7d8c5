"""Figures and a side-by-side report of an experiment's runs, read back from MLflow.

Writes ``report.md`` (one table row per run: key settings, final server
accuracy, best round, uplink bytes, privacy epsilon) and ``accuracy.png`` (every
run's server-accuracy curve on one plot)::

    python -m fedapp.tracking.report [--tracking-uri URI] [--experiment NAME] [--out DIR]

Sweep parent runs (runs that other runs name as ``mlflow.parentRunId`` and that
log no server accuracy themselves) are containers and get no row.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedapp.tracking.store import TrackingError, connect, resolve_tracking_uri

SETTING_KEYS = ("aggregator", "attack", "dp", "dp-epsilon", "compression", "dataset",
                "num-server-rounds")
ACCURACY = "server-accuracy"
BYTES_UP = "bytes-up"
EPSILON = "epsilon"
PARENT_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class RunSummary:
    """What the report shows of one run; ``curve`` is ``(round, accuracy)`` pairs."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    curve: list[tuple[int, float]]
    bytes_up: float | None
    epsilon: float | None

    @property
    def final_accuracy(self) -> float | None:
        return self.curve[-1][1] if self.curve else None

    @property
    def best(self) -> tuple[int, float] | None:
        """(round, accuracy) of the best round; the earliest on ties."""
        return max(self.curve, key=lambda p: (p[1], -p[0])) if self.curve else None


def collect_runs(client: Any, experiment: str) -> list[RunSummary]:
    """Every run of ``experiment`` (oldest first), with its accuracy curve."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise TrackingError(f"no experiment {experiment!r}; experiments: {known}")
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            break
    parents = {r.data.tags.get(PARENT_TAG) for r in runs}
    summaries = []
    for run in runs:
        if run.info.run_id in parents and ACCURACY not in run.data.metrics:
            continue
        summaries.append(_summary(client, run))
    return summaries


def _summary(client: Any, run: Any) -> RunSummary:
    run_id, metrics = run.info.run_id, run.data.metrics
    history = client.get_metric_history(run_id, ACCURACY) if ACCURACY in metrics else []
    latest: dict[int, tuple[int, float]] = {}
    for m in history:  # one point per round: the last one logged
        if m.step not in latest or m.timestamp >= latest[m.step][0]:
            latest[m.step] = (m.timestamp, m.value)
    bytes_up = (sum(m.value for m in client.get_metric_history(run_id, BYTES_UP))
                if BYTES_UP in metrics else None)
    return RunSummary(
        run_id=run_id, name=run.info.run_name or run_id[:8], status=run.info.status,
        params=dict(run.data.params),
        curve=[(step, value) for step, (_, value) in sorted(latest.items())],
        bytes_up=bytes_up, epsilon=metrics.get(EPSILON),
    )


def _bytes(n: float | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return ""  # unreachable


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "-"


def markdown_table(runs: list[RunSummary]) -> str:
    """One row per run; a setting or metric column appears only if some run has it."""
    columns: list[tuple[str, Any]] = [("run", lambda r: r.name), ("status", lambda r: r.status)]
    columns += [(k, lambda r, k=k: r.params.get(k, "")) for k in SETTING_KEYS
                if any(k in r.params for r in runs)]
    columns += [
        ("final accuracy", lambda r: "" if r.final_accuracy is None
         else f"{r.final_accuracy:.4f}"),
        ("best round", lambda r: "" if r.best is None else f"{r.best[0]} ({r.best[1]:.4f})"),
    ]
    if any(r.bytes_up is not None for r in runs):
        columns.append(("bytes up", lambda r: _bytes(r.bytes_up)))
    if any(r.epsilon is not None for r in runs):
        columns.append(("epsilon", lambda r: "" if r.epsilon is None else f"{r.epsilon:.3g}"))
    lines = ["| " + " | ".join(name for name, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(str(get(r))) for _, get in columns) + " |" for r in runs]
    return "\n".join(lines)


def save_accuracy_plot(runs: list[RunSummary], path: Path) -> Path:
    """Every run's server accuracy per round on one set of axes (matplotlib Agg)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    drawn = 0
    for run in runs:
        if run.curve:
            xs, ys = zip(*run.curve, strict=True)
            ax.plot(xs, ys, marker=".", label=run.name)
            drawn += 1
    ax.set_xlabel("round")
    ax.set_ylabel(ACCURACY)
    ax.set_title(f"server accuracy of {drawn} run(s)")
    ax.grid(True, alpha=0.3)
    if 0 < drawn <= 20:
        ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def save_curves(rows: list[Mapping[str, Any]], path: Path) -> Path:
    """PNG of a run's ``server-accuracy`` and ``server-loss`` per ``round`` (matplotlib Agg)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 3.5), layout="constrained")
    for ax, key in zip(fig.subplots(1, 2), ("server-accuracy", "server-loss"), strict=True):
        points = [(float(r["round"]), float(r[key])) for r in rows
                  if "round" in r and key in r and math.isfinite(float(r[key]))]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel(key)
        ax.set_title(key.replace("-", " "))
        ax.grid(True, alpha=0.3)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return Path(path)


def write_report(runs: list[RunSummary], out_dir: Path, experiment: str,
                 uri: str) -> tuple[Path, Path]:
    """Write ``report.md`` and ``accuracy.png`` into ``out_dir``."""
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    png = save_accuracy_plot(runs, out_dir / "accuracy.png")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n\n".join([
        f"# Experiment `{experiment}`",
        f"{len(runs)} run(s) from `{uri}`, report written {when}.",
        markdown_table(runs) if runs else "_No runs._",
        f"![server accuracy per round]({png.name})",
    ]) + "\n"
    md = out_dir / "report.md"
    md.write_text(text)
    return md, png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedapp.tracking.report",
                                     description="report.md and accuracy.png of an experiment")
    parser.add_argument("--tracking-uri", default="",
                        help="default: $MLFLOW_TRACKING_URI, else sqlite in ~/.fedapp/runs")
    parser.add_argument("--experiment", default="fedapp", help="default: %(default)s")
    parser.add_argument("--out", type=Path, default=Path("."), help="default: %(default)s")
    args = parser.parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri)
    from mlflow.exceptions import MlflowException

    try:
        runs = collect_runs(connect(uri), args.experiment)
    except (TrackingError, MlflowException) as exc:
        print(f"error: {exc} (tracking URI {uri})", file=sys.stderr)
        return 1
    for path in write_report(runs, args.out, args.experiment, uri):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
