"""The chaos tests' federation and process supervision: one federation for the package
(``federation``, built by ``chaos_helpers.start_chaos_federation``: both chaos modules
share it, each test leaving it whole), the deployment tier's ``Supervisor`` (start, stop by
PID, time-stamped logs) in a package-scoped fixture of its own, and the tails of every log
attached to a failing test's report.

The supervisor, its fixture body and the hooks' bodies come from
``tests/deployment/conftest.py``; only the fixtures and hooks are declared here (a
conftest's fixtures are visible below its directory only).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.chaos.chaos_helpers import ChaosFederation, start_chaos_federation
from tests.deployment.conftest import Supervisor, attach_log_tails, supervise, write_timings

CHAOS_TIMINGS: list[str] = []  # lines for the terminal summary
CHAOS_ACTIVE: list[Supervisor] = []  # supervisors whose logs a failing test report shows


@pytest.fixture(scope="package")
def chaos_supervisor(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    yield from supervise(request, tmp_path_factory, "chaos", CHAOS_ACTIVE, CHAOS_TIMINGS)


@pytest.fixture(scope="session")
def chaos_timings() -> list[str]:
    return CHAOS_TIMINGS


@pytest.fixture(scope="package")
def federation(chaos_supervisor: Supervisor, chaos_timings: list[str]) -> ChaosFederation:
    """Certificates, keys, data for three hospitals, a TLS SuperLink with node
    authentication and a database, the hospitals registered, their SuperNodes online."""
    return start_chaos_federation(chaos_supervisor, chaos_timings)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """On a failed test, attach the tail of every process log to its report."""
    outcome = yield
    attach_log_tails(outcome.get_result(), CHAOS_ACTIVE)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    write_timings(terminalreporter, "chaos timings", CHAOS_TIMINGS)
