"""Trials: k conversations per scenario with derived seeds, pass rate, pass^k, pass@k, flaky, and their gates."""

from __future__ import annotations

import csv
import json
from typing import Any

import pytest

from conftest import SimProject, default_script, scenario, verdict
from pytest_llmsim.model.trials import derive_seed, stats_of, trial_of_nodeid
from pytest_llmsim.reporting.summary import summarize

SEED = 7
SEEDS = [SEED, derive_seed(SEED, 2), derive_seed(SEED, 3)]


def _judge_low_on(seeds: list[int]) -> dict[str, Any]:
    """The default script, with the judge scoring 1 for the conversations run with ``seeds``."""
    return {"rules": [{"match": {"system_contains": "EVALUATOR", "seed": seeds},
                       "reply": verdict(1, "The agent was rude.")},
                      *default_script()["rules"]]}


def _export(sim: SimProject, name: str = "out.json") -> dict[str, Any]:
    return json.loads((sim.path / name).read_text())


def _row(document: dict[str, Any], name: str) -> dict[str, Any]:
    return next(row for row in document["results"] if row["scenario"] == name)


def test_derived_seeds_are_stable_distinct_and_trial_one_keeps_the_scenario_seed() -> None:
    assert derive_seed(7, 1) == 7
    seeds = [derive_seed(7, n) for n in range(1, 51)]
    assert len(set(seeds)) == 50 and all(0 <= s <= 2**31 - 1 for s in seeds)
    assert derive_seed(7, 2) == derive_seed(7, 2) != derive_seed(8, 2)
    assert trial_of_nodeid("s.json::a[trial-12]") == ("s.json::a", 12)
    assert trial_of_nodeid("s.json::a") == ("s.json::a", None)


def test_stats_of_trials() -> None:
    stats = stats_of(["passed", "failed", "passed", "skipped"], [3, 1, 2, None])
    assert (stats.trials, stats.passed, stats.pass_rate, stats.pass_hat_k, stats.pass_at_k, stats.flaky) == \
        (3, 2, 0.6667, False, True, True)
    assert stats.mean_score == 2.0
    none_passed = stats_of(["error", "failed"], [None, 1])
    assert (none_passed.pass_at_k, none_passed.flaky, none_passed.pass_rate) == (False, False, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_a_flaky_scenario_fails_by_default_and_names_its_trials(sim: SimProject, mode: list[str]) -> None:
    sim.server.set_script(_judge_low_on([SEEDS[1]]))
    sim.write_scenarios("s.json", [
        scenario("flaky", trials=3, variables={"SEED": SEED}),
        scenario("tolerant", trials=3, min_pass_rate=0.6, variables={"SEED": SEED}),
        scenario("steady", variables={"SEED": 99}),
    ])
    result = sim.run(*mode, "--llmsim-results=out.json", "-rA")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*scenario 'flaky' failed its trials: 2 of 3 trials passed (pass rate 66.7% < 100.0%; pass^3 no, "
        "pass@3 yes)*",
        f"*trial 2 (seed {SEEDS[1]}): failed, score 1, failed judge, 6 turns, ended by agent*",
        "*trials: 7 conversations, up to 3 per scenario; pass^k 33.3% (every trial passed), pass@k 100.0% "
        "(at least one); flaky: 2 (scenarios/s.json::flaky, scenarios/s.json::tolerant)*",
    ])
    assert sim.server.stats()["requests"] == 7 * 7  # 6 turns + 1 verdict per conversation
    document = _export(sim)
    flaky = _row(document, "flaky")
    assert (flaky["status"], flaky["trials"], flaky["passed_trials"], flaky["failed_trials"]) == ("failed", 3, 2, 1)
    assert (flaky["pass_rate"], flaky["pass_hat_k"], flaky["pass_at_k"], flaky["flaky"]) == (0.6667, False, True,
                                                                                             True)
    assert flaky["trial_scores"] == [3, 1, 3] and flaky["mean_score"] == pytest.approx(2.3333)
    assert [t["seed"] for t in flaky["trial_results"]] == SEEDS
    assert [t["trial"] for t in flaky["trial_results"]] == [1, 2, 3]
    # the conversation shown is the failing trial's
    assert flaky["score"] == 1 and flaky["comment"] == "The agent was rude."
    assert flaky["live_calls"] == 21  # usage of all three trials
    tolerant = _row(document, "tolerant")
    assert (tolerant["status"], tolerant["min_pass_rate"], tolerant["score"]) == ("passed", 0.6, 3)
    steady = _row(document, "steady")
    assert (steady["trials"], steady["trial"], steady["seed"], steady["trial_results"]) == (1, 0, 99, [])
    summary = document["summary"]
    assert (summary["conversations"], summary["max_trials"], summary["pass_hat_k"], summary["pass_at_k"]) == \
        (7, 3, 0.3333, 1.0)
    assert summary["flaky_scenarios"] == ["scenarios/s.json::flaky", "scenarios/s.json::tolerant"]
    # every conversation's score counts: 3 + 1 + 3, 3 + 1 + 3, 3
    assert summary["score_statistics"]["mean"] == pytest.approx(17 / 7, abs=1e-4)
    assert summary["score_distribution"] == {"score_1": 2, "score_2": 0, "score_3": 5}


