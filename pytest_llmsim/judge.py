"""The evaluator: a judge LLM scores a transcript 1-3 with a comment.

The verdict is requested as structured output (see ``client.STRUCTURED_MODES``). Whatever comes back is
parsed strictly by ``parse_verdict``, which never guesses: a JSON object with ``score`` and ``comment``
decides; otherwise an explicit ``Score:`` label does; several different candidate scores make the reply
invalid. An invalid verdict is re-requested with a new attempt index (a new cache key and seed); if every
attempt fails the result is a ``VerdictError`` carrying the raw reply, never a made-up score.

A conversation in which the agent never said anything is not judged at all (``NoAgentReplyError``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .client import Completer, LLMRequest
from .conversation import Transcript, no_agent_reply_error
from .errors import ConfigError, PromptError, VerdictError
from .metrics import Conversation, LLMMetric, MetricResult
from .prompts import PromptRenderer, template_context
from .scenario import Scenario
from .settings import RunSettings

BLAMES = ("agent", "customer", "cut_short", "none")
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "enum": [1, 2, 3]},
        "comment": {"type": "string"},
        "blame": {"type": "string", "enum": list(BLAMES)},
    },
    "required": ["score", "comment", "blame"],
    "additionalProperties": False,
}
POLICIES = ("majority", "min", "mean")

# A label name may be wrapped in markdown emphasis or quotes: **Score:** 2, **Score**: 2, "score": 2.
_LABEL_WRAP = r"[*_`\"' \t]*"
_SCORE_LABEL_RE = re.compile(rf"\bscore\b{_LABEL_WRAP}:", re.IGNORECASE)
_COMMENT_LABEL_RE = re.compile(rf"\bcomments?\b{_LABEL_WRAP}:", re.IGNORECASE)
# What may precede a label on its line for it to count as starting the line: blanks, bullets, headings,
# quote marks, emphasis.
_LINE_START_RE = re.compile(r"[\s>#*_`\"'\-•]*")
# A score value: "2", "**2**", "2.", "2/3", "2 out of 3". The number is checked afterwards.
_VALUE_RE = re.compile(r"[\s*_`\"']*(\d+(?:\.\d+)?)(?:\s*(?:/|out of|of)\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
# A score mentioned in prose: "a score 3", "score of 2", "scored 1", "score is 3".
_MENTION_RE = re.compile(
    r"\bscor(?:e|ed|es)\b(?:\s+(?:of|is|was|would be))?[\s:=*_`\"']*(\d+(?:\.\d+)?)"
    r"(?:\s*(?:/|out of)\s*(\d+(?:\.\d+)?))?",
    re.IGNORECASE,
)
_BLAME_LABEL_RE = re.compile(rf"\bblame\b{_LABEL_WRAP}:{_LABEL_WRAP}([a-z_]+)", re.IGNORECASE)
_MAX_JSON_STARTS = 200  # bound the scan of a long reply full of braces


@dataclass
class Verdict:
    score: int
    comment: str
    raw_reply: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    attempts: int
    blame: str | None = None  # who the judge blames (``BLAMES``); None when the reply does not say


def _coerce_score(value: Any) -> int | None:
    """1, 2 or 3 from a JSON value (2, 2.0, "2"); None for anything else (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and float(value).is_integer() and int(value) in (1, 2, 3):
        return int(value)
    if isinstance(value, str) and value.strip() in ("1", "2", "3"):
        return int(value.strip())
    return None


def _number_score(number: str, out_of: str | None) -> int | None:
    """1, 2 or 3 from a number written in text ("2", "2.0", "2/3"); None if it is not one."""
    if out_of is not None and float(out_of) != 3:
        return None
    value = float(number)
    return int(value) if value.is_integer() and int(value) in (1, 2, 3) else None


def _has_words(text: str) -> bool:
    """A comment must say something: "...", "-" or "" copied from a template is not a comment."""
    return any(ch.isalnum() for ch in text)


def _show(values: list[str]) -> str:
    return ", ".join(dict.fromkeys(values))


@dataclass
class _JsonFound:
    objects: list[Any]
    spans: list[tuple[int, int]]
    duplicate_scores: list[list[Any]]


def _find_json_objects(text: str) -> _JsonFound:
    """Every JSON object in ``text`` (fenced, bare, or embedded in prose), outermost only, with its span."""
    duplicates: list[list[Any]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        scores = [value for key, value in items if isinstance(key, str) and key.lower() == "score"]
        if len({json.dumps(v, sort_keys=True) for v in scores}) > 1:
            duplicates.append(scores)  # {"score": 3, "score": 1}: json.loads would silently keep the last
        return dict(items)

    decoder = json.JSONDecoder(object_pairs_hook=pairs)
    found = _JsonFound([], [], duplicates)
    position = tries = 0
    while tries < _MAX_JSON_STARTS and (start := text.find("{", position)) != -1:
        tries += 1
        try:
            obj, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            position = start + 1
            continue
        found.objects.append(obj)
        found.spans.append((start, end))
        position = end
    return found


def _verdict_dicts(obj: Any) -> list[dict[str, Any]]:
    """Objects with a ``score`` key (any case), searched recursively; keys lower-cased."""
    found: list[dict[str, Any]] = []
    if isinstance(obj, dict):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        if "score" in lowered:
            found.append(lowered)
        else:
            for value in obj.values():
                found.extend(_verdict_dicts(value))
    elif isinstance(obj, list):
        for value in obj:
            found.extend(_verdict_dicts(value))
    return found


@dataclass
class _Label:
    start: int  # where the label name starts
    value_start: int  # just after the colon
    line_start: bool  # the label opens its line (after bullets / markdown)
    text: str  # the label's line from the label on, for messages


def _score_labels(text: str) -> list[_Label]:
    """Every ``Score:`` label, noting whether it opens its line."""
    labels = []
    for match in _SCORE_LABEL_RE.finditer(text):
        line_begin = text.rfind("\n", 0, match.start()) + 1
        line_end = text.find("\n", match.start())
        shown = text[match.start():len(text) if line_end == -1 else line_end].strip()[:80]
        line_start = _LINE_START_RE.fullmatch(text, line_begin, match.start()) is not None
        labels.append(_Label(match.start(), match.end(), line_start, shown))
    return labels


def _label_score(text: str, label: _Label) -> tuple[int | None, str]:
    """(score or None, the value as written) of a ``Score:`` label."""
    match = _VALUE_RE.match(text, label.value_start)
    if match is None:
        return None, label.text
    written = match.group(1) + (f"/{match.group(2)}" if match.group(2) else "")
    return _number_score(match.group(1), match.group(2)), written


def _masked(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with the given spans blanked out (line breaks kept, so line starts stay line starts)."""
    chars = list(text)
    for start, end in spans:
        for i in range(start, end):
            if chars[i] != "\n":
                chars[i] = " "
    return "".join(chars)


def _json_verdict(text: str, found: _JsonFound, candidates: list[dict[str, Any]]) -> tuple[int, str]:
    if found.duplicate_scores:
        shown = _show([json.dumps(v) for v in found.duplicate_scores[0]])
        raise ValueError(f"a JSON object repeats 'score' with different values ({shown}); not guessing which "
                         "one is the verdict")
    scores = []
    for candidate in candidates:
        score = _coerce_score(candidate["score"])
        if score is None:
            raise ValueError(f"'score' must be 1, 2 or 3, got {candidate['score']!r}")
        scores.append(score)
    if len(set(scores)) > 1:
        raise ValueError(f"the reply holds {len(candidates)} JSON verdicts with different scores "
                         f"({_show([str(s) for s in scores])}); not guessing which one is meant")
    rest = _masked(text, found.spans)
    for label in _score_labels(rest):
        other, written = _label_score(rest, label)
        if other != scores[0]:
            raise ValueError(f"the JSON verdict says score {scores[0]} but the text around it says "
                             f"{label.text!r} ({written}); not guessing which one is meant")
    comment = candidates[0].get("comment")
    if not isinstance(comment, str) or not _has_words(comment):
        raise ValueError(f"'comment' is missing or empty (got {comment!r}); a verdict needs a reason")
    return scores[0], comment.strip()


def _text_comment(text: str, labels: list[_Label]) -> str | None:
    """The text after the first ``Comment:`` label, up to the next ``Score:`` label or the end."""
    match = _COMMENT_LABEL_RE.search(text)
    if match is None:
        return None
    ends = [label.start for label in labels if label.start > match.end()]
    comment = text[match.end():min(ends) if ends else len(text)]
    return comment.strip().strip("*_`\"'").strip()


def _text_verdict(text: str) -> tuple[int, str]:
    labels = _score_labels(text)
    deciding = [label for label in labels if label.line_start] or labels
    if deciding:
        values = [_label_score(text, label) for label in deciding]
        bad = [label.text for label, (score, _) in zip(deciding, values, strict=True) if score is None]
        if bad:
            raise ValueError(f"a 'Score:' label without a score 1, 2 or 3: {bad[0]!r}")
        if len({score for score, _ in values}) > 1:
            raise ValueError(f"'Score:' labels disagree: {_show([written for _, written in values])}; "
                             "not guessing which one is the verdict")
        score = values[0][0]
        assert score is not None
    else:
        mentions = [(m.group(1), m.group(2)) for m in _MENTION_RE.finditer(text)]
        if not mentions:
            raise ValueError("no JSON object with 'score' and 'comment' and no 'Score: N' / 'Comment: ...' lines")
        written = [number + (f"/{out_of}" if out_of else "") for number, out_of in mentions]
        if len({_number_score(*mention) or shown for mention, shown in zip(mentions, written, strict=True)}) > 1:
            raise ValueError(f"no 'Score:' line, and the reply mentions several different scores "
                             f"({_show(written)}); not guessing which one is the verdict")
        parsed = _number_score(*mentions[0])
        if parsed is None:
            raise ValueError(f"the score must be 1, 2 or 3, got {written[0]}")
        score = parsed
    comment = _text_comment(text, labels)
    if comment is None:
        raise ValueError(f"found score {score} but no 'Comment: ...' line; a verdict needs a reason")
    if not _has_words(comment):
        raise ValueError(f"the 'Comment:' line is empty (got {comment!r}); a verdict needs a reason")
    return score, comment


def parse_verdict(text: str) -> tuple[int, str]:
    """Return (score, comment) from a judge reply or raise ValueError saying what is wrong.

    Order: JSON objects with a ``score`` key (all must agree, and no ``Score:`` label around them may
    contradict them); else ``Score:`` labels, those opening a line if there are any, else all of them (they
    must agree); else prose mentions like ``a score of 2`` (they must agree). The comment comes from the
    JSON object or the ``Comment:`` label and must contain words.
    """
    found = _find_json_objects(text)
    candidates = [d for obj in found.objects for d in _verdict_dicts(obj)]
    if candidates or found.duplicate_scores:
        return _json_verdict(text, found, candidates)
    return _text_verdict(text)


def parse_blame(text: str) -> str | None:
    """The ``blame`` of a judge reply (a JSON object's key, else a ``Blame:`` label) when it is one of ``BLAMES``;
    None otherwise. Blame sorts failures in the reports; it never decides a verdict, so a reply without it is
    still a verdict."""
    found = _find_json_objects(text)
    for candidate in (d for obj in found.objects for d in _verdict_dicts(obj)):
        value = candidate.get("blame")
        if isinstance(value, str) and value.strip().lower() in BLAMES:
            return value.strip().lower()
    match = _BLAME_LABEL_RE.search(text)
    return match.group(1).lower() if match and match.group(1).lower() in BLAMES else None


def policy_score(scores: list[int], policy: str) -> float:
    """The judge's score over repeats: ``majority`` (the most frequent; a tie goes to the lowest of the tied
    scores, so an even split never rounds up), ``min`` (the lowest) or ``mean`` (the exact mean)."""
    if policy == "min":
        return float(min(scores))
    if policy == "mean":
        return round(sum(scores) / len(scores), 4)
    counts = {score: scores.count(score) for score in scores}
    top = max(counts.values())
    return float(min(score for score, count in counts.items() if count == top))


def check_judge_sees_criteria(scenario: Scenario, settings: RunSettings, renderer: PromptRenderer, *,
                              label: str) -> None:
    """PromptError when the scenario has ``criteria`` that its evaluator template never shows the judge. Checked
    before the conversation too, so a template that would drop them costs no calls."""
    if not scenario.criteria:
        return
    template = settings.role("evaluator", scenario).template
    used = renderer.variables_used(template)
    if used is not None and "criteria" not in used:  # the judge would silently never see them
        raise PromptError(
            f"{label}: the scenario has 'criteria' but the evaluator template {template!r} never uses the "
            "variable 'criteria', so the judge would not see them; list them in the template "
            "(e.g. {% for c in criteria %}{{ loop.index }}. {{ c }}{% endfor %}) or remove the project's "
            "template to use the package's generic evaluator"
        )


async def evaluate(
    scenario: Scenario,
    transcript: Transcript,
    settings: RunSettings,
    client: Completer,
    renderer: PromptRenderer,
    *,
    label: str,
    repeat: int = 0,
) -> Verdict:
    """Judge ``transcript``; a transcript without a single non-empty agent turn is refused, not judged.
    ``repeat`` n > 0 is the n+1-th independent verdict of the same transcript (its own seed and cache key)."""
    refusal = no_agent_reply_error(transcript, scenario, settings, label=label)
    if refusal is not None:
        raise refusal
    role = settings.role("evaluator", scenario)
    context = template_context(scenario, settings, transcript=transcript.to_dicts(),
                               transcript_text=transcript.as_text(), ended_by=transcript.ended_by,
                               end_reason=transcript.end_reason)
    prompt = renderer.render(role.template, context, scenario_label=label)
    seed = scenario.seed if scenario.seed is not None else settings.default_seed
    if repeat:
        from .trials import derive_seed

        seed = derive_seed(seed, repeat + 1, salt="judge")
        label = f"{label} judge repeat {repeat + 1}"
    problems: list[str] = []
    raw = ""
    prompt_tokens = completion_tokens = 0
    for attempt in range(settings.judge_attempts):
        request = LLMRequest(
            role="evaluator", model=role.model,
            messages=({"role": "system", "content": prompt},
                      {"role": "user", "content": "Return the verdict as JSON now."}),
            temperature=role.temperature, max_tokens=role.max_tokens, seed=seed,
            json_schema=VERDICT_SCHEMA, attempt=attempt,
        )
        reply = await client.complete(request, label=f"{label} evaluator attempt {attempt + 1}")
        raw = reply.text
        prompt_tokens += reply.prompt_tokens
        completion_tokens += reply.completion_tokens
        try:
            score, comment = parse_verdict(raw)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        return Verdict(score, comment, raw, prompt_tokens, completion_tokens, reply.cached, attempt + 1,
                       parse_blame(raw))
    raise VerdictError(
        f"{label}: the evaluator's reply is not a valid verdict after {settings.judge_attempts} attempt(s): "
        f"{problems[-1]}",
        raw_reply=raw,
    )


# -- the judge and the criteria as metrics -------------------------------------------------------------------------
class JudgeMetric(LLMMetric):
    """``judge``: today's 1-3 verdict and comment; passes at ``min_score`` (the option, else the scenario's,
    else the run's). Needs the renderer (the evaluator template), bound by the runner."""

    name = "judge"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        unknown = sorted(set(self.options) - {"min_score"})
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))}; the judge takes min_score")
        min_score = self.options.get("min_score")
        if min_score is not None and (not isinstance(min_score, int) or isinstance(min_score, bool)
                                      or not 1 <= min_score <= 3):
            raise ValueError(f"min_score must be 1, 2 or 3 (got {min_score!r})")
        self.verdict: Verdict | None = None

    def bind_renderer(self, renderer: PromptRenderer) -> None:
        self._renderer = renderer

    def min_score(self, scenario: Scenario) -> int:
        return self.options.get("min_score") or scenario.min_score or self._settings.min_score

    async def evaluate(self, conversation: Conversation, scenario: Scenario) -> MetricResult:
        assert conversation.transcript is not None
        repeats = max(1, self._settings.judge_repeats)
        verdicts = list(await asyncio.gather(*(
            evaluate(scenario, conversation.transcript, self._settings, self._client, self._renderer,
                     label=self._label, repeat=repeat) for repeat in range(repeats))))
        minimum = self.min_score(scenario)
        details: dict[str, Any] = {"min_score": minimum, "attempts": verdicts[0].attempts}
        if repeats == 1:
            verdict = self.verdict = verdicts[0]
            passed = verdict.score >= minimum
        else:  # several verdicts of one transcript: the policy decides, and a split is said, never hidden
            scores = [v.score for v in verdicts]
            policy = self._settings.judge_policy
            exact = policy_score(scores, policy)
            passed = exact >= minimum
            score = math.floor(exact)  # (passes at an integer minimum exactly when the exact score does)
            chosen = next((v for v in verdicts if v.score == score), verdicts[0])
            verdict = self.verdict = dataclasses.replace(chosen, score=score)
            details.update(scores=scores, policy=policy, policy_score=exact, spread=max(scores) - min(scores),
                           unanimous=len(set(scores)) == 1,
                           unstable=any(s >= minimum for s in scores) and any(s < minimum for s in scores),
                           attempts=max(v.attempts for v in verdicts))
        if verdict.blame is not None:
            details["blame"] = verdict.blame
        return MetricResult("judge", verdict.score, passed, verdict.comment, details)


