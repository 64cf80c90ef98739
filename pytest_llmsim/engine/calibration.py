"""Judge calibration: conversations a person scored, scored again by the suite's judge (no pytest).

Why one module: it is one feature from file to figure (the calibration set's reader, the judge's run over it and the
report with its gate), small parts that only make sense together.

A calibration set is a folder of files, one conversation each, with the score (1-3) a person gave it. Before
trusting the judge's scores on a suite, the run asks the same judge (``judge.evaluate``: the same evaluator
template, role settings, endpoint and disk cache as the scenarios, so a re-run replays) to score each of them and
reports how often it agrees: accuracy, mean absolute error, a confusion table (human rows x judge columns) and the
disagreements. A judge reply that never parses as a verdict is an error entry: reported, and not a match (it
lowers the accuracy); it is never guessed.

A file is either

* a calibration file: ``{"name", "human_score", "note", "variables", "transcript": [{"role": "client" | "agent",
  "text", "tool_calls"}], "ended_by", "end_reason"}`` (``name`` defaults to the file's stem; ``note``,
  ``variables`` and an agent turn's ``tool_calls``, ``[{"name", "arguments", "result"}]`` as in a chat file and
  shown to the judge as ``[tool name(arguments) -> result]``, are optional; ``end_reason`` defaults to who ended
  the call when that was the customer or the agent; the scenario fields the judge's template may read,
  ``language``, ``persona``, ``goal``, ``description``, ``criteria`` and ``evaluator``, are accepted too); or
* a chat file written by ``--llmsim-chats-dir`` (``chat_files``) with ``human_score`` added (and ``variables``
  when the evaluator template needs them); its ``score`` is the judge's of that run, not the person's, and is
  ignored.

A set that cannot be read is a ``CalibrationError`` naming the file and the field: the judge's accuracy cannot be
reported honestly without every file of it, so the front end stops before any call.
"""

from __future__ import annotations

import asyncio
import math
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from pydantic import ValidationError

from pytest_llmsim.engine.judge import evaluate
from pytest_llmsim.errors import CalibrationError, ErrorKind, LlmsimError, PromptError, ScenarioError, VerdictError
from pytest_llmsim.llm.client import Completer, LLMClient
from pytest_llmsim.llm.rate_limits import RateLimiter
from pytest_llmsim.model.prompts import PromptRenderer, template_context
from pytest_llmsim.model.scenario import Scenario, _describe_validation_error, name_problem, read_scenario_data
from pytest_llmsim.model.settings import RunSettings
from pytest_llmsim.model.transcript import Transcript, Turn
from pytest_llmsim.replay.cache import CallCache
from pytest_llmsim.reporting.terminal import Line

SUFFIXES = (".json", ".yaml", ".yml")
SCORES = (1, 2, 3)
ENDED_BY = ("client", "agent", "script", "max_turns", "timeout")
GATE_OPTION = "llmsim_min_judge_accuracy"
DECIMALS = 4
_DEFAULT_END_REASONS = {"client": "the customer ended the call", "agent": "the agent ended the call"}
# Scenario fields a calibration file may set, because the judge's template may read them.
_SCENARIO_FIELDS = ("language", "persona", "goal", "description", "criteria", "evaluator")
_OWN_FIELDS = frozenset({"name", "human_score", "note", "variables", "transcript", "ended_by", "end_reason",
                         *_SCENARIO_FIELDS})
# What ``chat_files.chat_document`` writes, plus what a person adds to a chat file.
_CHAT_FIELDS = frozenset({"nodeid", "scenario", "trial", "seed", "status", "score", "min_score", "comment",
                          "metrics", "ended_by", "end_reason", "turns", "tool_calls", "usage", "error_kind", "error",
                          "human_score", "note", "variables", *_SCENARIO_FIELDS})
_TURN_FIELDS = frozenset({"role", "text", "tool_calls", "scripted"})
_CALL_FIELDS = frozenset({"name", "arguments", "result"})


@dataclass(frozen=True)
class CalibrationCase:
    """One conversation of the set: what the judge sees (``scenario`` and ``transcript``) and the human score."""

    path: Path
    human_score: int
    note: str
    scenario: Scenario
    transcript: Transcript = field(compare=False)


