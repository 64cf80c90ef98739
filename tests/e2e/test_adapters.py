"""Framework adapters, end to end: each runs the real framework (installed through the ``adapters`` extra) on the
multi-agent example in ``examples/multi_agent/<framework>/`` against the scripted OpenAI-compatible server over real
HTTP (no network), and reads who spoke, the handoffs and the tool calls from the framework's own run.

Two levels per framework: the adapter's turn dict, exactly (the driver opened and run in a fresh interpreter, two
turns of one conversation, so state across turns shows), and a pytest run of a scenario naming the adapter (the
transcript, the judge's view). A test skips, naming the extra, only when its framework is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProject, scenario, verdict
from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLES = REPO / "examples" / "multi_agent"

# What the example's module is, the object the scenario names, and the module that must be importable.
FRAMEWORKS: dict[str, tuple[str, str, str, str]] = {
    "openai_agents": ("openai_agents/shop_agents.py", "shop_agents:make_triage", "agents", "openai-agents"),
    "langgraph": ("langgraph/shop_graph.py", "shop_graph:make_graph", "langgraph_supervisor", "langgraph"),
    "autogen": ("autogen/shop_team.py", "shop_team:make_team", "autogen_agentchat", "autogen"),
    "pydantic_ai": ("pydantic_ai/shop_agent.py", "shop_agent:make_triage", "pydantic_ai", "pydantic-ai"),
    "google_adk": ("google_adk/shop_adk.py", "shop_adk:make_triage", "google.adk", "google-adk"),
    "semantic_kernel": ("semantic_kernel/shop_kernel.py", "shop_kernel:make_orchestration", "semantic_kernel",
                        "semantic-kernel"),
}

REFUND = "I want a refund for order 1042"
THANKS = "thanks, that is all"
LOOKUP = {"name": "lookup_order", "arguments": {"order_id": "1042"}}
ORDER = {"item": "hiking boots", "total": "59.90 EUR", "state": "late"}
REFUNDED = "Refunded 59.90 EUR for order 1042."
SK_LOOKUP = {**LOOKUP, "name": "Orders-lookup_order"}


def agent_rules(framework: str) -> list[dict[str, Any]]:
    """The model behind every agent of the examples: triage hands a refund to billing, billing looks the order up
    with its tool and answers; the judge and the customer are scripted too."""
    to_billing = {"tool_calls": [{"name": "transfer_to_billing", "arguments": {}}]}
    lookup = LOOKUP
    if framework == "pydantic_ai":  # delegation: a tool of the triage agent that runs the billing agent
        to_billing = {"tool_calls": [{"name": "transfer_to_billing", "arguments": {"request": "refund 1042"}}]}
    if framework == "google_adk":  # ADK's one transfer tool, naming the agent
        to_billing = {"tool_calls": [{"name": "transfer_to_agent", "arguments": {"agent_name": "Billing"}}]}
    if framework == "semantic_kernel":  # its functions are named Plugin-function
        to_billing = {"tool_calls": [{"name": "Handoff-transfer_to_Billing", "arguments": {}}]}
        lookup = SK_LOOKUP
    thanks: dict[str, Any] = {"reply": "You are welcome."}
    if framework == "autogen":  # a Swarm agent hands the customer back to the user when it has answered
        thanks["tool_calls"] = [{"name": "transfer_to_user", "arguments": {}}]
    return [
        {"match": {"system_contains": "EVALUATOR"}, "reply": verdict(3, "The refund was routed and handled.")},
        {"match": {"system_contains": "TRIAGE_AGENT", "last_role": "user", "last_user_contains": "refund"},
         **to_billing},
        {"match": {"system_contains": "TRIAGE_AGENT", "last_role": "tool", "last_tool_contains": "Refunded"},
         "reply": "Billing refunded it."},
        {"match": {"system_contains": "TRIAGE_AGENT"}, "reply": "Anything else?"},
        {"match": {"system_contains": "BILLING_AGENT", "last_role": "tool", "last_tool_contains": "hiking"},
         "reply": REFUNDED},
        {"match": {"system_contains": "BILLING_AGENT", "last_role": "assistant"},
         "tool_calls": [{"name": "transfer_to_user", "arguments": {}}]},
        {"match": {"system_contains": "BILLING_AGENT", "last_user_contains": "thanks"}, **thanks},
        {"match": {"system_contains": "BILLING_AGENT"}, "tool_calls": [lookup]},
    ]


# The routing regression: triage's model hands the refund to Shipping (a changed prompt or model does exactly this;
# the framework routes on the model's tool call), and Shipping answers politely.
TO_SHIPPING: dict[str, dict[str, Any]] = {
    "openai_agents": {"name": "transfer_to_shipping", "arguments": {}},
    "langgraph": {"name": "transfer_to_shipping", "arguments": {}},
    "autogen": {"name": "transfer_to_shipping", "arguments": {}},
    "pydantic_ai": {"name": "transfer_to_shipping", "arguments": {"request": "refund 1042"}},
    "google_adk": {"name": "transfer_to_agent", "arguments": {"agent_name": "Shipping"}},
    "semantic_kernel": {"name": "Handoff-transfer_to_Shipping", "arguments": {}},
}
PARCEL = "Your parcel is on its way and arrives on Friday."
# What expected_agents says, per example: the wrong handoff and its turn (the customer's first message is turn 1)
WRONG_HANDOFF = {framework: "wrong handoff at turn 2: Triage -> Shipping, expected Triage -> Billing"
                 for framework in FRAMEWORKS}
WRONG_HANDOFF["langgraph"] = "wrong handoff at turn 2: supervisor -> shipping, expected supervisor -> billing"


def misrouting_rules(framework: str) -> list[dict[str, Any]]:
    """``agent_rules`` with triage's model handing the refund to Shipping, which answers it as a delivery."""
    rules = agent_rules(framework)
    index = next(i for i, rule in enumerate(rules) if rule["match"].get("last_user_contains") == "refund")
    rules[index] = {**rules[index], "tool_calls": [TO_SHIPPING[framework]]}
    shipping: list[dict[str, Any]] = [{"match": {"system_contains": "SHIPPING_AGENT"}, "reply": PARCEL}]
    if framework == "autogen":  # a Swarm agent answers, then hands the customer back to the user
        back = {"tool_calls": [{"name": "transfer_to_user", "arguments": {}}]}
        shipping[:0] = [{"match": {"system_contains": "SHIPPING_AGENT", "last_role": "assistant"}, **back},
                        {"match": {"system_contains": "SHIPPING_AGENT", "last_user_contains": "thanks"},
                         "reply": "You are welcome.", **back}]
    return [*rules, *shipping]


