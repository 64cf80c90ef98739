"""The evaluator: a judge LLM scores a transcript 1-3 with a comment.

Why one module: it is everything between a transcript and a verdict (the judge methods' prompts, the strict parser,
the blame check, the repeats' policy and the two judge metrics); the parser must accept exactly what the methods ask
for and nothing more, and that agreement, where a false pass would hide, is kept readable in one place.

The verdict is requested as structured output (see ``client.STRUCTURED_MODES``). Whatever comes back is
parsed strictly by ``parse_verdict``, which never guesses: a JSON object with ``score`` and ``comment``
decides when nothing around it names another score; otherwise an explicit ``Score: N`` line does; a score
mentioned in prose never does, and several different candidate scores make the reply invalid. The comment must
be a reason (not junk: a piece of JSON, key names, the prompt's own text, under 3 words), and the blame must not
contradict the score (``blame_contradiction``). An invalid verdict is re-requested with a new attempt index (a
new cache key and seed); if every attempt fails the result is a ``VerdictError`` carrying the raw reply, never
a made-up score.

A conversation in which the agent never said anything is not judged at all (``NoAgentReplyError``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pytest_llmsim.engine.conversation import no_agent_reply_error
from pytest_llmsim.errors import ConfigError, EndpointError, PromptError, VerdictError
from pytest_llmsim.llm.client import Completer, LLMRequest
from pytest_llmsim.metrics.api import Conversation, LLMMetric, MetricResult
from pytest_llmsim.model.prompts import PromptRenderer, template_context
from pytest_llmsim.model.scenario import Scenario
from pytest_llmsim.model.settings import RunSettings
from pytest_llmsim.model.transcript import Transcript

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

# How the judge turns a transcript into a score (``llmsim_judge_method``; ``resolve_method``):
# * ``verdict``: the evaluator template's 1-3 verdict, a JSON object with score, comment and blame
#   (``VERDICT_SCHEMA``), parsed strictly by ``parse_verdict``;
# * ``constrained``: the same verdict under a grammar that rules out most invalid ones
#   (``CONSTRAINED_VERDICT_SCHEMA``: a blame that fits the score, a comment of 20-120 characters that starts with
#   a letter and holds no JSON); for servers that turn a JSON schema into a grammar (llama.cpp, vLLM, Ollama);
# * ``criteria``: each of the scenario's ``criteria`` asked as a yes/no question with the transcript, answered in
#   one word (a JSON-constrained answer made SmolLM2 say yes to everything: 100% false passes on the dev half);
#   score 3 when every answer is yes, 2 when one is no, 1 otherwise
#   (``criteria_rule``); a scenario without criteria gets the holistic verdict (``constrained`` on the local
#   model, else ``verdict``);
# * ``score``: the evaluator template's prompt, the reply constrained to {"score": 1 | 2 | 3} and nothing else:
#   the score never comes from free text and no reason is asked for (the comment says so);
# * ``logprobs`` (G-Eval style): the evaluator template's prompt, the reply constrained to {"score": 1 | 2 | 3}
#   with the tokens' log probabilities asked for; the score comes from the probabilities of "1", "2" and "3" at
#   the score's token (``score_probabilities``, ``logprob_score``), never from the text; an endpoint that sends no
#   log probabilities is a ConfigError naming the method and the endpoint, never a guessed score;
# * ``auto`` (the default): ``logprobs`` for the bundled local backend's model on llama.cpp's own server
#   (``xllamacpp``, the default engine: held out, 16 of 48 and no false pass against 14 and 15 of 16 for
#   ``criteria``); on llama-cpp-python's server, which sends no log probabilities, ``criteria`` (``score`` for a
#   scenario without criteria: under ``constrained`` SmolLM2 still copied a line of the transcript as its
#   comment, an invalid verdict, in 1 of the sample suite's 8 conversations); ``verdict`` for an endpoint.
# * ``criteria_logprobs``: the ``criteria`` questions, each scored by p(yes) from the probabilities of the answer
#   token (``yes_probability``) rather than the word written; the expected score 1 + 2 * mean p(yes) is cut like
#   ``logprobs``'s (``logprob_score``). Needs log probabilities, as ``logprobs`` does.
JUDGE_METHODS = ("auto", "verdict", "constrained", "criteria", "score", "logprobs", "criteria_logprobs")
CRITERIA_METHODS = ("criteria", "criteria_logprobs")
_COMMENT_CHARS = (20, 120)
_COMMENT_LETTERS = "A-Za-zА-Яа-яЁё"
_CONSTRAINED_COMMENT: dict[str, Any] = {
    "type": "string",
    # 20-120 characters: a letter (Latin or Cyrillic), then letters, digits, blanks and plain punctuation. No
    # colon (SmolLM2 wrote "blame: agent. ..." in 7 of its 11 invalid verdicts on the dev half), no braces,
    # quotes, backslashes or line breaks, so no piece of JSON and nothing a grammar must escape
    # (llama-cpp-python's converter copies an escaped line break in a character class into the grammar raw;
    # llama.cpp then fails to parse the grammar and its server process dies). A pattern, because llama.cpp's
    # converter ignores minLength/maxLength beside one.
    "pattern": (f"^[{_COMMENT_LETTERS}][{_COMMENT_LETTERS}0-9 .,;!?'()%/+-]"
                f"{{{_COMMENT_CHARS[0] - 1},{_COMMENT_CHARS[1] - 1}}}$"),
}
CONSTRAINED_VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    # The top score never blames the agent, a failing one never says nothing went wrong (``blame_contradiction``
    # for any min_score): the grammar offers only blames that fit the score chosen.
    "anyOf": [
        {"properties": {"score": {"type": "integer", "enum": [3]}, "comment": _CONSTRAINED_COMMENT,
                        "blame": {"type": "string", "enum": ["none", "customer", "cut_short"]}},
         "required": ["score", "comment", "blame"]},
        {"properties": {"score": {"type": "integer", "enum": [1, 2]}, "comment": _CONSTRAINED_COMMENT,
                        "blame": {"type": "string", "enum": ["agent", "customer", "cut_short"]}},
         "required": ["score", "comment", "blame"]},
    ],
}


SCORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"score": {"type": "integer", "enum": [1, 2, 3]}},
    "required": ["score"],
    "additionalProperties": False,
}


DIGIT_SCHEMA: dict[str, Any] = {"type": "integer", "enum": [1, 2, 3]}


def _score_only(raw: str, cached: bool, prompt_tokens: int, completion_tokens: int, attempts: int) -> Verdict:
    """The ``score`` method's verdict from a ``{"score": N}`` reply; ValueError for anything else."""
    try:
        data = json.loads(raw.strip())
    except ValueError:
        raise ValueError(f"the reply {raw[:80]!r} is not a JSON object") from None
    score = _coerce_score(data.get("score")) if isinstance(data, dict) else None
    if score is None:
        raise ValueError(f"the reply {raw[:80]!r} has no 'score' of 1, 2 or 3")
    comment = f"Score {score}, answered alone under a grammar (judge method 'score' asks for no reason)."
    return Verdict(score, comment, raw, prompt_tokens, completion_tokens, cached, attempts, None, "score")


