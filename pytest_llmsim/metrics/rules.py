"""Built-in deterministic metrics: ``rules`` (checks on the agent's turns, no LLM) and ``rouge`` (ROUGE F1
against a reference text), plus ``detect_language``, the cheap language detector ``rules`` uses (no pytest).

``rules`` options (at least one check)::

    contains / not_contains: a string or a list of strings (each must / must not appear in an agent turn)
    regex / not_regex: a pattern or a list of patterns (each must / must not match in an agent turn); matched by
                       the ``regex`` package with a time limit (REGEX_SECONDS per check): a pattern that
                       backtracks catastrophically errors, naming the scenario and the pattern
    case_sensitive: false (default) | true            (for the four text checks above)
    tool_called: a tool name, or a list of names and {name: ..., arguments: {subset that must match}}
    tool_order: true                                  (the tool_called entries, in that order)
    tool_match: subset (default) | in_order | any_order | exact
                 (``metrics.sequences``: every entry called | the entries in that order, others between |
                 exactly the entries' calls in any order | exactly the entries' calls in that order); arguments
                 always match by subset
    ended_by: client | agent | script | max_turns | timeout, or a list of them
    max_agent_turns / min_agent_turns: an int
    language: en | ru | uk | de | fr | es | it | pt   (every agent turn whose language can be told)

``rouge`` options: ``reference`` (text) or ``reference_file`` (a path, relative to ``base_dir`` or the working
directory), ``variant`` (``rouge1`` | ``rouge2`` | ``rougeL``, default ``rougeL``), ``target`` (``all``, the default:
every agent turn; ``last``: the last agent turn), ``threshold`` (0..1; without it the metric only informs).
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import regex  # re-compatible, with a time limit and the GIL released

from pytest_llmsim.errors import MetricError
from pytest_llmsim.metrics.api import Conversation, Metric, MetricResult
from pytest_llmsim.metrics.sequences import MATCH_MODES, first_mismatch
from pytest_llmsim.model.results import turn_tool_calls

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import Scenario

_SHOWN_CHARS = 80
ENDED_BY_VALUES = ("client", "agent", "script", "max_turns", "timeout")
ROUGE_VARIANTS = ("rouge1", "rouge2", "rougeL")
ROUGE_TARGETS = ("all", "last")
MAX_REFERENCE_BYTES = 10 * 1024 * 1024
# Time a regex/not_regex check may take over all agent turns: a pattern with catastrophic backtracking
# (``(a|aa)+$`` on a long run of a's) would otherwise run for hours holding the interpreter.
REGEX_SECONDS = 1.0


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text):,} characters)"


def _json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def _turns_text(numbers: Sequence[int]) -> str:
    """``agent turn 4`` / ``agent turns 2, 4``: turn numbers count every turn of the transcript, from 1."""
    if len(numbers) == 1:
        return f"agent turn {numbers[0]}"
    return "agent turns " + ", ".join(str(n) for n in numbers)


def _pattern(pattern: Any) -> str:
    """A regex as written, in quotes (``repr`` would double every backslash)."""
    text = pattern.pattern if len(pattern.pattern) <= _SHOWN_CHARS else pattern.pattern[: _SHOWN_CHARS - 1] + "…"
    return f"'{text}'"


def _or_list(values: Sequence[str]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + f" or {values[-1]}"


# -- language detection -------------------------------------------------------------------------------------------
SUPPORTED_LANGUAGES = ("en", "ru", "uk", "de", "fr", "es", "it", "pt")
MIN_WORDS = 3  # fewer words than this: too short to tell
MAX_CHARS = 20_000  # only the start of a longer text is read
MIN_EVIDENCE = 1.5  # the least score (function words, each split between the languages using it) to decide
_WORD_RE = re.compile(r"[^\W\d_]+")

_STOP_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset("""the and is are you your to of it that this for with have has had be was were will can not
        we i my our on at please thank thanks would could should what do does did from by an if or me as here there
        they so but all any yes been which how when who just about order help sure its t ll ve re m s yesterday
        today tomorrow now get got sorry let us cannot after unfortunately""".split()),
    "de": frozenset("""der die das und ist nicht ich sie es ein eine einen einem einer zu mit auf für von den dem
        des wir ihr ihre ihnen bitte danke sind haben habe hat wird wurde werden kann können auch noch nur wie was
        oder aber wenn bei ja nein mein meine dass sich im zum zur schon gerne hier ihren ihrem uns über gestern
        heute morgen jetzt natürlich gern sehr nach kein keine leider""".split()),
    "fr": frozenset("""le la les et est un une des du je vous nous il elle pas ne que qui pour avec dans sur
        votre vos mon ma au aux ce cette sont être avoir merci oui bien très mais ou où plus c j l d qu n s ai
        avez suis peux pouvez été aussi hier aujourd demain maintenant sûr bonjour après notre nos sans""".split()),
    "es": frozenset("""el los las y es un una de que en por para con su sus no lo del al se como pero más muy
        está están estoy usted yo gracias hola sí puede puedo ya también hay ser tiene tengo mi nos este esta
        esto eso cuando le fue ayer hoy mañana ahora claro después nuestro sin hasta""".split()),
    "it": frozenset("""il lo la i gli le e è di che un una per con non mi ti ci si del della delle dei al alla
        sono ho ha hai abbiamo grazie ciao anche ma come questo questa suo sua molto più posso può essere nel
        nella l sì stato stata ieri oggi domani adesso certo dopo purtroppo nostro senza""".split()),
    "pt": frozenset("""o os a as e é um uma de do da dos das que em no na nos nas para com não por se seu sua
        você eu ele ela obrigado obrigada olá sim mas mais muito está estou são tem pode posso ao à também isso
        isto este esta foi pelo pela ontem hoje amanhã agora claro depois nosso sem""".split()),
    "ru": frozenset("""и в не на что это я вы вас ваш ваша ваше вашего вашу как с по для мы он она они есть был
        была было будет можно пожалуйста спасибо да нет здравствуйте к о от за так но же уже только или если чтобы
        когда еще ещё очень мне вам его её их могу может можем конечно помочь сейчас сегодня вчера завтра здесь
        вот всё все этот эта эти хорошо после""".split()),
    "uk": frozenset("""і й в у не на що це я ви вас ваш ваша ваше вашого вашу як з по для ми він вона вони є
        був була було буде можна будь ласка дякую так ні вітаю до від за але вже тільки або якщо щоб коли ще дуже
        мені вам його її їх можу може можемо звичайно допомогти зараз сьогодні вчора завтра тут ось все всі цей
        ця ці добре після""".split()),
}
# Letters that only one of the candidate languages uses: each occurrence counts as one stop word.
_LETTERS: dict[str, str] = {
    "ru": "ыэъё", "uk": "іїєґ",
    "de": "ßäöü", "fr": "œêâîûëÿ", "es": "ñ¿¡", "pt": "ãõ", "it": "òì",
}
_CYRILLIC_LANGUAGES: tuple[str, ...] = ("ru", "uk")
_LATIN_LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "it", "pt")


def _script(word: str) -> str | None:
    scripts = set()
    for ch in word:
        name = unicodedata.name(ch, "")
        if name.startswith("CYRILLIC"):
            scripts.add("cyrillic")
        elif name.startswith("LATIN"):
            scripts.add("latin")
        else:
            return None
    return scripts.pop() if len(scripts) == 1 else None


def detect_language(text: str) -> str | None:
    """The language code of ``text`` (one of ``SUPPORTED_LANGUAGES``), or None when it is too short (fewer than
    three words), mixes scripts, or its words do not tell one language clearly from the others.

    Cheap and deterministic: the script (Cyrillic or Latin) by a two-thirds majority of words, then, among that
    script's languages, the counts of frequent function words and of letters only one language uses.
    """
    words = _WORD_RE.findall(text[:MAX_CHARS].lower())
    if len(words) < MIN_WORDS:
        return None
    cyrillic = [w for w in words if _script(w) == "cyrillic"]
    latin = [w for w in words if _script(w) == "latin"]
    if len(cyrillic) * 3 >= len(words) * 2:
        candidates, script_words = _CYRILLIC_LANGUAGES, cyrillic
    elif len(latin) * 3 >= len(words) * 2:
        candidates, script_words = _LATIN_LANGUAGES, latin
    else:
        return None
    if len(script_words) < MIN_WORDS:
        return None
    letters = "".join(script_words)
    scores = dict.fromkeys(candidates, 0.0)
    for word in script_words:
        having = [language for language in candidates if word in _STOP_WORDS[language]]
        for language in having:  # a word several languages use counts for each, split between them
            scores[language] += 1 / len(having)
    for language in candidates:
        scores[language] += sum(letters.count(ch) for ch in _LETTERS.get(language, ""))
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    (best, top), (_, second) = ranked[0], ranked[1]
    if top < MIN_EVIDENCE or top - second < 1 or top < second * 1.5:
        return None
    return best


# -- option checking ----------------------------------------------------------------------------------------------
def _check_options(options: Mapping[str, Any], known: Sequence[str], metric: str) -> None:
    for key in options:
        if key not in known:
            raise ValueError(f"unknown option {_shown(key)} of the {metric!r} metric; known options: "
                             f"{', '.join(known)}")


def _strings(options: Mapping[str, Any], key: str, what: str = "string") -> list[str]:
    """Option ``key`` as a non-empty list of non-empty strings (a single string is a list of one)."""
    value = options[key]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items or not all(isinstance(item, str) for item in items):
        raise ValueError(f"option {key!r} must be a {what} or a non-empty list of {what}s (got {_shown(value)})")
    if any(not item for item in items):
        raise ValueError(f"option {key!r} must not contain an empty {what}")
    return list(items)


def _bool(options: Mapping[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"option {key!r} must be true or false (got {_shown(value)})")
    return value


def _int(options: Mapping[str, Any], key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"option {key!r} must be a whole number of at least 0 (got {_shown(value)})")
    return value


def _choices(options: Mapping[str, Any], key: str, allowed: Sequence[str]) -> list[str]:
    values = _strings(options, key)
    for value in values:
        if value not in allowed:
            raise ValueError(f"option {key!r}: {_shown(value)} is not one of {', '.join(allowed)}")
    return values


def _arguments_match(expected: Any, actual: Any) -> bool:
    """``expected`` is a subset of ``actual``: every key of an expected object is in the actual one with a matching
    value (objects compared the same way, recursively; anything else by equality)."""
    if isinstance(expected, Mapping):
        if isinstance(actual, str):
            try:
                actual = json.loads(actual)
            except ValueError:
                return False
        if not isinstance(actual, Mapping):
            return False
        return all(key in actual and _arguments_match(value, actual[key]) for key, value in expected.items())
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    return bool(expected == actual)


class _ToolEntry:
    def __init__(self, name: str, arguments: Mapping[str, Any] | None) -> None:
        self.name, self.arguments = name, arguments

    def matches(self, call: Mapping[str, Any]) -> bool:
        if call.get("name") != self.name:
            return False
        return self.arguments is None or _arguments_match(self.arguments, call.get("arguments"))

    @property
    def label(self) -> str:
        if self.arguments is None:
            return repr(self.name)
        return f"{self.name!r} with arguments {_json(self.arguments)}"


def _tool_entries(options: Mapping[str, Any]) -> list[_ToolEntry]:
    value = options["tool_called"]
    items = [value] if isinstance(value, str | Mapping) else value
    problem = ("option 'tool_called' must be a tool name, or a non-empty list of tool names and "
               f"{{name: ..., arguments: {{...}}}} entries (got {_shown(value)})")
    if not isinstance(items, list | tuple) or not items:
        raise ValueError(problem)
    entries = []
    for item in items:
        if isinstance(item, str) and item:
            entries.append(_ToolEntry(item, None))
        elif isinstance(item, Mapping):
            unknown = [key for key in item if key not in ("name", "arguments")]
            if unknown:
                raise ValueError(f"option 'tool_called': unknown key {_shown(unknown[0])} in {_shown(dict(item))}; "
                                 "an entry has 'name' and optionally 'arguments'")
            name, arguments = item.get("name"), item.get("arguments")
            if not isinstance(name, str) or not name:
                raise ValueError(f"option 'tool_called': an entry needs a non-empty 'name' (got {_shown(dict(item))})")
            if arguments is not None and not isinstance(arguments, Mapping):
                raise ValueError(f"option 'tool_called': 'arguments' of {name!r} must be an object (the arguments "
                                 f"that must match), got {_shown(arguments)}")
            entries.append(_ToolEntry(name, dict(arguments) if arguments is not None else None))
        else:
            raise ValueError(problem)
    return entries


# -- rules --------------------------------------------------------------------------------------------------------
_Add = Callable[[str, bool, str], None]  # records one check: (check, passed, detail)

class RulesMetric(Metric):
    """Deterministic checks on the agent's turns, tool calls and the conversation's end (no LLM).

    ``score`` is the share of checks passed, ``passed`` whether all passed, ``reason`` the failed checks, one
    each, joined by ``"; "``, ``details`` ``{"checks": [{"check", "passed", "detail"}, ...]}``.
    """

    name = "rules"
    OPTIONS = ("contains", "not_contains", "regex", "not_regex", "case_sensitive", "tool_called", "tool_order",
               "tool_match", "ended_by", "max_agent_turns", "min_agent_turns", "language")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        opts = self.options
        _check_options(opts, self.OPTIONS, self.name)
        self.case_sensitive = _bool(opts, "case_sensitive", False)
        self.contains = _strings(opts, "contains") if "contains" in opts else []
        self.not_contains = _strings(opts, "not_contains") if "not_contains" in opts else []
        flags = 0 if self.case_sensitive else re.IGNORECASE
        self.regex = [self._compile(p, "regex", flags) for p in _strings(opts, "regex", "pattern")] \
            if "regex" in opts else []
        self.not_regex = [self._compile(p, "not_regex", flags) for p in _strings(opts, "not_regex", "pattern")] \
            if "not_regex" in opts else []
        self.tools = _tool_entries(opts) if "tool_called" in opts else []
        self.tool_order = _bool(opts, "tool_order", False)
        if self.tool_order and len(self.tools) < 2:
            raise ValueError("option 'tool_order' needs 'tool_called' to list at least two tools")
        self.tool_match = opts.get("tool_match", "subset")
        if self.tool_match not in MATCH_MODES:
            raise ValueError(f"option 'tool_match' must be one of {', '.join(MATCH_MODES)} "
                             f"(got {_shown(self.tool_match)})")
        if "tool_match" in opts and not self.tools:
            raise ValueError("option 'tool_match' needs 'tool_called' (the calls to match)")
        if self.tool_order and self.tool_match != "subset":
            raise ValueError("options 'tool_order' and 'tool_match' both say how calls are matched; keep "
                             "tool_match (tool_order: true is tool_match: in_order)")
        self.ended_by = _choices(opts, "ended_by", ENDED_BY_VALUES) if "ended_by" in opts else []
        self.max_agent_turns = _int(opts, "max_agent_turns")
        self.min_agent_turns = _int(opts, "min_agent_turns")
        if self.max_agent_turns is not None and self.min_agent_turns is not None \
                and self.min_agent_turns > self.max_agent_turns:
            raise ValueError(f"option 'min_agent_turns' ({self.min_agent_turns}) is above 'max_agent_turns' "
                             f"({self.max_agent_turns})")
        self.language: str | None = None
        if "language" in opts:
            language = opts["language"]
            if not isinstance(language, str) or language.lower() not in SUPPORTED_LANGUAGES:
                raise ValueError(f"option 'language' must be one of {', '.join(SUPPORTED_LANGUAGES)} "
                                 f"(got {_shown(language)})")
            self.language = language.lower()
        if not (self.contains or self.not_contains or self.regex or self.not_regex or self.tools or self.ended_by
                or self.max_agent_turns is not None or self.min_agent_turns is not None or self.language):
            raise ValueError("the 'rules' metric needs at least one check: contains, not_contains, regex, not_regex, "
                             "tool_called, ended_by, max_agent_turns, min_agent_turns or language")

    @staticmethod
    def _compile(pattern: str, key: str, flags: int) -> Any:
        try:
            re.compile(pattern, flags)  # Python's syntax, and its messages, decide what is a valid pattern
            return regex.compile(pattern, flags)
        except (re.error, regex.error, ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise ValueError(f"option {key!r}: {_shown(pattern)} is not a valid regular expression: {exc}") from None

    @staticmethod
    def _matching(pattern: Any, key: str, agent: Sequence[tuple[int, str]], scenario: Scenario) -> list[int]:
        """The agent turns ``pattern`` matches in, within REGEX_SECONDS for all of them (MetricError past it)."""
        deadline = time.monotonic() + REGEX_SECONDS
        found = []
        for number, text in agent:
            try:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                if pattern.search(text, timeout=left, concurrent=True):
                    found.append(number)
            except TimeoutError:
                raise MetricError(
                    f"scenario {scenario.name!r}: metric 'rules': {key} {_pattern(pattern)} took over "
                    f"{REGEX_SECONDS:g} s on agent turn {number} ({len(text):,} characters) and was stopped: the "
                    "pattern backtracks catastrophically (a nested or overlapping repeat such as (a+)+ or (a|aa)+); "
                    "rewrite it without the nested repeat") from None
        return found

    def evaluate(self, conversation: Conversation, scenario: Scenario) -> MetricResult:
        """Run every configured check on ``conversation``."""
        agent = [(number, str(turn.get("text") or "")) for number, turn in enumerate(conversation.turns, 1)
                 if turn.get("role") == "agent"]
        checks: list[dict[str, Any]] = []

        def add(check: str, passed: bool, detail: str) -> None:
            checks.append({"check": check, "passed": passed, "detail": detail})

        fold = (lambda s: s) if self.case_sensitive else str.casefold
        for needle in self.contains:
            found = [n for n, text in agent if fold(needle) in fold(text)]
            add(f"contains {needle!r}", bool(found), f"contains {needle!r} found in {_turns_text(found)}" if found
                else f"contains {needle!r} not found in any agent turn")
        for needle in self.not_contains:
            found = [n for n, text in agent if fold(needle) in fold(text)]
            add(f"not_contains {needle!r}", not found, f"not_contains {needle!r} found in {_turns_text(found)}"
                if found else f"not_contains {needle!r} not found")
        for pattern in self.regex:
            found = self._matching(pattern, "regex", agent, scenario)
            shown = _pattern(pattern)
            add(f"regex {shown}", bool(found), f"regex {shown} matched in {_turns_text(found)}" if found
                else f"regex {shown} matched no agent turn")
        for pattern in self.not_regex:
            found = self._matching(pattern, "not_regex", agent, scenario)
            shown = _pattern(pattern)
            add(f"not_regex {shown}", not found, f"not_regex {shown} matched in {_turns_text(found)}" if found
                else f"not_regex {shown} matched no agent turn")
        if self.tools:
            self._check_tools(conversation.tool_calls, add)
            if self.tool_match != "subset":
                self._check_tool_match(conversation, add)
        if self.ended_by:
            actual = conversation.ended_by or "unknown"
            ok = conversation.ended_by in self.ended_by
            expected = _or_list(self.ended_by)
            add("ended_by", ok, f"ended_by {actual}" if ok else f"ended_by {actual}, expected {expected}")
        count = len(agent)
        turns = f"{count} agent turn{'' if count == 1 else 's'}"
        if self.max_agent_turns is not None:
            ok = count <= self.max_agent_turns
            add("max_agent_turns", ok, f"{turns}, at most {self.max_agent_turns} allowed" if ok
                else f"max_agent_turns {self.max_agent_turns} exceeded: {turns}")
        if self.min_agent_turns is not None:
            ok = count >= self.min_agent_turns
            add("min_agent_turns", ok, f"{turns}, at least {self.min_agent_turns} required" if ok
                else f"min_agent_turns {self.min_agent_turns} not reached: {turns}")
        if self.language:
            self._check_language(agent, add)

        failed = [check["detail"] for check in checks if not check["passed"]]
        return MetricResult(name=self.name, score=(len(checks) - len(failed)) / len(checks), passed=not failed,
                            reason="; ".join(failed), details={"checks": checks})

    def _check_tools(self, calls: Sequence[Mapping[str, Any]], add: _Add) -> None:
        names = [str(call.get("name", "?")) for call in calls]
        for entry in self.tools:
            matched = any(entry.matches(call) for call in calls)
            if matched:
                add(f"tool_called {entry.name!r}", True, f"tool {entry.label} called")
                continue
            same_name = [call for call in calls if call.get("name") == entry.name]
            if entry.arguments is not None and same_name:
                seen = ", ".join(_json(call.get("arguments")) for call in same_name[:3])
                detail = f"tool {entry.label} never called (called with {seen})"
            else:
                detail = f"tool {entry.name!r} never called"
            add(f"tool_called {entry.name!r}", False, detail)
        if self.tool_order:
            position = 0
            for call in calls:
                if position < len(self.tools) and self.tools[position].matches(call):
                    position += 1
            ok = position == len(self.tools)
            expected = ", ".join(entry.name for entry in self.tools)
            called = ", ".join(names) if names else "none"
            add("tool_order", ok, f"tools called in order {expected}" if ok
                else f"tool_order {expected} not followed (calls: {called})")

    def _check_tool_match(self, conversation: Conversation, add: _Add) -> None:
        """The calls against the entries under ``tool_match``, naming the first wrong, missing or unexpected call
        and its turn."""
        calls = [(number, call) for number, turn in enumerate(conversation.turns, 1) if turn.get("role") == "agent"
                 for call in turn_tool_calls(turn)]
        mismatch = first_mismatch(self.tools, calls, lambda entry, numbered: entry.matches(numbered[1]),
                                  self.tool_match)
        expected = ", ".join(entry.label for entry in self.tools)
        called = ", ".join(f"{call.get('name', '?')} (turn {n})" for n, call in calls) or "none"
        check = f"tool_match {self.tool_match}"
        if mismatch is None:
            add(check, True, f"tool calls match {expected} ({self.tool_match})")
            return
        if mismatch.kind == "wrong" and mismatch.actual is not None and mismatch.expected is not None:
            number, call = calls[mismatch.actual]
            detail = (f"wrong tool call at turn {number}: {call.get('name', '?')}({_json(call.get('arguments'))}), "
                      f"expected {self.tools[mismatch.expected].label}")
        elif mismatch.kind == "unexpected" and mismatch.actual is not None:
            number, call = calls[mismatch.actual]
            detail = f"unexpected tool call at turn {number}: {call.get('name', '?')}({_json(call.get('arguments'))})"
        else:
            assert mismatch.expected is not None
            detail = f"missing tool call {self.tools[mismatch.expected].label}"
        add(check, False, f"{detail} (tool_match {self.tool_match} of {expected}; calls: {called})")

    def _check_language(self, agent: Sequence[tuple[int, str]], add: _Add) -> None:
        wrong, skipped = [], 0
        for number, text in agent:
            found = detect_language(text)
            if found is None:
                skipped += 1
            elif found != self.language:
                wrong.append(f"agent turn {number} is {found}")
        skipped_text = f" ({skipped} agent turn{'' if skipped == 1 else 's'} too short or ambiguous, skipped)" \
            if skipped else ""
        if wrong:
            add("language", False, f"language {self.language} expected: {', '.join(wrong)}")
        else:
            add("language", True, f"language {self.language} in every agent turn told{skipped_text}")


# -- rouge --------------------------------------------------------------------------------------------------------
def _read_reference(path: str | Path, base_dir: str | Path | None = None) -> str:
    """The text of ``path`` (UTF-8); a relative path is relative to ``base_dir``, else to the working directory."""
    file = Path(path).expanduser()
    if not file.is_absolute() and base_dir is not None:
        file = Path(base_dir) / file
    try:
        size = file.stat().st_size
        if size > MAX_REFERENCE_BYTES:
            raise ValueError(f"option 'reference_file': {str(file)!r} is {size:,} bytes; the limit is "
                             f"{MAX_REFERENCE_BYTES:,}")
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"option 'reference_file': {str(file)!r} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"option 'reference_file': {str(file)!r} is not UTF-8 text: {exc}") from None


_TOKENIZER: Any = None


def _unicode_tokenizer() -> Any:
    """A rouge_score tokenizer that keeps every Unicode word (the default one drops all but a-z and 0-9)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from rouge_score import tokenizers

        class UnicodeTokenizer(tokenizers.Tokenizer):  # type: ignore[misc]  # rouge_score is untyped: an Any base
            def tokenize(self, text: str) -> list[str]:
                return re.findall(r"\w+", text.lower())

        _TOKENIZER = UnicodeTokenizer()
    return _TOKENIZER


