"""Process supervision for deployment tests: start, stop by PID, show logs on failure.

Fixtures:
  ``supervisor`` (module scope): a temp dir and a ``Supervisor``. Every
      long-running process (SuperLink, SuperNodes) is started through it: its
      output (and that of the helpers it spawns) goes to a log file under
      ``supervisor.log_dir``, each line prefixed with the seconds since the
      supervisor started (``   12.345 | ...``), and teardown stops it by PID
      (terminate, wait, kill), together with the helper processes it spawned
      (flower-superexec, flwr-serverapp, flwr-clientapp).
  ``deployment_timings``: a list of lines printed in pytest's terminal summary.
When a test fails, the tail of every log is attached to its report.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from tests.flwr_cli import cmdline, descendants

STOP_TIMEOUT_S = 15.0
HELPER_GRACE_S = 3.0
LOG_TAIL_LINES = 150
STAMPED_LINE = re.compile(r"^\s*(\d+\.\d+) \| ?(.*)$")
TIMINGS: list[str] = []  # lines for the terminal summary
ACTIVE: list[Supervisor] = []  # supervisors whose logs a failing test report shows


@dataclass
class ManagedProcess:
    """One process started by a test, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    copier: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stamped_lines(self) -> list[tuple[float, str]]:
        """``(seconds since the supervisor started, text)`` for every log line."""
        lines = []
        for line in self.log_text().splitlines():
            if match := STAMPED_LINE.match(line):
                lines.append((float(match.group(1)), match.group(2)))
        return lines


@dataclass
class Supervisor:
    """Starts processes with logs under ``log_dir`` and stops all of them on ``close``."""

    root: Path
    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)
    extra_logs: list[Path] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def now(self) -> float:
        """Seconds since the supervisor started: the clock of the log prefixes."""
        return time.monotonic() - self.started

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> ManagedProcess:
        """Start ``argv`` in ``root`` with stdout and stderr, line by line and time-stamped,
        to ``log_dir/NAME.log``."""
        log_path = self.log_dir / f"{name}.log"
        popen = subprocess.Popen(
            list(argv), cwd=self.root, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        assert popen.stdout is not None
        copier = threading.Thread(target=_copy_stamped, args=(popen.stdout, log_path, self),
                                  name=f"log-{name}", daemon=True)
        copier.start()
        proc = ManagedProcess(name, popen, log_path, copier)
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        """Stop every process, newest first, with the helpers each one spawned."""
        for proc in reversed(self.processes):
            stop_process_tree(proc.popen)
            if proc.copier is not None:  # EOF once the process and its helpers are gone
                proc.copier.join(timeout=HELPER_GRACE_S)

    def log_tails(self) -> Iterator[tuple[str, str]]:
        paths = [p.log_path for p in self.processes] + self.extra_logs
        for path in paths:
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                yield path.name, "\n".join(lines)


def _copy_stamped(stream: IO[bytes], log_path: Path, sup: Supervisor) -> None:
    """Copy ``stream`` to ``log_path`` line by line, each prefixed with ``sup.now()``."""
    with stream, log_path.open("wb") as log_file:
        for line in iter(stream.readline, b""):
            log_file.write(f"{sup.now():9.3f} | ".encode() + line)
            log_file.flush()


def stop_process(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait, then SIGKILL if it is still alive."""
    if popen.poll() is not None:
        return
    popen.terminate()
    try:
        popen.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout=STOP_TIMEOUT_S)


def stop_process_tree(popen: subprocess.Popen[bytes]) -> None:
    """Stop a process, then any of its helpers that outlive it (they watch their parent's
    PID and usually exit by themselves): SIGTERM after a grace period, SIGKILL after
    another. Only PIDs whose command line is unchanged are signalled, so a reused PID
    is never hit."""
    helpers = descendants(popen.pid)
    stop_process(popen)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _wait_gone(helpers, HELPER_GRACE_S):
            for pid, cmd in helpers.items():
                if _alive(pid, cmd):
                    with suppress(ProcessLookupError):  # it may exit meanwhile
                        os.kill(pid, sig)
    _wait_gone(helpers, HELPER_GRACE_S)


def _wait_gone(helpers: dict[int, bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(_alive(pid, cmd) for pid, cmd in helpers.items()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _alive(pid: int, cmd: bytes) -> bool:
    """Alive and not a zombie (a zombie's cmdline reads empty)."""
    return cmdline(pid) == cmd and bool(cmd)


def supervise(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              name: str, active: list[Supervisor], timings: list[str]) -> Iterator[Supervisor]:
    """A ``Supervisor`` in a fresh temp dir ``name``, listed in ``active`` while it runs (so
    a failing test shows its logs) and stopped afterwards; its wall time joins ``timings``.
    Shared by the deployment and chaos tiers' fixtures."""
    started = time.perf_counter()
    root = tmp_path_factory.mktemp(name)
    sup = Supervisor(root=root, log_dir=root / "logs")
    sup.log_dir.mkdir()
    active.append(sup)
    try:
        yield sup
    finally:
        sup.close()
        active.remove(sup)
        label = request.node.nodeid or request.node.name  # a package's nodeid is empty
        timings.append(f"{label}: {time.perf_counter() - started:.1f}s "
                       "wall (setup, tests, teardown)")


def attach_log_tails(report: pytest.TestReport, active: list[Supervisor]) -> None:
    """Attach the tail of every log of the ``active`` supervisors to a failed report."""
    if not report.failed:
        return
    for supervisor in active:
        for name, text in supervisor.log_tails():
            report.sections.append((f"log {name} (last {LOG_TAIL_LINES} lines)", text))


def write_timings(terminalreporter: pytest.TerminalReporter, title: str,
                  timings: list[str]) -> None:
    if timings:
        terminalreporter.write_sep("-", title)
        for line in timings:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def supervisor(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    yield from supervise(request, tmp_path_factory, "deployment", ACTIVE, TIMINGS)


@pytest.fixture(scope="session")
def deployment_timings() -> list[str]:
    return TIMINGS


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """On a failed test, attach the tail of every process log to its report."""
    outcome = yield
    attach_log_tails(outcome.get_result(), ACTIVE)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    write_timings(terminalreporter, "deployment timings", TIMINGS)
