"""Judged metrics of the evaluation module (no pytest): ``facts`` (facts against a reference, in the spirit of its
TBFact: precision, recall and F1 of atomic facts), ``agent_selection_judge`` (did each handoff go to the right
agent: its AgentSelectionEvaluator) and ``information_aggregation_judge`` (was the final answer synthesised from
what the specialists said: its InformationAggregationEvaluator).

Why one module: the three metrics share one strict protocol with the judge model (ask, parse exactly, ask again,
then ``invalid_verdict``), and the protocol is most of the code; apart, each would carry its own copy.

Each asks the run's judge model (the ``evaluator`` role: cached, recorded, metered with the scenario) for one
strict JSON object per call and parses it strictly: a reply that is not exactly the object asked for (not JSON,
a fact number missing, answered twice or out of range, a non-boolean where true/false is asked, an empty list
where facts are needed) is asked again (``llmsim_judge_attempts``, each attempt a new cache key), then a
``VerdictError`` (kind ``invalid_verdict``) carrying the raw reply: the scenario is an error, never a score.

``facts`` options::

    reference: "text" | reference_file: path      exactly one (a file is relative to the scenario file)
    threshold: 0..1                                 passes when the score reaches it (without: it only informs)
    score: f1 | precision | recall                  what the score and threshold are (default f1)
    target: all | last                              the agent's turns judged (default all)
    agent: NAME                                     judge only what this agent said (multi-agent turns)

``agent_selection_judge`` options: ``agent`` (judge only the handoffs this agent made), ``agents`` (a mapping of
each agent's name to what it does, shown to the judge), ``threshold`` (the share of handoffs that must be right,
default 1: every one). The judge reads the transcript with speakers and answers, per handoff, whether it went to
the right agent, with a comment; the failure names the first wrong handoff, its turn and the judge's comment. A
conversation without a handoff (from ``agent``) fails: nothing was routed.

``information_aggregation_judge`` options: ``agent`` (whose last message is the final answer; default: the last
message of the conversation), ``agents``, ``threshold`` (the share of the other agents' messages whose information
the answer must use, default 1). The judge answers, per message of another agent before the final answer, whether
the answer uses its information (a message giving none counts as used), and whether the answer is a synthesis,
with a comment. Without another agent's message before the final answer it fails: nothing to aggregate.

Two judge calls: the first extracts the atomic facts of the reference and of the agent's answer, the second
says, for each reference fact, whether the answer states it (recall) and, for each fact of the answer, whether
the reference supports it (precision). ``details`` lists every fact with ``found`` / ``supported``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pytest_llmsim.errors import VerdictError
from pytest_llmsim.metrics.api import Conversation, LLMMetric, MetricResult

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import Scenario

T = TypeVar("T")
MAX_FACTS = 200  # more facts than this in one list: the reply is not a list of atomic facts
MIN_COMMENT_WORDS = 3  # a comment of fewer words is no reason (as the judge's own verdicts)
SCORE_KINDS = ("f1", "precision", "recall")
TARGETS = ("all", "last")


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def strict_json_object(raw: str) -> dict[str, Any]:
    """The reply as one JSON object (a ```json fence around it allowed); ValueError for anything else: prose
    around it, several objects, a repeated key, NaN."""
    text = raw.strip()
    if text.startswith("```"):
        text = text.removeprefix("```json").removeprefix("```").removesuffix("```").strip()

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        repeated = next((key for key in keys if keys.count(key) > 1), None)
        if repeated is not None:
            raise ValueError(f"the key {repeated!r} appears twice; not guessing which one is meant")
        return dict(items)

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the reply {_shown(raw)} is not one JSON object ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"the reply {_shown(raw)} is not a JSON object")
    return data


