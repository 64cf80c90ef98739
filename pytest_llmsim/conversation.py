"""The conversation loop between the agent under test and the simulated customer (the "client")."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from .cache import CallCache, marker_key
from .client import RETRYING, Completer, LLMRequest
from .errors import EndpointError, NoAgentReplyError
from .prompts import PromptRenderer, template_context
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

    @property
    def agent_replied(self) -> bool:
        """The agent said something: at least one agent turn with text (the end marker alone is empty)."""
        return any(t.role == "agent" and t.text.strip() for t in self.turns)


class _ReplayedTimeout(Exception):
    """A replay reached the turn where the recorded conversation timed out."""


def no_agent_reply_error(
    transcript: Transcript, scenario: Scenario, settings: RunSettings, *, label: str
) -> NoAgentReplyError | None:
    """The error for a conversation in which the agent never said anything, or None if it did.

    Such a conversation says nothing about the agent: judging it would score an empty call (and may pass).
    """
    if transcript.agent_replied:
        return None
    agent_turns = sum(1 for t in transcript.turns if t.role == "agent")
    timeout = scenario.timeout or settings.timeout
    if transcript.ended_by == "timeout":
        how = f"timed out after {timeout:g}s"
    elif transcript.ended_by == "max_turns":
        how = f"reached max_turns={scenario.max_turns or settings.max_turns}"
    elif transcript.ended_by in ("client", "agent"):
        how = f"was ended by the {'customer' if transcript.ended_by == 'client' else 'agent'}"
    elif transcript.ended_by == "script":
        how = "ran out of scripted customer turns"
    else:
        how = f"ended ({transcript.end_reason or transcript.ended_by or 'no reason recorded'})"
    model = settings.role("agent", scenario).model
    if agent_turns:
        what = f"all {agent_turns} agent turn(s) are empty"
        advice = (f"that the agent model {model!r} and its template produce text: a reply with 'content: null' "
                  "(e.g. only a tool call, or a content filter), too small a max_tokens, or a reply that is only "
                  "the end marker counts as empty; empty replies are cached, so re-record with "
                  "--llmsim-record=all after fixing it")
    elif transcript.ended_by == "timeout":
        what = "the agent never answered"
        advice = (f"that the endpoint answers the agent model {model!r} in time (is it up, is it overloaded?) "
                  "or raise the scenario's 'timeout'; nothing was recorded, so a rerun calls the agent again")
    else:
        what = "the agent never got a turn"
        advice = "the scenario's max_turns, first_speaker and scripted turns"
    return NoAgentReplyError(
        f"{label}: scenario {scenario.name!r} has no agent reply to judge: the conversation {how} with "
        f"{len(transcript.turns)} turn(s) and {what}. Check {advice}. The call was not judged."
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
    context = template_context(scenario, settings)
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
    # Everything that decides where a conversation times out: the scenario and its timeout as well as every
    # request of the conversation (two scenarios with identical prompts must not share a marker).
    timeout_key = marker_key("conversation_timeout", {
        "scenario": scenario.name, "timeout": timeout, "prompts": prompts, "seed": seed, "max_turns": max_turns,
        "first_speaker": speaker, "script": script,
        "roles": {side: [r.model, r.temperature, r.max_tokens] for side, r in roles.items()},
        "end_marker": settings.end_marker, "endpoint": settings.endpoint.identity,
    })
    recorded_timeout = cache.lookup_marker(timeout_key, label=label) if cache is not None else None
    replay_stop = recorded_timeout["turns"] if recorded_timeout else None

    async def one_turn(side: str) -> bool:
        """Produce ``side``'s next message; return True when the call ends."""
        number = len(transcript.turns) + 1
        if replay_stop is not None and len(transcript.turns) >= replay_stop:
            raise _ReplayedTimeout
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

    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            while not await one_turn(speaker):
                speaker = "agent" if speaker == "client" else "client"
    except (TimeoutError, _ReplayedTimeout) as exc:
        if isinstance(exc, TimeoutError) and not deadline.expired():
            raise  # a TimeoutError from below (not this conversation's deadline) is trouble, not a timeout
        if isinstance(exc, TimeoutError) and (retrying := RETRYING.get()):
            # The endpoint used up the time (429s, 5xx, dropped connections), not the conversation: judging the
            # transcript as it stands would score the endpoint's trouble as the agent's.
            raise EndpointError(f"{label}: the conversation reached its timeout={timeout:g}s while {retrying}; "
                                "the endpoint, not the conversation, used up the time: check the endpoint (or "
                                "raise the scenario's 'timeout')") from None
        transcript.ended_by, transcript.end_reason = "timeout", f"conversation exceeded timeout={timeout:g}s"
        # A conversation in which the agent never answered is an error, not a result to reproduce: record
        # no marker, so a rerun after fixing the endpoint calls the agent again instead of replaying it.
        if cache is not None and replay_stop is None and transcript.agent_replied:
            cache.store_marker(timeout_key, {"turns": len(transcript.turns)})
    transcript.duration_s = round(time.perf_counter() - started, 4)
    return transcript