# -- loading -------------------------------------------------------------------------------------------------------
def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _problem(path: Path, where: str, message: str) -> CalibrationError:
    return CalibrationError(f"{path}: field {where!r}: {message}")


def _turns(path: Path, key: str, raw: Any) -> list[Turn]:
    if not isinstance(raw, list) or not raw:
        raise _problem(path, key, f"must be a non-empty list of {{\"role\": \"client\" or \"agent\", \"text\": ...}} "
                                  f"objects (got {_shown(raw)})")
    turns = []
    for i, entry in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise _problem(path, where, f"must be an object with 'role' and 'text' (got {_shown(entry)})")
        unknown = sorted(set(entry) - _TURN_FIELDS)
        if unknown:
            raise _problem(path, f"{where}.{unknown[0]}", "unknown field; a turn has 'role', 'text' and optionally "
                                                          "'tool_calls'")
        role, text, calls = entry.get("role"), entry.get("text"), entry.get("tool_calls") or []
        if role not in ("client", "agent"):
            raise _problem(path, f"{where}.role", f"must be \"client\" or \"agent\" (got {_shown(role)})")
        if not isinstance(text, str):
            raise _problem(path, f"{where}.text", f"must be a string (got {_shown(text)})")
        turns.append(Turn(role, text, tool_calls=_tool_calls(path, f"{where}.tool_calls", role, calls)))
    if not any(t.role == "agent" and t.text.strip() for t in turns):
        raise _problem(path, key, "no agent turn has text; the judge never scores a call in which the agent said "
                                  "nothing, so such a conversation cannot calibrate it")
    return turns


def _tool_calls(path: Path, where: str, role: str, calls: Any) -> list[dict[str, Any]]:
    """An agent turn's tool calls as the judge's transcript shows them (``results.tool_call_text``): each
    ``{"name": non-empty string, "arguments": JSON value, "result": JSON value or null}``, as a chat file holds them.
    A misspelt key would silently drop what the tool returned from the judge's view, so it is an error."""
    shape = "a list of {\"name\", \"arguments\", \"result\"} objects"
    if not isinstance(calls, list):
        raise _problem(path, where, f"must be {shape} (got {_shown(calls)})")
    if calls and role != "agent":
        raise _problem(path, where, "only an agent turn makes tool calls; move them to the agent's turn")
    checked = []
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            raise _problem(path, f"{where}[{i}]", f"must be an object {{\"name\", \"arguments\", \"result\"}} "
                                                  f"(got {_shown(call)})")
        unknown = sorted(set(call) - _CALL_FIELDS, key=str)
        if unknown:
            raise _problem(path, f"{where}[{i}].{unknown[0]}", "unknown field; a tool call has 'name', 'arguments' "
                                                               "and 'result'")
        name = call.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _problem(path, f"{where}[{i}].name", f"must be the tool's name, a non-empty string (got "
                                                       f"{_shown(name)})")
        checked.append({"name": name, "arguments": call.get("arguments", {}), "result": call.get("result")})
    return checked


def _human_score(path: Path, data: Mapping[str, Any], chat: bool) -> int:
    if "human_score" not in data:
        what = "a chat file (--llmsim-chats-dir)" if chat else "a calibration file"
        raise _problem(path, "human_score", f"missing; {what} needs the score a person gave the conversation: add "
                                            "\"human_score\": 1, 2 or 3")
    score = data["human_score"]
    if not isinstance(score, int) or isinstance(score, bool) or score not in SCORES:
        raise _problem(path, "human_score", f"must be 1, 2 or 3 (got {_shown(score)})")
    return score


def _text_field(path: Path, data: Mapping[str, Any], key: str, default: str = "") -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _problem(path, key, f"must be a string (got {_shown(value)})")
    return value


