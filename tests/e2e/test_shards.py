"""CI shards merged into one verdict: a suite run as one pytest process and as 4 shards (separate processes, separate
caches, the recordings shared) gives, once ``llmsim merge`` has merged the shards' exports, the single run's export,
summary, markdown and exit code; and a merge of exports that are not one run's shards is one clear error."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from conftest import SimProject, scenario

pytestmark = pytest.mark.slow

SCENARIOS = [scenario(f"good_{i}") for i in range(5)] + [
    scenario("low_one"), scenario("mid_one", variables={"SEED": 7}), scenario("mid_two", min_score=3),
    scenario("skipped_one", skip="not today"), scenario("low_expected", xfail="known rude")]
MORE = [scenario(f"good_more_{i}") for i in range(3)] + [scenario("low_two")]
TESTS = """
def test_plain():
    assert True

def test_conversation(llmsim):
    result = llmsim.run_sync(name="fixture_chat", variables={"LOCATIONS": "Moscow", "PERSONALITY": "calm"})
    assert result.score >= 2
"""
COMMIT = "a" * 40
# Wall-clock figures, normalised explicitly: everything else of the merged run must equal the single run's.
TIME_FIELDS = {"duration_seconds", "total_duration_seconds", "generated_at", "effective_rpm", "effective_tpm",
               "reserved_tpm", "limiter_wait_seconds"}


def normalised(document: dict[str, Any]) -> dict[str, Any]:
    """An export with its run id (random per run) and wall-clock figures replaced by placeholders, and the merge's
    ``merged_from`` (which shard files it read) left out."""
    data = copy.deepcopy(document)
    data.pop("merged_from", None)

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: ("<time>" if key in TIME_FIELDS else "<run>" if key in ("run_id", "session_id")
                          else walk(item)) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return walk(data)  # type: ignore[no-any-return]


def pytest_process(sim: SimProject, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in its own process, replaying the shared recordings (no call may reach the endpoint)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "GITHUB_STEP_SUMMARY")}
    env["GITHUB_SHA"] = COMMIT  # the commit every shard records (as in a workflow run)
    command = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider",
               f"--llmsim-base-url={sim.server.base_url}", "--llmsim-record=none", *args]
    return subprocess.run(command, cwd=sim.path, env=env, capture_output=True, text=True, timeout=300)


def merge(sim: SimProject, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "pytest_llmsim.apps.cli", "merge", *args], cwd=sim.path, env=full,
                          capture_output=True, text=True, timeout=120)


def record_suite(sim: SimProject, *, trials: bool) -> None:
    sim.write_scenarios("shop.json", SCENARIOS)
    sim.write_scenarios("more.yaml", MORE)
    (sim.path / "test_bot.py").write_text(TESTS)
    if trials:
        sim.write_ini(llmsim_trials="2")
    sim.write_ini(llmsim_min_mean_score="2.9", llmsim_paths="scenarios")
    result = sim.run("--llmsim-record=once")  # records every conversation (in-process: only the recordings matter)
    assert result.ret == 1, result.stdout.str()  # low_one and mid_two fail
    sim.server.recorded = len(sim.server.requests_log())  # type: ignore[attr-defined]  # calls before the replays


def write_baseline(sim: SimProject) -> None:
    """A baseline export in which low_one passed with a 3 and good_0 failed: low_one regressed, good_0 improved."""
    result = sim.run("--llmsim-record=none", "--llmsim-results=base.json", "--llmsim-cache-dir=cache_base")
    assert result.ret == 1
    document = json.loads((sim.path / "base.json").read_text())
    for row in document["results"]:
        if row["scenario"] == "low_one":
            row.update(status="passed", outcome="passed", score=3)
        if row["scenario"] == "good_0":
            row.update(status="failed", outcome="failed", score=1)
    (sim.path / "base.json").write_text(json.dumps(document))


@pytest.mark.parametrize("trials", [False, True], ids=["one-trial", "two-trials"])
@pytest.mark.parametrize("baseline", [False, True], ids=["no-baseline", "baseline"])
def test_four_shards_merged_give_the_single_runs_export_summary_markdown_and_exit_code(
        sim: SimProject, trials: bool, baseline: bool) -> None:
    record_suite(sim, trials=trials)
    extra: list[str] = []
    if baseline:
        write_baseline(sim)
        extra = ["--llmsim-baseline=base.json", "--llmsim-fail-on-regression"]
    single = pytest_process(sim, "--llmsim-cache-dir=cache_single", "--llmsim-results=single.json",
                            "--llmsim-markdown=single.md", *extra)
    assert single.returncode == 1, single.stdout
    kept = []
    for k in range(1, 5):
        shard = pytest_process(sim, f"--llmsim-shard={k}/4", f"--llmsim-cache-dir=cache_{k}",
                               f"--llmsim-results=shard-{k}.json", *extra)
        assert shard.returncode in (0, 1), shard.stdout + shard.stderr
        assert f"llmsim: shard {k}/4:" in shard.stdout
        document = json.loads((sim.path / f"shard-{k}.json").read_text())
        kept.append(len(document["llmsim_shard"]["items"]))
        assert "deselected" in shard.stdout.splitlines()[-1] or kept[-1] == document["llmsim_shard"]["collected"]
    assert sum(kept) == json.loads((sim.path / "shard-1.json").read_text())["llmsim_shard"]["collected"]
    assert max(kept) < sum(kept), "one shard ran everything"
    merged = merge(sim, *(f"shard-{k}.json" for k in (3, 1, 4, 2)), "--results", "all.json", "--markdown",
                   "summary.md")
    assert merged.returncode == single.returncode, merged.stdout + merged.stderr
    single_doc = json.loads((sim.path / "single.json").read_text())
    merged_doc = json.loads((sim.path / "all.json").read_text())
    assert normalised(merged_doc) == normalised(single_doc)
    assert (sim.path / "summary.md").read_text() == (sim.path / "single.md").read_text()
    assert [row["nodeid"] for row in merged_doc["results"]] == [row["nodeid"] for row in single_doc["results"]]
    assert merged_doc["summary"]["gates"]["missed"]  # the mean-score gate (and, with the baseline, the regression)
    if baseline:
        assert any("regressed since the baseline" in line for line in merged_doc["summary"]["gates"]["missed"])
        other = json.loads((sim.path / "base.json").read_text())
        other["results"][0]["score"] = 2 if other["results"][0]["score"] != 2 else 3
        (sim.path / "other.json").write_text(json.dumps(other))
        refused = merge(sim, *(f"shard-{k}.json" for k in range(1, 5)), "--baseline", "other.json")
        assert refused.returncode == 2
        assert refused.stderr.strip() == ("llmsim: the baseline other.json is not the one the shards compared with "
                                          "(base.json): its records differ; give that baseline with --baseline")
        (sim.path / "base.json").unlink()
        gone = merge(sim, *(f"shard-{k}.json" for k in range(1, 5)))
        assert gone.returncode == 2 and "llmsim_baseline base.json does not exist" in gone.stderr
        assert "the shards compared with this baseline: give it with --baseline" in gone.stderr
    assert [entry["shard"] for entry in merged_doc["merged_from"]] == ["1/4", "2/4", "3/4", "4/4"]
    assert len(sim.server.requests_log()) == sim.server.recorded  # type: ignore[attr-defined]  # replays: no call


def test_a_passing_suite_merges_to_exit_code_0_and_a_gate_flag_overrides_the_shards(sim: SimProject) -> None:
    """Shard 1 runs under xdist (-n 2), shard 2 in one process; the merge posts the job summary and exits 0, and a
    gate given to the merge fails it."""
    sim.write_scenarios("shop.json", [scenario(f"good_{i}") for i in range(5)] + [scenario("mid_one")])
    assert sim.run("--llmsim-record=once").ret == 0
    for k, workers in ((1, "2"), (2, "0")):  # xdist inside a shard: the workers split alike, the controller exports
        assert pytest_process(sim, f"--llmsim-shard={k}/2", f"--llmsim-results=s{k}.json", "-n", workers
                              ).returncode == 0
    assert json.loads((sim.path / "s1.json").read_text())["llmsim_shard"]["collected"] == 6
    summary_file = sim.path / "step-summary.md"
    passed = merge(sim, "s1.json", "s2.json", env={"GITHUB_STEP_SUMMARY": str(summary_file)})
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "6 passed" in summary_file.read_text()
    gated = merge(sim, "s1.json", "s2.json", "--min-mean-score", "3")
    assert gated.returncode == 1
    assert "mean score 2.8333 is below the minimum 3 (llmsim_min_mean_score)" in gated.stdout
    bad = merge(sim, "s1.json", "s2.json", "--min-pass-rate", "lots")
    assert bad.returncode == 2 and "llmsim_min_pass_rate (--min-pass-rate) must be a number" in bad.stderr


def test_merges_that_are_not_one_run_are_one_clear_error(sim: SimProject) -> None:
    sim.write_scenarios("shop.json", [scenario(f"good_{i}") for i in range(6)])
    assert sim.run("--llmsim-record=once").ret == 0
    for k in (1, 2, 3):
        assert pytest_process(sim, f"--llmsim-shard={k}/3", f"--llmsim-results=s{k}.json").returncode == 0
    other = pytest_process(sim, "--llmsim-shard=3/3", "--llmsim-results=other3.json", "--llmsim-min-score=3")
    assert other.returncode in (0, 1)
    cases = {
        ("s1.json", "s2.json"): "shard 3/3 missing (given: 1/3 (s1.json), 2/3 (s2.json)); a merge of some shards is "
                                "no verdict",
        ("s1.json", "s2.json", "s2.json", "s3.json"): "shard 2/3 is given twice: s2.json and s2.json",
        ("s1.json", "s2.json", "other3.json"): "the shards ran with different settings: llmsim_min_score: 2 in "
                                               "shards 1/3, 2/3; 3 in shard 3/3",
        ("s1.json", "single.json"): "single.json: no such file",
    }
    for files, message in cases.items():
        result = merge(sim, *files, "--results", "never.json")
        assert result.returncode == 2, result.stdout
        assert result.stderr.strip() == f"llmsim: {message}", result.stderr
        assert not (sim.path / "never.json").exists()
    # Another commit: the same export with its commit changed.
    document = json.loads((sim.path / "s3.json").read_text())
    document["llmsim_shard"]["commit"] = "0" * 40
    (sim.path / "commit3.json").write_text(json.dumps(document))
    result = merge(sim, "s1.json", "s2.json", "commit3.json")
    assert result.returncode == 2
    assert f'the shards ran different commits: "{COMMIT}" in shards 1/3, 2/3; "{"0" * 40}" in shard 3/3' \
        in result.stderr
    # A plain export (no --llmsim-shard) is not a shard's.
    assert sim.run("--llmsim-record=none", "--llmsim-results=plain.json").ret == 0
    result = merge(sim, "plain.json")
    assert result.returncode == 2 and "plain.json: not a shard's export (no 'llmsim_shard' object)" in result.stderr


@pytest.mark.parametrize("value", ["0/4", "5/4", "x", "2", "1/0", "1/1000000000"])
def test_a_bad_shard_value_is_a_usage_error_naming_the_option(sim: SimProject, value: str) -> None:
    sim.write_scenarios("shop.json", [scenario("good_1")])
    result = sim.run(f"--llmsim-shard={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*llmsim_shard (--llmsim-shard) must be K/N*{value!r}*"])


def test_the_ini_key_shards_and_deselection_is_reported(sim: SimProject) -> None:
    sim.write_scenarios("shop.json", [scenario(f"good_{i}") for i in range(8)])
    sim.write_ini(llmsim_shard="2/2")
    result = sim.run("--llmsim-record=once")
    assert result.ret == 0
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] + outcomes["deselected"] == 8 and outcomes["deselected"] >= 2
    result.stdout.fnmatch_lines(["llmsim: shard 2/2: * of 8 items (*% of the cost, split by count)"])


def test_a_shard_with_nothing_to_run_passes_and_merges(sim: SimProject) -> None:
    """More shards than scenarios: the empty shard exits 0 (pytest would say "no tests ran", exit 5) and the merge
    gives the single run's verdict."""
    sim.write_scenarios("shop.json", [scenario("low_one")])
    assert sim.run("--llmsim-record=once").ret == 1
    codes = [pytest_process(sim, f"--llmsim-shard={k}/2", f"--llmsim-results=s{k}.json").returncode for k in (1, 2)]
    assert sorted(codes) == [0, 1]
    assert merge(sim, "s1.json", "s2.json").returncode == 1
