"""Many conversations in flight: same results as sequential, real concurrency, shared back-off, xdist."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from conftest import SimProject, scenario, write_bot

pytestmark = pytest.mark.slow

# Replies carry the seed and turn, so a conversation that received another's reply would show it.
SEEDED_SCRIPT = {"rules": [
    {"match": {"system_contains": "EVALUATOR for low_"}, "reply": '{"score": 1, "comment": "bad call, seed {seed}"}'},
    {"match": {"system_contains": "EVALUATOR"}, "reply": '{"score": 3, "comment": "good call, seed {seed}"}'},
    {"match": {"system_contains": "AGENT"},
     "replies": ["agent {seed} a", "agent {seed} b", "agent {seed} bye [END_CALL]"]},
    {"match": {"system_contains": "CLIENT"}, "replies": ["client {seed} x", "client {seed} y", "client {seed} z"]},
]}


def _suite(sim: SimProject, count: int = 12) -> None:
    sim.server.set_script(SEEDED_SCRIPT)
    sim.write_scenarios("s.json", [scenario(f"{'low_' if i % 4 == 0 else ''}c{i:02d}", variables={"SEED": 100 + i})
                                   for i in range(count)])


def _junit(sim: SimProject, name: str) -> list[tuple[str, dict[str, str], str]]:
    root = ET.parse(sim.path / name).getroot()
    return [(case.get("name"), {p.get("name"): p.get("value") for p in case.iter("property")},
             "".join(node.text or "" for node in case.iter("system-out")))
            for case in root.iter("testcase")]


def _outcome_lines(result: pytest.RunResult) -> list[str]:
    return [line.split(" [")[0] for line in result.stdout.lines if line.startswith("scenarios/s.json::")]


def test_concurrent_run_equals_sequential_run(sim: SimProject) -> None:
    sim.server.latency = 0.05
    _suite(sim)
    sequential = sim.run("-v", "-rA", "--llmsim-concurrency=1", "--llmsim-cache-dir=seq",
                         "--llmsim-recordings=seq-rec", "--junitxml=seq.xml")
    concurrent = sim.run("-v", "-rA", "--llmsim-concurrency=8", "--llmsim-cache-dir=conc",
                         "--llmsim-recordings=conc-rec", "--junitxml=conc.xml")
    sequential.assert_outcomes(passed=9, failed=3)
    concurrent.assert_outcomes(passed=9, failed=3)
    assert _outcome_lines(concurrent) == _outcome_lines(sequential), "same items, same order, same verdicts"
    assert _junit(sim, "conc.xml") == _junit(sim, "seq.xml")
    transcripts = [line for line in concurrent.stdout.lines if "Customer:" in line or "Agent:" in line]
    assert transcripts == [line for line in sequential.stdout.lines if "Customer:" in line or "Agent:" in line]
    assert "agent 105 bye" in concurrent.stdout.str()


def test_peak_in_flight_reaches_the_configured_concurrency(sim: SimProject) -> None:
    sim.server.latency = 0.3
    _suite(sim)
    sim.run("--llmsim-concurrency=6").assert_outcomes(passed=9, failed=3)
    assert sim.server.stats()["peak_in_flight"] == 6


def test_sequential_setting_keeps_one_call_in_flight(sim: SimProject) -> None:
    sim.server.latency = 0.02
    _suite(sim, 4)
    sim.run("--llmsim-concurrency=1").assert_outcomes(passed=3, failed=1)
    assert sim.server.stats()["peak_in_flight"] == 1


def test_a_429_pauses_every_conversation_of_the_process(sim: SimProject) -> None:
    sim.server.latency = 0.1
    burst = {"match": {"system_contains": "CLIENT for c01"}, "status": 429, "times": 3, "retry_after": 1,
             "replies": SEEDED_SCRIPT["rules"][3]["replies"]}
    sim.write_scenarios("s.json", [scenario(f"c{i:02d}", variables={"SEED": i}) for i in range(8)])
    sim.server.set_script({"rules": [burst, *SEEDED_SCRIPT["rules"]]})
    sim.run("--llmsim-concurrency=8", "-o", "llmsim_max_retries=4").assert_outcomes(passed=8)
    stats = sim.server.stats()
    assert stats["status_counts"]["429"] == 3
    log = sim.server.requests_log()
    first_429 = next(r["time"] for r in log if "CLIENT for c01" in r["body"]["messages"][0]["content"])
    # While the process is paused (Retry-After: 1 after the 429 answered at ~+0.1 s), nobody sends anything.
    paused = [r for r in log if first_429 + 0.3 < r["time"] < first_429 + 1.0]
    assert paused == [], f"{len(paused)} requests were sent during the shared back-off"
    assert stats["completed"] == 8 * 7


@pytest.mark.parametrize("dist_args", [["-n", "2"], ["--dist", "load", "--tx", "2*popen"]],
                         ids=["n2", "tx-popen"])
def test_xdist_gives_the_same_results_as_one_process(sim: SimProject, dist_args: list[str]) -> None:
    sim.server.latency = 0.02
    _suite(sim)
    single = sim.run("--llmsim-cache-dir=one", "--llmsim-recordings=one-rec", "--junitxml=one.xml")
    single.assert_outcomes(passed=9, failed=3)
    before = sim.server.stats()["requests"]
    spread = sim.run(*dist_args, "--llmsim-cache-dir=many", "--llmsim-recordings=many-rec", "--junitxml=many.xml")
    spread.assert_outcomes(passed=9, failed=3)
    assert sim.server.stats()["requests"] == 2 * before, "every call made once per run, none lost or doubled"
    assert sorted(_junit(sim, "many.xml")) == sorted(_junit(sim, "one.xml"))


def test_xdist_workers_share_the_cache(sim: SimProject) -> None:
    _suite(sim)
    sim.run("-n", "2").assert_outcomes(passed=9, failed=3)
    recorded = sim.server.stats()["requests"]
    sim.run("-n", "2", "--llmsim-record=none").assert_outcomes(passed=9, failed=3)
    assert sim.server.stats()["requests"] == recorded


def test_exitfirst_stops_and_says_what_finished_ahead(sim: SimProject) -> None:
    sim.server.latency = 0.02
    sim.write_scenarios("s.json", [scenario("low_first", variables={"SEED": 1}),
                                   *(scenario(f"c{i}", variables={"SEED": 10 + i}) for i in range(5))])
    slow_verdict = {"match": {"system_contains": "EVALUATOR for low_first"}, "delay": 1.5,
                    "reply": '{"score": 1, "comment": "a bad call"}'}
    sim.server.set_script({"rules": [slow_verdict, *SEEDED_SCRIPT["rules"]]})
    result = sim.run("-x", "--llmsim-concurrency=6")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*llmsim: the run stopped early; 5 conversation(s) that had already finished*"])
    # What finished ahead was recorded: the next run replays it instead of calling the endpoint again.
    calls = sim.server.stats()["requests"]
    sim.run("--llmsim-record=none").assert_outcomes(passed=5, failed=1)
    assert sim.server.stats()["requests"] == calls


def test_item_duration_is_the_conversations_own_time(sim: SimProject) -> None:
    """Conversations run ahead of their items; the decided phase reports the conversation's wall time, not
    the milliseconds pytest spent collecting an already finished result."""
    sim.server.latency = 0.1
    _suite(sim, 4)
    reprec = sim.pytester.inline_run("-p", "no:randomly", f"--llmsim-base-url={sim.server.base_url}",
                                     "--llmsim-concurrency=4")
    reports = reprec.getreports("pytest_runtest_logreport")
    calls = [r for r in reports if r.when == "call"]
    assert len(calls) == 4
    for report in calls:
        assert report.duration == report.llmsim["duration_seconds"]
        assert report.duration >= 0.1 * report.llmsim["live_calls"] * 0.9
    # The first item's setup waited for its whole conversation; that wait is not counted a second time.
    assert all(r.duration < 0.05 for r in reports if r.when == "setup")


@pytest.mark.parametrize("dist_args", [[], ["-n", "2"]], ids=["one-process", "n2"])
def test_rpm_caps_the_request_rate_of_the_whole_run(sim: SimProject, dist_args: list[str]) -> None:
    """``--llmsim-rpm`` is the endpoint's limit: xdist workers split it instead of each taking all of it."""
    _suite(sim, 4)
    sim.run(*dist_args, "--llmsim-rpm=600", "--llmsim-concurrency=4").assert_outcomes(passed=3, failed=1)
    times = sorted(request["time"] for request in sim.server.requests_log())
    assert len(times) >= 20
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert rate <= 10 * 1.15, f"{rate:.1f} requests/s against a cap of 600/min"


