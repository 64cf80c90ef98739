"""``agent: {google_adk: "pkg.mod:agent"}``: a Google ADK agent (``LlmAgent`` with its ``sub_agents``, a
``SequentialAgent``, ...) or a factory of one, run by an ``InMemoryRunner`` with one ADK session per conversation
(the session keeps the history and the agent a transfer left the customer with).

From the run's events (each with its ``author``): the text parts are what the author said (thoughts and partial
stream chunks left out); ``get_function_calls()`` / ``get_function_responses()`` its tool calls and their
results (by id); ``actions.transfer_to_agent`` a handoff (its ``transfer_to_agent`` call is not listed as a tool
call).
"""


from __future__ import annotations

from typing import Any

from pytest_llmsim.agents.adapters.common import AdapterDriver, AdapterSession, Turn

APP = "llmsim"
USER = "customer"
TRANSFER = "transfer_to_agent"


def read_event(turn: Turn, event: Any) -> None:
    """One ADK event into ``turn``."""
    author = str(event.author or "agent")
    if author == "user" or getattr(event, "partial", False):
        return
    content = getattr(event, "content", None)
    for part in getattr(content, "parts", None) or []:
        if getattr(part, "text", None) and not getattr(part, "thought", False):
            turn.say(author, part.text)
    for call in event.get_function_calls():
        if call.name != TRANSFER:
            turn.call(author, str(call.name), dict(call.args or {}), call.id)
    for response in event.get_function_responses():
        if response.name != TRANSFER:
            turn.result(response.id, response.response)
    actions = getattr(event, "actions", None)
    target = getattr(actions, "transfer_to_agent", None)
    if target:
        turn.handoff(author, str(target))


class Session(AdapterSession):
    runner: Any = None
    adk_session: str = ""

    async def run_turn(self, text: str) -> dict[str, Any]:
        from google.adk.runners import InMemoryRunner
        from google.genai import types

        if self.runner is None:
            self.runner = InMemoryRunner(agent=self.target, app_name=APP)
            created = await self.runner.session_service.create_session(app_name=APP, user_id=USER)
            self.adk_session = created.id
        turn = Turn()
        message = types.Content(role="user", parts=[types.Part(text=text)])
        async for event in self.runner.run_async(user_id=USER, session_id=self.adk_session, new_message=message):
            read_event(turn, event)
        return turn.as_dict()


class Driver(AdapterDriver):
    kind = "google_adk"
    session_class = Session

    def load_framework(self) -> None:
        import google.adk.runners
        import google.genai.types  # noqa: F401

    def accepted(self) -> tuple[type, ...]:
        from google.adk.agents import BaseAgent

        return (BaseAgent,)
