"""Recorded conversations (transcript files) scored like simulated ones: the metrics only, nothing simulated
(no pytest).

Why one module: reading a transcript file, checking it field by field and scoring it are one path whose error
messages must name the same file, line and field; the format is defined here and nowhere else.

A transcript file is ``.json`` (one conversation) or ``.jsonl`` (one conversation a line). A conversation is:

* an OpenAI-style message list ``[{"role": "user" | "assistant" | "system" | "tool", "content": ...}, ...]``:
  ``assistant`` is the agent, ``user`` the customer, ``system`` (and ``developer``) messages are no turns, and a
  ``tool`` message is the result of the tool call of the assistant message(s) before it whose ``id`` its
  ``tool_call_id`` names. What one side says before the other speaks is one turn: an assistant message with
  ``tool_calls``, their ``tool`` results and the assistant's text after them are one agent turn whose tool calls
  are ``{"name", "arguments", "result"}`` (the shape every metric and report reads);
* an object ``{"messages": [...], <metadata>}``;
* a chat file written by ``--llmsim-chats-dir`` (``chat_files.py``: ``scenario``, ``seed``, ``ended_by``,
  ``end_reason``, ``turns``), so a simulated conversation and a real one are scored the same way; the verdict
  stored in it is not read: the conversation is scored anew.

Metadata (``META_FIELDS``) becomes the conversation's ``Scenario``: ``name``, ``variables``, ``criteria``,
``min_score``, ``evaluate``, ``language``, ``description``, ``persona``, ``goal``, ``tags``, ``skip``,
``xfail``, ``evaluator`` (role overrides), ``reference`` (the ``rouge`` metric's reference text), ``ended_by``
and ``end_reason`` (default ``transcript`` / ``recorded conversation``). A sidecar file beside the transcript
(``<file>.meta.yaml``, ``.meta.yml`` or ``.meta.json``, with or without the ``.json``/``.jsonl`` of the file's
name) gives metadata to every conversation of the file; a conversation's own fields win, ``variables`` merge.

Files are untrusted input, read within the scenario files' limits. A file that cannot be read is one error; a
conversation that cannot be scored (wrong shape, unknown role or field, a tool message without its call, ...)
is an entry with a ``problem`` naming the file, the line and the field, and the file's other conversations
still run. The runner (``ScenarioJob.transcript``) scores a conversation through ``recorded_conversation``,
which refuses one without a single agent reply (``no_agent_reply``, never judged) and one whose judge
template needs variables it does not define.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmsim.errors import NoAgentReplyError, PromptError, ScenarioError
from pytest_llmsim.metrics.api import DEFAULT_METRICS, metric_specs
from pytest_llmsim.model.scenario import (
    MAX_SCENARIOS_PER_FILE,
    Scenario,
    _describe_validation_error,
    _load_json,
    _merge_defaults,
    _read_text,
    _shown,
    name_problem,
    read_scenario_data,
)
from pytest_llmsim.model.transcript import Transcript, Turn

if TYPE_CHECKING:
    from pytest_llmsim.model.prompts import PromptRenderer
    from pytest_llmsim.model.settings import RunSettings

TRANSCRIPT_SUFFIXES = (".json", ".jsonl")
SIDECAR_SUFFIXES = (".meta.yaml", ".meta.yml", ".meta.json")
RECORDED_ENDED_BY = "transcript"
RECORDED_END_REASON = "recorded conversation"
# What a recorded conversation may say ended it: the simulation's words (``rules: {ended_by: ...}`` checks them)
# or the default.
ENDED_BY_VALUES = ("client", "agent", "script", "max_turns", "timeout", RECORDED_ENDED_BY)

META_FIELDS = frozenset({"name", "variables", "description", "persona", "goal", "criteria", "language",
                         "min_score", "evaluate", "reference", "tags", "skip", "xfail", "evaluator", "ended_by",
                         "end_reason"})
_NOT_SCENARIO_FIELDS = frozenset({"reference", "ended_by", "end_reason"})
_ROLES = ("user", "assistant", "system", "developer", "tool")
# The fields of an OpenAI chat message; ``name``, ``annotations`` and ``audio`` are accepted and not scored.
_MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal", "annotations",
                             "audio"})
_CHAT_TURN_FIELDS = frozenset({"role", "text", "tool_calls", "scripted", "messages", "handoffs"})
_TOOL_CALL_FIELDS = frozenset({"name", "arguments", "result"})
_CHAT_READ = frozenset({"scenario", "seed", "ended_by", "end_reason", "turns"})


@dataclass(frozen=True)
class TranscriptEntry:
    """One conversation of a transcript file: ``scenario`` and ``transcript``, or a ``problem``, never both.
    ``line``: its line in a ``.jsonl`` file (0 for a ``.json`` file)."""

    line: int
    item_name: str
    scenario: Scenario | None
    transcript: Transcript | None
    problem: str | None


class _Problem(Exception):
    """Why one conversation cannot be scored; the message names the field."""


def is_sidecar(path: Path) -> bool:
    return path.name.endswith(SIDECAR_SUFFIXES)


def is_transcript_file(path: Path) -> bool:
    """A ``.json`` or ``.jsonl`` file that is not a sidecar (``x.meta.json``)."""
    return path.suffix in TRANSCRIPT_SUFFIXES and not is_sidecar(path)


# -- loading -------------------------------------------------------------------------------------------------------
def load_transcript_file(path: Path, default_evaluate: Sequence[str] = DEFAULT_METRICS) -> list[TranscriptEntry]:
    """Every conversation of ``path``; ScenarioError only when the file (or its sidecar) as a whole is unusable.

    ``default_evaluate``: the run's metrics for a conversation that lists none (``llmsim_evaluate``); needed to
    give a ``reference`` to the ``rouge`` metric they include."""
    defaults = _sidecar_metadata(path)
    if path.suffix == ".jsonl":
        if "name" in defaults:
            raise ScenarioError(f"{_sidecar_of(path)}: field 'name' is not allowed in the sidecar of a .jsonl file; "
                                "name each conversation on its own line")
        return _load_lines(path, defaults, default_evaluate)
    data = read_scenario_data(path)
    name = _declared_name(data)
    fallback = path.stem if name_problem(path.stem) is None else "conversation"
    item_name = name if name is not None and name_problem(name) is None else fallback
    return [_entry(data, defaults, default_evaluate, line=0, item_name=item_name, where=str(path))]


def _load_lines(path: Path, defaults: dict[str, Any], default_evaluate: Sequence[str]) -> list[TranscriptEntry]:
    text = _read_text(path)
    lines = [(number, line) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not lines:
        raise ScenarioError(f"{path}: the file has no conversations (it is empty); write one JSON conversation "
                            "(a message list or an object with 'messages') per line")
    if len(lines) > MAX_SCENARIOS_PER_FILE:
        raise ScenarioError(f"{path}: {len(lines):,} conversations, over the limit of {MAX_SCENARIOS_PER_FILE:,} "
                            "per file (MAX_SCENARIOS_PER_FILE); split the file")
    parsed: list[tuple[int, Any, str | None]] = []
    for number, line in lines:
        try:
            parsed.append((number, _load_json(path, line), None))
        except ScenarioError as exc:  # positions of a one-line text: line 1 is the file's line ``number``
            rest = str(exc)[len(str(path)):]
            parsed.append((number, None, f"{path}:{number}{rest.removeprefix(':1')}"))
    names = [_declared_name(data) if problem is None else None for _, data, problem in parsed]
    taken = {name for name in names if name is not None and name_problem(name) is None}
    used: set[str] = set()
    entries = []
    for (number, data, problem), name in zip(parsed, names, strict=True):
        where = f"{path}:{number}"
        duplicate = name is not None and name in used
        if name is not None and name_problem(name) is None and not duplicate:
            item_name = name
        else:
            item_name = _unique(f"line-{number}", taken | used)
        used.add(item_name)
        if problem is None and duplicate:
            problem = f"{where}: field 'name': duplicate name {_shown(name)} in this file; names must be unique"
        if problem is not None:
            entries.append(TranscriptEntry(number, item_name, None, None, problem))
        else:
            entries.append(_entry(data, defaults, default_evaluate, line=number, item_name=item_name, where=where))
    return entries


def _unique(base: str, taken: set[str]) -> str:
    candidate, attempt = base, 1
    while candidate in taken:
        attempt += 1
        candidate = f"{base}-{attempt}"
    return candidate


def _declared_name(data: Any) -> str | None:
    """The name a conversation gives itself (``name``, or a chat file's ``scenario``), as written."""
    if not isinstance(data, dict):
        return None
    value = data.get("scenario") if _is_chat(data) else data.get("name")
    return value if isinstance(value, str) else None


def _is_chat(data: dict[str, Any]) -> bool:
    return "turns" in data and "messages" not in data


def _entry(data: Any, defaults: dict[str, Any], default_evaluate: Sequence[str], *, line: int, item_name: str,
           where: str) -> TranscriptEntry:
    try:
        scenario, transcript = _conversation(data, defaults, default_evaluate, item_name)
    except _Problem as exc:
        return TranscriptEntry(line, item_name, None, None, f"{where}: {exc}")
    return TranscriptEntry(line, item_name, scenario, transcript, None)


def _conversation(data: Any, defaults: dict[str, Any], default_evaluate: Sequence[str],
                  name: str) -> tuple[Scenario, Transcript]:
    if isinstance(data, list):
        meta, turns = {}, _message_turns(data, "")
    elif isinstance(data, dict) and _is_chat(data):
        meta, turns = _chat_metadata(data), _chat_turns(data["turns"])
    elif isinstance(data, dict) and "messages" in data:
        _check_fields(data, META_FIELDS | {"messages"}, "a conversation object")
        meta = {key: value for key, value in data.items() if key != "messages"}
        turns = _message_turns(data["messages"], "messages")
    else:
        got = f"an object with the fields {', '.join(map(_shown, list(data)[:8]))}" if isinstance(data, dict) \
            else _shown(data)
        raise _Problem(f"expected a list of OpenAI-style messages, an object with 'messages', or a chat file "
                       f"written by --llmsim-chats-dir (with 'turns'); got {got}")
    meta = _merge_defaults(defaults, meta)
    name_error = name_problem(meta.get("name", name))
    if name_error is not None:
        raise _Problem(f"field 'name' {name_error}")
    ended_by = meta.get("ended_by", RECORDED_ENDED_BY)
    if ended_by not in ENDED_BY_VALUES:
        raise _Problem(f"field 'ended_by' must be one of {', '.join(ENDED_BY_VALUES)} (got {_shown(ended_by)})")
    end_reason = meta.get("end_reason", RECORDED_END_REASON)
    if not isinstance(end_reason, str) or not end_reason.strip():
        raise _Problem(f"field 'end_reason' must be a non-blank string (got {_shown(end_reason)})")
    return _scenario(meta, name, default_evaluate), Transcript(turns, ended_by=ended_by, end_reason=end_reason)


def _check_fields(data: Mapping[str, Any], allowed: frozenset[str], what: str, at: str = "") -> None:
    unknown = sorted(set(data) - allowed, key=str)
    if unknown:
        where = f"{at}: " if at else ""
        raise _Problem(f"{where}unknown field(s) {', '.join(map(_shown, unknown))}; {what} has only "
                       f"{', '.join(sorted(allowed))}")


def _scenario(meta: dict[str, Any], name: str, default_evaluate: Sequence[str]) -> Scenario:
    """The conversation's metadata as a Scenario (what the metrics and the judge's template read); one trial."""
    from pydantic import ValidationError

    fields = {key: value for key, value in meta.items() if key not in _NOT_SCENARIO_FIELDS}
    try:
        scenario = Scenario.model_validate({**fields, "name": meta.get("name", name), "trials": 1})
    except ValidationError as exc:
        raise _Problem(_describe_validation_error(exc)) from None
    if "reference" not in meta:
        return scenario
    reference = meta["reference"]
    if not isinstance(reference, str) or not reference.strip():
        raise _Problem(f"field 'reference' must be the rouge metric's reference text, a non-blank string "
                       f"(got {_shown(reference)})")
    specs = metric_specs(scenario, default_evaluate)
    if "rouge" not in {spec for spec, _ in specs}:
        raise _Problem("field 'reference' is the rouge metric's reference text, but the conversation's metrics "
                       f"({', '.join(spec for spec, _ in specs)}) do not include rouge; add it to 'evaluate' "
                       "(e.g. evaluate: [judge, {rouge: {threshold: 0.3}}]) or remove 'reference'")
    with_reference = []
    for spec, options in specs:
        if spec == "rouge":
            if "reference" in options or "reference_file" in options:
                raise _Problem("field 'reference' and the rouge metric's own 'reference'/'reference_file' option "
                               "both give the reference; keep one")
            options = {**options, "reference": reference}
        with_reference.append((spec, options))
    return scenario.model_copy(update={"evaluate": tuple(with_reference)})


def _text(value: Any, at: str) -> str:
    """A message's ``content``: a string, null, or a list of text parts (joined by line breaks)."""
    if value is None or isinstance(value, str):
        return value or ""
    if not isinstance(value, list):
        raise _Problem(f"{at} must be a string, null or a list of text parts (got {_shown(value)})")
    parts = []
    for index, part in enumerate(value):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise _Problem(f"{at}[{index}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) can be scored "
                           f"(got {_shown(part)})")
        parts.append(part["text"])
    return "\n".join(parts)


def _side_turn(turns: list[Turn], side: str) -> Turn:
    """The turn a message of ``side`` adds to: the last one if that side spoke last, else a new one."""
    if not turns or turns[-1].role != side:
        turns.append(Turn(side, ""))
    return turns[-1]


def _message_turns(messages: Any, field: str) -> list[Turn]:
    """The turns of an OpenAI-style message list, tool results folded into the agent's tool calls."""
    from pytest_llmsim.agents.base import normalize_tool_call

    if not isinstance(messages, list) or not messages:
        shown = "the file" if not field else f"field {field!r}"
        raise _Problem(f"{shown} must be a non-empty list of messages (got {_shown(messages)})")
    turns: list[Turn] = []
    named: set[int] = set()  # the agent turns with a named speaker (``id`` of the Turn)
    waiting: dict[str, dict[str, Any]] = {}  # tool_call_id -> a call of the current agent turn with no result yet
    for index, message in enumerate(messages):
        at = f"{field}[{index}]"
        if not isinstance(message, dict):
            raise _Problem(f"{at} must be an object with 'role' and 'content' (got {_shown(message)})")
        _check_fields(message, _MESSAGE_FIELDS, "an OpenAI-style message", at)
        role = message.get("role")
        if role not in _ROLES:
            raise _Problem(f"{at}.role: unknown role {_shown(role)}; use 'user' (the customer), 'assistant' (the "
                           "agent), 'system' or 'tool' (a tool call's result)")
        text = _text(message.get("content"), f"{at}.content")
        if role in ("system", "developer"):
            continue
        if role == "tool":
            call_id = message.get("tool_call_id")
            call = waiting.pop(call_id, None) if isinstance(call_id, str) else None
            if call is None:
                open_ids = f" (unanswered: {', '.join(map(repr, waiting))})" if waiting else ""
                raise _Problem(f"{at}.tool_call_id: {_shown(call_id)} answers no tool call of the assistant "
                               f"message(s) before it{open_ids}; a tool message follows the assistant message "
                               "whose tool_calls has that id")
            call["result"] = _tool_result(text)
            continue
        if role == "user":
            if message.get("tool_calls"):
                raise _Problem(f"{at}.tool_calls: only the assistant (the agent) makes tool calls")
            waiting.clear()
            turn = _side_turn(turns, "client")
        else:
            refusal = message.get("refusal")
            if refusal is not None and not isinstance(refusal, str):
                raise _Problem(f"{at}.refusal must be a string or null (got {_shown(refusal)})")
            text = text or refusal or ""
            turn = _side_turn(turns, "agent")
            spoken = _speaker_message(message, text, at)
            turn.messages.append(spoken)
            if message.get("name") is not None:
                named.add(id(turn))
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise _Problem(f"{at}.tool_calls must be a list of tool calls (got {_shown(calls)})")
            for number, raw in enumerate(calls):
                try:
                    call = normalize_tool_call(raw)
                except TypeError as exc:
                    raise _Problem(f"{at}.tool_calls[{number}]: {exc}") from None
                turn.tool_calls.append(call)
                spoken.setdefault("tool_calls", []).append(call)  # the same object: its result is filled in below
                call_id = raw.get("id")
                if isinstance(call_id, str):
                    if call_id in waiting:
                        raise _Problem(f"{at}.tool_calls[{number}].id: {call_id!r} is used twice")
                    waiting[call_id] = call
        if text.strip():
            turn.text = f"{turn.text}\n{text}" if turn.text else text
    for turn in turns:  # OpenAI's ``name`` on assistant messages is the speaker: such a turn is multi-agent
        if id(turn) in named:
            turn.text = "\n\n".join(m["content"] for m in turn.messages if m["content"].strip())
        else:
            turn.messages = []
    return turns


def _speaker_message(message: Mapping[str, Any], text: str, at: str) -> dict[str, Any]:
    """An assistant message as a speaker's message of its turn: ``name`` (OpenAI's field) is the agent, else
    ``assistant``."""
    from pytest_llmsim.agents.base import agent_name

    name = message.get("name")
    try:
        speaker = "assistant" if name is None else agent_name(name, f"{at}.name")
    except TypeError as exc:
        raise _Problem(str(exc)) from None
    return {"agent": speaker, "content": text.strip() and text}


def _tool_result(text: str) -> Any:
    """A tool message's content as the agents report results: its JSON value when it is JSON, else the text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return text if value is None else value  # "null" is a result, not "no result reported"


def _chat_metadata(data: dict[str, Any]) -> dict[str, Any]:
    """A chat file's name, seed (as the SEED variable: the judge is asked with the conversation's seed) and end;
    any metadata field written into it; the stored verdict, usage and the like are not read."""
    _check_fields(data, _CHAT_READ | _chat_output_fields() | (META_FIELDS - {"name"}), "a chat file")
    meta = {key: value for key, value in data.items() if key in META_FIELDS and key not in _chat_output_fields()}
    if not isinstance(data.get("scenario"), str):
        raise _Problem(f"field 'scenario' (the conversation's name) must be a string "
                       f"(got {_shown(data.get('scenario'))})")
    meta["name"] = data["scenario"]
    seed = data.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise _Problem(f"field 'seed' must be an integer or null (got {_shown(seed)})")
        meta["variables"] = {"SEED": seed, **(meta.get("variables") or {})}
    for key in ("ended_by", "end_reason"):
        if data.get(key):  # a chat file of a conversation that never ran has none: the default applies
            meta[key] = data[key]
    return meta


@cache
def _chat_output_fields() -> frozenset[str]:
    """The fields a chat file holds about its verdict and cost (``chat_files.chat_document``), not read here."""
    from pytest_llmsim.model.results import ScenarioResult, Status
    from pytest_llmsim.reporting.chat_files import chat_document

    return frozenset(chat_document(ScenarioResult("", "", "", Status.ERROR, None))) - _CHAT_READ


def _chat_turns(turns: Any) -> list[Turn]:
    if not isinstance(turns, list) or not turns:
        raise _Problem(f"field 'turns' must be a non-empty list of turns (got {_shown(turns)})")
    result = []
    for index, turn in enumerate(turns):
        at = f"turns[{index}]"
        if not isinstance(turn, dict):
            raise _Problem(f"{at} must be an object with 'role' and 'text' (got {_shown(turn)})")
        _check_fields(turn, _CHAT_TURN_FIELDS, "a chat file's turn", at)
        role, text, calls = turn.get("role"), turn.get("text", ""), turn.get("tool_calls") or []
        if role not in ("client", "agent"):
            raise _Problem(f"{at}.role must be 'client' or 'agent' (got {_shown(role)})")
        if not isinstance(text, str):
            raise _Problem(f"{at}.text must be a string (got {_shown(text)})")
        if not isinstance(calls, list) or (calls and role != "agent"):
            raise _Problem(f"{at}.tool_calls must be a list, on an agent turn only (got {_shown(calls)})")
        checked = []
        for number, call in enumerate(calls):
            if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
                raise _Problem(f"{at}.tool_calls[{number}] must be an object with a non-empty 'name' "
                               f"(got {_shown(call)})")
            _check_fields(call, _TOOL_CALL_FIELDS, "a tool call", f"{at}.tool_calls[{number}]")
            checked.append({"name": call["name"], "arguments": call.get("arguments", {}), "result": call.get("result")})
        spoken = Turn(role, text, tool_calls=checked, scripted=turn.get("scripted") is True)
        if turn.get("messages") or turn.get("handoffs"):  # a multi-agent turn: checked as an agent's reply is
            if role != "agent":
                raise _Problem(f"{at}: only an agent turn has 'messages' and 'handoffs'")
            from pytest_llmsim.agents.base import read_multi_agent

            try:
                multi = read_multi_agent({"messages": turn.get("messages") or [],
                                          "handoffs": turn.get("handoffs") or []})
            except TypeError as exc:
                raise _Problem(f"{at}: {exc}") from None
            spoken.messages, spoken.handoffs = multi.messages, multi.handoffs
        result.append(spoken)
    return result


def _sidecar_of(path: Path) -> Path | None:
    """The sidecar of ``path``; ScenarioError if there are several."""
    found = [candidate for base in dict.fromkeys((path.name, path.stem)) for suffix in SIDECAR_SUFFIXES
             if (candidate := path.with_name(base + suffix)).is_file()]
    if len(found) > 1:
        raise ScenarioError(f"{path}: several sidecar files ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def _sidecar_metadata(path: Path) -> dict[str, Any]:
    sidecar = _sidecar_of(path)
    if sidecar is None:
        return {}
    data = read_scenario_data(sidecar)
    if not isinstance(data, dict):
        raise ScenarioError(f"{sidecar}: a sidecar file is an object of metadata fields (got {_shown(data)})")
    try:
        _check_fields(data, META_FIELDS, "a sidecar file")
    except _Problem as exc:
        raise ScenarioError(f"{sidecar}: {exc}") from None
    return data


# -- scoring -------------------------------------------------------------------------------------------------------
def recorded_conversation(transcript: Transcript, scenario: Scenario, settings: RunSettings,
                          renderer: PromptRenderer, *, label: str) -> Transcript:
    """The runner's conversation step for a recorded conversation: a copy of it (nothing is simulated), after the
    checks whose message must speak of the recording, not of a simulation."""
    turns = [dataclasses.replace(turn, tool_calls=[dict(call) for call in turn.tool_calls],
                                 messages=[dict(m) for m in turn.messages], handoffs=[dict(h) for h in turn.handoffs])
             for turn in transcript.turns]
    copy = Transcript(turns, ended_by=transcript.ended_by, end_reason=transcript.end_reason)
    if not copy.agent_replied:  # nothing the agent said: an error, never a verdict
        agent_turns = sum(1 for turn in copy.turns if turn.role == "agent")
        what = (f"none of its {agent_turns} agent turn(s) has text (only tool calls, or empty content)"
                if agent_turns else "it has no assistant (agent) message")
        raise NoAgentReplyError(f"{label}: the recorded conversation {scenario.name!r} has no agent reply to judge: "
                                f"{what}. The conversation was not judged.")
    if "judge" in {name for name, _ in metric_specs(scenario, settings.evaluate)}:
        _check_judge_variables(copy, scenario, settings, renderer, label)
    return copy


def _check_judge_variables(transcript: Transcript, scenario: Scenario, settings: RunSettings,
                           renderer: PromptRenderer, label: str) -> None:
    """PromptError, naming the recording's fields, when the judge's template uses variables this conversation does
    not define (a project's template written for its simulated scenarios, say). The package's generic evaluator
    is not swapped in silently: the score would then mean something else."""
    from jinja2.defaults import DEFAULT_NAMESPACE

    from pytest_llmsim.model.prompts import template_context

    template = settings.role("evaluator", scenario).template
    used = renderer.variables_used(template)
    context = template_context(scenario, settings, transcript=transcript.to_dicts(),
                               transcript_text=transcript.as_text(), ended_by=transcript.ended_by,
                               end_reason=transcript.end_reason)
    missing = sorted(set(used or ()) - set(context) - set(DEFAULT_NAMESPACE))
    if not missing or _renders(renderer, template, context, label):  # it may test them (``is defined``)
        return  # (a template that includes others cannot be told: the judge's own rendering reports it)
    # The ones it cannot do without: each left out while the others are given.
    needed = [name for name in missing if not _renders(
        renderer, template, {**context, **{other: "" for other in missing if other != name}}, label)]
    if needed:
        names = ", ".join(map(repr, needed))
        raise PromptError(
            f"{label}: the evaluator template {template!r} uses {names}, which the recorded conversation "
            f"{scenario.name!r} does not define; add {'it' if len(needed) == 1 else 'them'} under 'variables' "
            "(in the conversation, or for the whole file in its sidecar <file>.meta.yaml), or name a template "
            "without them in 'evaluator: {template: ...}'. The conversation was not judged."
        )


def _renders(renderer: PromptRenderer, template: str, context: dict[str, Any], label: str) -> bool:
    try:
        renderer.render(template, context, scenario_label=label)
    except PromptError:
        return False
    return True
