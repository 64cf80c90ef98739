"""The controller's reporting plugin: a thin pytest front over the reporting engine.

Why one module: it is the one place that orders the session end (gates, then every file, then the terminal),
and that order is what makes every report agree; each step it calls lives in ``reporting/``.

Who does what:

* ``report_options``: the report options' values (gates, output paths, the baseline, the price table), from the
  option table;
* ``baseline``: the baseline (loaded at configure time: a bad one is a usage error before anything runs), this
  run compared with it (``self.comparison``, read by the terminal, the exports, the HTML and markdown reports)
  and the baseline gates;
* ``collector.RecordCollector``: test reports -> one ``ScenarioRecord`` per scenario item, in collection order;
* ``summary``: the run totals and the suite gates; ``exports``: the results files; ``histogram``: the PNG;
* ``terminal_report``: the llmsim terminal summary as lines; ``html_hooks`` + ``html_report``: pytest-html;
* this module: the pytest hooks that feed the collector and, at session end, compute the summary once, compare
  with the baseline, check the gates, write the exports and the histogram, set the exit status and print the
  summary; plus the JUnit transcript and the pytest-html extras of every conversation of a test.

Other plugins add to the report through one explicit interface, ``ReportContributor``, handed to the
``ReportPlugin`` when ``hooks.pytest_configure`` builds both (the judge calibration is one): at session end the
report plugin asks each for its missed gates and its export sections *before* it writes anything, so every
report and the export (written once) hold them, and prints each one's terminal lines before its own summary. No
plugin reaches into another's lists, and none depends on the order pytest calls their hooks in.

Only the controller (the process without ``config.workerinput``) has a ``ReportPlugin``. Workers only price
their own items for the JUnit ``cost_usd`` property (``scenario_cost_usd``).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from pytest_llmsim.history.compare import RunComparison, significant_regressions
from pytest_llmsim.history.store import now
from pytest_llmsim.model.results import Outcome, ScenarioRecord, ScenarioResult, Status
from pytest_llmsim.plugin.gate import is_known_failure
from pytest_llmsim.plugin.history import FLAKY_SHOWN, FLAKY_WINDOW, RunHistory, statistics
from pytest_llmsim.plugin.html_hooks import HtmlHooks
from pytest_llmsim.plugin.report_options import (
    WORKER_BASELINE,
    WORKER_BASELINE_SHOWN,
    WORKER_PRICES,
    baseline_from_config,
    gates_from_config,
    local_judge,
    path_option,
    price_table,
    resolved_options,
    scenario_cost_usd,
)
from pytest_llmsim.plugin.shards import ShardPlugin
from pytest_llmsim.reporting.baseline import Comparison, ScenarioDelta, compare, run_missed, scenario_delta
from pytest_llmsim.reporting.collector import RecordCollector, trimmed_report_data
from pytest_llmsim.reporting.exports import export_format, write_results
from pytest_llmsim.reporting.histogram import HistogramUnavailable, draw_histogram
from pytest_llmsim.reporting.markdown import STEP_SUMMARY_ENV, append_step_summary, run_markdown, write_markdown
from pytest_llmsim.reporting.merge import SHARD_FIELD, baseline_identity
from pytest_llmsim.reporting.summary import (
    Gates,
    RunSummary,
    gates_unchecked_reason,
    known_failures_text,
    local_judge_baseline_text,
    local_judge_text,
    missed_gates,
    summary_dict,
)
from pytest_llmsim.reporting.terminal import Line, backend_messages, one_line, record_text, summary_lines

__all__ = ["ReportContributor", "ReportPlugin", "junit_transcript", "scenario_cost_usd"]


class ReportContributor(Protocol):
    """A part of the run's report that another plugin decides (the judge calibration's gate, section and lines).

    The report plugin asks, at session end and in this order: ``missed_gates`` (with the run's records), then
    ``export_sections``; then, when it prints, ``terminal_lines``. ``ran``: the contributor ran work of its own, so
    a session that collected no test is not an empty run: its exit status is the contributors' gates'."""

    @property
    def ran(self) -> bool: ...

    def missed_gates(self, records: Sequence[ScenarioRecord]) -> list[str]:
        """The gates this contributor decides that the run missed (``llmsim gate missed: <line>``)."""
        ...

    def export_sections(self) -> dict[str, Any]:
        """Top-level objects of the export (the JSON document, or the summary file of a CSV/NDJSON export)."""
        ...

    def terminal_lines(self) -> list[Line]:
        """Lines printed before the llmsim summary (also under ``--collect-only``)."""
        ...


def junit_transcript(config: pytest.Config, report: pytest.TestReport, record: ScenarioRecord, *,
                     figures: bool = False) -> None:
    """The test case's llmsim ``<system-out>`` in the JUnit XML, if any: under ``junit_family=xunit2`` (pytest's
    default, whose schema has no per-testcase ``<properties>``) and ``figures`` (the item reported a conversation),
    the scenario's figures as ``name=value`` lines under ``[llmsim]`` (the properties xunit1 gets, see
    ``junit_properties``); for a failing or erroring scenario, its verdict, metrics and transcript.

    junitxml copies only *captured stdout* there, and our transcript is a report section of its own; so
    append the element to the test case's node reporter (internal API: ``_pytest.junitxml.xml_key``).
    """
    try:
        from _pytest.junitxml import bin_xml_escape, xml_key
    except ImportError:  # pragma: no cover - a pytest without these internals: properties still work
        return
    xml = config.stash.get(xml_key, None)
    if xml is None:
        return
    parts = []
    if figures and xml.family != "xunit1":

        lines = [f"{name}={one_line('' if value is None else value)}"
                 for name, value in junit_properties(record.result, f"{record.cost_usd:.8f}")]
        parts.append("\n".join(["[llmsim]", *lines]) + "\n")
    if record.status in (Status.FAILED, Status.ERROR) and record.result.transcript:
        parts.append(record_text(record))
    if not parts:
        return
    element = ET.Element("system-out")
    element.text = bin_xml_escape("\n".join(parts))
    xml.node_reporter(report).append(element)


class ReportPlugin:
    """Feeds the record collector and, at session end, reports the run (controller only)."""

    name = "llmsim-report"

    def __init__(self, config: pytest.Config, contributors: Sequence[ReportContributor] = ()) -> None:
        self.config = config
        self.contributors = tuple(contributors)
        gates = gates_from_config(config)
        self.notes: list[Line] = []
        # A bad baseline is a usage error now, before anything runs; its recordings are priced with this run's table.
        self.baseline = baseline_from_config(config)
        if self.baseline is None and gates.baseline_gates:
            self.notes.append(Line("llmsim: baseline gates (llmsim_fail_on_regression, llmsim_max_score_drop, "
                                   "llmsim_fail_on_significant_regression) not checked: no baseline given "
                                   "(--llmsim-baseline)", {"yellow": True}))
            gates = dataclasses.replace(gates, fail_on_regression=False, max_score_drop=None,
                                        significant_regression_alpha=None)
        self.gates = gates
        self.comparison: Comparison | None = None
        self.statistics: RunComparison | None = None  # the comparison's statistics (history.compare)
        self.started_at = now()
        history_path = path_option(config, "llmsim_history")
        self.history = RunHistory(history_path, resolved_options(config), config.rootpath) \
            if history_path is not None else None
        self.known_failures: set[str] = set()  # --llmsim-gate=regressions: reports made xfailed (gate_plugin)
        self.results_path = path_option(config, "llmsim_results")
        if self.results_path is not None:
            try:
                export_format(self.results_path)
            except ValueError as exc:
                raise pytest.UsageError(f"llmsim: llmsim_results: {exc}") from None
        self.metrics_summary_path = path_option(config, "llmsim_metrics_summary")
        self.markdown_path = path_option(config, "llmsim_markdown")
        self.histogram_path = path_option(config, "llmsim_histogram")
        self.prices_path = path_option(config, "llmsim_prices")
        # A bad price file is a usage error before anything runs. One run id for every record of the session.
        self.collector = RecordCollector(price_table(config), run_id=str(uuid.uuid4()))
        self.final: RunSummary | None = None
        self.worker_rate_limits: list[Any] = []  # each xdist worker's rate-limit figures, sent at its end
        self.worker_shard: dict[str, Any] | None = None  # --llmsim-shard under xdist: a worker's split
        self.missed: list[str] = []
        self.shard_block: dict[str, Any] | None = None  # --llmsim-shard: the export's ``llmsim_shard`` object
        # Files this run was asked to write and could not: one line each, printed even under -q; the run fails.
        self.write_failures: list[Line] = []
        self.backend: list[str] = []
        self.junit_figures: set[str] = set()  # items that reported a conversation and are not torn down yet
        self.html: HtmlHooks | None = None
        if config.pluginmanager.hasplugin("html") and config.getoption("htmlpath", default=None):
            self.html = HtmlHooks(self.collector.get, self._html_totals)
            config.pluginmanager.register(self.html, "llmsim-html")

    @property
    def run_id(self) -> str:
        return self.collector.run_id

    def records(self) -> list[ScenarioRecord]:
        """The run's records so far, in collection order."""
        return self.collector.ordered()

    @property
    def summary(self) -> RunSummary:
        """The final summary once the session finished; the totals so far before."""
        return self.final if self.final is not None else self.collector.summary()

    def _html_totals(self) -> tuple[RunSummary, Gates, list[str]]:
        summary = self.summary
        return summary, self.gates, self.missed if self.final is not None else missed_gates(summary, self.gates)

    # -- collecting ---------------------------------------------------------------------------------------
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collector.expect((item.nodeid for item in session.items),
                              (item.nodeid for item in session.items if item.get_closest_marker("llmsim")))

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        from pytest_llmsim.model.scenario_paths import is_scenario_nodeid

        self.collector.expect(ids, (nodeid for nodeid in ids if is_scenario_nodeid(nodeid)))

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {})
        self.worker_rate_limits.append(output.get("llmsim_rate_limits"))
        if self.worker_shard is None and isinstance(output.get("llmsim_shard"), dict):
            self.worker_shard = output["llmsim_shard"]

    def _rate_limit_stats(self) -> Any:
        """The rate-limit figures of this process and of every xdist worker, added up (``LimitStats``)."""
        from pytest_llmsim.llm.rate_limits import merge_stats
        from pytest_llmsim.plugin.session import SESSION_KEY

        llmsim = self.config.stash.get(SESSION_KEY, None)
        own = llmsim.rate_limit_stats() if llmsim is not None else None
        return merge_stats([own, *self.worker_rate_limits])

    def _with_rate_limits(self, summary: RunSummary) -> RunSummary:
        """``summary`` with the rate-limit figures of this process and of every xdist worker, added up."""
        from pytest_llmsim.llm.rate_limits import throughput_fields

        return dataclasses.replace(summary, **throughput_fields(self._rate_limit_stats()))

    @property
    def shard(self) -> ShardPlugin | None:
        """The ``--llmsim-shard`` plugin when this run is a shard."""
        plugin = self.config.pluginmanager.get_plugin(ShardPlugin.name)
        return plugin if isinstance(plugin, ShardPlugin) else None

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        # Workers price items for the JUnit property; give them the file this process resolved.
        node.workerinput[WORKER_PRICES] = str(self.prices_path) if self.prices_path else ""
        if self.baseline is not None:  # the regressions gate decides in the workers, from the same baseline
            node.workerinput[WORKER_BASELINE] = str(self.baseline.path)
            node.workerinput[WORKER_BASELINE_SHOWN] = self.baseline.label

    @pytest.hookimpl(tryfirst=True)  # before pytest-html (trylast) and junitxml read the report
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = self.collector.add_report(report)
        if is_known_failure(report):
            self.known_failures.add(report.nodeid)
        data = getattr(report, "llmsim", None)
        if record is not None and data is not None:
            self.junit_figures.add(report.nodeid)
        if record is not None and self.html is not None and data is not None:
            self.html.attach_extras(report, record, self._changed_delta(record))
            self._attach_more_chats(report)
        if record is not None and isinstance(data, dict):
            report.llmsim = trimmed_report_data(data)  # type: ignore[attr-defined]  # plugin data rides on the report
        if report.when == "teardown":
            record = self.collector.get(report.nodeid)
            if record is not None:
                junit_transcript(self.config, report, record, figures=report.nodeid in self.junit_figures)
            self.junit_figures.discard(report.nodeid)

    def _attach_more_chats(self, report: pytest.TestReport) -> None:
        """The chats of a test's second and later ``llmsim`` fixture conversations (``report.llmsim_more``, stored
        by the collector with the first) as pytest-html extras of the test's row, after the first one's."""
        assert self.html is not None
        for more in getattr(report, "llmsim_more", None) or []:
            record = self.collector.get(str(more.get("nodeid", ""))) if isinstance(more, dict) else None
            if record is not None:
                self.html.attach_extras(report, record)

    def _changed_delta(self, record: ScenarioRecord) -> ScenarioDelta | None:
        """``record`` compared with its baseline record, when there is one and something changed."""
        if self.baseline is None:
            return None
        old = self.baseline.records.get(record.nodeid)
        if old is None:
            return None
        delta = scenario_delta(record, old)
        return delta if delta.changed else None

    # -- session end --------------------------------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.config.getoption("collectonly", default=False):
            return  # nothing ran: keep the previous export and histogram
        interrupted = session.exitstatus == pytest.ExitCode.INTERRUPTED
        items_status = int(session.exitstatus)  # pytest's, from the items' outcomes alone (a shard's export keeps it)
        summary = self._with_rate_limits(self.collector.summary(interrupted=interrupted, final=True))
        records = self.collector.ordered()
        known = [r.nodeid for r in records if r.nodeid in self.known_failures and r.outcome == Outcome.XFAILED]
        summary = self.final = dataclasses.replace(summary, local_judge=local_judge(self.config, records),
                                                   known_failures=known)
        # The contributors' gates before anything is written: every report below, and the export, holds them.
        contributed = [line for contributor in self.contributors for line in contributor.missed_gates(records)]
        if self.baseline is not None:
            self.comparison = compare(records, self.baseline)
        shard = self.shard
        if self.comparison is not None and self.baseline is not None:
            self.statistics = statistics(records, self.baseline, alpha=self.gates.significant_regression_alpha,
                                         history=self.history)
            self.notes.append(Line(f"llmsim: statistics: {self.statistics.statistics_line()}"))
        if shard is None:
            self.missed = run_missed(summary, self.gates, self.comparison, contributed)
            if (self.statistics is not None and self.gates.significant_regression_alpha is not None
                    and gates_unchecked_reason(summary) is None):
                self.missed += significant_regressions(self.statistics)
        else:  # the suite and baseline gates are the whole suite's: ``llmsim merge`` checks them over every shard
            self.missed = list(contributed)
            if self.gates.any:
                self.notes.append(Line(f"llmsim: shard {shard.shard}: the suite and baseline gates are checked by "
                                       "llmsim merge over every shard's export, not here", {"yellow": True}))
        self.backend = backend_messages(records)
        self.shard_block = None if shard is None else shard.block(
            self.worker_shard, exit_status=items_status, extra_missed=contributed,
            rate_limits=self._rate_limit_stats().to_dict(),
            baseline=None if self.baseline is None else baseline_identity(self.baseline))
        if self.results_path is not None:
            self._export(records, summary)
        if self.metrics_summary_path is not None:
            self._metrics_summary(records, interrupted)
        if self.history is not None:
            self._append_history(records, summary)
        if self.histogram_path is not None:
            self._histogram(summary)
        self._markdown(records, summary)
        self._chat_files(records)
        if session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and any(c.ran for c in self.contributors):
            # A calibration-only run (`-k calibration_only`, or a folder without scenarios): what ran decides the
            # exit status, not pytest's "no tests ran" (5).
            session.exitstatus = pytest.ExitCode.TESTS_FAILED if contributed else pytest.ExitCode.OK
        if self.backend or (self.write_failures and session.exitstatus == pytest.ExitCode.OK):
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
        elif self.missed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _write_failed(self, what: str, path: Path | str, exc: OSError) -> None:
        self.write_failures.append(Line(f"llmsim: could not write {what} to {path}: {exc}", {"red": True,
                                                                                             "bold": True}))

    def _export(self, records: list[ScenarioRecord], summary: RunSummary) -> None:
        assert self.results_path is not None
        generated = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        sections = {name: value for contributor in self.contributors
                    for name, value in contributor.export_sections().items()}
        try:
            comparison = self.comparison
            document = self._summary_document(summary)
            if self.shard_block is not None:
                document["gates"]["checked"] = False  # checked by llmsim merge (``reporting.merge``)
                sections[SHARD_FIELD] = self.shard_block
            written = write_results(self.results_path, records, document, run_id=self.run_id,
                                    generated_at=generated, comparison=comparison, baseline_field=True,
                                    sections=sections)
        except OSError as exc:
            self._write_failed("results", self.results_path, exc)
            return
        extra = f"; summary in {written[1]}" if len(written) > 1 else ""
        partial = "" if summary.complete else " (a partial run, marked as such)"
        self.notes.append(Line(f"llmsim: {len(records)} results written to {written[0]}{extra}{partial}",
                               {} if summary.complete else {"yellow": True}))

    def _metrics_summary(self, records: list[ScenarioRecord], interrupted: bool) -> None:
        from pytest_llmsim.reporting.metrics_summary import write_metrics_summary

        assert self.metrics_summary_path is not None
        timestamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        try:
            written = write_metrics_summary(self.metrics_summary_path, records, timestamp=timestamp,
                                            run_id=self.run_id, interrupted=interrupted)
        except OSError as exc:
            self._write_failed("the metrics summary", self.metrics_summary_path, exc)
            return
        self.notes.append(Line(f"llmsim: metrics summary written to {written}"))

    def _summary_document(self, summary: RunSummary) -> dict[str, Any]:
        """The summary exports and the history store: totals, gates, the baseline comparison with its
        statistics."""
        comparison = None
        if self.comparison is not None:
            comparison = self.comparison.summary_dict()
            if self.statistics is not None:
                comparison["statistics"] = self.statistics.to_dict()
        return summary_dict(summary, self.gates, self.missed, comparison)

    def _append_history(self, records: list[ScenarioRecord], summary: RunSummary) -> None:
        assert self.history is not None
        note = self.history.append(run_id=self.run_id, records=records, summary=summary,
                                   summary_document=self._summary_document(summary), started_at=self.started_at)
        if note is not None:
            self.notes.append(Line(note))

    def _chat_files(self, records: list[ScenarioRecord]) -> None:
        """Say where ``--llmsim-chats-dir`` wrote the conversations, and how many could not be written."""
        chats = [record.result.chat_file for record in records if record.result.chat_file]
        written = [chat for chat in chats if not chat.startswith("not written")]
        if written:
            self.notes.append(Line(f"llmsim: {len(written)} chat file(s) written to {Path(written[0]).parent}"))
        failed = [chat for chat in chats if chat.startswith("not written")]
        if failed:
            self.notes.append(Line(f"llmsim: {len(failed)} chat file(s) {failed[0]}", {"red": True}))

    def _markdown(self, records: list[ScenarioRecord], summary: RunSummary) -> None:
        """The pull request summary: to ``llmsim_markdown``, and appended to ``$GITHUB_STEP_SUMMARY`` when that is
        set and scenarios ran (a plain test suite in the same job adds nothing)."""
        # A shard's own verdict leaves the gates out: the job summary is the merge's (``llmsim merge``).
        step_summary = bool(os.environ.get(STEP_SUMMARY_ENV)) and bool(records) and self.shard is None
        if self.markdown_path is None and not step_summary:
            return
        stats = self.statistics
        flaky = self.history.flaky() if self.history is not None else []
        text = run_markdown(summary, self.gates, self.missed, records, self.comparison,
                            statistics=stats.statistics_line() if stats is not None else "",
                            marks=stats.marks() if stats is not None else None,
                            flaky=[f.text() for f in flaky[:FLAKY_SHOWN]],
                            flaky_title=f"Flaky scenarios (last {FLAKY_WINDOW} runs of the history)")
        if self.markdown_path is not None:
            try:
                write_markdown(self.markdown_path, text)
            except OSError as exc:
                self._write_failed("the markdown summary", self.markdown_path, exc)
            else:
                self.notes.append(Line(f"llmsim: markdown summary written to {self.markdown_path}"))
        if step_summary:
            try:
                append_step_summary(text)
            except OSError as exc:
                self._write_failed(f"the summary (append to ${STEP_SUMMARY_ENV})", os.environ[STEP_SUMMARY_ENV],
                                   exc)
            else:
                self.notes.append(Line(f"llmsim: summary appended to ${STEP_SUMMARY_ENV}"))

    def _histogram(self, summary: RunSummary) -> None:
        assert self.histogram_path is not None
        try:
            draw_histogram(summary, self.histogram_path)
        except HistogramUnavailable as exc:
            self.notes.append(Line(f"llmsim: --llmsim-histogram: {exc}", {"yellow": True}))
        except OSError as exc:
            self._write_failed("the histogram", self.histogram_path, exc)
        else:
            self.notes.append(Line(f"llmsim: score histogram written to {self.histogram_path}"))

    def pytest_unconfigure(self) -> None:
        # pytest's assertion-rewriting import hook stays in ``sys.meta_path`` holding the config, and with it this
        # plugin, until the interpreter exits, where the garbage collector frees what is left piece by piece:
        # 10 000 records took it ~4 s. Dropped here, they are freed at once by reference counting.
        self.collector.records = {}
        self.comparison = None

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for contributor in self.contributors:  # what ran before the scenarios, printed before their summary
            _write_lines(terminalreporter, contributor.terminal_lines())
        if self.config.getoption("collectonly", default=False):
            return
        summary = self.summary
        known = known_failures_text(summary)
        notes = [Line(f"llmsim: {known}", {"yellow": True})] if known is not None else []
        judge = local_judge_text(summary)  # one line, even under -q: the verdicts' worth
        judge_lines = [Line(f"llmsim: {judge}", {"yellow": True, "bold": True})] if judge is not None else []
        caveat = local_judge_baseline_text(summary) if self.comparison is not None else None
        if caveat is not None:
            judge_lines.append(Line(f"llmsim: {caveat}", {"yellow": True}))
        quiet = self.config.get_verbosity() < 0
        lines = summary_lines(self.collector.ordered(), summary, gates=self.gates, missed=self.missed,
                              verbosity=self.config.get_verbosity(),
                              notes=[*([] if quiet else judge_lines), *notes, *self.notes],
                              backend=self.backend, comparison=self.comparison)
        if quiet and lines:
            lines.extend(judge_lines)
        history_warnings = [Line(text, {"yellow": True}) for text in (self.history.warnings if self.history else [])]
        # a file not written, or a history store not usable, is said even under -q
        _write_lines(terminalreporter, [*lines, *self.write_failures, *history_warnings])