def _exact_keys(data: Mapping[str, Any], keys: Sequence[str], what: str) -> None:
    missing = [key for key in keys if key not in data]
    extra = sorted(set(data) - set(keys))
    if missing or extra:
        shown_missing, shown_extra = ", ".join(map(repr, missing)) or "none", ", ".join(map(repr, extra)) or "none"
        raise ValueError(f"{what} must have exactly the keys {', '.join(map(repr, keys))} (missing: {shown_missing}; "
                         f"unexpected: {shown_extra})")


def parse_fact_list(value: Any, what: str, *, allow_empty: bool) -> list[str]:
    """A list of non-blank fact strings; ValueError otherwise."""
    if not isinstance(value, list):
        raise ValueError(f"{what} is not a list (got {_shown(value)})")
    if not value and not allow_empty:
        raise ValueError(f"{what} is empty; the text states at least one fact")
    if len(value) > MAX_FACTS:
        raise ValueError(f"{what} has {len(value)} entries, over {MAX_FACTS}; not a list of atomic facts")
    facts = []
    for i, fact in enumerate(value, start=1):
        if not isinstance(fact, str) or not fact.strip():
            raise ValueError(f"{what} entry {i} is not a non-blank string (got {_shown(fact)})")
        facts.append(fact.strip())
    return facts


def parse_numbered(value: Any, count: int, key: str, what: str, *,
                   comment: bool = False) -> list[tuple[bool, str]]:
    """``[{"number": n, key: true|false}, ...]`` (each with a ``"comment"`` of at least MIN_COMMENT_WORDS words when
    ``comment``) answering 1..count exactly once each, as (answer, comment); ValueError otherwise."""
    if not isinstance(value, list):
        raise ValueError(f"{what} is not a list (got {_shown(value)})")
    keys = ("number", key, "comment") if comment else ("number", key)
    found: dict[int, tuple[bool, str]] = {}
    for entry in value:
        if not isinstance(entry, dict):
            raise ValueError(f"an entry of {what} is not an object (got {_shown(entry)})")
        _exact_keys(entry, keys, f"an entry of {what}")
        number, answer = entry["number"], entry[key]
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= count:
            raise ValueError(f"{what}: number {_shown(number)} is not between 1 and {count}")
        if not isinstance(answer, bool):
            raise ValueError(f"{what} {number}: {key!r} is {_shown(answer)}, not true or false")
        if number in found:
            raise ValueError(f"{what} {number} is answered twice")
        found[number] = (answer, parse_comment(entry["comment"], f"{what} {number}: 'comment'") if comment else "")
    missing = [n for n in range(1, count + 1) if n not in found]
    if missing:
        raise ValueError(f"{what}: {', '.join(map(str, missing))} not answered")
    return [found[n] for n in range(1, count + 1)]


class JudgedMetric(LLMMetric):
    """An LLM metric whose every judge reply is one strict JSON object, re-asked on an invalid reply and then a
    ``VerdictError`` (``invalid_verdict``), never a guessed score."""

    async def ask_strict(self, messages: Sequence[Mapping[str, str]], schema: dict[str, Any],
                         parse: Callable[[dict[str, Any]], T], *, step: str) -> T:
        attempts = max(1, self._settings.judge_attempts)
        problems: list[str] = []
        raw = ""
        for attempt in range(attempts):
            reply = await self.ask(messages, json_schema=schema, attempt=attempt)
            raw = reply.text
            try:
                return parse(strict_json_object(raw))
            except ValueError as exc:
                problems.append(str(exc))
        raise VerdictError(f"{self._label}: metric {self.name!r}: the judge's reply to {step} is not valid after "
                           f"{attempts} attempt(s): {problems[-1]}", raw_reply=raw)


def check_options(options: Mapping[str, Any], allowed: Sequence[str], name: str) -> None:
    unknown = sorted(set(options) - set(allowed), key=str)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))}; the {name!r} metric takes "
                         f"{', '.join(allowed)}")


def threshold_option(options: Mapping[str, Any]) -> float | None:
    threshold = options.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)
                                  or not 0 <= threshold <= 1):
        raise ValueError(f"option 'threshold' must be a number from 0 to 1 (got {_shown(threshold)})")
    return None if threshold is None else float(threshold)


