"""Hung and dripping endpoints: every request has one deadline covering the reply body, and a silent endpoint
fails the run fast (the first requests time out, later ones are not sent) instead of hanging it. User code
(agents, metrics) that exits, never returns or blocks the engine's event loop errors its item, never freezes
the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TEMPLATES, SimProject, default_script, scenario, write_bot
from pytest_llmsim.engine.runner import Runner, ScenarioJob
from pytest_llmsim.model.scenario import Scenario
from pytest_llmsim.model.settings import EndpointSettings, RoleSettings, RunSettings
from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

NOT_ANSWERED = "(not retried: the endpoint has not answered any request in this run)"


@pytest.fixture(autouse=True, params=["aiohttp", "httpx"])
def http_backend(request: pytest.FixtureRequest, sim: SimProject) -> str:
    """Both of the openai client's transports: their own timeouts differ, the deadline must not."""
    sim.write_ini(llmsim_http_backend=request.param)
    return request.param


def _before_summary(result: pytest.RunResult) -> str:
    return result.stdout.str().split("short test summary info")[0]  # CI=true repeats messages in full there


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["hang", "drip"])
def test_a_silent_endpoint_fails_the_run_fast(sim: SimProject, fault: str) -> None:
    # drip: a byte every 0.1 s for 10 s. Every read makes progress, so a per-read timeout never trips.
    sim.server.set_script({"rules": [{"fault": fault, "drip_interval": 0.1, "drip_length": 100}]})
    sim.write_scenarios("s.json", [scenario(f"s{i}") for i in range(8)])
    started = time.monotonic()
    result = sim.run("--llmsim-concurrency=2", "-o", "llmsim_request_timeout=0.5", "-o", "llmsim_max_retries=4")
    elapsed = time.monotonic() - started
    result.assert_outcomes(errors=8)
    sent = sim.server.stats()["requests"]
    assert 1 <= sent <= 2, "only the requests already in flight when the first one timed out may be sent"
    out = _before_summary(result)
    assert out.count(f"did not send a complete reply within 0.5s after 1 attempt(s) {NOT_ANSWERED}") == sent
    assert out.count("client turn 1: not sent: http://127.0.0.1:") == 8 - sent
    assert out.count("/v1 did not answer within 0.5s on an earlier request in this run; check the server") == 8 - sent
    assert elapsed < 10, f"the run took {elapsed:.1f}s"


@pytest.mark.slow
def test_timeouts_of_an_endpoint_that_answered_are_retried_then_fail_fast(sim: SimProject) -> None:
    rules = default_script()["rules"]
    sim.server.set_script({"rules": [{"match": {"system_contains": "AGENT"}, "fault": "hang"}, *rules]})
    sim.write_scenarios("s.json", [scenario(f"s{i}") for i in range(4)])
    started = time.monotonic()
    result = sim.run("--llmsim-concurrency=1", "-o", "llmsim_request_timeout=0.5", "-o", "llmsim_max_retries=1")
    elapsed = time.monotonic() - started
    result.assert_outcomes(errors=4)
    out = _before_summary(result)
    # s0's customer was answered, so its agent turn's timeout is retried once; then nothing more is sent.
    assert out.count("s.json::s0 agent turn 2: timed out: http://127.0.0.1:") == 1
    assert out.count("did not send a complete reply within 0.5s after 2 attempt(s); check the server") == 1
    assert out.count("client turn 1: not sent: ") == 3
    assert NOT_ANSWERED not in out
    assert sim.server.stats()["requests"] == 3  # s0: the customer, the agent twice
    assert elapsed < 10, f"the run took {elapsed:.1f}s"


@pytest.mark.slow
def test_a_drip_is_cut_at_the_deadline_even_when_retried(sim: SimProject) -> None:
    """The deadline covers the body on every attempt, not only on the first one."""
    rules = default_script()["rules"]
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "AGENT"}, "fault": "drip", "drip_interval": 0.1, "drip_length": 200},
        *rules]})
    sim.write_scenarios("s.json", [scenario("a")])
    started = time.monotonic()
    result = sim.run("-o", "llmsim_request_timeout=0.5", "-o", "llmsim_max_retries=2")
    elapsed = time.monotonic() - started
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*s.json::a agent turn 2: timed out: http://127.0.0.1:*/v1 did not send a complete "
                                 "reply within 0.5s after 3 attempt(s); check the server*"])
    assert sim.server.stats()["faults"] == {"drip": 3}
    assert elapsed < 15, f"the run took {elapsed:.1f}s (one dripped reply alone lasts 20 s)"


