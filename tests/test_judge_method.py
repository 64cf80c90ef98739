"""The judging method (issue 26, parts 2 and 3): how the judge turns a transcript into a score, and the honesty
of its measurement: the held-out half of the calibration set (``calibration/heldout``) is never read by the code
or the prompts that build the judge's requests, so its figures are a measurement, not a fit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HELDOUT = REPO / "calibration" / "heldout"
# What builds a judge's (or any role's) request: the package's code and templates, and the project's prompts.
PROMPT_SOURCES = [p for p in [*(REPO / "pytest_llmsim").rglob("*"), *(REPO / "prompts").rglob("*")]
                  if p.is_file() and p.suffix in (".py", ".j2", ".json", ".yaml", ".yml", ".txt", ".md")]


def _heldout_passages() -> list[tuple[str, str]]:
    """(file, passage) for every passage of the held-out conversations a prompt could copy: each turn's text and
    the note, cut into sentences of at least 25 characters, whitespace and case normalised."""
    passages = []
    for path in sorted(HELDOUT.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        texts = [turn["text"] for turn in data["transcript"]] + [data.get("note") or ""]
        for text in texts:
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                normal = " ".join(sentence.lower().split())
                if len(normal) >= 25:
                    passages.append((path.name, normal))
    return passages


def test_the_heldout_half_exists_and_is_what_the_guard_reads() -> None:
    passages = _heldout_passages()
    assert len(list(HELDOUT.glob("*.json"))) == 48 and len(passages) > 200  # a guard over nothing guards nothing
    assert PROMPT_SOURCES and any(p.name == "evaluator.j2" for p in PROMPT_SOURCES)


def _sources() -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text(encoding="utf-8", errors="replace") for p in PROMPT_SOURCES}


def _naming(sources: dict[str, str]) -> list[str]:
    return [name for name, text in sources.items() if re.search(r"held[-_ ]?out", text, re.IGNORECASE)]


def _copies(sources: dict[str, str]) -> list[tuple[str, str, str]]:
    normal = {name: " ".join(text.lower().split()) for name, text in sources.items()}
    return [(name, file, passage) for file, passage in _heldout_passages()
            for name, text in normal.items() if passage in text]


def test_no_code_or_prompt_names_the_heldout_half() -> None:
    """Nothing under pytest_llmsim/ or prompts/ refers to the held-out folder: no code path can load it for a
    prompt, a few-shot example or a tuned threshold (the README and calibration/README.md describe it)."""
    assert _naming(_sources()) == []


def test_no_prompt_source_contains_text_of_a_heldout_conversation() -> None:
    """The templates, the prompt builders and any worked examples hold no sentence of a held-out conversation
    (a turn or its label's note)."""
    assert _copies(_sources()) == []


def test_the_guard_finds_a_planted_copy() -> None:
    """The checks above can fail: a held-out sentence pasted into a template, or a path to the folder in code,
    is found."""
    file, passage = _heldout_passages()[0]
    planted = {"t.j2": f"Example conversation:\n  {passage.upper()}\nScore: 1",
               "m.py": "EXAMPLES = Path('calibration') / 'heldout'"}
    assert (planted["t.j2"].startswith("Example") and ("t.j2", file, passage) in _copies(planted))
    assert _naming(planted) == ["m.py"]


# -- the judging methods (llmsim_judge_method) --------------------------------------------------------------------
from conftest import SimProject, default_script, scenario  # noqa: E402
from pytest_llmsim.judge import (  # noqa: E402
    ANSWER_SCHEMA,
    CONSTRAINED_VERDICT_SCHEMA,
    blame_contradiction,
    criteria_rule,
    parse_verdict,
    resolve_method,
)
from pytest_llmsim.local_model import LOCAL_MODEL_NAME  # noqa: E402

CRITERIA = ["Greet the customer.", "Confirm the delivery city.", "Say goodbye."]


def _answers(no_to: list[str], junk_to: list[str] | None = None) -> dict[str, object]:
    """The scripted judge answers no to the criteria in ``no_to``, junk to ``junk_to``, yes to the others."""
    rules: list[dict[str, object]] = [
        *({"match": {"last_user_contains": f"do this: {c}"}, "reply": "maybe"} for c in junk_to or []),
        *({"match": {"last_user_contains": f"do this: {c}"}, "reply": '{"answer": "no"}'} for c in no_to),
        {"match": {"last_user_contains": "Did the AGENT do this"}, "reply": '{"answer": "yes"}'},
    ]
    return {"rules": [*rules, *default_script()["rules"]]}


def _records(sim: SimProject, name: str = "out.json") -> dict[str, dict[str, object]]:
    return {r["nodeid"].split("::")[-1]: r for r in json.loads((sim.path / name).read_text())["results"]}


def _judge_bodies(sim: SimProject) -> list[dict[str, object]]:
    return [e["body"] for e in sim.server.requests_log()
            if "Did the AGENT do this" in json.dumps(e["body"]["messages"])
            or "EVALUATOR" in json.dumps(e["body"]["messages"])]


@pytest.mark.parametrize(("no_to", "score", "status"), [([], 3, "passed"), ([CRITERIA[1]], 2, "passed"),
                                                        ([CRITERIA[0], CRITERIA[2]], 1, "failed")])
def test_the_criteria_method_asks_each_criterion_and_scores_by_the_rule(sim: SimProject, no_to: list[str],
                                                                        score: int, status: str) -> None:
    sim.server.set_script(_answers(no_to))
    sim.write_scenarios("s.json", [scenario("fine", criteria=CRITERIA)])
    result = sim.run("--llmsim-judge-method=criteria", "--llmsim-results=out.json")
    assert result.ret == (0 if status == "passed" else 1)
    record = _records(sim)["fine"]
    assert (record["score"], record["status"]) == (score, status)
    missed = [f"{CRITERIA.index(c) + 1}. {c}" for c in CRITERIA if c in no_to]
    assert record["comment"] == (f"{len(missed)} of 3 criteria answered no: " + " ".join(missed) if missed
                                 else "All 3 criteria answered yes.")
    bodies = _judge_bodies(sim)
    assert len(bodies) == 3  # one question per criterion, no holistic verdict
    assert all("json_schema" in json.dumps(b["response_format"]) for b in bodies)
    assert all(b["response_format"]["json_schema"]["schema"] == ANSWER_SCHEMA for b in bodies)
    # The transcript comes first and is the same for every question; the criterion is the last message.
    assert len({b["messages"][0]["content"] for b in bodies}) == 1
    assert [b["messages"][-1]["content"].split("\n")[0] for b in bodies] == \
        [f"Did the AGENT do this: {c}" for c in CRITERIA]


def test_the_criteria_method_never_guesses_an_answer(sim: SimProject) -> None:
    sim.server.set_script(_answers([], junk_to=[CRITERIA[1]]))
    sim.write_scenarios("s.json", [scenario("fine", criteria=CRITERIA)])
    result = sim.run("--llmsim-judge-method=criteria", "--llmsim-results=out.json")
    record = _records(sim)["fine"]
    assert (record["status"], record["error_kind"]) == ("error", "invalid_verdict")
    assert "criterion 2 ('Confirm the delivery city.') is not yes or no after 3 attempt(s)" in record["error_message"]
    assert result.ret == 1


def test_the_criteria_method_without_criteria_gives_the_holistic_verdict(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("fine")])
    sim.run("--llmsim-judge-method=criteria", "--llmsim-results=out.json").assert_outcomes(passed=1)
    assert _records(sim)["fine"]["comment"] == "Polite and complete."
    assert [b["response_format"]["json_schema"]["schema"]["required"] for b in _judge_bodies(sim)] == \
        [["score", "comment", "blame"]]