def choice_option(options: Mapping[str, Any], key: str, choices: Sequence[str]) -> str:
    value = options.get(key, choices[0])
    if value not in choices:
        raise ValueError(f"option {key!r} must be one of {', '.join(choices)} (got {_shown(value)})")
    return str(value)


# -- facts against a reference -------------------------------------------------------------------------------------
FACTS_EXTRACT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reference_facts": {"type": "array", "items": {"type": "string"}},
                   "answer_facts": {"type": "array", "items": {"type": "string"}}},
    "required": ["reference_facts", "answer_facts"],
    "additionalProperties": False,
}


def _numbered_items(key: str) -> dict[str, Any]:
    """The schema of ``[{"number": n, key: true|false}, ...]``."""
    return {"type": "array", "items": {"type": "object",
                                       "properties": {"number": {"type": "integer"}, key: {"type": "boolean"}},
                                       "required": ["number", key], "additionalProperties": False}}


FACTS_MATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reference_facts": _numbered_items("found"), "answer_facts": _numbered_items("supported")},
    "required": ["reference_facts", "answer_facts"],
    "additionalProperties": False,
}


def facts_extract_messages(reference: str, answer: str) -> list[dict[str, str]]:
    system = ("You extract atomic facts: short, self-contained statements of one fact each (a finding, a value, a "
              "date, a decision), with no opinion and nothing the text does not say. Reply with one JSON object "
              'only: {"reference_facts": ["<fact>", ...], "answer_facts": ["<fact>", ...]}. '
              "answer_facts may be empty when the answer states no fact.")
    user = f"REFERENCE:\n{reference}\n\nANSWER:\n{answer}\n\nExtract the facts of each as JSON now."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _numbered(facts: Sequence[str]) -> str:
    return "\n".join(f"{i}. {fact}" for i, fact in enumerate(facts, start=1))


