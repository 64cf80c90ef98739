"""The python agent: a callable (sync or async, or a factory of one) imported once per spec and called per
turn in a worker thread; anything it raises, ``sys.exit`` included, is an ``AgentError`` with its own traceback."""


from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmsim.agents.base import (
    FACTORY_ATTRIBUTE,
    AgentContext,
    AgentDriver,
    AgentReply,
    AgentSession,
    is_async_callable,
    parse_reply,
    positional_arity,
    run_in_daemon_thread,
    user_traceback,
)
from pytest_llmsim.agents.specs import object_agent_target, shorten
from pytest_llmsim.errors import AgentError

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import AgentSpec





class _Caller:
    """Calls a user callable with 0, 1 or 2 of ``(messages, context)``: sync ones in a worker thread (a blocking
    agent must not stall every conversation of the process), async ones on the loop. Worked out once."""

    __slots__ = ("arity", "function", "is_async")

    def __init__(self, function: Callable[..., Any], shape: tuple[int, bool] | None = None) -> None:
        self.function = function
        self.arity, self.is_async = shape if shape is not None else (min(positional_arity(function), 2),
                                                                     is_async_callable(function))

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
            reply = parse_reply(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise AgentError(f"{label}: the python agent {self.driver.identity!r} returned an unusable reply: "
                             f"{exc}") from None
        reply.latency_s = round(time.perf_counter() - started, 4)
        return reply


def agent_raised(what: str, exc: BaseException, doing: str = "raised") -> AgentError:
    """The AgentError for a python agent's exception, with its own traceback. ``SystemExit`` and
    ``KeyboardInterrupt`` included: the agent runs in the engine's loop thread or a worker thread, where no
    Ctrl-C arrives (Python delivers SIGINT to the main thread, which stops the run there), so one raised there
    comes from the agent's own code; let through, it would kill the loop thread every conversation waits on."""
    note = ""
    if isinstance(exc, SystemExit | KeyboardInterrupt):
        note = (f" ({'sys.exit()' if isinstance(exc, SystemExit) else 'KeyboardInterrupt'} in an agent ends neither "
                "the run nor pytest: the item errors)")
    detail = f": {shorten(str(exc))}" if str(exc) else ""
    return AgentError(f"{what} {doing} {type(exc).__name__}{detail}{note}\n{user_traceback(exc)}")


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
        self._class_arity = positional_arity(target) if inspect.isclass(target) else 0
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
                else f"\n{user_traceback(exc)}"
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