def test_a_rerun_replays_every_trial_and_the_recordings_are_the_trials(sim: SimProject) -> None:
    sim.server.set_script(_judge_low_on([SEEDS[2]]))
    sim.write_scenarios("s.json", [scenario("a", trials=3, variables={"SEED": SEED})])
    sim.run().assert_outcomes(failed=1)
    folder = sim.path / "recordings" / "scenarios" / "s.json"
    assert sorted(p.name for p in folder.iterdir()) == ["a.json", "a.trial-2.json", "a.trial-3.json"]
    assert json.loads((folder / "a.trial-3.json").read_text())["verdict"]["score"] == 1
    before = sim.server.stats()["requests"]
    again = sim.run("--llmsim-results=again.json", "--llmsim-prune")
    again.assert_outcomes(failed=1)
    assert sim.server.stats()["requests"] == before  # all three trials replayed
    assert "unused" not in again.stdout.str() and len(list(folder.iterdir())) == 3
    row = _row(_export(sim, "again.json"), "a")
    assert row["trial_scores"] == [3, 3, 1] and row["cached_calls"] == 21 and row["live_calls"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_one_item_per_trial_gives_the_same_figures(sim: SimProject, mode: list[str]) -> None:
    sim.server.set_script(_judge_low_on([SEEDS[1]]))
    sim.write_scenarios("s.json", [scenario("flaky", variables={"SEED": SEED}), scenario("b", trials=1)])
    result = sim.run(*mode, "--llmsim-trials=3", "--llmsim-trial-items", "--llmsim-results=items.json", "-v")
    result.assert_outcomes(passed=3, failed=1)
    assert any("s.json::flaky[trial-2]" in line and "FAILED" in line for line in result.outlines)
    items = _export(sim, "items.json")
    rows = {row["nodeid"]: row for row in items["results"]}
    assert rows["scenarios/s.json::flaky[trial-2]"]["seed"] == SEEDS[1]
    assert rows["scenarios/s.json::flaky[trial-2]"]["trial"] == 2
    assert "scenarios/s.json::b" in rows  # trials: 1 in the scenario wins over --llmsim-trials
    # the same trials as one item per scenario: replayed from the same recordings, same summary figures
    before = sim.server.stats()["requests"]
    sim.run(*mode, "--llmsim-trials=3", "--llmsim-results=one.json").assert_outcomes(passed=1, failed=1)
    assert sim.server.stats()["requests"] == before
    one = _export(sim, "one.json")["summary"]
    for key in ("conversations", "max_trials", "pass_hat_k", "pass_at_k", "flaky_scenarios", "score_statistics",
                "score_distribution", "prompt_tokens", "completion_tokens"):
        assert one[key] == items["summary"][key], key


def test_the_pass_hat_k_gate(sim: SimProject) -> None:
    sim.server.set_script(_judge_low_on([SEEDS[1]]))
    sim.write_scenarios("s.json", [scenario("flaky", trials=3, min_pass_rate=0.5, variables={"SEED": SEED}),
                                   scenario("steady", trials=3)])
    missed = sim.run("--llmsim-min-pass-hat-k=0.9", "--llmsim-markdown=summary.md")
    missed.stdout.fnmatch_lines(["*llmsim gate missed: pass^k 50.0% (the share of scenarios whose every one of up "
                                 "to 3 trials passed) is below the minimum 90.0% (llmsim_min_pass_hat_k)*"])
    assert missed.ret == pytest.ExitCode.TESTS_FAILED
    markdown = (sim.path / "summary.md").read_text()
    trials_line = next(line for line in markdown.splitlines() if line.startswith("- **Trials:**"))
    assert "6 conversations" in trials_line and "pass^k 50\\.0%" in trials_line
    met = sim.run("--llmsim-min-pass-hat-k=0.5")
    met.stdout.fnmatch_lines(["*llmsim: all suite gates met*"])
    assert met.ret == pytest.ExitCode.OK


def test_an_errored_trial_makes_the_scenario_an_error_naming_the_trial(sim: SimProject) -> None:
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "EVALUATOR", "seed": SEEDS[2]}, "reply": "no verdict here"},
        *default_script()["rules"]]})
    sim.write_ini(llmsim_judge_attempts="1")  # (a retry would run with another seed)
    sim.write_scenarios("s.json", [scenario("a", trials=3, variables={"SEED": SEED})])
    result = sim.run("--llmsim-results=out.json")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*trial 3 of 3 (seed {SEEDS[2]}): *not a valid verdict*[2 passed, 0 failed, "
                                 "1 errored of 3 trials]*"])
    row = _row(_export(sim), "a")
    assert (row["status"], row["error_kind"], row["pass_rate"], row["pass_hat_k"]) == ("error", "invalid_verdict",
                                                                                      0.6667, False)


