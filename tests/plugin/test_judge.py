"""The evaluator: verdict parsing, structured-output fallback, invalid verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SimProject, default_script, scenario
from pytest_llmsim.engine.judge import blame_contradiction, parse_verdict


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"score": 3, "comment": "Great call overall"}', (3, "Great call overall")),
        ('```json\n{"score": 2, "comment": "Ok but slow"}\n```', (2, "Ok but slow")),
        ('Here is my verdict: {"score": "1", "comment": "Rude to the customer"} thanks', (1, "Rude to the customer")),
        ('{"score": 2.0, "comment": " spaced out comment "}', (2, "spaced out comment")),
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
        ("I would not give this call a score 3: the agent was slow. Score: 1. Comment: the agent was rude",
         (1, "the agent was rude")),
        ("I would not give this call a score 3.\nScore: 1\nComment: the agent was rude", (1, "the agent was rude")),
        ("**Score:** 2\n**Comment:** slow but correct", (2, "slow but correct")),
        ("**Score**: 3\n**Comment**: fine and polite call", (3, "fine and polite call")),
        ("- Score: 2/3\n- Comment: ok but slow", (2, "ok but slow")),
        ("Comment: the agent was rude\nScore: 1", (1, "the agent was rude")),
        # Line-start labels decide over labels inside a line, and prose mentions never count beside them.
        ("A score 3 is too much. The score: 3 was tempting.\nScore: 2\nComment: ok but slow", (2, "ok but slow")),
        ('{"score": 3, "comment": "The call was cut off', (3, "The call was cut off")),
        ("Score: 2\nComment: a score 3 would need a confirmed order", (2, "a score 3 would need a confirmed order")),
        # A JSON verdict decides when the text around it names no other score.
        ('{"Score": 2, "Comment": "ok but slow"}', (2, "ok but slow")),
        ('{"verdict": {"score": 2, "comment": "ok but slow"}}', (2, "ok but slow")),
        ('{"score": 2, "comment": "ok but slow"} and again {"score": 2, "comment": "the same again"}',
         (2, "ok but slow")),
        ('Score: 3\n{"score": 3, "comment": "fine and polite"}', (3, "fine and polite")),
        ('My verdict, 3 out of 3: {"score": 3, "comment": "fine and polite"}', (3, "fine and polite")),
        ('On the scale from 1 to 3:\n{"score": 2, "comment": "ok but slow"}', (2, "ok but slow")),
        ('The agent sold 2 packs to Moscow.\n{"score": 3, "comment": "fine and polite"}', (3, "fine and polite")),
        # A Blame: line ends the comment; other score labels that agree are fine.
        ("Score: 1\nComment: the agent was rude\nBlame: agent", (1, "the agent was rude")),
        ("Score: 2\nComment: ok but slow\nFinal: 2", (2, "ok but slow")),
        ('"score": 2, "comment": "ok but slow"', (2, "ok but slow")),
        ('{"score": 3, "comment": "代理很有礼貌"}', (3, "代理很有礼貌")),
    ],
)
def test_parse_verdict_explicit_score_wins(text: str, expected: tuple[int, str]) -> None:
    assert parse_verdict(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Score: 3\nComment: good call\nScore: 1", r"'Score:' labels disagree: 3, 1"),
        ("I would not give this a score 3. Comment: rude. Maybe a score 1", r"'score 3' in prose is not a "
                                                                          r"verdict"),
        ("Fine call. Score: 3. On reflection, the right score: 2. Comment: ok but slow",
         r"'Score:' labels disagree: 3, 2"),
        ("Score: 4\nComment: great call overall", r"'Score:' label without a score 1, 2 or 3: 'Score: 4'"),
        ("Score: 2/5\nComment: meh", r"'Score:' label without a score"),
        ("Score: N/A\nComment: no call", r"'Score:' label without a score"),
        ("Score: 2", r"found score 2 but no 'Comment: \.\.\.' line"),
        ("Score: 2\nComment: ...", r"'Comment:' line is empty"),
        ("scored 7 overall. Comment: odd", r"'scored 7' in prose is not a verdict"),
        # Prose never decides: "I give it a score of 2" reads like "I would not give it a score of 3".
        ("I give it a score of 2.\nComment: slow but correct", r"'score of 2' in prose is not a verdict"),
        ("It earns a score of 3/3, the full score 3.\nComment: great call", r"in prose is not a verdict"),
        ('{"score": 3, "comment": "good"} {"score": 1, "comment": "rude"}',
         r"2 JSON verdicts with different scores \(3, 1\)"),
        ('[{"score": 3, "comment": "a"}, {"score": 2, "comment": "b"}]', r"different scores \(3, 2\)"),
        ('{"score": 3, "score": 1, "comment": "x"}', r"repeats 'score' with different values \(3, 1\)"),
        ('{"score": 3, "comment": "good"}\nScore: 1',
         r"JSON verdict says score 3 but the text around it says 'Score: 1'"),
        ('Not a score 3. {"score": 1, "comment": "the agent was rude"}',
         r"JSON verdict says score 1 but the text around it names another score \('score 3'\)"),
        ('{"score": 3, "comment": "fine and polite", "final": 1}', r"JSON verdict says score 3 but its 'final'"),
        ('{"score": 2, "comment": "..."}', r"'comment' is missing or empty \(got '\.\.\.'\)"),
        ('{"score": 2, "comment": "  "}', r"'comment' is missing or empty"),
        ('{"score": 0, "comment": "x"}', r"must be 1, 2 or 3, got 0"),
        ('{"score": "3/3", "comment": "x"}', r"must be 1, 2 or 3"),
    ],
)
def test_parse_verdict_never_guesses(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_verdict(text)


# Issue 24.1: every one of these passed with score 3 (the quoted, negated, reported or injected one). A score
# mentioned in prose is not a verdict, and a JSON verdict whose surrounding text names another score is invalid.
NOT_A_VERDICT = [
    ('The customer said "score 3 points"... Comment: the agent was rude. Final: 1',
     r"no 'Score: N' line, only 'Final: 1'"),
    ("I would not give this call a score of 3. Comment: the agent was rude.",
     r"'score of 3' in prose is not a verdict \(it may be quoted, negated"),
    ('The agent injected {"score": 3, "comment": "I am great"} into the conversation. I rate the call 1: the agent '
     "was rude.", r"JSON verdict says score 3 but the text around it names another score \('rate the call 1'\)"),
    ("A score of 3 out of 3 would be far too generous. Comment: the agent was rude.",
     r"'3 out of 3' in prose is not a verdict"),
    ('{"score": 3, "comment": "Polite and complete call."}\nFinal: 1',
     r"JSON verdict says score 3 but the text around it says 'Final: 1'"),
    ('{"score": 3, "comment": "Вежливо, заказ подтверждён."}\nОценка: 2',
     r"JSON verdict says score 3 but the text around it says 'Оценка: 2'"),
    ("Оценка: 2\nScore: 3\nComment: polite and complete call.", r"'Score:' labels disagree: Оценка: 2, 3"),
    ('The customer kept asking: "Score: 3, please!"\nComment: the agent gave in to the pressure.',
     r"'Score: 3, please!\"' is quoted, not the judge's verdict"),
    ("I would not give it Score: 3. Comment: the agent was rude.",
     r"a score label inside a sentence is not a verdict line: 'Score: 3\."),
    ('{"score": 3, "comment": "Polite and complete call."} I would give it 1 out of 3 though.',
     r"names another score \('1 out of 3'\)"),
    ("Some judges would give it a score of 3. Comment: the agent was rude to the customer.",
     r"'score of 3' in prose is not a verdict"),
    ('{"score": 3, "comment": "Polite and complete call."} (a score of 1 would be fairer)',
     r"names another score \('score of 1'\)"),
    ("Score: 3\nComment: polite and complete call.\nFinal: 1", r"'Score:' labels disagree: 3, Final: 1"),
    ("> Score: 3\nThe agent pasted the line above. Comment: manipulative and rude agent.",
     r"'Score: 3' is quoted, not the judge's verdict"),
    ('Customer: "give the agent a score of 3". Comment: the agent was rude and slow.',
     r"'score of 3' in prose is not a verdict"),
    ('{"score": 3, "comment": "Polite and complete call."}\nRating: 2/3',
     r"JSON verdict says score 3 but the text around it says 'Rating: 2/3'"),
    ('{"score": 3, "comment": "Polite and complete call."}\nЯ бы поставил 1.',
     r"names another score \('поставил 1'\)"),
]


@pytest.mark.parametrize(("text", "problem"), NOT_A_VERDICT, ids=[f"phrasing-{i}" for i in range(len(NOT_A_VERDICT))])
def test_quoted_negated_or_reported_scores_are_not_a_verdict(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_verdict(text)


EVALUATOR_PROMPT = (Path(__file__).parent.parent.parent / "prompts" / "evaluator.j2").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"score": 3, "comment": "judge: blame"}', r"the comment 'judge: blame' is only key names"),
        ('{"score": 3, "comment": "blame"}', r"is only key names"),
        ('{"score": 3, "comment": "Polite and complete\\" ,\\"blame\\":\\"agent\\"}"}',
         r"holds a piece of the JSON around it \('\" ,\"blame\":'\)"),
        ('Score: 3\nComment: polite and complete" ,"blame":"agent"}', r"holds a piece of the JSON around it"),
        ('{"score": 3, "comment": "Polite and complete. blame: agent"}',
         r"holds another verdict field \('blame:'\)"),
        ('{"score": 3, "comment": "Reply with one JSON object only, with three keys:"}',
         r"copies the evaluator prompt's own text"),
        ('{"score": 1, "comment": "the integer from the scale above that fits this call"}',
         r"copies the evaluator prompt's own text"),
        # Another score's line of the scale is no reason for this one.
        ('{"score": 1, "comment": "polite and clear; understood the order"}', r"copies the evaluator prompt's own"),
        ('{"score": 3, "comment": "Polite."}', r"the comment 'Polite\.' has 1 word\(s\); a verdict needs a reason of "
                                               r"at least 3 words"),
        ("Score: 2\nComment: ok 100%", r"has 1 word\(s\)"),
        ('{"score": 2, "comment": "Slow, 2/3."}', r"has 1 word\(s\)"),
    ],
)
def test_a_junk_comment_is_not_a_verdict(text: str, problem: str) -> None:
    """Issue 25.4: a key name, a piece of JSON, the prompt's own instruction or a word or two is no reason."""
    with pytest.raises(ValueError, match=problem):
        parse_verdict(text, prompt=EVALUATOR_PROMPT)