def load_case(path: Path) -> CalibrationCase:
    """One calibration file (or chat file with a ``human_score``); CalibrationError naming the file and field."""
    try:
        data = read_scenario_data(path)
    except ScenarioError as exc:  # names the file (and line) already
        raise CalibrationError(str(exc)) from None
    if not isinstance(data, dict):
        raise CalibrationError(f"{path}: a calibration file is one JSON object with 'human_score', 'transcript' "
                               f"and 'ended_by' (got {type(data).__name__})")
    chat = "turns" in data and "transcript" not in data
    allowed = _CHAT_FIELDS if chat else _OWN_FIELDS
    unknown = sorted(set(data) - allowed, key=str)
    if unknown:
        hint = ("a chat file's fields plus 'human_score', 'note' and 'variables'" if chat else
                f"{', '.join(sorted(_OWN_FIELDS))}")
        raise _problem(path, str(unknown[0]), f"unknown field; allowed: {hint}")
    human = _human_score(path, data, chat)
    turns = _turns(path, "turns" if chat else "transcript", data.get("turns" if chat else "transcript"))
    ended_by = data.get("ended_by")
    if ended_by not in ENDED_BY:
        raise _problem(path, "ended_by", f"must be one of {', '.join(ENDED_BY)} (got {_shown(ended_by)})")
    end_reason = _text_field(path, data, "end_reason").strip() or _DEFAULT_END_REASONS.get(ended_by, "")
    if not end_reason:
        raise _problem(path, "end_reason", "missing; say how the call ended (e.g. \"reached max_turns=8\"); only "
                                           "calls ended by the client or the agent have a default")
    name_field = "scenario" if chat else "name"
    name = path.stem if data.get(name_field) is None else data[name_field]
    problem = name_problem(name)
    if problem is not None:
        raise _problem(path, name_field, problem)
    variables = data.get("variables", {})
    if not isinstance(variables, dict):
        raise _problem(path, "variables", f"must be an object of template variables (got {_shown(variables)})")
    seed = data.get("seed")
    if chat and "SEED" not in variables and isinstance(seed, int) and not isinstance(seed, bool):
        variables = {**variables, "SEED": seed}  # the seed the run's judge used: the same request, replayed
    fields = {key: data[key] for key in _SCENARIO_FIELDS if data.get(key) is not None}
    try:
        scenario = Scenario.model_validate({"name": name, "variables": variables, **fields})
    except ValidationError as exc:
        raise CalibrationError(f"{path}: {_describe_validation_error(exc)}") from None
    transcript = Transcript(turns=turns, ended_by=ended_by, end_reason=end_reason)
    return CalibrationCase(path, human, _text_field(path, data, "note").strip(), scenario, transcript)


def calibration_files(source: Path) -> list[Path]:
    """The files of a calibration set: ``source`` itself when it is a file, else its ``.json``/``.yaml`` files
    (not hidden, not in subfolders), sorted. CalibrationError when there are none."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise CalibrationError(f"{source}: the calibration set does not exist; point --llmsim-calibrate "
                               "(llmsim_calibrate) at a folder of scored conversations")
    files = sorted(p for p in source.iterdir()
                   if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    if not files:
        raise CalibrationError(f"{source}: the calibration set has no {'/'.join(SUFFIXES)} files; add one file per "
                               "conversation with its 'human_score'")
    return files


def load_calibration_set(source: Path) -> list[CalibrationCase]:
    """Every case of the set, or CalibrationError for the first bad file (saying how many more are bad)."""
    cases, problems = [], []
    for path in calibration_files(source):
        try:
            cases.append(load_case(path))
        except CalibrationError as exc:
            problems.append(str(exc))
    if problems:
        more = f" (and {len(problems) - 1} more bad calibration file(s))" if len(problems) > 1 else ""
        raise CalibrationError(problems[0] + more)
    return cases


def evaluator_prompt(case: CalibrationCase, settings: RunSettings, renderer: PromptRenderer) -> str:
    """The judge's prompt for ``case``, rendered as ``judge.evaluate`` renders it; PromptError when the template
    needs a variable the file does not set."""
    transcript = case.transcript
    context = template_context(case.scenario, settings, transcript=transcript.to_dicts(),
                               transcript_text=transcript.as_text(), ended_by=transcript.ended_by,
                               end_reason=transcript.end_reason)
    return renderer.render(settings.role("evaluator", case.scenario).template, context, scenario_label=str(case.path))


def check_prompts(cases: Sequence[CalibrationCase], settings: RunSettings, renderer: PromptRenderer) -> None:
    """Render every case's judge prompt before any call: a missing variable is the file's problem, found now."""
    for case in cases:
        try:
            evaluator_prompt(case, settings, renderer)
        except PromptError as exc:  # its advice is a scenario file's; say the calibration file's
            advice = "add it to the scenario's 'variables' (or the file's 'defaults')"
            text = str(exc)
            raise CalibrationError(text.replace(advice, "set it in the calibration file's 'variables'")
                                   if advice in text else text) from None


# -- judging -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseOutcome:
    """The judge's verdict on one case, or the error that stood in its way (``judge_score`` None)."""

    file: str
    name: str
    human_score: int
    judge_score: int | None
    comment: str = ""
    note: str = ""
    error_kind: str = ""
    error: str = ""
    raw_verdict: str = ""
    # The ``logprobs`` judge's p(1), p(2), p(3) and expected score (``judge.ScoreProbabilities.to_dict``): what
    # ``calibration/fit_cutpoints.py`` fits cut-points on; None for the other methods.
    probabilities: dict[str, Any] | None = None

    @property
    def match(self) -> bool:
        return self.judge_score == self.human_score

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "name": self.name, "human_score": self.human_score,
                "judge_score": self.judge_score, "match": self.match, "comment": self.comment, "note": self.note,
                "error_kind": self.error_kind, "error": self.error, "raw_verdict": self.raw_verdict,
                "probabilities": self.probabilities}


