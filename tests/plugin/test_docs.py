"""The documentation (README.md and the pages of docs/) matches the code: every option the plugin registers is
documented, the generated reference tables are current, and every scenario, config or workflow shown in a code
block loads."""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = {path.name: path.read_text(encoding="utf-8") for path in sorted(DOCS.glob("*.md"))}
CONFIGURATION = PAGES["configuration.md"]
ERRORS = PAGES["errors.md"]
AGENTS = PAGES["agents.md"]


def test_every_option_and_ini_key_is_in_the_configuration_reference(pytester: pytest.Pytester) -> None:
    help_text = pytester.runpytest("--help").stdout.str()
    options = set(re.findall(r"(--llmsim-[a-z0-9-]+)", help_text))
    ini_keys = set(re.findall(r"^\s+(llmsim_[a-z0-9_]+)", help_text, re.MULTILINE))
    assert len(options) > 10 and len(ini_keys) > 20, "the help text should list the plugin's options"
    missing = sorted(name for name in options | ini_keys if f"`{name}" not in CONFIGURATION)
    assert missing == [], f"document these in docs/configuration.md: {missing}"


def test_the_configuration_reference_is_generated_from_the_option_table() -> None:
    from pytest_llmsim.config.options import markdown_table

    assert markdown_table() in CONFIGURATION, "regenerate docs/configuration.md: python -m docs.gen"


def test_the_generated_pages_are_current() -> None:
    """``python -m docs.gen --check``: the option table and the error kinds table as the code makes them now."""
    from docs.gen import main, stale_pages

    assert stale_pages() == [], "regenerate the docs: python -m docs.gen"
    assert main(["--check"]) == 0


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


def test_the_ci_recipes_show_the_tested_ci_workflow_verbatim() -> None:
    workflow = (ROOT / "examples" / "ci" / "llmsim.yml").read_text()
    assert f"```yaml\n{workflow}```" in PAGES["ci.md"]