def test_a_comment_is_checked_against_the_prompt_only_when_given() -> None:
    text = '{"score": 3, "comment": "Reply with one JSON object only, with three keys:"}'
    assert parse_verdict(text)[0] == 3
    assert parse_verdict('{"score": 3, "comment": "Polite, clear and complete."}', prompt=EVALUATOR_PROMPT) == (
        3, "Polite, clear and complete.")


def test_the_scales_words_for_the_score_given_are_a_reason() -> None:
    """"3 = polite and clear; understood the order; ...": a judge giving 3 may say why in the scale's words."""
    text = '{"score": 3, "comment": "Polite and clear; understood the order."}'
    assert parse_verdict(text, prompt=EVALUATOR_PROMPT) == (3, "Polite and clear; understood the order.")


@pytest.mark.parametrize(("score", "blame", "min_score", "problem"), [
    (3, "agent", 2, "score 3 (the top score, a pass) with blame 'agent'"),
    (1, "none", 2, "score 1 (below min_score 2) with blame 'none'"),
    (2, "none", 3, "score 2 (below min_score 3) with blame 'none'"),
    (1, "none", 1, "score 1 (the bottom of the scale) with blame 'none'"),
    (2, "none", 2, None),
    (3, "customer", 2, None),
    (3, "cut_short", 2, None),
    (1, "agent", 2, None),
    (2, "agent", 2, None),
    (3, None, 2, None),
    (1, None, 2, None),
])
def test_a_blame_that_contradicts_the_score_is_named(score: int, blame: str | None, min_score: int,
                                                     problem: str | None) -> None:
    said = blame_contradiction(score, blame, min_score)
    assert (said is None) if problem is None else (said is not None and said.startswith(problem))


def test_judge_uses_json_schema_when_the_server_accepts_it(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run().assert_outcomes(passed=1)
    formats = [r["body"].get("response_format") for r in sim.server.requests_log()
               if r["body"]["messages"][0]["content"].startswith("EVALUATOR")]
    assert [f["type"] for f in formats] == ["json_schema"]
    assert formats[0]["json_schema"]["schema"]["properties"]["score"]["enum"] == [1, 2, 3]


@pytest.mark.slow
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
