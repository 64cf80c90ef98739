"""Scenarios without templates: the package's generic prompts, the persona/goal/criteria/language fields."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProject, verdict
from pytest_llmsim.model.prompts import PACKAGE_TEMPLATES_DIR, PromptRenderer, template_context
from pytest_llmsim.model.scenario import Scenario
from pytest_llmsim.model.settings import EndpointSettings, RoleSettings, RunSettings

REPO = Path(__file__).resolve().parent.parent.parent

# Phrases that only the package's generic templates contain.
GENERIC_JUDGE = "strict reviewer of a conversation"
GENERIC_CUSTOMER = "role-playing a CUSTOMER"
GENERIC_AGENT = "You are a helpful customer service assistant"

AGENT_REPLIES = ["Hello, Bookshop support, how can I help?",
                 "I have refunded order 42 to your card. Anything else?",
                 "Goodbye! [END_CALL]"]
CLIENT_REPLIES = ["Hi, I want a refund for order 42.", "No, thanks, bye. [END_CALL]"]


def generic_script(low_marker: str = "LOW-SCORE") -> dict[str, Any]:
    """The judge gives 1 when its prompt contains ``low_marker`` (put into a criterion), else 3."""
    return {"rules": [
        {"match": {"system_contains": low_marker}, "reply": verdict(1, "Criterion 2 was not met.")},
        {"match": {"system_contains": GENERIC_JUDGE}, "reply": verdict(3, "Every criterion was met.")},
        {"match": {"system_contains": "CUSTOM JUDGE"}, "reply": verdict(3, "The custom judge agrees.")},
        {"match": {"system_contains": "CUSTOM CUSTOMER"}, "replies": CLIENT_REPLIES},
        {"match": {"system_contains": GENERIC_CUSTOMER}, "replies": CLIENT_REPLIES},
        {"match": {"system_contains": "You are"}, "replies": AGENT_REPLIES},
    ]}


def render_only_settings() -> RunSettings:
    """Settings for rendering templates directly: no prompts folder, so the package's templates are used."""
    return RunSettings(endpoint=EndpointSettings(base_url="http://127.0.0.1:9/v1"),
                       agent=RoleSettings("m", "agent.j2", 0.0, 10), client=RoleSettings("m", "client.j2", 0.0, 10),
                       evaluator=RoleSettings("m", "evaluator.j2", 0.0, 10),
                       prompts_dir=Path("/nonexistent/prompts"), cache_dir=Path("/nonexistent/cache"))


def no_prompts_folder(sim: SimProject) -> SimProject:
    shutil.rmtree(sim.path / "prompts")
    sim.server.set_script(generic_script())
    return sim


def system_prompts(sim: SimProject, phrase: str) -> list[str]:
    """The system prompts of every logged request whose system prompt contains ``phrase``."""
    found = []
    for entry in sim.server.requests_log():
        system = "\n".join(m["content"] for m in entry["body"]["messages"] if m["role"] == "system")
        if phrase in system:
            found.append(system)
    return found


def test_a_project_without_prompts_runs_persona_goal_criteria_scenarios(sim: SimProject) -> None:
    no_prompts_folder(sim)
    sim.write_scenarios("refunds.yaml", {"scenarios": [
        {"name": "good_refund", "persona": "Maria, a retired teacher who dislikes jargon",
         "goal": "get a refund for order 42, a damaged book",
         "criteria": ["confirms the order number", "refunds the order without asking for a photo"]},
        {"name": "bad_refund", "persona": "Ivan, a student", "goal": "a refund for order 7",
         "criteria": ["greets the customer", "LOW-SCORE never promises a date"]},
    ]})
    result = sim.run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*refunds.yaml::good_refund PASSED*", "*refunds.yaml::bad_refund FAILED*"])
    result.stdout.fnmatch_lines(["*Criterion 2 was not met.*"])

    customers = system_prompts(sim, GENERIC_CUSTOMER)
    maria = [p for p in customers if "Maria, a retired teacher who dislikes jargon" in p]
    assert maria and all("get a refund for order 42, a damaged book" in p for p in maria)
    assert all("[END_CALL]" in p and "never act as the agent" in p for p in customers)
    assert system_prompts(sim, GENERIC_AGENT), "the package's agent template plays the agent"

    judges = system_prompts(sim, GENERIC_JUDGE)
    good = next(p for p in judges if "Maria" in p)
    assert "1. confirms the order number\n2. refunds the order without asking for a photo" in good
    assert "Agent: Hello, Bookshop support" in good, "the judge sees the transcript"
    assert "naming by number every criterion that was not met" in good
    bad = next(p for p in judges if "Ivan" in p)
    assert "1. greets the customer\n2. LOW-SCORE never promises a date" in bad


