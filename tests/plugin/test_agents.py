"""Agents under test that are code: python callables and factories, HTTP services, OpenAI-compatible endpoints.

Inner pytest runs against the scripted customer/judge server, a loopback HTTP agent and a second scripted
server playing the user's OpenAI-compatible agent.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProject, scenario, write_bot
from pytest_llmsim.testing.http_agent import LoopbackAgentServer
from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer


def results(sim: SimProject, name: str = "out.json") -> dict[str, dict[str, Any]]:
    data = json.loads((sim.path / name).read_text())
    return {r["scenario"]: r for r in data["results"]}


def judge_prompts(sim: SimProject) -> list[str]:
    return [m["content"] for r in sim.server.requests_log() for m in r["body"]["messages"]
            if m["role"] == "system" and m["content"].startswith("EVALUATOR")]


def agent_texts(record: dict[str, Any]) -> list[str]:
    return [t["text"] for t in record["transcript"] if t["role"] == "agent"]


SYNC_BOT = """
    def reply(messages, context):
        turn = sum(1 for m in messages if m["role"] == "assistant") + 1
        if turn == 3:
            return {"content": f"Done for {context.scenario}.", "end": True}
        return f"Turn {turn}: you said {messages[-1]['content']!r} (seed {context.seed})"
"""


def test_python_sync_callable_answers_each_turn(sim: SimProject) -> None:
    write_bot(sim, SYNC_BOT)
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bots.shop:reply"}, variables={"SEED": 7})])
    out = sim.run("--llmsim-results=out.json")
    out.assert_outcomes(passed=1)
    record = results(sim)["a"]
    assert agent_texts(record) == ["Turn 1: you said 'Hi, I would like chicken fillet.' (seed 7)",
                                   "Turn 2: you said 'Two packs, delivered to Moscow please.' (seed 7)",
                                   "Done for a."]
    assert record["ended_by"] == "agent"
    assert all(t["tool_calls"] == [] for t in record["transcript"])
    # the agent itself is never sent to the LLM endpoint: only the customer and the judge are
    systems = [m["content"] for r in sim.server.requests_log() for m in r["body"]["messages"] if m["role"] == "system"]
    assert not any(s.startswith("AGENT") for s in systems)
    assert record["live_calls"] == 4  # 3 customer turns + 1 verdict


def test_python_async_callable_and_agent_first(sim: SimProject) -> None:
    write_bot(sim, """
        import asyncio

        async def reply(messages, context):
            await asyncio.sleep(0)
            if not messages:
                return "Hello, async shop."
            return {"content": "Bye now [END_CALL]"}
    """)
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bots.shop:reply"}, first_speaker="agent")])
    sim.run("--llmsim-results=out.json").assert_outcomes(passed=1)
    assert agent_texts(results(sim)["a"]) == ["Hello, async shop.", "Bye now"]


def test_python_factory_class_keeps_state_per_conversation(sim: SimProject) -> None:
    write_bot(sim, """
        from pytest_llmsim.agents.base import agent_factory

        class ShopBot:
            def __init__(self, context):
                self.session = context.session_id
                self.turns = 0

            def respond(self, messages):
                self.turns += 1
                end = " [END_CALL]" if self.turns == 3 else ""
                return f"state {self.turns} {self.session[:7]}{end}"

        @agent_factory
        def make(context):
            count = [0]

            async def turn(messages, ctx):
                count[0] += 1
                return {"content": f"closure {count[0]}", "end": count[0] == 2}
            return turn
    """)
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bots.shop:ShopBot"}),
                                   scenario("b", agent={"python": "bots.shop:ShopBot"}),
                                   scenario("c", agent={"python": "bots.shop:make"})])
    sim.run("--llmsim-results=out.json").assert_outcomes(passed=3)
    records = results(sim)
    assert agent_texts(records["a"]) == ["state 1 llmsim-", "state 2 llmsim-", "state 3 llmsim-"]
    assert agent_texts(records["b"])[0] == "state 1 llmsim-"  # a new instance per conversation
    assert agent_texts(records["c"]) == ["closure 1", "closure 2"]


def test_tool_calls_are_in_the_transcript_and_the_judge_sees_them(sim: SimProject) -> None:
    write_bot(sim, """
        def reply(messages, context):
            if len(messages) == 1:
                return {"content": "Your refund is on its way.",
                        "tool_calls": [{"name": "issue_refund", "arguments": {"order_id": 7}, "result": {"ok": True}},
                                       {"id": "x", "type": "function",
                                        "function": {"name": "notify", "arguments": "{\\"to\\": \\"you\\"}"}}]}
            # the history shows the earlier tool call in the OpenAI shape, with its result
            assert messages[1]["tool_calls"][0]["function"]["name"] == "issue_refund", messages
            assert messages[2] == {"role": "tool", "tool_call_id": "call_2_0", "content": '{"ok": true}'}, messages
            return "Anything else? [END_CALL]"
    """)
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bots.shop:reply"})])
    sim.run("--llmsim-results=out.json").assert_outcomes(passed=1)
    record = results(sim)["a"]
    assert record["transcript"][1]["tool_calls"] == [
        {"name": "issue_refund", "arguments": {"order_id": 7}, "result": {"ok": True}},
        {"name": "notify", "arguments": {"to": "you"}, "result": None}]
    assert record["tool_calls"] == ["issue_refund", "notify"]
    (prompt,) = judge_prompts(sim)
    assert ('  2. Agent: [tool issue_refund({"order_id": 7}) -> {"ok": true}] [tool notify({"to": "you"})] '
            "Your refund is on its way.") in prompt


def test_a_raising_agent_is_an_error_with_its_own_traceback_and_is_never_judged(sim: SimProject) -> None:
    write_bot(sim, """
        def check_stock(item):
            raise RuntimeError(f"inventory service down for {item}")

        def reply(messages, context):
            if len(messages) > 2:
                check_stock("fillet")
            return "Let me check."
    """)
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bots.shop:reply"})])
    out = sim.run("--llmsim-results=out.json", "--junitxml=junit.xml")
    out.assert_outcomes(errors=1)
    record = results(sim)["a"]
    assert record["error_kind"] == "agent_error" and record["score"] is None
    message = record["error_message"]
    assert "agent turn 4" in message and "RuntimeError: inventory service down for fillet" in message
    assert 'check_stock("fillet")' in message and "in check_stock" in message  # the agent's own frames
    assert "pytest_llmsim" not in message.split("Traceback", 1)[1]  # ... and none of llmsim's
    assert judge_prompts(sim) == []
    assert "inventory service down" in out.stdout.str()


def test_bad_spec_is_a_scenario_error_and_a_failed_import_an_agent_error(sim: SimProject) -> None:
    write_bot(sim, "def reply(messages, context):\n    return 'x'\n")
    sim.write_scenarios("s.json", [
        scenario("bad_spec", agent={"python": "no_colon"}),
        scenario("two_kinds", agent={"python": "bots.shop:reply", "http": {"url": "http://127.0.0.1:9/"}}),
        scenario("no_module", agent={"python": "nowhere.bots:reply"}),
        scenario("no_name", agent={"python": "bots.shop:missing"}),
    ])
    out = sim.run("--llmsim-results=out.json")
    out.assert_outcomes(errors=4)
    records = results(sim)
    assert "field 'agent.python': must be 'package.module:name'" in records["bad_spec"]["error_message"]
    assert "field 'agent'" in records["two_kinds"]["error_message"]
    assert records["no_module"]["error_kind"] == "agent_error"
    assert "agent {python: 'nowhere.bots:reply'}: cannot import module 'nowhere.bots'" in \
        records["no_module"]["error_message"]
    assert "ModuleNotFoundError" in records["no_module"]["error_message"]
    assert "has no attribute 'missing'" in records["no_name"]["error_message"]


def test_suite_wide_agent_from_ini_and_command_line(sim: SimProject) -> None:
    write_bot(sim, SYNC_BOT)
    sim.write_scenarios("s.json", [scenario("a"), scenario("b", agent={"temperature": 0.1})])
    sim.write_ini(llmsim_agent='{python: "bots.shop:reply"}')
    sim.run("--llmsim-results=out.json").assert_outcomes(passed=2)
    records = results(sim)
    assert agent_texts(records["a"])[-1] == "Done for a."
    assert agent_texts(records["b"])[0] == "Hello, Meat Market, how can I help?"  # its own prompt agent
    out = sim.run("--llmsim-agent", "{python: 'bots.shop:reply', http: {url: 'http://x'}}")
    assert out.ret == pytest.ExitCode.USAGE_ERROR
    assert "llmsim_agent: field 'agent': sets 'python' and 'http'" in out.stderr.str()


def test_suite_wide_agent_from_the_command_line_beats_the_ini(sim: SimProject) -> None:
    write_bot(sim, SYNC_BOT + "\n    def broken(messages, context):\n        raise RuntimeError('the ini agent ran')\n")
    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    sim.write_ini(llmsim_agent='{python: "bots.shop:broken"}')
    sim.run("--llmsim-agent", '{python: "bots.shop:reply"}', "--llmsim-results=out.json").assert_outcomes(passed=2)
    records = results(sim)
    for name in ("a", "b"):
        assert agent_texts(records[name]) == ["Turn 1: you said 'Hi, I would like chicken fillet.' (seed 1234)",
                                              "Turn 2: you said 'Two packs, delivered to Moscow please.' (seed 1234)",
                                              f"Done for {name}."]
    systems = [m["content"] for r in sim.server.requests_log() for m in r["body"]["messages"] if m["role"] == "system"]
    assert not any(s.startswith("AGENT") for s in systems)  # no prompt agent ran either


def test_a_python_agent_gets_the_scenario_variables_in_its_context(sim: SimProject) -> None:
    write_bot(sim, """
        def reply(messages, context):
            shown = ", ".join(f"{k}={v!r}" for k, v in sorted(context.variables.items()))
            return {"content": f"{context.scenario} knows {shown}", "end": True}
    """)
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bots.shop:reply"},
                                            variables={"ORDER": 1042, "CUSTOMER": "Ann"})])
    sim.run("--llmsim-results=out.json").assert_outcomes(passed=1)
    assert agent_texts(results(sim)["a"]) == [
        "a knows CUSTOMER='Ann', LOCATIONS='Moscow, Kazan', ORDER=1042, PERSONALITY='calm'"]


# -- http ------------------------------------------------------------------------------------------------------------
def http_agent(server: LoopbackAgentServer, **extra: Any) -> dict[str, Any]:
    return {"http": {"url": server.url, "body": {"input": {"text": "{{ message }}"}, "session": "{{ session_id }}",
                                                  "history": "{{ messages }}", "note": "turn {{ turn }}"},
                     "reply": "reply.text", **extra}}


def test_http_agent_posts_each_turn_with_a_session_and_reads_the_reply_path(sim: SimProject) -> None:
    def respond(body: dict[str, Any], headers: dict[str, str], n: int) -> tuple[Any, ...]:
        end = " [END_CALL]" if len(body["history"]) >= 5 else ""
        return 200, {"reply": {"text": f"Heard {body['input']['text']} ({body['note']}){end}"}}

    with LoopbackAgentServer(respond) as agent:
        sim.write_scenarios("s.json", [scenario("a", agent=http_agent(agent)), scenario("b", agent=http_agent(agent))])
        sim.run("--llmsim-results=out.json").assert_outcomes(passed=2)
    record = results(sim)["a"]
    assert agent_texts(record) == ["Heard Hi, I would like chicken fillet. (turn 1)",
                                   "Heard Two packs, delivered to Moscow please. (turn 2)",
                                   "Heard Yes, please confirm. (turn 3)"]
    sessions = [r["body"]["session"] for r in agent.requests]
    assert len(sessions) == 6 and len(set(sessions)) == 2  # one session id per conversation
    assert agent.requests[0]["body"]["history"] == [{"role": "user", "content": "Hi, I would like chicken fillet."}]


@pytest.mark.slow
def test_http_agent_retries_a_500_then_fails_bounded_and_clear(sim: SimProject) -> None:
    def flaky(body: dict[str, Any], headers: dict[str, str], n: int) -> tuple[Any, ...]:
        if n == 1:
            return 500, {"error": "warming up"}
        return 200, {"reply": {"text": "ok [END_CALL]"}}

    with LoopbackAgentServer(flaky) as agent:
        sim.write_scenarios("s.json", [scenario("a", agent=http_agent(agent))])
        sim.run("--llmsim-results=out.json").assert_outcomes(passed=1)
    assert len(agent.requests) == 2

    sim.server.reset()
    with LoopbackAgentServer(lambda b, h, n: (503, {"error": "agent crashed: KeyError 'cart'"})) as agent:
        sim.write_scenarios("s.json", [scenario("a", agent=http_agent(agent))])
        sim.run("--llmsim-results=out.json").assert_outcomes(errors=1)
    record = results(sim)["a"]
    assert record["error_kind"] == "agent_error"
    assert "failed after 2 attempt(s): HTTP 503" in record["error_message"]  # llmsim_max_retries = 1
    assert "agent crashed: KeyError 'cart'" in record["error_message"]
    assert len(agent.requests) == 2
    assert judge_prompts(sim) == []


def test_http_agent_timeout_is_a_clear_agent_error(sim: SimProject) -> None:
    sim.write_ini(llmsim_max_retries="0")
    with LoopbackAgentServer(lambda b, h, n: (200, {"reply": {"text": "late"}}, 10)) as agent:
        sim.write_scenarios("s.json", [scenario("a", agent=http_agent(agent, timeout=0.3))])
        sim.run("--llmsim-results=out.json").assert_outcomes(errors=1)
    message = results(sim)["a"]["error_message"]
    assert results(sim)["a"]["error_kind"] == "agent_error"
    assert "timed out: no complete reply within 0.3s" in message and agent.url in message


@pytest.mark.slow
def test_a_hung_http_agent_fails_fast_after_its_first_timeout(sim: SimProject) -> None:
    """As for LLM calls: a service that never answered is hung, not slow: no retries, later requests not sent."""
    sim.write_ini(llmsim_max_retries="3")
    with LoopbackAgentServer(lambda b, h, n: (200, {"reply": {"text": "late"}}, 10)) as agent:
        sim.write_scenarios("s.json", [scenario(f"s{i}", agent=http_agent(agent, timeout=0.5)) for i in range(5)])
        sim.run("--llmsim-results=out.json", "--llmsim-concurrency=1").assert_outcomes(errors=5)
        sent = len(agent.requests)
    messages = [record["error_message"] for record in results(sim).values()]
    assert sent == 1
    assert sum("failed after 1 attempt(s): timed out" in m for m in messages) == 1
    assert sum("not sent: the http agent" in m and "did not answer within 0.5s" in m for m in messages) == 4


@pytest.mark.slow
def test_http_agent_header_secret_never_reaches_an_artifact(sim: SimProject, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file the runs write (reports, exports, chats, recordings, the cache, a DEBUG log...) is read byte by
    byte: the header's value is in none of them, nor in what pytest printed or what the judge was sent."""
    token = "tok-3f9a1c77e0b24d51"
    monkeypatch.setenv("MY_TOKEN", token)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(sim.path / "step_summary.md"))

    def echo(body: dict[str, Any], headers: dict[str, str], n: int) -> tuple[Any, ...]:
        # a naive agent that repeats what it got, header included
        end = " [END_CALL]" if n >= 2 else ""
        return 200, {"reply": {"text": f"auth was {headers.get('authorization')}{end}"}}

    html = importlib.util.find_spec("pytest_html") is not None
    outputs = []
    with LoopbackAgentServer(echo) as agent:
        sim.write_scenarios("s.json", [scenario("a", agent=http_agent(agent, headers={
            "Authorization": "Bearer ${MY_TOKEN}"}), agent_cache=True)])
        # One run per export format, each writing its own reports: the first calls the agent and records it
        # (agent_cache), the next two replay it.
        for run in ("json", "csv", "ndjson"):
            out = sim.run(f"--llmsim-results=out.{run}", f"--junitxml=junit-{run}.xml", "-v", "-rA",
                          f"--llmsim-chats-dir=chats-{run}", "--llmsim-readable", f"--llmsim-markdown=summary-{run}.md",
                          f"--log-file=run-{run}.log", "--log-file-level=DEBUG", "--log-level=DEBUG",
                          *([f"--html=report-{run}.html"] if html else []))  # not self-contained: assets/ too
            out.assert_outcomes(passed=1)
            outputs.append(out.stdout.str() + out.stderr.str())
    assert agent.requests[0]["headers"]["authorization"] == f"Bearer {token}"
    assert agent_texts(results(sim)["a"])[0] == "auth was ***"  # the header value, scrubbed
    assert "\n".join(outputs).count("auth was ***") >= 3  # the transcript is in the terminal output (-v, -rA)
    texts = {"stdout": "\n".join(outputs), "judge": "\n".join(judge_prompts(sim))}
    with sqlite3.connect(sim.path / ".llmsim_cache" / "cache.db") as db:
        values = [zlib.decompress(v).decode() for (v,) in db.execute("SELECT value FROM Cache") if v]
    texts["cache"] = "\n".join(values)
    assert texts["cache"].count('"agent:http:') >= 2  # the agent's replies were recorded (agent_cache)
    for where, text in texts.items():
        assert token not in text, where
    written = sorted(path.relative_to(sim.path) for path in sim.path.rglob("*") if path.is_file())
    names = {str(path) for path in written}
    expected = {"step_summary.md", "out.json", "out.csv", "out.ndjson", ".llmsim_cache/cache.db"}
    for run in ("json", "csv", "ndjson"):
        expected |= {f"junit-{run}.xml", f"summary-{run}.md", f"run-{run}.log", f"chats-{run}/chat_a_trial1.json",
                     f"chats-{run}/chat_a_trial1.txt", *([f"report-{run}.html"] if html else [])}
    assert expected <= names, sorted(expected - names)
    assert any(name.startswith("recordings/") for name in names), names
    assert "127.0.0.1" in (sim.path / "run-json.log").read_text()  # the live run's DEBUG log has its requests
    for path in written:
        data = (sim.path / path).read_bytes()
        assert token.encode() not in data and token.encode("utf-16-le") not in data, path


