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


def test_duplicate_and_empty_names(sim: SimProject) -> None:
    sim.write_scenarios("dup.json", [scenario("same"), scenario("same"), scenario("  ")])
    result = sim.run("-v")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines([
        "*scenario #1 'same': field 'name': duplicate name 'same'*",
        "*scenario #2: field 'name': *blank*",
    ])


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
    from pytest_llmsim.settings import resolve_http_backend

    assert resolve_http_backend("auto", "http://127.0.0.1:8000/v1") == "aiohttp"  # aiohttp is a dependency
    assert resolve_http_backend("httpx", "http://127.0.0.1:8000/v1") == "httpx"
    assert resolve_http_backend("auto", "http://user:secret@127.0.0.1:8000/v1") == "httpx"
    with pytest.raises(ConfigError, match="cannot send credentials embedded in the base URL"):
        resolve_http_backend("aiohttp", "http://user:secret@127.0.0.1:8000/v1")
