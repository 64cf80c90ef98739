"""pytest collection nodes: a scenario file and one item per scenario."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmsim.errors import ErrorKind, ScenarioError, ScenarioRunError
from pytest_llmsim.model.results import ERROR, FAILED, PASSED, ScenarioResult
from pytest_llmsim.model.scenario_paths import SCENARIO_SUFFIXES, under_llmsim_paths

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import Scenario
    from pytest_llmsim.plugin.session import LlmsimSession

INVALID_FILE_ITEM = "invalid-file"
_WAIT_SLICE_S = 0.2


def _llmsim_paths(config: pytest.Config) -> list[str]:
    """``llmsim_paths`` as the option table resolved it (``config.resolve``), as ``llmsim run FOLDER`` reads it."""
    from pytest_llmsim.plugin.session import SESSION_KEY

    paths: list[str] = config.stash[SESSION_KEY].options["llmsim_paths"]
    return paths


def is_scenario_file(config: pytest.Config, file_path: Path) -> bool:
    """True for .json/.yaml/.yml files under ``llmsim_paths`` or named explicitly on the command line."""
    if file_path.suffix not in SCENARIO_SUFFIXES:
        return False
    for arg in config.args:
        target = Path(arg.split("::")[0])
        target = target if target.is_absolute() else config.invocation_params.dir / target
        if target.resolve() == file_path.resolve():
            return True
    try:
        rel = file_path.resolve().relative_to(config.rootpath.resolve()).as_posix()
    except ValueError:
        return False
    return under_llmsim_paths(rel, _llmsim_paths(config))


# -- scenario-like files that are not collected ----------------------------------------------------------------
UNCOLLECTED_KEY = pytest.StashKey[list[Path]]()
_SNIFF_BYTES = 4096
_SNIFF = {
    ".json": (re.compile(r'"name"\s*:'), re.compile(r'"variables"\s*:')),
    ".yaml": (re.compile(r"^[ \t]*(?:-[ \t]+)?name[ \t]*:", re.MULTILINE),
              re.compile(r"^[ \t]*(?:-[ \t]+)?variables[ \t]*:", re.MULTILINE)),
}


def looks_like_scenario_file(file_path: Path) -> bool:
    """Cheap sniff of the first few KB: a ``name`` key and a ``variables`` key (no parsing, no yaml import)."""
    patterns = _SNIFF.get(".json" if file_path.suffix == ".json" else ".yaml")
    try:
        with file_path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES).decode("utf-8", errors="ignore")
    except OSError:
        return False
    return patterns is not None and all(pattern.search(head) for pattern in patterns)


def uncollected_scenario_hint(config: pytest.Config, file_path: Path) -> bool:
    """True for a scenario-like .json/.yaml/.yml file inside a directory the user named on the command line that
    is not collected because it is outside ``llmsim_paths`` (``pytest my_scenarios/`` would say only "no tests
    ran")."""
    if file_path.suffix not in SCENARIO_SUFFIXES or config.args_source != pytest.Config.ArgsSource.ARGS:
        return False
    if is_scenario_file(config, file_path):
        return False
    resolved = file_path.resolve()
    for arg in config.args:
        target = Path(arg.split("::")[0])
        target = (target if target.is_absolute() else config.invocation_params.dir / target).resolve()
        if target.is_dir() and resolved.is_relative_to(target):
            return looks_like_scenario_file(file_path)
    return False


def note_uncollected_scenario_file(config: pytest.Config, file_path: Path) -> None:
    """Remember ``file_path`` for ``uncollected_scenarios_line`` if ``uncollected_scenario_hint`` says so."""
    if uncollected_scenario_hint(config, file_path):
        config.stash.setdefault(UNCOLLECTED_KEY, []).append(file_path)


def uncollected_scenarios_line(config: pytest.Config) -> str | None:
    """One line for the terminal summary about the remembered files, or None."""
    paths = config.stash.get(UNCOLLECTED_KEY, [])
    if not paths:
        return None
    base = config.invocation_params.dir.resolve()
    common = Path(os.path.commonpath([p.resolve().parent for p in paths]))
    try:
        where = common.relative_to(base).as_posix()
    except ValueError:
        where = str(common)
    where = "./" if where == "." else where.rstrip("/") + "/"
    configured = ", ".join(p.strip() for p in _llmsim_paths(config) if p.strip()) or "(none)"
    count = len(paths)
    files, verb, they = ("file", "was", "it is") if count == 1 else ("files", "were", "they are")
    return (f"llmsim: {count} scenario-like {files} under {where} {verb} not collected: {they} outside "
            f"llmsim_paths ({configured}). Add the folder to llmsim_paths in your ini file, or name the files on "
            "the command line.")


class ScenarioFailed(Exception):
    """The verdict's score is below the minimum (raised in call, so pytest reports a FAILURE)."""

    def __init__(self, result: ScenarioResult) -> None:
        super().__init__(f"score {result.score} < min_score {result.min_score}")
        self.result = result


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[ScenarioItem]:
        try:
            from pytest_llmsim.model.scenario import (
                load_scenario_file,  # pydantic and yaml: only when there are scenarios
            )

            entries = load_scenario_file(self.path)
        except ScenarioError as exc:
            yield ScenarioItem.from_parent(self, name=INVALID_FILE_ITEM, scenario=None, problem=str(exc))
            return
        except Exception as exc:  # one bad file never stops the run, even on a bug of ours (or a MemoryError)
            problem = (f"{self.path}: cannot load scenario file: {type(exc).__name__}: {str(exc)[:300]} "
                       "(please report this as a pytest-llmsim bug, with the file)")
            yield ScenarioItem.from_parent(self, name=INVALID_FILE_ITEM, scenario=None, problem=problem)
            return
        from pytest_llmsim.plugin.session import SESSION_KEY

        options = self.config.stash[SESSION_KEY].options
        for entry in entries:
            trials = 1
            if entry.scenario is not None and options["llmsim_trial_items"]:
                own = entry.scenario.trials
                trials = own if own is not None else options["llmsim_trials"]
            if trials <= 1:
                yield ScenarioItem.from_parent(self, name=entry.item_name, scenario=entry.scenario,
                                               problem=entry.problem)
                continue
            for trial in range(1, trials + 1):  # --llmsim-trial-items: one item per trial
                yield ScenarioItem.from_parent(self, name=f"{entry.item_name}[trial-{trial}]",
                                               scenario=entry.scenario, problem=entry.problem, trial=trial)


class ScenarioItem(pytest.Item):
    conversation_wait_s: float = 0.0  # how long setup waited for the conversation (it ran in the background)

    def __init__(self, *, scenario: Scenario | None, problem: str | None, trial: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.problem = problem
        self.trial = trial  # n >= 1: this item runs the scenario's trial n only (--llmsim-trial-items)
        self.result: ScenarioResult | None = None
        self.add_marker("llmsim")
        if scenario is not None:
            for tag in scenario.tags:
                _register_marker(self.config, tag)
                self.add_marker(tag)
            if scenario.skip:
                reason = scenario.skip if isinstance(scenario.skip, str) else "skipped by the scenario file"
                self.add_marker(pytest.mark.skip(reason=reason))
            if scenario.xfail:
                reason = scenario.xfail if isinstance(scenario.xfail, str) else "expected to fail"
                # Only a low score is the expected failure: an error (no conversation, no verdict) stays an error.
                self.add_marker(pytest.mark.xfail(reason=reason, raises=ScenarioFailed))

    @property
    def llmsim_session(self) -> LlmsimSession:
        from pytest_llmsim.plugin.session import SESSION_KEY

        return self.config.stash[SESSION_KEY]

    def setup(self) -> None:
        if self.problem is not None:
            raise ScenarioRunError(self.problem)
        session = self.llmsim_session
        future = session.future_for(self)
        waiting_since = time.perf_counter()
        while True:  # wait in slices so Ctrl-C stays responsive and newly queued items start early
            try:
                result = future.result(timeout=_WAIT_SLICE_S)
                break
            except TimeoutError:
                session.interrupts.check()
                session.top_up(self)
        self.conversation_wait_s = time.perf_counter() - waiting_since
        session.consumed(self)
        self.result = result
        if (result.transcript or result.ended_by) and (result.status != PASSED or _shows_passes(self.config)):
            # The whole conversation, once: a failure's own text (``_failure_text``) does not repeat it. A
            # passed item's section only when pytest prints passes' output (-rP/-rA): pytest keeps every
            # report, and 10 000 passed transcripts would cost the controller ~40 MB for nothing shown.
            self.add_report_section("call", "llmsim transcript", _transcript_text(result))
        if result.status == ERROR:
            raise ScenarioRunError(result.error_message, result)

    def runtest(self) -> None:
        assert self.result is not None
        if self.result.status == FAILED:
            raise ScenarioFailed(self.result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        exc = excinfo.value
        if isinstance(exc, ScenarioFailed):
            return _failure_text(exc.result)
        if isinstance(exc, ScenarioRunError):
            return _error_text(str(exc), exc.result)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, 0, f"scenario: {self.name}"


def _register_marker(config: pytest.Config, tag: str) -> None:
    known = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    if tag not in known:
        config.addinivalue_line("markers", f"{tag}: llmsim scenario tag")


def _shows_passes(config: pytest.Config) -> bool:
    """Whether pytest prints the captured output of passed tests (``-rP`` or ``-rA``)."""
    chars = str(getattr(config.option, "reportchars", "") or "")
    return "P" in chars or "A" in chars


def _transcript_text(result: ScenarioResult) -> str:
    from pytest_llmsim.reporting.terminal import result_transcript_text

    return result_transcript_text(result)


def _failure_text(result: ScenarioResult) -> str:
    """Verdict (naming the failed metrics), one line per metric and the judge's comment; the conversation itself
    is the item's ``llmsim transcript`` section, which pytest prints right below (JUnit and pytest-html carry it
    too)."""
    from pytest_llmsim.reporting.terminal import failure_headline, metric_lines, trial_lines

    lines = [failure_headline(result), *trial_lines(result)[1:], *metric_lines(result)]
    if result.comment or not result.metrics:  # a scenario without the judge has no comment
        lines.append(f"judge: {result.comment}")
    if result.blame and result.blame != "unknown":
        from pytest_llmsim.model.results import blame_of

        source = blame_of(result.status, result.metrics, result.transcript, result.ended_by)[1]
        lines.append(f"blame: {result.blame}{f' (by the {source})' if source else ''}")
    lines.append(f"turns: {result.total_turns}, ended by {result.ended_by} ({result.end_reason}); the conversation "
                 f"is in the 'llmsim transcript' section")
    return "\n".join(lines)


def _error_text(message: str, result: ScenarioResult | None) -> str:
    lines = [message]
    if result is not None and result.raw_verdict and result.error_kind == ErrorKind.INVALID_VERDICT:
        lines.append(f"raw evaluator reply: {result.raw_verdict[:1000]!r}")
    return "\n".join(lines)
