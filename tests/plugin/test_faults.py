"""Endpoint faults over real HTTP: 429 with Retry-After, 5xx, timeouts, closed connections, malformed output,
structured-output fallbacks, query-string keys and secrets echoed back by a server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SimProject, default_script, scenario, verdict


@pytest.fixture(autouse=True, params=["aiohttp", "httpx"])
def http_backend(request: pytest.FixtureRequest, sim: SimProject) -> str:
    """Every fault behaves the same on both of the openai client's transports."""
    sim.write_ini(llmsim_http_backend=request.param)
    return request.param


def _with_first_rule(sim: SimProject, rule: dict) -> None:
    sim.server.set_script({"rules": [rule, *default_script()["rules"]]})


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_request_timeout_is_retried_then_reported(sim: SimProject) -> None:
    """An endpoint that has answered before gets its timeouts retried (bounded); see test_hangs.py for one
    that never answered."""
    _with_first_rule(sim, {"match": {"system_contains": "CLIENT", "last_user_contains": "Meat Market"},
                           "delay": 2.0, "reply": "late"})
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("-o", "llmsim_request_timeout=0.3", "-o", "llmsim_max_retries=1")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*client turn 3: timed out: http://127.0.0.1:*/v1 did not send a complete reply "
                                 "within 0.3s after 2 attempt(s); check the server*"])
    assert sim.server.stats()["requests"] == 4  # client, agent, client twice


@pytest.mark.slow
def test_close_before_reply_says_so(sim: SimProject) -> None:
    sim.server.set_script({"rules": [{"fault": "close_before_reply"}]})
    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    result = sim.run("--llmsim-concurrency=1", "-o", "llmsim_max_retries=2")
    result.assert_outcomes(errors=2)
    out = result.stdout.str().split("short test summary info")[0]  # CI=true repeats messages in full there
    assert out.count("s.json::a client turn 1: http://127.0.0.1:") == 1
    assert out.count("/v1 closed the connection before replying after 3 attempt(s) (") == 1
    assert out.count("closed the connection before replying after 1 attempt(s) (not retried: the endpoint "
                     "already closed connections without replying)") == 1
    assert "timed out" not in out and "cannot connect" not in out and "unreachable" not in out
    assert sim.server.stats()["faults"] == {"close_before_reply": 4}


@pytest.mark.slow
def test_close_mid_body_says_so(sim: SimProject) -> None:
    _with_first_rule(sim, {"match": {"system_contains": "AGENT"}, "fault": "close_mid_body",
                           "replies": ["Hello, Meat Market, how can I help?"]})
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("-o", "llmsim_max_retries=2")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*s.json::a agent turn 2: http://127.0.0.1:*/v1 closed the connection in the "
                                 "middle of its reply after 3 attempt(s) (*); check the server*"])
    out = result.stdout.str()
    assert "timed out" not in out and "cannot connect" not in out and "not retried" not in out
    assert sim.server.stats()["faults"] == {"close_mid_body": 3}


def _judge_formats(sim: SimProject, model: str | None = None) -> list[str | None]:
    """response_format types of the evaluator requests the server received, in order."""
    return [(entry["body"].get("response_format") or {}).get("type") for entry in sim.server.requests_log()
            if "EVALUATOR" in entry["body"]["messages"][0]["content"]
            and (model is None or entry["body"]["model"] == model)]


@pytest.mark.slow
def test_a_flaky_500_on_the_judge_does_not_downgrade_structured_output(sim: SimProject) -> None:
    _with_first_rule(sim, {"match": {"system_contains": "EVALUATOR"}, "status": 500, "times": 1,
                           "reply": verdict(3, "Polite and complete.")})
    sim.write_scenarios("s.json", [scenario(f"s{i}") for i in range(4)])
    sim.run("--llmsim-concurrency=1").assert_outcomes(passed=4)
    formats = _judge_formats(sim)
    # The failed request is tried once with the next weaker format; that is no evidence against json_schema.
    assert formats[:2] == ["json_schema", "json_object"]
    assert formats[2:] == ["json_schema"] * 3
    assert sim.server.stats()["status_counts"]["500"] == 1


@pytest.mark.slow
def test_a_500_for_every_format_is_the_error_not_a_format_problem(sim: SimProject) -> None:
    _with_first_rule(sim, {"match": {"system_contains": "EVALUATOR for a"}, "status": 500})
    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    result = sim.run("--llmsim-concurrency=1", "-o", "llmsim_max_retries=1")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*s.json::a evaluator attempt 1: HTTP 500 from http://127.0.0.1:*/v1 after 2 "
                                 "attempt(s) (json_schema output; json_object failed the same way, so it is not "
                                 "about the output format): *scripted HTTP 500*"])
    # a: json_schema, the weaker json_object failing the same way, then the retry with json_schema; b untouched.
    assert _judge_formats(sim) == ["json_schema", "json_object", "json_schema", "json_schema"]