def facts_match_messages(reference: str, answer: str, reference_facts: Sequence[str],
                         answer_facts: Sequence[str]) -> list[dict[str, str]]:
    system = ("You match facts between a REFERENCE and an ANSWER. For each numbered reference fact, say whether the "
              "ANSWER states it (found). For each numbered answer fact, say whether the REFERENCE supports it "
              "(supported). Reply with one JSON object only: "
              '{"reference_facts": [{"number": <n>, "found": true or false}, ...], '
              '"answer_facts": [{"number": <n>, "supported": true or false}, ...]}, one entry per fact, in order.')
    user = (f"REFERENCE:\n{reference}\n\nANSWER:\n{answer}\n\nReference facts:\n{_numbered(reference_facts)}\n\n"
            f"Answer facts:\n{_numbered(answer_facts) or '(none)'}\n\nReturn the matches as JSON now.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def fact_scores(found: Sequence[bool], supported: Sequence[bool]) -> tuple[float, float, float]:
    """(precision, recall, F1): precision over the answer's facts (0 when it states none), recall over the
    reference's."""
    recall = sum(found) / len(found) if found else 0.0
    precision = sum(supported) / len(supported) if supported else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


class FactsMetric(JudgedMetric):
    """``facts``: precision, recall and F1 of the answer's atomic facts against a reference's (TBFact's spirit)."""

    name = "facts"
    OPTIONS = ("reference", "reference_file", "base_dir", "threshold", "score", "target")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        from pytest_llmsim.metrics.rules import _read_reference

        opts = self.options
        check_options(opts, self.OPTIONS, self.name)
        if ("reference" in opts) == ("reference_file" in opts):
            raise ValueError("the 'facts' metric needs exactly one of the options 'reference' (the text) and "
                             "'reference_file' (a path)")
        for key in ("reference", "reference_file"):
            if key in opts and (not isinstance(opts[key], str) or not opts[key].strip()):
                raise ValueError(f"option {key!r} must be a non-blank string (got {_shown(opts[key])})")
        self.threshold = threshold_option(opts)
        self.score_on = choice_option(opts, "score", SCORE_KINDS)
        self.target = choice_option(opts, "target", TARGETS)
        source = "reference" if "reference" in opts else "reference_file"
        self.reference: str = opts["reference"] if source == "reference" else \
            _read_reference(opts["reference_file"], opts.get("base_dir"))
        if not self.reference.strip():
            raise ValueError(f"option {source!r}: the reference text is empty")

    def answer(self, conversation: Conversation) -> str | None:
        """The agent's text judged (``target``), or None when it said nothing. (With ``agent: NAME`` the runner gives
        the metric only that agent's messages, and fails it unrun when that agent never spoke.)"""
        turns = [str(turn.get("text") or "") for turn in conversation.agent_turns]
        turns = [text for text in turns if text.strip()]
        if not turns:
            return None
        return turns[-1] if self.target == "last" else "\n".join(turns)

    async def evaluate(self, conversation: Conversation, scenario: Scenario) -> MetricResult:
        answer = self.answer(conversation)
        if answer is None:
            return MetricResult(self.name, 0.0, False, "the agent said nothing to check against the reference",
                                {"reference": self.reference, "agent_response": "", "threshold": self.threshold})

        def extracted(data: dict[str, Any]) -> tuple[list[str], list[str]]:
            _exact_keys(data, ("reference_facts", "answer_facts"), "the reply")
            return (parse_fact_list(data["reference_facts"], "'reference_facts'", allow_empty=False),
                    parse_fact_list(data["answer_facts"], "'answer_facts'", allow_empty=True))

        reference_facts, answer_facts = await self.ask_strict(
            facts_extract_messages(self.reference, answer), FACTS_EXTRACT_SCHEMA, extracted, step="fact extraction")

        def matched(data: dict[str, Any]) -> tuple[list[bool], list[bool]]:
            _exact_keys(data, ("reference_facts", "answer_facts"), "the reply")
            return ([ok for ok, _ in parse_numbered(data["reference_facts"], len(reference_facts), "found",
                                                    "reference fact")],
                    [ok for ok, _ in parse_numbered(data["answer_facts"], len(answer_facts), "supported",
                                                    "answer fact")])

        found, supported = await self.ask_strict(
            facts_match_messages(self.reference, answer, reference_facts, answer_facts), FACTS_MATCH_SCHEMA, matched,
            step="fact matching")
        precision, recall, f1 = fact_scores(found, supported)
        score = {"f1": f1, "precision": precision, "recall": recall}[self.score_on]
        explanation = f"Precision: {precision:.3f}, Recall: {recall:.3f}, F1: {f1:.3f}"
        missed = [fact for fact, ok in zip(reference_facts, found, strict=True) if not ok]
        unsupported = [fact for fact, ok in zip(answer_facts, supported, strict=True) if not ok]
        details: dict[str, Any] = {
            "reference": self.reference, "agent_response": answer,
            "metrics": {"precision": precision, "recall": recall, "f1": f1,
                        "precision_support": len(answer_facts), "recall_support": len(reference_facts)},
            "fact_evaluations": [{"fact": fact, "source": "reference", "found": ok}
                                 for fact, ok in zip(reference_facts, found, strict=True)]
                                + [{"fact": fact, "source": "answer", "supported": ok}
                                   for fact, ok in zip(answer_facts, supported, strict=True)],
            "score": self.score_on, "threshold": self.threshold, "target": self.target,
        }
        if self.threshold is None:
            return MetricResult(self.name, round(score, 4), None, explanation, details)
        passed = score >= self.threshold - 1e-9
        reason = f"{explanation}; {self.score_on} {'at least' if passed else 'below'} threshold {self.threshold:.2f}"
        if not passed and missed:
            reason += f"; missing: {'; '.join(missed[:3])}{' ...' if len(missed) > 3 else ''}"
        if not passed and unsupported and self.score_on != "recall":
            reason += f"; unsupported: {'; '.join(unsupported[:3])}{' ...' if len(unsupported) > 3 else ''}"
        return MetricResult(self.name, round(score, 4), passed, reason, details)


# -- multi-agent conversations as the judge reads them -------------------------------------------------------------
@dataclass(frozen=True)
class Said:
    """One agent message: its turn (numbered from 1 over the whole transcript), speaker and text."""

    turn: int
    agent: str
    content: str


@dataclass(frozen=True)
class Handoff:
    number: int  # from 1, in conversation order
    turn: int
    source: str
    target: str
    reason: str


SINGLE_SPEAKER = "Agent"  # the speaker of a turn without messages


def spoken(conversation: Conversation) -> list[Said]:
    """Every agent message in order: each speaker's message of a multi-agent turn, the turn's text otherwise."""
    said: list[Said] = []
    for number, turn in enumerate(conversation.turns, start=1):
        if turn.get("role") != "agent":
            continue
        messages = turn.get("messages") or []
        if messages:
            said.extend(Said(number, str(m.get("agent")), str(m.get("content") or "")) for m in messages)
        else:
            said.append(Said(number, SINGLE_SPEAKER, str(turn.get("text") or "")))
    return said


def handoffs_of(conversation: Conversation) -> list[Handoff]:
    found: list[Handoff] = []
    for number, turn in enumerate(conversation.turns, start=1):
        for handoff in turn.get("handoffs") or []:
            found.append(Handoff(len(found) + 1, number, str(handoff.get("from")), str(handoff.get("to")),
                                 str(handoff.get("reason") or "")))
    return found


def _names(conversation: Conversation) -> str:
    names = list(dict.fromkeys(said.agent for said in spoken(conversation)))
    return ", ".join(names) or "none"


def speaker_transcript(conversation: Conversation) -> str:
    """The transcript with a speaker per message and the handoffs, one line each, numbered by turn."""
    from pytest_llmsim.model.results import tool_call_text

    lines = []
    for number, turn in enumerate(conversation.turns, start=1):
        if turn.get("role") != "agent":
            lines.append(f"{number:>3}. Customer: {turn.get('text') or ''}")
            continue
        messages = turn.get("messages") or [{"agent": SINGLE_SPEAKER, "content": turn.get("text"),
                                             "tool_calls": turn.get("tool_calls") or []}]
        for message in messages:
            calls = " ".join(f"[tool {tool_call_text(call)}]" for call in message.get("tool_calls") or [])
            text = " ".join(part for part in (calls, str(message.get("content") or "")) if part)
            lines.append(f"{number:>3}. {message.get('agent')}: {text}")
        for handoff in turn.get("handoffs") or []:
            reason = f" (reason given: {handoff['reason']})" if handoff.get("reason") else ""
            lines.append(f"{number:>3}. handoff: {handoff.get('from')} -> {handoff.get('to')}{reason}")
    return "\n".join(lines)


def _roster(agents: Mapping[str, str] | None) -> str:
    if not agents:
        return ""
    return "The agents and what each does:\n" + "\n".join(f"- {name}: {what}" for name, what in agents.items()) \
        + "\n\n"


def agents_option(options: Mapping[str, Any]) -> dict[str, str] | None:
    agents = options.get("agents")
    if agents is None:
        return None
    if not isinstance(agents, Mapping) or not agents or not all(
            isinstance(k, str) and k.strip() and isinstance(v, str) and v.strip() for k, v in agents.items()):
        raise ValueError(f"option 'agents' must map each agent's name to what it does (got {_shown(agents)})")
    return dict(agents)


def name_option(options: Mapping[str, Any], key: str = "agent") -> str | None:
    value = options.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"option {key!r} must be an agent's name (got {_shown(value)})")
    return value


