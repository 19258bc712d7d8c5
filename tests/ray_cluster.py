"""A private two-node Ray cluster on this machine for tests, stopped by PID.

``ray stop`` kills every Ray process on the machine by name (other people's simulations
included), so it is never used. Each node is a ``ray start --block`` child started in its own
session: its process group holds the node's processes (GCS, raylet, agents, and the workers
the raylet starts), and stopping sends SIGTERM to that group, then SIGKILL to whatever of the
group and of the recorded descendants is left. Each node has its own ``--temp-dir`` (short:
Ray's AF_UNIX socket paths must stay under 107 bytes), so ``ray start`` never writes
``/tmp/ray/ray_current_cluster``, which every later ``ray.init()`` on the machine would join.
All ports are free ports, so the cluster does not collide with another Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.flwr_cli import REPO, cmdline, descendants, free_port


class RayCluster:
    """A head and one worker node, ``num_cpus`` each, with custom resources ``head`` and
    ``worker`` (one unit each) that tell the two nodes apart."""

    def __init__(self, root: Path, env: dict[str, str], num_cpus: int = 1) -> None:
        self.root, self.env, self.num_cpus = root, env, num_cpus
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pids: dict[int, bytes | None] = {}  # every process of the cluster seen, cmdline

    def start(self, timeout: float = 120) -> dict[str, dict[str, float]]:
        """Start the head, then the worker; return the alive nodes' resources by node id."""
        self._start("head", ["--head", "--port", str(self.port), "--include-dashboard",
                             "false", "--dashboard-port", str(free_port()),
                             "--ray-client-server-port", str(free_port())])
        deadline = time.monotonic() + timeout
        while not (self.root / "head" / "ray_current_cluster").exists():
            self._check_running("head", deadline)
            time.sleep(0.5)
        self._start("worker", ["--address", self.address])
        nodes = self.probe("nodes", "2", str(max(deadline - time.monotonic(), 1.0)))
        if len(nodes) != 2:
            self._check_running("worker", deadline)
            raise RuntimeError(f"the worker did not join in {timeout:.0f}s: {nodes}\n"
                               f"{self.log_tail('worker')}")
        return nodes  # type: ignore[return-value]

    def _start(self, name: str, args: list[str]) -> None:
        ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                 "--metrics-export-port"]
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--block", *args,
               "--num-cpus", str(self.num_cpus), "--resources", json.dumps({name: 1}),
               "--temp-dir", str(self.root / name), "--object-store-memory", str(80 * 2**20),
               "--disable-usage-stats", *(a for p in ports for a in (p, str(free_port())))]
        with open(self.root / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log,
                                                stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def _check_running(self, name: str, deadline: float) -> None:
        if self.procs[name].poll() is not None:
            raise RuntimeError(f"ray start ({name}) exited {self.procs[name].returncode}:\n"
                               f"{self.log_tail(name)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"ray start ({name}) not ready:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.root / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) \
            if path.exists() else ""

    def probe(self, *args: str) -> object:
        """``tests.ray_probe`` against this cluster; its JSON answer."""
        out = subprocess.run([sys.executable, "-m", "tests.ray_probe", self.address, *args],
                             cwd=REPO, env=self.env, capture_output=True, text=True,
                             timeout=180, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"ray probe {args} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def worker_logs(self, name: str) -> str:
        """Everything the node's worker processes (the ClientApp actors) wrote."""
        logs = (self.root / name / "session_latest" / "logs").glob("worker-*")
        return "\n".join(p.read_text(errors="replace") for p in sorted(logs))

    def record_pids(self) -> None:
        for proc in self.procs.values():
            self.pids.update({proc.pid: cmdline(proc.pid), **descendants(proc.pid)})

    def stop(self, grace: float = 20) -> list[int]:
        """SIGTERM each node's process group, SIGKILL what is left after ``grace`` seconds;
        returns the PIDs of the cluster still alive afterwards (none, normally)."""
        self.record_pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in self.procs.values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
            for pid in self._alive() if sig == signal.SIGKILL else ():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while self._alive() and time.monotonic() < deadline:
                for proc in self.procs.values():
                    proc.poll()  # reap the ray start children
                time.sleep(0.5)
        return sorted(self._alive())

    def _alive(self) -> set[int]:
        """The recorded processes still running (same PID and command line: not a reuse)."""
        alive = set()
        for pid, cmd in self.pids.items():
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and cmdline(pid) == cmd:
                alive.add(pid)
        return alive
