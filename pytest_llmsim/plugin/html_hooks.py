"""pytest-html 4 hooks: the chat as an extra, Score and Cost columns, the run summary, escaped test ids.

Registered only when pytest-html is active and ``--html`` is given. The HTML itself is built by
``html_report`` (no pytest); this module only hands it to pytest-html.

pytest-html puts each report's node id into the row's Test cell unescaped, and its page script inserts the
row with ``innerHTML``: a scenario named ``<img src=x onerror=...>`` would run script in the report. The row
hook rewrites that cell with the id escaped, so names show as text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html import escape
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmsim.model.results import ScenarioRecord
from pytest_llmsim.reporting.html import STYLE, baseline_diff_html, scenario_html, summary_html

if TYPE_CHECKING:
    from pytest_llmsim.reporting.baseline import ScenarioDelta
from pytest_llmsim.reporting.summary import Gates, RunSummary

TEST_ID_CELL = '<td class="col-testId">{}</td>'
CHAT_MARK = '<div class="llmsim-card">'  # scenario_html's card: the chat extra of a row
# pytest-html's log entry of a report section: `` Captured llmsim transcript call `` centred in dashes, then the text.
TRANSCRIPT_SECTION = re.compile(r"-* Captured llmsim transcript\b[^\n]* -*\n")


def escaped_test_id_cells(report: Any, cells: list[str]) -> None:
    """Replace pytest-html's raw Test cell of ``report`` with an escaped one (no-op if already escaped)."""
    test_id = report.nodeid if report.when == "call" else f"{report.nodeid}::{report.when}"
    raw, safe = TEST_ID_CELL.format(test_id), TEST_ID_CELL.format(escape(test_id, quote=True))
    if raw == safe:
        return
    for index, cell in enumerate(cells):
        if cell == raw:
            cells[index] = safe


class HtmlHooks:
    """The pytest-html side of the report plugin; reads records and totals through the callables given."""

    def __init__(self, record_for: Callable[[str], ScenarioRecord | None],
                 totals: Callable[[], tuple[RunSummary, Gates, list[str]]]) -> None:
        self.record_for = record_for
        self.totals = totals

    @staticmethod
    def attach_extras(report: pytest.TestReport, record: ScenarioRecord, delta: ScenarioDelta | None = None) -> None:
        """The chat of ``record``, and, when it changed since the baseline, the old and new side by side."""
        from pytest_html import extras

        added = [extras.html(scenario_html(record))]
        if delta is not None:
            added.append(extras.html(baseline_diff_html(delta)))
        report.extras = [*getattr(report, "extras", []), *added]  # type: ignore[attr-defined]  # pytest-html reads it

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        cells.insert(2, '<th class="sortable" data-column-type="score">Score</th>')
        cells.insert(3, '<th data-column-type="cost">Cost (USD)</th>')

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_row(self, report: pytest.TestReport, cells: list[str]) -> None:
        escaped_test_id_cells(report, cells)
        record = self.record_for(report.nodeid)
        score = cost = ""
        if record is not None:
            score = "" if record.score is None else escape(f"{record.score} (min {record.min_score})")
            cost = f"{record.cost_usd:.6f}"
        cells.insert(2, f'<td class="col-score">{score}</td>')
        cells.insert(3, f'<td class="col-cost">{cost}</td>')

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_html(self, report: pytest.TestReport, data: list[str]) -> None:
        """One transcript per row: a row that shows the chat (our extra) drops the ``llmsim transcript`` report
        sections from its log, which pytest-html would print below it as the same conversation again."""
        if any(CHAT_MARK in str(extra.get("content", "")) for extra in getattr(report, "extras", [])
               if isinstance(extra, dict)):
            data[:] = [entry for entry in data if not TRANSCRIPT_SECTION.match(entry)] or ["No log output captured."]

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str],
                                    session: pytest.Session) -> None:
        run, gates, missed = self.totals()
        prefix.extend([STYLE, summary_html(run, gates, missed)])