# The ``logprobs`` method: how many alternatives per token it asks for (OpenAI's maximum), and how the expected
# score E = 1 p(1) + 2 p(2) + 3 p(3) becomes a score: 1 below the first threshold, 3 from the second on, else 2.
LOGPROB_ALTERNATIVES = 20
LOGPROB_THRESHOLDS = (1.5, 2.5)
# Above this a "log probability" is not one (servers round; 0.0 is a certainty)
_MAX_LOGPROB = 1e-3
_SCORE_DIGITS = ("1", "2", "3")
_LOGPROBS_HINT = ("use an endpoint that returns them (llama.cpp's server, the local model's default engine; vLLM; "
                  "OpenAI's chat models) or another llmsim_judge_method")


@dataclass(frozen=True)
class ScoreProbabilities:
    """What the ``logprobs`` judge read at the score's token: the probability of each score among the three
    (normalised), and ``mass``, the share of the whole distribution the three digits held there."""

    p: dict[int, float]
    mass: float
    token: str  # the token the judge wrote there

    @property
    def expected(self) -> float:
        return sum(score * share for score, share in self.p.items())

    def to_dict(self) -> dict[str, Any]:
        return {"p": {str(k): round(v, 4) for k, v in sorted(self.p.items())}, "mass": round(self.mass, 4),
                "expected": round(self.expected, 4), "token": self.token}


def _probability(alternative: dict[str, Any]) -> float:
    """The probability of one alternative token; ValueError for a "log probability" above 0 (or NaN): +inf would
    make every probability NaN (a score of 2), a positive value a probability above 1."""
    logprob = float(alternative["logprob"])
    if not logprob <= _MAX_LOGPROB:
        raise ValueError(f"the endpoint sent {logprob:g} as the log probability of {alternative['token']!r}: a log "
                         "probability is at most 0; the endpoint's logprobs cannot be trusted")
    return math.exp(logprob)


_Side = TypeVar("_Side")


def _mass_by(position: dict[str, Any], side_of: Callable[[str], _Side | None]) -> dict[_Side, float]:
    """The probability at one generated position of each side its alternatives fall on (``side_of`` a token, None:
    neither), the chosen token included and every token counted once (it is usually among the alternatives too)."""
    found: dict[_Side, float] = {}
    seen: set[str] = set()
    for alternative in [*position.get("top_logprobs", []), {"token": position["token"],
                                                             "logprob": position["logprob"]}]:
        token = alternative["token"]
        side = side_of(token)
        if side is not None and token not in seen:
            seen.add(token)
            found[side] = found.get(side, 0.0) + _probability(alternative)
    return found


def score_probabilities(logprobs: list[dict[str, Any]]) -> ScoreProbabilities:
    """The score's probabilities from a reply's per-token log probabilities (``client.read_logprobs``): at the
    first generated token that is a score digit ("3" or " 3"), the alternatives that are "1", "2" or "3" (blanks
    around them merged), normalised to sum to 1. ValueError when no generated token is a score digit or the
    digits hold no probability there (never guessed)."""
    for position in logprobs:
        if position["token"].strip() not in _SCORE_DIGITS:
            continue
        found = _mass_by(position, lambda token: int(token.strip()) if token.strip() in _SCORE_DIGITS else None)
        mass = sum(found.values())
        if mass <= 0:
            raise ValueError(f"the score token {position['token']!r} has no probability on 1, 2 or 3")
        return ScoreProbabilities({k: found.get(k, 0.0) / mass for k in (1, 2, 3)}, min(mass, 1.0),
                                  position["token"])
    shown = "".join(position["token"] for position in logprobs)[:80]
    raise ValueError(f"no generated token is a score 1, 2 or 3 (the reply's tokens: {shown!r})")


