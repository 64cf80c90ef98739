"""Hostile scenario files: each one is a single error item naming the file and the limit; the rest still runs.

Every file is tested AS A FILE in an inner pytest run next to a valid file, under a generous wall-clock bound
(the point is that it ends quickly). The alias bombs run in a subprocess with a capped address space, so a
regression fails the test instead of eating the machine's memory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from conftest import SimProject, scenario
from pytest_llmsim.model.prompts import MAX_PROMPT_CHARS
from pytest_llmsim.model.scenario import (
    MAX_EXPANDED_NODES,
    MAX_FILE_BYTES,
    MAX_NESTING_DEPTH,
    MAX_SCENARIOS_PER_FILE,
)

WALL_CLOCK_BOUND_S = 60.0
GOOD_VARIABLES = "{LOCATIONS: Moscow, PERSONALITY: calm}"


def _write(sim: SimProject, filename: str, text: str) -> Path:
    path = sim.path / "scenarios" / filename
    path.write_text(text, encoding="utf-8")
    return path


def _timed_run(sim: SimProject, *args: str) -> pytest.RunResult:
    started = time.monotonic()
    result = sim.run("-v", *args)
    assert time.monotonic() - started < WALL_CLOCK_BOUND_S
    return result


def _alias_bomb(levels: int) -> str:
    """The classic "billion laughs" as the LOCATIONS variable: level k is nine aliases of level k-1."""
    parts = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    parts += [f"&l{k} [{', '.join([f'*l{k - 1}'] * 9)}]" for k in range(1, levels + 1)]
    return ("- name: bomb\n  variables:\n    PERSONALITY: calm\n    LOCATIONS: [\n      "
            + ",\n      ".join(parts) + "]\n")


def _bounded_subprocess_run(sim: SimProject, *args: str) -> pytest.RunResult:
    """An inner run in its own process with at most 4 GB of address space, under the wall-clock bound."""
    (sim.path / "conftest.py").write_text(
        "import resource\n"
        "_soft, _hard = resource.getrlimit(resource.RLIMIT_AS)\n"
        "_cap = 4 * 1024 ** 3 if _hard == resource.RLIM_INFINITY else min(4 * 1024 ** 3, _hard)\n"
        "resource.setrlimit(resource.RLIMIT_AS, (_cap, _hard))\n"
    )
    started = time.monotonic()
    result = sim.pytester.runpytest_subprocess(
        "-p", "no:randomly", f"--llmsim-base-url={sim.server.base_url}", "-v", *args, timeout=WALL_CLOCK_BOUND_S)
    assert time.monotonic() - started < WALL_CLOCK_BOUND_S
    return result


@pytest.mark.slow
def test_deeply_nested_json_and_yaml_are_error_items_and_the_valid_file_runs(sim: SimProject) -> None:
    sim.write_scenarios("good.json", [scenario("fine")])
    _write(sim, "deep.json", "[" * 1500 + "]" * 1500)
    _write(sim, "deep_flow.yaml", "- name: x\n  variables: " + "[" * 10_000 + "]" * 10_000 + "\n")
    _write(sim, "deep_block.yaml", "".join("  " * i + "-\n" for i in range(1000)))
    _write(sim, "deep_value.json", json.dumps([scenario("v", variables={"X": json.loads("[" * 150 + "]" * 150)})]))
    result = _timed_run(sim)
    result.assert_outcomes(passed=1, errors=4)
    assert result.ret == 1
    limit = f"nesting is deeper than the limit of {MAX_NESTING_DEPTH} levels*"
    result.stdout.fnmatch_lines([f"*scenarios/deep.json:1:101: {limit}"], consecutive=False)
    result.stdout.fnmatch_lines([f"*scenarios/deep_block.yaml:101:*: {limit}"])
    result.stdout.fnmatch_lines([f"*scenarios/deep_flow.yaml:2:*: {limit}"])
    result.stdout.fnmatch_lines([f"*scenarios/deep_value.json:1:*: {limit}"])
    result.stdout.fnmatch_lines(["*good.json::fine PASSED*"])
    assert "RecursionError" not in result.stdout.str()


@pytest.mark.slow
def test_yaml_alias_bomb_is_rejected_before_it_is_built(sim: SimProject) -> None:
    """682 bytes that stand for 387 million strings: rejected from the event stream, in well under a second."""
    sim.write_scenarios("good.json", [scenario("fine")])
    bomb = _write(sim, "bomb.yaml", _alias_bomb(8))
    assert bomb.stat().st_size < 1000
    result = _bounded_subprocess_run(sim)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        f"*scenarios/bomb.yaml:*: YAML aliases expand the file to more than {MAX_EXPANDED_NODES:,} values, "
        "the limit (MAX_EXPANDED_NODES)*"
    ])
    result.stdout.fnmatch_lines(["*good.json::fine PASSED*"])
    assert not any("lol" in json.dumps(r["body"]) for r in sim.server.requests_log())


@pytest.mark.slow
def test_small_alias_bomb_never_reaches_the_endpoint_as_a_huge_prompt(sim: SimProject) -> None:
    """~530 bytes expanding to a 3.7 MB prompt: within the file limits, stopped by the prompt-size limit."""
    sim.write_scenarios("good.json", [scenario("fine")])
    _write(sim, "bomb.yaml", _alias_bomb(5))
    result = _bounded_subprocess_run(sim)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*scenarios/bomb.yaml::bomb: template 'agent.j2' renders a prompt of at least * characters, over the "
        f"limit of {MAX_PROMPT_CHARS:,} (MAX_PROMPT_CHARS); the largest variable is 'LOCATIONS'*"
    ])
    sizes = [len(json.dumps(r["body"])) for r in sim.server.requests_log()]
    assert sizes and max(sizes) < 20_000, "no huge prompt may be sent"


def test_huge_variable_value_without_aliases_is_stopped_by_the_prompt_limit(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("fine"),
                                   scenario("huge", variables={"LOCATIONS": "Moscow, " * 40_000})])
    result = _timed_run(sim)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        f"*scenarios/s.json::huge: template 'agent.j2' renders a prompt of at least * characters, over the limit "
        f"of {MAX_PROMPT_CHARS:,} (MAX_PROMPT_CHARS); the largest variable is 'LOCATIONS' (320,000 characters)*"
    ])
    prompts = [r["body"]["messages"][0]["content"] for r in sim.server.requests_log()]
    assert prompts and not any("huge" in p for p in prompts)


def test_recursive_and_deeply_expanding_aliases(sim: SimProject) -> None:
    sim.write_scenarios("good.json", [scenario("fine")])
    _write(sim, "recursive.yaml", f"- name: r\n  variables: {GOOD_VARIABLES}\n- name: s\n  variables:\n"
                                  "    LOCATIONS: x\n    PERSONALITY: y\n    LOOP: &loop [*loop]\n")
    _write(sim, "deep_alias.yaml", "- name: d\n  variables:\n    LOCATIONS: x\n    PERSONALITY: y\n"
                                   f"    A: &a {'[' * 60}{']' * 60}\n    B: {'[' * 40}*a{']' * 40}\n")
    result = _timed_run(sim)
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines([
        "*scenarios/deep_alias.yaml:6:*: alias *a: nesting is deeper than the limit of 100 levels*",
    ])
    result.stdout.fnmatch_lines([
        "*scenarios/recursive.yaml:7:*: alias *loop refers to a node that contains it; recursive structures are "
        "not allowed*",
    ])


@pytest.mark.slow
def test_file_over_the_size_limit_is_not_read(sim: SimProject) -> None:
    sim.write_scenarios("good.json", [scenario("fine")])
    sim.write_scenarios("big.json", [scenario("big", description="x" * (MAX_FILE_BYTES + 10))])
    result = _timed_run(sim)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        f"*scenarios/big.json: the file is *, over the limit of {MAX_FILE_BYTES:,} bytes (MAX_FILE_BYTES)*"
    ])


@pytest.mark.slow
def test_too_many_values_or_scenarios_in_one_file(sim: SimProject) -> None:
    many = [scenario(f"s{i}") for i in range(MAX_SCENARIOS_PER_FILE + 1)]
    sim.write_scenarios("many.json", many)
    collected = sim.run("--collect-only", "-q")
    collected.stdout.fnmatch_lines(["scenarios/many.json::invalid-file", "*1 test collected*"])
    _write(sim, "values.json", json.dumps([scenario("v", variables={"X": [0] * MAX_EXPANDED_NODES})]))
    sim.write_scenarios("good.json", [scenario("fine")])
    result = _timed_run(sim)
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines([
        f"*scenarios/many.json: {MAX_SCENARIOS_PER_FILE + 1:,} scenarios, over the limit of "
        f"{MAX_SCENARIOS_PER_FILE:,} per file (MAX_SCENARIOS_PER_FILE)*",
    ])
    result.stdout.fnmatch_lines([
        f"*scenarios/values.json: the file has more than {MAX_EXPANDED_NODES:,} values, the limit "
        "(MAX_EXPANDED_NODES)*",
    ])


@pytest.mark.slow
def test_values_python_cannot_build_are_error_items(sim: SimProject) -> None:
    """An integer of 5000 digits, an impossible date, NaN: each raised out of collection (rc 2, nothing ran)."""
    sim.write_scenarios("good.json", [scenario("fine")])
    _write(sim, "bigint.json", '[{"name": "a", "variables": {"X": ' + "9" * 5000 + "}}]")
    _write(sim, "bigint.yaml", "- name: a\n  variables: {X: " + "9" * 5000 + "}\n")
    _write(sim, "date.yaml", "- name: a\n  variables: {X: 2025-13-45}\n")
    _write(sim, "nan.json", '[{"name": "a", "timeout": NaN, "variables": {}}]')
    result = _timed_run(sim)
    result.assert_outcomes(passed=1, errors=4)
    result.stdout.fnmatch_lines(["*scenarios/bigint.json: invalid JSON value: *4300 digits*"])
    result.stdout.fnmatch_lines(["*scenarios/bigint.yaml: invalid YAML value: *4300 digits*"])
    result.stdout.fnmatch_lines(["*scenarios/date.yaml: invalid YAML value: month must be in 1..12*"])
    result.stdout.fnmatch_lines(["*scenarios/nan.json: NaN is not a JSON number*"])


# -- recordings and baselines that are not regular files (issue 24.14) -------------------------------------------
def _not_a_file(path: Path, kind: str) -> str:
    """Replace ``path`` by a symlink to /dev/zero or a FIFO; what the error says about it."""
    path.unlink(missing_ok=True)
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
        return "is a character device, not a regular file"
    os.mkfifo(path)
    return "is a FIFO (named pipe), not a regular file"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="needs /dev/zero, mkfifo")
@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_a_recording_that_is_not_a_regular_file_is_an_error_item_never_read(sim: SimProject, kind: str) -> None:
    """A recording symlinked to /dev/zero was read until MemoryError; a FIFO blocked the run forever."""
    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    sim.run().assert_outcomes(passed=2)
    path = sim.path / "recordings" / "scenarios" / "s.json" / "a.json"
    says = _not_a_file(path, kind)
    result = _bounded_subprocess_run(sim, "--llmsim-record=none")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([f"*llmsim recording {path} {says}; replace it with the recording file, or delete "
                                 "it and re-record with --llmsim-record=once*"])


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="needs /dev/zero, mkfifo")
@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
@pytest.mark.parametrize("where", ["file", "recordings-folder"])
def test_a_baseline_that_is_not_a_regular_file_is_a_usage_error(sim: SimProject, kind: str, where: str) -> None:
    """``--llmsim-baseline`` naming /dev/zero (INTERNALERROR: MemoryError) or a FIFO (a hang), or a recordings
    folder holding one: one usage-error line, nothing runs."""
    sim.write_scenarios("s.json", [scenario("a")])
    if where == "file":
        path = sim.path / "base.json"
        says = _not_a_file(path, kind)
        expected = f"ERROR: llmsim: llmsim_baseline {path} {says}; give a JSON export *"
        argument = "base.json"
    else:
        folder = sim.path / "main" / "scenarios" / "s.json"
        folder.mkdir(parents=True)
        path = folder / "a.json"
        says = _not_a_file(path, kind)
        expected = f"ERROR: llmsim: llmsim_baseline */main: bad recording file: llmsim recording {path} {says}*"
        argument = "main"
    result = _bounded_subprocess_run(sim, f"--llmsim-baseline={argument}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stderr.str()
    result.stderr.fnmatch_lines([expected])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert sim.server.stats()["requests"] == 0


def test_read_bounded_refuses_what_grows_past_the_limit_and_reads_what_fits(tmp_path: Path) -> None:
    from pytest_llmsim.safe_files import UnreadableFile, read_bounded

    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_bounded(path, 10) == b"x" * 10
    with pytest.raises(UnreadableFile, match="is 10 bytes, larger than the 9 bytes allowed") as info:
        read_bounded(path, 9)
    assert info.value.too_large
    with pytest.raises(UnreadableFile, match="is a directory, not a regular file"):
        read_bounded(tmp_path, 10)
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "missing", 10)
