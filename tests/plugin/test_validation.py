"""Broken scenario files and scenarios: one readable line naming file, scenario and field; the rest runs."""

from __future__ import annotations

import pytest

from conftest import SimProject, scenario


def _run_with_good_file(sim: SimProject) -> None:
    sim.write_scenarios("good.json", [scenario("fine")])


def test_unknown_field_names_file_scenario_and_field(sim: SimProject) -> None:
    _run_with_good_file(sim)
    sim.write_scenarios("bad.json", [scenario("ok_one"), scenario("typo", max_turn=5)])
    result = sim.run()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*scenarios/bad.json: scenario #1 'typo': field 'max_turn': unknown field*"])
    assert "Traceback" not in result.stdout.str()


def test_wrong_type_is_reported_with_the_value(sim: SimProject) -> None:
    sim.write_scenarios("bad.yaml", [scenario("t", max_turns="many")])
    result = sim.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*scenario #0 't': field 'max_turns': *integer*'many'*"])


@pytest.mark.slow
def test_duplicate_and_empty_names(sim: SimProject) -> None:
    sim.write_scenarios("dup.json", [scenario("same"), scenario("same"), scenario("  ")])
    result = sim.run("-v")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines([
        "*scenario #1 'same': field 'name': duplicate name 'same'*",
        "*scenario #2: field 'name': *blank*",
    ])


@pytest.mark.slow
def test_unparsable_file_is_an_error_item_and_other_files_still_run(sim: SimProject) -> None:
    _run_with_good_file(sim)
    (sim.path / "scenarios" / "broken.yaml").write_text("- name: x\n  variables: {a: [1, 2}\n")
    (sim.path / "scenarios" / "broken.json").write_text('[{"name": "x",}]')
    result = sim.run("-v")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*scenarios/broken.json:1:*invalid JSON*", "*scenarios/broken.yaml:2:*invalid YAML*"])
    assert result.ret == 1


def test_unknown_top_level_field_of_a_suite(sim: SimProject) -> None:
    sim.write_scenarios("s.json", {"scenarios": [scenario("a")], "defualts": {}})
    result = sim.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown top-level field(s) 'defualts'*"])


def test_bad_tag_name(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a", tags=["not a marker"])])
    result = sim.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*field 'tags': *'not a marker' is not a valid marker name*"])


def test_missing_template_variable_names_template_variable_and_scenario(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [{"name": "no_locations", "variables": {"PERSONALITY": "calm"}}, scenario("ok")])
    result = sim.run()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*scenarios/s.json::no_locations: template 'agent.j2' uses undefined variable 'LOCATIONS'*"
    ])


