"""Multi-agent turns: several speakers' messages and handoffs in one agent turn, from python, http and openai
agents; checked at the agent boundary, kept in results and recordings (issue 28, part 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProject, scenario, write_bot
from pytest_llmsim.agents.base import MAX_TURN_MESSAGES, agent_view, parse_reply
from pytest_llmsim.testing.http_agent import LoopbackAgentServer
from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

REC = Path("recordings/scenarios/s.json")

# Turn 1: the orchestrator routes to Billing, which calls a tool; turn 2: Billing alone; turn 3 ends.
TEAM_BOT = """
    def reply(messages, context):
        turn = sum(1 for m in messages if m["role"] == "user")
        if turn == 1:
            return {"messages": [{"agent": "Triage", "content": "Let me get billing for you."},
                                 {"agent": "Billing", "content": "Refund issued.",
                                  "tool_calls": [{"name": "refund", "arguments": {"order": 7},
                                                  "result": {"ok": True}}]}],
                    "handoffs": [{"from": "Triage", "to": "Billing", "reason": "refund request"}]}
        if turn == 2:
            # the history shows who said what: OpenAI's name field on each assistant message
            names = [m.get("name") for m in messages if m["role"] == "assistant"]
            assert names == ["Triage", "Billing"], messages
            return {"messages": [{"agent": "Billing", "content": "Anything else?"}], "end": False}
        return {"messages": [{"agent": "Billing", "content": "Goodbye [END_CALL]"}]}