def test_the_generic_judge_prompt_numbers_criteria_and_copies_no_example_verdict() -> None:
    settings = render_only_settings()
    renderer = PromptRenderer(settings.prompts_dir)
    with_criteria = Scenario(name="s", criteria=("says hello", "quotes the price", "says goodbye"))
    prompt = renderer.render("evaluator.j2", template_context(with_criteria, settings, transcript_text="T",
                                                              end_reason="the customer ended the call"),
                             scenario_label="s")
    assert "1. says hello\n2. quotes the price\n3. says goodbye\n" in prompt
    assert "[tool name(arguments) -> result], is a tool call the agent made" in prompt
    assert '"score": ' not in prompt and "{" not in prompt, "no example verdict for a weak model to copy"
    plain = renderer.render("evaluator.j2", template_context(Scenario(name="s"), settings, transcript_text="T",
                                                             end_reason="x"), scenario_label="s")
    assert "helpful" in plain and "criteria" not in plain and "1. " not in plain


def test_the_generic_agent_takes_its_role_and_instructions_from_variables() -> None:
    settings = render_only_settings()
    renderer = PromptRenderer(settings.prompts_dir)
    tested = Scenario(name="s", language="French", variables={
        "agent_role": "the support assistant of an online bookshop",
        "instructions": "Refunds need an order number. {{ 7*7 }} stays literal."})
    prompt = renderer.render("agent.j2", template_context(tested, settings), scenario_label="s")
    assert prompt.startswith("You are the support assistant of an online bookshop.")
    assert "Refunds need an order number. {{ 7*7 }} stays literal." in prompt
    assert "in French" in prompt and prompt.endswith("[END_CALL]")
    default = renderer.render("agent.j2", template_context(Scenario(name="s"), settings), scenario_label="s")
    assert default.startswith(GENERIC_AGENT) and "Refunds" not in default


def test_a_scenario_with_neither_persona_nor_variables_still_runs(sim: SimProject) -> None:
    no_prompts_folder(sim)
    sim.write_scenarios("bare.json", [{"name": "bare"}])
    result = sim.run("-v")
    result.assert_outcomes(passed=1)
    (customer,) = set(system_prompts(sim, GENERIC_CUSTOMER))
    assert "ordinary question or request" in customer and "Who you are" not in customer
    (judge,) = set(system_prompts(sim, GENERIC_JUDGE))
    assert "for how helpful it was" in judge and "in English" in judge


def test_a_project_template_wins_over_the_package_one(sim: SimProject) -> None:
    sim.server.set_script(generic_script())
    prompts = sim.path / "prompts"
    for name in ("agent.j2", "evaluator.j2"):
        (prompts / name).unlink()  # these two come from the package
    (prompts / "client.j2").write_text("CUSTOM CUSTOMER {{ persona }} wants {{ goal }}. End: {{ end_marker }}")
    sim.write_scenarios("s.yaml", [{"name": "mixed", "persona": "Olga", "goal": "a new password",
                                    "criteria": ["resets the password"]}])
    result = sim.run("-v")
    result.assert_outcomes(passed=1)
    assert system_prompts(sim, "CUSTOM CUSTOMER Olga wants a new password.")
    assert not system_prompts(sim, GENERIC_CUSTOMER)
    (judge,) = set(system_prompts(sim, GENERIC_JUDGE))
    assert "1. resets the password" in judge


@pytest.mark.slow
def test_a_missing_custom_template_names_both_folders(sim: SimProject) -> None:
    no_prompts_folder(sim)
    sim.write_scenarios("s.yaml", [{"name": "custom", "goal": "x", "evaluator": {"template": "strict.j2"}}])
    result = sim.run("-v")
    result.assert_outcomes(errors=1)
    output = result.stdout.str()
    assert "prompt template 'strict.j2' not found in the project's prompts directory" in output
    assert f"{sim.path / 'prompts'}, which does not exist" in output
    assert str(PACKAGE_TEMPLATES_DIR) in output


