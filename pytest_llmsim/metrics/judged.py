"""Judged metrics of the evaluation module (no pytest): ``facts`` (facts against a reference, in the spirit of its
TBFact: precision, recall and F1 of atomic facts).

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

Two judge calls: the first extracts the atomic facts of the reference and of the agent's answer, the second
says, for each reference fact, whether the answer states it (recall) and, for each fact of the answer, whether
the reference supports it (precision). ``details`` lists every fact with ``found`` / ``supported``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pytest_llmsim.errors import VerdictError
from pytest_llmsim.metrics.api import Conversation, LLMMetric, MetricResult

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import Scenario

T = TypeVar("T")
MAX_FACTS = 200  # more facts than this in one list: the reply is not a list of atomic facts
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


def parse_numbered_booleans(value: Any, count: int, key: str, what: str) -> list[bool]:
    """``[{"number": n, key: true|false}, ...]`` answering 1..count exactly once each; ValueError otherwise."""
    if not isinstance(value, list):
        raise ValueError(f"{what} is not a list (got {_shown(value)})")
    found: dict[int, bool] = {}
    for entry in value:
        if not isinstance(entry, dict):
            raise ValueError(f"an entry of {what} is not an object (got {_shown(entry)})")
        _exact_keys(entry, ("number", key), f"an entry of {what}")
        number, answer = entry["number"], entry[key]
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= count:
            raise ValueError(f"{what}: number {_shown(number)} is not between 1 and {count}")
        if not isinstance(answer, bool):
            raise ValueError(f"{what}: fact {number}: {key!r} is {_shown(answer)}, not true or false")
        if number in found:
            raise ValueError(f"{what}: fact {number} is answered twice")
        found[number] = answer
    missing = [n for n in range(1, count + 1) if n not in found]
    if missing:
        raise ValueError(f"{what}: fact(s) {', '.join(map(str, missing))} not answered")
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
        for key in ("reference", "reference_file", "agent"):
            if key in opts and (not isinstance(opts[key], str) or not opts[key].strip()):
                raise ValueError(f"option {key!r} must be a non-blank string (got {_shown(opts[key])})")
        self.threshold = threshold_option(opts)
        self.score_on = choice_option(opts, "score", SCORE_KINDS)
        self.target = choice_option(opts, "target", TARGETS)
        self.agent: str | None = opts.get("agent")
        source = "reference" if "reference" in opts else "reference_file"
        self.reference: str = opts["reference"] if source == "reference" else \
            _read_reference(opts["reference_file"], opts.get("base_dir"))
        if not self.reference.strip():
            raise ValueError(f"option {source!r}: the reference text is empty")

    def answer(self, conversation: Conversation) -> str | None:
        """The agent's text judged (``target``), or None when the agent said nothing."""
        turns = [str(turn.get("text") or "") for turn in conversation.agent_turns]
        turns = [text for text in turns if text.strip()]
        if not turns:
            return None
        return turns[-1] if self.target == "last" else "\n".join(turns)

    async def evaluate(self, conversation: Conversation, scenario: Scenario) -> MetricResult:
        answer = self.answer(conversation)
        if answer is None:
            who = f"agent {self.agent!r}" if self.agent else "the agent"
            return MetricResult(self.name, 0.0, False, f"{who} said nothing to check against the reference",
                                {"reference": self.reference, "agent_response": "", "threshold": self.threshold})

        def extracted(data: dict[str, Any]) -> tuple[list[str], list[str]]:
            _exact_keys(data, ("reference_facts", "answer_facts"), "the reply")
            return (parse_fact_list(data["reference_facts"], "'reference_facts'", allow_empty=False),
                    parse_fact_list(data["answer_facts"], "'answer_facts'", allow_empty=True))

        reference_facts, answer_facts = await self.ask_strict(
            facts_extract_messages(self.reference, answer), FACTS_EXTRACT_SCHEMA, extracted, step="fact extraction")

        def matched(data: dict[str, Any]) -> tuple[list[bool], list[bool]]:
            _exact_keys(data, ("reference_facts", "answer_facts"), "the reply")
            return (parse_numbered_booleans(data["reference_facts"], len(reference_facts), "found",
                                            "'reference_facts'"),
                    parse_numbered_booleans(data["answer_facts"], len(answer_facts), "supported", "'answer_facts'"))

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
        if self.agent:
            details["agent"] = self.agent
        if self.threshold is None:
            return MetricResult(self.name, round(score, 4), None, explanation, details)
        passed = score >= self.threshold - 1e-9
        reason = f"{explanation}; {self.score_on} {'at least' if passed else 'below'} threshold {self.threshold:.2f}"
        if not passed and missed:
            reason += f"; missing: {'; '.join(missed[:3])}{' ...' if len(missed) > 3 else ''}"
        if not passed and unsupported and self.score_on != "recall":
            reason += f"; unsupported: {'; '.join(unsupported[:3])}{' ...' if len(unsupported) > 3 else ''}"
        return MetricResult(self.name, round(score, 4), passed, reason, details)
