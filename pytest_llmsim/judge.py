"""The evaluator: a judge LLM scores a transcript 1-3 with a comment.

The verdict is requested as structured output (see ``client.STRUCTURED_MODES``); whatever comes back is
parsed tolerantly (code fences, text around a JSON object, ``score: 2`` lines). An unparsable verdict is
re-requested with a new attempt index (a new cache key and seed); if every attempt fails the result is a
``VerdictError`` carrying the raw reply, never a made-up score.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .client import Completer, LLMRequest
from .conversation import Transcript
from .errors import VerdictError
from .prompts import PromptRenderer
from .scenario import Scenario
from .settings import RunSettings

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "enum": [1, 2, 3]},
        "comment": {"type": "string"},
    },
    "required": ["score", "comment"],
    "additionalProperties": False,
}

_FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_SCORE_LINE_RE = re.compile(r"\bscore\b\W{0,5}([123])\b", re.IGNORECASE)
_COMMENT_LINE_RE = re.compile(r"\bcomment\b\W{0,5}(.+)", re.IGNORECASE | re.DOTALL)


@dataclass
class Verdict:
    score: int
    comment: str
    raw_reply: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    attempts: int


def _coerce_score(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and float(value).is_integer() and int(value) in (1, 2, 3):
        return int(value)
    if isinstance(value, str) and value.strip() in ("1", "2", "3"):
        return int(value.strip())
    return None


def _json_objects(text: str) -> list[Any]:
    candidates = [m.group(1) for m in _FENCE_RE.finditer(text)] + [text]
    found = []
    decoder = json.JSONDecoder()
    for candidate in candidates:
        for start in [i for i, ch in enumerate(candidate) if ch == "{"][:20]:
            try:
                obj, _ = decoder.raw_decode(candidate[start:])
            except json.JSONDecodeError:
                continue
            found.append(obj)
            break
    return found


def parse_verdict(text: str) -> tuple[int, str]:
    """Return (score, comment) from a judge reply or raise ValueError saying what is wrong."""
    for obj in _json_objects(text):
        if isinstance(obj, dict) and "score" in obj:
            score = _coerce_score(obj.get("score"))
            comment = obj.get("comment")
            if score is None:
                raise ValueError(f"'score' must be 1, 2 or 3, got {obj.get('score')!r}")
            if not isinstance(comment, str) or not comment.strip():
                raise ValueError("'comment' is missing or empty")
            return score, comment.strip()
    score_match = _SCORE_LINE_RE.search(text)
    comment_match = _COMMENT_LINE_RE.search(text)
    if score_match and comment_match and comment_match.group(1).strip():
        return int(score_match.group(1)), comment_match.group(1).strip().strip('"').strip()
    raise ValueError("no JSON object with 'score' and 'comment' and no 'score: N' / 'comment: ...' lines")


async def evaluate(
    scenario: Scenario,
    transcript: Transcript,
    settings: RunSettings,
    client: Completer,
    renderer: PromptRenderer,
    *,
    label: str,
) -> Verdict:
    role = settings.role("evaluator", scenario)
    context = {
        **scenario.variables,
        "scenario_name": scenario.name,
        "description": scenario.description or "",
        "language": settings.language,
        "transcript": transcript.to_dicts(),
        "transcript_text": transcript.as_text(),
        "ended_by": transcript.ended_by,
        "end_reason": transcript.end_reason,
    }
    prompt = renderer.render(role.template, context, scenario_label=label)
    seed = scenario.seed if scenario.seed is not None else settings.default_seed
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
        return Verdict(score, comment, raw, prompt_tokens, completion_tokens, reply.cached, attempt + 1)
    raise VerdictError(
        f"{label}: the evaluator's reply is not a valid verdict after {settings.judge_attempts} attempt(s): "
        f"{problems[-1]}",
        raw_reply=raw,
    )
