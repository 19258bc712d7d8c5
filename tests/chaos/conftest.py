"""Process supervision for the chaos tests: the deployment tier's ``Supervisor`` (start,
stop by PID, time-stamped logs), a module-scoped fixture of its own, and the tails of
every log attached to a failing test's report.

The classes and functions come from ``tests/deployment/conftest.py``; only the fixtures
and hooks are defined here (a conftest's fixtures are visible below its directory only).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator

import pytest

from tests.deployment.conftest import LOG_TAIL_LINES, Supervisor

CHAOS_TIMINGS: list[str] = []  # lines for the terminal summary
CHAOS_ACTIVE: list[Supervisor] = []  # supervisors whose logs a failing test report shows


@pytest.fixture(scope="module")
def chaos_supervisor(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    started = time.perf_counter()
    root = tmp_path_factory.mktemp("chaos")
    sup = Supervisor(root=root, log_dir=root / "logs")
    sup.log_dir.mkdir()
    CHAOS_ACTIVE.append(sup)
    try:
        yield sup
    finally:
        sup.close()
        CHAOS_ACTIVE.remove(sup)
        CHAOS_TIMINGS.append(f"{request.module.__name__}: {time.perf_counter() - started:.1f}s "
                             "wall (setup, tests, teardown)")


@pytest.fixture(scope="session")
def chaos_timings() -> list[str]:
    return CHAOS_TIMINGS


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """On a failed test, attach the tail of every process log to its report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    for supervisor in CHAOS_ACTIVE:
        for name, text in supervisor.log_tails():
            report.sections.append((f"log {name} (last {LOG_TAIL_LINES} lines)", text))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if CHAOS_TIMINGS:
        terminalreporter.write_sep("-", "chaos timings")
        for line in CHAOS_TIMINGS:
            terminalreporter.write_line(line)