def test_xdist_spreads_a_small_suite_over_every_worker(sim: SimProject) -> None:
    """Fewer scenarios than conversation slots: each worker still runs its own share."""
    _suite(sim, 4)
    result = sim.run("-n", "2", "-v", "--llmsim-concurrency=4")
    result.assert_outcomes(passed=3, failed=1)
    reported_by = {line.split("]")[0] + "]" for line in result.stdout.lines
                   if line.startswith("[gw") and "scenarios/s.json::" in line}
    assert reported_by == {"[gw0]", "[gw1]"}


KILLER_BOT = """
    import os
    import time

    def reply(messages, context):
        time.sleep(0.15)  # every conversation lasts long enough for the run-ahead to overlap them
        turn = sum(1 for m in messages if m["role"] == "assistant") + 1
        if context.scenario == "s05" and turn == 2:
            os._exit(1)  # the agent under test kills its worker process, mid-conversation
        if turn == 3:
            return {"content": f"Done for {context.scenario}.", "end": True}
        return f"Turn {turn} for {context.scenario}"
"""


def test_an_agent_that_kills_its_xdist_worker_errors_alone(sim: SimProject) -> None:
    """Issue 24.18: a python agent that ends its worker process (``os._exit``) took the conversations the worker
    was running ahead down with it: xdist blamed whichever item the worker was reporting, as "failed". Only the
    scenario whose agent did it is an error, saying so; every other scenario runs to its own verdict."""
    write_bot(sim, KILLER_BOT)
    # Two shares of 4 (s00-s03, s04-s07): s05 runs ahead while its worker reports s04, s06 and s07 run beside it.
    sim.write_scenarios("s.json", [scenario(f"s{i:02d}", agent={"python": "bots.shop:reply"}) for i in range(8)])
    result = sim.run("-n", "2", "--llmsim-concurrency=3", "--llmsim-results=out.json", "-rA")
    out = result.stdout.str()
    result.assert_outcomes(passed=7, errors=1)
    records = {r["scenario"]: r for r in json.loads((sim.path / "out.json").read_text())["results"]}
    assert {name: r["status"] for name, r in records.items()} == {
        **{f"s{i:02d}": "passed" for i in range(8) if i != 5}, "s05": "error"}, out
    assert records["s05"]["error_kind"] == "crashed"
    assert "ended its xdist worker process" in records["s05"]["error_message"], records["s05"]
    assert "ended its xdist worker process" in out
