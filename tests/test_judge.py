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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The example: a prose mention of another score must not win over the explicit label.
        ("I would not give this call a score 3: the agent was slow. Score: 1. Comment: rude", (1, "rude")),
        ("I would not give this call a score 3.\nScore: 1\nComment: rude", (1, "rude")),
        ("**Score:** 2\n**Comment:** slow but correct", (2, "slow but correct")),
        ("**Score**: 3\n**Comment**: fine", (3, "fine")),
        ("- Score: 2/3\n- Comment: ok", (2, "ok")),
        ("Comment: the agent was rude\nScore: 1", (1, "the agent was rude")),
        # Line-start labels decide over labels inside a line, and prose mentions never count beside them.
        ("A score 3 is too much. The score: 3 was tempting.\nScore: 2\nComment: ok", (2, "ok")),
        ('{"score": 3, "comment": "cut off', (3, "cut off")),
        ("Score: 2\nComment: a score 3 would need a confirmed order", (2, "a score 3 would need a confirmed order")),
        ("I give it a score of 2.\nComment: slow", (2, "slow")),
        ("It earns a score of 3/3, the full score 3.\nComment: great", (3, "great")),
        # A JSON verdict decides; prose around it that mentions other numbers is not a label.
        ('Not a score 3. {"score": 1, "comment": "rude"}', (1, "rude")),
        ('{"Score": 2, "Comment": "ok"}', (2, "ok")),
        ('{"verdict": {"score": 2, "comment": "ok"}}', (2, "ok")),
        ('{"score": 2, "comment": "ok"} and again {"score": 2, "comment": "same"}', (2, "ok")),
        ('Score: 3\n{"score": 3, "comment": "fine"}', (3, "fine")),
    ],
)
def test_parse_verdict_explicit_score_wins(text: str, expected: tuple[int, str]) -> None:
    assert parse_verdict(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Score: 3\nComment: good\nScore: 1", r"'Score:' labels disagree: 3, 1"),
        ("I would not give this a score 3. Comment: rude. Maybe a score 1", r"several different scores \(3, 1\)"),
        ("Fine call. Score: 3. On reflection, the right score: 2. Comment: ok", r"'Score:' labels disagree: 3, 2"),
        ("Score: 4\nComment: great", r"'Score:' label without a score 1, 2 or 3: 'Score: 4'"),
        ("Score: 2/5\nComment: meh", r"'Score:' label without a score"),
        ("Score: N/A\nComment: no call", r"'Score:' label without a score"),
        ("Score: 2", r"found score 2 but no 'Comment: \.\.\.' line"),
        ("Score: 2\nComment: ...", r"'Comment:' line is empty"),
        ("scored 7 overall. Comment: odd", r"must be 1, 2 or 3, got 7"),
        ('{"score": 3, "comment": "good"} {"score": 1, "comment": "rude"}',
         r"2 JSON verdicts with different scores \(3, 1\)"),
        ('[{"score": 3, "comment": "a"}, {"score": 2, "comment": "b"}]', r"different scores \(3, 2\)"),
        ('{"score": 3, "score": 1, "comment": "x"}', r"repeats 'score' with different values \(3, 1\)"),
        ('{"score": 3, "comment": "good"}\nScore: 1',
         r"JSON verdict says score 3 but the text around it says 'Score: 1'"),
        ('{"score": 2, "comment": "..."}', r"'comment' is missing or empty \(got '\.\.\.'\)"),
        ('{"score": 2, "comment": "  "}', r"'comment' is missing or empty"),
        ('{"score": 0, "comment": "x"}', r"must be 1, 2 or 3, got 0"),
        ('{"score": "3/3", "comment": "x"}', r"must be 1, 2 or 3"),
    ],
)
def test_parse_verdict_never_guesses(text: str, problem: str) -> None:
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
    assert body["response_format"]["schema"]["required"] == ["score", "comment", "blame"]


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
