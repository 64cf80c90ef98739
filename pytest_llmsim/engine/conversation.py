"""The conversation loop between the agent under test and the simulated customer (the "client").

The agent is the prompt agent (an LLM driven by a template, replayed from the cache like every LLM call) or
a code agent (``agents.py``: python, http, openai), called live by default: it is what changes between runs.
A code agent sees the conversation as OpenAI-style messages from its side, kept incrementally (one append per
turn, nothing rebuilt per turn).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pytest_llmsim.errors import AgentError, EndpointError, NoAgentReplyError
from pytest_llmsim.llm.client import RETRYING, Completer, LLMRequest
from pytest_llmsim.llm.rate_limits import LIMIT_CLOCK
from pytest_llmsim.model.prompts import OPENING_CUE, PromptRenderer, template_context
from pytest_llmsim.model.results import heard_text
from pytest_llmsim.model.scenario import Scenario
from pytest_llmsim.model.settings import RunSettings
from pytest_llmsim.model.transcript import Transcript, Turn, visible
from pytest_llmsim.replay.cache import CallCache, marker_key
from pytest_llmsim.replay.recordings import CURRENT as RECORDER

if TYPE_CHECKING:
    from pytest_llmsim.agents.runtime import AgentRuntime

# Called with each turn as it is added (``llmsim run --single`` streams the conversation): ``simulate``'s
# ``on_turn``, else this context's hook, so a front end sets it around the runner's call without new parameters.
ON_TURN: contextvars.ContextVar[Callable[[Turn], None] | None] = contextvars.ContextVar("llmsim_on_turn",
                                                                                         default=None)


def _normalized_calls(calls: Any, label: str) -> list[dict[str, Any]]:
    """Tool calls of a prompt agent's reply (OpenAI shape) as transcript entries."""
    if not calls:
        return []
    from pytest_llmsim.agents.base import normalize_tool_calls

    try:
        return normalize_tool_calls(calls)
    except TypeError as exc:
        raise AgentError(f"{label}: the agent model returned unusable tool calls: {exc}") from None


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
    spec = settings.agent_for(scenario)
    if spec is not None and spec.kind != "prompt" and not agent_turns:
        from pytest_llmsim.agents.specs import spec_identity

        what = "the agent never answered"
        if transcript.ended_by != "timeout":
            what = "the agent never got a turn"
        advice = (f"that your {spec.kind} agent {spec_identity(spec)!r} answers within the conversation's "
                  "timeout (a blocking call, a deadlock, a hung service?) or raise the scenario's 'timeout'"
                  if transcript.ended_by == "timeout" else "the scenario's max_turns, first_speaker and scripted turns")
        return NoAgentReplyError(
            f"{label}: scenario {scenario.name!r} has no agent reply to judge: the conversation {how} with "
            f"{len(transcript.turns)} turn(s) and {what}. Check {advice}. The call was not judged."
        )
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


def _speakers_text(messages: list[dict[str, Any]], marker: str) -> tuple[str, bool, list[dict[str, Any]]]:
    """A multi-agent turn's text (its messages' contents, each stripped of the end marker, joined by a blank
    line; invisible ones left out), whether any message held the marker, and the messages so stripped (new
    dicts: the reply's own may be what the cache and the recording keep)."""
    texts, ended, shown = [], False, []
    for message in messages:
        content, found = strip_end_marker(str(message.get("content") or "").strip(), marker)
        content = content if visible(content) else ""
        shown.append({**message, "content": content})
        ended = ended or found
        if content:
            texts.append(content)
    return "\n\n".join(texts), ended, shown


def _messages_for(side: str, system_prompt: str, turns: list[Turn]) -> tuple[dict[str, str], ...]:
    """Chat history from ``side``'s point of view: its own turns are 'assistant', the other's 'user'."""
    messages = [{"role": "system", "content": system_prompt}]
    if not turns or turns[0].role == side:
        messages.append({"role": "user", "content": OPENING_CUE})
    for turn in turns:
        messages.append({"role": "assistant" if turn.role == side else "user",
                         "content": heard_text(vars(turn)) if turn.messages else turn.text})
    return tuple(messages)


PROCEED = "proceed"
"""What a ``customer: proceed`` customer says once its scripted turns are said."""