CONTEXT_LENGTH = {"message": "This model's maximum context length is 8192 tokens. However, your messages resulted "
                             "in 9120 tokens. Please reduce the length of the messages.",
                  "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}


@pytest.mark.slow
def test_a_400_context_length_for_every_format_is_the_error_not_a_format_problem(sim: SimProject) -> None:
    """A 400 is evidence against a format only when the weaker format then works: a prompt too long for the
    model fails with every format, is reported as what it is, and leaves the later judge calls on json_schema."""
    _with_first_rule(sim, {"match": {"system_contains": "EVALUATOR for a"}, "status": 400,
                           "error": CONTEXT_LENGTH})
    sim.write_scenarios("s.json", [scenario("a"), scenario("b"), scenario("c")])
    result = sim.run("--llmsim-concurrency=1", "--llmsim-results=out.json")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*s.json::a evaluator attempt 1: HTTP 400 from http://127.0.0.1:*/v1 after 1 "
                                 "attempt(s) (json_schema output; json_object failed the same way, so it is not "
                                 "about the output format): *maximum context length is 8192 tokens*"])
    # a: json_schema, then json_object failing the same way (a 400 is not retried); b and c untouched.
    assert _judge_formats(sim) == ["json_schema", "json_object", "json_schema", "json_schema"]
    assert sim.server.stats()["status_counts"]["400"] == 2
    records = {record["scenario"]: record for record in json.loads((sim.path / "out.json").read_text())["results"]}
    assert records["a"]["error_kind"] == "endpoint_error"
    assert "maximum context length" in records["a"]["error_message"]


@pytest.mark.slow
@pytest.mark.parametrize(("error", "later"), [
    (CONTEXT_LENGTH, "json_schema"),
    ({"message": "Request too long: 9120 tokens exceed the context size (8192)", "type": "invalid_request_error"},
     "json_schema"),
    ({"message": "Bad request."}, "json_schema"),
    ({"message": "response_format 'json_schema' is not supported by this model"}, "json_object"),
], ids=["context-length", "context-size", "400-without-a-reason", "400-about-response-format"])
def test_a_single_400_on_the_judges_first_call_downgrades_only_when_it_is_about_the_format(
        sim: SimProject, error: dict, later: str) -> None:
    """Issue 24.4: one 400 "maximum context length" on the first judge call, after which the json_object probe
    happened to work, downgraded every later judge call to json_object. Only a body about the response format is
    evidence from a single rejection; one naming another cause never is, and one saying nothing needs 3 in a row."""
    _with_first_rule(sim, {"match": {"system_contains": "EVALUATOR"}, "status": 400, "times": 1, "error": error,
                           "reply": verdict(3, "Polite and complete.")})
    sim.write_scenarios("s.json", [scenario(f"s{i}") for i in range(3)])
    sim.run("--llmsim-concurrency=1").assert_outcomes(passed=3)
    assert sim.server.stats()["status_counts"]["400"] == 1
    # s0: the 400 and the json_object probe that worked; s1 and s2 keep json_schema unless the 400 was about it.
    assert _judge_formats(sim) == ["json_schema", "json_object", later, later]


@pytest.mark.slow
def test_a_429_on_the_judges_first_call_does_not_downgrade_structured_output(sim: SimProject) -> None:
    """A 429 is the rate limit speaking: retried with the same format, never evidence against json_schema."""
    _with_first_rule(sim, {"match": {"system_contains": "EVALUATOR", "response_format_type": "json_schema"},
                           "status": 429, "retry_after": 0, "times": 1, "reply": verdict(3, "Polite and complete.")})
    sim.write_scenarios("s.json", [scenario(f"s{i}") for i in range(4)])
    sim.run("--llmsim-concurrency=1").assert_outcomes(passed=4)
    assert sim.server.stats()["status_counts"]["429"] == 1
    # s0: the 429 and its retry, both json_schema; s1-s3 json_schema.
    assert _judge_formats(sim) == ["json_schema"] * 5


@pytest.mark.slow
def test_a_rejected_json_schema_is_remembered_per_model(sim: SimProject) -> None:
    """llama.cpp answers json_schema with HTTP 500 and honours json_object: remembered for that model only."""
    _with_first_rule(sim, {"match": {"system_contains": "EVALUATOR", "model": "judge-a"},
                           "reject_response_format": ["json_schema"], "reply": verdict(3, "Polite and complete.")})
    names = ["a1", "b1", "a2", "a3", "b2"]
    sim.write_scenarios("s.json", [scenario(n, evaluator={"model": f"judge-{n[0]}"}) for n in names])
    sim.run("--llmsim-concurrency=1").assert_outcomes(passed=5)
    assert _judge_formats(sim, "judge-a") == ["json_schema", "json_object", "json_object", "json_object"]
    assert _judge_formats(sim, "judge-b") == ["json_schema", "json_schema"]


