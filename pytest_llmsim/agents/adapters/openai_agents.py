"""``agent: {openai_agents: "pkg.mod:agent"}``: an OpenAI Agents SDK ``Agent`` (or a factory of one), run with
``Runner.run``. Each turn starts from the agent that answered last (after a handoff, the specialist keeps the
customer) with the conversation's items (``result.to_input_list()``), so tool history survives between turns.

From ``result.new_items``: ``MessageOutputItem`` -> what ``item.agent`` said; ``ToolCallItem`` /
``ToolCallOutputItem`` -> its tool calls and their results (by ``call_id``); ``HandoffOutputItem`` -> a handoff
from ``source_agent`` to ``target_agent`` (the ``transfer_to_*`` call itself is not listed as a tool call).
Tracing is turned off (it would upload every run) unless ``OPENAI_AGENTS_DISABLE_TRACING`` is set either way.
"""


from __future__ import annotations

import os
from typing import Any

from pytest_llmsim.agents.adapters.common import AdapterDriver, AdapterSession, Turn


class Session(AdapterSession):
    current: Any = None
    history: list[Any]

    async def run_turn(self, text: str) -> dict[str, Any]:
        from agents import (
            HandoffOutputItem,
            ItemHelpers,
            MessageOutputItem,
            Runner,
            ToolCallItem,
            ToolCallOutputItem,
        )

        if self.current is None:
            self.current, self.history = self.target, []
        result = await Runner.run(self.current, [*self.history, {"role": "user", "content": text}])
        self.history, self.current = result.to_input_list(), result.last_agent
        turn = Turn()
        for item in result.new_items:
            speaker = item.agent.name
            if isinstance(item, MessageOutputItem):
                turn.say(speaker, ItemHelpers.text_message_output(item))
            elif isinstance(item, HandoffOutputItem):
                turn.handoff(item.source_agent.name, item.target_agent.name)
            elif isinstance(item, ToolCallItem):
                raw = item.raw_item
                name = getattr(raw, "name", None) or getattr(raw, "type", "tool")
                turn.call(speaker, str(name), getattr(raw, "arguments", None), getattr(raw, "call_id", None))
            elif isinstance(item, ToolCallOutputItem):
                output: Any = item.raw_item
                call_id = output.get("call_id") if isinstance(output, dict) else getattr(output, "call_id", None)
                turn.result(call_id, item.output)
        return turn.as_dict()


class Driver(AdapterDriver):
    kind = "openai_agents"
    session_class = Session

    def load_framework(self) -> None:
        import agents

        if "OPENAI_AGENTS_DISABLE_TRACING" not in os.environ:
            agents.set_tracing_disabled(True)

    def accepted(self) -> tuple[type, ...]:
        from agents import Agent

        return (Agent,)