class RougeMetric(Metric):
    """ROUGE F1 of the agent's text against a reference (the ``rouge-score`` package, Unicode-aware tokens).

    ``score`` is the F1; ``passed`` is F1 >= ``threshold``, None without a threshold; ``details`` has precision,
    recall, f1, variant and target.
    """

    name = "rouge"
    OPTIONS = ("reference", "reference_file", "base_dir", "variant", "target", "threshold")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        opts = self.options
        _check_options(opts, self.OPTIONS, self.name)
        try:
            from rouge_score import rouge_scorer
        except ImportError:
            raise ValueError("the 'rouge' metric needs the rouge-score package: pip install 'pytest-llmsim[rouge]'") \
                from None
        if ("reference" in opts) == ("reference_file" in opts):
            raise ValueError("the 'rouge' metric needs exactly one of the options 'reference' (the text) and "
                             "'reference_file' (a path)")
        for key in ("reference", "reference_file", "variant", "target"):
            if key in opts and not isinstance(opts[key], str):
                raise ValueError(f"option {key!r} must be a string (got {_shown(opts[key])})")
        if opts.get("reference_file") == "":
            raise ValueError("option 'reference_file' must not be empty")
        base_dir = opts.get("base_dir")
        if base_dir is not None and not isinstance(base_dir, str | Path):
            raise ValueError(f"option 'base_dir' must be a path (got {_shown(base_dir)})")
        self.variant: str = opts.get("variant", "rougeL")
        if self.variant not in ROUGE_VARIANTS:
            raise ValueError(f"option 'variant' must be one of {', '.join(ROUGE_VARIANTS)} "
                             f"(got {_shown(self.variant)})")
        self.target: str = opts.get("target", "all")
        if self.target not in ROUGE_TARGETS:
            raise ValueError(f"option 'target' must be one of {', '.join(ROUGE_TARGETS)} (got {_shown(self.target)})")
        threshold = opts.get("threshold")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)
                                      or not 0 <= threshold <= 1):
            raise ValueError(f"option 'threshold' must be a number from 0 to 1 (got {_shown(threshold)})")
        self.threshold: float | None = None if threshold is None else float(threshold)
        if "reference" in opts:
            self.reference: str = opts["reference"]
            source = "reference"
        else:
            self.reference = _read_reference(opts["reference_file"], base_dir)
            source = "reference_file"
        if not self.reference.strip():
            raise ValueError(f"option {source!r}: the reference text is empty")
        self._scorer = rouge_scorer.RougeScorer([self.variant], tokenizer=_unicode_tokenizer())

    def evaluate(self, conversation: Conversation, scenario: Scenario) -> MetricResult:
        """Score the agent's text (all turns or the last) against the reference."""
        agent = conversation.agent_turns
        if self.target == "last":
            text = str(agent[-1].get("text") or "") if agent else ""
        else:
            text = conversation.agent_text
        score = self._scorer.score(self.reference, text)[self.variant]
        f1 = float(score.fmeasure)
        details = {"precision": float(score.precision), "recall": float(score.recall), "f1": f1,
                   "variant": self.variant, "target": self.target}
        if self.threshold is None:
            return MetricResult(name=self.name, score=f1, passed=None, reason=f"{self.variant} F1 {f1:.2f}",
                                details=details)
        passed = f1 >= self.threshold
        relation = "at least" if passed else "below"
        return MetricResult(name=self.name, score=f1, passed=passed, details=details,
                            reason=f"{self.variant} F1 {f1:.2f} {relation} threshold {self.threshold:.2f}")