# The turns each framework's run reads into, exactly.
PY_ORDER = "{'item': 'hiking boots', 'total': '59.90 EUR', 'state': 'late'}"  # AutoGen returns str(result)
EXPECTED: dict[str, list[dict[str, Any]]] = {
    "openai_agents": [
        {"messages": [{"agent": "Billing", "content": REFUNDED, "tool_calls": [{**LOOKUP, "result": ORDER}]}],
         "handoffs": [{"from": "Triage", "to": "Billing"}], "end": False},
        {"messages": [{"agent": "Billing", "content": "You are welcome."}], "handoffs": [], "end": False},
    ],
    "langgraph": [
        {"messages": [{"agent": "billing", "content": REFUNDED, "tool_calls": [{**LOOKUP, "result": ORDER}]},
                      {"agent": "supervisor", "content": "Anything else?"}],
         "handoffs": [{"from": "supervisor", "to": "billing"}, {"from": "billing", "to": "supervisor"}],
         "end": False},
        {"messages": [{"agent": "supervisor", "content": "Anything else?"}], "handoffs": [], "end": False},
    ],
    "autogen": [
        {"messages": [{"agent": "Billing", "content": REFUNDED, "tool_calls": [{**LOOKUP, "result": PY_ORDER}]}],
         "handoffs": [{"from": "Triage", "to": "Billing"}], "end": False},
        {"messages": [{"agent": "Billing", "content": "You are welcome."}], "handoffs": [], "end": False},
    ],
    "google_adk": [
        {"messages": [{"agent": "Billing", "content": REFUNDED, "tool_calls": [{**LOOKUP, "result": ORDER}]}],
         "handoffs": [{"from": "Triage", "to": "Billing"}], "end": False},
        {"messages": [{"agent": "Billing", "content": "You are welcome."}], "handoffs": [], "end": False},
    ],
    "semantic_kernel": [  # each turn is one invoke of the handoff orchestration, which starts at its first agent
        {"messages": [{"agent": "Billing", "content": REFUNDED, "tool_calls": [{**SK_LOOKUP, "result": ORDER}]}],
         "handoffs": [{"from": "Triage", "to": "Billing"}], "end": False},
        {"messages": [{"agent": "Triage", "content": "Anything else?"}],
         "handoffs": [{"from": "Billing", "to": "Triage"}], "end": False},
    ],
    "pydantic_ai": [
        {"messages": [{"agent": "Triage", "content": "", "tool_calls": [{
                          "name": "transfer_to_billing", "arguments": {"request": "refund 1042"}, "result": REFUNDED}]},
                      {"agent": "Billing", "content": REFUNDED, "tool_calls": [{**LOOKUP, "result": ORDER}]},
                      {"agent": "Triage", "content": "Billing refunded it."}],
         "handoffs": [{"from": "Triage", "to": "Billing"}, {"from": "Billing", "to": "Triage"}], "end": False},
        {"messages": [{"agent": "Triage", "content": "Anything else?"}], "handoffs": [], "end": False},
    ],
}