# -- openai ----------------------------------------------------------------------------------------------------------
def test_openai_agent_on_its_own_endpoint_with_tool_calls(sim: SimProject) -> None:
    completion = {"id": "c", "object": "chat.completion", "model": "shop-agent",
                  "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                      "role": "assistant", "content": "Refund issued. [END_CALL]",
                      "tool_calls": [{"id": "call_9", "type": "function", "function": {
                          "name": "issue_refund", "arguments": "{\"order_id\": 7}"}}]}}],
                  "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}
    script = {"rules": [{"match": {"last_user_contains": "Two packs"}, "raw_body": json.dumps(completion)},
                        {"reply": "Agent endpoint hello (model {model})"}]}
    with ScriptedOpenAIServer(script) as agent_server:
        spec = {"openai": {"base_url": agent_server.base_url, "model": "shop-agent", "system": "You are ShopBot.",
                           "api_key_env": None}}
        sim.write_scenarios("s.json", [scenario("a", agent=spec)])
        sim.run("--llmsim-results=out.json").assert_outcomes(passed=1)
        agent_log = agent_server.requests_log()
    record = results(sim)["a"]
    assert agent_texts(record) == ["Agent endpoint hello (model shop-agent)", "Refund issued."]
    assert record["transcript"][3]["tool_calls"] == [
        {"name": "issue_refund", "arguments": {"order_id": 7}, "result": None}]
    assert len(agent_log) == 2 and agent_log[0]["body"]["messages"][0] == {"role": "system",
                                                                            "content": "You are ShopBot."}
    assert all(r["body"]["model"] == "shop-agent" for r in agent_log)
    assert not any(r["body"]["model"] == "shop-agent" for r in sim.server.requests_log())
    assert "[tool issue_refund" in judge_prompts(sim)[0]
    usage = {(u["role"], u["model"]): u for u in record["usage"]}
    assert usage[("agent", "shop-agent")]["live_calls"] == 2
    assert usage[("agent", "shop-agent")]["completion_tokens"] == 5 + 3  # the server counts words; then usage


