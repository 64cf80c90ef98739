"""``agent: {langgraph: "pkg.mod:graph"}``: a compiled LangGraph graph (``StateGraph.compile()``,
``langchain.agents.create_agent``, ``langgraph_supervisor.create_supervisor(...).compile()``, a swarm), or a factory
of one, run with ``ainvoke`` on a state with a ``messages`` key.

State across turns: a graph compiled with a checkpointer gets the conversation's ``thread_id`` (its session id)
and only the customer's new message; one without gets the whole state it returned last turn plus the new message.

From the messages the turn added: an ``AIMessage`` is said by its ``name`` (``create_agent(name=...)``, the
supervisor's workers; the graph's name when unset), its ``tool_calls`` are its tool calls and each ``ToolMessage``
is a result (by ``tool_call_id``). A ``transfer_to_<agent>`` / ``transfer_back_to_<agent>`` call is a handoff
(its destination read from the tool message's ``__handoff_destination`` when the supervisor sets it), not a tool
call; a change of speaker with no transfer call is a handoff too (a graph edge).
"""


from __future__ import annotations

from typing import Any

from pytest_llmsim.agents.adapters.common import AdapterDriver, AdapterSession, Turn

HANDOFF_PREFIXES = ("transfer_to_", "transfer_back_to_")


def _text(content: Any) -> str:
    """A message's text: its content string, or the text blocks of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [block if isinstance(block, str) else str(block.get("text", "")) for block in content
                 if isinstance(block, str) or (isinstance(block, dict) and block.get("type") == "text")]
        return "".join(parts)
    return ""


def _handoff_target(name: str) -> str | None:
    for prefix in HANDOFF_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):]
    return None


def read_messages(messages: list[Any], default_speaker: str, previous_speaker: str | None) -> Turn:
    """The turn told by the messages one run added (``BaseMessage`` objects, in order)."""
    from langchain_core.messages import AIMessage, ToolMessage

    turn = Turn()
    handoff_calls: dict[str, tuple[str, str, str | None]] = {}  # call id -> (from, to, reason)
    speaker = previous_speaker
    for message in messages:
        if isinstance(message, AIMessage):
            name = message.name or default_speaker
            if speaker is not None and name != speaker and not (turn.handoffs and turn.handoffs[-1]["to"] == name):
                turn.handoff(speaker, name)  # a graph edge moved the customer on without a transfer call
            speaker = name
            if not (message.response_metadata or {}).get("__is_handoff_back"):  # the supervisor's "Transferring back"
                turn.say(name, _text(message.content))
            for call in message.tool_calls:
                target = _handoff_target(call["name"])
                if target is not None:
                    reason = call["args"].get("reason") if isinstance(call.get("args"), dict) else None
                    handoff_calls[call.get("id") or ""] = (name, target, reason if isinstance(reason, str) else None)
                    continue
                turn.call(name, call["name"], call.get("args"), call.get("id"))
        elif isinstance(message, ToolMessage):
            handoff = handoff_calls.pop(message.tool_call_id, None)
            if handoff is not None:
                source, target, reason = handoff
                target = str((message.response_metadata or {}).get("__handoff_destination") or target)
                turn.handoff(source, target, reason)
                continue
            turn.result(message.tool_call_id, _text(message.content) if not isinstance(message.content, str)
                        else message.content)
    for source, target, reason in handoff_calls.values():  # a transfer whose tool message the graph dropped
        turn.handoff(source, target, reason)
    return turn


class Session(AdapterSession):
    state: dict[str, Any] | None = None
    sent = 0  # messages in the graph's state before this turn (a checkpointed graph)
    speaker: str | None = None

    async def run_turn(self, text: str) -> dict[str, Any]:
        from langchain_core.messages import AIMessage, HumanMessage
        from langgraph.checkpoint.base import BaseCheckpointSaver

        graph = self.target
        config: dict[str, Any] = {}
        new = HumanMessage(content=text)
        if isinstance(getattr(graph, "checkpointer", None), BaseCheckpointSaver):
            config = {"configurable": {"thread_id": self.context.session_id}}
            payload: dict[str, Any] = {"messages": [new]}
            before = self.sent
        else:
            previous = dict(self.state or {})
            payload = {**previous, "messages": [*previous.get("messages", []), new]}
            before = len(payload["messages"]) - 1
        out = await graph.ainvoke(payload, config or None)
        if not isinstance(out, dict) or not isinstance(out.get("messages"), list):
            raise TypeError(f"the graph returned {type(out).__name__}, not a state with a 'messages' list; the "
                            "langgraph adapter runs graphs whose state has a 'messages' key")
        messages = out["messages"]
        self.state, self.sent = out, len(messages)
        added = [m for m in messages[before:] if not isinstance(m, HumanMessage)]
        turn = read_messages(added, str(getattr(graph, "name", None) or "LangGraph"), self.speaker)
        speakers = [m.name for m in added if isinstance(m, AIMessage) and m.name]
        self.speaker = speakers[-1] if speakers else self.speaker
        return turn.as_dict()


class Driver(AdapterDriver):
    kind = "langgraph"
    session_class = Session

    def load_framework(self) -> None:
        import langchain_core.messages  # noqa: F401
        import langgraph.pregel  # noqa: F401

    def accepted(self) -> tuple[type, ...]:
        from langgraph.pregel import Pregel

        return (Pregel,)
