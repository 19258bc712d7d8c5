"""Flower processes for benchmark scripts: a private managed SuperLink, or a loopback
deployment (the same helpers the tests use). Everything else the scripts share is in
``common``.

``with private_superlink() as (env, workdir): runner.run_and_check(..., env=env)`` gives a
fresh ``FLWR_HOME`` in a temporary directory, free ports for the managed SuperLink, runtime
dependency installation disabled (works offline), and stops the SuperLink and everything it
started (the processes whose command line mentions that ``FLWR_HOME``) at the end.

``with loopback_deployment(data_path) as dep:`` starts a real deployment instead: a
plain-text ``flower-superlink`` and one ``flower-supernode`` (a hospital reading
``data_path``; a list of paths starts one SuperNode per path, ``dep.supernodes``) on free
loopback ports, each with its own ``FLWR_HOME``; every output line is kept with the
wall-clock time it was read, and all are stopped by PID (with the ``flower-superexec`` /
``flwr-*app`` processes they spawned) at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common import REPO  # benchmarks/ is on sys.path


def _test_helpers():  # type: ignore[no-untyped-def]
    """``tests.flwr_cli`` (tests/ is not installed; its helpers are reused in place)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import tests.flwr_cli

    return tests.flwr_cli


@contextmanager
def private_superlink(prefix: str = "fedapp-bench-",
                      keep: bool = False) -> Iterator[tuple[dict[str, str], Path]]:
    """Yield ``(env, workdir)``: the environment for `flwr` and a scratch directory."""
    helpers = _test_helpers()
    free_port, kill_processes_mentioning = helpers.free_port, helpers.kill_processes_mentioning

    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    home = workdir / "flwr-home"
    home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    try:
        yield env, workdir
    finally:
        kill_processes_mentioning(str(home))
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------- a real (insecure) deployment on loopback

STOP_TIMEOUT_S = 15.0