def need(framework: str) -> None:
    """Skip unless the framework is installed: looked up, not imported (pytester's runs restore sys.modules, and a
    framework imported here would be half-dropped by the next one)."""
    module, extra = FRAMEWORKS[framework][2], FRAMEWORKS[framework][3]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing too (google.adk without google)
        found = False
    if not found:
        pytest.skip(f"the {framework} adapter's framework is not installed: pip install 'pytest-llmsim[{extra}]'")


DRIVE = """
import asyncio, json, sys
from pathlib import Path
from pytest_llmsim.agents.adapters import make_driver
from pytest_llmsim.agents.runtime import new_context
from pytest_llmsim.model.scenario import AgentSpec
from pytest_llmsim.model.settings import EndpointSettings, RoleSettings

framework, target, base_url, rootdir, texts = json.loads(sys.argv[1])


class Settings:  # the fields of RunSettings an adapter reads: the endpoint, the agent model, the import root
    endpoint = EndpointSettings(base_url=base_url, api_key="sk-test")
    agent = RoleSettings("scripted-model", "agent.j2", 0.0, 100)
    rootdir = Path(rootdir)


async def converse():
    driver = make_driver(AgentSpec.model_validate({framework: target}), Settings())
    session = await driver.open(new_context("refund", {}, 1), label="refund")
    return [await session.run_turn(text) for text in texts]

print(json.dumps(asyncio.run(converse())))
"""


def run_turns(framework: str, target: str, base_url: str, rootdir: Path, texts: list[str], *,
              two_conversations: bool = False) -> list[dict[str, Any]]:
    """The adapter's turn dicts for ``texts``, one conversation (or, with ``two_conversations``, the first text in
    conversation a, then in b, then the second in a), in a fresh interpreter (the framework is never imported
    into this one, where pytester's runs restore sys.modules)."""
    code = DRIVE.replace("\nprint(", f"{TWO_CONVERSATIONS}\nprint(") if two_conversations else DRIVE
    done = subprocess.run([sys.executable, "-c", code, json.dumps([framework, target, base_url, str(rootdir), texts])],
                          capture_output=True, text=True, timeout=300, cwd=rootdir)
    assert done.returncode == 0, done.stderr
    turns: list[dict[str, Any]] = json.loads(done.stdout.splitlines()[-1])
    return turns


def copy_example(framework: str, into: Path) -> None:
    shutil.copy(EXAMPLES / FRAMEWORKS[framework][0], into)


@pytest.mark.slow
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_the_adapter_reads_speakers_handoffs_and_tool_calls_from_the_framework(framework: str,
                                                                              tmp_path: Path) -> None:
    need(framework)
    copy_example(framework, tmp_path)
    with ScriptedOpenAIServer({"rules": agent_rules(framework)}) as server:
        turns = run_turns(framework, FRAMEWORKS[framework][1], server.base_url, tmp_path, [REFUND, THANKS])
        requests = server.requests_log()
    assert turns == EXPECTED[framework]
    # the factory was given the scenario's agent endpoint: every request reached it, with its model and key
    assert requests and {r["body"]["model"] for r in requests} == {"scripted-model"}
    assert {r["headers"]["authorization"] for r in requests} == {"Bearer sk-test"}
    # state across turns: the second turn's requests carry the first turn's exchange
    last = requests[-1]["body"]["messages"]
    assert any(REFUND in str(m.get("content")) for m in last) and THANKS in str(last)


