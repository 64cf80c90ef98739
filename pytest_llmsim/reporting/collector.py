"""Turns pytest's test reports into run records (``ScenarioRecord``); no pytest import.

Per-scenario data arrives on a report as ``report.llmsim`` (``ScenarioResult.to_dict()``; pytest serialises a
report's ``__dict__``, so the attribute crosses from xdist workers as each item finishes). The collector keeps
one record per node id (a rerun replaces the earlier record), in collection order, with pytest's outcome:

* the report that carries ``llmsim`` (call; setup for an error) gives the record;
* a scenario item that failed without a conversation (invalid scenario, crashed worker) gets an error record;
* a skipped scenario item (skip marker, ``xfail(run=False)``) gets a record with status ``skipped``;
* collected scenario items that never reported (Ctrl-C, ``-x``) are counted as unfinished;
* a Python test that used the ``llmsim`` fixture: its first conversation on ``llmsim`` (recorded under the
  test's node id), later ones on ``llmsim_more`` (each under its own ``<nodeid>[llmsim-N]``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pytest_llmsim.errors import ErrorKind
from pytest_llmsim.llm.pricing import PriceTable, scenario_cost
from pytest_llmsim.model.results import Outcome, ScenarioRecord, ScenarioResult, Status, judge_details
from pytest_llmsim.model.scenario_paths import is_scenario_nodeid
from pytest_llmsim.reporting.summary import RunSummary, make_record, summarize

_ERROR_PHASES = ("setup", "teardown")


def report_outcome(report: Any) -> Outcome | None:
    """pytest's outcome of a test report, in the words of its closing line; None for an outcome that is not
    final (pytest-rerunfailures' ``rerun``: a later report of the same item decides)."""
    if hasattr(report, "wasxfail"):
        return Outcome.XFAILED if report.skipped else Outcome.XPASSED
    if report.failed and report.when in _ERROR_PHASES:
        return Outcome.ERROR
    try:
        return Outcome(report.outcome)
    except ValueError:
        return None


def trimmed_report_data(data: dict[str, Any]) -> dict[str, Any]:
    """``report.llmsim`` once the collector has its record: the scalar fields (score, status, tokens, duration...)
    and what pytest's status word needs (each trial's status, whether the judge was unstable), without the
    transcript, calls, usage and metrics. pytest keeps every report to the end of the run; the full data would
    keep each conversation a second time on the controller (10 000 scenarios: ~200 MB)."""
    kept = {key: value for key, value in data.items() if not isinstance(value, list | dict)}
    trials = data.get("trials")
    if isinstance(trials, list):
        kept["trials"] = [{"status": t.get("status")} for t in trials if isinstance(t, dict)]
    unstable = judge_details(data.get("metrics")).get("unstable")
    if unstable is not None:
        kept["metrics"] = [{"name": "judge", "details": {"unstable": unstable}}]
    return kept


def is_scenario_report(report: Any) -> bool:
    return "llmsim" in getattr(report, "keywords", {}) or is_scenario_nodeid(report.nodeid)


def unrun_result(report: Any) -> ScenarioResult:
    """The result of a scenario item reported without a conversation: skipped, or failed before it ran."""
    path, _, name = report.nodeid.rpartition("::")
    if report.skipped and (not hasattr(report, "wasxfail") or str(report.wasxfail).startswith("[NOTRUN]")):
        return ScenarioResult(scenario=name, nodeid=report.nodeid, source=path, status=Status.SKIPPED,
                              min_score=None, comment=_skip_reason(report))
    kind = ErrorKind.SCENARIO if report.when == "setup" else ErrorKind.CRASHED
    return ScenarioResult(scenario=name, nodeid=report.nodeid, source=path, status=Status.ERROR, min_score=None,
                          error_kind=kind, error_message=report.longreprtext[:4000])


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(getattr(report, "wasxfail", "") or "")


class RecordCollector:
    """One record per scenario item of the run, from the reports as they arrive."""

    def __init__(self, prices: PriceTable, run_id: str) -> None:
        self.prices = prices
        self.run_id = run_id
        self.records: dict[str, ScenarioRecord] = {}
        self.order: dict[str, int] = {}
        self.expected: set[str] = set()

    def expect(self, nodeids: Iterable[str], scenario_nodeids: Iterable[str]) -> None:
        """The collection order and the scenario items due to report (first call wins: xdist workers all
        report the same collection)."""
        if not self.order:
            self.order = {nodeid: index for index, nodeid in enumerate(nodeids)}
            self.expected = set(scenario_nodeids)

    def add_report(self, report: Any) -> ScenarioRecord | None:
        """The record this report gives (also stored), or None when it gives none."""
        outcome = report_outcome(report)
        if outcome is None:
            return None
        data = getattr(report, "llmsim", None)
        if isinstance(data, dict):
            record = self._store(report, ScenarioResult.from_dict(data), outcome)
            for more in getattr(report, "llmsim_more", None) or []:  # a test's later llmsim-fixture conversations
                if isinstance(more, dict) and more.get("nodeid"):
                    self._store(report, ScenarioResult.from_dict(more), outcome, nodeid=str(more["nodeid"]))
            return record
        if report.when == "teardown" or report.passed or report.nodeid in self.records \
                or not is_scenario_report(report):
            return None
        return self._store(report, unrun_result(report), outcome)

    def _store(self, report: Any, result: ScenarioResult, outcome: Outcome, nodeid: str | None = None
               ) -> ScenarioRecord:
        cost = scenario_cost({"usage": [vars(u) for u in result.usage]}, self.prices)
        record = make_record(result, cost, run_id=self.run_id, outcome=outcome,
                             worker=str(getattr(report, "worker_id", "") or ""))
        self.records[nodeid or report.nodeid] = record
        return record

    def get(self, nodeid: str) -> ScenarioRecord | None:
        return self.records.get(nodeid)

    def ordered(self) -> list[ScenarioRecord]:
        """The records in collection order (records of items not in the collection last, as they came)."""
        last = len(self.order)
        positions = {nodeid: i for i, nodeid in enumerate(self.records)}

        def place(nodeid: str) -> int:  # a test's later fixture conversations (``<nodeid>[llmsim-N]``) follow it
            return self.order.get(nodeid, self.order.get(nodeid.rpartition("[llmsim-")[0], last))

        return sorted(self.records.values(), key=lambda r: (place(r.nodeid), positions[r.nodeid]))

    @property
    def unfinished(self) -> int:
        """Scenario items of the collection that have not reported (yet)."""
        return len(self.expected.difference(self.records))

    def summary(self, *, interrupted: bool = False, final: bool = False) -> RunSummary:
        """The run totals; ``final`` counts unreported scenario items as unfinished (at session end)."""
        return summarize(self.ordered(), interrupted=interrupted, unfinished=self.unfinished if final else 0)
