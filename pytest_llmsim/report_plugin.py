"""Reporting hooks: terminal summary, exports, suite gates, histogram, pytest-html and JUnit additions.

Per-scenario data arrives on the test reports as ``report.llmsim`` (``ScenarioResult.to_dict()``; pytest
serialises a report's ``__dict__``, so the attribute crosses from xdist workers as each item finishes). The
controller (the process without ``config.workerinput``) is the only one with a ``ReportPlugin``: it turns each
scenario report into one record (a rerun replaces the earlier record of its node id), and at session end
computes the summary once, checks the gates, writes the exports and the histogram, and prints the summary.
Workers only price their own items for the JUnit ``cost_usd`` property (``scenario_cost_usd``).
"""

from __future__ import annotations

import datetime
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from . import options
from .errors import ConfigError
from .exports import export_format, write_results
from .histogram import HistogramUnavailable, draw_histogram
from .options import IniKey
from .pricing import PriceTable, load_price_table, scenario_cost
from .results import ERROR, FAILED, PASSED
from .scenario_paths import is_scenario_nodeid
from .summary import Gates, RunSummary, make_record, missed_gates, summarize

REPORT_INI_KEYS = [
    IniKey("llmsim_results", "Write one record per scenario and the run summary to this file; the format "
           "follows the extension: .json, .csv or .ndjson (relative to rootdir).", ""),
    IniKey("llmsim_histogram", "Draw the score distribution to this PNG file (needs matplotlib).", ""),
    IniKey("llmsim_prices", "Price file (JSON or YAML mapping model -> {input, output} in USD per 1M tokens, "
           "or model -> another model's name) extending or overriding the shipped price table.", ""),
    IniKey("llmsim_min_mean_score", "Suite gate: the session fails if the mean score is below this (1-3).", ""),
    IniKey("llmsim_min_pass_rate", "Suite gate: the session fails if a smaller share of scenarios passes "
           "(a fraction such as 0.9, or a percentage such as 90%).", ""),
    IniKey("llmsim_max_cost_usd", "Suite gate: the session fails if live LLM calls cost more than this (USD).", ""),
]

PRICES_KEY = pytest.StashKey[PriceTable]()
_WORKER_PRICES = "llmsim_prices_path"
_TABLE_ROWS_DEFAULT = 50
_NAME_WIDTH = 70


def add_report_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmsim")
    group.addoption("--llmsim-results", dest="llmsim_results", metavar="PATH",
                    help="Write per-scenario results and the run summary to PATH (.json, .csv or .ndjson).")
    group.addoption("--llmsim-histogram", dest="llmsim_histogram", metavar="PATH",
                    help="Draw the score distribution to a PNG file (needs matplotlib).")
    group.addoption("--llmsim-prices", dest="llmsim_prices", metavar="PATH",
                    help="Price file extending or overriding the shipped price table (JSON or YAML).")
    group.addoption("--llmsim-min-mean-score", dest="llmsim_min_mean_score", metavar="X",
                    help="Suite gate: fail the session if the mean score is below X.")
    group.addoption("--llmsim-min-pass-rate", dest="llmsim_min_pass_rate", metavar="P",
                    help="Suite gate: fail the session if the pass rate is below P (0.9 or 90%%).")
    group.addoption("--llmsim-max-cost-usd", dest="llmsim_max_cost_usd", metavar="C",
                    help="Suite gate: fail the session if live LLM calls cost more than C US dollars.")
    for key in REPORT_INI_KEYS:
        parser.addini(key.name, key.help, type=key.type, default=key.default)  # type: ignore[arg-type]


# -- option resolution ----------------------------------------------------------------------------------------
def path_option(config: pytest.Config, name: str) -> Path | None:
    """A path from the command line (relative to the invocation directory) or the ini file (to rootdir)."""
    raw = config.getoption(name, default=None)
    if raw:
        path = Path(raw).expanduser()
        return path if path.is_absolute() else config.invocation_params.dir / path
    raw = config.getini(name)
    return options.resolve_path(config, str(raw)) if raw else None