def _write_lines(terminalreporter: Any, lines: Sequence[Line]) -> None:
    for line in lines:
        if line.markup.get("separator"):
            terminalreporter.write_sep("=", line.text)
        else:
            terminalreporter.write_line(line.text, **line.markup)


def junit_properties(result: ScenarioResult, cost_usd: str) -> list[tuple[str, Any]]:
    """The JUnit figures of a conversation: score, min_score, comment, turns, ended_by, tokens, ``cost_usd`` (given:
    fixed-point, 8 decimals), cached, then ``metric.<name>.score`` and ``metric.<name>.passed`` (``true``,
    ``false``, empty for an informational metric) per metric, the trials' and the judge's figures."""
    from pytest_llmsim.reporting.terminal import metric_entries

    metrics: list[tuple[str, Any]] = []
    for metric in metric_entries(result.metrics):
        name, score, passed = metric.get("name", "?"), metric.get("score"), metric.get("passed")
        metrics.append((f"metric.{name}.score", "" if score is None else score))
        metrics.append((f"metric.{name}.passed", "true" if passed is True else "false" if passed is False else ""))
    return [
        ("score", result.score), ("min_score", result.min_score), ("comment", result.comment),
        ("turns", result.total_turns), ("ended_by", result.ended_by),
        ("prompt_tokens", result.prompt_tokens), ("completion_tokens", result.completion_tokens),
        ("cost_usd", cost_usd), ("cached", result.fully_cached),
        *metrics,
        *_trial_properties(result),
        *_judge_properties(result),
    ]


def _judge_properties(result: ScenarioResult) -> list[tuple[str, Any]]:
    """JUnit properties of the judge's repeats and of who is to blame for a failure."""
    properties: list[tuple[str, Any]] = []
    if len(result.judge_scores) > 1:
        properties += [("judge_scores", ";".join(map(str, result.judge_scores))),
                       ("judge_unstable", "true" if result.judge_unstable else "false")]
    if result.blame and result.blame != "unknown":
        properties.append(("blame", result.blame))
    return properties


def _trial_properties(result: ScenarioResult) -> list[tuple[str, Any]]:
    """JUnit properties of trials: a trial item's trial and seed; a scenario's trials' figures."""
    if result.trial:
        return [("trial", result.trial), ("seed", result.seed)]
    if not result.trials:
        return []
    from pytest_llmsim.model.results import result_stats

    figures = result_stats(result).to_dict()
    return [(name, figures[name]) for name in ("trials", "passed_trials", "pass_rate", "pass_hat_k", "pass_at_k",
                                               "flaky", "mean_score")]
