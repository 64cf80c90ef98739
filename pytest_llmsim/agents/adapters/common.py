"""What every framework adapter shares: the context a factory is given (the scenario's agent endpoint), the
multi-speaker turn built from a framework's run (``Turn``), and the driver and session that import the user's
object, make one per conversation when it is a factory, and turn a framework's exception into an AgentError
with its traceback."""


from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_llmsim.agents.base import (
    AgentContext,
    AgentDriver,
    AgentReply,
    AgentSession,
    positional_arity,
    read_multi_agent,
)
from pytest_llmsim.agents.python import PythonDriver, agent_raised
from pytest_llmsim.agents.specs import shorten
from pytest_llmsim.errors import AgentError

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import AgentSpec
    from pytest_llmsim.model.settings import RunSettings


@dataclass(frozen=True)
class AdapterContext:
    """What a factory (``agent: {langgraph: "bots.shop:make_graph"}``, a function of one argument) is given once
    per conversation: the scenario's agent endpoint (the run's ``llmsim_endpoint`` base URL and key, and the agent
    model ``llmsim_agent_model``) to point its model client at, and the conversation's identity."""

    base_url: str
    api_key: str = field(repr=False)
    model: str
    scenario: str
    variables: Mapping[str, Any]
    seed: int | None
    session_id: str


