"""``--llmsim-gate=regressions``: a scenario that fails on the baseline too is a *known failure*, reported as xfailed.

pytest decides a run's exit status from its items' outcomes, so a known failure changes its item's outcome: the
call report of a scenario item that failed (a verdict below its minimum, not an error) becomes xfailed, with the
reason ``known failure on the baseline (<baseline>): failed there too, score 1 -> 1`` (``report.outcome =
"skipped"`` and ``report.wasxfail``, as pytest's own xfail does). Terminal, JUnit and pytest-html show it as
xfailed with that reason; the llmsim totals count it as any xfailed scenario and list it as a known failure.

Registered in every process (an xdist worker decides for the items it runs, from the baseline the controller
resolved: ``report_options.baseline_from_config``). Which failures are known: ``baseline.known_failure_reason``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from pytest_llmsim.model.results import ScenarioResult
from pytest_llmsim.plugin.items import ScenarioItem
from pytest_llmsim.plugin.report_options import GATE_REGRESSIONS, baseline_from_config, gate_mode
from pytest_llmsim.reporting.baseline import Baseline, known_failure_reason

KNOWN_FAILURE_ATTR = "llmsim_known_failure"  # set on a known failure's report (crosses from xdist workers)


class RegressionsGate:
    """Turns a known failure's call report into an xfailed one."""

    name = "llmsim-gate"

    def __init__(self, baseline: Baseline) -> None:
        self.baseline = baseline

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: after the llmsim and pytest's xfail wrappers
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]
                                  ) -> Generator[None, Any, Any]:
        report: pytest.TestReport = yield
        result = getattr(item, "result", None)
        if (report.when == "call" and report.failed and not hasattr(report, "wasxfail")
                and isinstance(item, ScenarioItem) and isinstance(result, ScenarioResult)):
            reason = known_failure_reason(result, self.baseline.records.get(item.nodeid), self.baseline.label)
            if reason is not None:
                report.outcome = "skipped"
                report.wasxfail = reason
                setattr(report, KNOWN_FAILURE_ATTR, True)
        return report


def register_gate(config: pytest.Config) -> None:
    """Register the regressions gate when ``llmsim_gate = regressions`` (without a baseline: a usage error)."""
    if gate_mode(config) != GATE_REGRESSIONS:
        return
    baseline = baseline_from_config(config)
    assert baseline is not None  # gate_mode refuses regressions without one
    config.pluginmanager.register(RegressionsGate(baseline), RegressionsGate.name)


def is_known_failure(report: Any) -> bool:
    return bool(getattr(report, KNOWN_FAILURE_ATTR, False))
