"""Which files become scenario items, their ids, markers and selection."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import SimProject, scenario


def test_each_scenario_is_an_item_with_the_scenario_name_as_id(sim: SimProject) -> None:
    sim.write_scenarios("sample.json", [scenario("calm_reorder"), scenario("impatient")])
    result = sim.run("--collect-only", "-q")
    result.stdout.fnmatch_lines(["scenarios/sample.json::calm_reorder", "scenarios/sample.json::impatient",
                                 "*2 tests collected*"])
    assert sim.server.stats()["requests"] == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("suite.yaml", {"defaults": {"max_turns": 4}, "scenarios": [scenario("a"), scenario("b")]}),
        ("suite.yml", [scenario("a"), scenario("b")]),
        ("single.json", scenario("a")),
    ],
)
def test_accepted_shapes(sim: SimProject, filename: str, data: object) -> None:
    sim.write_scenarios(filename, data)
    result = sim.run("--collect-only", "-q")
    result.stdout.fnmatch_lines([f"scenarios/{filename}::a"])
    assert result.ret == 0


def test_unrelated_json_and_yaml_are_never_collected(sim: SimProject) -> None:
    sim.write_scenarios("ok.json", [scenario("a")])
    (sim.path / "package.json").write_text(json.dumps({"name": "web", "version": "1.0.0"}))
    (sim.path / ".github" / "workflows").mkdir(parents=True)
    (sim.path / ".github" / "workflows" / "ci.yml").write_text("on: push\njobs: {}\n")
    (sim.path / "config.yaml").write_text("name: not-a-scenario\n")
    result = sim.run("--collect-only", "-q", ".")
    result.stdout.fnmatch_lines(["scenarios/ok.json::a", "*1 test collected*"])
    result.stdout.no_fnmatch_line("*package.json*")
    result.stdout.no_fnmatch_line("*ci.yml*")


def test_explicit_file_outside_llmsim_paths_is_collected(sim: SimProject) -> None:
    (sim.path / "elsewhere").mkdir()
    (sim.path / "elsewhere" / "extra.yaml").write_text("name: extra\nvariables: {LOCATIONS: x, PERSONALITY: y}\n")
    result = sim.run("--collect-only", "-q", "elsewhere/extra.yaml")
    result.stdout.fnmatch_lines(["elsewhere/extra.yaml::extra"])


def test_llmsim_paths_accepts_globs(sim: SimProject) -> None:
    (sim.path / "suites" / "checkout").mkdir(parents=True)
    (sim.path / "suites" / "checkout" / "flows.llmsim.yaml").write_text("- name: g\n  variables: {}\n")
    (sim.path / "suites" / "checkout" / "other.yaml").write_text("- name: nope\n  variables: {}\n")
    sim.write_ini(llmsim_paths="suites/**/*.llmsim.yaml")
    result = sim.run("--collect-only", "-q", ".")
    result.stdout.fnmatch_lines(["suites/checkout/flows.llmsim.yaml::g"])
    result.stdout.no_fnmatch_line("*nope*")


@pytest.mark.slow
def test_k_selects_scenarios_and_only_they_call_the_endpoint(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("calm_reorder"), scenario("impatient"), scenario("confused")])
    result = sim.run("-k", "calm_reorder", "-v")
    result.assert_outcomes(passed=1, deselected=2)
    prompts = [r["body"]["messages"][0]["content"] for r in sim.server.requests_log()]
    assert prompts and all("calm_reorder" in p for p in prompts)


@pytest.mark.slow
def test_tags_become_markers(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a", tags=["impatient"]), scenario("b", tags=["calm"])])
    result = sim.run("-m", "impatient", "--strict-markers", "-v")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["*s.json::a PASSED*"])
    result = sim.run("-m", "llmsim", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*2 tests collected*"])
    # the tags ride on each record (the viewer filters by them): a JSON list, ``;``-joined in CSV
    sim.write_scenarios("s.json", [scenario("a", tags=["impatient", "billing"]), scenario("b")])
    sim.run("--llmsim-results=out.json").assert_outcomes(passed=2)
    sim.run("--llmsim-results=out.csv").assert_outcomes(passed=2)
    records = {r["scenario"]: r for r in json.loads((sim.path / "out.json").read_text())["results"]}
    assert (records["a"]["tags"], records["b"]["tags"]) == (["impatient", "billing"], [])
    with (sim.path / "out.csv").open(newline="") as handle:
        assert [row["tags"] for row in csv.DictReader(handle)] == ["impatient;billing", ""]


@pytest.mark.slow
def test_skip_and_xfail_fields(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [
        scenario("skipped", skip="prompt not ready"),
        scenario("low_expected", xfail="known weakness"),
        scenario("fine"),
    ])
    result = sim.run("-rsx")
    result.assert_outcomes(passed=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines(["*SKIPPED*prompt not ready*", "*XFAIL*known weakness*"])
    prompts = [r["body"]["messages"][0]["content"] for r in sim.server.requests_log()]
    assert not any("skipped" in p for p in prompts), "a skipped scenario must not call the endpoint"


def test_collect_only_makes_no_requests(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario(f"s{i}") for i in range(5)])
    sim.run("--collect-only")
    assert sim.server.stats()["requests"] == 0


@pytest.mark.slow
def test_a_run_without_scenarios_does_not_import_the_engine(pytester: pytest.Pytester) -> None:
    """The plugin loads into every pytest run of the environment: plain test suites must not pay for openai,
    diskcache or pydantic."""
    pytester.makepyfile(test_plain="""
        import sys

        def test_engine_not_imported():
            heavy = ("openai", "diskcache", "pydantic", "pytest_llmsim.engine.runner")
            assert [name for name in heavy if name in sys.modules] == []
            assert "pytest_llmsim.plugin.hooks" in sys.modules
    """)
    # langsmith's own pytest plugin (installed with the langgraph adapter's extra) imports pydantic itself
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:langsmith_plugin")
    result.assert_outcomes(passed=1)


def test_scenario_files_outside_llmsim_paths_get_a_hint(sim: SimProject) -> None:
    """``pytest my_scenarios/`` outside llmsim_paths collects nothing; one line says why and what to do."""
    folder = sim.path / "my_scenarios"
    folder.mkdir()
    (folder / "a.yaml").write_text("- name: a\n  variables: {LOCATIONS: x, PERSONALITY: y}\n")
    (folder / "b.json").write_text(json.dumps([scenario("b")]))
    (folder / "settings.yaml").write_text("name: app\nport: 8080\n")  # not scenario-like
    result = sim.run("my_scenarios")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines([
        "llmsim: 2 scenario-like files under my_scenarios/ were not collected: they are outside llmsim_paths "
        "(scenarios). Add the folder to llmsim_paths in your ini file, or name the files on the command line.",
    ])
    quiet = sim.run()  # no folder named: pytest walks the default paths, and no hint is printed
    quiet.stdout.no_fnmatch_line("*scenario-like*")