SINGLE_GRAPH = """
import os

from langchain.agents import create_agent
from langchain_openai import ChatOpenAI

def lookup_order(order_id: str) -> dict:
    \"\"\"The order's item, total and delivery state.\"\"\"
    return {"item": "hiking boots", "total": "59.90 EUR", "state": "late"}

# a ready-made graph, no checkpointer, its model built at import: the adapter runs it as it is
graph = create_agent(ChatOpenAI(model="own-model", base_url=os.environ["SHOP_BASE_URL"], api_key="own-key",
                                use_responses_api=False),
                     tools=[lookup_order], name="Billing", system_prompt="You are BILLING_AGENT.")
"""


@pytest.mark.slow
def test_a_ready_made_graph_without_checkpointer_runs_as_it_is_and_keeps_the_conversation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need("langgraph")
    (tmp_path / "single_graph.py").write_text(SINGLE_GRAPH, encoding="utf-8")
    with ScriptedOpenAIServer({"rules": agent_rules("langgraph")}) as server:
        monkeypatch.setenv("SHOP_BASE_URL", server.base_url)
        turns = run_turns("langgraph", "single_graph:graph", "http://127.0.0.1:9/unused", tmp_path, [REFUND, THANKS])
        requests = server.requests_log()
    assert turns == [
        {"messages": [{"agent": "Billing", "content": REFUNDED, "tool_calls": [{**LOOKUP, "result": ORDER}]}],
         "handoffs": [], "end": False},
        {"messages": [{"agent": "Billing", "content": "You are welcome."}], "handoffs": [], "end": False}]
    # its own model client, not the scenario's endpoint; the second turn carries the first
    assert {r["body"]["model"] for r in requests} == {"own-model"}
    assert {r["headers"]["authorization"] for r in requests} == {"Bearer own-key"}
    last = requests[-1]["body"]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "tool", "assistant", "user"]


SHARED_TEAM = """
import os

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core.models import ModelFamily
from autogen_ext.models.openai import OpenAIChatCompletionClient

client = OpenAIChatCompletionClient(model="own-model", base_url=os.environ["SHOP_BASE_URL"], api_key="own-key",
                                    model_info={"vision": False, "function_calling": True, "json_output": False,
                                                "family": ModelFamily.UNKNOWN, "structured_output": False})
# one group chat object for every conversation: the adapter keeps each conversation's state apart
team = RoundRobinGroupChat([AssistantAgent("Billing", model_client=client, system_message="You are BILLING_AGENT."),
                            AssistantAgent("Reviewer", model_client=client, system_message="You are REVIEWER.")],
                           termination_condition=MaxMessageTermination(6), max_turns=2)
"""
TWO_CONVERSATIONS = """
async def converse():
    driver = make_driver(AgentSpec.model_validate({framework: target}), Settings())
    first = await driver.open(new_context("a", {}, 1), label="a")
    second = await driver.open(new_context("b", {}, 1), label="b")
    return [await first.run_turn(texts[0]), await second.run_turn(texts[0]), await first.run_turn(texts[1])]
"""


@pytest.mark.slow
def test_one_group_chat_object_serves_each_conversation_with_its_own_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need("autogen")
    (tmp_path / "shared_team.py").write_text(SHARED_TEAM, encoding="utf-8")
    rules = [{"match": {"system_contains": "REVIEWER"}, "reply": "Seen {n_assistant} answers of mine."},
             {"match": {"system_contains": "BILLING_AGENT"}, "reply": "Billing here."}]
    with ScriptedOpenAIServer({"rules": rules}) as server:
        monkeypatch.setenv("SHOP_BASE_URL", server.base_url)
        turns = run_turns("autogen", "shared_team:team", "http://127.0.0.1:9/unused", tmp_path, [REFUND, THANKS],
                          two_conversations=True)
    said = [[(m["agent"], m["content"]) for m in turn["messages"]] for turn in turns]
    assert said == [[("Billing", "Billing here."), ("Reviewer", "Seen 0 answers of mine.")],  # conversation a
                    [("Billing", "Billing here."), ("Reviewer", "Seen 0 answers of mine.")],  # b: none of a's
                    [("Billing", "Billing here."), ("Reviewer", "Seen 1 answers of mine.")]]  # a again: its own
    assert turns[0]["handoffs"] == [{"from": "Billing", "to": "Reviewer"}]  # the group chat gave the floor