def logprob_score(probabilities: ScoreProbabilities,
                  thresholds: tuple[float, float] = LOGPROB_THRESHOLDS) -> int:
    """1, 2 or 3 from the expected score: 1 below ``thresholds[0]``, 3 at ``thresholds[1]`` or above, else 2."""
    expected = probabilities.expected
    return 1 if expected < thresholds[0] else 3 if expected >= thresholds[1] else 2


def _logprob_verdict(raw: str, logprobs: list[dict[str, Any]], cached: bool, prompt_tokens: int,
                     completion_tokens: int, attempts: int,
                     thresholds: tuple[float, float] = LOGPROB_THRESHOLDS) -> Verdict:
    """The ``logprobs`` method's verdict from one reply, cut at ``thresholds``; ValueError when its tokens hold no
    score."""
    probabilities = score_probabilities(logprobs)
    score = logprob_score(probabilities, thresholds)
    p = probabilities.p
    comment = (f"Score {score} from the judge's token probabilities: p(1)={p[1]:.3f}, p(2)={p[2]:.3f}, "
               f"p(3)={p[3]:.3f}, expected score {probabilities.expected:.3f} (1 below "
               f"{thresholds[0]:g}, 3 from {thresholds[1]:g}); judge method 'logprobs' asks for no "
               "reason.")
    return Verdict(score, comment, raw, prompt_tokens, completion_tokens, cached, attempts, None, "logprobs",
                   probabilities.to_dict())


def resolve_method(method: str, model: str, local_engine: str | None = None) -> str:
    """The judging method a run uses for the evaluator ``model``: ``auto`` is ``logprobs`` for the bundled local
    backend's model when its server is llama.cpp's own (``local_engine`` "xllamacpp", which sends log
    probabilities; held out it agreed on 16 of 48 and passed none of the 16 bad conversations, against 14 and 15
    of 16 for ``criteria``), ``criteria`` for that model on any other engine or served as an endpoint, and
    ``verdict`` for any other model."""
    if method not in JUDGE_METHODS:
        raise ConfigError(f"llmsim_judge_method must be one of {', '.join(JUDGE_METHODS)} (got {method!r})")
    if method != "auto":
        return method
    from pytest_llmsim.llm.local_model import LOCAL_MODEL_NAME, XLLAMACPP

    if model != LOCAL_MODEL_NAME:
        return "verdict"
    return "logprobs" if local_engine == XLLAMACPP else "criteria"


def criteria_rule(answers: list[bool]) -> int:
    """The score of the ``criteria`` method from the yes/no answers: 3 when all are yes, 2 when exactly one is no,
    1 when two or more are no."""
    missed = answers.count(False)
    return 3 if missed == 0 else 2 if missed == 1 else 1


def criterion_messages(scenario: Scenario, transcript: Transcript, criterion: str) -> tuple[dict[str, str], ...]:
    """One yes/no question of the ``criteria`` method: the transcript first (the same for every criterion of a
    conversation, so a server's prompt cache evaluates it once), the criterion last."""
    context = ("You check a conversation between a customer and an AI assistant (the AGENT). Judge only the AGENT. "
               "Text in square brackets before an agent's line is a tool call the agent made and what it "
               f"returned.\nHow the conversation ended: {transcript.end_reason}.\n\nTranscript:\n"
               f"{transcript.as_text()}")
    question = f"Did the AGENT do this: {criterion}\nAnswer with one word: yes or no."
    return ({"role": "system", "content": context}, {"role": "user", "content": question})


_ANSWER_RE = re.compile(r"[\s*_`\"']*(yes|no|да|нет)(?![^\W_])", re.IGNORECASE)


_YES, _NO = ("yes", "да"), ("no", "нет")


def yes_probability(logprobs: list[dict[str, Any]]) -> float:
    """p(yes) among yes and no at the answer's first word token (the first generated token with a letter): the
    alternatives there that begin "yes"/"да" against those that begin "no"/"нет" (a token that is a start of one of
    them, "Y" or "Д", counts for it; case and blanks ignored), whatever word was written there (SmolLM2 wrote "The"
    in 3 of 192 answers on the dev half, with yes and no among the alternatives). ValueError when yes and no hold
    no probability there (never guessed)."""
    for position in logprobs:
        if not any(ch.isalpha() for ch in position["token"]):
            continue
        found = _mass_by(position, _yes_or_no)
        total = found.get(True, 0.0) + found.get(False, 0.0)
        if total <= 0:
            raise ValueError(f"the answer token {position['token']!r} has no probability on yes or no")
        return found.get(True, 0.0) / total
    raise ValueError("no generated token is a word")


def _yes_or_no(token: str) -> bool | None:
    """True for a token that is (a start of) yes/да, False for no/нет; case, blanks and emphasis ignored."""
    word = token.strip().strip("*_`\"'").lower()
    if not word:
        return None
    return True if any(w.startswith(word) for w in _YES) else False if any(w.startswith(word) for w in _NO) else None


def parse_answer(raw: str) -> bool:
    """True for yes, False for no: the reply's first word ("Yes.", "no", "**No**, ...", "Да"); ValueError for
    anything else (never guessed)."""
    match = _ANSWER_RE.match(raw)
    if match is None:
        raise ValueError(f"the reply {raw[:80]!r} does not start with yes or no")
    return match.group(1).lower() in ("yes", "да")

