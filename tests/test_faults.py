"""Endpoint faults over real HTTP: 429 with Retry-After, 5xx, timeouts, malformed output."""

from __future__ import annotations

import pytest

from conftest import SimProject, default_script, scenario


@pytest.fixture(autouse=True, params=["aiohttp", "httpx"])
def http_backend(request: pytest.FixtureRequest, sim: SimProject) -> str:
    """Every fault behaves the same on both of the openai client's transports."""
    sim.write_ini(llmsim_http_backend=request.param)
    return request.param


def _with_first_rule(sim: SimProject, rule: dict) -> None:
    sim.server.set_script({"rules": [rule, *default_script()["rules"]]})


def test_429_is_retried_honouring_retry_after(sim: SimProject) -> None:
    _with_first_rule(sim, {"match": {"system_contains": "CLIENT"}, "status": 429, "times": 2, "retry_after": 1,
                           "replies": ["Hi, I would like chicken fillet.", "Two packs, delivered to Moscow please.",
                                       "Yes, please confirm."]})
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("-o", "llmsim_max_retries=3", "--durations=0")
    result.assert_outcomes(passed=1)
    assert sim.server.stats()["status_counts"]["429"] == 2
    # The call phase reports the conversation's own wall time (see test_item_duration_is_the_conversations_own_time).
    call = next(line for line in result.stdout.lines if " call " in line and "::a" in line)
    assert float(call.split("s")[0]) >= 2.0, "two Retry-After: 1 pauses must be waited out"


def test_500_is_retried_then_succeeds(sim: SimProject) -> None:
    _with_first_rule(sim, {"match": {"system_contains": "AGENT"}, "status": 503, "times": 1,
                           "replies": ["Hello", "Confirmed [END_CALL]"]})
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run("-o", "llmsim_max_retries=2").assert_outcomes(passed=1)
    assert sim.server.stats()["status_counts"]["503"] == 1


def test_persistent_500_is_an_error_after_bounded_retries(sim: SimProject) -> None:
    _with_first_rule(sim, {"match": {"system_contains": "AGENT"}, "status": 500})
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("-o", "llmsim_max_retries=2")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*s.json::a agent turn 2: HTTP 500 from http://127.0.0.1:*/v1 after 3 attempt(s)*"])
    assert sim.server.stats()["status_counts"]["500"] == 3


def test_401_is_not_retried(sim: SimProject) -> None:
    _with_first_rule(sim, {"status": 401})
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("-o", "llmsim_max_retries=3")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*HTTP 401*after 1 attempt(s)*check OPENAI_API_KEY*"])
    assert sim.server.stats()["requests"] == 1


def test_request_timeout_is_retried_then_reported(sim: SimProject) -> None:
    _with_first_rule(sim, {"match": {"system_contains": "CLIENT"}, "delay": 2.0, "reply": "late"})
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("-o", "llmsim_request_timeout=0.3", "-o", "llmsim_max_retries=1")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*client turn 1: timed out to http://127.0.0.1:*after 2 attempt(s)*"])


@pytest.mark.parametrize("body", ['{"object": "chat.completion"}', "<html>502 Bad Gateway</html>",
                                  '{"choices": [{"message": {"content": 42}}]}', '{"choices": []}', "[1, 2]"],
                         ids=["no-choices", "not-json", "content-not-text", "empty-choices", "json-list"])
def test_malformed_completion_is_an_error(sim: SimProject, body: str) -> None:
    _with_first_rule(sim, {"match": {"system_contains": "AGENT"}, "raw_body": body})
    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    result = sim.run()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*agent turn 2: malformed completion*"])


def test_dead_endpoint_fails_fast_after_the_first_exhausted_call(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario(f"s{i}") for i in range(6)])
    result = sim.run("--llmsim-concurrency=1", "-o", "llmsim_max_retries=2", base_url="http://127.0.0.1:9/v1")
    result.assert_outcomes(errors=6)
    out = result.stdout.str().split("short test summary info")[0]  # CI=true repeats messages in full there
    assert out.count("cannot connect to http://127.0.0.1:9/v1 after 3 attempt(s) (") == 1
    assert out.count("after 1 attempt(s) (not retried: the endpoint was already unreachable)") == 5