# -- through pytest ---------------------------------------------------------------------------------------------------
def adapter_project(sim: SimProject, framework: str, target: str | None = None) -> None:
    copy_example(framework, sim.path)
    sim.server.set_script({"rules": agent_rules(framework)})
    sim.write_scenarios("refunds.yaml", {"scenarios": [
        scenario("refund", agent={framework: target or FRAMEWORKS[framework][1]}, turns=[REFUND, THANKS])]})


def record(sim: SimProject) -> dict[str, Any]:
    (row,) = json.loads((sim.path / "out.json").read_text())["results"]
    return row  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_a_scenario_naming_the_adapter_runs_and_is_judged(framework: str, sim: SimProject) -> None:
    need(framework)
    adapter_project(sim, framework)
    out = sim.run("--llmsim-results=out.json", subprocess=True)
    out.assert_outcomes(passed=1)
    row = record(sim)
    agent_turns = [t for t in row["transcript"] if t["role"] == "agent"]
    # the transcript keeps every speaker's message, its tool calls with results, and the handoffs, as read
    for turn, expected in zip(agent_turns, EXPECTED[framework], strict=True):
        assert (turn["messages"], turn.get("handoffs", [])) == (expected["messages"], expected["handoffs"])
    first = EXPECTED[framework][0]["messages"]
    assert agent_turns[0]["tool_calls"] == [call for m in first for call in m.get("tool_calls", [])]  # all speakers'
    judge = [m["content"] for r in sim.server.requests_log() for m in r["body"]["messages"]
             if m["role"] == "system" and m["content"].startswith("EVALUATOR")]
    assert len(judge) == 1 and REFUNDED in judge[0]


@pytest.mark.slow
def test_a_framework_that_raises_mid_run_is_an_agent_error_with_its_traceback(sim: SimProject) -> None:
    need("openai_agents")
    adapter_project(sim, "openai_agents")
    rules = agent_rules("openai_agents")
    rules.insert(1, {"match": {"system_contains": "BILLING_AGENT"}, "status": 400,
                     "error": {"message": "context window exceeded"}})
    sim.server.set_script({"rules": rules})
    out = sim.run("--llmsim-results=out.json", subprocess=True)
    out.assert_outcomes(errors=1)
    row = record(sim)
    assert row["error_kind"] == "agent_error" and row["score"] is None
    message = row["error_message"]
    assert "openai_agents agent 'shop_agents:make_triage' raised BadRequestError" in message
    assert "Traceback (most recent call last)" in message and "context window exceeded" in message
    assert not any(m["content"].startswith("EVALUATOR") for r in sim.server.requests_log()
                   for m in r["body"]["messages"] if m["role"] == "system")  # never judged


@pytest.mark.slow
def test_a_path_that_does_not_import_and_an_object_of_the_wrong_type_are_agent_errors(sim: SimProject) -> None:
    need("openai_agents")
    (sim.path / "broken.py").write_text("import agents\nraise ValueError('bad config in broken.py')\n")
    (sim.path / "wrong.py").write_text("triage = {'name': 'Triage'}\n\ndef make():\n    return 42\n")
    sim.write_scenarios("s.yaml", {"scenarios": [
        scenario(f"s{i}", agent={"openai_agents": target}, turns=[REFUND])
        for i, target in enumerate(["broken:triage", "wrong:triage", "wrong:make"])]})
    out = sim.run("--llmsim-results=out.json", subprocess=True)
    out.assert_outcomes(errors=3)
    rows = {r["scenario"]: r for r in json.loads((sim.path / "out.json").read_text())["results"]}
    assert all(r["error_kind"] == "agent_error" for r in rows.values())
    assert "cannot import module 'broken'" in rows["s0"]["error_message"]
    assert "ValueError: bad config in broken.py" in rows["s0"]["error_message"]
    assert "raise ValueError" in rows["s0"]["error_message"]  # its traceback
    assert "'wrong:triage'} is a builtins.dict" in rows["s1"]["error_message"]
    assert "not one of agents.Agent" in rows["s1"]["error_message"]
    assert "what the factory 'wrong:make' made is a builtins.int" in rows["s2"]["error_message"]


@pytest.mark.slow
def test_a_missing_framework_is_one_line_naming_the_extra(sim: SimProject) -> None:
    # The framework made unimportable for the inner run only, as if it were not installed.
    sim.pytester.makeconftest("import sys\nsys.modules['langgraph'] = None\nsys.modules['langgraph.pregel'] = None\n")
    sim.write_scenarios("s.yaml", {"scenarios": [
        scenario("s", agent={"langgraph": "shop_graph:make_graph"}, turns=[REFUND])]})
    out = sim.run("--llmsim-results=out.json", subprocess=True)
    out.assert_outcomes(errors=1)
    message = record(sim)["error_message"]
    assert message.count("\n") == 0, message
    assert "needs LangGraph" in message and "pip install 'pytest-llmsim[langgraph]'" in message