def test_the_scenario_language_wins_over_the_run_language(sim: SimProject) -> None:
    no_prompts_folder(sim)
    sim.write_scenarios("s.yaml", [{"name": "ru", "goal": "вернуть заказ", "language": "Russian"},
                                   {"name": "en", "goal": "return an order"}])
    result = sim.run("-v", "--llmsim-language=German")
    result.assert_outcomes(passed=2)
    customers = system_prompts(sim, GENERIC_CUSTOMER)
    assert all("Write in Russian." in p for p in customers if "вернуть заказ" in p)
    assert all("Write in German." in p for p in customers if "return an order" in p)
    judges = system_prompts(sim, GENERIC_JUDGE)
    assert all("in Russian saying why" in p for p in judges if "вернуть заказ" in p)
    assert any("in German saying why" in p for p in judges)


def test_criteria_a_custom_judge_ignores_are_an_error_not_silently_dropped(sim: SimProject) -> None:
    sim.server.set_script(generic_script())
    (sim.path / "prompts" / "evaluator.j2").write_text("CUSTOM JUDGE {{ transcript_text }}")
    (sim.path / "prompts" / "client.j2").write_text("CUSTOM CUSTOMER {{ persona }}. End: {{ end_marker }}")
    (sim.path / "prompts" / "agent.j2").write_text("You are the agent. End: {{ end_marker }}")
    sim.write_scenarios("s.yaml", [{"name": "with_criteria", "criteria": ["greets"], "persona": "a ZEBRA keeper"},
                                   {"name": "without"}])
    result = sim.run("-v")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*with_criteria*the scenario has 'criteria' but the evaluator template "
                                 "'evaluator.j2' never uses the variable 'criteria'*"])
    # Found before the conversation: the scenario that would drop its criteria made no call at all.
    assert sim.server.requests_log() and not [r for r in sim.server.requests_log() if "ZEBRA" in json.dumps(r["body"])]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"variables": {"persona": "x"}, "persona": "y"},
         "*'persona' is set by llmsim for the templates; the variable 'persona' would clash with the scenario "
         "field 'persona'*"),
        ({"variables": {"criteria": ["a"]}}, "*the variable 'criteria' would clash with the scenario field*"),
        ({"criteria": []}, "*field 'criteria': must list at least one criterion*"),
        ({"criteria": ["ok", "  "]}, "*field 'criteria': criterion #1 is blank*"),
        ({"criteria": "be nice"}, "*field 'criteria': must be a list of strings*"),
        ({"criteria": ["ok", 3]}, "*field 'criteria.1': Input should be a valid string*"),
        ({"persona": ""}, "*field 'persona': must not be blank*"),
        ({"goal": 42}, "*field 'goal': Input should be a valid string*"),
        ({"language": " "}, "*field 'language': must not be blank*"),
    ],
)
def test_bad_generic_fields_are_scenario_errors(sim: SimProject, fields: dict[str, Any], message: str) -> None:
    no_prompts_folder(sim)
    sim.write_scenarios("s.json", [{"name": "bad", **fields}, {"name": "fine", "goal": "help"}])
    result = sim.run("-v")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([message])


def test_the_shipped_shop_templates_still_render_the_shipped_scenarios(sim: SimProject) -> None:
    shutil.rmtree(sim.path / "prompts")
    shutil.rmtree(sim.path / "scenarios")
    shutil.copytree(REPO / "prompts", sim.path / "prompts")
    shutil.copytree(REPO / "scenarios", sim.path / "scenarios")
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "strict quality reviewer of phone sales calls"},
         "reply": verdict(3, "Polite and complete.")},
        {"match": {"system_contains": "You are a CUSTOMER phoning a meat shop"},
         "replies": ["Two chicken fillets to Moscow.", "Yes, bye [END_CALL]"]},
        {"match": {"system_contains": "Meat & Poultry Market"},
         "replies": ["Hello!", "Two fillets to Moscow, 1-2 days. Confirmed.", "Goodbye [END_CALL]"]},
    ]})
    result = sim.run("-v")
    outcomes = result.parseoutcomes()
    assert "errors" not in outcomes and "error" not in outcomes, result.stdout.str()
    assert "failed" not in outcomes, result.stdout.str()
    assert outcomes["passed"] >= 6 and outcomes["skipped"] == 1
    assert not system_prompts(sim, GENERIC_CUSTOMER) and not system_prompts(sim, GENERIC_JUDGE)
    judges = system_prompts(sim, "strict quality reviewer of phone sales calls")
    sample = json.loads((REPO / "scenarios" / "sample_scenarios.json").read_text(encoding="utf-8"))
    assert any(sample[0]["variables"]["ORDER_GOAL"] in judge for judge in judges)
