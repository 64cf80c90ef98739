"""``agent: {autogen: "pkg.mod:team"}``: an AutoGen AgentChat team (``RoundRobinGroupChat``,
``SelectorGroupChat``, ``Swarm``, ...) or a single agent (``AssistantAgent``), or a factory of one, run with
``run(task=...)``.

State across turns: a team keeps its history between runs, so a factory's team serves one conversation; an
object given as it is serves every conversation, each with its own state (``save_state``/``load_state`` around
each turn, one turn at a time). A ``Swarm`` that handed the customer over (``HandoffMessage`` to ``user``) gets the
next message as a ``HandoffMessage`` back to the agent that asked.

From ``TaskResult.messages`` (each with its ``source``): ``TextMessage`` and ``ToolCallSummaryMessage`` (and
the ``ThoughtEvent`` text a model gave beside its tool calls) are what the agent said; ``ToolCallRequestEvent`` /
``ToolCallExecutionEvent`` its tool calls and their results (by call id); ``HandoffMessage`` a handoff (its
``transfer_to_<target>`` call is not listed as a tool call; a hand-over to ``user`` ends the turn and is no handoff
between agents); in a group chat, the next speaker taking over is a handoff from the one before.
"""


from __future__ import annotations

import asyncio
from typing import Any

from pytest_llmsim.agents.adapters.common import AdapterDriver, AdapterSession, Turn


def read_messages(messages: list[Any], previous_speaker: str | None) -> Turn:
    """The turn told by a run's messages (the customer's own left out)."""
    from autogen_agentchat.messages import (
        HandoffMessage,
        TextMessage,
        ThoughtEvent,
        ToolCallExecutionEvent,
        ToolCallRequestEvent,
        ToolCallSummaryMessage,
    )

    turn = Turn()
    speaker = previous_speaker
    for message in messages:
        source = message.source
        if source == "user":
            continue
        if not isinstance(message, TextMessage | ToolCallSummaryMessage | ThoughtEvent | ToolCallRequestEvent |
                          ToolCallExecutionEvent | HandoffMessage):
            continue  # selector, memory and stop events: nobody said them
        if isinstance(message, HandoffMessage):
            turn.drop_call(source, f"transfer_to_{message.target}")
            turn.handoff(source, message.target)
            speaker = message.target
            continue
        if speaker is not None and source != speaker and not (turn.handoffs and turn.handoffs[-1]["to"] == source):
            turn.handoff(speaker, source)  # the group chat gave the floor to the next agent
        speaker = source
        if isinstance(message, TextMessage | ToolCallSummaryMessage | ThoughtEvent):
            turn.say(source, message.content)  # a thought: the text the model gave beside its tool calls
        elif isinstance(message, ToolCallRequestEvent):
            for call in message.content:
                turn.call(source, call.name, call.arguments, call.id)
        else:
            for result in message.content:
                turn.result(result.call_id, result.content)
    return turn


class Session(AdapterSession):
    state: Any = None
    speaker: str | None = None
    handed_to_user: str | None = None  # a Swarm agent that handed the customer over and waits for the answer

    async def run_turn(self, text: str) -> dict[str, Any]:
        from autogen_agentchat.messages import HandoffMessage

        driver = self.driver
        assert isinstance(driver, Driver)
        shared = driver.factory is None
        async with driver.lock if shared else _NO_LOCK:
            runner = self.target
            if shared:  # one object, many conversations: this conversation's state in, the rest kept out
                await runner.reset()
                if self.state is not None:
                    await runner.load_state(self.state)
            task: Any = text
            if self.handed_to_user is not None:
                task = HandoffMessage(source="user", target=self.handed_to_user, content=text)
            result = await runner.run(task=task)
            if shared:
                self.state = await runner.save_state()
        messages = list(result.messages)
        last = messages[-1] if messages else None
        self.handed_to_user = last.source if isinstance(last, HandoffMessage) and last.target == "user" else None
        turn = read_messages(messages, self.speaker)
        if self.handed_to_user is not None:  # the hand-over to the customer is no handoff between agents
            turn.handoffs = [h for h in turn.handoffs if h["to"] != "user"]
        speakers = [m.source for m in messages if m.source != "user"]
        self.speaker = speakers[-1] if speakers else self.speaker
        return turn.as_dict()


class _NoLock:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_LOCK = _NoLock()


class Driver(AdapterDriver):
    kind = "autogen"
    session_class = Session

    def load_framework(self) -> None:
        import autogen_agentchat.base
        import autogen_agentchat.messages  # noqa: F401

        self.lock = asyncio.Lock()

    def accepted(self) -> tuple[type, ...]:
        from autogen_agentchat.base import ChatAgent, Team

        return (Team, ChatAgent)
