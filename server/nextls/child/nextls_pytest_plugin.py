"""pytest plugin used by nextls_harness: per-test alarm, tracing around one test, JSON results."""

from __future__ import annotations

import signal
import time

import pytest
from nextls_harness import (
    OUTCOME_ERROR,
    OUTCOME_FAILED,
    OUTCOME_OUTPUT_TRUNCATED,
    OUTCOME_PASSED,
    OUTCOME_TIMEOUT,
    printed_too_much,
    timed_out,
)

OUTCOME_SKIPPED = "skipped"


def _matches(node_id: str, wanted: str) -> bool:
    """A node id asked for without parameters covers each parametrized case."""
    return node_id == wanted or node_id.startswith(wanted + "[")


class ReportPlugin:
    def __init__(self, harness, wanted_ids: set[str]) -> None:
        self.harness = harness
        self.wanted_ids = wanted_ids
        self.reported: set[str] = set()
        self.collect_errors: list[str] = []
        self.traced = False
        self._started: dict[str, float] = {}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        control = self.harness.trace
        trace_this = not self.traced and control.spec is not None and _matches(item.nodeid, control.spec["test_id"])
        if trace_this:
            self.traced = True
            control.begin()
        signal.setitimer(signal.ITIMER_REAL, self.harness.test_timeout)
        try:
            with self.harness.covering(item.nodeid, trace_this):
                return (yield)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if trace_this:
                control.end()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        if call.excinfo is not None and call.excinfo.typename == "TestTimeout":
            report.nextls_outcome = OUTCOME_TIMEOUT
            report.nextls_message = timed_out(self.harness.test_timeout)
        elif call.excinfo is not None and call.excinfo.typename == "OutputLimitExceeded":
            report.nextls_outcome = OUTCOME_OUTPUT_TRUNCATED
            report.nextls_message = printed_too_much(self.harness.output_limit)
        return report

    def pytest_runtest_logstart(self, nodeid, location) -> None:
        self._started[nodeid] = time.perf_counter()
        self.harness.report_start(nodeid)

    def pytest_runtest_logreport(self, report) -> None:
        if report.nodeid in self.reported:
            return
        if report.when == "call" or report.failed or report.skipped:
            outcome = getattr(report, "nextls_outcome", None)
            if outcome is None:
                if report.passed:
                    outcome = OUTCOME_PASSED
                elif report.skipped:
                    outcome = OUTCOME_SKIPPED
                else:
                    outcome = OUTCOME_FAILED if report.when == "call" else OUTCOME_ERROR
            self.reported.add(report.nodeid)
            duration = time.perf_counter() - self._started.get(report.nodeid, time.perf_counter())
            message = getattr(report, "nextls_message", None) or _message(report)
            self.harness.report(report.nodeid, outcome, message, duration)

    def pytest_collectreport(self, report) -> None:
        if report.failed:
            self.collect_errors.append(_message(report))

    def report_missing(self) -> None:
        """Every asked-for test that never ran gets an error saying why."""
        why = "; ".join(self.collect_errors) or "pytest did not collect it"
        for wanted in self.wanted_ids:
            if not any(_matches(node_id, wanted) for node_id in self.reported):
                self.harness.report(wanted, OUTCOME_ERROR, why)


def _message(report) -> str:
    if report.passed:
        return ""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    if isinstance(report.longrepr, tuple):  # skips: (path, line, reason)
        return str(report.longrepr[2])
    return str(report.longrepr)[-2000:]