def test_bad_record_mode_is_a_usage_error(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("--llmsim-record=sometimes")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*invalid choice: 'sometimes'*"])


def test_http_backend_is_shown_and_a_bad_one_is_a_usage_error(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.write_ini(llmsim_http_backend="httpx")
    sim.run().stdout.fnmatch_lines(["llmsim: * http=httpx, endpoint=*"])
    sim.write_ini(llmsim_http_backend="auto")
    sim.run().stdout.fnmatch_lines(["llmsim: * http=aiohttp, endpoint=*"])  # aiohttp is a dependency
    sim.write_ini(llmsim_http_backend="curl")
    result = sim.run()
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*llmsim_http_backend must be one of auto, aiohttp, httpx, got 'curl'*"])


def test_http_backend_resolution() -> None:
    from pytest_llmsim.errors import ConfigError
    from pytest_llmsim.model.settings import resolve_http_backend

    assert resolve_http_backend("auto", "http://127.0.0.1:8000/v1") == "aiohttp"  # aiohttp is a dependency
    assert resolve_http_backend("httpx", "http://127.0.0.1:8000/v1") == "httpx"
    assert resolve_http_backend("auto", "http://user:secret@127.0.0.1:8000/v1") == "httpx"
    with pytest.raises(ConfigError, match="cannot send credentials embedded in the base URL"):
        resolve_http_backend("aiohttp", "http://user:secret@127.0.0.1:8000/v1")


# -- strict values: nothing is silently coerced or ignored ------------------------------------------------------
COERCED = [  # (fields of the bad scenario, the one-line message after "field ")
    ({"min_score": True}, "'min_score': Input should be a valid integer (got True: true/false is not a number)"),
    ({"min_score": "2"}, "'min_score': Input should be a valid integer (got '2': write numbers without quotes)"),
    ({"min_score": 2.0}, "'min_score': Input should be a valid integer (got 2.0)"),
    ({"max_turns": True}, "'max_turns': Input should be a valid integer (got True*"),
    ({"max_turns": "5"}, "'max_turns': Input should be a valid integer (got '5'*"),
    ({"timeout": True}, "'timeout': Input should be a valid number (got True*"),
    ({"timeout": "30"}, "'timeout': Input should be a valid number (got '30'*"),
    ({"skip": 1}, "'skip': must be true, false or a non-blank reason string (got 1)"),
    ({"xfail": ""}, "'xfail': must be true, false or a non-blank reason string (got '')"),
    ({"tags": ["skip"]}, "'tags': tag 'skip' is reserved*"),
    ({"tags": ["calm\n"]}, "'tags': tag 'calm\\n' is not a valid marker name*"),
    ({"agent": {"temperature": True}}, "'agent.temperature': Input should be a valid number (got True*"),
    ({"client": {"temperature": "0.5"}}, "'client.temperature': Input should be a valid number (got '0.5'*"),
    ({"evaluator": {"max_tokens": 100.0}}, "'evaluator.max_tokens': Input should be a valid integer (got 100.0)"),
    ({"agent": {"max_tokens": True}}, "'agent.max_tokens': Input should be a valid integer (got True*"),
    ({"agent": {"model": " "}}, "'agent.model': must not be blank*"),
    ({"variables": {"SEED": "abc"}}, "'variables': 'SEED' must be an integer from 0 to 2147483647 (got 'abc')"),
    ({"variables": {"SEED": "42"}}, "'variables': 'SEED' must be an integer * (got '42'); write it without quotes"),
    ({"variables": {"SEED": True}}, "'variables': 'SEED' must be an integer * (got True)"),
    ({"variables": {"language": "Russian"}}, "'variables': 'language' is set by llmsim for the templates*"),
]


@pytest.mark.slow
def test_values_are_never_silently_coerced(sim: SimProject) -> None:
    """Each bad value is one error line naming the scenario and the field; the good scenario still runs."""
    bad = [scenario(f"bad{i}", **fields) for i, (fields, _) in enumerate(COERCED)]
    sim.write_scenarios("s.json", [scenario("fine"), *bad])
    result = sim.run()
    result.assert_outcomes(passed=1, errors=len(COERCED))
    for i, (_, message) in enumerate(COERCED):
        result.stdout.fnmatch_lines([f"*scenarios/s.json: scenario #{i + 1} 'bad{i}': field {message}"])


@pytest.mark.slow
def test_defaults_are_validated_once_for_the_file(sim: SimProject) -> None:
    sim.write_scenarios("good.json", [scenario("fine")])
    sim.write_scenarios("list_vars.json", {"defaults": {"variables": [1, 2]}, "scenarios": [scenario("a")]})
    sim.write_scenarios("bool_turns.yaml", {"defaults": {"max_turns": True}, "scenarios": [scenario("b")]})
    result = sim.run()
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*list_vars.json: field 'defaults.variables': Input should be a valid dictionary"
                                 " (got [[]1, 2])"])
    result.stdout.fnmatch_lines(["*bool_turns.yaml: field 'defaults.max_turns': Input should be a valid integer "
                                 "(got True: true/false is not a number)"])


def test_duplicate_keys_are_errors_naming_the_key(sim: SimProject) -> None:
    sim.write_scenarios("good.json", [scenario("fine")])
    (sim.path / "scenarios" / "dup.yaml").write_text(
        "- name: a\n  max_turns: 3\n  variables: {LOCATIONS: x, PERSONALITY: y}\n  max_turns: 30\n")
    (sim.path / "scenarios" / "dup.json").write_text(
        '[{"name": "b", "variables": {"LOCATIONS": "x", "PERSONALITY": "y", "LOCATIONS": "z"}}]')
    result = sim.run()
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*scenarios/dup.yaml:4:3: duplicate key 'max_turns' (first on line 2)*"])
    result.stdout.fnmatch_lines(["*scenarios/dup.json: duplicate key 'LOCATIONS' in an object*"])


