"""Hung and dripping endpoints: every request has one deadline covering the reply body, and a silent endpoint
fails the run fast (the first requests time out, later ones are not sent) instead of hanging it."""

from __future__ import annotations

import time

import pytest

from conftest import SimProject, default_script, scenario

NOT_ANSWERED = "(not retried: the endpoint has not answered any request in this run)"


@pytest.fixture(autouse=True, params=["aiohttp", "httpx"])
def http_backend(request: pytest.FixtureRequest, sim: SimProject) -> str:
    """Both of the openai client's transports: their own timeouts differ, the deadline must not."""
    sim.write_ini(llmsim_http_backend=request.param)
    return request.param


def _before_summary(result: pytest.RunResult) -> str:
    return result.stdout.str().split("short test summary info")[0]  # CI=true repeats messages in full there


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