# -- code of the user's that never returns, exits or blocks the engine's loop (issue 24) --------------------------
# Each inner run is a real process with a deadline: a regression (a run that freezes) fails here instead of
# hanging this suite.
INNER_DEADLINE_S = 120


def run_bounded(sim: SimProject, *args: str, timeout: float = INNER_DEADLINE_S) -> pytest.RunResult:
    return sim.pytester.runpytest_subprocess("-p", "no:randomly", f"--llmsim-base-url={sim.server.base_url}", *args,
                                             timeout=timeout)


EXITING_AGENTS = {
    "sync_exit": """
        import sys

        def reply(messages, context):
            sys.exit(3)
    """,
    "sync_keyboard_interrupt": """
        def reply(messages, context):
            raise KeyboardInterrupt("from the agent")
    """,
    "async_system_exit": """
        async def reply(messages, context):
            raise SystemExit(4)
    """,
    "async_keyboard_interrupt": """
        async def reply(messages, context):
            raise KeyboardInterrupt
    """,
    "factory_exit": """
        import sys

        class Bot:
            def __init__(self):
                sys.exit("no bot today")

            def respond(self, messages):
                return "never"
    """,
}


class TestUserCodeThatExitsOrHangs:
    @pytest.fixture
    def http_backend(self) -> str:  # the endpoint's transport plays no part here: one run, not one per backend
        return "default"

    @pytest.mark.slow
    @pytest.mark.parametrize("kind", sorted(EXITING_AGENTS))
    def test_an_agent_that_exits_is_an_agent_error_and_the_run_goes_on(self, sim: SimProject, kind: str) -> None:
        write_bot(sim, EXITING_AGENTS[kind])
        name = "Bot" if kind == "factory_exit" else "reply"
        sim.write_scenarios("s.json", [scenario("exits", agent={"python": f"bots.shop:{name}"}), scenario("fine")])
        result = run_bounded(sim, "--llmsim-results=out.json")
        result.assert_outcomes(passed=1, errors=1)
        exc = "KeyboardInterrupt" if "keyboard" in kind else "SystemExit"
        where = " agent turn 2: the" if kind != "factory_exit" else ": creating the"
        result.stdout.fnmatch_lines([f"*s.json::exits{where} python agent 'bots.shop:{name}' raised {exc}*in an "
                                     "agent ends neither the run nor pytest: the item errors*"])
        rows = {r["scenario"]: r for r in json.loads((sim.path / "out.json").read_text())["results"]}
        assert rows["exits"]["error_kind"] == "agent_error"
        assert rows["fine"]["status"] == "passed"

    @pytest.mark.slow
    def test_an_exiting_agent_under_xdist(self, sim: SimProject) -> None:
        write_bot(sim, EXITING_AGENTS["sync_exit"])
        sim.write_scenarios("s.json", [scenario(f"exits{i}", agent={"python": "bots.shop:reply"}) for i in range(3)]
                            + [scenario("fine")])
        result = run_bounded(sim, "-n", "2")
        result.assert_outcomes(passed=1, errors=3)
        assert result.stdout.str().count("raised SystemExit: 3") >= 3

    @pytest.mark.slow
    def test_an_exiting_agent_in_the_cli(self, sim: SimProject) -> None:
        write_bot(sim, EXITING_AGENTS["async_system_exit"])
        sim.write_scenarios("s.json", [scenario("exits", agent={"python": "bots.shop:reply"}), scenario("fine")])
        command = [sys.executable, "-m", "pytest_llmsim.apps.cli", "run", "scenarios/s.json", "--output-dir", "out",
                   "--base-url", sim.server.base_url]
        env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
        done = subprocess.run(command, cwd=sim.path, env=env, capture_output=True, text=True,
                              timeout=INNER_DEADLINE_S)
        assert done.returncode == 1, done.stderr
        export = next(p for p in (sim.path / "out").glob("*.json") if not p.name.endswith(".summary.json"))
        rows = {r["scenario"]: r for r in json.loads(export.read_text())["results"]}
        assert rows["exits"]["error_kind"] == "agent_error"
        assert "raised SystemExit: 4" in rows["exits"]["error_message"]
        assert rows["fine"]["outcome"] == "passed"

    @pytest.mark.slow
    def test_an_async_agent_blocking_the_event_loop_errors_at_its_timeout(self, sim: SimProject) -> None:
        write_bot(sim, """
            import time

            async def reply(messages, context):
                time.sleep(30)
                return "late"
        """)
        sim.write_scenarios("s.json", [scenario("blocks", agent={"python": "bots.shop:reply"}, timeout=2)])
        started = time.monotonic()
        result = run_bounded(sim)
        elapsed = time.monotonic() - started
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*s.json::blocks: timeout: the scenario's timeout=2s cannot be enforced: the "
                                     "engine's event loop has been blocked for *s at *shop.py:5 in reply() (in the "
                                     "conversation phase of this scenario)*"])
        assert elapsed < 25, f"the run took {elapsed:.1f}s: the item waited for the blocked loop"

    @pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dead loop's HTTP session
    def test_the_loop_threads_death_errors_every_waiting_item(self, llm_server: ScriptedOpenAIServer,
                                                              tmp_path: Path) -> None:
        """The net under the boundaries: whatever kills the loop thread, no future is left waiting."""
        llm_server.set_script({"rules": [{"delay": 5.0, "reply": "slow"}]})
        prompts = tmp_path / "prompts"
        prompts.mkdir()
        for name, text in TEMPLATES.items():
            (prompts / name).write_text(text)
        role = RoleSettings("m", "agent.j2", 0.0, 50)
        settings = RunSettings(endpoint=EndpointSettings(base_url=llm_server.base_url, max_retries=0), agent=role,
                               client=RoleSettings("m", "client.j2", 0.0, 50),
                               evaluator=RoleSettings("m", "evaluator.j2", 0.0, 50), prompts_dir=prompts,
                               cache_dir=tmp_path / "cache")
        job = ScenarioJob("s.json::a", "s.json", Scenario.model_validate(scenario("a")))
        runner = Runner(settings)
        try:
            waiting = runner.submit(job)
            time.sleep(0.5)

            def die() -> None:
                raise SystemExit("from a callback on the loop")

            runner._loop.call_soon_threadsafe(die)
            result = waiting.result(timeout=10)
            assert (result.status, result.error_kind) == ("error", "internal_error")
            assert "the engine's event loop thread died of SystemExit: from a callback on the loop" in \
                result.error_message
            later = runner.submit(job).result(timeout=5)
            assert later.error_kind == "internal_error" and "s.json::a: not run: " in later.error_message
        finally:
            started = time.monotonic()
            runner.close()
            assert time.monotonic() - started < 5


