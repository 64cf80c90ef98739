"""Recorded real conversations as test items: transcript files scored by the metrics, nothing simulated."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from conftest import TEMPLATES, SimProject, default_script, scenario
from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

LOOKUP = {"id": "call_1", "type": "function",
          "function": {"name": "lookup_order", "arguments": json.dumps({"order_id": 7})}}
ORDER_CHAT = [
    {"role": "system", "content": "You are the shop's assistant."},
    {"role": "user", "content": "Where is my order 7?"},
    {"role": "assistant", "content": None, "tool_calls": [LOOKUP]},
    {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"status": "shipped"})},
    {"role": "assistant", "content": "Your order has shipped."},
    {"role": "user", "content": "Thanks!"},
    {"role": "user", "content": [{"type": "text", "text": "Bye."}]},
    {"role": "assistant", "content": "Goodbye!"},
]
SHORT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"}]
TOOL_RULES = {"rules": {"tool_called": [{"name": "lookup_order", "arguments": {"order_id": 7}}],
                        "contains": ["shipped"]}}
CRITERIA = ["greets the customer", "names the order status"]


def _criteria_reply(*met: bool) -> str:
    return json.dumps({"criteria": [{"number": i, "met": ok, "reason": "fine" if ok else "not done"}
                                    for i, ok in enumerate(met, start=1)]})


def _write(sim: SimProject, name: str, data: Any, *, lines: bool = False) -> Path:
    """A file under transcripts/: JSON, or with ``lines`` one JSON value per line (``data`` a list of them)."""
    path = sim.path / "transcripts" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(json.dumps(line) for line in data) + "\n" if lines else json.dumps(data, indent=1)
    path.write_text(text, encoding="utf-8")
    return path


def _transcripts_only(sim: SimProject, **ini: str) -> None:
    sim.write_ini(llmsim_transcripts="transcripts", llmsim_paths="nothing-here", **ini)


def _rows(sim: SimProject, name: str = "out.json") -> dict[str, dict[str, Any]]:
    return {row["nodeid"]: row for row in json.loads((sim.path / name).read_text())["results"]}


def _metrics(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {metric["name"]: metric for metric in row["metrics"]}


def _roles_asked(sim: SimProject) -> list[str]:
    """The role of every request the server got, told by its system prompt."""
    roles = []
    for request in sim.server.requests_log():
        system = request["body"]["messages"][0]["content"]
        roles.append("evaluator" if "EVALUATOR" in system else "criteria" if "against criteria" in system
                     else "agent" if system.startswith("AGENT") else "client" if system.startswith("CLIENT")
                     else "other")
    return roles


def test_every_format_is_scored_by_its_metrics_without_a_simulation(sim: SimProject) -> None:
    _transcripts_only(sim)
    # (a) a plain OpenAI message list, its metadata in a sidecar (e)
    _write(sim, "order.json", ORDER_CHAT)
    (sim.path / "transcripts" / "order.json.meta.yaml").write_text(
        "evaluate:\n  - judge\n  - rules: {tool_called: [{name: lookup_order, arguments: {order_id: 7}}], "
        "contains: [shipped]}\n", encoding="utf-8")
    # (b) an object with metadata: a low judge score fails it
    _write(sim, "rude.json", {"name": "low_rude", "messages": SHORT, "min_score": 2})
    # (c) one conversation a line: a list, objects with criteria and names, a blank line
    path = _write(sim, "calls.jsonl", [
        SHORT,
        {"name": "mid_ok", "messages": ORDER_CHAT, "criteria": CRITERIA, "evaluate": ["judge", "criteria"],
         "ended_by": "client", "end_reason": "the customer hung up"},
        {"messages": ORDER_CHAT, "evaluate": [TOOL_RULES]},
    ], lines=True)
    path.write_text(path.read_text().replace("\n", "\n\n", 1), encoding="utf-8")  # line 2 is blank
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "against criteria"}, "reply": _criteria_reply(True, True)},
        *default_script()["rules"]]})
    result = sim.run("--llmsim-results=out.json", "-rA")
    result.assert_outcomes(passed=4, failed=1)
    rows = _rows(sim)
    assert sorted(rows) == ["transcripts/calls.jsonl::line-1", "transcripts/calls.jsonl::line-4",
                            "transcripts/calls.jsonl::mid_ok", "transcripts/order.json::order",
                            "transcripts/rude.json::low_rude"]
    order = rows["transcripts/order.json::order"]
    assert (order["status"], order["score"], order["ended_by"], order["end_reason"]) == (
        "passed", 3, "transcript", "recorded conversation")
    # tool results folded into the agent turn; consecutive messages of one side are one turn; no system turn
    assert [(t["role"], t["text"]) for t in order["transcript"]] == [
        ("client", "Where is my order 7?"), ("agent", "Your order has shipped."), ("client", "Thanks!\nBye."),
        ("agent", "Goodbye!")]
    assert order["transcript"][1]["tool_calls"] == [
        {"name": "lookup_order", "arguments": {"order_id": 7}, "result": {"status": "shipped"}}]
    assert _metrics(order)["rules"]["passed"] is True and order["tool_calls"] == ["lookup_order"]
    assert rows["transcripts/rude.json::low_rude"]["status"] == "failed"
    mid = rows["transcripts/calls.jsonl::mid_ok"]
    assert (mid["score"], mid["ended_by"], mid["end_reason"]) == (2, "client", "the customer hung up")
    assert _metrics(mid)["criteria"]["details"]["criteria"] == [
        {"criterion": CRITERIA[0], "met": True, "reason": "fine"},
        {"criterion": CRITERIA[1], "met": True, "reason": "fine"}]
    only_rules = rows["transcripts/calls.jsonl::line-4"]
    assert [m["name"] for m in only_rules["metrics"]] == ["rules"] and only_rules["score"] is None
    # only the judge and the criteria were asked: one call per judged conversation, nothing simulated
    assert sorted(_roles_asked(sim)) == ["criteria"] + ["evaluator"] * 4
    result.stdout.fnmatch_lines(["*Agent: [[]tool lookup_order({\"order_id\": 7}) -> {\"status\": \"shipped\"}] "
                                 "Your order has shipped.*"])


def test_a_rule_that_fails_on_the_folded_tool_calls_fails_the_item_and_names_the_check(sim: SimProject) -> None:
    _transcripts_only(sim)
    _write(sim, "order.json", {"messages": ORDER_CHAT, "evaluate": [
        {"rules": {"tool_called": [{"name": "lookup_order", "arguments": {"order_id": 8}}]}}]})
    result = sim.run("--llmsim-results=out.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*metric rules*FAILED*lookup_order*"])
    assert _roles_asked(sim) == []  # a rules-only conversation costs no LLM call


@pytest.mark.slow
def test_broken_files_and_conversations_are_errors_naming_file_line_and_field_and_the_rest_still_run(
        sim: SimProject) -> None:
    _transcripts_only(sim)
    _write(sim, "good.json", SHORT)
    (sim.path / "transcripts" / "syntax.json").write_text('[{"role": "user", "content": "hi"},]')
    _write(sim, "number.json", 42)
    _write(sim, "typo.json", {"messages": SHORT, "criterio": ["greets"]})
    _write(sim, "bounds.json", {"messages": SHORT, "min_score": 5})
    _write(sim, "image.json", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                               SHORT[1]])
    _write(sim, "reference.json", {"messages": SHORT, "reference": "Hello"})
    _write(sim, "lines.jsonl", [
        SHORT,
        [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}],
        [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_9", "content": "{}"}],
        {"name": "twin", "messages": SHORT},
        {"name": "twin", "messages": SHORT},
        {"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"type": "function"}]}]},
    ], lines=True)
    with (sim.path / "transcripts" / "lines.jsonl").open("a") as handle:
        handle.write('{"messages": [\n')
    _write(sim, "meta.json", SHORT)
    (sim.path / "transcripts" / "meta.json.meta.yaml").write_text("criteria: [greets]\nseed: 3\n")
    result = sim.run("--llmsim-results=out.json", "-rA")
    result.assert_outcomes(passed=3, errors=12)
    folder = sim.path / "transcripts"
    result.stdout.fnmatch_lines_random([
        f"*{folder / 'syntax.json'}:1:36: invalid JSON*",
        "*number.json: expected a list of OpenAI-style messages, an object with 'messages', or a chat file*got 42",
        "*typo.json: unknown field(s) 'criterio'; a conversation object has only *",
        "*bounds.json: field 'min_score': Input should be less than or equal to 3*",
        "*image.json: [[]0].content[[]0]: only text parts*can be scored*",
        "*reference.json: field 'reference' is the rouge metric's reference text, but the conversation's metrics "
        "(judge) do not include rouge*",
        f"*{folder / 'lines.jsonl'}:2: [[]1].role: unknown role 'bot'; use 'user' (the customer), 'assistant'*",
        "*lines.jsonl:3: [[]1].tool_call_id: 'call_9' answers no tool call of the assistant message(s) before it*",
        "*lines.jsonl:5: field 'name': duplicate name 'twin' in this file*",
        "*lines.jsonl:6: messages[[]0].tool_calls[[]0]: a tool call needs a non-empty 'name'*",
        f"*{folder / 'lines.jsonl'}:7:*invalid JSON*",
        f"*{folder / 'meta.json.meta.yaml'}: unknown field(s) 'seed'; a sidecar file has only *",
    ])
    rows = _rows(sim)
    assert {nodeid for nodeid, row in rows.items() if row["status"] == "passed"} == {
        "transcripts/good.json::good", "transcripts/lines.jsonl::line-1", "transcripts/lines.jsonl::twin"}
    assert rows["transcripts/meta.json::invalid-file"]["error_kind"] == "scenario_error"
    assert "transcripts/lines.jsonl::line-5" in rows and "transcripts/lines.jsonl::line-7" in rows
    assert _roles_asked(sim) == ["evaluator"] * 3  # the broken ones cost nothing


@pytest.mark.slow
def test_a_conversation_without_an_agent_reply_is_a_no_agent_reply_error_never_judged(sim: SimProject) -> None:
    _transcripts_only(sim)
    _write(sim, "silent.jsonl", [
        [{"role": "user", "content": "Where is order 7?"}, {"role": "assistant", "content": None,
                                                             "tool_calls": [LOOKUP]},
         {"role": "tool", "tool_call_id": "call_1", "content": "{}"}, {"role": "assistant", "content": "  "}],
        [{"role": "system", "content": "be nice"}, {"role": "user", "content": "Hello?"}],
    ], lines=True)
    result = sim.run("--llmsim-results=out.json")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines_random([
        "*silent.jsonl::line-1: the recorded conversation 'line-1' has no agent reply to judge: none of its 1 agent "
        "turn(s) has text*not judged*",
        "*silent.jsonl::line-2: the recorded conversation 'line-2' has no agent reply to judge: it has no assistant "
        "(agent) message*"])
    assert {row["error_kind"] for row in _rows(sim).values()} == {"no_agent_reply"}
    assert sim.server.requests_log() == []


@pytest.mark.slow
def test_a_chat_file_of_a_simulated_run_scored_as_a_transcript_gets_the_same_judge_call_and_score(
        sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("polite"), scenario("mid_slow")])
    sim.run("--llmsim-chats-dir=chats", "--llmsim-results=sim.json").assert_outcomes(passed=2)
    simulated = {row["scenario"]: row for row in _rows(sim, "sim.json").values()}
    judge_prompts = {request["body"]["messages"][0]["content"] for request in sim.server.requests_log()
                     if "EVALUATOR" in request["body"]["messages"][0]["content"]}
    assert len(judge_prompts) == 2
    sim.server.reset()
    sim.write_ini(llmsim_transcripts="chats")
    # a new cache: the judge is asked again, not replayed
    result = sim.run("chats", "--llmsim-cache-dir=other-cache", "--llmsim-results=scored.json")
    result.assert_outcomes(passed=2)
    scored = {row["scenario"]: row for row in _rows(sim, "scored.json").values()}
    assert sorted(scored) == ["mid_slow", "polite"]
    assert sorted(row["nodeid"] for row in scored.values()) == [
        "chats/chat_mid_slow_trial1.json::mid_slow", "chats/chat_polite_trial1.json::polite"]
    for name, row in scored.items():
        assert (row["score"], row["comment"]) == (simulated[name]["score"], simulated[name]["comment"])
        assert (row["ended_by"], row["end_reason"]) == (simulated[name]["ended_by"], simulated[name]["end_reason"])
        assert [(t["role"], t["text"]) for t in row["transcript"]] == [
            (t["role"], t["text"]) for t in simulated[name]["transcript"]]
    asked = sim.server.requests_log()
    assert _roles_asked(sim) == ["evaluator", "evaluator"]
    assert {request["body"]["messages"][0]["content"] for request in asked} == judge_prompts
    assert {request["body"].get("seed") for request in asked} == {1234}


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_exports_carry_the_items_and_a_rerun_replays_every_judge_call(sim: SimProject, mode: list[str]) -> None:
    _transcripts_only(sim)
    _write(sim, "order.json", {"name": "order", "messages": ORDER_CHAT, "evaluate": ["judge", TOOL_RULES]})
    _write(sim, "more.jsonl", [SHORT, {"name": "low_rude", "messages": SHORT}, [SHORT[0]]], lines=True)
    args = [*mode, "--llmsim-results=out.json", "--junitxml=junit.xml", "-o", "junit_family=xunit1",
            "--html=report.html", "--self-contained-html"]
    sim.run(*args).assert_outcomes(passed=2, failed=1, errors=1)
    rows = _rows(sim)
    assert sorted(rows) == ["transcripts/more.jsonl::line-1", "transcripts/more.jsonl::line-3",
                            "transcripts/more.jsonl::low_rude", "transcripts/order.json::order"]
    assert rows["transcripts/more.jsonl::line-3"]["error_kind"] == "no_agent_reply"
    cases = {case.get("name"): case for case in ET.parse(sim.path / "junit.xml").getroot().iter("testcase")}
    properties = {prop.get("name"): prop.get("value") for prop in cases["order"].iter("property")}
    assert properties["score"] == "3" and properties["ended_by"] == "transcript"
    assert properties["metric.rules.passed"] == "true"
    html = (sim.path / "report.html").read_text()
    assert "transcripts/order.json::order" in html and "lookup_order" in html
    live = sim.server.stats()["requests"]
    assert live == 3
    sim.run(*args).assert_outcomes(passed=2, failed=1, errors=1)
    assert sim.server.stats()["requests"] == live  # every judge call replayed
    again = _rows(sim)
    assert all(row["cached"] for nodeid, row in again.items() if not nodeid.endswith("line-3"))
    assert {nodeid: row["score"] for nodeid, row in again.items()} == {
        nodeid: row["score"] for nodeid, row in rows.items()}


def test_the_judge_template_needing_variables_the_conversation_lacks_is_a_clear_error(sim: SimProject) -> None:
    _transcripts_only(sim)
    (sim.path / "prompts" / "evaluator.j2").write_text(
        "EVALUATOR for {{ scenario_name }} at {{ SHOP }}.{% if NOTE is defined %} {{ NOTE }}{% endif %}\n"
        "{% for i in range(1) %}{{ transcript_text }}{% endfor %}")
    _write(sim, "bare.json", SHORT)
    _write(sim, "given.json", {"messages": SHORT, "variables": {"SHOP": "Meat Market"}})
    _write(sim, "sidecar.jsonl", [SHORT], lines=True)
    (sim.path / "transcripts" / "sidecar.meta.json").write_text(json.dumps({"variables": {"SHOP": "Fish Shop"}}))
    result = sim.run("--llmsim-results=out.json")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines([
        "*bare.json::bare: the evaluator template 'evaluator.j2' uses 'SHOP', which the recorded conversation "
        "'bare' does not define; add it under 'variables'*"])
    assert _rows(sim)["transcripts/bare.json::bare"]["error_kind"] == "prompt_error"
    prompts = sorted(request["body"]["messages"][0]["content"].split(".")[0]
                     for request in sim.server.requests_log())
    assert prompts == ["EVALUATOR for given at Meat Market", "EVALUATOR for line-1 at Fish Shop"]


def test_a_reference_goes_to_the_rouge_metric_of_the_run_or_the_sidecar(sim: SimProject) -> None:
    pytest.importorskip("rouge_score")
    _transcripts_only(sim)
    _write(sim, "answers.jsonl", [
        {"name": "close", "messages": SHORT, "reference": "Hello, how can I help you?"},
        {"name": "far", "messages": SHORT, "reference": "Your parcel left the warehouse on Friday."},
    ], lines=True)
    (sim.path / "transcripts" / "answers.meta.yaml").write_text("evaluate: [{rouge: {threshold: 0.5}}]\n")
    result = sim.run("--llmsim-results=out.json")
    result.assert_outcomes(passed=1, failed=1)
    rows = _rows(sim)
    assert _metrics(rows["transcripts/answers.jsonl::close"])["rouge"]["score"] > 0.8
    assert _metrics(rows["transcripts/answers.jsonl::far"])["rouge"]["passed"] is False
    # the ini's metrics take a reference too
    (sim.path / "transcripts" / "answers.meta.yaml").unlink()
    sim.write_ini(llmsim_evaluate="judge\n    rouge")
    sim.run("--llmsim-results=out.json").assert_outcomes(passed=2)  # rouge without a threshold only informs
    close = _metrics(_rows(sim)["transcripts/answers.jsonl::close"])
    assert list(close) == ["judge", "rouge"] and close["rouge"]["score"] > 0.8 and close["rouge"]["passed"] is None


def test_transcript_files_are_not_scenario_files_and_not_collected_unless_configured(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    (sim.path / "scenarios" / "recorded.jsonl").write_text(json.dumps(SHORT) + "\n")
    sim.write_scenarios("recorded.json", SHORT)
    (sim.path / "scenarios" / "recorded.json.meta.yaml").write_text("min_score: 3\n")
    result = sim.run("--collect-only", "-q")
    result.stdout.fnmatch_lines(["scenarios/recorded.json::scenario#0", "scenarios/s.json::a"])
    assert "recorded.jsonl" not in result.stdout.str()
    sim.write_ini(llmsim_transcripts="scenarios/recorded.*")  # both lists name it: it is a transcript
    result = sim.run("--collect-only", "-q")
    result.stdout.fnmatch_lines(["scenarios/recorded.json::recorded", "scenarios/recorded.jsonl::line-1",
                                 "scenarios/s.json::a"])
    assert "meta" not in result.stdout.str()


@pytest.mark.slow
def test_the_engine_scores_transcripts_without_pytest(tmp_path: Path, llm_server: ScriptedOpenAIServer) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for name, text in TEMPLATES.items():
        (prompts / name).write_text(text)
    path = tmp_path / "calls.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in [
        {"name": "order", "messages": ORDER_CHAT, "evaluate": ["judge", TOOL_RULES]},
        {"name": "low_rude", "messages": SHORT}, [{"role": "robot"}]]) + "\n")
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.modules["pytest"] = None  # any 'import pytest' now fails
        from pathlib import Path
        from pytest_llmsim import EndpointSettings, RoleSettings, Runner, RunSettings, ScenarioJob
        from pytest_llmsim.replay.cache import CallCache
        from pytest_llmsim.llm.client import LLMClient
        from pytest_llmsim.model.prompts import PromptRenderer
        from pytest_llmsim.engine.runner import score_transcript
        from pytest_llmsim.engine.transcripts import load_transcript_file

        settings = RunSettings(
            endpoint=EndpointSettings(base_url=sys.argv[1], max_retries=0),
            agent=RoleSettings("m", "agent.j2", 0.0, 50), client=RoleSettings("m", "client.j2", 0.0, 50),
            evaluator=RoleSettings("m", "evaluator.j2", 0.0, 50),
            prompts_dir=Path({str(prompts)!r}), cache_dir=Path({str(tmp_path / "cache")!r}),
        )
        path = Path({str(path)!r})
        entries = load_transcript_file(path)
        print([entry.problem is None for entry in entries])
        jobs = [ScenarioJob(f"calls.jsonl::{{e.item_name}}", str(path), e.scenario, transcript=e.transcript)
                for e in entries if e.problem is None]
        with Runner(settings) as runner:
            for result in runner.run_all(jobs):
                print(result.scenario, result.status, result.score, result.tool_calls, result.ended_by)

        async def direct():
            cache = CallCache(settings.cache_dir, settings.record_mode)
            client = LLMClient(settings.endpoint, cache)
            try:
                result = await score_transcript(jobs[0], settings, client, PromptRenderer(settings.prompts_dir))
            finally:
                await client.aclose()
                cache.close()
            print(result.scenario, result.status, result.cached_calls)

        asyncio.run(direct())
        assert "_pytest" not in sys.modules
        """
    )
    out = subprocess.run([sys.executable, "-c", script, llm_server.base_url], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "[True, True, False]",
        "order passed 3 ['lookup_order'] transcript",
        "low_rude failed 1 [] transcript",
        "order passed 1",  # replayed from the cache the runner filled
    ]


def test_a_recorded_conversation_is_judged_once_whatever_the_trials(sim: SimProject) -> None:
    """Trials repeat a simulation; a recording is one conversation (one item, one judge call)."""
    _transcripts_only(sim)
    _write(sim, "one.json", SHORT)
    result = sim.run("--llmsim-trials=3", "--llmsim-trial-items", "--llmsim-results=out.json")
    result.assert_outcomes(passed=1)
    assert list(_rows(sim)) == ["transcripts/one.json::one"]
    assert _roles_asked(sim) == ["evaluator"]