# A label name may be wrapped in markdown emphasis or quotes: **Score:** 2, **Score**: 2, "score": 2.
_LABEL_WRAP = r"[*_`\"' \t]*"
# Labels that give a score: ``Score:`` decides; the others (Final: 1, Rating: 2, Оценка: 2, ...) never decide but
# must agree with it when they carry a number.
_LABEL_RE = re.compile(rf"(?<!\w)(score|final|rating|grade|verdict|оценка|баллы?|итог)(?!\w){_LABEL_WRAP}:",
                       re.IGNORECASE)
_COMMENT_LABEL_RE = re.compile(rf"\bcomments?\b{_LABEL_WRAP}:", re.IGNORECASE)
_BLAME_NAME_RE = re.compile(rf"\bblame\b{_LABEL_WRAP}:", re.IGNORECASE)
# What may precede a label on its line for it to count as starting the line: blanks, bullets, headings,
# quote marks, emphasis.
_LINE_START_RE = re.compile(r"[\s>#*_`\"'\-•]*")
# What may precede a label in its line for it to start a sentence: "... was slow. Score: 1".
_SENTENCE_END_RE = re.compile(r"[.!?]\s+[*_`\"'\-•]*\Z")
# A quotation within one line: a label inside one (the customer's "Score: 3, please") is not the judge's.
_QUOTE_RE = re.compile(r"\"[^\"\n]*\"|“[^”\n]*”|«[^»\n]*»|„[^“”\n]*[“”]")
# A score value: "2", "**2**", "2.", "2/3", "2 out of 3". The number is checked afterwards.
_VALUE_RE = re.compile(r"[\s*_`\"']*(\d+(?:\.\d+)?)(?:\s*(?:/|out of|of)\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_BLAME_LABEL_RE = re.compile(rf"\bblame\b{_LABEL_WRAP}:{_LABEL_WRAP}([a-z_]+)", re.IGNORECASE)
_MAX_JSON_STARTS = 200  # bound the scan of a long reply full of braces

# A score named in any form in prose: a number near a word that makes it one ("a score of 3", "rate the call 1",
# "Final: 1", "Оценка: 2", "2 балла", "I'd give it 1"), or a fraction ("1 out of 3", "2/3").
_SCORE_WORD_RE = re.compile(
    r"scor\w*|rat(?:e|es|ed|ing|ings)|grad(?:e|es|ed|ing)|marks?|points?|stars?|final\w*|verdicts?|deserv\w*"
    r"|earn\w*|merit\w*|award\w*|assign\w*|giv(?:e|es|en|ing)|gave"
    r"|оцен\w*|балл\w*|очк\w*|звезд\w*|ставл\w*|постав\w*|итог\w*",
    re.IGNORECASE,
)
_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "один": 1, "одна": 1, "одну": 1, "единица": 1, "единицу": 1,
                 "два": 2, "две": 2, "двойка": 2, "двойку": 2, "три": 3, "тройка": 3, "тройку": 3}
_TOKEN_RE = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+|[.!?;\n]")
_FRACTION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:/|\bout\s+of\b|\bиз\b)\s*\d+(?:\.\d+)?", re.IGNORECASE)
_SCALE_RE = re.compile(r"\b1\s*(?:-|–|—|\bto\b|\bдо\b)\s*3\b", re.IGNORECASE)  # "from 1 to 3" names no score

# What a comment must not be (a verdict needs a reason): a piece of the JSON around it (the model broke out of
# the string: 'polite" ,"blame":"agent"}'), another verdict field ("blame: agent"), key names only ("judge:
# blame"), fewer than MIN_COMMENT_WORDS words, or text copied from the evaluator prompt.
MIN_COMMENT_WORDS = 3
_JSON_FRAGMENT_RE = re.compile(r"\"\s*,\s*\"\w+\"\s*:|\"\s*}\s*\Z|\A\s*{")
_FIELD_LABEL_RE = re.compile(r"(?<![\w\"'])(?:score|comment|blame)\s*:", re.IGNORECASE)
_KEY_WORDS = frozenset({"score", "comment", "comments", "blame", "judge", "verdict", "reason", "agent", "customer",
                        "cut", "short", "none", "json", "key", "keys", "object", "null", "true", "false"})
# A word: a run of letters, or one character of a script written without spaces (Chinese, Japanese).
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD_RE = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+")
_SCALE_LINE_RE = re.compile(r"^[\s*\-•]*([123])\s*[=:\-–—.)]\s*(.+)$", re.MULTILINE)  # "3 = polite and clear; ..."


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
    method: str = "verdict"  # the judging method that gave it (``JUDGE_METHODS``, never "auto")
    probabilities: dict[str, Any] | None = None  # the ``logprobs`` method's (``ScoreProbabilities.to_dict``)


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
    sentence_start: bool  # the label opens its line or a sentence ("... was slow. Score: 1")
    quoted: bool  # inside a quotation ('"Score: 3, please," the customer wrote') or a "> " quoted line
    name: str  # "score", "final", "оценка", ...
    text: str  # the label's line from the label on, for messages

    @property
    def decides(self) -> bool:
        return self.name == "score"


def _quotations(text: str) -> list[tuple[int, int]]:
    return [match.span() for match in _QUOTE_RE.finditer(text)]


