"""One measured `flwr run` per federation size, for ``scale.py``.

``measure(nodes, rounds, sampled, out)`` runs the real apps (``dataset='synthetic'``,
tracking off, ``fraction-evaluate=0``, ``sampled`` nodes per round, every checkpoint kept)
under a private managed SuperLink, while ``TreeSampler`` sums the memory of every process
under that SuperLink (SuperExec, the simulation process with the ServerApp, Ray's
processes and ClientApp actors) every 0.5 s: RSS (what the brief asks; pages shared between
processes, e.g. torch's libraries in every actor, count once per process) and PSS (shared
pages split between the processes that map them: closer to what the machine spends).

A round's wall time is the interval between consecutive checkpoint files (each written at
the end of its round: training, aggregation, server evaluation, checkpoint), so round 1
(Ray's start, the first actors' imports) has none; its ``seconds`` from ``rounds.json``
(configure_train to the aggregate, startup included) is kept apart. The run is waited for
by watching its output files, not by polling the `flwr` CLI (a CLI process every 2 s
would load the two cores being measured). What the server keeps per node is read from its
outputs: ``node_health.json`` (every node ever sampled), ``reputation.json`` (every node
ever screened) and the checkpoint sizes, round by round.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _superlink import _test_helpers, private_superlink
from common import REPO

from fedapp.server import checkpoint
from fedapp.sweep import flwr_cli as runner

INTERVAL_S = 0.5
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
Sample = tuple[float, int, int, int, float]  # time, RSS, PSS, processes, CPU seconds so far


@dataclass
class TreeSampler:
    """Sums RSS and PSS (bytes) of the SuperLink whose command line holds ``marker`` and of
    all its descendants, every ``interval`` seconds, in a thread; ``seen`` keeps every PID
    met with its command line (to stop leftovers by PID)."""

    marker: str
    interval: float = INTERVAL_S
    samples: list[Sample] = field(default_factory=list)
    seen: dict[int, bytes] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def tree(self) -> dict[int, bytes]:
        """The SuperLink (found by ``marker``) and its descendants, with command lines."""
        cli = _test_helpers()
        found: dict[int, bytes] = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            cmd = cli.cmdline(int(proc.name)) or b""
            if b"flower-superlink" in cmd and self.marker.encode() in cmd:
                found[int(proc.name)] = cmd
                found.update(cli.descendants(int(proc.name)))
        return found

    def sample(self) -> None:
        tree = self.tree()
        self.seen.update(tree)
        rss = pss = 0
        cpu = 0.0
        for pid in tree:
            rss += _kib(f"/proc/{pid}/status", "VmRSS:")
            pss += _kib(f"/proc/{pid}/smaps_rollup", "Pss:")
            cpu += _cpu_seconds(pid)
        self.samples.append((time.time(), rss * 1024, pss * 1024, len(tree), cpu))


def _kib(path: str, key: str) -> int:
    """The kB value of line ``key`` in a /proc file (0 if the process is gone)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime (fields 14, 15)


def stop_leftovers(seen: dict[int, bytes]) -> list[int]:
    """SIGTERM then SIGKILL any process still alive with the command line it had when the
    sampler saw it (by PID); returns those PIDs."""
    cmdline = _test_helpers().cmdline
    alive = [pid for pid, cmd in seen.items() if cmd and cmdline(pid) == cmd]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(1)
        alive = [pid for pid in alive if cmdline(pid) == seen[pid]]
    return alive


def run_config(nodes: int, rounds: int, sampled: int, out: Path) -> dict[str, Any]:
    """The measured run: synthetic hospitals, ``sampled`` of them per round."""
    return {"dataset": "synthetic", "num-server-rounds": rounds,
            # int(nodes * fraction) is exactly `sampled` (the half keeps float error away)
            "fraction-train": (sampled + 0.5) / nodes, "fraction-evaluate": 0.0,
            "min-available-nodes": nodes, "tracking": False, "metrics-port": 0,
            "output-dir": str(out), "checkpoint-keep": rounds + 1}


def state_bytes(path: Path) -> dict[str, int]:
    """The JSON sizes of the per-node parts of a checkpoint's state, and of its history."""
    state = checkpoint.read(path).state
    return {"health": len(json.dumps(state.health.to_dict())),
            "reputation": len(json.dumps(state.reputation.to_dict())),
            "history": len(json.dumps(state.history())),
            "health-nodes": len(state.health.nodes)}


