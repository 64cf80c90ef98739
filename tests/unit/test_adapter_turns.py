"""The framework adapters' shared parts, without a framework: the agent spec kinds, the turn built from a run's
items, and the plugin importing no framework until a scenario names its adapter."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from pytest_llmsim.agents.adapters import ADAPTERS
from pytest_llmsim.agents.adapters.common import Turn, reply_from_turn
from pytest_llmsim.agents.specs import describe_spec, parse_agent_spec
from pytest_llmsim.errors import ConfigError
from pytest_llmsim.model.scenario import ADAPTER_KINDS, AgentSpec


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_each_adapter_is_an_agent_kind_named_by_its_import_path(kind: str) -> None:
    spec = AgentSpec.model_validate({kind: "shop.bots:make"})
    assert spec.kind == kind and describe_spec(spec) == f"{kind} agent 'shop.bots:make'"
    assert kind in ADAPTERS
    assert parse_agent_spec(f"{{{kind}: 'shop.bots:make'}}", "--llmsim-agent") == spec


def test_a_bad_path_or_two_kinds_are_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"must be 'package\.module:name'"):
        AgentSpec.model_validate({"langgraph": "shop graph"})
    with pytest.raises(ValidationError, match="sets 'python' and 'openai_agents'; an agent is exactly one of"):
        AgentSpec.model_validate({"python": "a:b", "openai_agents": "a:c"})
    with pytest.raises(ValidationError, match="only apply to the prompt agent"):
        AgentSpec.model_validate({"autogen": "a:team", "model": "gpt"})
    with pytest.raises(ConfigError, match="llmsim_agent: field 'pydantic_ai'"):
        parse_agent_spec("{pydantic_ai: 42}")


def test_a_turn_groups_each_speakers_items_and_matches_results_innermost_first() -> None:
    turn = Turn()
    turn.call("Triage", "ask_billing", '{"q": "refund"}', "c1")
    turn.handoff("Triage", "Billing", "refund")
    turn.call("Billing", "lookup", {"id": 7}, "c1")  # a delegate reusing its caller's call id
    turn.result("c1", '{"total": 5}')
    turn.say("Billing", "Refunded 5.")
    turn.result("c1", "Refunded 5.")
    turn.handoff("Billing", "Billing")  # no handoff to oneself
    turn.say("Triage", "  ")  # nothing said
    turn.say("Triage", "Done.")
    turn.say("Triage", "Bye.")
    assert turn.as_dict() == {"messages": [
        {"agent": "Triage", "content": "", "tool_calls": [
            {"name": "ask_billing", "arguments": {"q": "refund"}, "result": "Refunded 5."}]},
        {"agent": "Billing", "content": "Refunded 5.", "tool_calls": [
            {"name": "lookup", "arguments": {"id": 7}, "result": {"total": 5}}]},
        {"agent": "Triage", "content": "Done.\n\nBye."}],
        "handoffs": [{"from": "Triage", "to": "Billing", "reason": "refund"}], "end": False}
    reply = reply_from_turn(turn.as_dict())
    assert reply.text == "Refunded 5.\n\nDone.\n\nBye."
    assert [c["name"] for c in reply.tool_calls] == ["ask_billing", "lookup"]
    assert [m["agent"] for m in reply.messages] == ["Triage", "Billing", "Triage"]


def test_a_handoff_made_through_a_tool_is_not_also_a_tool_call() -> None:
    turn = Turn()
    turn.call("Triage", "lookup", {}, "a")
    turn.call("Triage", "transfer_to_billing", {}, "b")
    turn.drop_call("Triage", "transfer_to_Billing")
    turn.handoff("Triage", "Billing")
    turn.drop_call("Nobody", "transfer_to_x")
    assert turn.as_dict()["messages"] == [{"agent": "Triage", "content": "", "tool_calls": [
        {"name": "lookup", "arguments": {}, "result": None}]}]
    only = Turn()
    only.call("Triage", "transfer_to_billing", {}, "b")
    only.drop_call("Triage", "transfer_to_billing")
    assert only.as_dict()["messages"] == []  # a message with nothing left is not shown


def test_the_plugin_imports_no_framework_until_a_scenario_names_its_adapter() -> None:
    frameworks = ["agents", "langgraph", "langchain_core", "pydantic_ai", "autogen_agentchat", "semantic_kernel",
                  "google.adk"]
    code = ("import sys, pytest_llmsim.plugin.hooks, pytest_llmsim.agents.runtime, pytest_llmsim.agents.adapters;"
            f"print([m for m in {frameworks!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