def _verdict_labels(text: str) -> list[_Label]:
    """Every score label (``Score:``, ``Final:``, ``Оценка:``, ...), noting where it stands."""
    labels = []
    quotations = _quotations(text)
    for match in _LABEL_RE.finditer(text):
        line_begin = text.rfind("\n", 0, match.start()) + 1
        line_end = text.find("\n", match.start())
        shown = text[match.start():len(text) if line_end == -1 else line_end].strip()[:80]
        line_start = _LINE_START_RE.fullmatch(text, line_begin, match.start()) is not None
        before = text[line_begin:match.start()]
        key_style = re.search(r"[{,]\s*[\"']\Z", before) is not None  # "score": 2 in JSON-like text
        sentence_start = line_start or key_style or _SENTENCE_END_RE.search(before) is not None
        # Quoted: the quotation goes on past the label's colon (a key like "score": ends before it).
        quoted = (text[line_begin:].lstrip().startswith(">")
                  or any(begin < match.start() < end and end > match.end() for begin, end in quotations))
        labels.append(_Label(match.start(), match.end(), line_start, sentence_start, quoted,
                             match.group(1).lower(), shown))
    return labels


def _label_score(text: str, label: _Label) -> tuple[int | None, str | None]:
    """(score or None, the value as written, None when no number follows the label)."""
    match = _VALUE_RE.match(text, label.value_start)
    if match is None:
        return None, None
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


def _score_mentions(text: str) -> list[tuple[float, str]]:
    """Every score ``text`` names, in any form, as (value, the words naming it): "a score of 3", "I rate the
    call 1", "Final: 1", "Оценка: 2", "2 балла", "1 out of 3", "2/3". A number is a score when a score word
    stands up to four words before it or two after it in the same sentence; a fraction always is."""
    found = [(float(match.group(1)), match.group(0)) for match in _FRACTION_RE.finditer(text)]
    rest = _SCALE_RE.sub(lambda m: " " * len(m.group(0)), text)
    rest = _FRACTION_RE.sub(lambda m: " " * len(m.group(0)), rest)
    tokens = list(_TOKEN_RE.finditer(rest))
    for i, token in enumerate(tokens):
        word = token.group(0)
        if word[0].isdigit():
            value, before, after = float(word), 4, 2
        elif word.lower() in _NUMBER_WORDS:
            value, before, after = float(_NUMBER_WORDS[word.lower()]), 3, 0
        else:
            continue
        near = []
        for j in range(i - 1, max(-1, i - 1 - before), -1):
            if tokens[j].group(0) in ".!?;\n":
                break
            near.append(tokens[j])
        for j in range(i + 1, min(len(tokens), i + 1 + after)):
            if tokens[j].group(0) in ".!?;\n":
                break
            near.append(tokens[j])
        words = [t for t in near if _SCORE_WORD_RE.fullmatch(t.group(0))]
        if words:  # shown from the nearest score word to the number: "rate the call 1", "3 points"
            nearest = min(words, key=lambda t: abs(t.start() - token.start()))
            begin, end = min(nearest.start(), token.start()), max(nearest.end(), token.end())
            found.append((value, " ".join(text[begin:end].split())))
    return found


def _comment_problem(comment: str, field: str, score: int, prompt: str | None) -> str | None:
    """Why ``comment`` (``field`` names it when empty) is no reason for a verdict of ``score``, or None when it
    is one."""
    if not _has_words(comment):
        return f"{field} is missing or empty (got {comment!r}); a verdict needs a reason"
    fragment = _JSON_FRAGMENT_RE.search(comment)
    if fragment:
        return (f"the comment {comment!r} holds a piece of the JSON around it ({fragment.group(0).strip()!r}): the "
                "reply is garbled, not a reason")
    label = _FIELD_LABEL_RE.search(comment)
    if label:
        return f"the comment {comment!r} holds another verdict field ({label.group(0)!r}), not a reason"
    words = _WORD_RE.findall(comment)
    if all(word.lower() in _KEY_WORDS for word in words):
        return f"the comment {comment!r} is only key names, not a reason"
    if len(words) < MIN_COMMENT_WORDS:
        return (f"the comment {comment!r} has {len(words)} word(s); a verdict needs a reason of at least "
                f"{MIN_COMMENT_WORDS} words")
    if prompt is not None:
        said = f" {_normalized(comment)} "
        if said in f" {_normalized(prompt)} ":
            # The scale's own words for the score given ("3 = every criterion is met") are its reason; any other
            # copy (the instructions, another score's line, a criterion) says nothing about this conversation.
            rubric = [f" {_normalized(match.group(2))} " for match in _SCALE_LINE_RE.finditer(prompt)
                      if int(match.group(1)) == score]
            if not any(said in line for line in rubric):
                return f"the comment {comment!r} copies the evaluator prompt's own text, not a reason"
    return None


def _normalized(text: str) -> str:
    """``text`` as lower-case words separated by single blanks: punctuation and quotes do not hide a copy."""
    return " ".join(re.findall(r"\w+", text.lower()))