# -- the example projects, as shipped ----------------------------------------------------------------------------------
GENERIC_CUSTOMER = "role-playing a CUSTOMER"  # the package's own customer and judge templates
GENERIC_JUDGE = "strict reviewer of a conversation"


def run_example(framework: str, pytester: pytest.Pytester, agent_script: list[dict[str, Any]]
                ) -> tuple[pytest.RunResult, dict[str, Any], list[str]]:
    """``pytest examples/multi_agent/<framework>`` from a checkout, its agents' model scripted by ``agent_script``,
    an LLM customer (scripted) asking for the refund and a judge (scripted) content with any answer (score 3):
    the run's outcome, its results row and the judge's prompts."""
    shutil.copytree(EXAMPLES / framework, pytester.path / framework,
                    ignore=shutil.ignore_patterns(".llmsim_cache", "__pycache__", ".pytest_cache"))
    rules = [{"match": {"system_contains": GENERIC_JUDGE}, "reply": verdict(3, "The customer was answered politely.")},
             {"match": {"system_contains": GENERIC_CUSTOMER}, "replies": [REFUND, f"{THANKS} [END_CALL]"]},
             *agent_script]
    with ScriptedOpenAIServer({"rules": rules}) as server:
        out = pytester.runpytest_subprocess(framework, "-v", "-p", "no:randomly", "-p", "no:cacheprovider",
                                            f"--llmsim-base-url={server.base_url}", "--llmsim-results=out.json",
                                            timeout=300)
        judge = [m["content"] for r in server.requests_log() for m in r["body"]["messages"]
                 if m["role"] == "system" and GENERIC_JUDGE in m["content"]]
    (row,) = json.loads((pytester.path / "out.json").read_text())["results"]
    return out, row, judge


def metrics_of(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in row["metrics"]}


@pytest.fixture
def no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.slow
@pytest.mark.usefixtures("no_openai_env")
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_each_example_project_runs_as_shipped(framework: str, pytester: pytest.Pytester) -> None:
    """The agents route the refund to Billing: the judge (scripted) is shown every speaker by name and the
    example's ``expected_agents`` passes."""
    need(framework)
    out, row, judge = run_example(framework, pytester, agent_rules(framework))
    assert out.ret == 0, out.stdout.str()
    out.stdout.fnmatch_lines(["*refunds.yaml::refund_goes_to_billing PASSED*"])
    first = next(t for t in row["transcript"] if t["role"] == "agent")
    assert first["messages"] == EXPECTED[framework][0]["messages"]
    (prompt,) = judge
    assert "Billing" in prompt and REFUNDED in prompt
    routed = metrics_of(row)["expected_agents"]
    assert routed["passed"] is True and routed["score"] == 1.0, routed


@pytest.mark.slow
@pytest.mark.usefixtures("no_openai_env")
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_each_example_project_catches_a_refund_routed_to_the_wrong_specialist(framework: str,
                                                                             pytester: pytest.Pytester) -> None:
    """The routing regression: triage's model hands the refund to Shipping, which answers politely. The judge is
    content (score 3: alone it would pass the run); the example's ``expected_agents`` fails it, naming the wrong
    handoff and its turn."""
    need(framework)
    out, row, _ = run_example(framework, pytester, misrouting_rules(framework))
    assert out.ret == 1, out.stdout.str()
    out.stdout.fnmatch_lines(["*refunds.yaml::refund_goes_to_billing FAILED*",
                              f"*metric expected_agents: 0 FAILED - {WRONG_HANDOFF[framework]}*"])
    assert (row["outcome"], row["error_kind"], row["decided_by"]) == ("failed", "", "expected_agents")
    metrics = metrics_of(row)
    assert metrics["expected_agents"]["passed"] is False
    assert WRONG_HANDOFF[framework] in metrics["expected_agents"]["reason"]
    # the judge alone would have passed it: it scored 3 and its metric passed
    assert row["score"] == 3 and metrics["judge"]["passed"] is True
    shipping = "shipping" if framework == "langgraph" else "Shipping"
    assert shipping in row["agents"] and PARCEL in str(row["transcript"])