def _number_option(config: pytest.Config, name: str, *, percent: bool = False) -> tuple[float | None, str]:
    raw = options.option_or_ini(config, name)
    if raw in (None, ""):
        return None, ""
    text = str(raw).strip()
    try:
        return float(text[:-1] if percent and text.endswith("%") else text), text
    except ValueError:
        raise pytest.UsageError(f"llmsim: {name} must be a number, got {text!r}") from None


def gates_from_config(config: pytest.Config) -> Gates:
    mean, _ = _number_option(config, "llmsim_min_mean_score")
    if mean is not None and not 1 <= mean <= 3:
        raise pytest.UsageError(f"llmsim: llmsim_min_mean_score must be between 1 and 3, got {mean:g}")
    rate, raw_rate = _number_option(config, "llmsim_min_pass_rate", percent=True)
    if rate is not None:
        if raw_rate.endswith("%"):
            rate /= 100
        elif rate > 1:
            raise pytest.UsageError(f"llmsim: llmsim_min_pass_rate must be a fraction between 0 and 1 or a "
                                    f"percentage such as 90%, got {raw_rate!r}")
        if not 0 <= rate <= 1:
            raise pytest.UsageError(f"llmsim: llmsim_min_pass_rate must be between 0 and 100%, got {raw_rate!r}")
    cost, _ = _number_option(config, "llmsim_max_cost_usd")
    if cost is not None and cost < 0:
        raise pytest.UsageError(f"llmsim: llmsim_max_cost_usd must be >= 0, got {cost:g}")
    return Gates(min_mean_score=mean, min_pass_rate=rate, max_cost_usd=cost)


def _prices_path(config: pytest.Config) -> Path | None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and _WORKER_PRICES in workerinput:
        return Path(workerinput[_WORKER_PRICES]) if workerinput[_WORKER_PRICES] else None
    return path_option(config, "llmsim_prices")


def price_table(config: pytest.Config) -> PriceTable:
    """The run's price table (shipped table + price file), loaded once per process."""
    table = config.stash.get(PRICES_KEY, None)
    if table is None:
        try:
            table = load_price_table(_prices_path(config))
        except ConfigError as exc:
            raise pytest.UsageError(f"llmsim: {exc}") from None
        config.stash[PRICES_KEY] = table
    return table


def scenario_cost_usd(config: pytest.Config, result: dict[str, Any]) -> str:
    """Spent cost of one scenario's live calls, as the JUnit ``cost_usd`` property (fixed-point, 8 decimals)."""
    return f"{scenario_cost(result, price_table(config)).spent_usd:.8f}"


# -- helpers ------------------------------------------------------------------------------------------------
def _is_scenario_report(report: pytest.TestReport) -> bool:
    return "llmsim" in getattr(report, "keywords", {}) or is_scenario_nodeid(report.nodeid)


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.failed and report.when != "call":
        return "error"
    return report.outcome


def _unrun_result(report: pytest.TestReport) -> dict[str, Any]:
    """A result for a scenario item that errored without a conversation (invalid scenario, crashed worker)."""
    path, _, name = report.nodeid.rpartition("::")
    return {"scenario": name, "nodeid": report.nodeid, "source": path, "status": ERROR, "min_score": None,
            "error_kind": "scenario_error" if report.when == "setup" else "crashed",
            "error_message": report.longreprtext[:4000]}


def transcript_text(record: dict[str, Any]) -> str:
    """The plain-text chat of a record (JUnit ``system-out``)."""
    lines = [f"scenario {record['scenario']!r}: {record['status']}, score {record.get('score')} "
             f"(min_score {record.get('min_score')})"]
    if record.get("comment"):
        lines.append(f"judge: {record['comment']}")
    if record.get("error_message"):
        lines.append(f"error ({record.get('error_kind')}): {record['error_message']}")
    for number, turn in enumerate(record.get("transcript") or [], 1):
        who = "Customer" if turn.get("role") == "client" else "Agent"
        lines.append(f"{number:>3}. {who}: {turn.get('text', '')}")
    if record.get("ended_by"):
        lines.append(f"     [call ended by {record['ended_by']}: {record.get('end_reason', '')}]")
    return "\n".join(lines) + "\n"


