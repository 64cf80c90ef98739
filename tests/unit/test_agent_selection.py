"""Deterministic agent selection (``expected_agents``), the four match modes, tool-call match modes and a
metric's ``agent`` option reading one agent's messages (issue 28, part 2)."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmsim.metrics.agents import ExpectedAgentsMetric, agent_conversation, never_spoke, route
from pytest_llmsim.metrics.api import Conversation
from pytest_llmsim.metrics.rules import RulesMetric
from pytest_llmsim.metrics.sequences import first_mismatch
from pytest_llmsim.model.scenario import Scenario, expected_agents_options
from pytest_llmsim.model.transcript import Transcript, Turn

SCENARIO = Scenario(name="s")


def team(*steps: tuple[list[str], list[tuple[str, str]]]) -> list[dict[str, Any]]:
    """A transcript: a customer turn before each agent turn of (speakers, handoffs)."""
    turns: list[dict[str, Any]] = []
    for speakers, handoffs in steps:
        turns.append({"role": "client", "text": "hi"})
        turns.append({"role": "agent", "text": " ".join(speakers),
                      "messages": [{"agent": name, "content": f"{name} here"} for name in speakers],
                      "handoffs": [{"from": a, "to": b} for a, b in handoffs]})
    return turns


def conversation(turns: list[dict[str, Any]]) -> Conversation:
    transcript = Transcript([Turn(t["role"], t["text"], tool_calls=list(t.get("tool_calls") or []),
                                  messages=list(t.get("messages") or []), handoffs=list(t.get("handoffs") or []))
                             for t in turns])
    return Conversation(turns=tuple(transcript.to_dicts()), transcript=transcript)


def verdict(turns: list[dict[str, Any]], agents: list[str], mode: str) -> tuple[bool | None, str]:
    result = ExpectedAgentsMetric({"agents": agents, "mode": mode}).evaluate(conversation(turns), SCENARIO)
    return result.passed, result.reason


REFUND_TO_BILLING = team((["Triage"], []), (["Billing"], [("Triage", "Billing")]))
REFUND_TO_SHIPPING = team((["Triage"], []), (["Shipping"], [("Triage", "Shipping")]))


def test_the_route_follows_handoffs_and_speakers_and_keeps_the_turn() -> None:
    steps = route(team((["Triage"], []), (["Billing"], [("Triage", "Billing")]), (["Billing", "Triage"], [])))
    assert [(s.agent, s.turn, s.source) for s in steps] == [("Triage", 2, None), ("Billing", 4, "Triage"),
                                                             ("Triage", 6, "Billing")]
    # a silent orchestrator: the handoff alone puts it on the route
    assert [s.agent for s in route(team((["Billing"], [("Triage", "Billing")])))] == ["Triage", "Billing"]
    assert route([{"role": "agent", "text": "single speaker"}]) == []


@pytest.mark.parametrize("mode", ["exact", "in_order", "any_order", "subset"])
def test_the_right_route_passes_in_every_mode(mode: str) -> None:
    assert verdict(REFUND_TO_BILLING, ["Triage", "Billing"], mode)[0] is True


@pytest.mark.parametrize("mode", ["exact", "in_order"])
def test_a_wrong_handoff_fails_naming_it_and_its_turn(mode: str) -> None:
    passed, reason = verdict(REFUND_TO_SHIPPING, ["Triage", "Billing"], mode)
    assert passed is False
    assert reason.startswith("wrong handoff at turn 4: Triage -> Shipping, expected Triage -> Billing")


def test_any_order_names_the_unexpected_agent_and_subset_the_missing_one() -> None:
    passed, reason = verdict(REFUND_TO_SHIPPING, ["Triage", "Billing"], "any_order")
    assert passed is False and reason.startswith("unexpected handoff at turn 4: Triage -> Shipping")
    passed, reason = verdict(REFUND_TO_SHIPPING, ["Triage", "Billing"], "subset")
    assert passed is False and reason.startswith("missing handoff: agent 'Billing' never took the conversation")


def test_modes_differ_where_they_should() -> None:
    back_and_forth = team((["Triage"], []), (["Billing"], [("Triage", "Billing")]),
                          (["Triage"], [("Billing", "Triage")]))
    assert verdict(back_and_forth, ["Triage", "Billing"], "in_order")[0] is True
    assert verdict(back_and_forth, ["Triage", "Billing"], "exact")[1].startswith(
        "unexpected handoff at turn 6: Billing -> Triage")
    assert verdict(back_and_forth, ["Billing", "Triage"], "subset")[0] is True
    assert verdict(back_and_forth, ["Billing", "Triage", "Triage"], "any_order")[0] is True
    assert verdict(REFUND_TO_BILLING, ["Billing", "Triage"], "any_order")[0] is True
    assert verdict(REFUND_TO_BILLING, ["Billing", "Triage"], "in_order")[0] is False
    passed, reason = verdict(team((["Triage"], [])), ["Triage", "Billing"], "exact")
    assert passed is False and reason.startswith("missing handoff: agent 'Billing' never took")


def test_an_agent_that_never_exists_and_a_single_speaker_agent_fail_never_pass() -> None:
    passed, reason = verdict(REFUND_TO_BILLING, ["Triage", "Ghost"], "subset")
    assert passed is False and "agent 'Ghost' never took the conversation" in reason
    passed, reason = verdict([{"role": "client", "text": "hi"}, {"role": "agent", "text": "one agent"}],
                             ["Triage"], "in_order")
    assert passed is False and "no agent named" in reason


@pytest.mark.parametrize(("value", "problem"), [
    ("Triage", "expected_agents must be a non-empty list of agent names"),
    ([], "expected_agents must be a non-empty list"),
    (["Triage", ""], "expected_agents[1] must be an agent's name"),
    ({"agents": ["A"], "mode": "fuzzy"}, "'mode' must be one of exact, in_order, any_order, subset"),
    ({"agents": ["A"], "order": "exact"}, "unknown key 'order'"),
])
def test_a_bad_expected_agents_is_refused(value: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        expected_agents_options(value)


def test_sequences_report_the_first_mismatch() -> None:
    same = str.__eq__
    assert first_mismatch(["a", "b"], ["a", "c"], same, "exact") == first_mismatch(["a", "b"], ["a", "c"], same,
                                                                                     "in_order")
    assert first_mismatch(["a"], ["a", "b"], same, "subset") is None
    assert first_mismatch(["a", "a"], ["a"], same, "any_order") is not None


# -- tool calls --------------------------------------------------------------------------------------------------
def calls(*names_and_args: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": "client", "text": "hi"},
            {"role": "agent", "text": "done", "tool_calls": [{"name": n, "arguments": a, "result": None}
                                                             for n, a in names_and_args]}]


def rules(options: dict[str, Any], turns: list[dict[str, Any]]) -> tuple[bool | None, str]:
    result = RulesMetric(options).evaluate(conversation(turns), SCENARIO)
    return result.passed, result.reason


def test_tool_calls_match_in_the_four_modes_with_arguments_by_subset() -> None:
    made = calls(("lookup", {"order": 7, "verbose": True}), ("refund", {"order": 7, "amount": 5}))
    wanted = [{"name": "lookup", "arguments": {"order": 7}}, {"name": "refund", "arguments": {"order": 7}}]
    for mode in ("exact", "in_order", "any_order", "subset"):
        assert rules({"tool_called": wanted, "tool_match": mode}, made) == (True, "")
    assert rules({"tool_called": list(reversed(wanted)), "tool_match": "any_order"}, made)[0] is True
    passed, reason = rules({"tool_called": list(reversed(wanted)), "tool_match": "exact"}, made)
    assert passed is False and reason.startswith('wrong tool call at turn 2: lookup({"order": 7, "verbose": true}), '
                                                 "expected 'refund' with arguments {\"order\": 7}")
    passed, reason = rules({"tool_called": wanted[:1], "tool_match": "any_order"}, made)
    assert passed is False and reason.startswith('unexpected tool call at turn 2: refund({"amount": 5, "order": 7})')
    passed, reason = rules({"tool_called": [{"name": "refund", "arguments": {"order": 8}}], "tool_match": "exact"},
                           made)
    assert passed is False and "wrong tool call at turn 2: lookup" in reason


def test_tool_match_options_are_checked() -> None:
    with pytest.raises(ValueError, match="option 'tool_match' must be one of"):
        RulesMetric({"tool_called": ["a"], "tool_match": "loose"})
    with pytest.raises(ValueError, match="needs 'tool_called'"):
        RulesMetric({"tool_match": "exact", "contains": "x"})
    with pytest.raises(ValueError, match="keep tool_match"):
        RulesMetric({"tool_called": ["a", "b"], "tool_order": True, "tool_match": "exact"})


# -- agent: NAME ---------------------------------------------------------------------------------------------------
def test_a_metric_for_one_agent_reads_only_its_messages() -> None:
    turns = team((["Triage"], []), (["Triage", "Billing"], [("Triage", "Billing")]))
    turns[3]["messages"][1]["tool_calls"] = [{"name": "refund", "arguments": {}, "result": None}]
    own = agent_conversation(conversation(turns), "Billing")
    assert own is not None
    assert [t["role"] for t in own.turns] == ["client", "client", "agent"]  # Triage's only turn is left out
    assert own.turns[2]["text"] == "Billing here"
    assert [c["name"] for c in own.tool_calls] == ["refund"]
    assert own.transcript is not None and "Agent [Triage]" not in own.transcript.as_text()
    assert agent_conversation(conversation(turns), "Ghost") is None


def test_a_handoff_to_an_agent_that_never_speaks_does_not_pass() -> None:
    """Triage says it hands over to Billing, and Billing never answers: the customer never reached Billing."""
    handed_only = team((["Triage"], [("Triage", "Billing")]))
    for mode in ("exact", "in_order", "any_order", "subset"):
        passed, reason = verdict(handed_only, ["Triage", "Billing"], mode)
        assert passed is False, mode
        assert reason.startswith("agent 'Billing' never spoke in this conversation: the route reaches it only "
                                 "through a handoff (turn 2: Triage -> Billing)"), reason
    # handoffs between agents none of whom spoke: the one handing on acted, the one handed to did not
    passed, reason = verdict(team((["Triage"], [("X", "Y")])), ["X", "Y"], "exact")
    assert passed is False and "agent 'Y' never spoke" in reason
    # a triage agent that hands on without a word (as the frameworks' triage agents do) took the conversation
    assert verdict(team((["Billing"], [("Triage", "Billing")])), ["Triage", "Billing"], "exact")[0] is True
    # the same route with Billing answering on the next turn passes
    assert verdict(team((["Triage"], [("Triage", "Billing")]), (["Billing"], [])), ["Triage", "Billing"],
                   "exact")[0] is True


@pytest.mark.parametrize("name", ["Billing\u200b", "\ufeffBilling ", " Billing"])
def test_names_are_compared_without_invisible_ends(name: str) -> None:
    assert expected_agents_options([name])["agents"] == ["Billing"]
    assert verdict(team((["Billing"], [])), [name], "exact")[0] is True


def test_a_metric_for_an_agent_named_in_another_case_fails_and_says_which_name_spoke() -> None:
    result = never_spoke("rules", "billing", conversation(team((["Triage", "Billing"], []))))
    assert result.passed is False
    assert result.reason == ("agent 'billing' never spoke in this conversation (agents that spoke: Triage, Billing); "
                             "the metric reads only its messages; names are compared exactly: did you mean "
                             "'Billing'?")
    assert "did you mean" not in never_spoke("rules", "Ghost", conversation(team((["Triage"], [])))).reason
