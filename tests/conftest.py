"""Suite-wide hooks.

With ``GPUWARDEN_FAIL_ON_SKIP=1`` (set by ``.ci/run``) a test that needs a real
component (PostgreSQL, Prometheus, Alertmanager, vLLM) and was skipped fails the run:
CI must prove those paths, not quietly skip them.
"""

from __future__ import annotations

import os

import pytest

REAL_COMPONENT_MARKERS = ("postgres", "prometheus", "alertmanager", "vllm")
_skipped_real: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and any(m in report.keywords for m in REAL_COMPONENT_MARKERS):
        _skipped_real.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_real and os.environ.get("GPUWARDEN_FAIL_ON_SKIP") == "1":
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"FAIL: {len(_skipped_real)} tests needing a real component were skipped:",
                red=True,
            )
            for nodeid in _skipped_real:
                reporter.write_line(f"  {nodeid}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
