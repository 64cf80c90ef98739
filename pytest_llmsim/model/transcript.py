"""A conversation's transcript (no pytest): its turns, as the engine, the metrics and the reports read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_llmsim.model.results import tool_call_text


@dataclass
class Turn:
    role: str  # "client" or "agent"
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    scripted: bool = False
    # The agent's tool calls in this turn: ``{"name", "arguments", "result"}`` (result None when not reported).
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    # A multi-agent turn: each speaker's message ``{"agent", "content", "tool_calls"?}`` in order, and the handoffs
    # ``{"from", "to", "reason"?}``; then ``text`` is the contents joined by a blank line and ``tool_calls`` all
    # of theirs. Empty for a single-speaker turn (left out of ``to_dicts``: such turns read as they always did).
    messages: list[dict[str, Any]] = field(default_factory=list)
    handoffs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Transcript:
    turns: list[Turn] = field(default_factory=list)
    ended_by: str = ""  # client | agent | script | max_turns | timeout
    end_reason: str = ""
    duration_s: float = 0.0

    def to_dicts(self) -> list[dict[str, Any]]:
        dicts = []
        for turn in self.turns:
            data = dict(vars(turn))
            data["tool_calls"] = [dict(call) for call in turn.tool_calls]
            for name in ("messages", "handoffs"):
                if data[name]:
                    data[name] = [dict(item) for item in data[name]]
                else:
                    del data[name]
            dicts.append(data)
        return dicts

    def as_text(self, last: int | None = None, *, client_name: str = "Customer",
                agent_name: str = "Agent") -> str:
        """The conversation as the judge reads it; an agent turn's tool calls come before its text."""
        turns = self.turns if last is None else self.turns[-last:]
        first = len(self.turns) - len(turns) + 1
        return "\n".join(
            f"{first + i:>3}. {client_name if t.role == 'client' else agent_name}: {judged_turn_text(t)}"
            for i, t in enumerate(turns)
        )

    @property
    def agent_replied(self) -> bool:
        """The agent said something: at least one agent turn with visible text (the end marker alone, spaces and
        invisible characters such as a zero-width space are empty)."""
        return any(t.role == "agent" and visible(t.text) for t in self.turns)


# Letters that render as nothing (Hangul fillers, the braille blank, ...): not format characters to unicodedata.
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e")


def visible(text: str) -> bool:
    """Whether ``text`` shows anything: a character that is not whitespace, a control or format character
    (zero-width space U+200B, word joiner U+2060, BOM U+FEFF, soft hyphen, direction marks) or a blank letter."""
    import unicodedata

    for char in text:
        if char.isspace() or char in _INVISIBLE_LETTERS:
            continue
        if unicodedata.category(char) not in ("Cf", "Cc", "Zs", "Zl", "Zp"):
            return True
    return False


def judged_turn_text(turn: Turn) -> str:
    if not turn.tool_calls:
        return turn.text
    calls = " ".join(f"[tool {tool_call_text(call)}]" for call in turn.tool_calls)
    return f"{calls} {turn.text}" if turn.text else calls