def _json_verdict(text: str, found: _JsonFound, candidates: list[dict[str, Any]],
                  prompt: str | None) -> tuple[int, str]:
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
    for candidate in candidates:  # {"score": 3, "comment": "...", "final": 1}
        for key, value in candidate.items():
            if (key not in ("score", "comment", "blame") and _SCORE_WORD_RE.fullmatch(key)
                    and not isinstance(value, bool) and isinstance(value, int | float) and value != scores[0]):
                raise ValueError(f"the JSON verdict says score {scores[0]} but its {key!r} says {value!r}; not "
                                 "guessing which one is meant")
    # The text around the verdict (other JSON included) must not name another score in any form: a quoted
    # transcript, a negated or hypothetical score, an injected verdict the judge then contradicts.
    rest = _masked(text, [span for obj, span in zip(found.objects, found.spans, strict=True)
                          if _verdict_dicts(obj)])
    for label in _verdict_labels(rest):
        other, written = _label_score(rest, label)
        if written is not None and other != scores[0]:
            raise ValueError(f"the JSON verdict says score {scores[0]} but the text around it says "
                             f"{label.text!r} ({written}); not guessing which one is meant")
    for value, shown in _score_mentions(rest):
        if value != scores[0]:
            raise ValueError(f"the JSON verdict says score {scores[0]} but the text around it names another "
                             f"score ({shown!r}); not guessing which one is meant")
    comment = candidates[0].get("comment")
    if not isinstance(comment, str):
        raise ValueError(f"'comment' is missing or empty (got {comment!r}); a verdict needs a reason")
    problem = _comment_problem(comment.strip(), "'comment'", scores[0], prompt)
    if problem:
        raise ValueError(problem)
    return scores[0], comment.strip()


def _text_comment(text: str, labels: list[_Label]) -> str | None:
    """The text after the first ``Comment:`` label, up to the next score label or ``Blame:`` line, or the end."""
    match = _COMMENT_LABEL_RE.search(text)
    if match is None:
        return None
    ends = [label.start for label in labels if label.start > match.end()]
    ends += [blame.start() for blame in _BLAME_NAME_RE.finditer(text, match.end())
             if _LINE_START_RE.fullmatch(text, text.rfind("\n", 0, blame.start()) + 1, blame.start())]
    comment = text[match.end():min(ends) if ends else len(text)]
    return comment.strip().strip("*_`\"'").strip()


def _text_verdict(text: str, prompt: str | None) -> tuple[int, str]:
    found = _verdict_labels(text)
    labels = []  # the judge's own labels that carry a value: a Score: label always, others with a number
    for label in found:
        if not label.quoted and (label.decides or _label_score(text, label)[1] is not None):
            labels.append(label)
    if not labels:
        problem = "no JSON object with 'score' and 'comment' and no 'Score: N' / 'Comment: ...' lines"
        quoted = [label for label in found if label.quoted]
        mentions = _score_mentions(text)
        if quoted:
            problem += f"; {quoted[0].text!r} is quoted, not the judge's verdict"
        elif mentions:
            problem += (f"; {mentions[0][1]!r} in prose is not a verdict (it may be quoted, negated, reported or "
                        "hypothetical); not guessing")
        raise ValueError(problem)
    deciding = [label for label in labels if label.line_start]
    if not deciding:
        if not any(label.sentence_start for label in labels):
            raise ValueError(f"a score label inside a sentence is not a verdict line: {labels[0].text!r} (it may "
                             "be quoted, negated or reported); a verdict needs a 'Score: N' line")
        deciding = labels
    if not any(label.decides for label in deciding):
        raise ValueError(f"no 'Score: N' line, only {deciding[0].text!r}; not guessing that it is the verdict")
    values = [_label_score(text, label) for label in deciding]
    bad = [label.text for label, (score, _) in zip(deciding, values, strict=True) if score is None]
    if bad:
        raise ValueError(f"a 'Score:' label without a score 1, 2 or 3: {bad[0]!r}")
    if len({score for score, _ in values}) > 1:
        written = [str(shown) if label.decides else f"{label.text.split(':')[0]}: {shown}"
                   for label, (_, shown) in zip(deciding, values, strict=True)]
        raise ValueError(f"'Score:' labels disagree: {_show(written)}; not guessing which one is the verdict")
    score = values[0][0]
    assert score is not None
    comment = _text_comment(text, labels)
    if comment is None:
        raise ValueError(f"found score {score} but no 'Comment: ...' line; a verdict needs a reason")
    if not _has_words(comment):
        raise ValueError(f"the 'Comment:' line is empty (got {comment!r}); a verdict needs a reason")
    junk = _comment_problem(comment, "the comment", score, prompt)
    if junk:
        raise ValueError(junk)
    return score, comment


def parse_verdict(text: str, *, prompt: str | None = None) -> tuple[int, str]:
    """Return (score, comment) from a judge reply or raise ValueError saying what is wrong. Never guesses:
    an ambiguous reply is invalid.

    A JSON object with ``score`` and ``comment`` decides when every such object agrees and the text around it
    names no other score in any form (a ``Score:``/``Final:``/``Оценка:`` label, "a score of 1", "1 out of 3",
    "I rate it 1"). Otherwise ``Score: N`` labels decide: those opening a line if there are any, else those
    opening a sentence (with every label agreeing); a label inside a sentence or a quotation, and a score
    mentioned in prose ("I would not give it a score of 3", 'the customer said "score 3"'), never decides. Other
    score labels (``Final: 1``) must agree with it. The comment (the JSON's or the ``Comment:`` label's) must be
    a reason: at least ``MIN_COMMENT_WORDS`` words, not a piece of JSON, another field or key names, and not
    text copied from ``prompt`` (the evaluator prompt that was sent, when given).
    """
    found = _find_json_objects(text)
    candidates = [d for obj in found.objects for d in _verdict_dicts(obj)]
    if candidates or found.duplicate_scores:
        return _json_verdict(text, found, candidates, prompt)
    return _text_verdict(text, prompt)