def _usd(value: float) -> str:
    return f"${value:.6f}"


def _rate(summary: RunSummary) -> str:
    return "n/a" if summary.success_rate is None else f"{summary.success_rate:.1%}"


def _backend_message(record: dict[str, Any]) -> str:
    """The error message without its ``<nodeid> <role> turn <n>: `` prefix (the same for every item)."""
    message = str(record.get("error_message", ""))
    if message.startswith(str(record.get("nodeid", ""))) and ": " in message:
        message = message.split(": ", 1)[1]
    return message


class ReportPlugin:
    """Controller-side collector of scenario records; owner of the summary, gates, exports and histogram."""

    name = "llmsim-report"

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.gates = gates_from_config(config)
        self.results_path = path_option(config, "llmsim_results")
        if self.results_path is not None:
            try:
                export_format(self.results_path)
            except ValueError as exc:
                raise pytest.UsageError(f"llmsim: llmsim_results: {exc}") from None
        self.histogram_path = path_option(config, "llmsim_histogram")
        self.prices_path = path_option(config, "llmsim_prices")
        self.prices = price_table(config)  # a bad price file is a usage error before anything runs
        self.run_id = str(uuid.uuid4())
        self.records: dict[str, dict[str, Any]] = {}
        self.order: dict[str, int] = {}
        self._summary: RunSummary | None = None
        self.missed: list[str] = []
        self.notes: list[tuple[str, dict[str, bool]]] = []
        self.backend_messages: list[str] = []
        self.html: HtmlHooks | None = None
        if config.pluginmanager.hasplugin("html") and config.getoption("htmlpath", default=None):
            self.html = HtmlHooks(self)
            config.pluginmanager.register(self.html, "llmsim-html")

    # -- collecting ---------------------------------------------------------------------------------------
    def _set_order(self, nodeids: Iterable[str]) -> None:
        if not self.order:
            self.order = {nodeid: index for index, nodeid in enumerate(nodeids)}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._set_order(item.nodeid for item in session.items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self._set_order(ids)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        # Workers price items for the JUnit property; give them the file this process resolved.
        node.workerinput[_WORKER_PRICES] = str(self.prices_path) if self.prices_path else ""

    @pytest.hookimpl(tryfirst=True)  # before pytest-html (trylast) and junitxml read the report
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "llmsim", None)
        if isinstance(data, dict):
            record = self._add(report, data)
            if self.html is not None:
                self.html.attach_extras(report, record)
        elif report.failed and report.when != "teardown" and report.nodeid not in self.records \
                and _is_scenario_report(report):
            self._add(report, _unrun_result(report))
        if report.when == "teardown":
            self._junit_transcript(report)

    def _add(self, report: pytest.TestReport, data: dict[str, Any]) -> dict[str, Any]:
        record = make_record(data, scenario_cost(data, self.prices), session_id=str(uuid.uuid4()),
                             outcome=_outcome(report), worker=str(getattr(report, "worker_id", "") or ""))
        self.records[report.nodeid] = record
        self._summary = None
        return record

    def _junit_transcript(self, report: pytest.TestReport) -> None:
        """Put a failing or erroring scenario's transcript into its JUnit ``<system-out>``.

        junitxml copies only *captured stdout* there, and our transcript is a report section of its own; so
        append the element to the test case's node reporter (internal API: ``_pytest.junitxml.xml_key``).
        """
        record = self.records.get(report.nodeid)
        if record is None or record["status"] not in (FAILED, ERROR) or not record["transcript"]:
            return
        try:
            from _pytest.junitxml import bin_xml_escape, xml_key
        except ImportError:  # pragma: no cover - a pytest without these internals: properties still work
            return
        xml = self.config.stash.get(xml_key, None)
        if xml is None:
            return
        element = ET.Element("system-out")
        element.text = bin_xml_escape(transcript_text(record))
        xml.node_reporter(report).append(element)

    # -- results --------------------------------------------------------------------------------------------
    def ordered_records(self) -> list[dict[str, Any]]:
        last = len(self.order)
        positions = {nodeid: i for i, nodeid in enumerate(self.records)}
        return sorted(self.records.values(),
                      key=lambda r: (self.order.get(r["nodeid"], last), positions[r["nodeid"]]))

    @property
    def summary(self) -> RunSummary:
        if self._summary is None:
            self._summary = summarize(self.ordered_records())
        return self._summary

    def summary_dict(self) -> dict[str, Any]:
        data = self.summary.to_dict()
        data["gates"] = {**self.gates.to_dict(), "missed": list(self.missed)}
        return data

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.config.getoption("collectonly", default=False):
            return  # nothing ran: keep the previous export and histogram
        summary = self.summary
        self.missed = missed_gates(summary, self.gates)
        records = self.ordered_records()
        for record in records:
            if record.get("error_kind") == "backend_missing":
                message = _backend_message(record)
                if message not in self.backend_messages:
                    self.backend_messages.append(message)
        if self.results_path is not None:
            generated = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            try:
                written = write_results(self.results_path, records, self.summary_dict(), run_id=self.run_id,
                                        generated_at=generated)
            except OSError as exc:
                self.notes.append((f"llmsim: could not write results to {self.results_path}: {exc}", {"red": True}))
            else:
                extra = f"; summary in {written[1]}" if len(written) > 1 else ""
                self.notes.append((f"llmsim: {len(records)} results written to {written[0]}{extra}", {}))
        if self.histogram_path is not None:
            try:
                draw_histogram(summary, self.histogram_path)
            except HistogramUnavailable as exc:
                self.notes.append((f"llmsim: --llmsim-histogram: {exc}", {"yellow": True}))
            except OSError as exc:
                self.notes.append((f"llmsim: could not write the histogram to {self.histogram_path}: {exc}",
                                   {"red": True}))
            else:
                self.notes.append((f"llmsim: score histogram written to {self.histogram_path}", {}))
        if self.backend_messages:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
        elif self.missed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    # -- terminal -------------------------------------------------------------------------------------------
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.config.getoption("collectonly", default=False):
            return
        tr = terminalreporter
        verbosity = self.config.get_verbosity()
        summary = self.summary
        if not self.records and not self.notes and not self.backend_messages:
            if self.gates.any and verbosity >= 0:
                tr.write_line("llmsim: no scenario ran; suite gates not checked")
            return
        if verbosity >= 0:
            tr.write_sep("=", "llmsim summary")
        for message in self.backend_messages:
            tr.write_line(f"llmsim: {message}", red=True, bold=True)
        if verbosity < 0:
            tr.write_line(self.totals_line(summary))
        elif self.records:
            self._write_table(tr, verbosity)
            for line in self.totals_lines(summary):
                tr.write_line(line)
        for line in self.missed:
            tr.write_line(f"llmsim gate missed: {line}", red=True, bold=True)
        if self.gates.any and not self.missed and summary.total_scenarios and verbosity >= 0:
            tr.write_line("llmsim: all suite gates met", green=True)
        if verbosity >= 0:
            for text, markup in self.notes:
                tr.write_line(text, **markup)

    def _write_table(self, tr: Any, verbosity: int) -> None:
        records = self.ordered_records()
        hidden = 0
        if verbosity < 1 and len(records) > _TABLE_ROWS_DEFAULT:
            shown = [r for r in records if r["status"] != PASSED]
            hidden = len(records) - len(shown)
            records = shown
        rows = []
        for r in records:
            name = r["nodeid"] if len(r["nodeid"]) <= _NAME_WIDTH else "…" + r["nodeid"][-(_NAME_WIDTH - 1):]
            score = "-" if r["score"] is None else f"{r['score']} (min {r['min_score']})"
            status = {PASSED: "passed", FAILED: "FAILED", ERROR: f"ERROR ({r['error_kind'] or 'error'})"}.get(
                r["status"], r["status"])
            if r["outcome"] in ("xfailed", "xpassed"):
                status += f" [{r['outcome']}]"
            rows.append((name, score, str(r["total_turns"]), _usd(r["cost_usd"]), status, r["status"]))
        header = ("scenario", "score", "turns", "cost", "status")
        widths = [max([len(header[i]), *(len(row[i]) for row in rows)]) for i in range(4)]

        def fmt(cells: tuple[str, ...]) -> str:
            return (f"{cells[0]:<{widths[0]}}  {cells[1]:>{widths[1]}}  {cells[2]:>{widths[2]}}  "
                    f"{cells[3]:>{widths[3]}}  {cells[4]}")

        tr.write_line(fmt(header), bold=True)
        for row in rows:
            tr.write_line(fmt(row[:5]), red=row[5] != PASSED)
        if hidden:
            tr.write_line(f"... and {hidden} passed scenarios (-v lists every scenario)")

    @staticmethod
    def totals_lines(summary: RunSummary) -> list[str]:
        stats = summary.score_statistics
        distribution = ", ".join(f"{key[-1]}: {count}" for key, count in summary.score_distribution.items())
        scores = ("scores: none (no scenario was scored)" if stats.mean is None else
                  f"scores: mean {stats.mean:g}, median {stats.median:g}, std {stats.std:g}, min {stats.min}, "
                  f"max {stats.max}; distribution {distribution}")
        lines = [
            f"scenarios: {summary.total_scenarios} ({summary.successful_scenarios} passed, "
            f"{summary.failed_scenarios} failed, {summary.errored_scenarios} errored), pass rate {_rate(summary)}",
            scores,
            f"tokens: {summary.total_tokens} live + {summary.replayed_tokens} replayed "
            f"(prompt {summary.prompt_tokens}, completion {summary.completion_tokens})",
            f"LLM calls: {summary.total_requests} live, {summary.replayed_requests} replayed from the cache",
            f"cost: {_usd(summary.total_cost_usd)} spent on live calls, {_usd(summary.saved_cost_usd)} saved by "
            f"replays",
        ]
        if summary.unpriced_models:
            lines.append(f"unpriced models (counted at $0; add them to llmsim_prices): "
                         f"{', '.join(summary.unpriced_models)}")
        return lines

    @staticmethod
    def totals_line(summary: RunSummary) -> str:
        mean = summary.score_statistics.mean
        unpriced = f", unpriced: {', '.join(summary.unpriced_models)}" if summary.unpriced_models else ""
        return (f"llmsim: {summary.total_scenarios} scenarios, {summary.successful_scenarios} passed, "
                f"{summary.failed_scenarios} failed, {summary.errored_scenarios} errored, pass rate "
                f"{_rate(summary)}, mean score {'n/a' if mean is None else f'{mean:g}'}, tokens "
                f"{summary.total_tokens} live + {summary.replayed_tokens} replayed, calls {summary.total_requests} "
                f"live / {summary.replayed_requests} replayed, cost {_usd(summary.total_cost_usd)} "
                f"(saved {_usd(summary.saved_cost_usd)}){unpriced}")


