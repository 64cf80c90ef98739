"""pytest front of the judge calibration (``calibration.py``): ``--llmsim-calibrate DIR`` and the judge gate
``--llmsim-min-judge-accuracy X``.

Registered on the controller only (the process without ``config.workerinput``), so xdist workers never judge the
set. The set is read at configure time: a file that cannot be read is a usage error before anything runs. The
judge scores it once, before the first scenario item runs: at the end of collection without xdist, and under
xdist just before the workers start (``pytest_xdist_setupnodes``), so the judge's calls never compete with the
scenarios'. The results are a terminal section of their own, the export's ``calibration`` object and, when the
accuracy is below the minimum, a missed gate that fails the session.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmsim.plugin.session import SESSION_KEY

if TYPE_CHECKING:  # the engine (diskcache, the client) is imported only when a calibration set is given
    from pytest_llmsim.engine.calibration import CalibrationCase, CalibrationReport


class CalibrationPlugin:
    """Reads the calibration set, has the judge score it once, reports it and applies the judge gate."""

    name = "llmsim-calibration"

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        resolved = config.stash[SESSION_KEY].options
        self.source: Path | None = resolved["llmsim_calibrate"]
        self.min_accuracy: float | None = resolved["llmsim_min_judge_accuracy"]
        self.cases: list[CalibrationCase] | None = None
        self.report: CalibrationReport | None = None
        self.note = ""
        if self.source is not None:
            from pytest_llmsim.engine.calibration import load_calibration_set
            from pytest_llmsim.errors import CalibrationError

            try:
                self.cases = load_calibration_set(self.source)
            except CalibrationError as exc:
                raise pytest.UsageError(f"llmsim: {exc}") from None
        elif self.min_accuracy is not None:  # unless the judge is a local model with a recorded accuracy
            self.note = ("llmsim: judge gate (llmsim_min_judge_accuracy) not checked: no calibration set given "
                         "(--llmsim-calibrate)")

    @property
    def missed(self) -> str | None:
        """The judge gate's line when the run missed it."""
        return self.report.missed_gate(self.min_accuracy) if self.report is not None else None

    # -- running -------------------------------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)  # before the session's runner opens the cache
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._calibrate()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_setupnodes(self, config: pytest.Config, specs: Any) -> None:
        """Under xdist the controller collects nothing: judge the set before the workers start."""
        self._calibrate()

    def _calibrate(self) -> None:
        if self.cases is None or self.report is not None or self.config.getoption("collectonly", default=False):
            return
        from pytest_llmsim.config.options import rpm_share
        from pytest_llmsim.engine.calibration import check_prompts, run_calibration, shown_path
        from pytest_llmsim.errors import CacheError, CalibrationError
        from pytest_llmsim.model.prompts import PromptRenderer

        llmsim = self.config.stash[SESSION_KEY]
        settings = llmsim.build_settings()
        try:
            check_prompts(self.cases, settings, PromptRenderer(settings.prompts_dir))  # before any call
        except CalibrationError as exc:
            raise pytest.UsageError(f"llmsim: {exc}") from None
        root = self.config.invocation_params.dir
        assert self.source is not None
        source = shown_path(self.source, root)
        self._write(f"llmsim: the judge scores the calibration set {source} ({len(self.cases)} conversations) "
                    "before the scenarios ...")
        try:
            self.report = run_calibration(self.cases, settings, source=source, root=root,
                                          rpm=rpm_share(llmsim.options, 1))
        except CacheError as exc:
            raise pytest.UsageError(str(exc)) from None
        finally:
            llmsim.flush_messages()  # the local model's start-up lines, if the judge started it
        from pytest_llmsim.plugin.reporting import ReportPlugin

        plugin = self.config.pluginmanager.get_plugin(ReportPlugin.name)
        if isinstance(plugin, ReportPlugin) and self.missed is not None:  # in the summary's, export's gate lines
            plugin.extra_missed.append(self.missed)

    def _write(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and self.config.get_verbosity() >= 0:
            reporter.ensure_newline()
            reporter.write_line(line)

    # -- reporting -----------------------------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True, specname="pytest_sessionfinish")  # before the report plugin reports the gates
    def pytest_sessionfinish_recorded_judge_gate(self, session: pytest.Session) -> None:
        """Without a calibration set, a local judge whose accuracy was recorded (``local_model.JUDGE_CALIBRATION``)
        is held to ``llmsim_min_judge_accuracy`` by that figure: CI refuses the bundled judge without calibrating
        it in every run."""
        if self.report is not None or self.min_accuracy is None or self.config.getoption("collectonly", False):
            return
        from pytest_llmsim.plugin.report_options import local_judge, recorded_judge_gate
        from pytest_llmsim.plugin.reporting import ReportPlugin

        plugin = self.config.pluginmanager.get_plugin(ReportPlugin.name)
        if not isinstance(plugin, ReportPlugin):
            return
        judge = local_judge(self.config, plugin.collector.ordered())
        if judge is None or judge.get("calibration") is None:
            return
        missed = recorded_judge_gate(judge, self.min_accuracy)
        if missed is not None:
            plugin.extra_missed.append(missed)
            self.note = ""
        else:
            self.note = (f"llmsim: judge gate (llmsim_min_judge_accuracy) met by the accuracy recorded for the local "
                         f"model {judge['model']} ({judge['calibration']['accuracy']:.1%}; no calibration set given)")

    @pytest.hookimpl(trylast=True)  # after the report plugin has written the export
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.report is None:
            return
        self._export()
        if session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            # A calibration-only run (`-k calibration_only`, or a folder without scenarios): the calibration is
            # what ran, so its gate decides the exit status, not pytest's "no tests ran" (5).
            session.exitstatus = pytest.ExitCode.OK if self.missed is None else pytest.ExitCode.TESTS_FAILED
        elif self.missed is not None and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _export(self) -> None:
        from pytest_llmsim.plugin.reporting import ReportPlugin
        from pytest_llmsim.reporting.exports import add_to_results

        assert self.report is not None
        plugin = self.config.pluginmanager.get_plugin(ReportPlugin.name)
        path = getattr(plugin, "results_path", None)
        if not isinstance(plugin, ReportPlugin) or path is None:
            return
        try:
            add_to_results(path, "calibration", self.report.to_dict(self.min_accuracy), run_id=plugin.run_id)
        except OSError as exc:
            self.note = f"llmsim: could not add the judge calibration to {path}: {exc}"

    @pytest.hookimpl(tryfirst=True)  # before the llmsim summary: the calibration ran first
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.report is not None:
            from pytest_llmsim.engine.calibration import report_lines

            terminalreporter.write_sep("=", "llmsim judge calibration")
            for line in report_lines(self.report, min_accuracy=self.min_accuracy):
                terminalreporter.write_line(line.text, **line.markup)
        if self.note:
            terminalreporter.write_line(self.note, yellow=True)

