"""On CI (``CI`` set, as ``.ci/run`` sets it) a skipped test fails the run.

A missing store, browser or DynamoDB server must never pass as green; expected failures are not
skips. Loaded by tests/conftest.py.
"""
from __future__ import annotations

import os

import pytest

#: Tests skipped in this run.
SKIPPED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if SKIPPED and os.environ.get("CI"):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"CI: {len(SKIPPED)} test(s) skipped; on CI nothing may skip (install what they need):",
                 *(f"  {nodeid}" for nodeid in SKIPPED[:50])]
        if reporter is not None:
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