class _CaseFields(TypedDict):
    """What every ``CaseOutcome`` of a case has, whatever the judge said."""

    file: str
    name: str
    human_score: int
    note: str


async def judge_case(case: CalibrationCase, settings: RunSettings, client: Completer, renderer: PromptRenderer,
                     *, file: str) -> CaseOutcome:
    """The suite's judge on one case; never raises for the case's own trouble (an error entry instead)."""
    scrub = settings.endpoint.scrub
    base: _CaseFields = {"file": file, "name": case.scenario.name, "human_score": case.human_score, "note": case.note}
    try:
        verdict = await evaluate(case.scenario, case.transcript, settings, client, renderer,
                                 label=f"calibration {file}")
    except VerdictError as exc:
        return CaseOutcome(**base, judge_score=None, error_kind=exc.kind, error=scrub(str(exc)),
                           raw_verdict=scrub(exc.raw_reply))
    except LlmsimError as exc:
        return CaseOutcome(**base, judge_score=None, error_kind=exc.kind, error=scrub(str(exc)))
    except Exception as exc:  # a bug: visible as an error entry, with where it happened
        where = traceback.format_exc(limit=-3)
        return CaseOutcome(**base, judge_score=None, error_kind=ErrorKind.INTERNAL,
                           error=scrub(f"internal error {type(exc).__name__}: {exc}\n{where}"))
    return CaseOutcome(**base, judge_score=verdict.score, comment=scrub(verdict.comment),
                       raw_verdict=scrub(verdict.raw_reply), probabilities=verdict.probabilities)


async def judge_cases(cases: Sequence[CalibrationCase], settings: RunSettings, client: Completer,
                      renderer: PromptRenderer, *, root: Path | None = None) -> list[CaseOutcome]:
    """Every case judged, ``settings.concurrency`` at a time, in the set's order."""
    slots = asyncio.Semaphore(settings.concurrency)

    async def one(case: CalibrationCase) -> CaseOutcome:
        async with slots:
            return await judge_case(case, settings, client, renderer, file=shown_path(case.path, root))

    return list(await asyncio.gather(*(one(case) for case in cases)))


