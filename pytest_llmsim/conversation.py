"""The conversation loop between the agent under test and the simulated customer (the "client")."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from .cache import CallCache, marker_key
from .client import Completer, LLMRequest
from .prompts import PromptRenderer
from .scenario import Scenario
from .settings import RunSettings

# Sent as the first user message to whichever side opens the call, so every request has a user turn.
OPENING_CUE = "(The call has just been connected. Say your first line.)"


@dataclass
class Turn:
    role: str  # "client" or "agent"
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    scripted: bool = False


@dataclass
class Transcript:
    turns: list[Turn] = field(default_factory=list)
    ended_by: str = ""  # client | agent | script | max_turns | timeout
    end_reason: str = ""
    duration_s: float = 0.0

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dict(vars(t)) for t in self.turns]  # Turn holds only scalars: a shallow copy is a full one

    def as_text(self, last: int | None = None, *, client_name: str = "Customer",
                agent_name: str = "Agent") -> str:
        turns = self.turns if last is None else self.turns[-last:]
        first = len(self.turns) - len(turns) + 1
        return "\n".join(
            f"{first + i:>3}. {client_name if t.role == 'client' else agent_name}: {t.text}"
            for i, t in enumerate(turns)
        )


def strip_end_marker(text: str, marker: str) -> tuple[str, bool]:
    """Remove ``marker`` (case-insensitive) from ``text``; report whether it was there."""
    if not marker:
        return text, False
    lowered, needle = text.lower(), marker.lower()
    if needle not in lowered:
        return text, False
    parts, start = [], 0
    while (pos := lowered.find(needle, start)) != -1:
        parts.append(text[start:pos])
        start = pos + len(marker)
    parts.append(text[start:])
    return " ".join(p.strip() for p in parts if p.strip()), True


def _messages_for(side: str, system_prompt: str, turns: list[Turn]) -> tuple[dict[str, str], ...]:
    """Chat history from ``side``'s point of view: its own turns are 'assistant', the other's 'user'."""
    messages = [{"role": "system", "content": system_prompt}]
    if not turns or turns[0].role == side:
        messages.append({"role": "user", "content": OPENING_CUE})
    for turn in turns:
        messages.append({"role": "assistant" if turn.role == side else "user", "content": turn.text})
    return tuple(messages)


async def simulate(
    scenario: Scenario,
    settings: RunSettings,
    client: Completer,
    renderer: PromptRenderer,
    *,
    label: str,
    cache: CallCache | None = None,
) -> Transcript:
    """Run one conversation. Errors (endpoint, cache miss, template) propagate; the caller records them.

    A timeout depends on wall time, which a replay does not reproduce; so where a recorded conversation
    timed out is stored in the cache (``cache``) and a replay stops at the same turn.
    """
    context = {**scenario.variables, "scenario_name": scenario.name, "end_marker": settings.end_marker,
               "language": settings.language}
    roles = {side: settings.role(side, scenario) for side in ("agent", "client")}
    prompts = {
        side: renderer.render(role.template, context, scenario_label=label) for side, role in roles.items()
    }
    seed = scenario.seed if scenario.seed is not None else settings.default_seed
    max_turns = scenario.max_turns or settings.max_turns
    timeout = scenario.timeout or settings.timeout
    speaker = scenario.first_speaker or settings.first_speaker
    script = list(scenario.turns) if scenario.turns is not None else None
    transcript = Transcript()
    started = time.perf_counter()
    timeout_key = marker_key("conversation_timeout", {
        "prompts": prompts, "seed": seed, "max_turns": max_turns, "first_speaker": speaker, "script": script,
        "roles": {side: [r.model, r.temperature, r.max_tokens] for side, r in roles.items()},
        "end_marker": settings.end_marker, "endpoint": settings.endpoint.identity,
    })
    recorded_timeout = cache.lookup_marker(timeout_key) if cache is not None else None
    replay_stop = recorded_timeout["turns"] if recorded_timeout else None

    async def one_turn(side: str) -> bool:
        """Produce ``side``'s next message; return True when the call ends."""
        number = len(transcript.turns) + 1
        if replay_stop is not None and len(transcript.turns) >= replay_stop:
            raise TimeoutError
        if side == "client" and script is not None:
            if not script:
                transcript.ended_by, transcript.end_reason = "script", "scripted customer turns exhausted"
                return True
            text, ended = strip_end_marker(script.pop(0), settings.end_marker)
            transcript.turns.append(Turn("client", text, scripted=True))
        else:
            role = roles[side]
            request = LLMRequest(
                role=side, model=role.model, messages=_messages_for(side, prompts[side], transcript.turns),
                temperature=role.temperature, max_tokens=role.max_tokens, seed=seed,
            )
            reply = await client.complete(request, label=f"{label} {side} turn {number}")
            text, ended = strip_end_marker(reply.text.strip(), settings.end_marker)
            transcript.turns.append(Turn(side, text, reply.prompt_tokens, reply.completion_tokens,
                                         reply.latency_s, reply.cached))
        if ended:
            who = "customer" if side == "client" else "agent"
            transcript.ended_by = side
            transcript.end_reason = f"the {who} ended the call"
            return True
        if len(transcript.turns) >= max_turns:
            transcript.ended_by, transcript.end_reason = "max_turns", f"reached max_turns={max_turns}"
            return True
        return False

    try:
        async with asyncio.timeout(timeout):
            while not await one_turn(speaker):
                speaker = "agent" if speaker == "client" else "client"
    except TimeoutError:
        transcript.ended_by, transcript.end_reason = "timeout", f"conversation exceeded timeout={timeout:g}s"
        if cache is not None and replay_stop is None:
            cache.store_marker(timeout_key, {"turns": len(transcript.turns)})
    transcript.duration_s = round(time.perf_counter() - started, 4)
    return transcript