@pytest.mark.parametrize("agent_cache", [False, True], ids=["live-by-default", "agent_cache"])
def test_openai_agent_is_called_live_by_default_and_replayed_with_agent_cache(sim: SimProject,
                                                                              agent_cache: bool) -> None:
    """The openai agent is code under test like the others: a second ``none`` run calls it again while the
    customer and the judge replay (zero requests to their endpoint); ``agent_cache: true`` replays it too."""
    script = {"rules": [{"match": {"last_user_contains": "Two packs"}, "reply": "Booked. [END_CALL]"},
                        {"reply": "Agent endpoint hello"}]}
    with ScriptedOpenAIServer(script) as agent_server:
        spec = {"openai": {"base_url": agent_server.base_url, "model": "shop-agent", "api_key_env": None}}
        sim.write_scenarios("s.json", [scenario("a", agent=spec, **({"agent_cache": True} if agent_cache else {}))])
        sim.run("--llmsim-results=out.json").assert_outcomes(passed=1)
        assert len(agent_server.requests_log()) == 2
        agent_server.reset()
        sim.server.reset()
        sim.run("--llmsim-record=none", "--llmsim-results=out.json").assert_outcomes(passed=1)
        agent_calls = len(agent_server.requests_log())
    assert sim.server.stats()["requests"] == 0  # customer and judge: replayed
    record = results(sim)["a"]
    assert agent_texts(record) == ["Agent endpoint hello", "Booked."]
    usage = {(u["role"], u["model"]): u for u in record["usage"]}
    if agent_cache:
        assert agent_calls == 0
        assert record["live_calls"] == 0 and record["cached"] is True
    else:
        assert agent_calls == 2
        assert usage[("agent", "shop-agent")]["live_calls"] == 2
        assert record["live_calls"] == 2  # the agent's, and only the agent's