def shown_path(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` when it is inside it (as reports name files), else as given."""
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)


def run_calibration(cases: Sequence[CalibrationCase], settings: RunSettings, *, source: str = "",
                    rpm: float | None = None, root: Path | None = None) -> CalibrationReport:
    """Judge ``cases`` on an event loop of its own, through an ``LLMClient`` on the run's cache directory (the
    suite's cache: a re-run replays every verdict). Call it where no event loop runs, before the suite's runner
    opens the same cache. CacheError when the cache cannot be opened."""
    renderer = PromptRenderer(settings.prompts_dir)

    async def main() -> tuple[list[CaseOutcome], int, int, str]:
        cache = CallCache(settings.cache_dir, settings.record_mode)
        client = LLMClient(settings.endpoint, cache, RateLimiter(rpm=rpm))
        try:
            outcomes = await judge_cases(cases, settings, client, renderer, root=root)
        finally:
            await client.aclose()
            cache.close()
        unstored = (f"{cache.unstored} judge replies were not stored in the cache: {cache.store_error}"
                    if cache.unstored else "")
        return outcomes, client.stats.live_calls, client.stats.cached_calls, unstored

    started = time.perf_counter()
    outcomes, live, replayed, unstored = asyncio.run(main())
    return CalibrationReport(source, outcomes, live_calls=live, replayed_calls=replayed,
                             duration_seconds=round(time.perf_counter() - started, 2), unstored=unstored,
                             min_score=settings.min_score)


# -- the report ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CalibrationReport:
    """The judge against the people: every outcome and the figures over them. An error entry counts in ``total``
    and is no match (it lowers ``accuracy``); ``mean_absolute_error`` is over the scored cases only."""

    source: str
    outcomes: list[CaseOutcome]
    live_calls: int = 0
    replayed_calls: int = 0
    duration_seconds: float = 0.0
    unstored: str = ""
    min_score: int = 2  # the run's passing score: a judge score at or above it passes a conversation

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def matches(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome.match)

    @property
    def errors(self) -> list[CaseOutcome]:
        return [outcome for outcome in self.outcomes if outcome.judge_score is None]

    @property
    def scored(self) -> list[CaseOutcome]:
        return [outcome for outcome in self.outcomes if outcome.judge_score is not None]

    @property
    def accuracy(self) -> float | None:
        return round(self.matches / self.total, DECIMALS) if self.total else None

    @property
    def mean_absolute_error(self) -> float | None:
        scored = self.scored
        if not scored:
            return None
        return round(sum(abs(o.human_score - (o.judge_score or 0)) for o in scored) / len(scored), DECIMALS)

    def accuracy_interval(self) -> tuple[float, float] | None:
        """The 95% Wilson score interval of ``accuracy`` (None for an empty set): on 48 conversations an accuracy
        of 50% is anything from about 36% to 64%, and a report that quotes the point alone overstates it."""
        return wilson_interval(self.matches, self.total)

    @property
    def should_fail(self) -> list[CaseOutcome]:
        """The cases a person scored below ``min_score``: a test with this conversation should fail."""
        return [outcome for outcome in self.outcomes if outcome.human_score < self.min_score]

    @property
    def false_passes(self) -> list[CaseOutcome]:
        """The cases a person scored below ``min_score`` that the judge scored at or above it: the judge would
        have passed a test that should fail. A judge error is no pass (the item errors)."""
        return [o for o in self.should_fail if o.judge_score is not None and o.judge_score >= self.min_score]

    @property
    def false_pass_rate(self) -> float | None:
        """``false_passes`` over ``should_fail``; None when no case should fail."""
        failing = self.should_fail
        return round(len(self.false_passes) / len(failing), DECIMALS) if failing else None

    @property
    def disagreements(self) -> list[CaseOutcome]:
        """The cases whose judge score differs from the human's, errors included, in the set's order."""
        return [outcome for outcome in self.outcomes if not outcome.match]

    def confusion(self) -> dict[str, dict[str, int]]:
        """``{human score: {judge score or "error": count}}`` for scores 1-3."""
        table = {str(h): {**{str(j): 0 for j in SCORES}, "error": 0} for h in SCORES}
        for outcome in self.outcomes:
            column = "error" if outcome.judge_score is None else str(outcome.judge_score)
            table[str(outcome.human_score)][column] += 1
        return table

    def missed_gate(self, min_accuracy: float | None) -> str | None:
        """The gate line when the accuracy is below ``min_accuracy`` (a fraction), else None."""
        if min_accuracy is None or self.accuracy is None or self.accuracy >= min_accuracy:
            return None
        return (f"judge accuracy {self.accuracy:.1%} ({self.counts_text()}) is below the minimum "
                f"{min_accuracy:.1%} ({GATE_OPTION})")

    def counts_text(self) -> str:
        errors = len(self.errors)
        more = f", {errors} judge error{'s' if errors != 1 else ''}" if errors else ""
        return f"{self.matches} of {self.total} calibration conversations match the human score{more}"

    def to_dict(self, min_accuracy: float | None = None) -> dict[str, Any]:
        """The export's ``calibration`` object."""
        missed = self.missed_gate(min_accuracy)
        interval = self.accuracy_interval()
        return {
            "source": self.source, "total": self.total, "matches": self.matches, "errors": len(self.errors),
            "accuracy": self.accuracy,
            "accuracy_95ci": None if interval is None else list(interval),
            "mean_absolute_error": self.mean_absolute_error,
            "min_score": self.min_score, "should_fail": len(self.should_fail),
            "false_passes": len(self.false_passes), "false_pass_rate": self.false_pass_rate,
            "confusion": self.confusion(),
            "disagreements": [{"file": o.file, "human": o.human_score, "judge": o.judge_score,
                               "comment": o.comment or o.error} for o in self.disagreements],
            "cases": [outcome.to_dict() for outcome in self.outcomes],
            "gate": {"min_accuracy": min_accuracy, "checked": min_accuracy is not None,
                     "missed": [missed] if missed else []},
            "live_calls": self.live_calls, "replayed_calls": self.replayed_calls,
            "duration_seconds": self.duration_seconds,
        }


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The Wilson score interval (95% for the default ``z``) of the proportion ``successes / total``; None when
    ``total`` is 0. Unlike the normal approximation it stays within 0-1 and is honest for small sets."""
    if total <= 0:
        return None
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return round(max(0.0, centre - half), DECIMALS), round(min(1.0, centre + half), DECIMALS)


def confusion_lines(report: CalibrationReport) -> list[str]:
    """The confusion table, human scores down, judge scores across (an ``error`` column when there are errors)."""
    table = report.confusion()
    columns = [str(s) for s in SCORES] + (["error"] if report.errors else [])
    corner = "human \\ judge"
    header = f"  {corner:>13}" + "".join(f"{c:>7}" for c in columns)
    rows = [f"  {h:>13}" + "".join(f"{table[h][c]:>7}" for c in columns) for h in table]
    return [header, *rows]


def report_lines(report: CalibrationReport, *, min_accuracy: float | None = None) -> list[Line]:
    """The terminal section: totals, the confusion table, the disagreements and the gate (missed: the line every
    missed suite gate prints, ``llmsim gate missed: ...``)."""
    accuracy = "n/a" if report.accuracy is None else f"{report.accuracy:.1%}"
    mae = report.mean_absolute_error
    interval = report.accuracy_interval()
    ci = "" if interval is None else f" (95% CI {interval[0]:.1%}-{interval[1]:.1%}, Wilson)"
    failing = report.should_fail
    false_pass = (f"false passes: {len(report.false_passes)} of {len(failing)} conversations a person scored below "
                  f"min_score {report.min_score} were scored {report.min_score} or more by the judge "
                  f"({report.false_pass_rate:.1%})" if failing else
                  f"false passes: n/a (no conversation a person scored below min_score {report.min_score})")
    lines = [
        Line(f"set: {report.source} ({report.total} conversations); judge calls: {report.live_calls} live, "
             f"{report.replayed_calls} replayed; {report.duration_seconds:g}s"),
        Line(f"judge accuracy {accuracy}{ci}: {report.counts_text()}", {"bold": True}),
        Line(false_pass, {"red": True} if report.false_passes else {}),
        Line(f"mean absolute error: {'n/a' if mae is None else f'{mae:g}'} over {len(report.scored)} scored"),
        Line("confusion (rows: human score, columns: judge score):"),
        *(Line(line) for line in confusion_lines(report)),
    ]
    if report.disagreements:
        lines.append(Line("disagreements:"))
    for outcome in report.disagreements:
        if outcome.judge_score is None:
            text = f"  {outcome.file}: human {outcome.human_score}, judge ERROR ({outcome.error_kind}): " \
                   f"{_one_line(outcome.error)}"
        else:
            text = f"  {outcome.file}: human {outcome.human_score}, judge {outcome.judge_score} - " \
                   f"{_one_line(outcome.comment)}"
        lines.append(Line(text, {"red": True} if outcome.judge_score is None else {}))
    if report.unstored:
        lines.append(Line(f"llmsim: {report.unstored}", {"yellow": True}))
    missed = report.missed_gate(min_accuracy)
    if missed is not None:
        lines.append(Line(f"llmsim gate missed: {missed}", {"red": True, "bold": True}))
    elif min_accuracy is not None:
        lines.append(Line(f"llmsim: judge accuracy gate met ({accuracy} >= {min_accuracy:.1%})", {"green": True}))
    return lines


def _one_line(text: str) -> str:
    return " ".join(text.split())
