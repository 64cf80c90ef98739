"""The evaluator: verdict parsing, structured-output fallback, invalid verdicts."""

from __future__ import annotations

import pytest

from conftest import SimProject, default_script, scenario
from pytest_llmsim.judge import parse_verdict


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"score": 3, "comment": "Great"}', (3, "Great")),
        ('```json\n{"score": 2, "comment": "Ok"}\n```', (2, "Ok")),
        ('Here is my verdict: {"score": "1", "comment": "Rude"} thanks', (1, "Rude")),
        ('{"score": 2.0, "comment": " spaced "}', (2, "spaced")),
        ("Score: 3\nComment: Very good call.", (3, "Very good call.")),
    ],
)
def test_parse_verdict_tolerates_common_shapes(text: str, expected: tuple[int, str]) -> None:
    assert parse_verdict(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"score": 5, "comment": "x"}', "must be 1, 2 or 3"),
        ('{"score": 2}', "'comment' is missing"),
        ('{"score": true, "comment": "x"}', "must be 1, 2 or 3"),
        ("I think it went fine.", "no JSON object"),
        ("", "no JSON object"),
    ],
)
def test_parse_verdict_rejects_invalid(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_verdict(text)


def test_judge_uses_json_schema_when_the_server_accepts_it(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run().assert_outcomes(passed=1)
    formats = [r["body"].get("response_format") for r in sim.server.requests_log()
               if r["body"]["messages"][0]["content"].startswith("EVALUATOR")]
    assert [f["type"] for f in formats] == ["json_schema"]
    assert formats[0]["json_schema"]["schema"]["properties"]["score"]["enum"] == [1, 2, 3]


def test_judge_falls_back_to_json_object_like_llama_cpp(sim: SimProject) -> None:
    rules = default_script()["rules"]
    for rule in rules[:3]:
        rule["reject_response_format"] = ["json_schema"]
    sim.server.set_script({"rules": rules})
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    result = sim.run("-v", "--llmsim-concurrency=1")
    result.assert_outcomes(passed=1, failed=1)
    formats = [(r["body"].get("response_format") or {}).get("type") for r in sim.server.requests_log()
               if r["body"]["messages"][0]["content"].startswith("EVALUATOR")]
    # One rejected json_schema request, then json_object (with the schema) for every verdict.
    assert formats == ["json_schema", "json_object", "json_object"]
    body = next(r["body"] for r in sim.server.requests_log()
            if (r["body"].get("response_format") or {}).get("type") == "json_object")
    assert body["response_format"]["schema"]["required"] == ["score", "comment"]


def test_each_judge_attempt_is_a_new_request(sim: SimProject) -> None:
    rules = default_script()["rules"]
    sim.server.set_script({"rules": [{"match": {"system_contains": "EVALUATOR"}, "reply": "seed {seed}"}, *rules[3:]]})
    sim.write_scenarios("s.json", [scenario("a", variables={"SEED": 5})])
    sim.run().assert_outcomes(errors=1)
    seeds = [r["body"]["seed"] for r in sim.server.requests_log()
             if r["body"]["messages"][0]["content"].startswith("EVALUATOR")]
    assert seeds == [5, 6, 7], "each attempt needs a new seed and cache key, or a retry would replay the same reply"


def test_invalid_verdict_is_an_error_showing_the_raw_reply(sim: SimProject) -> None:
    rules = default_script()["rules"]
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "EVALUATOR"}, "reply": "The call was fine, I guess."}, *rules[3:]]})
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "*s.json::a: the evaluator's reply is not a valid verdict after 3 attempt(s): no JSON object*",
        "*raw evaluator reply: 'The call was fine, I guess.'*",
    ])


def test_comment_language_reaches_the_evaluator_prompt(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run("--llmsim-language=Russian").assert_outcomes(passed=1)
    judge = [r["body"]["messages"][0]["content"] for r in sim.server.requests_log()
             if r["body"]["messages"][0]["content"].startswith("EVALUATOR")]
    assert judge == [judge[0]] and "in Russian." in judge[0]
