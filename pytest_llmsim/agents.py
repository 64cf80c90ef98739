"""The agent under test when it is code: a Python callable, an HTTP service or an OpenAI-compatible endpoint.

A scenario (or the suite, through ``llmsim_agent``) chooses its agent under ``agent:``; the prompt agent (an LLM
driven by a jinja2 template) stays in ``conversation.py``. Each kind here is resolved once per spec and run
(``AgentRuntime.driver``): the import of a python agent, its signature and whether it is async or a factory are
worked out then, never per turn. Per conversation ``AgentDriver.open`` gives an ``AgentSession`` whose
``reply`` answers one turn from the conversation so far, as OpenAI-style messages from the agent's side.

Code agents are called live by default: they are what changes between runs, while the customer and the judge
replay from the cache. ``agent_cache: true`` routes their replies through the cache too (``CachedSession``),
keyed by the agent's kind and identity (``module:name``, the URL without credentials, base URL + model), never
by header values or keys.

Trouble in the agent is an ``AgentError`` (kind ``agent_error``), never a score: a python agent's exception
is shown with its own traceback; an HTTP agent's failure after bounded retries names the URL, the status and
the start of its reply, with every header value scrubbed.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
import math
import os
import random
import re
import reprlib
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from .cache import request_key
from .errors import AgentError, CacheMissError, ConfigError, EndpointError, LlmsimError
from .recordings import CURRENT as RECORDER
from .scrubbing import RunSecrets, header_secrets, scrub_data
from .settings import EndpointSettings, redact_url, url_secrets

if TYPE_CHECKING:
    from .cache import CallCache
    from .client import LLMClient
    from .scenario import AgentSpec, HttpAgentSpec, OpenAIAgentSpec
    from .settings import RunSettings

_SHOWN = 200  # characters of an agent's reply or text quoted in an error
_RETRYABLE = {408, 409, 429, 500, 502, 503, 504}
_REDIRECTS = {301, 302, 303, 307, 308}
_MAX_REDIRECTS = 5
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
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
    """One agent turn: its text, tool calls (``{"name", "arguments", "result"}``) and whether it ends the call."""

    text: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    end: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    model: str = ""
    metered: bool = False  # an LLM call (openai agents): counted in the scenario's usage


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
            copy[str(key)] = strict_json(item, f"{where}.{_short(key, 40)}", depth + 1)
        return copy
    if isinstance(value, list | tuple):
        return [strict_json(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise TypeError(f"{where} is a {type(value).__name__}, not JSON data; a tool call's data must be {_JSON_KINDS}")


def _end_flag(value: Any, where: str = "'end'") -> bool:
    """A reply's ``end``: true or false (absent/null: false). Anything else is a TypeError: ``"false"`` is a
    non-empty string, and taking it as truthy would end the call the agent meant to continue."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise TypeError(f"{where} must be true or false (or absent), got {type(value).__name__} {_short(repr(value), 60)}")


def reply_size_error(text: str, tool_calls: list[dict[str, Any]], what: str,
                     limit: int = MAX_AGENT_REPLY_BYTES) -> str | None:
    """Why an agent turn is too large to keep (its text and tool calls over ``limit`` UTF-8 bytes), or None.
    A reply that size would be copied into the transcript, the customer's and the judge's prompts, the cache
    and every report: many times its size in memory."""
    size = len(text) if len(text) * 4 <= limit else len(text.encode("utf-8", "surrogatepass"))
    if tool_calls and size <= limit:
        size += len(json.dumps(tool_calls, ensure_ascii=False).encode("utf-8", "surrogatepass"))
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
        raise TypeError(f"a tool call needs a non-empty 'name' (got {_short(reprlib.repr(call))})")
    where = f"{'tool call' if index is None else f'tool call #{index + 1}'} {_short(name, 60)!r}"
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
        return content or "", normalize_tool_calls(value.get("tool_calls")), _end_flag(value.get("end"))
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
                    f"list of messages; got {type(value).__name__} {_short(reprlib.repr(value))}")


