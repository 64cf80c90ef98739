"""The README documents every option the plugin registers (keeps the configuration table honest)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_option_and_ini_key_is_in_the_readme(pytester: pytest.Pytester) -> None:
    help_text = pytester.runpytest("--help").stdout.str()
    options = set(re.findall(r"(--llmsim-[a-z0-9-]+)", help_text))
    ini_keys = set(re.findall(r"^\s+(llmsim_[a-z0-9_]+)", help_text, re.MULTILINE))
    assert len(options) > 10 and len(ini_keys) > 20, "the help text should list the plugin's options"
    missing = sorted(name for name in options | ini_keys if f"`{name}" not in README)
    assert missing == [], f"document these in README.md: {missing}"


def test_readme_configuration_table_is_generated_from_the_option_table() -> None:
    from pytest_llmsim.config.options import markdown_table

    assert markdown_table() in README, "regenerate the README table with pytest_llmsim.config.options.markdown_table()"


def test_an_option_set_to_its_default_still_beats_the_local_model_default() -> None:
    """``llmsim_concurrency = 16`` in the ini file is the user's choice, even though 16 is also the default."""
    from pathlib import Path

    from pytest_llmsim.config.options import OPTIONS, resolve_values

    def resolved(ini: dict[str, str]) -> object:
        return resolve_values(OPTIONS, cli={}, env={}, ini=ini, invocation_dir=Path("/inv"), ini_dir=Path("/ini"),
                              local=lambda values: True)

    local = resolved({})
    assert local["llmsim_concurrency"] == 2 and local.source("llmsim_concurrency") == "local-model default"
    chosen = resolved({"llmsim_concurrency": "16"})
    assert chosen["llmsim_concurrency"] == 16 and chosen.source("llmsim_concurrency") == "ini"


def test_paths_resolve_against_the_invocation_dir_on_the_command_line_and_the_ini_dir_in_the_ini() -> None:
    from pathlib import Path

    from pytest_llmsim.config.options import OPTIONS, resolve_values

    common = {"env": {}, "invocation_dir": Path("/inv"), "ini_dir": Path("/ini")}
    cli = resolve_values(OPTIONS, cli={"llmsim_cache_dir": "c", "llmsim_results": "r.json"}, ini={}, **common)
    assert (cli["llmsim_cache_dir"], cli["llmsim_results"]) == (Path("/inv/c"), Path("/inv/r.json"))
    ini = resolve_values(OPTIONS, cli={}, ini={"llmsim_cache_dir": "c", "llmsim_results": "r.json"}, **common)
    assert (ini["llmsim_cache_dir"], ini["llmsim_results"]) == (Path("/ini/c"), Path("/ini/r.json"))


def test_bad_values_are_one_line_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nllmsim_concurrency = true\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*llmsim_concurrency (--llmsim-concurrency) must be a whole number, got 'true'*"])


def test_the_readme_shows_the_tested_ci_workflow_verbatim() -> None:
    workflow = (Path(__file__).resolve().parents[2] / "examples" / "ci" / "llmsim.yml").read_text()
    assert f"```yaml\n{workflow}```" in README


@pytest.mark.parametrize(("heading", "kind"), [
    ("### The prompt agent (the default)", "prompt"), ("### A Python callable", "python"),
    ("### An HTTP service", "http"), ("### An OpenAI-compatible endpoint", "openai"),
])
def test_each_agent_kind_has_its_own_readme_subsection_with_a_valid_scenario_file(heading: str, kind: str,
                                                                                   tmp_path: Path) -> None:
    """"Test your own agent": one subsection per agent kind, each with a scenario file that loads and names an
    agent of that kind (a reader who has never seen the plugin copies it)."""
    from pytest_llmsim.model.scenario import load_scenario_file

    section = README[README.index("## Test your own agent"):]
    section = section[:section.index("\n## ")]
    assert section.count(f"\n{heading}\n") == 1, heading
    body = section.split(f"\n{heading}\n", 1)[1].split("\n### ", 1)[0]
    examples = re.findall(r"```yaml\n(.*?)```", body, re.DOTALL)
    assert examples, f"{heading}: no YAML example"
    path = tmp_path / "example.yaml"
    path.write_text(examples[0], encoding="utf-8")
    entries = load_scenario_file(path)
    assert entries and all(entry.problem is None for entry in entries), [entry.problem for entry in entries]
    assert {entry.scenario.agent.kind for entry in entries if entry.scenario is not None} == {kind}


def test_the_error_kinds_table_has_one_row_per_error_kind() -> None:
    """README's failure and error kinds table lists every ``ErrorKind``, once each, with a non-empty "when" and
    "what to do" (a new kind without a row fails here)."""
    from pytest_llmsim.errors import ErrorKind

    header = "| `error_kind` | when | what to do |\n| --- | --- | --- |\n"
    assert README.count(header) == 1, "the error kinds table's header is missing or duplicated"
    start = README.index(header) + len(header)
    rows = []
    for line in README[start:].splitlines():
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    kinds = [re.fullmatch(r"`([a-z_]+)`", row[0]).group(1) for row in rows]  # type: ignore[union-attr]
    assert len(kinds) == len(set(kinds)), f"duplicate rows: {sorted(kinds)}"
    assert set(kinds) == {kind.value for kind in ErrorKind}
    assert all(len(row) == 3 and row[1] and row[2] for row in rows), rows
