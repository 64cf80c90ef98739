"""Multi-agent metrics (no pytest): which agents a conversation went through (``expected_agents``, deterministic
agent selection) and every metric's ``agent: NAME`` option (the metric reads only that agent's messages).

The route of a conversation is the agents that took it, in order: per agent turn, the chain of its handoffs
(``from`` -> ``to``) or, without handoffs, its speakers; an agent that goes on speaking (in the same or the next
turn) is one step. Each step keeps the turn where the conversation reached that agent, so a failure names the
handoff and its turn::

    expected_agents: [Triage, Billing]                      # mode in_order
    expected_agents: {agents: [Triage, Billing], mode: exact}  # exact | in_order | any_order | subset
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_llmsim.metrics.api import Conversation, Metric, MetricResult
from pytest_llmsim.metrics.sequences import Mismatch, first_mismatch
from pytest_llmsim.model.names import strip_invisible
from pytest_llmsim.model.results import turn_handoffs, turn_speakers
from pytest_llmsim.model.scenario import expected_agents_options

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import Scenario
    from pytest_llmsim.model.transcript import Turn

AGENT_OPTION = "agent"  # every metric's option naming the one agent it reads
EXPECTED_AGENTS = "expected_agents"


@dataclass(frozen=True)
class Step:
    """The conversation reached ``agent`` at ``turn`` (1-based, counting every turn), from ``source`` (None for
    the first agent)."""

    agent: str
    turn: int
    source: str | None = None

    @property
    def handoff(self) -> str:
        return f"{self.source} -> {self.agent}" if self.source is not None else f"{self.agent} (first agent)"


def _turn_route(turn: Mapping[str, Any]) -> list[str]:
    speakers = turn_speakers(turn)
    handoffs = turn_handoffs(turn)
    if not handoffs:
        return speakers
    chain: list[str] = []
    for handoff in handoffs:
        for name in (str(handoff.get("from")), str(handoff.get("to"))):
            if not chain or chain[-1] != name:
                chain.append(name)
    # speakers after the last one the chain reaches (a handoff left unreported at the end of the turn)
    last = chain[-1]
    if last in speakers:
        tail = speakers[len(speakers) - speakers[::-1].index(last):]
        chain.extend(tail)
    return chain


def route(turns: Sequence[Mapping[str, Any]]) -> list[Step]:
    """The agents the conversation went through, in order (see the module doc)."""
    steps: list[Step] = []
    for number, turn in enumerate(turns, 1):
        if turn.get("role") != "agent":
            continue
        for name in _turn_route(turn):
            if not steps or steps[-1].agent != name:
                steps.append(Step(name, number, steps[-1].agent if steps else None))
    return steps


class ExpectedAgentsMetric(Metric):
    """Deterministic agent selection: the conversation went through ``agents`` (``mode``: exact, in_order,
    any_order, subset). A failure names the first wrong or missing handoff and its turn."""

    name = EXPECTED_AGENTS

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        checked = expected_agents_options(dict(self.options))
        self.agents: list[str] = checked["agents"]
        self.mode: str = checked["mode"]

    def evaluate(self, conversation: Conversation, scenario: Scenario) -> MetricResult:
        steps = route(conversation.turns)
        mismatch = first_mismatch(self.agents, steps, lambda want, step: want == step.agent, self.mode)
        details = {"mode": self.mode, "expected": list(self.agents),
                   "route": [{"agent": s.agent, "turn": s.turn} for s in steps]}
        if mismatch is None:
            silent = _silent_agent(self.agents, steps, conversation)
            if silent is not None:
                return MetricResult(self.name, 0.0, False, f"{silent}; {self._went(steps)}", details)
            shown = " -> ".join(s.agent for s in steps)
            return MetricResult(self.name, 1.0, True, f"agents {shown} ({self.mode} of {', '.join(self.agents)})",
                                details)
        return MetricResult(self.name, 0.0, False, self._problem(mismatch, steps), details)

    def _went(self, steps: list[Step]) -> str:
        went = " -> ".join(s.agent for s in steps) if steps else "no agent named (no message with 'agent')"
        return f"route {went}; expected {', '.join(self.agents)} ({self.mode})"

    def _problem(self, mismatch: Mismatch, steps: list[Step]) -> str:
        expected = f"expected {', '.join(self.agents)} ({self.mode})"
        went = " -> ".join(s.agent for s in steps) if steps else "no agent named (no message with 'agent')"
        if mismatch.kind == "wrong":
            assert mismatch.expected is not None and mismatch.actual is not None
            step = steps[mismatch.actual]
            want = self.agents[mismatch.expected]
            if step.source is None:
                return (f"wrong first agent at turn {step.turn}: {step.agent!r} answered, expected {want!r}; "
                        f"route {went}; {expected}")
            return (f"wrong handoff at turn {step.turn}: {step.handoff}, expected {step.source} -> {want}; "
                    f"route {went}; {expected}")
        if mismatch.kind == "unexpected":
            assert mismatch.actual is not None
            step = steps[mismatch.actual]
            return f"unexpected handoff at turn {step.turn}: {step.handoff}; route {went}; {expected}"
        assert mismatch.expected is not None
        want = self.agents[mismatch.expected]
        if want not in {s.agent for s in steps}:
            return f"missing handoff: agent {want!r} never took the conversation; route {went}; {expected}"
        after = steps[-1] if steps else None
        where = f" after {after.agent!r} (turn {after.turn})" if after is not None else ""
        return f"missing handoff to {want!r}{where}; route {went}; {expected}"


def _silent_agent(agents: Sequence[str], steps: Sequence[Step], conversation: Conversation) -> str | None:
    """Why the route's match does not count, or None: an expected agent the route reaches only as the target of a
    handoff, that never said a word nor handed the conversation on. A handoff to an agent that never answers is
    not the conversation going through that agent (an agent that hands on without a word, as a triage agent does,
    has acted)."""
    acted = {name for turn in conversation.turns for name in turn_speakers(turn)}
    acted.update(str(h.get("from")) for turn in conversation.turns for h in turn_handoffs(turn))
    for name in dict.fromkeys(agents):
        if name in acted:
            continue
        step = next((s for s in steps if s.agent == name), None)
        where = f" (turn {step.turn}: {step.handoff})" if step is not None else ""
        return (f"agent {name!r} never spoke in this conversation: the route reaches it only through a "
                f"handoff{where}, and a handoff to an agent that never answers does not count")
    return None


# -- agent: NAME on any metric -------------------------------------------------------------------------------------
def target_agent(options: Mapping[str, Any], label: str, metric: str) -> str | None:
    """A metric's ``agent`` option (None without one); ValueError naming it when it is not an agent's name."""
    if AGENT_OPTION not in options:
        return None
    name = options[AGENT_OPTION]
    if not isinstance(name, str) or not strip_invisible(name):
        raise ValueError(f"{label}: metric {metric!r}: option 'agent' must be an agent's name, a non-empty string "
                         f"(got {name!r:.80})")
    return strip_invisible(name)


def without_agent_option(options: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in options.items() if key != AGENT_OPTION}


def _own_turn(turn: Turn, agent: str) -> Turn | None:
    mine = [m for m in turn.messages if m.get("agent") == agent]
    if not mine:
        return None
    calls = [call for m in mine for call in m.get("tool_calls") or []]
    text = "\n\n".join(str(m.get("content") or "") for m in mine if m.get("content"))
    handoffs = [h for h in turn.handoffs if agent in (h.get("from"), h.get("to"))]
    return dataclasses.replace(turn, text=text, tool_calls=calls, messages=mine, handoffs=handoffs)


def agent_conversation(conversation: Conversation, agent: str) -> Conversation | None:
    """``conversation`` as a metric targeting ``agent`` reads it: the customer's turns, and of each agent turn only
    that agent's messages (turns it did not speak in are left out); None when the agent never spoke."""
    from pytest_llmsim.model.transcript import Transcript, Turn

    source = conversation.transcript
    if source is None:  # a Conversation made by hand (the engine always gives its transcript)
        source = Transcript([Turn(str(t.get("role")), str(t.get("text") or ""),
                                  tool_calls=list(t.get("tool_calls") or []), messages=list(t.get("messages") or []),
                                  handoffs=list(t.get("handoffs") or [])) for t in conversation.turns],
                            ended_by=conversation.ended_by, end_reason=conversation.end_reason)
    turns: list[Turn] = []
    for turn in source.turns:
        if turn.role != "agent":
            turns.append(turn)
            continue
        own = _own_turn(turn, agent)
        if own is not None:
            turns.append(own)
    if not any(turn.role == "agent" for turn in turns):
        return None
    transcript = Transcript(turns, ended_by=source.ended_by, end_reason=source.end_reason,
                            duration_s=source.duration_s)
    return dataclasses.replace(conversation, turns=tuple(transcript.to_dicts()), transcript=transcript)


def never_spoke(name: str, agent: str, conversation: Conversation) -> MetricResult:
    """The failed result of metric ``name`` targeting ``agent``, which never spoke."""
    spoke = list(dict.fromkeys(a for turn in conversation.turns for a in turn_speakers(turn)))
    shown = ", ".join(spoke) if spoke else "none named (the agent's replies carry no 'messages' with 'agent')"
    alike = [a for a in spoke if a.casefold() == agent.casefold()]
    hint = f"; names are compared exactly: did you mean {alike[0]!r}?" if alike else ""
    return MetricResult(name, None, False, f"agent {agent!r} never spoke in this conversation (agents that spoke: "
                        f"{shown}); the metric reads only its messages{hint}", {"agent": agent})