def parse_comment(value: Any, what: str) -> str:
    """A comment that says something: a string of at least MIN_COMMENT_WORDS words; ValueError otherwise."""
    if not isinstance(value, str) or len(re.findall(r"[^\W\d_]+", value)) < MIN_COMMENT_WORDS:
        raise ValueError(f"{what} must be a reason of at least {MIN_COMMENT_WORDS} words (got {_shown(value)})")
    return value.strip()


def _verdict_items(key: str) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "object", "properties": {
        "number": {"type": "integer"}, key: {"type": "boolean"}, "comment": {"type": "string"}},
        "required": ["number", key, "comment"], "additionalProperties": False}}


SELECTION_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"handoffs": _verdict_items("correct")},
                                    "required": ["handoffs"], "additionalProperties": False}
AGGREGATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"sources": _verdict_items("used"), "synthesised": {"type": "boolean"},
                   "comment": {"type": "string"}},
    "required": ["sources", "synthesised", "comment"], "additionalProperties": False}


class MultiAgentJudge(JudgedMetric):
    """The options of the multi-agent judged metrics: ``agent``, ``agents`` (the roster shown to the judge) and
    ``threshold`` (default 1). They read ``agent`` themselves: they need the whole conversation."""

    reads_agent_option = True

    OPTIONS = ("agent", "agents", "threshold")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        check_options(self.options, self.OPTIONS, self.name)
        self.agent = name_option(self.options)
        self.agents = agents_option(self.options)
        threshold = threshold_option(self.options)
        self.threshold = 1.0 if threshold is None else threshold