# -- the multi-speaker turn ------------------------------------------------------------------------------------------
def _json_text(value: Any) -> Any:
    """A tool call's arguments or result as JSON data: parsed when it is JSON text, else kept as it is."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class Turn:
    """One agent turn as a framework ran it, built in the order things happened: what each agent said
    (``say``), the tool calls it made (``call``) and their results (``result``, matched by call id), and the
    handoffs between agents. Consecutive items of one agent are one message.

    ``as_dict()`` is the shape every agent kind returns::

        {"messages": [{"agent": "Triage", "content": "...", "tool_calls": [{"name", "arguments", "result"}]}],
         "handoffs": [{"from": "Triage", "to": "Billing", "reason": "..."}], "end": false}
    """

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.handoffs: list[dict[str, Any]] = []
        self._calls: dict[str, list[dict[str, Any]]] = {}  # call id -> its calls awaiting a result, innermost last

    def _message(self, agent: str) -> dict[str, Any]:
        if not self.messages or self.messages[-1]["agent"] != agent:
            self.messages.append({"agent": agent, "content": ""})
        return self.messages[-1]

    def say(self, agent: str, content: str | None) -> None:
        if not content or not content.strip():
            return
        message = self._message(agent)
        message["content"] = f"{message['content']}\n\n{content}" if message["content"] else content

    def call(self, agent: str, name: str, arguments: Any, call_id: str | None = None) -> None:
        call = {"name": name, "arguments": _json_text(arguments) if arguments is not None else {}, "result": None}
        self._message(agent).setdefault("tool_calls", []).append(call)
        if call_id:
            self._calls.setdefault(call_id, []).append(call)

    def result(self, call_id: str | None, result: Any) -> None:
        """The result of the call ``call_id``: of the latest such call still waiting (ids need only be unique
        within one agent's run: a delegate's call answered inside its caller's may reuse its id)."""
        waiting = self._calls.get(call_id or "")
        if waiting:
            waiting.pop()["result"] = _json_text(result)

    def drop_call(self, agent: str, name: str) -> None:
        """Forget ``agent``'s last call of tool ``name``, in any case (a handoff the framework made through a
        tool: it is listed in the handoffs)."""
        for message in reversed(self.messages):
            calls = message.get("tool_calls") or []
            if message["agent"] == agent and any(call["name"].lower() == name.lower() for call in calls):
                index = max(i for i, call in enumerate(calls) if call["name"].lower() == name.lower())
                del calls[index]
                if not calls:
                    del message["tool_calls"]
                return

    def handoff(self, source: str, target: str, reason: str | None = None) -> None:
        if not source or not target or source == target:
            return
        entry: dict[str, Any] = {"from": source, "to": target}
        if reason:
            entry["reason"] = reason
        self.handoffs.append(entry)

    def as_dict(self) -> dict[str, Any]:
        messages = [message for message in self.messages if message["content"] or message.get("tool_calls")]
        return {"messages": messages, "handoffs": list(self.handoffs), "end": False}


def reply_from_turn(turn: dict[str, Any]) -> AgentReply:
    """The engine's reply from a turn dict (``Turn.as_dict``), checked as any agent's multi-agent reply is."""
    return read_multi_agent(turn)


def last_customer_message(messages: list[dict[str, Any]], what: str, label: str) -> str:
    """The customer's message this turn answers: the last message, from the user. A framework keeps its own
    history, so the adapter gives it only the new message."""
    if not messages or messages[-1].get("role") != "user":
        raise AgentError(f"{label}: the {what} answers the customer, who has not spoken yet; a framework adapter "
                         "cannot open the call (set first_speaker: client)")
    content = messages[-1].get("content")
    return content if isinstance(content, str) else str(content or "")


# -- the driver and its sessions -------------------------------------------------------------------------------------
class AdapterSession(AgentSession):
    """One conversation with a framework object: ``run_turn`` (per framework) runs it on the customer's new
    message with the state kept in ``self`` and returns the turn dict."""

    def __init__(self, driver: AdapterDriver, target: Any, context: AdapterContext) -> None:
        self.driver, self.target, self.context = driver, target, context

    async def run_turn(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    async def reply(self, messages: list[dict[str, Any]], *, label: str) -> AgentReply:
        text = last_customer_message(messages, self.driver.what, label)
        started = time.perf_counter()
        try:
            turn = await self.run_turn(text)
        except asyncio.CancelledError:
            raise
        except AgentError:
            raise
        except BaseException as exc:
            raise agent_raised(f"{label}: the {self.driver.what}", exc) from None
        try:
            reply = reply_from_turn(turn)
        except (TypeError, ValueError, RecursionError) as exc:
            raise AgentError(f"{label}: the {self.driver.what} gave an unusable turn: {exc}") from None
        reply.latency_s = round(time.perf_counter() - started, 4)
        return reply


class AdapterDriver(AgentDriver):
    """One framework adapter spec: the framework imported (``load_framework``), the user's object imported and
    checked against ``accepted()``; a callable that is not such an object is a factory called once per
    conversation (with an ``AdapterContext`` when it takes an argument; async ones awaited)."""

    kind = ""
    framework = ""  # for messages: "an openai-agents Agent"
    session_class: type[AdapterSession] = AdapterSession

    def __init__(self, spec: AgentSpec, settings: RunSettings) -> None:
        super().__init__(spec)
        self.settings = settings
        try:
            self.load_framework()
        except ImportError as exc:
            from pytest_llmsim.agents.adapters import missing_framework

            raise missing_framework(self.kind, exc) from None
        path = getattr(spec, self.kind)
        assert isinstance(path, str)
        self.path = path
        self.what = f"{self.kind} agent {path!r}"
        target = PythonDriver._import(path, settings.rootdir)
        if isinstance(target, self.accepted()):
            self.target, self.factory = target, None
        elif callable(target) and not inspect.isclass(target):
            self.target, self.factory = None, target
        else:
            raise AgentError(self.wrong_type(f"agent {{{self.kind}: {path!r}}}", target))

    def load_framework(self) -> None:
        """Import the framework (ImportError when it is missing)."""
        raise NotImplementedError

    def accepted(self) -> tuple[type, ...]:
        """The framework's classes this adapter runs."""
        raise NotImplementedError

    def wrong_type(self, where: str, value: Any) -> str:
        names = ", ".join(f"{cls.__module__.split('.')[0]}.{cls.__qualname__}" for cls in self.accepted())
        return (f"{where} is a {type(value).__module__}.{type(value).__qualname__} ({shorten(repr(value), 80)}), "
                f"not one of {names}, nor a factory function returning one")

    def endpoint(self) -> tuple[str, str]:
        """The scenario's agent endpoint: the run's base URL (starting the local model if it serves) and key."""
        endpoint = self.settings.endpoint
        base_url = endpoint.base_url
        if base_url is None and endpoint.connect is not None:
            base_url = endpoint.connect()
        return base_url or "https://api.openai.com/v1", endpoint.api_key

    async def open(self, context: AgentContext, *, label: str) -> AgentSession:
        target = self.target
        adapter_context: AdapterContext | None = None
        if self.factory is not None:
            try:
                if positional_arity(self.factory) >= 1:
                    base_url, api_key = await asyncio.to_thread(self.endpoint)
                    adapter_context = AdapterContext(base_url, api_key, self.settings.agent.model, context.scenario,
                                                     context.variables, context.seed, context.session_id)
                    made = self.factory(adapter_context)
                else:
                    made = self.factory()
                if inspect.isawaitable(made):
                    made = await made
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                raise agent_raised(f"{label}: the factory of the {self.what}", exc) from None
            if not isinstance(made, self.accepted()):
                raise AgentError(f"{label}: " + self.wrong_type(f"what the factory {self.path!r} made", made))
            target = made
        if adapter_context is None:
            adapter_context = AdapterContext("", "", self.settings.agent.model, context.scenario, context.variables,
                                             context.seed, context.session_id)
        return self.session_class(self, target, adapter_context)