def openai_tool_calls(turn_number: int, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our tool calls in the OpenAI shape (ids are stable: ``call_<turn>_<i>``, so requests stay cacheable)."""
    return [{"id": f"call_{turn_number}_{i}", "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"] if isinstance(c["arguments"], str)
                          else json.dumps(c["arguments"], ensure_ascii=False, sort_keys=True)}}
            for i, c in enumerate(calls)]


def agent_view(role: str, text: str, tool_calls: list[dict[str, Any]], turn_number: int, *,
               results_only: bool = False) -> list[dict[str, Any]]:
    """The OpenAI-style messages one transcript turn adds to the agent's side of the conversation: a customer
    turn is ``user``; an agent turn ``assistant`` (with its ``tool_calls`` and one ``tool`` message per reported
    result). ``results_only`` leaves out tool calls without a result (an OpenAI endpoint rejects a tool call
    that no tool message answers)."""
    if role != "agent":
        return [{"role": "user", "content": text}]
    if not tool_calls:
        return [{"role": "assistant", "content": text}]
    shown = [c for c in tool_calls if c.get("result") is not None] if results_only else tool_calls
    if not shown:
        return [{"role": "assistant", "content": text}]
    wire = openai_tool_calls(turn_number, shown)
    messages: list[dict[str, Any]] = [{"role": "assistant", "content": text or None, "tool_calls": wire}]
    for call, sent in zip(shown, wire, strict=True):
        if call.get("result") is not None:
            result = call["result"]
            messages.append({"role": "tool", "tool_call_id": sent["id"], "content": result if isinstance(result, str)
                             else json.dumps(result, ensure_ascii=False, sort_keys=True)})
    return messages


# -- specs ----------------------------------------------------------------------------------------------------------
def parse_agent_spec(text: str, where: str = "llmsim_agent") -> AgentSpec | None:
    """The suite-wide agent spec from ini/command-line text: an inline YAML/JSON mapping such as
    ``{python: "bots.shop:ShopBot"}``; ConfigError naming ``where`` and the field otherwise. Empty: None."""
    if not text or not text.strip():
        return None
    import yaml
    from pydantic import ValidationError

    from .scenario import AgentSpec

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not a YAML/JSON mapping ({str(exc).splitlines()[0]}); write e.g. "
                          "{python: \"bots.shop:ShopBot\"}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping such as {{python: \"bots.shop:ShopBot\"}}, got {text!r}")
    try:
        spec = AgentSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"field '{'.'.join(str(p) for p in err['loc']) or 'agent'}': "
                             f"{err['msg'].removeprefix('Value error, ')}" for err in exc.errors())
        raise ConfigError(f"{where}: {problems}") from None
    if spec.kind == "prompt":
        raise ConfigError(f"{where} must name one of python, http or openai; the prompt agent is set with "
                          "llmsim_agent_model / llmsim_agent_template / llmsim_agent_temperature / "
                          "llmsim_agent_max_tokens")
    return spec


@functools.cache
def _object_spec_class() -> type[AgentSpec]:
    from pydantic import PrivateAttr

    from .scenario import AgentSpec

    class ObjectAgentSpec(AgentSpec):
        """A python agent given as the object itself (the ``llmsim`` fixture's ``agent=``), not an import path:
        ``python`` only names it (``module:qualname``) in messages and cache keys; ``_target`` is the object.
        A ``Scenario`` keeps this instance as it is (pydantic does not revalidate model instances)."""

        _target: Any = PrivateAttr(default=None)

    return ObjectAgentSpec


def object_agent_spec(target: Any) -> AgentSpec:
    """An agent spec for an in-memory python agent: a callable answering one turn, a class, or an
    ``agent_factory`` function, exactly as ``{python: "module:name"}`` would import it. TypeError if ``target``
    is not callable."""
    if not callable(target):
        raise TypeError(f"must be a callable, a class, an agent_factory function or a spec mapping such as "
                        f"{{\"http\": {{...}}}}; got {type(target).__name__} {_short(repr(target))}")
    module = getattr(target, "__module__", None) or type(target).__module__
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    spec = _object_spec_class().model_construct(python=f"{module}:{name}")
    spec._target = target
    return spec


def object_agent_target(spec: AgentSpec) -> Any:
    """The in-memory object of a spec made by ``object_agent_spec``; None for any other spec."""
    return getattr(spec, "_target", None) if type(spec) is _object_spec_class() else None


def spec_identity(spec: AgentSpec) -> str:
    """What names the agent in cache keys and messages: never a header value or a key."""
    if spec.python is not None:
        return spec.python
    if spec.http is not None:
        return redact_url(spec.http.url)
    assert spec.openai is not None
    return f"{redact_url(spec.openai.base_url).rstrip('/')} {spec.openai.model}"


def describe_spec(spec: AgentSpec) -> str:
    return f"{spec.kind} agent {spec_identity(spec)!r}"


def _short(text: str, limit: int = _SHOWN) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


def _positional_arity(function: Callable[..., Any]) -> int:
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


def _is_async(function: Any) -> bool:
    if inspect.iscoroutinefunction(function):
        return True
    return not inspect.isroutine(function) and inspect.iscoroutinefunction(type(function).__call__)


def _user_traceback(exc: BaseException) -> str:
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


class _Caller:
    """Calls a user callable with 0, 1 or 2 of ``(messages, context)``: sync ones in a worker thread (a blocking
    agent must not stall every conversation of the process), async ones on the loop. Worked out once."""

    __slots__ = ("arity", "function", "is_async")

    def __init__(self, function: Callable[..., Any], shape: tuple[int, bool] | None = None) -> None:
        self.function = function
        self.arity, self.is_async = shape if shape is not None else (min(_positional_arity(function), 2),
                                                                     _is_async(function))

    async def __call__(self, *args: Any) -> Any:
        args = args[: self.arity]
        if self.is_async:
            return await self.function(*args)
        value = await run_in_daemon_thread(self.function, *args)
        if inspect.isawaitable(value):
            value = await value
        return value


class _PythonSession(AgentSession):
    __slots__ = ("caller", "context", "driver")

    def __init__(self, driver: PythonDriver, caller: _Caller, context: AgentContext) -> None:
        self.driver, self.caller, self.context = driver, caller, context

    async def reply(self, messages: list[dict[str, Any]], *, label: str) -> AgentReply:
        started = time.perf_counter()
        try:
            value = await self.caller(messages, self.context)
        except asyncio.CancelledError:
            raise  # the conversation's timeout (or the run's end), not the agent's trouble
        except BaseException as exc:  # sys.exit() and KeyboardInterrupt too: see ``agent_raised``
            raise agent_raised(f"{label}: the python agent {self.driver.identity!r}", exc) from None
        try:
            text, calls, end = read_reply(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise AgentError(f"{label}: the python agent {self.driver.identity!r} returned an unusable reply: "
                             f"{exc}") from None
        return AgentReply(text, calls, end, latency_s=round(time.perf_counter() - started, 4))


def agent_raised(what: str, exc: BaseException, doing: str = "raised") -> AgentError:
    """The AgentError for a python agent's exception, with its own traceback. ``SystemExit`` and
    ``KeyboardInterrupt`` included: the agent runs in the engine's loop thread or a worker thread, where no
    Ctrl-C arrives (Python delivers SIGINT to the main thread, which stops the run there), so one raised there
    comes from the agent's own code; let through, it would kill the loop thread every conversation waits on."""
    note = ""
    if isinstance(exc, SystemExit | KeyboardInterrupt):
        note = (f" ({'sys.exit()' if isinstance(exc, SystemExit) else 'KeyboardInterrupt'} in an agent ends neither "
                "the run nor pytest: the item errors)")
    detail = f": {_short(str(exc))}" if str(exc) else ""
    return AgentError(f"{what} {doing} {type(exc).__name__}{detail}{note}\n{_user_traceback(exc)}")


class PythonDriver(AgentDriver):
    """``agent: {python: "package.module:name"}``: a callable answering one turn, or a factory (a class, or a
    function marked with ``agent_factory``) called once per conversation; sync or async."""

    kind = "python"

    def __init__(self, spec: AgentSpec, rootdir: Path | None) -> None:
        super().__init__(spec)
        assert spec.python is not None
        target: Any = object_agent_target(spec)
        if target is None:
            target = self._import(spec.python, rootdir)
        attribute = spec.python.partition(":")[2]
        if not callable(target):
            raise AgentError(f"agent {{python: {spec.python!r}}}: {attribute!r} is a {type(target).__name__}, not a "
                             "callable, a class or a factory")
        self.is_factory = inspect.isclass(target) or bool(getattr(target, FACTORY_ATTRIBUTE, False))
        self.target = target
        self._factory = _Caller(target) if self.is_factory and not inspect.isclass(target) else None
        self._turn = None if self.is_factory else _Caller(target)
        self._class_arity = _positional_arity(target) if inspect.isclass(target) else 0
        self._shapes: dict[type, tuple[int, bool]] = {}  # per class of the per-conversation agents

    @staticmethod
    def _import(path: str, rootdir: Path | None) -> Any:
        module_name, _, attribute = path.partition(":")
        if rootdir is not None and str(rootdir) not in sys.path:
            sys.path.insert(0, str(rootdir))
        try:
            target: Any = importlib.import_module(module_name)
        except Exception as exc:
            where = f" (from {rootdir})" if rootdir is not None else ""
            details = "" if isinstance(exc, ModuleNotFoundError) and exc.name == module_name \
                else f"\n{_user_traceback(exc)}"
            raise AgentError(f"agent {{python: {path!r}}}: cannot import module {module_name!r}{where}: "
                             f"{type(exc).__name__}: {exc}{details}") from None
        for part in attribute.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise AgentError(f"agent {{python: {path!r}}}: module {module_name!r} has no attribute "
                                 f"{attribute!r}") from None
        return target

    async def open(self, context: AgentContext, *, label: str) -> AgentSession:
        if self._turn is not None:
            return _PythonSession(self, self._turn, context)
        try:
            if self._factory is not None:
                agent = await self._factory(context)
            else:
                agent = self.target(context) if self._class_arity >= 1 else self.target()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            raise agent_raised(f"{label}: creating the python agent {self.identity!r}", exc) from None
        turn = getattr(agent, "respond", None) or agent
        if not callable(turn):
            raise AgentError(f"{label}: the python agent {self.identity!r} made a {type(agent).__name__}, which has "
                             "no respond() method and is not callable")
        if inspect.isfunction(turn):  # a closure from a factory function: its own signature
            caller = _Caller(turn)
        else:  # a method or a callable object: its class's signature, worked out once
            shape = self._shapes.get(type(agent))
            caller = _Caller(turn, shape)
            self._shapes.setdefault(type(agent), (caller.arity, caller.is_async))
        return _PythonSession(self, caller, context)


# -- http ------------------------------------------------------------------------------------------------------------
def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, the port spelled out when it is the scheme's default."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def _lookup(data: Any, path: str) -> Any:
    """``data`` at the dotted ``path`` (list indices are numbers); KeyError naming the step that failed."""
    current = data
    for step in path.split("."):
        if isinstance(current, list) and step.lstrip("-").isdigit() and -len(current) <= int(step) < len(current):
            current = current[int(step)]
        elif isinstance(current, Mapping) and step in current:
            current = current[step]
        else:
            raise KeyError(step)
    return current


def fill_template(template: Any, values: Mapping[str, Any]) -> Any:
    """The body template with its placeholders filled, walked as data: a string that is exactly one
    ``{{ name }}`` becomes the value itself (a list stays a list), placeholders inside text become text."""
    if isinstance(template, str):
        whole = _PLACEHOLDER_RE.fullmatch(template.strip())
        if whole is not None and whole.group(1) in values:
            return values[whole.group(1)]

        def text(match: re.Match[str]) -> str:
            value = values.get(match.group(1), match.group(0))
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

        return _PLACEHOLDER_RE.sub(text, template) if "{{" in template else template
    if isinstance(template, Mapping):
        return {key: fill_template(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [fill_template(value, values) for value in template]
    return template


DEFAULT_HTTP_BODY = {"message": "{{ message }}", "session_id": "{{ session_id }}"}


class _HttpSession(AgentSession):
    __slots__ = ("context", "driver", "turn")

    def __init__(self, driver: HttpDriver, context: AgentContext) -> None:
        self.driver, self.context, self.turn = driver, context, 0

    async def reply(self, messages: list[dict[str, Any]], *, label: str) -> AgentReply:
        self.turn += 1
        last_user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
        values = {"message": last_user, "messages": messages, "session_id": self.context.session_id,
                  "scenario": self.context.scenario, "variables": dict(self.context.variables), "turn": self.turn,
                  "seed": self.context.seed}
        return await self.driver.post(fill_template(self.driver.body, values), label=label)


class HttpDriver(AgentDriver):
    """``agent: {http: {url, body, reply, headers}}``: one POST per agent turn, with bounded retries on 408/409/
    429/5xx, timeouts and connection errors, one deadline per attempt, and every header value scrubbed."""

    kind = "http"

    def __init__(self, spec: AgentSpec, settings: RunSettings, secrets: RunSecrets) -> None:
        super().__init__(spec)
        assert spec.http is not None
        self.http: HttpAgentSpec = spec.http
        self.body = self.http.body if self.http.body is not None else DEFAULT_HTTP_BODY
        self.endpoint = settings.endpoint
        self.timeout = self.http.timeout or settings.endpoint.request_timeout
        self._secrets = secrets  # the run's: header values as read, URL credentials, every other endpoint's
        secrets.add(url_secrets(self.http.url))
        self._client: Any = None
        # As for LLM calls: a service that has never answered and then times out is taken as hung, and later
        # requests fail at once instead of each waiting out the deadline again; any answer clears it.
        self._answered = False
        self._hung = False

    def _headers(self, label: str) -> dict[str, str]:
        """Header values with ``${VAR}`` read from the environment now (a rotated token is picked up)."""
        headers = {"Content-Type": "application/json"}
        for name, raw in self.http.headers.items():
            def env(match: re.Match[str], header: str = name) -> str:
                value = os.environ.get(match.group(1))
                if value is None:
                    raise AgentError(f"{label}: environment variable {match.group(1)} (named in the http agent's "
                                     f"header {header!r}) is not set")
                return value

            value = _ENV_RE.sub(env, raw)
            self._secrets.add(header_secrets(value))  # the value and the token of "Bearer <token>"
            headers[name] = value
        return headers

    def _url(self, label: str) -> str:
        """The URL with ``${VAR}`` read from the environment now (a service started on a free port by a fixture
        can say where it listens); messages and cache keys keep the URL as written."""
        def env(match: re.Match[str]) -> str:
            value = os.environ.get(match.group(1))
            if value is None:
                raise AgentError(f"{label}: environment variable {match.group(1)} (named in the http agent's url) "
                                 "is not set")
            return value

        url = _ENV_RE.sub(env, self.http.url)
        if url != self.http.url:
            self._secrets.add(url_secrets(url))
        return url

    def scrub(self, text: str) -> str:
        return self._secrets.scrub(text)

    async def post(self, body: Any, *, label: str) -> AgentReply:
        if self._client is None:
            import aiohttp

            self._client = aiohttp.ClientSession()
        headers = self._headers(label)
        url = self._url(label)
        where = redact_url(self.http.url)
        attempt = 0
        redirects = 0
        while True:
            if self._hung:
                raise AgentError(self.scrub(f"{label}: not sent: the http agent {where} did not answer within "
                                            f"{self.timeout:g}s on an earlier request in this run; check the agent "
                                            "service (and its log)"))
            started = time.perf_counter()
            failure = ""
            give_up = attempt >= self.endpoint.max_retries
            try:
                # One deadline for the whole exchange, reply body included.
                async with asyncio.timeout(self.timeout):
                    # Redirects are followed here, not by aiohttp: never to another origin (see ``_redirect``).
                    async with self._client.post(url, json=body, headers=headers, allow_redirects=False) as response:
                        status = response.status
                        location = response.headers.get("Location") if status in _REDIRECTS else None
                        content = await response.read()
            except (TimeoutError, OSError) as exc:
                failure = "timed out" if isinstance(exc, TimeoutError) else f"connection failed ({exc})"
            except Exception as exc:  # aiohttp's ClientError family, told by name (no import on this path)
                if "ClientError" not in {cls.__name__ for cls in type(exc).__mro__}:
                    raise
                failure = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                self._answered, self._hung = True, False
                if location:
                    redirects += 1
                    url = self._redirect(url, location, redirects, label)
                    continue
                if 200 <= status < 300:
                    return self._read(content, status, label, where, time.perf_counter() - started)
                failure = f"HTTP {status}"
                if status not in _RETRYABLE:
                    give_up = True  # not retried
                failure += f": {_short(content.decode('utf-8', 'replace').strip(), 300)}"
            if failure.startswith("timed out"):
                failure = f"timed out: no complete reply within {self.timeout:g}s"
                give_up = give_up or not self._answered  # never answered: hung, not slow; not retried
                self._hung = give_up
            if give_up:
                raise AgentError(self.scrub(f"{label}: the http agent {where} failed after {attempt + 1} attempt(s): "
                                            f"{failure}; check the agent service (and its log)"))
            ceiling = min(self.endpoint.backoff_max, self.endpoint.backoff_base * (2 ** attempt))
            attempt += 1
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    def _redirect(self, url: str, location: str, hops: int, label: str) -> str:
        """Where a redirect from ``url`` to ``location`` leads, if llmsim follows it: only within the same origin
        (scheme, host and port), re-sending the same POST, at most ``_MAX_REDIRECTS`` times. A redirect to another
        origin is an AgentError and nothing is sent there: the configured headers (a key, a token) are for this
        agent only, and a body re-sent elsewhere would carry them too."""
        target = urljoin(url, location)
        if _origin(target) != _origin(url):
            raise AgentError(self.scrub(
                f"{label}: the agent at {redact_url(url)} redirected to another origin {redact_url(target)}; llmsim "
                "does not forward configured headers across origins (nor follows such a redirect at all): set the "
                "http agent's url to the address that answers"))
        if hops > _MAX_REDIRECTS:
            raise AgentError(self.scrub(f"{label}: the agent at {redact_url(self.http.url)} redirected more than "
                                        f"{_MAX_REDIRECTS} times (last to {redact_url(target)}); set the http "
                                        "agent's url to the address that answers"))
        return target

    def _read(self, content: bytes, status: int, label: str, where: str, latency: float) -> AgentReply:
        def bad(problem: str) -> AgentError:
            return AgentError(self.scrub(f"{label}: the http agent {where} answered HTTP {status} but {problem}; body "
                                         f"starts {_short(content.decode('utf-8', 'replace'), 300)!r}"))

        try:
            data = json.loads(content)
        except (ValueError, RecursionError):  # (nested past the parser's limit)
            raise bad("the body is not JSON") from None
        try:
            text = _lookup(data, self.http.reply)
        except KeyError as exc:
            raise bad(f"has no {exc.args[0]!r} on the reply path {self.http.reply!r}") from None
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise bad(f"the reply path {self.http.reply!r} holds a {type(text).__name__}, not text")
        calls: list[dict[str, Any]] = []
        end = False
        try:
            if self.http.tool_calls is not None:
                try:
                    calls = normalize_tool_calls(_lookup(data, self.http.tool_calls))
                except KeyError:
                    calls = []
        except TypeError as exc:
            raise bad(f"its tool calls are unusable ({exc})") from None
        if self.http.end is not None:
            try:
                end = _end_flag(_lookup(data, self.http.end), f"the end path {self.http.end!r}")
            except KeyError:
                end = False
            except TypeError as exc:
                raise bad(str(exc)) from None
        # A naive agent may echo its headers: their values must not reach the customer, the judge, the cache or
        # a report, so they are scrubbed as the reply enters the conversation.
        text = self.scrub(text)
        if calls:
            calls = scrub_data(calls, self.scrub)
        return AgentReply(text, calls, end, latency_s=round(latency, 4))

    async def open(self, context: AgentContext, *, label: str) -> AgentSession:
        return _HttpSession(self, context)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


# -- openai ----------------------------------------------------------------------------------------------------------
class _OpenAISession(AgentSession):
    __slots__ = ("context", "driver")

    def __init__(self, driver: OpenAIDriver, context: AgentContext) -> None:
        self.driver, self.context = driver, context

    async def reply(self, messages: list[dict[str, Any]], *, label: str) -> AgentReply:
        return await self.driver.complete(messages, self.context, label=label)


def openai_agent_key(spec: OpenAIAgentSpec) -> str:
    """The openai agent's API key: the value of its ``api_key_env`` variable, or "" when the scenario says the
    endpoint needs none (``api_key_env: null``). A variable that is unset or empty, or no ``api_key_env`` at all,
    is an AgentError naming the field (and the variable): a placeholder key would only fail later, as a 401."""
    if spec.api_key_env is None:
        if "api_key_env" in spec.model_fields_set:
            return ""
        raise AgentError("agent.openai.api_key_env is not set: name the environment variable holding the agent "
                         "endpoint's API key (api_key_env: MY_AGENT_KEY), or write api_key_env: null if the "
                         "endpoint needs no key")
    key = os.environ.get(spec.api_key_env, "")
    if not key:
        state = "empty" if spec.api_key_env in os.environ else "not set"
        raise AgentError(f"agent.openai.api_key_env names the environment variable {spec.api_key_env}, which is "
                         f"{state}: set it to the agent endpoint's API key, or write api_key_env: null if the "
                         "endpoint needs no key")
    return key


class OpenAIDriver(AgentDriver):
    """``agent: {openai: {base_url, model}}``: the user's agent as an OpenAI-compatible chat endpoint, with its own
    client (retries, deadline, fail-fast) apart from the customer's and the judge's endpoint."""

    kind = "openai"
    results_only = True

    def __init__(self, spec: AgentSpec, settings: RunSettings, cache: CallCache, use_cache: bool,
                 secrets: RunSecrets | None = None) -> None:
        super().__init__(spec)
        assert spec.openai is not None
        from .client import LLMClient, RateLimiter

        self.openai: OpenAIAgentSpec = spec.openai
        key = openai_agent_key(self.openai)
        base = settings.endpoint
        self.endpoint = EndpointSettings(
            base_url=self.openai.base_url, api_key=key, request_timeout=base.request_timeout,
            max_retries=base.max_retries, backoff_base=base.backoff_base, backoff_max=base.backoff_max,
            description=f"the agent's endpoint {redact_url(self.openai.base_url)}", http_backend=base.http_backend)
        # The run's secrets: this client adds its key and URL query values, and scrubs the agent's replies.
        self.client: LLMClient = LLMClient(self.endpoint, cache, RateLimiter(), own_endpoint=False, secrets=secrets)
        self.temperature = self.openai.temperature if self.openai.temperature is not None \
            else settings.agent.temperature
        self.max_tokens = self.openai.max_tokens or settings.agent.max_tokens
        self.use_cache = use_cache

    async def complete(self, messages: list[dict[str, Any]], context: AgentContext, *, label: str) -> AgentReply:
        from .client import LLMRequest
        from .prompts import OPENING_CUE

        history = list(messages) if messages else [{"role": "user", "content": OPENING_CUE}]
        if self.openai.system:
            history.insert(0, {"role": "system", "content": self.openai.system})
        request = LLMRequest(role="agent", model=self.openai.model, messages=tuple(history),
                             temperature=self.temperature, max_tokens=self.max_tokens, seed=context.seed)
        try:
            reply = await self.client.complete(request, label=label, use_cache=self.use_cache)
        except EndpointError as exc:
            raise AgentError(f"the agent's OpenAI-compatible endpoint failed: {exc}") from None
        try:
            calls = normalize_tool_calls(reply.tool_calls)
        except TypeError as exc:
            raise AgentError(f"{label}: the agent's endpoint {redact_url(self.openai.base_url)} returned unusable "
                             f"tool calls: {exc}") from None
        return AgentReply(reply.text, calls, False, reply.prompt_tokens, reply.completion_tokens, reply.latency_s,
                          reply.cached, reply.model, metered=True)

    async def open(self, context: AgentContext, *, label: str) -> AgentSession:
        return _OpenAISession(self, context)

    async def aclose(self) -> None:
        await self.client.aclose()


# -- the cache around python and http agents -------------------------------------------------------------------------
class CachedSession(AgentSession):
    """``agent_cache: true``: replies recorded and replayed like LLM calls, keyed by the agent's kind, identity,
    seed and messages (no session id, header value or key)."""

    __slots__ = ("cache", "endpoint", "inner", "seed", "what")

    def __init__(self, inner: AgentSession, driver: AgentDriver, cache: CallCache, seed: int | None) -> None:
        self.inner, self.cache, self.seed = inner, cache, seed
        self.what = describe_spec(driver.spec)
        self.endpoint = f"agent:{driver.kind}:{driver.identity}"

    async def reply(self, messages: list[dict[str, Any]], *, label: str) -> AgentReply:
        descriptor = {"endpoint": self.endpoint, "model": self.endpoint, "messages": list(messages),
                      "temperature": None, "seed": self.seed, "max_tokens": None, "response_format": None,
                      "tools": None, "attempt": 0}
        key = request_key(descriptor)
        recorder = RECORDER.get()
        hit = recorder.lookup(key) if recorder is not None else None  # keyed by the agent itself: kept whole
        if hit is None and recorder is not None and recorder.exclusive:
            raise CacheMissError(recorder.miss_message(label, descriptor, "agent"))
        if hit is None:
            hit = self.cache.lookup(key, label=label)
        if hit is not None:
            if recorder is not None:
                recorder.add(key, descriptor, hit, label, "agent")
            return AgentReply(hit["text"], [dict(c) for c in hit.get("tool_calls") or []], bool(hit.get("end")),
                              latency_s=hit["latency_s"], cached=True)
        if not self.cache.mode.may_call_agent():
            raise CacheMissError(f"{label}: no recorded reply of the {self.endpoint.removeprefix('agent:')} agent "
                                 f"(agent_cache: true) in {self.cache.directory} and record mode is 'none'; record "
                                 "it with --llmsim-record=once, then commit the recordings/ it writes "
                                 "(.llmsim_cache/ is local: keep it out of git)")
        reply = await self.inner.reply(messages, label=label)
        too_large = reply_size_error(reply.text, reply.tool_calls, f"{label}: the {self.what}")
        if too_large is not None:  # not stored: the conversation errors on it
            raise AgentError(too_large)
        response: dict[str, Any] = {"text": reply.text, "prompt_tokens": 0, "completion_tokens": 0,
                                    "latency_s": reply.latency_s, "model": self.endpoint}
        if reply.tool_calls:
            response["tool_calls"] = reply.tool_calls
        if reply.end:
            response["end"] = True
        self.cache.store(key, descriptor, response, label)
        if recorder is not None:
            recorder.add(key, descriptor, response, label, "agent")
        return reply


class _ScrubbedSession(AgentSession):
    """A python agent's replies with the run's secrets scrubbed as they enter the conversation (an agent that
    repeats a key it holds gives ``***``), so the cache, recordings and reports never see them."""

    __slots__ = ("inner", "secrets")

    def __init__(self, inner: AgentSession, secrets: RunSecrets) -> None:
        self.inner, self.secrets = inner, secrets

    async def reply(self, messages: list[dict[str, Any]], *, label: str) -> AgentReply:
        reply = await self.inner.reply(messages, label=label)
        reply.text = self.secrets.scrub(reply.text)
        if reply.tool_calls:
            reply.tool_calls = self.secrets.scrub_data(reply.tool_calls)
        return reply


# -- the runtime -----------------------------------------------------------------------------------------------------
class AgentRuntime:
    """The code agents of one run: each spec resolved once (import, signature, HTTP client), closed at the end."""

    def __init__(self, settings: RunSettings, cache: CallCache, secrets: RunSecrets | None = None) -> None:
        self.settings = settings
        self.cache = cache
        self._drivers: dict[tuple[str, Any, bool], tuple[AgentSpec, AgentDriver | AgentError]] = {}
        self._secrets = secrets if secrets is not None else RunSecrets(settings.endpoint)

    def driver(self, spec: AgentSpec, *, agent_cache: bool = False) -> AgentDriver:
        """The driver of ``spec`` (made on first use; a spec that cannot be used raises the same AgentError
        every time, without importing again)."""
        # Specs written alike (the same `defaults.agent` in every scenario of a file) share one driver: one
        # import, one HTTP connection pool, one view of whether the service is hung. An in-memory agent object
        # (the llmsim fixture) is its own driver.
        key = (("object", id(spec), agent_cache) if object_agent_target(spec) is not None
               else ("spec", spec.model_dump_json(exclude_unset=True), agent_cache))
        known = self._drivers.get(key)
        if known is None or (key[0] == "object" and known[0] is not spec):
            made: AgentDriver | AgentError
            try:
                made = self._make(spec, agent_cache)
            except AgentError as exc:
                made = exc
            known = (spec, made)
            self._drivers[key] = known
        if isinstance(known[1], AgentError):
            raise AgentError(str(known[1]))
        return known[1]

    def _make(self, spec: AgentSpec, agent_cache: bool) -> AgentDriver:
        self._secrets.add_spec(spec)
        if spec.python is not None:
            return PythonDriver(spec, self.settings.rootdir)
        if spec.http is not None:
            return HttpDriver(spec, self.settings, self._secrets)
        if spec.openai is not None:
            return OpenAIDriver(spec, self.settings, self.cache, use_cache=agent_cache, secrets=self._secrets)
        raise LlmsimError(f"not a code agent: {spec!r}")

    async def open(self, spec: AgentSpec, context: AgentContext, *, agent_cache: bool, label: str
                   ) -> tuple[AgentDriver, AgentSession]:
        try:
            driver = self.driver(spec, agent_cache=agent_cache)
        except AgentError as exc:
            raise AgentError(f"{label}: {exc}") from None
        session = await driver.open(context, label=label)
        if driver.kind == "python":  # http and openai replies are scrubbed as they arrive, python ones here
            session = _ScrubbedSession(session, self._secrets)
        if agent_cache and driver.kind != "openai":  # the openai agent caches through its own LLM client
            session = CachedSession(session, driver, self.cache, context.seed)
        return driver, session

    def secrets(self) -> frozenset[str]:
        """Every secret of the run (``scrubbing.RunSecrets``): the endpoint's, the openai agents' keys, the http
        agents' header values, URL credentials and query values. Scrubbed from every stored text."""
        return self._secrets.values()

    async def aclose(self) -> None:
        for _, driver in list(self._drivers.values()):
            if isinstance(driver, AgentDriver):
                try:
                    await driver.aclose()
                except Exception:
                    pass
        self._drivers.clear()


def new_context(scenario_name: str, variables: Mapping[str, Any], seed: int | None) -> AgentContext:
    """A fresh context with a new per-conversation ``session_id`` (never part of a cache key)."""
    return AgentContext(scenario_name, MappingProxyType(dict(variables)), seed, f"llmsim-{uuid.uuid4().hex}")
