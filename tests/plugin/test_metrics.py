"""Several metrics per scenario: the judge, per-criterion verdicts, rules, and your own (hook and entry point)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProject, default_script, scenario, verdict

CRITERIA = ["greets the customer", "confirms the delivery date"]


def _results(sim: SimProject, name: str = "out.json") -> dict[str, dict[str, Any]]:
    return {row["scenario"]: row for row in json.loads((sim.path / name).read_text())["results"]}


def _metrics(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {metric["name"]: metric for metric in row["metrics"]}


def _criteria_reply(*met: bool) -> str:
    return json.dumps({"criteria": [{"number": i, "met": ok, "reason": "fine" if ok else "no date was given"}
                                    for i, ok in enumerate(met, start=1)]})


@pytest.mark.slow
def test_the_judge_alone_is_the_default_metric(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    sim.run("--llmsim-results=out.json").assert_outcomes(passed=1, failed=1)
    rows = _results(sim)
    assert rows["a"]["metrics"] == [{"name": "judge", "score": 3, "passed": True, "reason": "Polite and complete.",
                                     "details": {"min_score": 2, "attempts": 1, "judge_method": "verdict"}}]
    assert _metrics(rows["low_b"])["judge"]["passed"] is False


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_criteria_give_a_verdict_per_criterion_and_name_the_ones_missed(sim: SimProject, mode: list[str]) -> None:
    sim.write_scenarios("s.json", [scenario("a", criteria=CRITERIA, evaluate=["judge", "criteria"]),
                                   scenario("only_criteria", criteria=CRITERIA[:1], evaluate=["criteria"])])
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "1. greets the customer\n2."}, "reply": _criteria_reply(True, False)},
        {"match": {"system_contains": "against criteria"}, "reply": _criteria_reply(True)},
        *default_script()["rules"]]})
    result = sim.run(*mode, "--llmsim-results=out.json", "-rA")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*'confirms the delivery date' not met: no date was given*"])
    rows = _results(sim)
    criteria = _metrics(rows["a"])["criteria"]
    assert (criteria["score"], criteria["passed"]) == (0.5, False)
    assert criteria["details"]["criteria"] == [
        {"criterion": "greets the customer", "met": True, "reason": "fine"},
        {"criterion": "confirms the delivery date", "met": False, "reason": "no date was given"}]
    assert _metrics(rows["a"])["judge"]["passed"] is True  # the judge passed; the criteria failed the scenario
    assert rows["a"]["status"] == "failed"
    only = rows["only_criteria"]
    assert [m["name"] for m in only["metrics"]] == ["criteria"] and only["score"] is None
    assert only["status"] == "passed"


@pytest.mark.slow
def test_an_unparsable_criteria_verdict_is_an_error_never_a_guess(sim: SimProject) -> None:
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "against criteria"}, "reply": '{"criteria": [{"number": 1, "met": "yes"}]}'},
        *default_script()["rules"]]})
    sim.write_scenarios("s.json", [scenario("a", criteria=CRITERIA[:1], evaluate=["criteria"])])
    result = sim.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*criteria verdict is not valid after 3 attempt(s): criterion 1: 'met' is 'yes', "
                                 "not true or false*"])


CONFTEST = '''
from pytest_llmsim import LLMMetric, Metric, MetricResult


class ShortCall(Metric):
    name = "short_call"

    def __init__(self, options):
        super().__init__(options)
        self.max_turns = int(self.options.get("max_turns", 4))

    def evaluate(self, conversation, scenario):
        turns = len(conversation.turns)
        return MetricResult(self.name, turns, turns <= self.max_turns,
                            f"{turns} turns, at most {self.max_turns} wanted")


class Politeness(LLMMetric):
    name = "politeness"

    async def evaluate(self, conversation, scenario):
        reply = await self.ask([{"role": "system", "content": "POLITENESS of: " + conversation.agent_text},
                                {"role": "user", "content": "yes or no"}])
        return MetricResult(self.name, None, reply.text.strip() == "yes", reply.text)


class Broken(Metric):
    name = "broken"

    def evaluate(self, conversation, scenario):
        return {"not": "a result"}[0]


def pytest_llmsim_metrics():
    return [ShortCall, Politeness, Broken]
'''


@pytest.mark.slow
def test_custom_metrics_from_the_hook_sync_and_llm_and_one_that_raises(sim: SimProject) -> None:
    (sim.path / "conftest.py").write_text(CONFTEST)
    sim.server.set_script({"rules": [{"match": {"system_contains": "POLITENESS"}, "reply": "yes"},
                                     *default_script()["rules"]]})
    sim.write_scenarios("s.json", [
        scenario("short", evaluate=["judge", {"short_call": {"max_turns": 4}}]),
        scenario("long_ok", evaluate=[{"short_call": {"max_turns": 10}}, "politeness"]),
        scenario("crash", evaluate=["broken"]),
    ])
    result = sim.run("--llmsim-results=out.json", "-rA")
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*short_call*6 turns, at most 4 wanted*"])
    result.stdout.fnmatch_lines(["*metric 'broken' raised KeyError: 0*"])
    rows = _results(sim)
    assert _metrics(rows["long_ok"]) == {
        "short_call": {"name": "short_call", "score": 6, "passed": True, "reason": "6 turns, at most 10 wanted",
                       "details": {}},
        "politeness": {"name": "politeness", "score": None, "passed": True, "reason": "yes", "details": {}}}
    assert rows["crash"]["error_kind"] == "metric_error"
    requests = sim.server.stats()["requests"]
    sim.run("--llmsim-record=none").assert_outcomes(passed=1, failed=1, errors=1)  # the LLM metric replays
    assert sim.server.stats()["requests"] == requests


def test_an_unknown_metric_or_a_bad_option_is_an_error_before_any_call(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a", evaluate=["judge", "sentiment"]),
                                   scenario("b", evaluate=[{"judge": {"min_score": 5}}])])
    requests = sim.server.stats()["requests"]
    result = sim.run()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        "*unknown metric 'sentiment' in 'evaluate'; known metrics: agent_selection_judge, criteria, expected_agents, "
        "facts, information_aggregation_judge, judge, rouge, rules (register your own with the pytest_llmsim_metrics "
        "hook or the pytest_llmsim.metrics.api entry point)*",
        "*metric 'judge': min_score must be 1, 2 or 3 (got 5)*"])
    assert sim.server.stats()["requests"] == requests


@pytest.mark.slow
def test_a_bad_evaluate_list_is_a_scenario_error(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a", evaluate=["judge", "judge"]), scenario("b", evaluate="judge")])
    result = sim.run()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*metric 'judge' is listed twice*"])
    result.stdout.fnmatch_lines(["*must be a non-empty list of metric names*"])


@pytest.mark.slow
def test_the_ini_default_and_the_file_defaults(sim: SimProject) -> None:
    sim.write_ini(llmsim_evaluate="\n    judge\n    short_call")
    (sim.path / "conftest.py").write_text(CONFTEST)
    sim.write_scenarios("s.json", [scenario("a")])
    sim.write_scenarios("t.yaml", {"defaults": {"evaluate": [{"short_call": {"max_turns": 2}}]},
                                   "scenarios": [scenario("b")]})
    sim.run("--llmsim-results=out.json").assert_outcomes(failed=2)
    rows = _results(sim)
    assert [m["name"] for m in rows["a"]["metrics"]] == ["judge", "short_call"]
    assert [m["name"] for m in rows["b"]["metrics"]] == ["short_call"]


@pytest.mark.slow
def test_a_metric_from_an_installed_entry_point(sim: SimProject) -> None:
    site = sim.path / "site"
    (site / "epmetric_pkg-1.0.dist-info").mkdir(parents=True)
    (site / "epmetric_pkg-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: epmetric-pkg\n"
                                                                "Version: 1.0\n")
    (site / "epmetric_pkg-1.0.dist-info" / "entry_points.txt").write_text(
        "[pytest_llmsim.metrics.api]\nagent_spoke_last = epmetric:AgentSpokeLast\n")
    (site / "epmetric.py").write_text(textwrap.dedent('''
        from pytest_llmsim import Metric, MetricResult

        class AgentSpokeLast(Metric):
            name = "agent_spoke_last"

            def evaluate(self, conversation, scenario):
                last = conversation.turns[-1]["role"]
                return MetricResult(self.name, None, last == "agent", f"the {last} spoke last")
    '''))
    sim.write_scenarios("s.json", [scenario("a", evaluate=["agent_spoke_last"])])
    import os

    env_path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    os.environ["PYTHONPATH"] = env_path
    try:
        result = sim.run("--llmsim-results=out.json", subprocess=True)
    finally:
        os.environ["PYTHONPATH"] = env_path.split(os.pathsep, 1)[1]
    result.assert_outcomes(passed=1)
    assert _results(sim)["a"]["metrics"][0]["reason"] == "the agent spoke last"


def test_a_hook_returning_something_else_is_a_usage_error(sim: SimProject) -> None:
    (sim.path / "conftest.py").write_text("def pytest_llmsim_metrics():\n    return 'judge'\n")
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest_llmsim_metrics returned a str; return a dict of name -> Metric subclass*"])


def test_the_metric_api_is_usable_without_pytest(tmp_path: Path) -> None:
    from pytest_llmsim import Conversation, Metric, MetricResult
    from pytest_llmsim.metrics.api import failed_metrics

    class Echo(Metric):
        name = "echo"

        def evaluate(self, conversation: Conversation, scenario: Any) -> MetricResult:
            return MetricResult(self.name, 1.0, conversation.agent_text == "hi", "said hi")

    conversation = Conversation(turns=({"role": "client", "text": "hello"}, {"role": "agent", "text": "hi"}))
    result = Echo().evaluate(conversation, None)
    assert result.to_dict() == {"name": "echo", "score": 1.0, "passed": True, "reason": "said hi", "details": {}}
    assert failed_metrics([result, MetricResult("x", 0.1, False, "too low")]) == ["x: too low"]
    assert verdict(3, "x")  # conftest helpers importable alongside


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_chat_files_hold_each_conversation_and_a_readable_text(sim: SimProject, mode: list[str]) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    sim.write_scenarios("t.json", [scenario("a")])  # the same name in another file: its own file
    result = sim.run(*mode, "--llmsim-chats-dir=chats", "--llmsim-readable")
    result.assert_outcomes(passed=2, failed=1)
    if not mode:
        result.stdout.fnmatch_lines([f"llmsim: 3 chat file(s) written to {sim.path / 'chats'}"])
    names = sorted(p.name for p in (sim.path / "chats").iterdir())
    # a shared name gets a hash of the node id in every process (two xdist workers never take one file)
    assert len(names) == 6 and "chat_a_trial1.json" not in names and "chat_low_b_trial1.txt" in names
    shared = [name for name in names if name.startswith("chat_a_") and name.endswith("_trial1.json")]
    assert len(shared) == 2
    assert {json.loads((sim.path / "chats" / name).read_text())["nodeid"] for name in shared} == {
        "scenarios/s.json::a", "scenarios/t.json::a"}
    chat = json.loads((sim.path / "chats" / "chat_low_b_trial1.json").read_text())
    assert (chat["nodeid"], chat["trial"], chat["seed"], chat["status"], chat["score"]) == (
        "scenarios/s.json::low_b", 1, 1234, "failed", 1)
    assert chat["turns"][1] == {"role": "agent", "text": "Hello, Meat Market, how can I help?", "tool_calls": []}
    assert chat["metrics"][0]["name"] == "judge" and chat["usage"]
    text = (sim.path / "chats" / "chat_low_b_trial1.txt").read_text()
    assert "scenario 'low_b': failed, score 1 (min_score 2)" in text and "2. Agent: Hello, Meat Market" in text


def test_a_chat_file_that_cannot_be_written_is_reported_and_the_verdict_stands(sim: SimProject) -> None:
    (sim.path / "chats").write_text("a file, not a directory")
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("--llmsim-chats-dir=chats")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["llmsim: 1 chat file(s) not written: *"])


def test_criteria_without_criteria_is_an_error_before_any_call(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a", evaluate=["criteria"])])
    requests = sim.server.stats()["requests"]
    result = sim.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*metric 'criteria': it checks the scenario's 'criteria', and this scenario lists "
                                 "none*"])
    assert sim.server.stats()["requests"] == requests


def test_rouge_and_rules_through_a_run_with_a_reference_file_beside_the_scenario(sim: SimProject) -> None:
    (sim.path / "scenarios" / "refs").mkdir()
    (sim.path / "scenarios" / "refs" / "a.txt").write_text("Your order is confirmed. Goodbye!")
    sim.write_scenarios("s.json", [scenario("a", evaluate=[
        {"rouge": {"reference_file": "refs/a.txt", "target": "last", "threshold": 0.9}},
        {"rules": {"contains": "confirmed", "not_contains": "refund", "ended_by": ["agent"], "max_agent_turns": 2}},
    ])])
    result = sim.run("--llmsim-results=out.json", "-rA")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*max_agent_turns 2 exceeded: 3 agent turns*"])
    metrics = _metrics(_results(sim)["a"])
    assert metrics["rouge"]["score"] == 1.0 and metrics["rouge"]["passed"] is True
    assert metrics["rules"]["passed"] is False and metrics["rules"]["score"] == 0.75


INFORMING_CONFTEST = '''
from pytest_llmsim import Metric, MetricResult


class Tone(Metric):
    name = "tone"

    def evaluate(self, conversation, scenario):
        return MetricResult(self.name, 0.8, None, "friendly")


def pytest_llmsim_metrics():
    return [Tone]
'''


def test_a_scenario_whose_metrics_all_only_inform_errors(sim: SimProject) -> None:
    """passed=None from every metric is no verdict: an error naming the scenario, never a pass (issue 24)."""
    (sim.path / "conftest.py").write_text(INFORMING_CONFTEST)
    sim.write_scenarios("s.json", [scenario("informs", evaluate=["tone"]),
                                   scenario("decides", evaluate=["tone", "judge"])])
    result = sim.run("--llmsim-results=out.json")
    result.assert_outcomes(passed=1, errors=1)
    rows = _results(sim)
    assert rows["informs"]["error_kind"] == "metric_error"
    assert ("s.json::informs: no metric decides scenario 'informs' (metrics: tone): every metric returned "
            "passed=None (it only informs)") in rows["informs"]["error_message"]
    assert _metrics(rows["informs"])["tone"]["score"] == 0.8  # the scores it gave are kept
    assert rows["decides"]["status"] == "passed"
