"""What one scenario run produced, and the record every report is built from (no pytest).

Why one module: it is the one data contract between the engine, xdist and every report (the result and record types
and their dict forms); a field is added to it in one place, in both directions, or it is lost on the way.

* ``ScenarioResult`` is the engine's answer for one scenario: verdict (``Status``), score, transcript, usage
  and, for an error, its ``ErrorKind``. ``to_dict()`` is what travels on pytest's test report (and so through
  xdist); ``from_dict`` reads it back.
* ``ScenarioRecord`` is one scenario of a *run* as the reports see it: the result plus how pytest counted it
  (``Outcome``), its cost and the run's id. The terminal, HTML, JUnit, exports, gates and histogram all read
  records; ``to_dict()`` is the export row, ``from_dict`` reads an export back.

A transcript turn is ``{"role": "client" | "agent", "text": ...}``; an agent turn may carry ``"tool_calls"``, a
list of ``{"name", "arguments", "result"}`` (missing or empty: none). ``turn_tool_calls`` reads them,
``tool_call_text`` renders one for every report, and ``ScenarioResult.tool_calls`` lists the names in call order.
A multi-agent turn also has ``"messages"`` (``{"agent", "content", "tool_calls"?}`` per speaker's message) and
``"handoffs"`` (``{"from", "to", "reason"?}``); ``turn_messages``, ``turn_handoffs`` read them and ``spoken_lines``
is how every report shows a turn (one line per speaker).

``Status`` is the scenario's own verdict (score against the minimum); ``Outcome`` is pytest's: an
xfail-marked scenario that scored below its minimum has status ``failed`` and outcome ``xfailed``. The run
totals count outcomes (see ``summary``).
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from pytest_llmsim.errors import ErrorKind


class Status(StrEnum):
    """A scenario's own verdict."""

    PASSED = "passed"  # scored at least its minimum
    FAILED = "failed"  # scored below its minimum
    ERROR = "error"  # no score: the conversation or the verdict could not be produced
    SKIPPED = "skipped"  # not run (skip marker, ``xfail(run=False)``, a skip during setup)


class Outcome(StrEnum):
    """How pytest counted the scenario's item (the words of pytest's closing line)."""

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"
    XFAILED = "xfailed"
    XPASSED = "xpassed"


# Kept for the engine modules and front ends that import the plain names.
PASSED = Status.PASSED
FAILED = Status.FAILED
ERROR = Status.ERROR


def outcome_of_status(status: Status) -> Outcome:
    """The outcome a result has when no pytest outcome is known (the engine's own front ends)."""
    return Outcome(status.value)


def tool_call_text(call: Mapping[str, Any], *, limit: int = 300) -> str:
    """One tool call of an agent turn as people read it: ``issue_refund({"order_id": 7}) -> {"ok": true}``.

    A turn's ``tool_calls`` is a list of ``{"name": str, "arguments": JSON value, "result": JSON value or None}``
    (the result when the agent reports it). Every report (terminal, JUnit, HTML, the judge's transcript) shows
    tool calls through this function, so they read the same everywhere.
    """
    def compact(value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True,
                                                                 default=str)
        return text if len(text) <= limit else text[: limit - 1] + "…"

    text = f"{call.get('name', '?')}({compact(call.get('arguments', {}))})"
    if call.get("result") is not None:
        text += f" -> {compact(call['result'])}"
    return text


def turn_tool_calls(turn: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The tool calls of one transcript turn, in call order: an agent turn's ``tool_calls`` (missing, empty,
    or not a list: none; entries that are not objects are left out). A customer turn has none."""
    if turn.get("role") == "client":
        return []
    calls = turn.get("tool_calls")
    if not isinstance(calls, list | tuple):
        return []
    return [call for call in calls if isinstance(call, Mapping)]


def turn_messages(turn: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The speakers' messages of a multi-agent turn (entries that are not objects with a string ``agent`` are left
    out); none for a customer turn or a single-speaker one."""
    return [m for m in _turn_entries(turn, "messages") if isinstance(m.get("agent"), str)]


