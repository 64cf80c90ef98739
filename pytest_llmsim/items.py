"""pytest collection nodes: a scenario file and one item per scenario."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import ScenarioError
from .results import ERROR, FAILED, ScenarioResult
from .scenario_paths import SCENARIO_SUFFIXES

if TYPE_CHECKING:
    from .scenario import Scenario
    from .session import LlmsimSession

INVALID_FILE_ITEM = "invalid-file"
_WAIT_SLICE_S = 0.2


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
    for pattern in config.getini("llmsim_paths"):
        pattern = pattern.strip().strip("/")
        if not pattern:
            continue
        if any(ch in pattern for ch in "*?["):
            if fnmatch.fnmatch(rel, pattern):
                return True
        elif pattern == "." or rel == pattern or rel.startswith(pattern + "/"):
            return True
    return False


class ScenarioRunError(Exception):
    """The scenario could not be simulated or judged (raised in setup, so pytest reports an ERROR)."""

    def __init__(self, message: str, result: ScenarioResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class ScenarioFailed(Exception):
    """The verdict's score is below the minimum (raised in call, so pytest reports a FAILURE)."""

    def __init__(self, result: ScenarioResult) -> None:
        super().__init__(f"score {result.score} < min_score {result.min_score}")
        self.result = result


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[ScenarioItem]:
        try:
            from .scenario import load_scenario_file  # pydantic and yaml: only when there are scenarios

            entries = load_scenario_file(self.path)
        except ScenarioError as exc:
            yield ScenarioItem.from_parent(self, name=INVALID_FILE_ITEM, scenario=None, problem=str(exc))
            return
        for entry in entries:
            yield ScenarioItem.from_parent(self, name=entry.item_name, scenario=entry.scenario,
                                           problem=entry.problem)


class ScenarioItem(pytest.Item):
    conversation_wait_s: float = 0.0  # how long setup waited for the conversation (it ran in the background)

    def __init__(self, *, scenario: Scenario | None, problem: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.problem = problem
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
                self.add_marker(pytest.mark.xfail(reason=reason))

    @property
    def llmsim_session(self) -> LlmsimSession:
        from .session import SESSION_KEY

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
                session.top_up(self)
        self.conversation_wait_s = time.perf_counter() - waiting_since
        session.consumed(self)
        self.result = result
        if result.transcript or result.ended_by:
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


def _transcript_text(result: ScenarioResult, last: int | None = None) -> str:
    turns = result.transcript if last is None else result.transcript[-last:]
    first = len(result.transcript) - len(turns) + 1
    lines = [f"{first + i:>3}. {'Customer' if t['role'] == 'client' else 'Agent'}: {t['text']}"
             for i, t in enumerate(turns)]
    lines.append(f"     [call ended by {result.ended_by}: {result.end_reason}]")
    return "\n".join(lines)


def _failure_text(result: ScenarioResult) -> str:
    lines = [
        f"scenario {result.scenario!r} scored {result.score} (min_score {result.min_score})",
        f"judge: {result.comment}",
        f"turns: {result.total_turns}, ended by {result.ended_by} ({result.end_reason})",
        "last turns:",
        _transcript_text(result, last=6),
    ]
    return "\n".join(lines)


def _error_text(message: str, result: ScenarioResult | None) -> str:
    lines = [message]
    if result is not None and result.raw_verdict and result.error_kind == "invalid_verdict":
        lines.append(f"raw evaluator reply: {result.raw_verdict[:1000]!r}")
    return "\n".join(lines)