CRITERIA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "criteria": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"number": {"type": "integer"}, "met": {"type": "boolean"},
                               "reason": {"type": "string"}},
                "required": ["number", "met", "reason"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["criteria"],
    "additionalProperties": False,
}


def criteria_prompt(scenario: Scenario, transcript: Transcript, language: str) -> str:
    criteria = "\n".join(f"{i}. {criterion}" for i, criterion in enumerate(scenario.criteria or (), start=1))
    return (
        "You check a conversation between a customer and an AI assistant (the AGENT) against criteria, one by "
        "one. Judge only the AGENT.\n\nCriteria:\n" + criteria + "\n\n"
        "In the transcript, text in square brackets before an agent's line is a tool call the agent made and what "
        f"it returned.\nHow the conversation ended: {transcript.end_reason}.\n\nTranscript:\n{transcript.as_text()}\n\n"
        'Reply with one JSON object only: {"criteria": [{"number": <criterion number>, "met": true or false, '
        f'"reason": "<one sentence in {language}>"}}, ...]}}, one entry per criterion, in order.'
    )


def parse_criteria(raw: str, count: int) -> list[tuple[bool, str]]:
    """``(met, reason)`` per criterion from the judge's reply; ValueError unless it answers every criterion
    exactly once with a boolean (never guessed)."""
    try:
        data = json.loads(raw.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip())
    except ValueError:
        raise ValueError("the reply is not a JSON object") from None
    entries = data.get("criteria") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the reply has no 'criteria' list")
    found: dict[int, tuple[bool, str]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("a 'criteria' entry is not an object")
        number, met = entry.get("number"), entry.get("met")
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= count:
            raise ValueError(f"a criterion number {number!r} is not between 1 and {count}")
        if not isinstance(met, bool):
            raise ValueError(f"criterion {number}: 'met' is {met!r}, not true or false")
        if number in found:
            raise ValueError(f"criterion {number} is answered twice")
        found[number] = (met, str(entry.get("reason") or ""))
    missing = [n for n in range(1, count + 1) if n not in found]
    if missing:
        raise ValueError(f"criteria {', '.join(map(str, missing))} are not answered")
    return [found[n] for n in range(1, count + 1)]


class CriteriaMetric(LLMMetric):
    """``criteria``: one judge call returns met / not met and a reason for each of the scenario's ``criteria``;
    passes when every criterion is met (or at least ``min_share`` of them). ``score``: the share met."""

    name = "criteria"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        unknown = sorted(set(self.options) - {"min_share"})
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))}; criteria takes min_share")
        share = self.options.get("min_share", 1.0)
        if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share <= 1:
            raise ValueError(f"min_share must be a number from 0 to 1 (got {share!r})")
        self.min_share = float(share)

    def check(self, scenario: Scenario) -> None:
        if not scenario.criteria:
            raise ValueError("it checks the scenario's 'criteria', and this scenario lists none; add 'criteria' "
                             "(a list of what the agent must do) or remove the metric")

    async def evaluate(self, conversation: Conversation, scenario: Scenario) -> MetricResult:
        assert conversation.transcript is not None
        if not scenario.criteria:
            raise ConfigError(f"{self._label}: the metric 'criteria' needs the scenario's 'criteria' list")
        refusal = no_agent_reply_error(conversation.transcript, scenario, self._settings, label=self._label)
        if refusal is not None:
            raise refusal
        language = scenario.language or self._settings.language
        messages = [{"role": "system", "content": criteria_prompt(scenario, conversation.transcript, language)},
                    {"role": "user", "content": "Return the verdicts as JSON now."}]
        problems: list[str] = []
        raw = ""
        for attempt in range(self._settings.judge_attempts):
            reply = await self.ask(messages, json_schema=CRITERIA_SCHEMA, attempt=attempt)
            raw = reply.text
            try:
                verdicts = parse_criteria(raw, len(scenario.criteria))
            except ValueError as exc:
                problems.append(str(exc))
                continue
            met = sum(1 for ok, _ in verdicts if ok)
            share = met / len(verdicts)
            failed = [f"{criterion!r} not met: {reason}" if reason else f"{criterion!r} not met"
                      for criterion, (ok, reason) in zip(scenario.criteria, verdicts, strict=True) if not ok]
            details = {"criteria": [{"criterion": criterion, "met": ok, "reason": reason}
                                    for criterion, (ok, reason) in zip(scenario.criteria, verdicts, strict=True)],
                       "min_share": self.min_share}
            return MetricResult("criteria", round(share, 4), share >= self.min_share - 1e-9,
                                "; ".join(failed) or f"all {len(verdicts)} criteria met", details)
        raise VerdictError(f"{self._label}: the criteria verdict is not valid after {self._settings.judge_attempts} "
                           f"attempt(s): {problems[-1]}", raw_reply=raw)