class HtmlHooks:
    """pytest-html 4 additions; registered only when pytest-html is active and ``--html`` is given."""

    def __init__(self, plugin: ReportPlugin) -> None:
        self.plugin = plugin

    def attach_extras(self, report: pytest.TestReport, record: dict[str, Any]) -> None:
        from pytest_html import extras

        from .html_report import scenario_html

        report.extras = [*getattr(report, "extras", []), extras.html(scenario_html(record))]  # type: ignore[attr-defined]

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        cells.insert(2, '<th class="sortable" data-column-type="score">Score</th>')
        cells.insert(3, '<th data-column-type="cost">Cost (USD)</th>')

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_row(self, report: pytest.TestReport, cells: list[str]) -> None:
        from html import escape

        record = self.plugin.records.get(report.nodeid)
        score = cost = ""
        if record is not None:
            score = "" if record["score"] is None else escape(f"{record['score']} (min {record['min_score']})")
            cost = f"{record['cost_usd']:.6f}"
        cells.insert(2, f'<td class="col-score">{score}</td>')
        cells.insert(3, f'<td class="col-cost">{cost}</td>')

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str],
                                    session: pytest.Session) -> None:
        from .html_report import STYLE, summary_html

        plugin = self.plugin
        missed = plugin.missed or missed_gates(plugin.summary, plugin.gates)
        prefix.extend([STYLE, summary_html(plugin.summary, plugin.gates, missed)])