def wait_for_outputs(run_dir: Path, run_id: int, env: dict[str, str], timeout: float) -> str:
    """Until the run's last output file appears (then its status), checking the status with
    the CLI only every 30 s (a failed run writes no outputs)."""
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (run_dir / "node_health.json").exists():
            for _ in range(30):
                if (status := runner.status(run_id, env=env)).startswith("finished"):
                    return status
                time.sleep(1)
            return status
        if time.monotonic() > next_check:
            if (status := runner.status(run_id, env=env)).startswith("finished"):
                return status
            next_check = time.monotonic() + 30
        time.sleep(0.5)
    raise TimeoutError(f"run {run_id}: no outputs after {timeout:.0f}s")


def measure(nodes: int, rounds: int, sampled: int, out: Path, timeout: float) -> dict[str, Any]:
    """One run at ``nodes`` SuperNodes; its measurements, or what failed and when."""
    with private_superlink(prefix=f"fedapp-scale-{nodes}-") as (env, _):
        sampler = TreeSampler(env["FLWR_HOME"])
        sampler.start()
        start, run_id, error = time.time(), None, None
        try:
            run_id = runner.submit(REPO, run_config(nodes, rounds, sampled, out),
                                   federation_config=f"num-supernodes={nodes} "
                                                     "client-resources-num-cpus=1", env=env)
            status = wait_for_outputs(out / f"run-{run_id}", run_id, env, timeout)
            if status != "finished:completed":
                tail = runner.logs(run_id, env=env).splitlines()[-25:]
                error = f"run ended as {status}:\n" + "\n".join(tail)
        except (runner.RunFailed, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            wall = time.time() - start
            sampler.stop()
    left = stop_leftovers(sampler.seen)
    result: dict[str, Any] = {"nodes": nodes, "rounds": rounds, "sampled": sampled,
                              "wall-s": wall, "run-id": run_id, "error": error,
                              "leftover-pids-stopped": left}
    result.update(memory_summary(sampler.samples))
    if error is None and run_id is not None:
        result.update(outputs_summary(out / f"run-{run_id}", start, sampler.samples))
    return result


def memory_summary(samples: list[Sample]) -> dict[str, Any]:
    """Whole-run peaks and the sample series (seconds since the first sample)."""
    if not samples:
        return {"peak-rss-bytes": None, "peak-pss-bytes": None, "samples": []}
    t0 = samples[0][0]
    return {"peak-rss-bytes": max(s[1] for s in samples),
            "peak-pss-bytes": max(s[2] for s in samples),
            "max-processes": max(s[3] for s in samples),
            "samples": [[round(t - t0, 2), rss, pss, n, round(cpu, 2)]
                        for t, rss, pss, n, cpu in samples]}


def outputs_summary(run_dir: Path, start: float, samples: list[Sample]) -> dict[str, Any]:
    """Per-round wall times and steady-state memory (after round 1), the rows, and what
    the server holds per node."""
    files = sorted((run_dir / checkpoint.DIRECTORY).glob("round-*.ckpt"))
    stamps = [p.stat().st_mtime for p in files]
    rows = json.loads((run_dir / "rounds.json").read_text())[1:]
    health = json.loads((run_dir / "node_health.json").read_text())
    reputation = json.loads((run_dir / "reputation.json").read_text())["nodes"]
    steady = [s for s in samples if stamps and stamps[0] < s[0] <= stamps[-1]]
    outcomes = sum(h["successes"] + sum(h["failures"].values()) for h in health.values())
    return {
        "first-round-done-s": stamps[0] - start if stamps else None,
        "round-s": [b - a for a, b in itertools.pairwise(stamps)],
        "round-1-seconds": rows[0]["seconds"] if rows else None,
        "steady-peak-rss-bytes": max((s[1] for s in steady), default=None),
        "steady-peak-pss-bytes": max((s[2] for s in steady), default=None),
        # CPU seconds the whole tree spent per wall second in rounds 2+ (two cores: <= 2)
        "steady-cpu-busy": ((steady[-1][4] - steady[0][4]) / (steady[-1][0] - steady[0][0])
                            if len(steady) > 1 else None),
        "state-bytes": [state_bytes(p) for p in files],
        "checkpoint-bytes": [p.stat().st_size for p in files],
        "rows": [{k: r.get(k) for k in ("round", "seconds", "nodes-connected", "nodes-sampled",
                                         "accepted", "failures", "server-accuracy")}
                 for r in rows],
        "health-nodes": len(health), "reputation-nodes": len(reputation),
        "health-outcomes": outcomes,
        "health-nodes-never-sampled": sum(
            1 for h in health.values() if h["successes"] + sum(h["failures"].values()) == 0),
        "sampled-total": sum(int(r.get("nodes-sampled", 0)) for r in rows),
    }

