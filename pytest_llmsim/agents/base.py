"""What every agent kind shares (no pytest): the context and reply types, tool-call normalisation at the
agent boundary (strict JSON, size bounds), the session and driver base classes, and the thread helpers that
run user code off the event loop.

Why one module: the reply types and their checks at the agent boundary are the one contract every agent kind
(python, http, openai, the framework adapters) returns through; splitting them would let two kinds check a reply
two ways."""


from __future__ import annotations

import asyncio
import inspect
import json
import math
import re
import reprlib
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmsim.agents.specs import shorten, spec_identity
from pytest_llmsim.model.names import strip_invisible

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import AgentSpec

_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)  # the whole package, not only agents/
FACTORY_ATTRIBUTE = "__llmsim_agent_factory__"




@dataclass(frozen=True)
class AgentContext:
    """What a python agent knows about its conversation besides the messages."""

    scenario: str
    variables: Mapping[str, Any]
    seed: int | None
    session_id: str


def agent_factory(function: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``function`` as a factory: called once per conversation (with the ``AgentContext`` if it takes an
    argument), it returns the callable that answers each turn, so the agent can keep per-conversation state."""
    setattr(function, FACTORY_ATTRIBUTE, True)
    return function


@dataclass
class AgentReply:
    """One agent turn: its text, tool calls (``{"name", "arguments", "result"}``) and whether it ends the call.

    A multi-agent turn also has ``messages`` (``{"agent", "content", "tool_calls"?}``, one per speaker's message,
    in order) and ``handoffs`` (``{"from", "to", "reason"?}``); then ``text`` is the messages' contents joined by a
    blank line and ``tool_calls`` all their tool calls in order, so single-speaker code reads it as before. A
    single-speaker reply has neither (empty lists)."""

    text: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    end: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    model: str = ""
    metered: bool = False  # an LLM call (openai agents): counted in the scenario's usage
    messages: list[dict[str, Any]] = field(default_factory=list)
    handoffs: list[dict[str, Any]] = field(default_factory=list)


# -- replies and tool calls ---------------------------------------------------------------------------------------
MAX_JSON_DEPTH = 64  # nesting levels of a tool call's arguments or result
MAX_AGENT_REPLY_BYTES = 1_000_000  # one agent turn: its text and tool calls (UTF-8)
_JSON_KINDS = "a string, a finite number, true/false, null, a list or an object with string keys"


def _parse_arguments(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except (ValueError, RecursionError):  # not JSON (or nested past the parser's limit): kept as text
            return arguments
    return {} if arguments is None else arguments


def _lone_surrogate(text: str) -> str | None:
    """A description of the first lone surrogate in ``text`` (not valid Unicode: no UTF-8 file, cache or report
    can hold it), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a lone surrogate {text[exc.start]!r} at index {exc.start}"
    return None


def strict_json(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` as plain JSON data (dicts, lists, str, int, float, bool, None; tuples become lists, mappings
    dicts), or TypeError naming ``where`` (extended by the path to the offending value) and the value's kind:
    NaN/infinity, a set or any other object, a non-string key, a lone surrogate, nesting past MAX_JSON_DEPTH
    levels (a cycle included). What an agent reports must survive the cache, the recordings and every report."""
    if depth > MAX_JSON_DEPTH:
        raise TypeError(f"{where} nests deeper than {MAX_JSON_DEPTH} levels (or refers to itself); a tool call's "
                        f"data must be {_JSON_KINDS}")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}, which JSON cannot hold; a tool call's data must be {_JSON_KINDS}")
        return float(value)
    if isinstance(value, str):
        problem = _lone_surrogate(value)
        if problem is not None:
            raise TypeError(f"{where} holds {problem} (not valid Unicode text)")
        return str(value)
    if isinstance(value, Mapping):
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a {type(key).__name__} key; a tool call's data must be {_JSON_KINDS}")
            problem = _lone_surrogate(key)
            if problem is not None:
                raise TypeError(f"{where} has a key holding {problem} (not valid Unicode text)")
            copy[str(key)] = strict_json(item, f"{where}.{shorten(key, 40)}", depth + 1)
        return copy
    if isinstance(value, list | tuple):
        return [strict_json(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise TypeError(f"{where} is a {type(value).__name__}, not JSON data; a tool call's data must be {_JSON_KINDS}")


def end_flag(value: Any, where: str = "'end'") -> bool:
    """A reply's ``end``: true or false (absent/null: false). Anything else is a TypeError: ``"false"`` is a
    non-empty string, and taking it as truthy would end the call the agent meant to continue."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise TypeError(f"{where} must be true or false (or absent), got {type(value).__name__} {shorten(repr(value), 60)}")


def reply_size_error(text: str, tool_calls: list[dict[str, Any]], what: str,
                     limit: int = MAX_AGENT_REPLY_BYTES, handoffs: list[dict[str, Any]] | None = None) -> str | None:
    """Why an agent turn is too large to keep (its text, tool calls and handoffs over ``limit`` UTF-8 bytes), or None.
    A reply that size would be copied into the transcript, the customer's and the judge's prompts, the cache
    and every report: many times its size in memory."""
    size = len(text) if len(text) * 4 <= limit else len(text.encode("utf-8", "surrogatepass"))
    if tool_calls and size <= limit:
        size += len(json.dumps(tool_calls, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if handoffs and size <= limit:
        size += len(json.dumps(handoffs, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if size <= limit:
        return None
    return (f"{what} replied with {size:,} bytes (text and tool calls), more than the {limit:,} bytes an agent "
            "turn may have; an agent that answers with a whole document, a log or a runaway loop is a bug in it")


def normalize_tool_call(call: Any, results: Mapping[str, Any] | None = None, *,
                        index: int | None = None) -> dict[str, Any]:
    """``{"name", "arguments", "result"}`` from our shape or OpenAI's (``{"id", "type": "function", "function":
    {"name", "arguments": "<json>"}}``); arguments are parsed from JSON when they parse, else kept as text.
    Arguments and result must be JSON data (``strict_json``): TypeError naming the call (``index``: its
    position in the turn) and the offending value otherwise."""
    if not isinstance(call, Mapping):
        raise TypeError(f"a tool call must be an object, got {type(call).__name__}")
    function = call.get("function")
    if isinstance(function, Mapping):
        name, arguments = function.get("name"), function.get("arguments")
        result = call.get("result")
        if result is None and results is not None and call.get("id") in results:
            result = results[call["id"]]
    else:
        name, arguments, result = call.get("name"), call.get("arguments"), call.get("result")
    if not isinstance(name, str) or not name:
        raise TypeError(f"a tool call needs a non-empty 'name' (got {shorten(reprlib.repr(call))})")
    where = f"{'tool call' if index is None else f'tool call #{index + 1}'} {shorten(name, 60)!r}"
    name = strict_json(name, f"{where}: its name")
    arguments = strict_json(_parse_arguments(arguments), f"{where}: arguments")
    result = strict_json(_parse_arguments(result) if isinstance(result, str) else result, f"{where}: result")
    return {"name": name, "arguments": arguments, "result": result}


def normalize_tool_calls(calls: Any, results: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    if not calls:
        return []
    if not isinstance(calls, list | tuple):
        raise TypeError(f"'tool_calls' must be a list, got {type(calls).__name__}")
    return [normalize_tool_call(call, results, index=i) for i, call in enumerate(calls)]


# -- multi-agent turns --------------------------------------------------------------------------------------------
MAX_TURN_MESSAGES = 256  # messages (and handoffs) in one agent turn: more is a loop between agents
MAX_AGENT_NAME = 200  # characters of an agent's name
_MULTI_KEYS = frozenset({"messages", "handoffs", "end"})
_MESSAGE_KEYS = frozenset({"agent", "content", "tool_calls"})
_HANDOFF_KEYS = frozenset({"from", "to", "reason"})
_NAME_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def is_multi_agent(value: Any) -> bool:
    """Whether ``value`` is a multi-agent reply: a mapping with ``messages``."""
    return isinstance(value, Mapping) and "messages" in value


def agent_name(value: Any, where: str) -> str:
    """An agent's name as a message or handoff gives it (``strip_invisible``: a zero-width space alone is empty): a
    non-empty string of at most MAX_AGENT_NAME characters on one line (no control characters), valid Unicode;
    TypeError naming ``where`` otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{where} must be an agent's name (a string), got {type(value).__name__} "
                        f"{shorten(reprlib.repr(value), 60)}")
    name = strip_invisible(value)
    if not name:
        raise TypeError(f"{where} is empty{' (only invisible characters)' if value.strip() else ''}: name the agent")
    if len(name) > MAX_AGENT_NAME:
        raise TypeError(f"{where} is {len(name):,} characters long, more than the {MAX_AGENT_NAME} an agent's name "
                        "may have")
    if _NAME_CONTROL.search(name):
        raise TypeError(f"{where} {shorten(repr(name), 60)} holds a line break or control character; an agent's "
                        "name is one line")
    problem = _lone_surrogate(name)
    if problem is not None:
        raise TypeError(f"{where} holds {problem} (not valid Unicode text)")
    return str(name)


def _an_object(value: Any, allowed: frozenset[str], where: str) -> None:
    """TypeError unless ``value`` is a mapping with only ``allowed`` keys."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be an object with {', '.join(sorted(allowed))}, got {type(value).__name__}")
    _unknown_keys(value, allowed, where)


def _unknown_keys(value: Mapping[Any, Any], allowed: frozenset[str], where: str) -> None:
    unknown = [key for key in value if key not in allowed]
    if unknown:
        raise TypeError(f"{where} has unknown key(s) {', '.join(shorten(repr(k), 40) for k in unknown[:3])}; "
                        f"allowed: {', '.join(sorted(allowed))}")


def read_multi_agent(value: Mapping[str, Any], results: Mapping[str, Any] | None = None) -> AgentReply:
    """A multi-agent reply ``{"messages": [{"agent", "content", "tool_calls"}], "handoffs": [{"from", "to",
    "reason"}], "end"}`` checked field by field: TypeError naming the field (``messages[2].agent``) otherwise.
    At most MAX_TURN_MESSAGES messages and as many handoffs."""
    _unknown_keys(value, _MULTI_KEYS, "the reply")
    raw_messages, raw_handoffs = value.get("messages"), value.get("handoffs")
    if not isinstance(raw_messages, list | tuple):
        raise TypeError(f"'messages' must be a list of {{\"agent\", \"content\", \"tool_calls\"}}, got "
                        f"{type(raw_messages).__name__}")
    if raw_handoffs is None:
        raw_handoffs = []
    if not isinstance(raw_handoffs, list | tuple):
        raise TypeError(f"'handoffs' must be a list of {{\"from\", \"to\", \"reason\"}}, got "
                        f"{type(raw_handoffs).__name__}")
    for name, items in (("messages", raw_messages), ("handoffs", raw_handoffs)):
        if len(items) > MAX_TURN_MESSAGES:
            raise TypeError(f"'{name}' has {len(items):,} entries, more than the {MAX_TURN_MESSAGES} one agent turn "
                            "may have; agents handing a turn back and forth that often is a bug (a loop)")
    messages: list[dict[str, Any]] = []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, message in enumerate(raw_messages):
        where = f"messages[{i}]"
        _an_object(message, _MESSAGE_KEYS, where)
        if "agent" not in message:
            raise TypeError(f"{where} has no 'agent': name the agent that said it")
        speaker = agent_name(message["agent"], f"{where}.agent")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise TypeError(f"{where}.content must be a string or null, got {type(content).__name__}")
        content = strict_json(content or "", f"{where}.content")
        try:
            message_calls = normalize_tool_calls(message.get("tool_calls"), results)
        except TypeError as exc:
            raise TypeError(f"{where}.tool_calls: {exc}") from None
        entry: dict[str, Any] = {"agent": speaker, "content": content}
        if message_calls:
            entry["tool_calls"] = message_calls
            calls.extend(message_calls)
        messages.append(entry)
        if content:
            texts.append(content)
    handoffs: list[dict[str, Any]] = []
    for i, handoff in enumerate(raw_handoffs):
        where = f"handoffs[{i}]"
        _an_object(handoff, _HANDOFF_KEYS, where)
        for key in ("from", "to"):
            if key not in handoff:
                raise TypeError(f"{where} has no '{key}': name the agent the turn was handed {key}")
        entry = {"from": agent_name(handoff["from"], f"{where}.from"), "to": agent_name(handoff["to"], f"{where}.to")}
        reason = handoff.get("reason")
        if reason is not None:
            if not isinstance(reason, str):
                raise TypeError(f"{where}.reason must be a string or null, got {type(reason).__name__}")
            if reason:
                entry["reason"] = strict_json(reason, f"{where}.reason")
        handoffs.append(entry)
    return AgentReply("\n\n".join(texts), calls, end_flag(value.get("end")), messages=messages, handoffs=handoffs)


def scrub_reply(reply: AgentReply, scrub: Callable[[str], str]) -> AgentReply:
    """``reply`` with ``scrub`` applied to every text it holds: its text, tool calls, messages (names and contents)
    and handoffs (names and reasons); the run's secrets never reach the cache, recordings or reports."""
    from pytest_llmsim.llm.scrubbing import scrub_data

    reply.text = scrub(reply.text)
    if reply.tool_calls:
        reply.tool_calls = scrub_data(reply.tool_calls, scrub)
    if reply.messages:
        reply.messages = scrub_data(reply.messages, scrub)
    if reply.handoffs:
        reply.handoffs = scrub_data(reply.handoffs, scrub)
    return reply


def parse_reply(value: Any) -> AgentReply:
    """What an agent returned as an AgentReply: a multi-agent reply (``read_multi_agent``) or any shape
    ``read_reply`` reads (a list of OpenAI messages whose assistant messages carry ``name`` gives one message per
    named speaker). TypeError says what is wrong."""
    if is_multi_agent(value):
        return read_multi_agent(value)
    if isinstance(value, Mapping) and value.get("name") is not None:
        return named_messages([value])
    if isinstance(value, list | tuple) and value and all(isinstance(m, Mapping) for m in value) \
            and any(m.get("name") is not None and m.get("role", "assistant") == "assistant" for m in value):
        return named_messages(value)
    text, calls, end = read_reply(value)
    return AgentReply(text, calls, end)


def named_messages(value: list[Any] | tuple[Any, ...]) -> AgentReply:
    """OpenAI messages whose assistant messages carry ``name`` (OpenAI's field for the speaker; one without it is
    "assistant") as a multi-agent reply, tool results matched by id; the checks of ``read_multi_agent``."""
    results = {m.get("tool_call_id"): m.get("content") for m in value if m.get("role") == "tool"}
    shaped = []
    end = False
    for i, message in enumerate(value):
        if message.get("role", "assistant") != "assistant":
            continue
        name = message.get("name")
        shaped.append({"agent": agent_name(name, f"messages[{i}].name") if name is not None else "assistant",
                       "content": message.get("content"), "tool_calls": message.get("tool_calls")})
        end = end or end_flag(message.get("end"), f"messages[{i}].end")
    return read_multi_agent({"messages": shaped, "end": end}, results)


def read_reply(value: Any) -> tuple[str, list[dict[str, Any]], bool]:
    """``(text, tool_calls, end)`` from what an agent returned: a string; a message ``{"content", "tool_calls",
    "end"}``; or a list of messages (assistant messages with ``tool_calls``, ``tool`` messages with their results,
    the last assistant text). TypeError says what is wrong."""
    if isinstance(value, str):
        return value, [], False
    if isinstance(value, Mapping):
        content = value.get("content")
        if content is not None and not isinstance(content, str):
            raise TypeError(f"'content' must be a string or null, got {type(content).__name__}")
        return content or "", normalize_tool_calls(value.get("tool_calls")), end_flag(value.get("end"))
    if isinstance(value, list | tuple) and value and all(isinstance(m, Mapping) for m in value):
        results = {m.get("tool_call_id"): m.get("content") for m in value if m.get("role") == "tool"}
        text, calls, end = "", [], False
        for message in value:
            if message.get("role", "assistant") != "assistant":
                continue
            part, part_calls, part_end = read_reply(message)
            calls += normalize_tool_calls(message.get("tool_calls"), results) if part_calls else []
            text, end = part or text, end or part_end
        return text, calls, end
    raise TypeError(f"expected a string, a message dict with 'content' (and optional 'tool_calls', 'end') or a "
                    f"list of messages; got {type(value).__name__} {shorten(reprlib.repr(value))}")


def openai_tool_calls(turn_number: int, calls: list[dict[str, Any]], start: int = 0) -> list[dict[str, Any]]:
    """Our tool calls in the OpenAI shape (ids are stable: ``call_<turn>_<i>``, so requests stay cacheable;
    ``start``: the index of the first, for the later messages of a multi-agent turn)."""
    return [{"id": f"call_{turn_number}_{i}", "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"] if isinstance(c["arguments"], str)
                          else json.dumps(c["arguments"], ensure_ascii=False, sort_keys=True)}}
            for i, c in enumerate(calls, start)]


def agent_view(role: str, text: str, tool_calls: list[dict[str, Any]], turn_number: int, *,
               results_only: bool = False, messages: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The OpenAI-style messages one transcript turn adds to the agent's side of the conversation: a customer
    turn is ``user``; an agent turn ``assistant`` (with its ``tool_calls`` and one ``tool`` message per reported
    result). ``results_only`` leaves out tool calls without a result (an OpenAI endpoint rejects a tool call
    that no tool message answers). A multi-agent turn (``messages``) is one ``assistant`` message per speaker's
    message, with OpenAI's ``name`` field naming the speaker."""
    if role != "agent":
        return [{"role": "user", "content": text}]
    if messages:
        view: list[dict[str, Any]] = []
        start = 0
        for message in messages:
            calls = message.get("tool_calls") or []
            part = _assistant_view(str(message.get("content") or ""), calls, turn_number, results_only, start)
            part[0]["name"] = message["agent"]
            view.extend(part)
            start += len(calls)
        return view
    return _assistant_view(text, tool_calls, turn_number, results_only, 0)


def _assistant_view(text: str, tool_calls: list[dict[str, Any]], turn_number: int, results_only: bool,
                    start: int) -> list[dict[str, Any]]:
    if not tool_calls:
        return [{"role": "assistant", "content": text}]
    shown = [c for c in tool_calls if c.get("result") is not None] if results_only else tool_calls
    if not shown:
        return [{"role": "assistant", "content": text}]
    wire = openai_tool_calls(turn_number, shown, start)
    messages: list[dict[str, Any]] = [{"role": "assistant", "content": text or None, "tool_calls": wire}]
    for call, sent in zip(shown, wire, strict=True):
        if call.get("result") is not None:
            result = call["result"]
            messages.append({"role": "tool", "tool_call_id": sent["id"], "content": result if isinstance(result, str)
                             else json.dumps(result, ensure_ascii=False, sort_keys=True)})
    return messages


# -- sessions -------------------------------------------------------------------------------------------------------
class AgentSession:
    """One conversation with the agent under test."""

    async def reply(self, messages: list[dict[str, Any]], *, label: str) -> AgentReply:
        raise NotImplementedError


class AgentDriver:
    """One agent spec, resolved once per run."""

    kind = ""
    results_only = False  # see ``agent_view``

    def __init__(self, spec: AgentSpec) -> None:
        self.spec = spec
        self.identity = spec_identity(spec)

    async def open(self, context: AgentContext, *, label: str) -> AgentSession:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def positional_arity(function: Callable[..., Any]) -> int:
    """How many positional arguments ``function`` takes (3 for ``*args``); 2 when it cannot be told."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return 2
    count = 0
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return 3
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def is_async_callable(function: Any) -> bool:
    if inspect.iscoroutinefunction(function):
        return True
    return not inspect.isroutine(function) and inspect.iscoroutinefunction(type(function).__call__)


def user_traceback(exc: BaseException) -> str:
    """``exc`` with only the frames of the user's code (not llmsim's, asyncio's or the thread pool's)."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if not frame.filename.startswith(_PACKAGE_DIR)
              and not re.search(r"[/\\](asyncio|concurrent)[/\\]", frame.filename)]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames),
             *traceback.format_exception_only(type(exc), exc)]
    return "".join(lines).rstrip()


def run_in_daemon_thread(function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """``function(*args)`` in a daemon thread, awaited on the running loop.

    Not ``asyncio.to_thread``: the default executor's threads are joined when the interpreter exits, so an agent
    stuck in a blocking call (its conversation long since stopped by its timeout) would hang pytest at exit.
    A daemon thread is left behind instead: the item has already errored, and the process still ends.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # cancelled meanwhile (the conversation timed out): nobody waits any more
            outcome()

    def target() -> None:
        try:
            value = function(*args)
        except BaseException as exc:  # delivered to the awaiting conversation, which reports it
            error = exc
            call = lambda: settle(lambda: future.set_exception(error))  # noqa: E731
        else:
            call = lambda: settle(lambda: future.set_result(value))  # noqa: E731
        try:
            loop.call_soon_threadsafe(call)
        except RuntimeError:  # the loop is closed: the run is over
            pass

    threading.Thread(target=target, name="llmsim-agent", daemon=True).start()
    return future