class AgentSelectionJudge(MultiAgentJudge):
    """``agent_selection_judge``: per handoff, did it go to the right agent (with a comment)."""

    name = "agent_selection_judge"

    async def evaluate(self, conversation: Conversation, scenario: Scenario) -> MetricResult:
        every = handoffs_of(conversation)
        judged = [h for h in every if self.agent is None or h.source == self.agent]
        if not judged:
            if self.agent is not None and self.agent not in {said.agent for said in spoken(conversation)}:
                why = f"agent {self.agent!r} never spoke (agents that spoke: {_names(conversation)})"
            elif self.agent is not None:
                why = f"agent {self.agent!r} made no handoff"
            else:
                why = "the conversation has no handoff (the agent reported none)"
            return MetricResult(self.name, 0.0, False, f"{why}: nothing was routed to judge",
                                {"handoffs": [], "threshold": self.threshold, "agent": self.agent})
        listed = "\n".join(f"{i}. turn {h.turn}: {h.source} -> {h.target}" + (f" (reason given: {h.reason})"
                                                                              if h.reason else "")
                           for i, h in enumerate(judged, start=1))
        system = ("You check the routing of a multi-agent AI system talking with a customer: for each numbered "
                  "handoff, did it send the conversation to the right agent for what the customer needed at that "
                  "point? Reply with one JSON object only: "
                  '{"handoffs": [{"number": <n>, "correct": true or false, "comment": "<one sentence why>"}, ...]}, '
                  "one entry per handoff, in order.")
        user = (f"{_roster(self.agents)}Transcript:\n{speaker_transcript(conversation)}\n\nHandoffs to judge:\n"
                f"{listed}\n\nReturn the verdicts as JSON now.")

        def parse(data: dict[str, Any]) -> list[tuple[bool, str]]:
            _exact_keys(data, ("handoffs",), "the reply")
            return parse_numbered(data["handoffs"], len(judged), "correct", "handoff", comment=True)

        verdicts = await self.ask_strict([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                         SELECTION_SCHEMA, parse, step="the handoffs")
        entries = [{"number": i, "turn": h.turn, "from": h.source, "to": h.target, "reason": h.reason,
                    "correct": ok, "comment": comment}
                   for i, (h, (ok, comment)) in enumerate(zip(judged, verdicts, strict=True), start=1)]
        right = sum(1 for ok, _ in verdicts if ok)
        share = right / len(verdicts)
        passed = share >= self.threshold - 1e-9
        wrong = next((e for e in entries if not e["correct"]), None)
        reason = f"{right} of {len(verdicts)} handoff(s) went to the right agent"
        if wrong is not None:
            reason += (f"; handoff {wrong['number']} at turn {wrong['turn']} ({wrong['from']} -> {wrong['to']}) "
                       f"was wrong: {wrong['comment']}")
        return MetricResult(self.name, round(share, 4), passed, reason,
                            {"handoffs": entries, "threshold": self.threshold, "agent": self.agent})


class InformationAggregationJudge(MultiAgentJudge):
    """``information_aggregation_judge``: was the final answer synthesised from the other agents' messages."""

    name = "information_aggregation_judge"

    async def evaluate(self, conversation: Conversation, scenario: Scenario) -> MetricResult:
        said = [s for s in spoken(conversation) if s.content.strip()]
        candidates = [i for i, s in enumerate(said) if self.agent is None or s.agent == self.agent]
        details: dict[str, Any] = {"sources": [], "threshold": self.threshold, "agent": self.agent}
        if not candidates:
            return MetricResult(self.name, 0.0, False, f"agent {self.agent!r} never spoke (agents that spoke: "
                                                       f"{_names(conversation)}): no final answer to judge", details)
        final = said[candidates[-1]]
        sources = [s for s in said[:candidates[-1]] if s.agent != final.agent]
        details.update(final_answer={"turn": final.turn, "agent": final.agent, "content": final.content})
        if not sources:
            return MetricResult(self.name, 0.0, False, f"no other agent spoke before {final.agent}'s final answer "
                                                       f"at turn {final.turn}: nothing to aggregate", details)
        listed = "\n".join(f"{i}. turn {s.turn}, {s.agent}: {s.content}" for i, s in enumerate(sources, start=1))
        system = ("You check whether the FINAL ANSWER of a multi-agent AI system is synthesised from what its "
                  "specialist agents said. For each numbered specialist message, say whether the final answer uses "
                  "the information it gives (used; true when it gives no information); then whether the answer "
                  "combines them into one coherent answer (synthesised). Reply with one JSON object only: "
                  '{"sources": [{"number": <n>, "used": true or false, "comment": "<one sentence>"}, ...], '
                  '"synthesised": true or false, "comment": "<one sentence why>"}.')
        user = (f"{_roster(self.agents)}Transcript:\n{speaker_transcript(conversation)}\n\nSpecialist messages:\n"
                f"{listed}\n\nFINAL ANSWER (turn {final.turn}, {final.agent}):\n{final.content}\n\n"
                "Return the verdict as JSON now.")

        def parse(data: dict[str, Any]) -> tuple[list[tuple[bool, str]], bool, str]:
            _exact_keys(data, ("sources", "synthesised", "comment"), "the reply")
            if not isinstance(data["synthesised"], bool):
                raise ValueError(f"'synthesised' is {_shown(data['synthesised'])}, not true or false")
            return (parse_numbered(data["sources"], len(sources), "used", "source", comment=True), data["synthesised"],
                    parse_comment(data["comment"], "'comment'"))

        verdicts, synthesised, comment = await self.ask_strict(
            [{"role": "system", "content": system}, {"role": "user", "content": user}], AGGREGATION_SCHEMA, parse,
            step="the aggregation")
        entries = [{"number": i, "turn": s.turn, "agent": s.agent, "used": ok, "comment": why}
                   for i, (s, (ok, why)) in enumerate(zip(sources, verdicts, strict=True), start=1)]
        used = sum(1 for ok, _ in verdicts if ok)
        share = used / len(verdicts)
        passed = synthesised and share >= self.threshold - 1e-9
        reason = (f"{'synthesised' if synthesised else 'not synthesised'}; {used} of {len(verdicts)} specialist "
                  f"message(s) used: {comment}")
        unused = [e for e in entries if not e["used"]]
        if unused and not passed:
            first = unused[0]
            reason += f"; unused: turn {first['turn']} {first['agent']} ({first['comment']})"
        details.update(sources=entries, synthesised=synthesised, comment=comment)
        return MetricResult(self.name, round(share, 4), passed, reason, details)
