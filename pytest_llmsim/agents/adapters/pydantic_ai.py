"""``agent: {pydantic_ai: "pkg.mod:agent"}``: a pydantic-ai ``Agent`` (or a factory of one), run with
``agent.run(text, message_history=...)``; each turn gets the conversation's messages so far
(``result.all_messages()``).

pydantic-ai has no handoff of its own: its multi-agent pattern is delegation, a tool of one agent that runs
another (``await billing.run(q, usage=ctx.usage)``), whose messages are not in the caller's history. The adapter
sees them anyway: while it runs a turn, every agent run started in that turn's context (``Agent.iter``, which
``run``, ``run_sync`` and ``run_stream`` go through; wrapped once when the adapter loads and a pass-through
elsewhere) is recorded with the tool call it ran inside (a capability added to each recorded run names the tool
call it is executing).
Then: a ``TextPart`` is said by the agent whose run holds it (``Agent.name``), a ``ToolCallPart`` /
``ToolReturnPart`` pair is a tool call with its result, and a delegate's run is a handoff from the caller to the
delegate at that tool call, its own messages, and a handoff back when the caller's tool returns.
"""


from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pytest_llmsim.agents.adapters.common import AdapterDriver, AdapterSession, Turn

WRAPPED = "__llmsim_records_runs__"


@dataclass
class _Run:
    agent: Any
    parent_call: str | None  # the caller's tool call this run ran inside; None for the turn's own run
    run: Any = None
    children: list[_Run] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(getattr(self.agent, "name", None) or "agent")

    def messages(self) -> list[Any]:
        if self.run is None:
            return []
        result = getattr(self.run, "result", None)
        return list(result.new_messages() if result is not None else self.run.new_messages())


_RUNS: ContextVar[list[_Run] | None] = ContextVar("llmsim_pydantic_ai_runs", default=None)
_TOOL_CALL: ContextVar[str | None] = ContextVar("llmsim_pydantic_ai_tool_call", default=None)


@functools.cache
def _marker() -> Any:
    """A capability added to each recorded run: it names the tool call being executed (``_TOOL_CALL``) for the
    runs a tool starts."""
    from pydantic_ai.capabilities import AbstractCapability

    async def wrap_tool_execute(self: Any, ctx: Any, *, call: Any, tool_def: Any, args: Any, handler: Any) -> Any:
        token = _TOOL_CALL.set(call.tool_call_id)
        try:
            return await handler(args)
        finally:
            _TOOL_CALL.reset(token)

    return type("ToolCallMarker", (AbstractCapability,), {"wrap_tool_execute": wrap_tool_execute})()


def _record_runs() -> None:
    """Wrap ``Agent.iter`` once: inside an adapter turn (``_RUNS`` set), each run is recorded; elsewhere the
    wrapper only calls the original."""
    from pydantic_ai import Agent

    if getattr(Agent.iter, WRAPPED, False):
        return
    original = Agent.iter

    @asynccontextmanager
    async def iter(self: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        runs = _RUNS.get()
        if runs is None:
            async with original(self, *args, **kwargs) as run:
                yield run
            return
        record = _Run(self, _TOOL_CALL.get())
        runs.append(record)
        kwargs["capabilities"] = [*(kwargs.get("capabilities") or ()), _marker()]
        async with original(self, *args, **kwargs) as run:
            record.run = run
            yield run

    setattr(iter, WRAPPED, True)
    setattr(Agent, "iter", iter)  # noqa: B010  # the framework's class, patched once


def read_run(turn: Turn, record: _Run, by_call: dict[str, list[_Run]]) -> None:
    """``record``'s messages into ``turn``, its delegates' runs at the tool calls they ran inside."""
    from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart

    name = record.name
    for message in record.messages():
        if isinstance(message, ModelResponse):
            for part in message.parts:
                if isinstance(part, TextPart):
                    turn.say(name, part.content)
                elif isinstance(part, ToolCallPart):
                    turn.call(name, part.tool_name, part.args_as_dict(), part.tool_call_id)
                    for child in by_call.pop(part.tool_call_id, []):
                        turn.handoff(name, child.name)
                        read_run(turn, child, by_call)
                        turn.handoff(child.name, name)
        elif isinstance(message, ModelRequest):
            for request_part in message.parts:
                if isinstance(request_part, ToolReturnPart):
                    turn.result(request_part.tool_call_id, request_part.model_response_str()
                                if not isinstance(request_part.content, dict | list | str | int | float | bool)
                                else request_part.content)


class Session(AdapterSession):
    history: list[Any] | None = None

    async def run_turn(self, text: str) -> dict[str, Any]:
        runs: list[_Run] = []
        token = _RUNS.set(runs)
        try:
            result = await self.target.run(text, message_history=self.history)
        finally:
            _RUNS.reset(token)
        self.history = list(result.all_messages())
        turn = Turn()
        if not runs:
            return turn.as_dict()
        by_call: dict[str, list[_Run]] = {}
        for record in runs[1:]:
            by_call.setdefault(record.parent_call or "", []).append(record)
        read_run(turn, runs[0], by_call)
        return turn.as_dict()


class Driver(AdapterDriver):
    kind = "pydantic_ai"
    session_class = Session

    def load_framework(self) -> None:
        import pydantic_ai  # noqa: F401

        _record_runs()

    def accepted(self) -> tuple[type, ...]:
        from pydantic_ai import Agent

        return (Agent,)