# -- what is cached ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_unchanged_agent_replays_with_zero_requests_and_a_changed_one_diverges(sim: SimProject) -> None:
    write_bot(sim, SYNC_BOT)
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bots.shop:reply"})])
    sim.run().assert_outcomes(passed=1)
    sim.server.reset()
    sim.run("--llmsim-record=none", "--llmsim-results=out.json").assert_outcomes(passed=1)
    assert sim.server.stats()["requests"] == 0
    assert results(sim)["a"]["live_calls"] == 0 and results(sim)["a"]["cached"] is True

    write_bot(sim, SYNC_BOT.replace('return f"Turn {turn}: you said', 'return f"Turn {turn} (changed!): you said'))
    out = sim.run("--llmsim-record=none", "--llmsim-results=out.json")
    out.assert_outcomes(errors=1)
    record = results(sim)["a"]
    assert record["error_kind"] == "cache_miss"
    message = record["error_message"]
    assert "the conversation diverged from the recording at turn 2" in message
    assert "recorded agent text: \"Turn 1: you said 'Hi, I would like chicken fillet.' (seed 1234)\"" in message
    assert "new agent text:      \"Turn 1 (changed!): you said" in message
    assert sim.server.stats()["requests"] == 0
    # once records the new branch
    sim.run().assert_outcomes(passed=1)