@pytest.mark.slow
@pytest.mark.parametrize(("filename", "text", "why"), [
    ("empty.yaml", "# nothing yet\n", "it is empty"),
    ("empty_list.json", "[]", "an empty list"),
    ("empty_suite.yaml", "scenarios: []\n", "'scenarios' is an empty list"),
    ("empty_object.json", "{}", "an empty object"),
])
def test_a_file_without_scenarios_says_so(sim: SimProject, filename: str, text: str, why: str) -> None:
    (sim.path / "scenarios" / filename).write_text(text)
    result = sim.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*scenarios/{filename}: the file has no scenarios ({why})*"])


@pytest.mark.slow
def test_generated_names_never_collide_with_real_names(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("dup"), scenario("dup"), scenario("dup#1"), scenario("scenario#3"),
                                   {"variables": {}}])
    result = sim.run("-v")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(["*s.json::dup PASSED*", "*s.json::dup#1-2 ERROR*", "*s.json::dup#1 PASSED*",
                                 "*s.json::scenario#3 PASSED*", "*s.json::scenario#4 ERROR*"])
    result.stdout.fnmatch_lines(["*scenario #1 'dup': field 'name': duplicate name 'dup'*"])
    result.stdout.fnmatch_lines(["*scenario #4: field 'name': Field required*"])


@pytest.mark.slow
def test_names_with_control_characters_are_rejected_and_markup_stays_plain_text(sim: SimProject) -> None:
    markup = "<img src=x onerror=alert(1)>"
    sim.write_scenarios("s.json", [scenario("two\nlines"), scenario("red\x1b[31mtext"), scenario(markup)])
    result = sim.run("-v")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines([f"scenarios/s.json::{markup} PASSED*"])
    result.stdout.fnmatch_lines([
        "*scenario #0 'two\\nlines': field 'name': must not contain newlines or other control/non-printable "
        "characters (found '\\n' at position 3)*",
    ])
    result.stdout.fnmatch_lines(["*scenario #1 'red\\x1b[[]31mtext': field 'name': must not contain *'\\x1b'*"])
    assert "\x1b[31m" not in result.stdout.str()
    prompts = [r["body"]["messages"][0]["content"] for r in sim.server.requests_log()]
    assert any(markup in p for p in prompts), "the name reaches the templates as plain text"


@pytest.mark.slow
def test_a_scenario_no_metric_can_decide_errors_before_any_call(sim: SimProject) -> None:
    """rouge without a threshold only informs: a scenario scored by it alone could never fail (issue 24)."""
    pytest.importorskip("rouge_score")  # the test extra
    sim.write_scenarios("s.json", [
        scenario("informs", evaluate=[{"rouge": {"reference": "x"}}]),
        scenario("informs_twice", evaluate=[{"rouge": {"reference": "x"}}, {"rouge": {"reference": "y"}}]),
        scenario("decides", evaluate=[{"rouge": {"reference": "x"}}, "judge"]),
        scenario("threshold", evaluate=[{"rouge": {"reference": "Your order is confirmed", "threshold": 0.1}}]),
    ])
    result = sim.run("--llmsim-concurrency=1")
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines([
        "*s.json::informs: no metric decides scenario 'informs' (metrics: rouge): rouge without a 'threshold' only "
        "informs, so the scenario could never fail*Add a 'threshold' to the metric*or a deciding metric (judge, "
        "criteria, rules) to its 'evaluate'*"])
    assert "scenario_error" in result.stdout.str()
    prompts = [m["content"] for r in sim.server.requests_log() for m in r["body"]["messages"] if m["role"] == "system"]
    assert not any("informs" in p for p in prompts), "no call for a scenario that could never fail"