@pytest.mark.slow
def test_a_plain_500_for_json_schema_only_is_remembered_after_three_requests_in_a_row(sim: SimProject) -> None:
    """No 400/422 and no word about the format in the body: only a repeated pattern is evidence."""
    _with_first_rule(sim, {"match": {"system_contains": "EVALUATOR", "response_format_type": "json_schema"},
                           "status": 500})
    sim.write_scenarios("s.json", [scenario(f"s{i}") for i in range(5)])
    sim.run("--llmsim-concurrency=1").assert_outcomes(passed=5)
    assert _judge_formats(sim) == ["json_schema", "json_object"] * 3 + ["json_object"] * 2


def test_a_query_string_key_stays_in_the_query(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run(base_url=f"{sim.server.base_url}?api-key=secret123")
    result.assert_outcomes(passed=1)
    paths = {entry["path"] for entry in sim.server.requests_log()}
    assert paths == {"/v1/chat/completions?api-key=secret123"}
    assert "secret123" not in result.stdout.str()


@pytest.mark.parametrize(("key", "query"), [("sk-test-ECHOED-key-4242", ""),
                                            ("sk-test-ECHOED-key-4242", "?api-key=qs-SECRET-777"),
                                            ("sk-" + "LONGsecret" * 40, "")],
                         ids=["header-key", "query-key", "key-longer-than-the-shown-body"])
def test_a_key_echoed_by_the_server_is_scrubbed_everywhere(sim: SimProject, monkeypatch: pytest.MonkeyPatch,
                                                           key: str, query: str) -> None:
    query_secret = "qs-SECRET-777"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    _with_first_rule(sim, {"match": {"system_contains": "AGENT"}, "echo_auth": True, "status": 401})
    sim.write_scenarios("s.json", [scenario("a")])
    html = sim.path / "report.html"
    result = sim.run("--junitxml=junit.xml", "--llmsim-results=out.json", f"--html={html}", "--self-contained-html",
                     base_url=sim.server.base_url + query)
    result.assert_outcomes(errors=1)
    log = sim.server.requests_log()
    assert key in log[-1]["headers"]["authorization"], "the server really got (and echoed) the key"
    shown_query = "?api-key=[*][*][*]" if query else ""
    result.stdout.fnmatch_lines([f"*agent turn 2: HTTP 401 from http://127.0.0.1:*/v1{shown_query} after 1 "
                                 "attempt(s): *invalid credentials 'Bearer [*][*][*]' for "
                                 f"/v1/chat/completions{shown_query}*"])
    assert html.is_file(), "pytest-html wrote no report"
    texts = {"stdout": result.stdout.str(), "junit": (sim.path / "junit.xml").read_text(),
             "export": json.dumps(json.loads((sim.path / "out.json").read_text())), "html": html.read_text()}
    assert "invalid credentials" in texts["html"], "the HTML report shows the error (scrubbed)"
    # key[:20]: the error shows the first 300 characters of the body; a key cut there must not show either.
    for where, text in texts.items():
        assert key[:20] not in text and query_secret not in text, f"a secret leaked into the {where}"
    for path in Path(sim.path).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key[:20].encode() not in data and query_secret.encode() not in data, f"a secret leaked into {path}"


@pytest.mark.slow
@pytest.mark.parametrize("body", ['{"object": "chat.completion"}', "<html>502 Bad Gateway</html>",
                                  '{"choices": [{"message": {"content": 42}}]}', '{"choices": []}', "[1, 2]"],
                         ids=["no-choices", "not-json", "content-not-text", "empty-choices", "json-list"])
def test_malformed_completion_is_an_error(sim: SimProject, body: str) -> None:
    _with_first_rule(sim, {"match": {"system_contains": "AGENT"}, "raw_body": body})
    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    result = sim.run()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*agent turn 2: malformed completion*"])


@pytest.mark.slow
def test_dead_endpoint_fails_fast_after_the_first_exhausted_call(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario(f"s{i}") for i in range(6)])
    result = sim.run("--llmsim-concurrency=1", "-o", "llmsim_max_retries=2", base_url="http://127.0.0.1:9/v1")
    result.assert_outcomes(errors=6)
    out = result.stdout.str().split("short test summary info")[0]  # CI=true repeats messages in full there
    assert out.count("cannot connect to http://127.0.0.1:9/v1 after 3 attempt(s) (") == 1
    assert out.count("after 1 attempt(s) (not retried: the endpoint was already unreachable)") == 5