def test_agent_cache_records_and_replays_the_agent_too(sim: SimProject) -> None:
    write_bot(sim, SYNC_BOT)
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bots.shop:reply"}, agent_cache=True)])
    sim.run().assert_outcomes(passed=1)
    write_bot(sim, "def reply(messages, context):\n    raise AssertionError('the agent must not be called again')\n")
    sim.server.reset()
    sim.run("--llmsim-record=none", "--llmsim-results=out.json").assert_outcomes(passed=1)
    record = results(sim)["a"]
    assert agent_texts(record)[-1] == "Done for a." and all(t["cached"] for t in record["transcript"])
    assert sim.server.stats()["requests"] == 0
    # without agent_cache the (now raising) agent is called live
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bots.shop:reply"})])
    sim.run("--llmsim-record=none").assert_outcomes(errors=1)


def test_prompt_agent_transcripts_and_judge_text_are_unchanged(sim: SimProject, tmp_path: Path) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run("--llmsim-results=out.json").assert_outcomes(passed=1)
    record = results(sim)["a"]
    assert [t["tool_calls"] for t in record["transcript"]] == [[]] * 6
    assert "  2. Agent: Hello, Meat Market, how can I help?\n" in judge_prompts(sim)[0]


@pytest.mark.slow
def test_a_python_agent_stuck_in_a_blocking_call_errors_and_pytest_still_exits(sim: SimProject) -> None:
    """The conversation's timeout stops the conversation; the agent's thread must not keep pytest alive."""
    write_bot(sim, """
        import time

        def reply(messages, context):
            time.sleep(3600)
            return "never"
    """)
    sim.write_scenarios("s.json", [scenario("stuck", agent={"python": "bots.shop:reply"}, timeout=1.5)])
    result = sim.run(subprocess=True)  # a real process: exiting it is what is tested (runpytest_subprocess
    result.assert_outcomes(errors=1)   # has a 300 s timeout; a hang at exit fails the test there)
    result.stdout.fnmatch_lines(["*no agent reply to judge*the agent never answered*python agent "
                                 "'bots.shop:reply' answers within the conversation's timeout*"])
    assert result.duration < 60