def test_the_sharded_workflow_is_valid_yaml_whose_shards_and_merge_agree_and_is_shown_verbatim() -> None:
    """examples/ci/llmsim-shards.yml: a matrix of N shard jobs, each running ``--llmsim-shard=K/N`` with K from the
    matrix and writing its export, and a merge job that runs after all of them (even when one failed) and merges
    every export with a command ``llmsim`` accepts."""
    from pytest_llmsim.apps.cli import build_parser

    text = (ROOT / "examples" / "ci" / "llmsim-shards.yml").read_text()
    assert f"```yaml\n{text}```" in PAGES["ci.md"]
    workflow = yaml.safe_load(text)
    shard, merge = workflow["jobs"]["shard"], workflow["jobs"]["merge"]
    count = len(shard["strategy"]["matrix"]["shard"])
    assert shard["strategy"]["matrix"]["shard"] == list(range(1, count + 1)) and count > 1
    assert shard["strategy"]["fail-fast"] is False  # a failed shard must not cancel the others' exports
    command = next(step["run"] for step in shard["steps"] if "--llmsim-shard" in str(step.get("run")))
    assert f"--llmsim-shard=${{{{ matrix.shard }}}}/{count}" in command
    assert "--llmsim-results=shard-${{ matrix.shard }}.json" in command
    upload = next(step for step in shard["steps"] if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "shard-${{ matrix.shard }}.json"
    assert merge["needs"] == "shard" and merge["if"] == "always()"
    merge_run = next(step["run"] for step in merge["steps"] if str(step.get("run", "")).startswith("llmsim merge"))
    args = build_parser().parse_args(merge_run.split()[1:])
    assert args.command == "merge" and args.files == ["shard-*.json"] and args.markdown and args.results


def _subsection(section: str, heading: str, level: str) -> str:
    """The body of ``heading`` (a heading of ``level``, ``##`` or ``###``) in ``section``, up to the next heading of
    that level."""
    assert section.count(f"\n{heading}\n") == 1, heading
    return section.split(f"\n{heading}\n", 1)[1].split(f"\n{level} ", 1)[0]


@pytest.mark.parametrize(("heading", "kind"), [
    ("## The prompt agent (the default)", "prompt"), ("## A Python callable", "python"),
    ("## An HTTP service", "http"), ("## An OpenAI-compatible endpoint", "openai"),
    ("### A Python callable", "python"), ("### An HTTP service", "http"),
    ("### An OpenAI-compatible endpoint", "openai"),
])
def test_each_agent_kind_has_its_own_subsection_with_a_valid_scenario_file(heading: str, kind: str,
                                                                            tmp_path: Path) -> None:
    """"Test your own agent": one subsection per agent kind in docs/agents.md (``##``) and for the three code agents
    on the README's front page (``###``), each with a scenario file that loads and names an agent of that kind (a
    reader who has never seen the plugin copies it)."""
    from pytest_llmsim.model.scenario import load_scenario_file

    if heading.startswith("### "):
        section = README.split("\n## Test your own agent\n", 1)[1].split("\n## ", 1)[0]
        body = _subsection(section, heading, "###")
    else:
        assert AGENTS.startswith("# Test your own agent\n")
        body = _subsection(AGENTS, heading, "##")
    examples = re.findall(r"```yaml\n(.*?)```", body, re.DOTALL)
    assert examples, f"{heading}: no YAML example"
    path = tmp_path / "example.yaml"
    path.write_text(examples[0], encoding="utf-8")
    entries = load_scenario_file(path)
    assert entries and all(entry.problem is None for entry in entries), [entry.problem for entry in entries]
    assert {entry.scenario.agent.kind for entry in entries if entry.scenario is not None} == {kind}


def test_the_error_kinds_table_has_one_row_per_error_kind() -> None:
    """docs/errors.md's failure and error kinds table lists every ``ErrorKind``, once each, with a non-empty "when"
    and "what to do" (a new kind without a row fails here; the table is generated by ``python -m docs.gen``)."""
    from pytest_llmsim.errors import ErrorKind

    header = "| `error_kind` | when | what to do |\n| --- | --- | --- |\n"
    assert ERRORS.count(header) == 1, "the error kinds table's header is missing or duplicated"
    start = ERRORS.index(header) + len(header)
    rows = []
    for line in ERRORS[start:].splitlines():
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    kinds = [re.fullmatch(r"`([a-z_]+)`", row[0]).group(1) for row in rows]  # type: ignore[union-attr]
    assert len(kinds) == len(set(kinds)), f"duplicate rows: {sorted(kinds)}"
    assert set(kinds) == {kind.value for kind in ErrorKind}
    assert all(len(row) == 3 and row[1] and row[2] for row in rows), rows


# -- every code block that is a scenario, a config or a data file loads ----------------------------------------
def _blocks(languages: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(where, language, text) of every fenced code block in README.md and docs/*.md of these languages."""
    found = []
    for name, text in [("README.md", README), *((f"docs/{page}", body) for page, body in PAGES.items())]:
        for number, match in enumerate(re.finditer(r"^```(\w+)\n(.*?)^```", text, re.DOTALL | re.MULTILINE)):
            if match.group(1) in languages:
                found.append((f"{name} block {number}", match.group(1), match.group(2)))
    return found


def _kind_of(language: str, text: str) -> str:
    """What a data block is: a scenario file, a price file, an ini file, a workflow, a recording, a recorded
    conversation or a calibration case (an unknown kind fails the test: teach it the new block)."""
    if language == "ini":
        return "ini"
    if text.startswith("# .github/workflows/"):
        return "workflow"
    data = json.loads(text) if language == "json" else yaml.safe_load(text)
    if isinstance(data, list) or (isinstance(data, dict) and ("scenarios" in data or "persona" in data)):
        return "scenarios"
    if isinstance(data, dict) and "queries" in data:
        return "queries"
    if isinstance(data, dict) and {"timestamp", "metrics"} <= set(data):
        return "metrics_summary"
    if isinstance(data, dict) and "llmsim_recording" in data:
        return "recording"
    if isinstance(data, dict) and "human_score" in data:
        return "calibration"
    if isinstance(data, dict) and "messages" in data:
        return "transcript"
    if isinstance(data, dict) and all(isinstance(v, (dict, str)) for v in data.values()):
        return "prices"
    return "unknown"


DATA_BLOCKS = _blocks(("yaml", "json", "ini"))


def test_the_docs_have_the_data_blocks_they_had() -> None:
    kinds = sorted(_kind_of(language, text) for _, language, text in DATA_BLOCKS)
    for kind in ("scenarios", "ini", "workflow", "recording", "calibration", "transcript", "prices"):
        assert kind in kinds, kind
    assert "unknown" not in kinds, [where for where, language, text in DATA_BLOCKS
                                    if _kind_of(language, text) == "unknown"]


@pytest.mark.parametrize(("where", "language", "text"), DATA_BLOCKS, ids=[where for where, _, _ in DATA_BLOCKS])
def test_every_data_block_in_the_docs_loads(where: str, language: str, text: str, tmp_path: Path) -> None:
    """Each scenario file, ini file, price file, recording, recorded conversation and calibration case shown in the
    docs loads with the loader the plugin uses for it (the CI workflow is checked verbatim above)."""
    from pytest_llmsim.config.options import OPTIONS, resolve_values
    from pytest_llmsim.engine.calibration import load_case
    from pytest_llmsim.engine.transcripts import load_transcript_file
    from pytest_llmsim.llm.pricing import load_price_file
    from pytest_llmsim.model.scenario import load_scenario_file
    from pytest_llmsim.replay.recordings import load_recording

    kind = _kind_of(language, text)
    path = tmp_path / f"block.{'yaml' if language == 'yaml' else language}"
    path.write_text(text, encoding="utf-8")
    if kind == "scenarios":
        entries = load_scenario_file(path)
        assert entries and all(entry.problem is None for entry in entries), [entry.problem for entry in entries]
    elif kind == "queries":  # a suite naming a CSV of queries: given a CSV with the columns it names, every row loads
        spec = yaml.safe_load(text)["queries"]
        columns = [spec.get("id", "id"), spec.get("query", "query"), *([spec["followups"]] if isinstance(
            spec.get("followups"), str) else spec.get("followups", []))]
        delimiter = spec.get("delimiter", ",")
        header, row = delimiter.join(columns), delimiter.join(f"{column} 1" for column in columns)
        (tmp_path / spec["csv"]).write_text(f"{header}\n{row}\n", encoding="utf-8")
        entries = load_scenario_file(path)
        assert entries and all(entry.problem is None for entry in entries), [entry.problem for entry in entries]
    elif kind == "metrics_summary":  # the shape --llmsim-metrics-summary writes (reporting.metrics_summary)
        data = json.loads(text)
        assert set(data) == {"timestamp", "run_id", "interrupted", "num_conversations", "unscored", "metrics"}
        for block in data["metrics"].values():
            assert set(block) == {"average_score", "num_evaluations", "num_errors", "results"}
            assert all({"id", "scenario", "score", "passed", "explanation", "details"} <= set(r)
                       for r in block["results"])
    elif kind == "ini":
        parser = configparser.ConfigParser()
        parser.read_string(text)
        ini = {key: value for key, value in parser["pytest"].items() if key.startswith("llmsim_")}
        assert ini, where
        resolved = resolve_values(OPTIONS, cli={}, env={}, ini=ini, invocation_dir=tmp_path, ini_dir=tmp_path)
        assert all(resolved.source(key) == "ini" for key in ini), where
    elif kind == "prices":
        prices, aliases = load_price_file(path)
        assert len(prices) + len(aliases) == len(yaml.safe_load(text)), where
    elif kind == "recording":
        recording = load_recording(path)
        assert recording.transcript, where
    elif kind == "transcript":
        entries = load_transcript_file(path)
        assert entries and all(entry.problem is None for entry in entries), [entry.problem for entry in entries]
    elif kind == "calibration":
        assert load_case(path).human_score in (1, 2, 3)
    else:
        assert kind == "workflow", (where, kind)


# -- README: a front page whose links land --------------------------------------------------------------------
def _anchors(markdown: str) -> set[str]:
    """The heading anchors MkDocs makes for a page (its default slugify: lowercase, punctuation dropped)."""
    anchors = set()
    code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            code = not code
        elif not code and (heading := re.match(r"#{1,6} (.*)", line)):
            text = re.sub(r"[`*]", "", heading.group(1)).strip().lower()
            anchors.add(re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", text)))
    return anchors


def test_the_readme_is_a_front_page_whose_links_into_the_docs_land() -> None:
    assert len(README.splitlines()) <= 250
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", README)
    assert len(links) >= 15, links
    for target, anchor in links:
        assert (ROOT / target).is_file(), target
        if anchor:
            assert anchor in _anchors((ROOT / target).read_text(encoding="utf-8")), f"{target}#{anchor}"
    assert (ROOT / "CHANGELOG.md").is_file() and "](CHANGELOG.md)" in README


def test_the_getting_started_page_includes_the_readmes_set_up_section() -> None:
    """docs/getting-started.md shows the README's set-up commands and sample run through snippets, so the two cannot
    drift; the markers sit inside the README's ``## Set-up: two commands`` section."""
    for section in ("setup", "sample-run"):
        assert README.count(f"<!-- --8<-- [start:{section}] -->") == 1
        assert README.count(f"<!-- --8<-- [end:{section}] -->") == 1
        assert f'--8<-- "README.md:{section}"' in PAGES["getting-started.md"]
    setup = README.split("\n## Set-up: two commands\n", 1)[1].split("\n## ", 1)[0]
    assert "<!-- --8<-- [start:setup] -->" in setup and "<!-- --8<-- [end:setup] -->" in setup