@dataclass
class StampedProcess:
    """A process started by a benchmark; every output line is kept with the wall-clock time
    (epoch seconds) at which it was read."""

    name: str
    popen: subprocess.Popen[bytes]
    lines: list[tuple[float, str]] = field(default_factory=list)
    reader: threading.Thread | None = None

    def start_reader(self) -> None:
        assert self.popen.stdout is not None
        stream = self.popen.stdout

        def copy() -> None:
            with stream:
                for raw in iter(stream.readline, b""):
                    self.lines.append((time.time(), raw.decode(errors="replace").rstrip()))

        self.reader = threading.Thread(target=copy, name=f"log-{self.name}", daemon=True)
        self.reader.start()

    def text(self) -> str:
        return "\n".join(line for _, line in list(self.lines))

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL: this process, then the helpers it spawned (by PID)."""
        cli = _test_helpers()
        descendants, cmdline = cli.descendants, cli.cmdline
        helpers = descendants(self.popen.pid)
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=STOP_TIMEOUT_S)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [pid for pid, cmd in helpers.items() if cmdline(pid) == cmd and cmd]
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 3
            while alive and time.monotonic() < deadline:
                alive = [pid for pid in alive if cmdline(pid) == helpers[pid]]
                time.sleep(0.1)
        if self.reader is not None:
            self.reader.join(timeout=3)


def start_stamped(name: str, argv: list[str], env: dict[str, str], cwd: Path) -> StampedProcess:
    popen = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    proc = StampedProcess(name, popen)
    proc.start_reader()
    return proc


@dataclass
class Deployment:
    """A plain-text SuperLink and its SuperNodes on loopback, driven with the `flwr` CLI."""

    workdir: Path
    env: dict[str, str]  # for `flwr` (FLWR_HOME with the connection)
    connection: str
    superlink: StampedProcess
    supernodes: list[StampedProcess]

    @property
    def supernode(self) -> StampedProcess:
        """The first SuperNode (the only one of a single-node deployment)."""
        return self.supernodes[0]

    def flwr(self, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        flwr = str(Path(sys.executable).parent / "flwr")
        return subprocess.run([flwr, *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout_s, check=False)


@contextmanager
def loopback_deployment(data_path: Path | Sequence[Path],
                        supernode_env: dict[str, str] | None = None,
                        prefix: str = "fedapp-deploy-bench-",
                        supernode_nice: int = 0) -> Iterator[Deployment]:
    """Start ``flower-superlink --insecure`` and one ``flower-supernode --insecure`` per
    data file (``data_path``: one path, or a sequence for several SuperNodes), on free
    ports with private ``FLWR_HOME``s; wait until every node is online; stop them all (and
    what they spawned, by PID) at the end. ``supernode_nice`` > 0 starts the SuperNodes
    (and so their ClientApps) under ``nice -n``: on one machine, the SuperLink is not
    starved by the nodes' work as it would not be on a machine of its own."""
    free_port = _test_helpers().free_port
    paths = [data_path] if isinstance(data_path, Path) else list(data_path)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    bin_dir = str(Path(sys.executable).parent)
    base = {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
            "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1"}
    ports: list[int] = []
    while len(ports) < 1 + len(paths):  # the SuperLink's, then one per SuperNode
        if (port := free_port()) not in ports:
            ports.append(port)
    link_port = ports[0]
    cli_home = workdir / "flwr-home"
    cli_home.mkdir()
    connection = "bench"
    (cli_home / "config.toml").write_text(
        f'[superlink.{connection}]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n')
    cli_env = {**base, "FLWR_HOME": str(cli_home),
               "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    procs: list[StampedProcess] = []
    try:
        link = start_stamped("superlink", [
            "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link_port),
            "--database", str(workdir / "link.db"), "--disable-runtime-dependency-installation",
        ], {**base, "FLWR_HOME": str(workdir / "link-home")}, workdir)
        procs.append(link)
        nice = ["nice", "-n", str(supernode_nice)] if supernode_nice > 0 else []
        nodes = [_start_supernode(i, len(paths), path, link_port, ports[1 + i], workdir,
                                  base, supernode_env or {}, nice)
                 for i, path in enumerate(paths)]
        procs.extend(nodes)
        _wait_online(procs, nodes, 120 + 5 * len(nodes))
        yield Deployment(workdir, cli_env, connection, link, nodes)
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _start_supernode(index: int, count: int, data_path: Path, link_port: int, port: int,
                     workdir: Path, base: dict[str, str], extra: dict[str, str],
                     nice: list[str]) -> StampedProcess:
    """SuperNode ``index`` of ``count``: its own port, ``FLWR_HOME`` and data cache (a
    single node keeps the names it always had: ``supernode``, ``node-home``); ``extra``
    (the caller's environment for the nodes) comes last."""
    suffix = "" if count == 1 else f"-{index}"
    node_env = {**base, "FLWR_HOME": str(workdir / f"node-home{suffix}"),
                "FEDAPP_COLD_START_LOG": "1",
                "FEDAPP_DATA_CACHE": str(workdir / f"node-cache{suffix}"), **extra}
    return start_stamped(f"supernode{suffix}", [  # `nice` execs it: the PID stays
        *nice, "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
        "--port", str(port), "--node-config", f"data-path='{data_path}'",
    ], node_env, workdir)


def _wait_online(procs: list[StampedProcess], nodes: list[StampedProcess],
                 timeout_s: float) -> None:
    """Until every SuperNode has logged its ``SuperNode ID:``; fail if a process exits."""
    deadline = time.monotonic() + timeout_s
    while not all("SuperNode ID:" in node.text() for node in nodes):
        for proc in procs:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited:\n{proc.text()[-3000:]}")
        if time.monotonic() > deadline:
            late = [n for n in nodes if "SuperNode ID:" not in n.text()]
            raise RuntimeError(f"{[n.name for n in late]} did not connect:\n"
                               f"{late[0].text()[-3000:]}")
        time.sleep(0.2)