@pytest.mark.slow
def test_http_agent_url_may_name_an_environment_variable(sim: SimProject, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service a fixture started on a free port says where it listens through the environment."""
    with LoopbackAgentServer(lambda b, h, n: (200, {"reply": {"text": "Done [END_CALL]"}})) as agent:
        port = agent.url.split(":")[2].split("/")[0]
        monkeypatch.setenv("SHOP_AGENT_PORT", port)
        spec = http_agent(agent)
        spec["http"]["url"] = agent.url.replace(f":{port}/", ":${SHOP_AGENT_PORT}/")
        sim.write_scenarios("s.json", [scenario("a", agent=spec)])
        sim.run(subprocess=True).assert_outcomes(passed=1)
        assert len(agent.requests) == 1
    monkeypatch.delenv("SHOP_AGENT_PORT")
    sim.write_scenarios("s.json", [scenario("a", agent=spec)])
    result = sim.run(subprocess=True)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*environment variable SHOP_AGENT_PORT (named in the http agent's url) is not set*"])


# -- what an agent returns, held to JSON, a strict 'end', visible text and a bounded size (issue 24) ------------
BAD_TOOL_CALL_BOTS = """
    import math

    def deep(n):
        value = []
        for _ in range(n):
            value = [value]
        return value

    ARGUMENTS = {
        "nan": {"weight": math.nan},
        "set": {"ids": {1, 2}},
        "object": {"when": object()},
        "deep": {"tree": deep(5000)},
        "surrogate": {"name": "caf\\ud800"},
    }

    def reply(messages, context):
        kind = context.scenario
        return {"content": "Looking it up.", "tool_calls": [{"name": "lookup", "arguments": ARGUMENTS[kind]}]}
"""


@pytest.mark.slow
def test_tool_call_arguments_that_are_not_json_are_an_agent_error_naming_the_value(sim: SimProject) -> None:
    write_bot(sim, BAD_TOOL_CALL_BOTS)
    kinds = {"nan": "arguments.weight is nan, which JSON cannot hold",
             "set": "arguments.ids is a set, not JSON data",
             "object": "arguments.when is a object, not JSON data",
             "deep": "arguments.tree" + "[0]" * 64 + " nests deeper than 64 levels",
             "surrogate": "arguments.name holds a lone surrogate '\\ud800' at index 3 (not valid Unicode text)"}
    sim.write_scenarios("s.json", [scenario(kind, agent={"python": "bots.shop:reply"}) for kind in kinds])
    sim.run("--llmsim-results=out.json").assert_outcomes(errors=len(kinds))
    rows = results(sim)
    for kind, problem in kinds.items():
        assert rows[kind]["error_kind"] == "agent_error", rows[kind]["error_message"]
        assert (f"s.json::{kind} agent turn 2: the python agent 'bots.shop:reply' returned an unusable reply: tool "
                f"call #1 'lookup': {problem}") in rows[kind]["error_message"]


def test_strict_json_keeps_json_data_and_normalises_containers() -> None:
    from types import MappingProxyType

    from pytest_llmsim.agents.base import normalize_tool_call, strict_json

    assert strict_json({"a": (1, 2.5, None, True), "b": MappingProxyType({"c": "ok"})}, "x") == \
        {"a": [1, 2.5, None, True], "b": {"c": "ok"}}
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(TypeError, match="nests deeper than 64 levels"):
        strict_json(loop, "x")
    with pytest.raises(TypeError, match=r"x has a int key"):
        strict_json({1: "a"}, "x")
    with pytest.raises(TypeError, match=r"tool call 'f': arguments.v is inf"):
        normalize_tool_call({"name": "f", "arguments": '{"v": Infinity}'})  # JSON text is parsed, then held to it
    deep_text = "[" * 5000 + "]" * 5000
    assert normalize_tool_call({"name": "f", "arguments": deep_text})["arguments"] == deep_text  # kept as text


@pytest.mark.slow
@pytest.mark.parametrize("end", ["false", "true", 0, 1, "no"])
def test_an_end_that_is_not_a_boolean_is_an_agent_error(sim: SimProject, end: Any) -> None:
    write_bot(sim, f"""
        def reply(messages, context):
            return {{"content": "Happy to help.", "end": {end!r}}}
    """)
    sim.write_scenarios("s.json", [scenario("a", agent={"python": "bots.shop:reply"})])
    result = sim.run("--llmsim-results=out.json")
    result.assert_outcomes(errors=1)
    assert ("returned an unusable reply: 'end' must be true or false (or absent), got "
            f"{type(end).__name__} {end!r}") in results(sim)["a"]["error_message"]


def test_an_http_agents_end_that_is_not_a_boolean_is_an_agent_error(sim: SimProject) -> None:
    with LoopbackAgentServer(lambda b, h, n: (200, {"reply": {"text": "Sure."}, "done": "false"})) as agent:
        spec = http_agent(agent)
        spec["http"]["end"] = "done"
        sim.write_scenarios("s.json", [scenario("a", agent=spec)])
        sim.run("--llmsim-results=out.json").assert_outcomes(errors=1)
    assert "the end path 'done' must be true or false (or absent), got str 'false'" in \
        results(sim)["a"]["error_message"]


@pytest.mark.slow
def test_a_reply_of_invisible_characters_is_no_reply(sim: SimProject) -> None:
    write_bot(sim, """
        def reply(messages, context):
            return context.variables["TEXT"]
    """)
    texts = {"zwsp": "\u200b", "bom": "\ufeff", "joiner": " \u2060\u200b ", "filler": "\u3164"}
    sim.write_scenarios("s.json", [scenario(name, agent={"python": "bots.shop:reply"}, variables={"TEXT": text})
                                   for name, text in texts.items()] + [
        scenario("visible", agent={"python": "bots.shop:reply"}, variables={"TEXT": "\u200bHello [END_CALL]"})])
    sim.run("--llmsim-results=out.json").assert_outcomes(passed=1, errors=len(texts))
    rows = results(sim)
    for name in texts:
        assert rows[name]["error_kind"] == "no_agent_reply", rows[name]
        assert rows[name]["score"] is None
    assert not any(p for p in judge_prompts(sim) if "visible" not in p)  # only the visible reply was judged


@pytest.mark.parametrize("agent_cache", [False, True])
def test_an_agent_reply_larger_than_the_limit_is_an_agent_error(sim: SimProject, agent_cache: bool) -> None:
    write_bot(sim, """
        def reply(messages, context):
            return "x" * 3_000_000
    """)
    sim.write_scenarios("s.json", [scenario("huge", agent={"python": "bots.shop:reply"}, agent_cache=agent_cache)])
    sim.run("--llmsim-results=out.json").assert_outcomes(errors=1)
    row = results(sim)["huge"]
    assert row["error_kind"] == "agent_error"
    assert ("s.json::huge agent turn 2: the python agent 'bots.shop:reply' replied with 3,000,000 bytes (text and "
            "tool calls), more than the 1,000,000 bytes an agent turn may have") in row["error_message"]
    assert all(len(t["text"]) < 1_000_000 for t in row["transcript"])
    assert sum(f.stat().st_size for f in sim.path.rglob("*") if f.is_file()) < 1_000_000  # stored nowhere
