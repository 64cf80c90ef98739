"""``llmsim`` (the CLI): batches give pytest's records and summary to the digit, ``--single`` streams, ``summarise``
reproduces pytest's numbers from every export format, exit codes and one-line input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProject, default_script, scenario
from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

pytestmark = pytest.mark.slow

SCENARIOS = [scenario("good_one"), scenario("low_one"), scenario("mid_one", variables={"SEED": 7}),
             scenario("skipped_one", skip="not today"), scenario("low_expected", xfail="known rude")]
# Differ from run to run (wall time, the run's id, where the file is): everything else must be equal.
VOLATILE = {"duration_seconds", "session_id", "latency_s", "nodeid", "source", "run_id", "generated_at", "worker"}
# Wall-time figures: the run's duration and its throughput at the provider's rate limits.
VOLATILE_SUMMARY = {"total_duration_seconds", "effective_rpm", "effective_tpm", "reserved_tpm", "limiter_wait_seconds"}


def llmsim(project: Path, *args: str, base_url: str | None = None, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    full_env.update(env or {})
    extra = ["--base-url", base_url] if base_url else []
    command = [sys.executable, "-m", "pytest_llmsim.apps.cli", *args]
    if args and args[0] == "run":
        command += extra
    return subprocess.run(command, cwd=project, env=full_env, capture_output=True, text=True, timeout=timeout)


def stripped(record: dict[str, Any]) -> dict[str, Any]:
    """A record without what differs between two runs of the same scenario."""
    clean = {k: v for k, v in record.items() if k not in VOLATILE}
    clean["transcript"] = [{k: v for k, v in turn.items() if k not in VOLATILE} for turn in record["transcript"]]
    return clean


def pytest_export(sim: SimProject) -> dict[str, Any]:
    """The scenarios run by pytest with a cache and recordings of its own, and its JSON export."""
    sim.run("--llmsim-results=pytest.json", "--llmsim-cache-dir=cache_pytest", "--llmsim-recordings=rec_pytest")
    return json.loads((sim.path / "pytest.json").read_text())


def cli_exports(project: Path) -> dict[str, Path]:
    found = {path.suffix: path for path in (project / "out").iterdir() if not path.name.endswith(".summary.json")}
    assert set(found) == {".json", ".csv", ".ndjson"}
    return found


def test_a_batch_gives_pytests_records_and_summary_to_the_digit(sim: SimProject) -> None:
    sim.write_scenarios("shop.json", SCENARIOS)
    expected = pytest_export(sim)
    done = llmsim(sim.path, "run", "scenarios/shop.json", "--output-dir", "out", "-o", "llmsim_cache_dir=cache_cli",
                  "-o", "llmsim_recordings=rec_cli", base_url=sim.server.base_url)
    assert done.returncode == 1, done.stderr  # low_one fails
    assert not sys.stdout.isatty() or "llmsim summary" in done.stdout
    exports = cli_exports(sim.path)
    got = json.loads(exports[".json"].read_text())
    assert [r["nodeid"] for r in got["results"]] == [r["nodeid"] for r in expected["results"]]
    assert [stripped(r) for r in got["results"]] == [stripped(r) for r in expected["results"]]
    assert [r["outcome"] for r in got["results"]] == ["passed", "failed", "passed", "skipped", "xfailed"]
    strip = VOLATILE_SUMMARY
    assert {k: v for k, v in got["summary"].items() if k not in strip} == \
        {k: v for k, v in expected["summary"].items() if k not in strip}
    assert got["summary"]["total_requests"] > 0 and got["summary"]["total_cost_usd"] > 0  # live: fresh cache

    # summarise reproduces pytest's numbers from each export format
    keys = ("total_scenarios", "successful_scenarios", "failed_scenarios", "errored_scenarios", "skipped_scenarios",
            "xfailed_scenarios", "success_rate", "score_statistics", "score_distribution", "total_cost_usd",
            "total_tokens", "total_requests", "average_cost_per_request", "prompt_tokens", "completion_tokens",
            "replayed_requests", "replayed_tokens", "saved_cost_usd", "pass_hat_k")
    for path in [*exports.values(), sim.path / "pytest.json"]:
        out = llmsim(sim.path, "summarise", str(path))
        assert out.returncode == 1, out.stderr  # a failed scenario
        summary = json.loads(out.stdout)
        assert {k: summary[k] for k in keys} == {k: expected["summary"][k] for k in keys}, path.name
    csv_out = llmsim(sim.path, "summarise", str(exports[".ndjson"]), "--format", "csv", "--output", "s.csv")
    header, row = (sim.path / "s.csv").read_text().splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert values["score_statistics.mean"] == str(expected["summary"]["score_statistics"]["mean"])
    assert "pass rate 66.7%" in csv_out.stdout


def test_single_streams_the_conversation_as_it_happens(sim: SimProject) -> None:
    script = default_script()
    for rule in script["rules"]:
        rule["delay"] = 0.3
    sim.write_scenarios("shop.json", [scenario("good_one"), scenario("mid_one")])
    with ScriptedOpenAIServer(script) as server:
        env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest_llmsim.apps.cli", "run", "scenarios/shop.json", "--single", "1",
             "--base-url", server.base_url, "--output-dir", "out"],
            cwd=sim.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stdout is not None
        arrivals = []
        for line in process.stdout:
            arrivals.append((time.perf_counter(), line.rstrip("\n")))
        assert process.wait(60) == 0, process.stderr.read() if process.stderr else ""
    lines = [text for _, text in arrivals]
    assert lines[:2] == ["Customer: Hi, I would like chicken fillet.", "Agent: Hello, Meat Market, how can I help?"]
    assert lines[5] == "Agent: Your order is confirmed. Goodbye!"
    assert lines[6] == "verdict: passed - score 2/3 (minimum 2): Slow but correct."
    # each turn arrived when it was said (0.3 s apart), not all at the end
    first, verdict = arrivals[0][0], arrivals[6][0]
    assert verdict - first > 1.2


def test_no_stream_prints_only_the_verdict(sim: SimProject) -> None:
    sim.write_scenarios("shop.json", [scenario("low_one")])
    done = llmsim(sim.path, "run", "scenarios/shop.json", "--single", "0", "--no-stream", "--output-dir", "out",
                  base_url=sim.server.base_url)
    assert done.returncode == 1
    assert done.stdout.startswith("verdict: failed - score 1/3 (minimum 2): The agent was rude.")
    assert "Customer:" not in done.stdout


def test_exit_codes_and_one_line_input_errors(sim: SimProject) -> None:
    sim.write_scenarios("good.json", [scenario("good_one")])
    ok = llmsim(sim.path, "run", "scenarios/good.json", "--output-dir", "out", "--quiet", base_url=sim.server.base_url)
    assert (ok.returncode, ok.stdout) == (0, "")
    missing = llmsim(sim.path, "run", "scenarios/nope.json")
    assert missing.returncode == 2 and \
        missing.stderr.strip() == "llmsim: scenarios/nope.json: no such scenario file or folder"
    (sim.path / "scenarios" / "broken.json").write_text("[{")
    broken = llmsim(sim.path, "run", "scenarios/broken.json")
    assert broken.returncode == 2 and len(broken.stderr.strip().splitlines()) == 1
    assert "broken.json" in broken.stderr
    sim.write_scenarios("bad.json", [scenario("good_one"), scenario("bad_one", min_score=7)])
    bad = llmsim(sim.path, "run", "scenarios/bad.json", "--output-dir", "out", base_url=sim.server.base_url)
    assert bad.returncode == 1  # the invalid scenario is an error, the others run
    problem = [line for line in bad.stderr.splitlines() if "bad_one" in line]
    assert len(problem) == 1 and "bad.json" in problem[0] and "min_score" in problem[0]
    out_of_range = llmsim(sim.path, "run", "scenarios/good.json", "--single", "3")
    assert out_of_range.returncode == 2 and "--single 3" in out_of_range.stderr
    usage = llmsim(sim.path, "run")
    assert usage.returncode == 2
    bad_option = llmsim(sim.path, "run", "scenarios/good.json", "-o", "llmsim_concurrency=many")
    assert bad_option.returncode == 2 and "llmsim_concurrency" in bad_option.stderr
    env_option = llmsim(sim.path, "run", "scenarios/good.json", env={"CONCURRENCY": "zero"})
    assert env_option.returncode == 2 and "llmsim_concurrency" in env_option.stderr
    not_export = llmsim(sim.path, "summarise", "scenarios/good.json")
    assert not_export.returncode == 2 and "results" in not_export.stderr


def test_the_service_only_environment_variables_never_touch_a_pytest_run(sim: SimProject, monkeypatch: Any) -> None:
    """PORT, HOST or WEBHOOK_URL set in a shell for something else must not change or break a pytest run: they name
    options only ``llmsim`` and its service read (pytest does not resolve them), while the option table's variables of
    the settings both fronts share (MAX_TURNS, ...) are read by both alike (``tests/plugin/test_settings_path.py``)."""
    from pytest_llmsim.apps.cli import resolve_options

    for name, value in (("PORT", "not-a-port"), ("HOST", "0.0.0.0"), ("WEBHOOK_URL", "y")):
        monkeypatch.setenv(name, value)
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run().assert_outcomes(passed=1)
    resolved = resolve_options([], {}, env={"PORT": "6001", "HOST": "::1", "MAX_TURNS": "7",
                                            "WEBHOOK_URL": "http://127.0.0.1:9/hook"}, invocation_dir=sim.path)
    assert (resolved["llmsim_port"], resolved["llmsim_host"], resolved["llmsim_max_turns"]) == (6001, "::1", 7)
    assert resolved["llmsim_webhook_url"] == "http://127.0.0.1:9/hook"


def test_a_folder_runs_every_scenario_file_pytest_would_collect_in_it(sim: SimProject) -> None:
    """``llmsim run scenarios/`` said "no such scenario file": a folder runs its scenario files as ``pytest
    scenarios/`` collects them (within llmsim_paths, subfolders included, in pytest's order); a broken file is an
    error naming it while the others run; a folder pytest would not collect is a usage error saying why."""
    sim.write_scenarios("a.json", [scenario("good_one"), scenario("low_one")])
    (sim.path / "scenarios" / "sub").mkdir()
    sim.write_scenarios("sub/b.yaml", [scenario("mid_one")])
    (sim.path / "scenarios" / "broken.json").write_text("[{")
    (sim.path / "scenarios" / "notes.txt").write_text("not a scenario")
    expected = pytest_export(sim)
    done = llmsim(sim.path, "run", "scenarios/", "--output-dir", "out", "-o", "llmsim_cache_dir=cache_cli",
                  base_url=sim.server.base_url)
    assert done.returncode == 1, done.stderr  # low_one fails, broken.json errors
    assert "Traceback" not in done.stderr and "broken.json" in done.stderr
    got = json.loads(cli_exports(sim.path)[".json"].read_text())["results"]
    assert [(r["nodeid"], r["outcome"]) for r in got] == [
        ("scenarios/a.json::good_one", "passed"), ("scenarios/a.json::low_one", "failed"),
        ("scenarios/broken.json::invalid-file", "error"), ("scenarios/sub/b.yaml::mid_one", "passed")]
    assert "broken.json" in got[2]["error_message"] and got[2]["error_kind"] == "scenario_error"
    assert [(r["nodeid"], r["outcome"]) for r in got] == [(r["nodeid"], r["outcome"]) for r in expected["results"]]
    assert [stripped(r) for r in got if r["outcome"] != "error"] == \
        [stripped(r) for r in expected["results"] if r["outcome"] != "error"]

    (sim.path / "elsewhere").mkdir()
    (sim.path / "elsewhere" / "x.json").write_text(json.dumps([scenario("good_one")]))
    outside = llmsim(sim.path, "run", "elsewhere", base_url=sim.server.base_url)
    assert outside.returncode == 2 and len(outside.stderr.strip().splitlines()) == 1
    assert "elsewhere: 1 scenario-like file but none within llmsim_paths (scenarios" in outside.stderr
    (sim.path / "empty").mkdir()
    empty = llmsim(sim.path, "run", "empty", base_url=sim.server.base_url)
    assert empty.returncode == 2 and "empty: no scenario files" in empty.stderr


def test_one_scenario_is_not_scenarios(sim: SimProject) -> None:
    sim.write_scenarios("one.json", [scenario("good_one")])
    done = llmsim(sim.path, "run", "scenarios/one.json", "--single", "0", "--no-stream", "--output-dir", "out",
                  base_url=sim.server.base_url)
    assert done.returncode == 0, done.stderr
    assert "llmsim: 1 scenario, 1 passed" in done.stdout and "1 scenarios" not in done.stdout
    out_of_range = llmsim(sim.path, "run", "scenarios/one.json", "--single", "1")
    assert out_of_range.returncode == 2
    assert "--single 1: the file has 1 scenario (0 to 0)" in out_of_range.stderr


def test_usage_errors_exit_2_with_one_line_naming_the_input(sim: SimProject, tmp_path: Path) -> None:
    """``serve --db DIR`` printed a traceback, ``summarise`` of a file that is no export exited 0, and ``run
    --base-url notaurl`` ran every scenario into a connection error (exit 1): each is a one-line usage error."""
    (sim.path / "dbdir").mkdir()
    served = llmsim(sim.path, "serve", "--db", "dbdir", "--port", "9", timeout=60)
    assert served.returncode == 2 and "Traceback" not in served.stderr, served.stderr
    assert served.stderr.count("\n") == 1 and "dbdir: is a directory" in served.stderr
    (sim.path / "notadb.sqlite3").write_text("this is not a database " * 100)
    not_db = llmsim(sim.path, "serve", "--db", "notadb.sqlite3", "--port", "9", timeout=60)
    assert not_db.returncode == 2 and "notadb.sqlite3" in not_db.stderr and "Traceback" not in not_db.stderr

    for name, text, why in (("garbage.csv", "hello world\n", "the header has no 'scenario' and 'status' columns"),
                            ("empty.csv", "", "the header has no"),
                            ("header.csv", "scenario,status\n", "holds no results"),
                            ("empty.ndjson", "\n", "holds no results"),
                            ("partial.csv", "scenario,score\na,3\n", "no 'status' column"),
                            ("none.json", '{"results": []}', "holds no results")):
        (sim.path / name).write_text(text)
        out = llmsim(sim.path, "summarise", name)
        assert out.returncode == 2, (name, out.stdout)
        assert out.stderr.startswith(f"llmsim: {name}: ") and why in out.stderr, (name, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1

    sim.write_scenarios("good.json", [scenario("good_one")])
    for url in ("notaurl", "ftp://host/v1", "http://", "http://host:port/v1"):
        bad = llmsim(sim.path, "run", "scenarios/good.json", "--output-dir", "out", base_url=url)
        assert bad.returncode == 2, (url, bad.stdout, bad.stderr)
        assert bad.stderr.startswith("llmsim: --base-url (llmsim_base_url): ") and "http:// or https://" in bad.stderr
    from_env = llmsim(sim.path, "run", "scenarios/good.json", env={"OPENAI_BASE_URL": "localhost:8000/v1"})
    assert from_env.returncode == 2 and from_env.stderr.startswith("llmsim: OPENAI_BASE_URL: 'localhost:8000/v1'")
    assert not (sim.path / "out").exists()  # nothing ran


def test_counts_of_one_are_singular_in_every_summary_line() -> None:
    from pytest_llmsim.reporting.summary import plural

    assert [plural(n, "scenario") for n in (0, 1, 2, 1000)] == ["0 scenarios", "1 scenario", "2 scenarios",
                                                                "1000 scenarios"]