async def simulate(
    scenario: Scenario,
    settings: RunSettings,
    client: Completer,
    renderer: PromptRenderer,
    *,
    label: str,
    cache: CallCache | None = None,
    agents: AgentRuntime | None = None,
    on_turn: Callable[[Turn], None] | None = None,
) -> Transcript:
    """Run one conversation. Errors (endpoint, cache miss, template, agent) propagate; the caller records them.

    A timeout depends on wall time, which a replay does not reproduce; so where a recorded conversation
    timed out is stored in the cache (``cache``) and a replay stops at the same turn.
    """
    on_turn = on_turn if on_turn is not None else ON_TURN.get()
    spec = settings.agent_for(scenario)
    code_agent = spec is not None and spec.kind != "prompt"
    if code_agent and (agents is None or cache is None):
        # The ignore below: code_agent implies a spec (mypy does not follow a condition kept in a variable)
        raise AgentError(f"{label}: a {spec.kind} agent needs the runner's agent runtime and cache")  # type: ignore[union-attr]
    context = template_context(scenario, settings)
    roles = {side: settings.role(side, scenario) for side in (("client",) if code_agent else ("agent", "client"))}
    prompts = {
        side: renderer.render(role.template, context, scenario_label=label) for side, role in roles.items()
    }
    seed = scenario.seed if scenario.seed is not None else settings.default_seed
    session = None
    agent_messages: list[dict[str, Any]] = []  # the conversation from the code agent's side
    results_only = False
    if code_agent:
        from pytest_llmsim.agents.base import agent_view, reply_size_error
        from pytest_llmsim.agents.runtime import new_context
        from pytest_llmsim.agents.specs import describe_spec

        assert agents is not None and spec is not None
        driver, session = await agents.open(spec, new_context(scenario.name, scenario.variables, seed),
                                            agent_cache=scenario.agent_cache, label=label)
        results_only = driver.results_only
        add_usage = getattr(client, "add_usage", None)
    max_turns = scenario.max_turns or settings.max_turns
    timeout = scenario.timeout or settings.timeout
    speaker = scenario.first_speaker or settings.first_speaker
    script = list(scenario.turns) if scenario.turns is not None else None
    transcript = Transcript()
    started = time.perf_counter()
    # Everything that decides where a conversation times out: the scenario and its timeout as well as every
    # request of the conversation (two scenarios with identical prompts must not share a marker).
    timeout_payload = {
        "scenario": scenario.name, "timeout": timeout, "prompts": prompts, "seed": seed, "max_turns": max_turns,
        "first_speaker": speaker, "script": script, **({"customer": scenario.customer} if scenario.customer else {}),
        "roles": {side: [r.model, r.temperature, r.max_tokens] for side, r in roles.items()},
        "end_marker": settings.end_marker, "endpoint": settings.endpoint.identity,
        **({"agent": f"{spec.kind}:{driver.identity}"} if code_agent else {}),  # type: ignore[union-attr]  # as above
    }
    recorder = RECORDER.get()
    recorder_key = recorder.marker_key(timeout_payload) if recorder is not None else ""
    if recorder is not None:
        recorder.watch(transcript.turns)  # where a replay leaves the recording is told turn by turn
    replay_stop = recorder.lookup_timeout(recorder_key) if recorder is not None else None
    if replay_stop is None and cache is not None and (recorder is None or recorder.existing is None):
        recorded_timeout = cache.lookup_marker(marker_key("conversation_timeout", timeout_payload), label=label)
        replay_stop = recorded_timeout["turns"] if recorded_timeout else None

    async def one_turn(side: str) -> bool:
        """Produce ``side``'s next message; return True when the call ends."""
        number = len(transcript.turns) + 1
        if replay_stop is not None and len(transcript.turns) >= replay_stop:
            raise _ReplayedTimeout
        if side == "client" and script is not None:
            if not script and scenario.customer != "proceed":
                transcript.ended_by, transcript.end_reason = "script", "scripted customer turns exhausted"
                return True
            # ``customer: proceed``: past the script, "proceed" (the evaluation module's ProceedUser)
            text, ended = strip_end_marker(script.pop(0) if script else PROCEED, settings.end_marker)
            transcript.turns.append(Turn("client", text, scripted=True))
        elif side == "agent" and session is not None:
            reply = await session.reply(list(agent_messages), label=f"{label} agent turn {number}")
            # The ignore below: spec is asserted not None where the session is opened (outside this closure)
            too_large = reply_size_error(reply.text, reply.tool_calls,
                                         f"{label} agent turn {number}: the {describe_spec(spec)}",  # type: ignore[arg-type]
                                         handoffs=reply.handoffs)
            if too_large is not None:
                raise AgentError(too_large)
            spoken = reply.messages
            if spoken:
                text, ended, spoken = _speakers_text(spoken, settings.end_marker)
            else:
                text, ended = strip_end_marker(reply.text.strip(), settings.end_marker)
            if not visible(text):
                text = ""  # only invisible characters: no reply (a judge would score a blank turn)
            ended = ended or reply.end
            transcript.turns.append(Turn("agent", text, reply.prompt_tokens, reply.completion_tokens,
                                         reply.latency_s, reply.cached, tool_calls=reply.tool_calls,
                                         messages=spoken, handoffs=reply.handoffs))
            if reply.metered and add_usage is not None:
                add_usage("agent", reply.model, reply.prompt_tokens, reply.completion_tokens, reply.cached)
        else:
            role = roles[side]
            request = LLMRequest(
                role=side, model=role.model, messages=_messages_for(side, prompts[side], transcript.turns),
                temperature=role.temperature, max_tokens=role.max_tokens, seed=seed,
            )
            llm_reply = await client.complete(request, label=f"{label} {side} turn {number}")
            text, ended = strip_end_marker(llm_reply.text.strip(), settings.end_marker)
            if side == "agent" and not visible(text):
                text = ""
            turn = Turn(side, text, llm_reply.prompt_tokens, llm_reply.completion_tokens, llm_reply.latency_s,
                        llm_reply.cached)
            if getattr(llm_reply, "tool_calls", None):
                turn.tool_calls = _normalized_calls(llm_reply.tool_calls, f"{label} {side} turn {number}")
            transcript.turns.append(turn)
        if session is not None:
            last = transcript.turns[-1]
            agent_messages.extend(agent_view(last.role, last.text, last.tool_calls, number,
                                             results_only=results_only, messages=last.messages))
        if on_turn is not None:
            on_turn(transcript.turns[-1])
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
    # Waiting on a rate limit stops this deadline (``rate_limits.LimitClock``): the timeout bounds the
    # conversation's own progress; the clock's bound ends a conversation stuck behind the limit.
    clock = LIMIT_CLOCK.get()
    try:
        async with deadline:
            if clock is not None:
                clock.bind(deadline)
            try:
                while not await one_turn(speaker):
                    speaker = "agent" if speaker == "client" else "client"
            finally:
                if clock is not None:
                    clock.bind(None)
    except (TimeoutError, _ReplayedTimeout) as exc:
        if isinstance(exc, TimeoutError) and not deadline.expired():
            raise  # a TimeoutError from below (not this conversation's deadline) is trouble, not a timeout
        if isinstance(exc, TimeoutError) and clock is not None and clock.exhausted():
            raise EndpointError(clock.message(f"{label} turn {len(transcript.turns) + 1}",
                                              settings.endpoint.describe())) from None
        if isinstance(exc, TimeoutError) and (retrying := RETRYING.get()):
            # The endpoint used up the time (429s, 5xx, dropped connections), not the conversation: judging the
            # transcript as it stands would score the endpoint's trouble as the agent's.
            raise EndpointError(f"{label}: the conversation reached its timeout={timeout:g}s while {retrying}; "
                                "the endpoint, not the conversation, used up the time: check the endpoint (or "
                                "raise the scenario's 'timeout')") from None
        transcript.ended_by, transcript.end_reason = "timeout", f"conversation exceeded timeout={timeout:g}s"
        # A conversation in which the agent never answered is an error, not a result to reproduce: record
        # no marker, so a rerun after fixing the endpoint calls the agent again instead of replaying it.
        if replay_stop is None and transcript.agent_replied:
            if cache is not None:
                key = marker_key("conversation_timeout", timeout_payload)
                cache.store_marker(key, {"turns": len(transcript.turns)})
        if recorder is not None and transcript.agent_replied:  # a replayed stop is kept in the rewritten file
            recorder.set_timeout(recorder_key, len(transcript.turns))
    transcript.duration_s = round(time.perf_counter() - started, 4)
    return transcript