def turn_handoffs(turn: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The handoffs of a multi-agent turn (``{"from", "to", "reason"?}``), in order."""
    return _turn_entries(turn, "handoffs")


def _turn_entries(turn: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """The objects in an agent turn's list ``key`` (not a list, or a customer turn: none)."""
    entries = turn.get(key) if turn.get("role") != "client" else None
    if not isinstance(entries, list | tuple):
        return []
    return [entry for entry in entries if isinstance(entry, Mapping)]


def handoff_text(handoff: Mapping[str, Any]) -> str:
    """``Triage -> Billing (refund request)``."""
    reason = handoff.get("reason")
    return f"{handoff.get('from', '?')} -> {handoff.get('to', '?')}" + (f" ({reason})" if reason else "")


def turn_speakers(turn: Mapping[str, Any]) -> list[str]:
    """Who spoke in an agent turn, in order (a name once per message); none for a single-speaker turn."""
    return [str(message["agent"]) for message in turn_messages(turn)]


def with_tool_calls(text: str, calls: Iterable[Mapping[str, Any]]) -> str:
    """``text`` with the tool calls before it: ``[tool issue_refund({"order_id": 7}) -> {"ok": true}] Done.``."""
    shown = [f"[tool {tool_call_text(call)}]" for call in calls]
    if not shown:
        return text
    return " ".join([*shown, text] if text else shown)


def heard_text(turn: Mapping[str, Any]) -> str:
    """A turn as the other side hears it: its text; a multi-agent turn each message that says something as
    ``Billing: ...``, joined by a blank line (so the customer knows who answered, and a changed routing changes
    what the customer is sent)."""
    messages = turn_messages(turn)
    if not messages:
        return str(turn.get("text") or "")
    return "\n\n".join(f"{m['agent']}: {m.get('content')}" for m in messages if m.get("content"))


def routing_text(turn: Mapping[str, Any]) -> str:
    """Who spoke in a turn and who handed it to whom, as a divergence names it: ``Triage, Billing (handoff
    Triage -> Billing)``; "" for a single-speaker turn."""
    speakers = ", ".join(turn_speakers(turn))
    handoffs = "; ".join(handoff_text(h) for h in turn_handoffs(turn))
    if handoffs:
        return f"{speakers} (handoff {handoffs})" if speakers else f"handoff {handoffs}"
    return speakers


def spoken_lines(turn: Mapping[str, Any], client_name: str = "Customer",
                 agent_name: str = "Agent") -> list[tuple[str, str]]:
    """A turn as ``(speaker, text)`` lines, tool calls before the text: one line for a customer or single-speaker
    turn (``Agent``); one per message of a multi-agent turn (``Agent [Billing]``), then the handoffs (``Handoffs``:
    ``Triage -> Billing (refund request); ...``). Every text report shows turns through this."""
    if turn.get("role") == "client":
        return [(client_name, str(turn.get("text") or ""))]
    messages = turn_messages(turn)
    if not messages:
        return [(agent_name, with_tool_calls(str(turn.get("text") or ""), turn_tool_calls(turn)))]
    lines = [(f"{agent_name} [{message['agent']}]", with_tool_calls(
        str(message.get("content") or ""),
        [c for c in message.get("tool_calls") or [] if isinstance(c, Mapping)]))
        for message in messages]
    handoffs = turn_handoffs(turn)
    if handoffs:
        lines.append(("Handoffs", "; ".join(handoff_text(h) for h in handoffs)))
    return lines


def turn_key(turn: Mapping[str, Any]) -> tuple[str, str, str]:
    """What comparing two transcripts looks at in a turn: role, text and the tool calls in full (flags such as
    ``cached`` and ``scripted`` are not compared: a replayed turn equals the live one)."""
    calls = json.dumps([dict(call) for call in turn_tool_calls(turn)], sort_keys=True, ensure_ascii=False,
                       default=str)
    text = turn.get("text")
    if turn_messages(turn) or turn_handoffs(turn):  # who spoke and who handed to whom: a changed routing differs
        calls += json.dumps([turn_speakers(turn), [dict(h) for h in turn_handoffs(turn)]], sort_keys=True,
                            ensure_ascii=False, default=str)
    return str(turn.get("role") or ""), "" if text is None else str(text), calls


def tool_call_parts(call: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """``(name, arguments, result or None)`` of a tool call, each exactly as ``tool_call_text`` writes it (same
    JSON, same truncation), for reports that lay the parts out apart (the pytest-html chat)."""
    name = f"{call.get('name', '?')}"
    arguments = tool_call_text({"name": "", "arguments": call.get("arguments", {})})[1:-1]
    if call.get("result") is None:
        return name, arguments, None
    result = tool_call_text({"name": "", "arguments": "", "result": call["result"]}).removeprefix("() -> ")
    return name, arguments, result


BLAME_CUT_SHORT = "cut_short"
BLAME_UNKNOWN = "unknown"
_CUT_SHORT_ENDINGS = ("max_turns", "timeout")


def judge_details(metrics: Any) -> Mapping[str, Any]:
    """The ``details`` of the judge metric among ``metrics`` (empty without a judge)."""
    for metric in metrics if isinstance(metrics, list) else []:
        if isinstance(metric, Mapping) and metric.get("name") == "judge":
            details = metric.get("details")
            return details if isinstance(details, Mapping) else {}
    return {}


def judge_scores(metrics: Any, score: Any) -> list[int]:
    """Every verdict of the judge (several with ``llmsim_judge_repeats``); ``[score]`` for one; [] for none."""
    scores = judge_details(metrics).get("scores")
    if isinstance(scores, list) and scores:
        return [int(s) for s in scores if isinstance(s, int)]
    return [int(score)] if isinstance(score, int) and not isinstance(score, bool) else []


def blame_of(status: Any, metrics: Any, transcript: Any, ended_by: Any) -> tuple[str, str]:
    """``(blame, source)`` of a failed conversation; ``("", "")`` for any other.

    The judge's ``blame`` when it gave one (source ``judge``); else what the transcript shows (source ``rule``):
    ``cut_short`` when max_turns or the timeout ended it, ``customer`` when the customer hung up right after the
    agent asked a question (the simulator's fault tau2-bench reports); else ``unknown``."""
    if str(status) != "failed":
        return "", ""
    given = judge_details(metrics).get("blame")
    if isinstance(given, str) and given and given != "none":
        return given, "judge"
    if ended_by in _CUT_SHORT_ENDINGS:
        return BLAME_CUT_SHORT, "rule"
    turns = [t for t in transcript if isinstance(t, Mapping)] if isinstance(transcript, list) else []
    agent_turns = [t for t in turns if t.get("role") == "agent" and str(t.get("text") or "").strip()]
    if ended_by == "client" and agent_turns and turns and turns[-1].get("role") == "client" \
            and str(agent_turns[-1].get("text")).rstrip().endswith("?"):
        return "customer", "rule"
    return BLAME_UNKNOWN, ""


_REASON_CHARS = 120  # one failed metric's reason, at most, in a failure reason
_LINE_BREAKS = re.compile(r"\s*(?:\r\n|\r|\n|\u2028|\u2029)\s*")


def failure_reason(data: Mapping[str, Any]) -> tuple[str, str]:
    """``(decided_by, reason)``: what decided that a conversation failed (``("", "")`` unless its ``status`` is
    ``failed``). ``decided_by`` names the failed metrics, ``, ``-separated in the scenario's order (``rules``,
    ``judge, rules``), or is ``trials``; ``reason`` says why on one line: each failed metric with its reason
    (``rules: tool 'lookup_order' never called``; the judge as ``judge: score 1, min 2``), ``; ``-separated, or
    the trials' verdict (``trials: 2 of 5 trials passed (...)``).

    ``data`` is a ``ScenarioResult.to_dict()`` (or a mapping with its keys status, metrics, score, min_score,
    trials, min_pass_rate). The terminal, pytest-html and the exports show these same texts."""
    if str(data.get("status")) != Status.FAILED:
        return "", ""
    trials = data.get("trials")
    counted = [t for t in trials if isinstance(t, Mapping)] if isinstance(trials, list | tuple) else []
    if counted:
        stats = stats_of([t.get("status") or ERROR for t in counted], [t.get("score") for t in counted])
        return "trials", f"trials: {verdict_text(stats, data.get('min_pass_rate'))}"
    names, parts = [], []
    metrics = data.get("metrics")
    for metric in metrics if isinstance(metrics, list | tuple) else []:
        if not isinstance(metric, Mapping) or metric.get("passed") is not False:
            continue
        name = str(metric.get("name", "?"))
        names.append(name)
        if name == "judge":
            details = metric.get("details")
            minimum = details.get("min_score") if isinstance(details, Mapping) else None
            minimum = data.get("min_score") if minimum is None else minimum
            parts.append(f"judge: score {_number(metric.get('score', data.get('score')))}, min {_number(minimum)}")
            continue
        reason = _LINE_BREAKS.sub(" ", str(metric.get("reason") or "")).strip()
        if len(reason) > _REASON_CHARS:
            reason = reason[: _REASON_CHARS - 1] + "…"
        parts.append(f"{name}: {reason}" if reason else f"{name}: failed (score {_number(metric.get('score'))})")
    if not parts and data.get("score") is not None:  # a record without metrics: the judge's score decided
        names.append("judge")
        parts.append(f"judge: score {data.get('score')}, min {data.get('min_score')}")
    return ", ".join(names), "; ".join(parts)


def _number(value: Any) -> str:
    """A score as people read it: an int as is, a float with up to 2 decimals, ``-`` for none."""
    if value is None:
        return "-"
    if isinstance(value, float) and value == value and value not in (float("inf"), float("-inf")):
        text = f"{value:.2f}".rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    return str(value)


@dataclass
class ModelUsage:
    """Calls and tokens of one (role, model) pair in one scenario, split into live and cache-replayed."""

    role: str
    model: str
    live_calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    # Of the prompt tokens above, those the provider read from its prompt cache (``usage.prompt_tokens_details.
    # cached_tokens``, priced cheaper): live calls', then replayed calls'.
    cached_input_tokens: int = 0
    replayed_cached_input_tokens: int = 0

    def add(self, prompt_tokens: int, completion_tokens: int, cached: bool, *, cached_input_tokens: int = 0) -> None:
        if cached:
            self.cached_calls += 1
            self.cached_prompt_tokens += prompt_tokens
            self.cached_completion_tokens += completion_tokens
            self.replayed_cached_input_tokens += cached_input_tokens
        else:
            self.live_calls += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.cached_input_tokens += cached_input_tokens


@dataclass
class ScenarioResult:
    scenario: str
    nodeid: str
    source: str
    status: Status
    min_score: int | None  # None only for a scenario that never ran (invalid, skipped)
    score: int | None = None
    comment: str = ""
    raw_verdict: str = ""
    transcript: list[dict[str, Any]] = field(default_factory=list)
    ended_by: str = ""
    end_reason: str = ""
    error_kind: ErrorKind | str | None = None  # the engine sets ``LlmsimError.kind``; read back as ErrorKind
    error_message: str = ""
    duration_seconds: float = 0.0
    usage: list[ModelUsage] = field(default_factory=list)
    # Every metric's result (``metrics.MetricResult.to_dict()``: name, score, passed, reason, details), in the
    # order of the scenario's ``evaluate``; the judge's score and comment are also ``score`` and ``comment``.
    metrics: list[dict[str, Any]] = field(default_factory=list)
    recording: str = ""  # the scenario's recording file (relative to the rootdir), when recordings are on
    recording_state: str = ""  # written | unchanged | replayed | "not written: <why>" | "" (nothing recorded)
    chat_file: str = ""  # the --llmsim-chats-dir file written, or "not written: <why>"
    # Trials (``trials.py``): ``trial`` is n >= 1 for one trial's conversation, 0 for a scenario's single
    # conversation or its trials combined; ``seed`` the seed the conversation ran with. A combined result holds
    # every trial's ``to_dict()`` in ``trials`` and shows the conversation of trial ``shown_trial``.
    trial: int = 0
    seed: int | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    shown_trial: int = 0
    min_pass_rate: float | None = None
    tags: list[str] = field(default_factory=list)  # the scenario's tags (the viewer filters by them)

    @property
    def total_turns(self) -> int:
        return len(self.transcript)

    @property
    def tool_calls(self) -> list[str]:
        """The names of the tools the agent called, in call order over every agent turn (repeats kept)."""
        return [f"{call.get('name', '?')}" for turn in self.transcript for call in turn_tool_calls(turn)]

    @property
    def agents(self) -> list[str]:
        """The agents that spoke, in order of their first message (a multi-agent system; none for one agent)."""
        return list(dict.fromkeys(name for turn in self.transcript for name in turn_speakers(turn)))

    @property
    def handoffs(self) -> list[str]:
        """The handoffs in order, ``Triage -> Billing`` each."""
        return [f"{h.get('from', '?')} -> {h.get('to', '?')}" for turn in self.transcript
                for h in turn_handoffs(turn)]

    @property
    def blame(self) -> str:
        """Who is to blame for a failed conversation (``blame_of``); "" unless failed."""
        return blame_of(self.status, self.metrics, self.transcript, self.ended_by)[0]

    @property
    def judge_scores(self) -> list[int]:
        return judge_scores(self.metrics, self.score)

    @property
    def failure(self) -> tuple[str, str]:
        """``(decided_by, reason)``: what decided that this conversation failed (``failure_reason``); empty
        unless failed."""
        return failure_reason({"status": self.status, "metrics": self.metrics, "score": self.score,
                               "min_score": self.min_score, "trials": self.trials,
                               "min_pass_rate": self.min_pass_rate})

    @property
    def judge_unstable(self) -> bool:
        """The judge's repeated verdicts straddle its minimum (some pass, some fail)."""
        return judge_details(self.metrics).get("unstable") is True

    @property
    def live_calls(self) -> int:
        return sum(u.live_calls for u in self.usage)

    @property
    def cached_calls(self) -> int:
        return sum(u.cached_calls for u in self.usage)

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of every call, live or replayed (what the conversation consumed)."""
        return sum(u.prompt_tokens + u.cached_prompt_tokens for u in self.usage)

    @property
    def completion_tokens(self) -> int:
        return sum(u.completion_tokens + u.cached_completion_tokens for u in self.usage)

    @property
    def live_tokens(self) -> int:
        """Tokens of the calls that went to the endpoint (what was paid for)."""
        return sum(u.prompt_tokens + u.completion_tokens for u in self.usage)

    @property
    def replayed_tokens(self) -> int:
        """Tokens of the calls replayed from the cache (what the cache saved)."""
        return sum(u.cached_prompt_tokens + u.cached_completion_tokens for u in self.usage)

    @property
    def fully_cached(self) -> bool:
        """Every LLM call was replayed from the cache (and there was at least one)."""
        return self.cached_calls > 0 and self.live_calls == 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str, int, float, bool, list, dict) for the xdist wire and the exports."""
        # Built field by field: dataclasses.asdict deep-copies every value recursively, which was a tenth of
        # the CPU of replaying a cached suite.
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        data["status"] = str(self.status)
        data["error_kind"] = str(self.error_kind) if self.error_kind else ""
        data["transcript"] = [dict(turn) for turn in self.transcript]
        data["usage"] = [dict(vars(usage)) for usage in self.usage]
        data["trials"] = [dict(trial) for trial in self.trials]
        data["tags"] = list(self.tags)
        decided_by, reason = self.failure
        data.update(total_turns=self.total_turns, tool_calls=self.tool_calls, prompt_tokens=self.prompt_tokens,
                    completion_tokens=self.completion_tokens, live_calls=self.live_calls,
                    cached_calls=self.cached_calls, cached=self.fully_cached, decided_by=decided_by,
                    failure_reason=reason)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScenarioResult:
        names = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in names}
        values["status"] = Status(str(data.get("status") or Status.ERROR))
        values["error_kind"] = ErrorKind.parse(data.get("error_kind"))
        values.setdefault("min_score", None)
        if values.get("score") in ("", None):
            values["score"] = None
        else:
            values["score"] = int(values["score"])
        if values["min_score"] in ("", None):
            values["min_score"] = None
        else:
            values["min_score"] = int(values["min_score"])
        values["usage"] = [ModelUsage(**u) for u in data.get("usage") or []]
        values["transcript"] = [dict(t) for t in data.get("transcript") or []]
        trials = data.get("trials")
        values["trials"] = [dict(t) for t in trials if isinstance(t, Mapping)] if isinstance(trials, list) else []
        for name in ("trial", "shown_trial"):
            values[name] = int(values.get(name) or 0)
        values["seed"] = None if values.get("seed") in ("", None) else int(values["seed"])
        values["min_pass_rate"] = None if values.get("min_pass_rate") in ("", None) else float(values["min_pass_rate"])
        tags = data.get("tags")
        values["tags"] = [t for t in tags.split(";") if t] if isinstance(tags, str) else \
            [str(t) for t in tags] if isinstance(tags, list | tuple) else []
        return cls(**values)


@dataclass(frozen=True)
class ScenarioRecord:
    """One scenario of a run: its result, pytest's outcome, its cost and the run it belongs to."""

    result: ScenarioResult
    outcome: Outcome
    run_id: str = ""
    worker: str = ""
    cost_usd: float = 0.0  # live calls, USD (rounded to 8 decimals)
    saved_cost_usd: float = 0.0  # what the replayed calls would have cost live
    unpriced_models: tuple[str, ...] = ()
    price_sources: dict[str, str] = field(default_factory=dict)  # model -> where its price came from

    # The fields every report reads, straight from the result.
    @property
    def nodeid(self) -> str:
        return self.result.nodeid

    @property
    def scenario(self) -> str:
        return self.result.scenario

    @property
    def status(self) -> Status:
        return Status(self.result.status)

    @property
    def score(self) -> int | None:
        return self.result.score

    @property
    def min_score(self) -> int | None:
        return self.result.min_score

    @property
    def error_kind(self) -> ErrorKind | None:
        return ErrorKind.parse(self.result.error_kind)

    def trial_figures(self) -> dict[str, Any]:
        """``trials`` (conversations: 1 without trials), ``pass_rate``, ``pass_hat_k``, ``pass_at_k``, ``flaky``,
        ``mean_score``, ``trial_scores`` and ``min_pass_rate`` (see ``trials.py``)."""
        figures = result_stats(self.result).to_dict() if self.status != Status.SKIPPED else {}
        return {"trials": figures.get("trials", 0), "passed_trials": figures.get("passed_trials", 0),
                "failed_trials": figures.get("failed_trials", 0), "errored_trials": figures.get("errored_trials", 0),
                "pass_rate": figures.get("pass_rate"), "pass_hat_k": figures.get("pass_hat_k"),
                "pass_at_k": figures.get("pass_at_k"), "flaky": figures.get("flaky"),
                "mean_score": figures.get("mean_score"), "trial_scores": figures.get("trial_scores", []),
                "min_pass_rate": self.result.min_pass_rate}

    def to_dict(self) -> dict[str, Any]:
        """The export row: the flat fields of ``summary.RECORD_FIELDS`` (``metrics`` as the list of metric
        results), then raw verdict, transcript, usage."""
        r = self.result
        decided_by, reason = r.failure
        return {
            "session_id": self.run_id,
            "nodeid": r.nodeid,
            "scenario": r.scenario,
            "source": r.source,
            "status": str(r.status),
            "outcome": str(self.outcome),
            "score": r.score,
            "min_score": r.min_score,
            "comment": r.comment,
            "metrics": [dict(metric) for metric in r.metrics if isinstance(metric, Mapping)],
            "total_turns": r.total_turns,
            "ended_by": r.ended_by,
            "end_reason": r.end_reason,
            "tool_calls": r.tool_calls,
            "duration_seconds": float(r.duration_seconds),
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
            "live_calls": r.live_calls,
            "cached_calls": r.cached_calls,
            "live_tokens": r.live_tokens,
            "replayed_tokens": r.replayed_tokens,
            "cached": r.fully_cached,
            "cost_usd": self.cost_usd,
            "saved_cost_usd": self.saved_cost_usd,
            "unpriced_models": list(self.unpriced_models),
            "error_kind": str(r.error_kind) if r.error_kind else "",
            "error_message": r.error_message,
            "decided_by": decided_by,
            "failure_reason": reason,
            "worker": self.worker,
            "blame": r.blame,
            "judge_scores": r.judge_scores,
            "judge_unstable": r.judge_unstable,
            "trial": r.trial,
            "seed": r.seed,
            "shown_trial": r.shown_trial,  # the trial whose conversation ``transcript`` is (0: no trials)
            **self.trial_figures(),
            "agents": r.agents,
            "handoffs": r.handoffs,
            "tags": list(r.tags),
            "raw_verdict": r.raw_verdict,
            "transcript": [dict(turn) for turn in r.transcript],
            "usage": [dict(vars(usage)) for usage in r.usage],
            "price_sources": dict(self.price_sources),
            "trial_results": [_trial_row(trial) for trial in r.trials],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScenarioRecord:
        """A record from an export row, or from a bare ``ScenarioResult.to_dict()`` (outcome from its status).
        ``metrics``: a list (entries that are not objects left out) or a CSV cell (``judge=3:passed;...``)."""
        metrics = data.get("metrics")
        if isinstance(metrics, str):  # a CSV cell: name=score:verdict;... (no reasons or details)
            verdicts = {"passed": True, "failed": False}
            rows: list[dict[str, Any]] = []
            for entry in filter(None, metrics.split(";")):
                name, _, rest = entry.partition("=")
                score, _, verdict = rest.rpartition(":")
                number: float | int | None = None
                if score:
                    try:
                        number = int(score)
                    except ValueError:
                        number = float(score)
                rows.append({"name": name, "score": number, "passed": verdicts.get(verdict), "reason": "",
                             "details": {}})
            data = {**data, "metrics": rows}
        elif "metrics" in data:
            data = {**data, "metrics": [dict(m) for m in metrics if isinstance(m, Mapping)]
                    if isinstance(metrics, list) else []}
        if isinstance(data.get("trial_results"), list):  # an export row: the trials are its trial_results
            data = {**data, "trials": data["trial_results"]}
        elif not isinstance(data.get("trials"), list) and _count(data.get("trials")) > 1:
            data = {**data, "trials": _trials_of_csv_row(data)}
        result = ScenarioResult.from_dict(data)
        outcome = data.get("outcome")
        unpriced = data.get("unpriced_models") or ()
        sources = data.get("price_sources")  # not in CSV rows
        if isinstance(unpriced, str):  # a CSV cell
            unpriced = [m for m in unpriced.split(";") if m]
        return cls(
            result=result,
            outcome=Outcome(str(outcome)) if outcome else outcome_of_status(result.status),
            run_id=str(data.get("session_id") or ""),
            worker=str(data.get("worker") or ""),
            cost_usd=float(data.get("cost_usd") or 0.0),
            saved_cost_usd=float(data.get("saved_cost_usd") or 0.0),
            unpriced_models=tuple(str(m) for m in unpriced),
            price_sources={str(m): str(s) for m, s in sources.items()} if isinstance(sources, Mapping) else {},
        )


def _trial_row(trial: Mapping[str, Any]) -> dict[str, Any]:
    """One trial of an export row: its ``ScenarioResult.to_dict()`` without what the row holds in total."""
    return {key: value for key, value in trial.items() if key not in ("trials", "cached")}


def _count(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _trials_of_csv_row(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A CSV row's trials, as far as its cells tell them: each trial's verdict, and the scores (the figures of
    ``trials.TrialStats`` need no more)."""
    scores = data.get("trial_scores")
    numbers = [int(s) for s in (scores.split(";") if isinstance(scores, str) else scores or []) if str(s).strip()]
    statuses = (["passed"] * _count(data.get("passed_trials")) + ["failed"] * _count(data.get("failed_trials"))
                + ["error"] * _count(data.get("errored_trials")))
    return [{"trial": n, "status": status, "score": numbers[n - 1] if n <= len(numbers) else None}
            for n, status in enumerate(statuses, start=1)]


# -- trials (``trials.py`` runs them; what they say together is computed here, beside the results) ---------------
@dataclass(frozen=True)
class TrialStats:
    """What k trials of one scenario say together (``trials`` = the trials that count)."""

    trials: int
    passed: int
    failed: int
    errored: int
    scores: tuple[int, ...]  # the scored trials', in trial order

    @property
    def pass_rate(self) -> float | None:
        """Passed / trials (an errored trial counts against); None without trials."""
        return round(self.passed / self.trials, 4) if self.trials else None

    @property
    def pass_hat_k(self) -> bool:
        """pass^k: every trial passed."""
        return self.trials > 0 and self.passed == self.trials

    @property
    def pass_at_k(self) -> bool:
        """pass@k: at least one trial passed."""
        return self.passed > 0

    @property
    def flaky(self) -> bool:
        """Some trials passed and some did not."""
        return 0 < self.passed < self.trials

    @property
    def mean_score(self) -> float | None:
        return round(statistics.fmean(self.scores), 4) if self.scores else None

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "passed_trials": self.passed, "failed_trials": self.failed,
                "errored_trials": self.errored, "pass_rate": self.pass_rate, "pass_hat_k": self.pass_hat_k,
                "pass_at_k": self.pass_at_k, "flaky": self.flaky, "mean_score": self.mean_score,
                "trial_scores": list(self.scores)}


def stats_of(statuses: Iterable[Status | str], scores: Iterable[int | None]) -> TrialStats:
    """The stats of trials given their verdicts (skipped trials do not count) and scores."""
    counted = [Status(str(s)) for s in statuses if str(s) != Status.SKIPPED]
    return TrialStats(len(counted), counted.count(PASSED), counted.count(FAILED), counted.count(ERROR),
                      tuple(int(s) for s in scores if s is not None))


def result_stats(result: ScenarioResult) -> TrialStats:
    """A combined result's trials' stats; a single conversation is one trial."""
    trials = [t for t in result.trials if isinstance(t, Mapping)]
    if not trials:
        return stats_of([result.status], [result.score])
    return stats_of([t.get("status") or ERROR for t in trials], [t.get("score") for t in trials])


def verdict_text(stats: TrialStats, required_rate: float | None) -> str:
    """``2 of 5 trials passed (pass rate 40.0% < 100.0%; pass^5 no, pass@5 yes)``."""
    rate = "n/a" if stats.pass_rate is None else f"{stats.pass_rate:.1%}"
    if required_rate is not None and stats.pass_rate is not None:
        rate += f" {'<' if stats.pass_rate + 1e-9 < required_rate else '>='} {required_rate:.1%}"
    k = stats.trials
    return (f"{stats.passed} of {k} trials passed (pass rate {rate}; pass^{k} {'yes' if stats.pass_hat_k else 'no'}"
            f", pass@{k} {'yes' if stats.pass_at_k else 'no'})")
