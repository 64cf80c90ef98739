"""pytest front of the judge calibration (``calibration.py``): ``--llmsim-calibrate DIR`` and the judge gate
``--llmsim-min-judge-accuracy X``.

Registered on the controller only (the process without ``config.workerinput``), so xdist workers never judge the
set. The set is read at configure time: a file that cannot be read is a usage error before anything runs. The
judge scores it once, before the first scenario item runs: at the end of collection without xdist, and under
xdist just before the workers start (``pytest_xdist_setupnodes``), so the judge's calls never compete with the
scenarios'. The results are a terminal section of their own, the export's ``calibration`` object and, when the
accuracy is below the minimum, a missed gate that fails the session: this plugin is a ``ReportContributor`` the
report plugin is given when both are built (``hooks.pytest_configure``), and asks for them at session end, before
it writes the export once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmsim.model.results import ScenarioRecord
from pytest_llmsim.plugin.session import SESSION_KEY
from pytest_llmsim.reporting.terminal import Line

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

    def _write(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and self.config.get_verbosity() >= 0:
            reporter.ensure_newline()
            reporter.write_line(line)

    # -- its part of the report (``reporting.ReportContributor``: the report plugin asks, at session end) ----------
    @property
    def ran(self) -> bool:
        """The judge scored the set: a session that collected no test still ran (and is decided by the gate)."""
        return self.report is not None

    def missed_gates(self, records: Sequence[ScenarioRecord]) -> list[str]:
        """The judge gate: by this run's calibration; without a calibration set, a local judge whose accuracy was
        recorded (``local_model.JUDGE_CALIBRATION``) is held to ``llmsim_min_judge_accuracy`` by that figure: CI
        refuses the bundled judge without calibrating it in every run."""
        if self.report is not None:
            return [self.missed] if self.missed is not None else []
        if self.min_accuracy is None:
            return []
        from pytest_llmsim.plugin.report_options import local_judge, recorded_judge_gate

        judge = local_judge(self.config, records)
        if judge is None or judge.get("calibration") is None:
            return []
        missed = recorded_judge_gate(judge, self.min_accuracy)
        if missed is not None:
            self.note = ""
            return [missed]
        self.note = (f"llmsim: judge gate (llmsim_min_judge_accuracy) met by the accuracy recorded for the local "
                     f"model {judge['model']} ({judge['calibration']['accuracy']:.1%}; no calibration set given)")
        return []

    def export_sections(self) -> dict[str, Any]:
        """The export's ``calibration`` object, when the judge scored a set."""
        return {"calibration": self.report.to_dict(self.min_accuracy)} if self.report is not None else {}

    def terminal_lines(self) -> list[Line]:
        """Its terminal section (the calibration ran first, so it comes before the llmsim summary) and its note."""
        lines = []
        if self.report is not None:
            from pytest_llmsim.engine.calibration import report_lines

            lines = [Line("llmsim judge calibration", {"separator": True}),
                     *report_lines(self.report, min_accuracy=self.min_accuracy)]
        if self.note:
            lines.append(Line(self.note, {"yellow": True}))
        return lines