def blame_contradiction(score: int, blame: str | None, min_score: int) -> str | None:
    """Why a verdict's ``blame`` contradicts its ``score`` (then the verdict can't be trusted), or None: the top
    score blaming the agent, or a failing score (below ``min_score``, or 1) saying nothing went wrong."""
    if blame == "agent" and score == 3:
        return ("score 3 (the top score, a pass) with blame 'agent' (the agent failed): the verdict contradicts "
                "itself; not guessing which half is meant")
    if blame == "none" and (score < min_score or score == 1):
        failing = f"below min_score {min_score}" if score < min_score else "the bottom of the scale"
        return (f"score {score} ({failing}) with blame 'none' (nothing went wrong): the verdict contradicts "
                "itself; not guessing which half is meant")
    return None


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
    if not scenario.criteria or resolve_method(settings.judge_method, settings.role("evaluator", scenario).model,
                                               settings.local_engine) in CRITERIA_METHODS:
        return  # the criteria method asks each criterion itself
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
    min_score: int | None = None,
) -> Verdict:
    """Judge ``transcript``; a transcript without a single non-empty agent turn is refused, not judged.
    ``repeat`` n > 0 is the n+1-th independent verdict of the same transcript (its own seed and cache key).
    ``min_score`` (default: the scenario's, else the run's) tells a failing score, for ``blame_contradiction``."""
    refusal = no_agent_reply_error(transcript, scenario, settings, label=label)
    if refusal is not None:
        raise refusal
    role = settings.role("evaluator", scenario)
    method = resolve_method(settings.judge_method, role.model, settings.local_engine)
    scenario_label = label
    seed = scenario.seed if scenario.seed is not None else settings.default_seed
    if repeat:
        from pytest_llmsim.model.trials import derive_seed

        seed = derive_seed(seed, repeat + 1, salt="judge")
        label = f"{label} judge repeat {repeat + 1}"
    if method in CRITERIA_METHODS:
        if scenario.criteria:
            return await _criteria_verdict(scenario, transcript, settings, client, seed=seed, label=label,
                                           by_probability=method == "criteria_logprobs")
        # Nothing to ask one by one: the holistic verdict (the score alone on the local model; by probability
        # for ``criteria_logprobs``).
        method = ("logprobs" if method == "criteria_logprobs" else
                  "score" if resolve_method("auto", role.model) == "criteria" else "verdict")
    context = template_context(scenario, settings, transcript=transcript.to_dicts(),
                               transcript_text=transcript.as_text(), ended_by=transcript.ended_by,
                               end_reason=transcript.end_reason)
    prompt = renderer.render(role.template, context, scenario_label=scenario_label)
    schema = {"constrained": CONSTRAINED_VERDICT_SCHEMA, "score": SCORE_SCHEMA,
              "logprobs": DIGIT_SCHEMA}.get(method, VERDICT_SCHEMA)
    minimum = min_score or scenario.min_score or settings.min_score
    ask = "Answer with the score alone: one digit, 1, 2 or 3." if method == "logprobs" else \
        "Return the verdict as JSON now."
    problems: list[str] = []
    raw = ""
    prompt_tokens = completion_tokens = 0
    for attempt in range(settings.judge_attempts):
        request = LLMRequest(
            role="evaluator", model=role.model,
            messages=({"role": "system", "content": prompt}, {"role": "user", "content": ask}),
            temperature=role.temperature, max_tokens=role.max_tokens, seed=seed,
            json_schema=schema, attempt=attempt,
            top_logprobs=LOGPROB_ALTERNATIVES if method == "logprobs" else None,
        )
        try:
            reply = await client.complete(request, label=f"{label} evaluator attempt {attempt + 1}")
        except EndpointError as exc:
            # llama-cpp-python's server without --logits_all answers HTTP 500 "logprobs is not supported ..."
            if method == "logprobs" and "logprob" in str(exc).lower():
                raise ConfigError(f"{label}: judge method 'logprobs' needs the tokens' log probabilities, and the "
                                  f"endpoint refused to send them: {exc}; {_LOGPROBS_HINT}") from None
            raise
        raw = reply.text
        prompt_tokens += reply.prompt_tokens
        completion_tokens += reply.completion_tokens
        if method == "logprobs" and reply.logprobs is None:
            raise ConfigError(
                f"{label}: judge method 'logprobs' needs the tokens' log probabilities, and "
                f"{settings.endpoint.describe()} sent none for the evaluator model {role.model!r} (asked with "
                f"logprobs=true, top_logprobs={LOGPROB_ALTERNATIVES}); {_LOGPROBS_HINT}")
        try:
            if method == "logprobs":
                assert reply.logprobs is not None
                return _logprob_verdict(raw, reply.logprobs, reply.cached, prompt_tokens, completion_tokens,
                                        attempt + 1, settings.logprob_thresholds or LOGPROB_THRESHOLDS)
            if method == "score":
                return _score_only(raw, reply.cached, prompt_tokens, completion_tokens, attempt + 1)
            score, comment = parse_verdict(raw, prompt=f"{prompt}\n{ask}")
            blame = parse_blame(raw)
            contradiction = blame_contradiction(score, blame, minimum)
            if contradiction is not None:
                raise ValueError(contradiction)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        return Verdict(score, comment, raw, prompt_tokens, completion_tokens, reply.cached, attempt + 1, blame,
                       method)
    raise VerdictError(
        f"{label}: the evaluator's reply is not a valid verdict after {settings.judge_attempts} attempt(s): "
        f"{problems[-1]}",
        raw_reply=raw,
    )


