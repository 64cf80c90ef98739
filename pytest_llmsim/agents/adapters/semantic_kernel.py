"""``agent: {semantic_kernel: "pkg.mod:factory"}``: a Semantic Kernel agent (``ChatCompletionAgent``, ...) or an
orchestration (``HandoffOrchestration``, ``GroupChatOrchestration``, ``SequentialOrchestration``, ...), or a factory
of one.

An agent is invoked with the conversation's ``ChatHistoryAgentThread`` and an ``on_intermediate_message`` callback
(tool calls and results reach it only there). An orchestration is invoked once per customer turn on a fresh
``InProcessRuntime``, its task the conversation so far (the customer's messages and the agents' answers, as
``ChatMessageContent`` named by their agent); every message reaches the adapter through the orchestration's
``agent_response_callback``, to which it adds its own recorder for the turn (yours, if any, still runs after it).
An orchestration object given as it is (not a factory) runs one turn at a time.

From each ``ChatMessageContent``: ``name`` is the agent; ``TextContent`` what it said; ``FunctionCallContent`` /
``FunctionResultContent`` its tool calls and results (by id; the name is ``Plugin-function``); a
``Handoff-transfer_to_<agent>`` call is a handoff, not a tool call. In a group chat, the next agent speaking is a
handoff from the one before.
"""


from __future__ import annotations

import asyncio
import inspect
from typing import Any

from pytest_llmsim.agents.adapters.common import AdapterDriver, AdapterSession, Turn

HANDOFF_PLUGIN = "Handoff"
HANDOFF_PREFIX = "transfer_to_"


class _Reader:
    """Reads SK messages into a turn, in the order they come."""

    def __init__(self, default_speaker: str, previous_speaker: str | None) -> None:
        self.turn = Turn()
        self.default_speaker = default_speaker
        self.speaker = previous_speaker
        self.handoff_calls: set[str] = set()
        self.answers: list[tuple[str, str]] = []  # (agent, text): what the agents said, for the next turn's task

    def read(self, message: Any) -> None:
        from semantic_kernel.contents import FunctionCallContent, FunctionResultContent, TextContent

        if isinstance(message, list):
            for item in message:
                self.read(item)
            return
        name = str(getattr(message, "name", None) or self.default_speaker)
        items = list(getattr(message, "items", None) or [])
        texts = [item.text for item in items if isinstance(item, TextContent) and item.text]
        calls = [item for item in items if isinstance(item, FunctionCallContent)]
        results = [item for item in items if isinstance(item, FunctionResultContent)]
        if (texts or calls) and self.speaker is not None and name != self.speaker \
                and not (self.turn.handoffs and self.turn.handoffs[-1]["to"] == name):
            self.turn.handoff(self.speaker, name)  # the orchestration gave the floor to the next agent
        if texts or calls:
            self.speaker = name
        for text in texts:
            self.turn.say(name, text)
            self.answers.append((name, text))
        for call in calls:
            function = str(call.function_name or "")
            if call.plugin_name == HANDOFF_PLUGIN and function.startswith(HANDOFF_PREFIX):
                self.turn.handoff(name, function[len(HANDOFF_PREFIX):])
                self.handoff_calls.add(str(call.id))
                continue
            qualified = f"{call.plugin_name}-{function}" if call.plugin_name else function
            self.turn.call(name, qualified, call.arguments, call.id)
        for result in results:
            if str(result.id) not in self.handoff_calls:
                self.turn.result(result.id, result.result)


class Session(AdapterSession):
    thread: Any = None
    speaker: str | None = None
    history: list[Any]

    async def run_turn(self, text: str) -> dict[str, Any]:
        from semantic_kernel.agents import Agent

        if isinstance(self.target, Agent):
            return await self._agent_turn(text)
        driver = self.driver
        if driver.factory is None:
            async with driver.lock:  # type: ignore[attr-defined]
                return await self._orchestration_turn(text)
        return await self._orchestration_turn(text)

    async def _agent_turn(self, text: str) -> dict[str, Any]:
        reader = _Reader(str(self.target.name), self.speaker)

        async def seen(message: Any) -> None:
            reader.read(message)

        async for response in self.target.invoke(messages=text, thread=self.thread, on_intermediate_message=seen):
            reader.read(response.message)
            self.thread = response.thread
        self.speaker = reader.speaker
        return reader.turn.as_dict()

    async def _orchestration_turn(self, text: str) -> dict[str, Any]:
        from semantic_kernel.agents.runtime import InProcessRuntime
        from semantic_kernel.contents import AuthorRole, ChatMessageContent

        orchestration = self.target
        if not hasattr(self, "history"):
            self.history = []
        self.history.append(ChatMessageContent(role=AuthorRole.USER, content=text))
        reader = _Reader("orchestration", self.speaker)
        theirs = getattr(orchestration, "_agent_response_callback", None)

        async def recorder(message: Any) -> None:
            reader.read(message)
            if theirs is not None:
                outcome = theirs(message)
                if inspect.isawaitable(outcome):
                    await outcome

        orchestration._agent_response_callback = recorder
        runtime = InProcessRuntime()
        runtime.start()
        try:
            result = await orchestration.invoke(task=list(self.history), runtime=runtime)
            await result.get()
        finally:
            orchestration._agent_response_callback = theirs
            await asyncio.shield(runtime.stop_when_idle())
        self.history.extend(ChatMessageContent(role=AuthorRole.ASSISTANT, content=said, name=agent)
                            for agent, said in reader.answers)
        self.speaker = reader.speaker
        return reader.turn.as_dict()


class Driver(AdapterDriver):
    kind = "semantic_kernel"
    session_class = Session

    def load_framework(self) -> None:
        import semantic_kernel.agents
        import semantic_kernel.agents.runtime  # noqa: F401  # the orchestrations' runtime (needs protobuf)

        self.lock = asyncio.Lock()

    def accepted(self) -> tuple[type, ...]:
        from semantic_kernel.agents import Agent
        from semantic_kernel.agents.orchestration.orchestration_base import OrchestrationBase

        return (Agent, OrchestrationBase)