"""


def results(sim: SimProject, name: str = "out.json") -> dict[str, dict[str, Any]]:
    data = json.loads((sim.path / name).read_text())
    return {r["scenario"]: r for r in data["results"]}


def test_a_python_agent_returns_messages_with_speakers_and_handoffs(sim: SimProject) -> None:
    write_bot(sim, TEAM_BOT)
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bots.shop:reply"})])
    sim.run("--llmsim-results=out.json").assert_outcomes(passed=1)
    record = results(sim)["a"]
    first = record["transcript"][1]
    assert first["text"] == "Let me get billing for you.\n\nRefund issued."  # joined: single-speaker code reads it
    assert first["messages"] == [
        {"agent": "Triage", "content": "Let me get billing for you."},
        {"agent": "Billing", "content": "Refund issued.",
         "tool_calls": [{"name": "refund", "arguments": {"order": 7}, "result": {"ok": True}}]}]
    assert first["handoffs"] == [{"from": "Triage", "to": "Billing", "reason": "refund request"}]
    assert first["tool_calls"] == [{"name": "refund", "arguments": {"order": 7}, "result": {"ok": True}}]
    assert record["transcript"][5]["messages"] == [{"agent": "Billing", "content": "Goodbye"}]  # marker stripped
    assert record["ended_by"] == "agent"
    assert "messages" not in record["transcript"][0]  # a customer turn (and a single-speaker turn): as before


@pytest.mark.parametrize(("reply", "field"), [
    ({"messages": [{"agent": 7, "content": "x"}]}, "messages[0].agent must be an agent's name (a string), got int"),
    ({"messages": [{"agent": "A", "content": "x", "mood": "ok"}]}, "messages[0] has unknown key(s) 'mood'"),
    ({"messages": [{"agent": "A", "content": "x"}], "handoffs": [{"from": "A", "to": " "}]},
     "handoffs[0].to is empty"),
    ({"messages": [{"agent": "A", "content": "x"}], "routing": []}, "the reply has unknown key(s) 'routing'"),
    ({"messages": [{"agent": "A\nB", "content": "x"}]}, "messages[0].agent 'A\\nB' holds a line break"),
    ({"messages": [{"agent": "A", "content": 3}]}, "messages[0].content must be a string or null"),
    ({"messages": [{"agent": "A", "content": "x"}] * 1000}, "'messages' has 1,000 entries, more than the 256"),
    ({"messages": [{"agent": "A", "content": "x", "tool_calls": [{"name": ""}]}]},
     "messages[0].tool_calls: a tool call needs a non-empty 'name'"),
    ({"messages": [{"agent": "\u200b", "content": "x"}]}, "messages[0].agent is empty (only invisible characters)"),
    ({"messages": [{"agent": "A", "content": "x"}], "handoffs": [{"from": "A", "to": "\ufeff \u200b"}]},
     "handoffs[0].to is empty (only invisible characters)"),
])
def test_a_bad_multi_agent_reply_is_one_agent_error_naming_scenario_turn_and_field(
        sim: SimProject, reply: dict[str, Any], field: str) -> None:
    write_bot(sim, f"def reply(messages, context):\n    return {reply!r}\n")
    sim.write_scenarios("s.json", [scenario("bad", agent={"python": "bots.shop:reply"}), scenario("good")])
    out = sim.run("--llmsim-results=out.json")
    out.assert_outcomes(passed=1, errors=1)  # the other scenario still runs
    record = results(sim)["bad"]
    assert record["error_kind"] == "agent_error"
    message = record["error_message"]
    assert "scenarios/s.json::bad agent turn 2: the python agent 'bots.shop:reply' returned an unusable reply" \
        in message
    assert field in message


def test_a_thousand_messages_in_a_turn_are_refused_before_anything_keeps_them() -> None:
    with pytest.raises(TypeError, match="more than the 256"):
        parse_reply({"messages": [{"agent": "A", "content": "x"}] * 1000})
    ok = parse_reply({"messages": [{"agent": "A", "content": "x"}] * MAX_TURN_MESSAGES})
    assert len(ok.messages) == MAX_TURN_MESSAGES and ok.text == "\n\n".join(["x"] * MAX_TURN_MESSAGES)


def test_single_speaker_replies_are_read_as_before() -> None:
    for value, text in (("hi", "hi"), ({"content": "hi", "end": True}, "hi"),
                        ([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}], "b")):
        reply = parse_reply(value)
        assert (reply.text, reply.messages, reply.handoffs) == (text, [], [])
    # and their view for the next turn has no name field
    assert agent_view("agent", "hi", [], 2) == [{"role": "assistant", "content": "hi"}]


def test_openai_message_lists_with_name_give_one_message_per_speaker() -> None:
    reply = parse_reply([
        {"role": "assistant", "name": "Triage", "content": "Routing you."},
        {"role": "assistant", "name": "Billing", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "refund", "arguments": "{\"order\": 7}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"ok\": true}"},
        {"role": "assistant", "name": "Billing", "content": "Done."}])
    assert [m["agent"] for m in reply.messages] == ["Triage", "Billing", "Billing"]
    assert reply.messages[1]["tool_calls"] == [{"name": "refund", "arguments": {"order": 7}, "result": {"ok": True}}]
    assert reply.text == "Routing you.\n\nDone."
    # tool call ids stay distinct across the messages of one turn
    view = agent_view("agent", reply.text, reply.tool_calls, 4, messages=[
        {"agent": "A", "content": "", "tool_calls": [{"name": "f", "arguments": {}, "result": 1}]},
        {"agent": "B", "content": "", "tool_calls": [{"name": "g", "arguments": {}, "result": 2}]}])
    assert [m.get("tool_call_id") for m in view if m["role"] == "tool"] == ["call_4_0", "call_4_1"]


def test_an_http_agent_may_answer_with_a_multi_agent_reply(sim: SimProject) -> None:
    def respond(body: dict[str, Any], headers: dict[str, str], n: int) -> tuple[Any, ...]:
        if body["scenario"] == "b":
            return 200, {"reply": {"messages": [{"agent": "", "content": "x"}]}}
        if body["turn"] == 1:  # the whole body is the multi-agent reply (no reply path in it)
            return 200, {"messages": [{"agent": "Triage", "content": "One moment."},
                                      {"agent": "Billing", "content": "Billing here."}],
                         "handoffs": [{"from": "Triage", "to": "Billing"}]}
        # or the reply path holds one
        return 200, {"reply": {"messages": [{"agent": "Billing", "content": "Bye."}], "end": True}}

    with LoopbackAgentServer(respond) as agent:
        spec = {"http": {"url": agent.url, "reply": "reply",
                         "body": {"scenario": "{{ scenario }}", "turn": "{{ turn }}"}}}
        sim.write_scenarios("s.json", [scenario("a", agent=spec), scenario("b", agent=spec)])
        out = sim.run("--llmsim-results=out.json")
    out.assert_outcomes(passed=1, errors=1)
    record = results(sim)["a"]
    assert [m["agent"] for m in record["transcript"][1]["messages"]] == ["Triage", "Billing"]
    assert record["transcript"][1]["handoffs"] == [{"from": "Triage", "to": "Billing"}]
    assert record["transcript"][3]["messages"] == [{"agent": "Billing", "content": "Bye."}]
    assert "messages[0].agent is empty" in results(sim)["b"]["error_message"]


def test_an_openai_agents_name_field_is_the_speaker(sim: SimProject) -> None:
    completion = {"id": "c", "object": "chat.completion", "model": "team",
                  "choices": [{"index": 0, "finish_reason": "stop", "message": {
                      "role": "assistant", "name": "Billing", "content": "Billing here. [END_CALL]"}}],
                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    script = {"rules": [{"raw_body": json.dumps(completion)}]}
    with ScriptedOpenAIServer(script) as agent_server:
        spec = {"openai": {"base_url": agent_server.base_url, "model": "team", "api_key_env": None}}
        sim.write_scenarios("s.json", [scenario("a", agent=spec, agent_cache=True)])
        sim.run("--llmsim-results=out.json").assert_outcomes(passed=1)
        sim.server.reset()
        shutil.rmtree(sim.path / ".llmsim_cache")
        # replayed from the recording: the speaker comes back with it
        sim.run("--llmsim-record=none", "--llmsim-results=replay.json").assert_outcomes(passed=1)
    for name in ("out.json", "replay.json"):
        assert results(sim, name)["a"]["transcript"][1]["messages"] == [{"agent": "Billing",
                                                                          "content": "Billing here."}]
    assert sim.server.stats()["requests"] == 0


@pytest.mark.slow
def test_multi_agent_recordings_are_readable_and_byte_identical_when_re_recorded(sim: SimProject) -> None:
    write_bot(sim, TEAM_BOT)
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bots.shop:reply"}),
                                   scenario("c", agent={"python": "bots.shop:reply"}, agent_cache=True)])
    sim.run().assert_outcomes(passed=2)
    text = (sim.path / REC / "a.json").read_text(encoding="utf-8")
    data = json.loads(text)
    assert data["transcript"][1]["messages"][0] == {"agent": "Triage", "content": "Let me get billing for you."}
    assert data["transcript"][1]["handoffs"] == [{"from": "Triage", "to": "Billing", "reason": "refund request"}]
    cached = json.loads((sim.path / REC / "c.json").read_text(encoding="utf-8"))
    agent_calls = [c for c in cached["calls"] if c["role"] == "agent"]
    assert [m["agent"] for m in agent_calls[0]["agent_messages"]] == ["Triage", "Billing"]
    before = {p: p.read_bytes() for p in sorted((sim.path / "recordings").rglob("*.json")) if p.is_file()}
    shutil.rmtree(sim.path / ".llmsim_cache")
    sim.run("--llmsim-record=all").assert_outcomes(passed=2)
    assert {p: p.read_bytes() for p in sorted((sim.path / "recordings").rglob("*.json")) if p.is_file()} == before
    # the cached team replays from the recording alone, speakers included
    shutil.rmtree(sim.path / ".llmsim_cache")
    write_bot(sim, "def reply(messages, context):\n    raise AssertionError('not called on replay')\n")
    sim.write_scenarios("s.json", [scenario("c", agent={"python": "bots.shop:reply"}, agent_cache=True)])
    sim.run("--llmsim-record=none", "--llmsim-results=out.json").assert_outcomes(passed=1)
    assert results(sim)["c"]["transcript"][1]["handoffs"][0]["to"] == "Billing"


@pytest.mark.slow
def test_a_changed_routing_diverges_from_the_recording_at_its_turn_naming_both_speakers(sim: SimProject) -> None:
    write_bot(sim, TEAM_BOT)
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bots.shop:reply"})])
    sim.run().assert_outcomes(passed=1)
    sim.server.reset()
    sim.run("--llmsim-record=none").assert_outcomes(passed=1)  # unchanged: replayed
    assert sim.server.stats()["requests"] == 0
    # the same words, but the orchestrator hands the refund to another specialist
    write_bot(sim, TEAM_BOT.replace('"Billing"', '"Refunds"').replace("== [\"Triage\", \"Refunds\"]", ""))
    out = sim.run("--llmsim-record=none", "--llmsim-results=out.json")
    out.assert_outcomes(errors=1)
    message = results(sim)["a"]["error_message"]
    assert "the conversation diverged from the recording at turn 2: another agent answered" in message
    assert ("recorded speaker(s): 'Triage, Billing (handoff Triage -> Billing (refund request))'" in message)
    assert "new speaker(s):      'Triage, Refunds (handoff Triage -> Refunds (refund request))'" in message
    assert sim.server.stats()["requests"] == 0


# -- metrics per agent, agent selection ------------------------------------------------------------------------------
COUNTER_CONFTEST = '''
from pytest_llmsim import Conversation, Metric, MetricResult


class Words(Metric):
    name = "words"

    def evaluate(self, conversation, scenario):
        count = len(conversation.agent_text.split())
        return MetricResult(self.name, count, count <= int(self.options.get("max", 100)), f"{count} words")


def pytest_llmsim_metrics():
    return [Words]
'''


@pytest.mark.slow
def test_metrics_target_one_agent_and_expected_agents_checks_the_routing(sim: SimProject) -> None:
    (sim.path / "conftest.py").write_text(COUNTER_CONFTEST)
    write_bot(sim, TEAM_BOT)
    sim.write_scenarios("s.yaml", [
        scenario("per_agent", agent={"python": "bots.shop:reply"}, evaluate=[
            {"judge": {"agent": "Billing"}},
            {"rules": {"agent": "Billing", "not_contains": ["get billing"], "tool_called": ["refund"]}},
            {"rules": {"agent": "Triage", "contains": "get billing", "max_agent_turns": 1}},
            {"rouge": {"agent": "Billing", "reference": "Refund issued. Anything else? Goodbye", "threshold": 0.5}},
            {"words": {"agent": "Triage", "max": 6}},
        ], expected_agents=["Triage", "Billing"]),
        scenario("ghost", agent={"python": "bots.shop:reply"},
                 evaluate=[{"rules": {"agent": "Ghost", "contains": "x"}}, "judge"],
                 expected_agents={"agents": ["Triage", "Ghost"], "mode": "exact"}),
    ])
    out = sim.run("--llmsim-results=out.json")
    out.assert_outcomes(passed=1, failed=1)
    records = results(sim)
    metrics = {(m["name"], m["details"].get("agent")): m for m in records["per_agent"]["metrics"]}
    assert all(m["passed"] for m in metrics.values()), metrics
    assert metrics[("words", "Triage")]["score"] == 6 and metrics[("words", "Triage")]["reason"] == \
        "agent 'Triage': 6 words"
    assert metrics[("expected_agents", None)]["details"]["route"] == [{"agent": "Triage", "turn": 2},
                                                                      {"agent": "Billing", "turn": 2}]
    # the judge read only Billing's messages
    judged = [m["content"] for r in sim.server.requests_log() for m in r["body"]["messages"]
              if m["role"] == "system" and m["content"].startswith("EVALUATOR for per_agent")]
    assert judged and "Agent [Billing]: [tool refund" in judged[0] and "[Triage]" not in judged[0]
    ghost = {m["name"]: m for m in records["ghost"]["metrics"]}
    assert ghost["rules"]["passed"] is False
    assert ghost["rules"]["reason"].startswith("agent 'Ghost' never spoke in this conversation (agents that spoke: "
                                               "Triage, Billing)")
    assert ghost["expected_agents"]["reason"].startswith("wrong handoff at turn 2: Triage -> Billing, expected "
                                                         "Triage -> Ghost")
    assert records["ghost"]["status"] == "failed"  # failed, not an error: the run said who never spoke


def test_a_handoff_to_an_agent_that_never_answers_fails_the_scenario(sim: SimProject) -> None:
    """Triage says it hands the customer to Billing; Billing never says a word: the scenario must not pass."""
    write_bot(sim, """
        def reply(messages, context):
            return {"messages": [{"agent": "Triage", "content": "Billing will take it from here. [END_CALL]"}],
                    "handoffs": [{"from": "Triage", "to": "Billing", "reason": "refund request"}]}
    """)
    sim.write_scenarios("s.yaml", [scenario("silent", agent={"python": "bots.shop:reply"},
                                            expected_agents=["Triage", "Billing"]), scenario("other")])
    sim.run("--llmsim-results=out.json").assert_outcomes(passed=1, failed=1)
    record = results(sim)["silent"]
    assert record["status"] == "failed"
    [check] = [m for m in record["metrics"] if m["name"] == "expected_agents"]
    assert check["reason"].startswith("agent 'Billing' never spoke in this conversation: the route reaches it only "
                                      "through a handoff (turn 2: Triage -> Billing)")


def test_a_bad_agent_option_or_expected_agents_is_a_scenario_error_before_any_call(sim: SimProject) -> None:
    sim.write_scenarios("s.yaml", [scenario("a", evaluate=[{"rules": {"agent": 3, "contains": "x"}}]),
                                   scenario("b", expected_agents={"agents": ["A"], "mode": "fuzzy"}),
                                   scenario("c")])
    out = sim.run("--llmsim-results=out.json")
    out.assert_outcomes(passed=1, errors=2)
    records = results(sim)
    assert "metric 'rules': option 'agent' must be an agent's name" in records["a"]["error_message"]
    out.stdout.fnmatch_lines(["*'mode' must be one of exact, in_order, any_order, subset*"])