METRICS_CONFTEST = '''
import asyncio
import sys
import time

from pytest_llmsim import Metric, MetricResult


class Sleeps(Metric):
    name = "sleeps"

    def evaluate(self, conversation, scenario):
        time.sleep(3600)
        return MetricResult(self.name, 1, True)


class SleepsAsync(Metric):
    name = "sleeps_async"

    async def evaluate(self, conversation, scenario):
        await asyncio.sleep(3600)
        return MetricResult(self.name, 1, True)


class Exits(Metric):
    name = "exits"

    def evaluate(self, conversation, scenario):
        sys.exit(5)


class ExitsAsync(Metric):
    name = "exits_async"

    async def evaluate(self, conversation, scenario):
        raise KeyboardInterrupt


def pytest_llmsim_metrics():
    return [Sleeps, SleepsAsync, Exits, ExitsAsync]
'''


class TestMetricsThatNeverReturnOrExit:
    @pytest.fixture
    def http_backend(self) -> str:
        return "default"

    @pytest.mark.slow
    def test_a_metric_gets_a_deadline_and_an_exit_is_a_metric_error(self, sim: SimProject) -> None:
        (sim.path / "conftest.py").write_text(METRICS_CONFTEST)
        names = ["sleeps", "sleeps_async", "exits", "exits_async"]
        sim.write_scenarios("s.json", [scenario(name, evaluate=["judge", name], timeout=2) for name in names]
                            + [scenario("fine")])
        started = time.monotonic()
        result = run_bounded(sim, "--llmsim-results=out.json")
        elapsed = time.monotonic() - started
        result.assert_outcomes(passed=1, errors=4)
        rows = {r["scenario"]: r for r in json.loads((sim.path / "out.json").read_text())["results"]}
        assert all(rows[name]["error_kind"] == "metric_error" for name in names)
        for name in ("sleeps", "sleeps_async"):
            assert f"s.json::{name}: metric {name!r} did not return within 2s" in rows[name]["error_message"]
        assert "metric 'exits' raised SystemExit: 5" in rows["exits"]["error_message"]
        assert "metric 'exits_async' raised KeyboardInterrupt" in rows["exits_async"]["error_message"]
        assert elapsed < 60, f"the run took {elapsed:.1f}s"