def test_the_constrained_method_sends_the_grammar_schema(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("fine")])
    sim.run("--llmsim-judge-method=constrained").assert_outcomes(passed=1)
    (body,) = _judge_bodies(sim)
    assert body["response_format"]["json_schema"]["schema"] == CONSTRAINED_VERDICT_SCHEMA


def test_auto_is_constrained_on_the_local_model_only() -> None:
    assert resolve_method("auto", LOCAL_MODEL_NAME) == "constrained"
    assert resolve_method("auto", "gpt-4o-mini") == "verdict"
    assert resolve_method("criteria", LOCAL_MODEL_NAME) == "criteria"


def test_criteria_rule() -> None:
    assert [criteria_rule(a) for a in ([True] * 4, [True, False, True], [False, True, False], [False])] == [3, 2, 1, 2]


def test_the_constrained_grammar_admits_no_contradicting_blame() -> None:
    """Every (score, blame) the grammar allows is consistent for every min_score (``blame_contradiction``)."""
    pairs = [(score, blame) for variant in CONSTRAINED_VERDICT_SCHEMA["anyOf"]
             for score in variant["properties"]["score"]["enum"] for blame in variant["properties"]["blame"]["enum"]]
    assert len(pairs) == 9
    assert [(s, b, m) for s, b in pairs for m in (1, 2, 3) if blame_contradiction(s, b, m)] == []


@pytest.mark.parametrize(("comment", "allowed"), [
    ("The agent confirmed the order but gave no delivery time.", True),
    ("Агент подтвердил заказ и время доставки.", True),
    ("ok", False), ("blame", False), ('{"score": 3}', False), ('polite", "blame": "agent', False),
    ("x" * 121, False), ("A comment with a line\nbreak in it.", False), ("A backslash \\ in the comment", False),
    ("3 = every criterion is met", False),
])
def test_the_constrained_comment_pattern(comment: str, allowed: bool) -> None:
    """What the grammar lets the model write as a comment: 20-120 characters from a letter on, no JSON."""
    pattern = CONSTRAINED_VERDICT_SCHEMA["anyOf"][0]["properties"]["comment"]["pattern"]
    assert (re.fullmatch(pattern, comment) is not None) == allowed
    if allowed:  # and what it lets through is a reason to the strict parser
        assert parse_verdict(json.dumps({"score": 2, "comment": comment, "blame": "agent"}))[1] == comment


def test_the_constrained_schema_converts_to_a_grammar_llama_cpp_parses() -> None:
    """llama-cpp-python turns the schema into a GBNF grammar; a line break or escape in the comment's character
    class came out raw, split a rule over two lines, and llama.cpp's parser failed on it and took the server
    down. Every rule of the converted grammar is one line."""
    gbnf = pytest.importorskip("llama_cpp.llama_grammar").json_schema_to_gbnf(json.dumps(CONSTRAINED_VERDICT_SCHEMA))
    rules = [line for line in gbnf.splitlines() if line.strip()]
    assert rules and all(" ::= " in line for line in rules), gbnf