def test_csv_and_ndjson_exports_reproduce_the_trial_figures(sim: SimProject) -> None:
    sim.server.set_script(_judge_low_on([SEEDS[1]]))
    sim.write_scenarios("s.json", [scenario("flaky", trials=3, variables={"SEED": SEED}), scenario("steady")])
    sim.run("--llmsim-results=out.json").assert_outcomes(passed=1, failed=1)
    sim.run("--llmsim-results=out.csv")
    sim.run("--llmsim-results=out.ndjson")
    expected = _export(sim)["summary"]
    with (sim.path / "out.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["trial_scores"] == "3;1;3" and rows[0]["flaky"] == "true"
    ndjson = [json.loads(line) for line in (sim.path / "out.ndjson").read_text().splitlines()]
    for records in (rows, ndjson):
        again = summarize(records).to_dict()
        for key in ("conversations", "max_trials", "pass_hat_k", "pass_at_k", "flaky_scenarios", "score_statistics",
                    "score_distribution", "success_rate"):
            assert again[key] == expected[key], key


def test_trials_and_min_pass_rate_are_validated(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("zero", trials=0), scenario("rate", min_pass_rate=1.5),
                                   scenario("ok", trials=2)])
    result = sim.run()
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*'trials': Input should be greater than or equal to 1*",
                                 "*'min_pass_rate': Input should be less than or equal to 1*"])


@pytest.mark.slow
def test_a_baseline_compares_a_scenario_with_trials_by_its_mean_score(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a", trials=3, min_pass_rate=0.5, variables={"SEED": SEED})])
    sim.run("--llmsim-results=base.json").assert_outcomes(passed=1)  # 3, 3, 3
    sim.server.set_script(_judge_low_on([SEEDS[1]]))
    result = sim.run("--llmsim-record=all", "--llmsim-baseline=base.json", "--llmsim-results=new.json",
                     "--llmsim-fail-on-regression", "--llmsim-markdown=md.md", "--html=report.html")
    result.assert_outcomes(passed=1)  # 3, 1, 3: still 2 of 3, but the mean dropped
    baseline = _row(_export(sim, "new.json"), "a")["baseline"]
    assert (baseline["score"], baseline["score_delta"]) == (3.0, -0.6667)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*llmsim gate missed:*score 3.0 -> 2.3333*"])
    assert "-0.6667" in (sim.path / "md.md").read_text() and "-0.6667" in (sim.path / "report.html").read_text()
