"""``flwr run`` on the deployment tier's federation: the run, its final status, the
per-round, per-message and ClientApp cold-start timings from the logs, and the check that
no identifiable string from a hospital's file reached the server side."""

from __future__ import annotations

import re
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.deployment.tls_cli import CONNECTION, FLWR, REPO_ROOT, flwr_json, wait_until
from tests.deployment.tls_federation import HOSPITALS, IDENTIFIABLE, MEMBERS, Federation

if TYPE_CHECKING:  # the fixtures come from conftest.py; never import it at run time
    from tests.deployment.conftest import ManagedProcess

ROUNDS = 2
RUN_CONFIG = (
    f"num-server-rounds={ROUNDS} dataset='breast-cancer' min-train-nodes={HOSPITALS} "
    f"min-available-nodes={len(MEMBERS)} fraction-evaluate=0.0 aggregator='median'"
)  # no client-side evaluation: each message is a fresh process, and the server evaluates
ROUND_LINE = re.compile(r"\[fedapp\] round (\d+)/\d+: .*\| ([0-9.]+)s\s*$")
RUN_ID_LINE = re.compile(r"Successfully started run (\d+)")
COLD_START_LINE = re.compile(r"\[fedapp\] cold start: (\w+) handler entered ([0-9.]+)s after "
                             r"process start; local data loaded in ([0-9.]+)s")
HANDLER_LINE = re.compile(r"\[fedapp\] cold start: train handler returned at [0-9.]+ \(epoch\) "
                          r"after ([0-9.]+)s")
MESSAGE_LINE = re.compile(r"(Received successfully|Sending: (\w+) message)")


def flwr_run(fed: Federation, output_dir: Path, log_path: Path,
             run_config: str = RUN_CONFIG) -> str:
    """``flwr run . CONNECTION --stream`` from the repo root; returns its output."""
    server_test = fed.root / "data" / "server-test.csv"
    run_config = f"{run_config} output-dir='{output_dir}' server-test-path='{server_test}'"
    fed.supervisor.extra_logs.append(log_path)
    with log_path.open("w") as log_file:
        result = subprocess.run(
            [FLWR, "run", ".", CONNECTION, "--stream", "--run-config", run_config],
            cwd=REPO_ROOT, env=fed.env, stdout=log_file, stderr=subprocess.STDOUT,
            timeout=480, check=False,
        )
    output = log_path.read_text(errors="replace")
    assert result.returncode == 0, f"flwr run exited {result.returncode}:\n{output}"
    return output


def find_run_id(fed: Federation, output: str) -> str:
    """The run ID `flwr run` printed, else the only run the SuperLink knows."""
    if match := RUN_ID_LINE.search(output):
        return match.group(1)
    runs = flwr_json(fed.env, "list")["runs"]
    assert len(runs) == 1, f"cannot tell the run ID; runs: {runs}\nflwr run output:\n{output}"
    return str(runs[0]["run-id"])


def final_status(fed: Federation, run_id: str) -> dict[str, Any]:
    """Poll ``flwr list --run-id`` until the run is finished; returns its JSON row."""
    def finished() -> dict[str, Any] | None:
        run = flwr_json(fed.env, "list", "--run-id", run_id)["runs"][0]
        return run if str(run["status"]).startswith("finished") else None

    return wait_until(finished, 60, f"run {run_id} to finish", interval_s=2)


def round_seconds(output: str) -> dict[int, float]:
    """Per-round wall time from the ServerApp's ``[fedapp] round r/R: ... | 12.3s`` lines."""
    times = {}
    for line in output.splitlines():
        if match := ROUND_LINE.search(line):
            times[int(match.group(1))] = float(match.group(2))
    return times


def message_seconds(proc: ManagedProcess) -> list[tuple[str, float]]:
    """(message type, seconds from "Received successfully" to "Sending" its reply) for each
    message a SuperNode handled: the fresh ClientApp process's whole cost, launch included."""
    out, received = [], None
    for stamp, text in proc.stamped_lines():
        if match := MESSAGE_LINE.search(text):
            if match.group(2) is None:
                received = stamp
            elif received is not None:
                out.append((match.group(2), stamp - received))
                received = None
    return out


def summary(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return (f"median {statistics.median(values):.2f}s, min {min(values):.2f}s, "
            f"max {max(values):.2f}s (n={len(values)})")


def record_client_timings(fed: Federation) -> None:
    honest = [fed.nodes[f"hospital-{h}"] for h in range(HOSPITALS)]
    per_message = [s for proc in honest for _, s in message_seconds(proc)]
    fed.record_timing("per message on a SuperNode (received -> reply sent): "
                      + summary(per_message))
    entered, first_load, later_loads = [], [], []
    for proc in honest:
        loads = []
        for match in COLD_START_LINE.finditer(proc.log_text()):
            entered.append(float(match.group(2)))
            loads.append(float(match.group(3)))
        first_load += loads[:1]
        later_loads += loads[1:]
    fed.record_timing("ClientApp process start -> handler entered: " + summary(entered))
    handler = [float(m.group(1)) for proc in honest for m in HANDLER_LINE.finditer(proc.log_text())]
    fed.record_timing("train handler (local data, model, local SGD): " + summary(handler))
    fed.record_timing(f"local data load: first message (parse + cache) {summary(first_load)}; "
                      f"later messages (cache) {summary(later_loads)}")


def assert_nothing_identifiable_on_the_server(fed: Federation, output: str) -> None:
    """No identifiable string from a hospital's file in what the server side keeps: the
    ServerApp's log (``flwr run --stream``'s output), the run's output dir (``rounds.json``,
    the model, the MLflow store: ``mlflow.db`` and ``mlartifacts``), the SuperLink's log
    and its database (which holds every message, error replies included)."""
    out = fed.root / "out"
    assert (out / "mlflow.db").is_file(), sorted(p.name for p in out.iterdir())
    files = [p for p in out.rglob("*") if p.is_file()]  # mlartifacts/ included
    files += [fed.superlink.log_path, *fed.root.glob("link.db*")]
    assert any(p.name == "rounds.json" for p in files) and fed.root.joinpath("link.db") in files
    blobs = {str(p): p.read_bytes() for p in files}
    blobs["flwr run output"] = output.encode()
    leaks = [(where, text) for where, blob in blobs.items() for text in IDENTIFIABLE
             if text.encode() in blob]
    assert not leaks, f"identifiable strings reached the server: {leaks}"
    artifacts = sum(1 for p in files if "mlartifacts" in p.parts)
    fed.record_timing(f"no identifiable string in {len(blobs)} server-side files "
                      f"({artifacts} MLflow artifacts; {sum(map(len, blobs.values())) / 1e6:.1f}"
                      " MB)")