async def _criteria_verdict(scenario: Scenario, transcript: Transcript, settings: RunSettings, client: Completer,
                            *, seed: int | None, label: str, by_probability: bool = False) -> Verdict:
    """The ``criteria`` method: one yes/no question per criterion, scored by ``criteria_rule``; the comment names
    every criterion answered no. An answer that is not yes or no is re-asked (``judge_attempts``), then a
    VerdictError: never a guessed answer. ``by_probability`` (``criteria_logprobs``): each answer is p(yes) from
    the answer token's probabilities (``yes_probability``), and the score is the expected score 1 + 2 * mean
    p(yes) cut at the run's thresholds (``logprob_score``)."""
    role = settings.role("evaluator", scenario)
    criteria = list(scenario.criteria or ())
    answers: list[bool] = []
    p_yes: list[float] = []
    raws: list[str] = []
    prompt_tokens = completion_tokens = attempts = 0
    cached = True
    for number, criterion in enumerate(criteria, start=1):
        problems: list[str] = []
        raw = ""
        for attempt in range(settings.judge_attempts):
            request = LLMRequest(role="evaluator", model=role.model,
                                 messages=criterion_messages(scenario, transcript, criterion),
                                 temperature=role.temperature, max_tokens=min(role.max_tokens, 8), seed=seed,
                                 attempt=attempt, top_logprobs=LOGPROB_ALTERNATIVES if by_probability else None)
            reply = await client.complete(request, label=f"{label} evaluator criterion {number} attempt "
                                                         f"{attempt + 1}")
            raw = reply.text
            if by_probability and reply.logprobs is None:
                raise ConfigError(
                    f"{label}: judge method 'criteria_logprobs' needs the tokens' log probabilities, and "
                    f"{settings.endpoint.describe()} sent none for the evaluator model {role.model!r}; "
                    f"{_LOGPROBS_HINT}")
            prompt_tokens += reply.prompt_tokens
            completion_tokens += reply.completion_tokens
            cached = cached and reply.cached
            attempts = max(attempts, attempt + 1)
            try:
                if by_probability:
                    assert reply.logprobs is not None
                    p_yes.append(yes_probability(reply.logprobs))
                    answers.append(p_yes[-1] >= 0.5)
                else:
                    answers.append(parse_answer(raw))
            except ValueError as exc:
                problems.append(str(exc))
                continue
            raws.append(json.dumps({"criterion": number, "answer": "yes" if answers[-1] else "no"}
                                   | ({"p_yes": round(p_yes[-1], 4)} if by_probability else {})))
            break
        else:
            raise VerdictError(f"{label}: the evaluator's answer to criterion {number} ({criterion!r}) is not yes or "
                               f"no after {settings.judge_attempts} attempt(s): {problems[-1]}", raw_reply=raw)
    if by_probability:
        return _yes_probability_verdict(criteria, p_yes, raws, settings, prompt_tokens, completion_tokens, cached,
                                        attempts)
    score = criteria_rule(answers)
    missed = [f"{number}. {criterion}" for number, (criterion, met) in enumerate(zip(criteria, answers,
                                                                                       strict=True), start=1)
              if not met]
    comment = (f"All {len(criteria)} criteria answered yes." if not missed else
               f"{len(missed)} of {len(criteria)} criteria answered no: " + " ".join(missed))
    return Verdict(score, comment, "\n".join(raws), prompt_tokens, completion_tokens, cached, attempts,
                   "none" if not missed else "agent", "criteria")


def _yes_probability_verdict(criteria: list[str], p_yes: list[float], raws: list[str], settings: RunSettings,
                             prompt_tokens: int, completion_tokens: int, cached: bool, attempts: int) -> Verdict:
    """The ``criteria_logprobs`` verdict: expected score 1 + 2 * mean p(yes), cut at the run's thresholds."""
    thresholds = settings.logprob_thresholds or LOGPROB_THRESHOLDS
    expected = 1 + 2 * sum(p_yes) / len(p_yes)
    score = 1 if expected < thresholds[0] else 3 if expected >= thresholds[1] else 2
    shown = ", ".join(f"{number}. {p:.2f}" for number, p in enumerate(p_yes, start=1))
    comment = (f"Score {score} from p(yes) per criterion ({shown}): expected score {expected:.3f} (1 below "
               f"{thresholds[0]:g}, 3 from {thresholds[1]:g}); judge method 'criteria_logprobs' asks for no reason.")
    probabilities = {"p_yes": [round(p, 4) for p in p_yes], "expected": round(expected, 4),
                     "criteria": len(criteria)}
    return Verdict(score, comment, "\n".join(raws), prompt_tokens, completion_tokens, cached, attempts,
                   "none" if score == 3 else "agent", "criteria_logprobs", probabilities)


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
                     label=self._label, repeat=repeat, min_score=self.min_score(scenario))
            for repeat in range(repeats))))
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
        details["judge_method"] = verdict.method
        if verdict.probabilities is not None:
            details["probabilities"] = verdict.probabilities
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
