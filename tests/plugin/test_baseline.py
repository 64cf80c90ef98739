"""Baselines: this run compared with an earlier export or recordings folder, the baseline gates and the deltas in
the terminal and the exports, through real inner sessions against the scripted server (plus the engine's maths)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProject, default_script, scenario, verdict
from pytest_llmsim.errors import ConfigError
from pytest_llmsim.llm.pricing import PriceTable
from pytest_llmsim.model.results import ModelUsage, Outcome, ScenarioRecord, ScenarioResult, Status
from pytest_llmsim.reporting.baseline import Baseline, compare, load_baseline, regression_gates

MODES = [pytest.param([], id="one-process"), pytest.param(["-n", "2"], id="xdist")]
GATE = "llmsim gate missed: "


def _script(*rules: dict[str, Any]) -> dict[str, Any]:
    """The default script with ``rules`` first (they win over the default ones)."""
    return {"rules": [*rules, *default_script()["rules"]]}


def _judge(name: str, score: int, comment: str) -> dict[str, Any]:
    """The evaluator of scenario ``name`` (only: its prompt is ``EVALUATOR for <name> in English.``) scores."""
    return {"match": {"system_contains": f"EVALUATOR for {name} in"}, "reply": verdict(score, comment)}


def _export(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    document = json.loads(path.read_text(encoding="utf-8"))
    return {row["nodeid"]: row for row in document["results"]}, document["summary"]


def _gate_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stdout.lines if line.startswith(GATE)]


# -- through inner sessions -----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_score_drop_since_a_json_export_is_shown_and_gated(sim: SimProject, mode: list[str]) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("b"), scenario("gone")])
    sim.run(*mode, "--llmsim-results=base.json").assert_outcomes(passed=3)
    sim.server.set_script(_script(_judge("a", 2, "Slower than before.")))
    sim.write_scenarios("s.json", [scenario("a"), scenario("b"), scenario("fresh")])
    # --llmsim-record=all: every call made again, so the judge's new verdict is heard (not the recording's).
    run = [*mode, "--llmsim-record=all", "--llmsim-baseline=base.json"]
    result = sim.run(*run, "--llmsim-results=new.json")
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.OK  # a drop alone changes no exit status without a baseline gate
    result.stdout.fnmatch_lines([
        "changes since the baseline (base.json: 3 scenarios from an export):",
        "  scenarios/s.json::a: regressed: score 3 -> 2 (-1)*",
        "  1 regressed, 0 improved, 0 changed, 1 unchanged, 1 new, 1 missing; mean score 3 -> 2.5 (-0.5) over 2 "
        "scenarios scored in both",
        "  new in this run: scenarios/s.json::fresh",
        "  in the baseline, not in this run: scenarios/s.json::gone",
    ])
    out = result.stdout.str()
    assert "scenarios/s.json::b:" not in out and "transcript changed" not in out  # unchanged: not listed
    assert _gate_lines(result) == []

    rows, summary = _export(sim.path / "new.json")
    assert rows["scenarios/s.json::a"]["baseline"] == {
        "status": "passed", "outcome": "passed", "score": 3, "score_delta": -1, "turns_delta": 0,
        "tokens_delta": rows["scenarios/s.json::a"]["baseline"]["tokens_delta"], "cost_delta_usd": 0.0,
        "transcript_changed": False, "regressed": True, "newly_failing": False, "newly_passing": False}
    assert rows["scenarios/s.json::b"]["baseline"]["regressed"] is False
    assert rows["scenarios/s.json::b"]["baseline"]["score_delta"] == 0
    assert rows["scenarios/s.json::fresh"]["baseline"] is None  # new: nothing to compare
    block = summary["baseline"]
    assert block["path"] == "base.json" and block["source"] == "export"
    assert (block["mean_score_delta"], block["regressed"], block["new"], block["missing"], block["unchanged"]) == (
        -0.5, ["scenarios/s.json::a"], ["scenarios/s.json::fresh"], ["scenarios/s.json::gone"], 1)
    assert block["newly_failing"] == [] and block["newly_passing"] == []
    assert summary["gates"]["fail_on_regression"] is False and summary["gates"]["missed"] == []

    failed = sim.run(*run, "--llmsim-fail-on-regression", "--llmsim-results=gated.json")
    failed.assert_outcomes(passed=3)
    assert failed.ret == pytest.ExitCode.TESTS_FAILED
    line = ("1 scenario regressed since the baseline: scenarios/s.json::a (score 3 -> 2) "
            "(llmsim_fail_on_regression)")
    assert _gate_lines(failed) == [GATE + line]
    _, gated = _export(sim.path / "gated.json")
    assert gated["gates"]["fail_on_regression"] is True and gated["gates"]["missed"] == [line]

    # The mean dropped by 0.5: a drop of 0.5 is allowed, one of 0.25 is not.
    assert sim.run(*run, "--llmsim-max-score-drop=0.5").ret == pytest.ExitCode.OK
    dropped = sim.run(*run, "--llmsim-max-score-drop=0.25")
    assert dropped.ret == pytest.ExitCode.TESTS_FAILED
    assert _gate_lines(dropped) == [
        GATE + "mean score dropped by 0.5 since the baseline (3 -> 2.5 over 2 scenarios scored in both), more than "
        "the allowed 0.25; regressed: scenarios/s.json::a (score 3 -> 2) (llmsim_max_score_drop)"]


@pytest.mark.slow
def test_recordings_folder_baseline_newly_failing_passing_and_transcript_changed(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b"), scenario("c"), scenario("d")])
    sim.run().assert_outcomes(passed=3, failed=1)
    shutil.copytree(sim.path / "recordings", sim.path / "main_recordings")  # e.g. the main branch's checkout
    sim.server.set_script(_script(
        _judge("a", 1, "Rude this time."), _judge("low_b", 3, "Fixed this time."),
        {"match": {"system_contains": "AGENT for c."}, "replies": ["Hi.", "Done, goodbye. [END_CALL]"]},
    ))
    result = sim.run("--llmsim-record=all", "--llmsim-baseline=main_recordings", "--llmsim-results=new.csv",
                     "--llmsim-fail-on-regression")
    result.assert_outcomes(passed=3, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "changes since the baseline (main_recordings: 4 scenarios from recordings):",
        "  scenarios/s.json::a: regressed: score 3 -> 1 (-2), passed -> failed (newly failing)*",
        "  scenarios/s.json::low_b: improved: score 1 -> 3 (+2), failed -> passed (newly passing)*",
        "  scenarios/s.json::c: changed: score 3, turns -2, tokens -*, cost -$*, transcript changed",
        "  1 regressed, 1 improved, 1 changed, 1 unchanged, 0 new, 0 missing; mean score 2.5 -> 2.5 (+0) over 4 "
        "scenarios scored in both",
    ])
    assert "scenarios/s.json::d:" not in result.stdout.str()
    assert _gate_lines(result) == [
        GATE + "1 scenario regressed since the baseline: scenarios/s.json::a (newly failing, score 3 -> 1) "
        "(llmsim_fail_on_regression)"]
    with (sim.path / "new.csv").open(encoding="utf-8", newline="") as handle:
        rows = {row["nodeid"]: row for row in csv.DictReader(handle)}
    assert list(rows["scenarios/s.json::a"])[-5:] == ["baseline_score", "score_delta", "baseline_status",
                                                      "transcript_changed", "regressed"]
    pick = ("baseline_score", "score_delta", "baseline_status", "transcript_changed", "regressed")
    assert [rows["scenarios/s.json::a"][k] for k in pick] == ["3", "-2", "passed", "false", "true"]
    assert [rows["scenarios/s.json::low_b"][k] for k in pick] == ["1", "2", "failed", "false", "false"]
    assert [rows["scenarios/s.json::c"][k] for k in pick] == ["3", "0", "passed", "true", "false"]
    summary = json.loads((sim.path / "new.summary.json").read_text(encoding="utf-8"))
    assert summary["baseline"]["newly_failing"] == ["scenarios/s.json::a"]
    assert summary["baseline"]["newly_passing"] == ["scenarios/s.json::low_b"]
    assert summary["baseline"]["source"] == "recordings" and summary["baseline"]["mean_score_delta"] == 0


@pytest.mark.slow
def test_a_changed_prompt_changes_the_transcript_against_a_recordings_baseline(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run().assert_outcomes(passed=1)
    shutil.copytree(sim.path / "recordings", sim.path / "main_recordings")
    sim.server.set_script(_script({"match": {"system_contains": "AGENT v2"}, "replies": ["Yes?", "Bye. [END_CALL]"]}))
    (sim.path / "prompts" / "agent.j2").write_text("AGENT v2 for {{ scenario_name }}. {{ end_marker }}")
    result = sim.run("--llmsim-baseline=main_recordings", "--llmsim-results=new.ndjson", "-q")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["llmsim baseline main_recordings: 0 regressed, 0 improved, 1 changed, 0 unchanged, "
                                 "0 new, 0 missing; mean score 3 -> 3 (+0) over 1 scenario scored in both"])
    (row,) = [json.loads(line) for line in (sim.path / "new.ndjson").read_text(encoding="utf-8").splitlines()]
    assert row["baseline"]["transcript_changed"] is True and row["baseline"]["turns_delta"] == -2
    assert row["baseline"]["regressed"] is False


@pytest.mark.slow
def test_an_xfailed_scenario_is_not_a_regression(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("x")])
    sim.run("--llmsim-results=base.json").assert_outcomes(passed=2)
    sim.server.set_script(_script(_judge("x", 1, "Known to be bad.")))
    sim.write_scenarios("s.json", [scenario("a"), scenario("x", xfail="known bad")])
    result = sim.run("--llmsim-record=all", "--llmsim-baseline=base.json", "--llmsim-fail-on-regression",
                     "--llmsim-max-score-drop=0", "--llmsim-results=new.json")
    result.assert_outcomes(passed=1, xfailed=1)
    assert result.ret == pytest.ExitCode.OK and _gate_lines(result) == []
    result.stdout.fnmatch_lines([
        "  scenarios/s.json::x: changed: score 3 -> 1 (-2), passed -> failed, xfailed: not counted*",
        # the xfailed scenario's score is left out of the mean, as in the run's own mean score
        "  0 regressed, 0 improved, 1 changed, 1 unchanged, 0 new, 0 missing; mean score 3 -> 3 (+0) over 1 "
        "scenario scored in both",
        "llmsim: all suite gates met",
    ])
    rows, summary = _export(sim.path / "new.json")
    assert rows["scenarios/s.json::x"]["baseline"]["regressed"] is False
    assert rows["scenarios/s.json::x"]["baseline"]["newly_failing"] is False
    assert summary["baseline"]["regressed"] == []


@pytest.mark.slow
def test_baseline_gates_are_not_checked_for_a_partial_run(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    sim.run("--llmsim-results=base.json").assert_outcomes(passed=2)
    sim.server.set_script(_script(_judge("a", 1, "The agent was rude.")))
    result = sim.run("-x", "--llmsim-record=all", "--llmsim-baseline=base.json", "--llmsim-fail-on-regression")
    result.assert_outcomes(failed=1)
    assert _gate_lines(result) == []
    result.stdout.fnmatch_lines(["  scenarios/s.json::a: regressed: *", "*1 missing*",
                                 "llmsim: suite gates not checked: 1 scenario did not finish"])


def test_baseline_gates_without_a_baseline_are_a_note(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("--llmsim-fail-on-regression", "--llmsim-results=r.csv")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["llmsim: baseline gates (llmsim_fail_on_regression, llmsim_max_score_drop, "
                                 "llmsim_fail_on_significant_regression) not checked: no baseline given "
                                 "(--llmsim-baseline)"])
    assert "changes since the baseline" not in result.stdout.str()
    header = (sim.path / "r.csv").read_text(encoding="utf-8").splitlines()[0]
    assert "baseline" not in header  # today's CSV columns without a baseline
    sim.run("--llmsim-results=r.json")
    rows, summary = _export(sim.path / "r.json")
    assert rows["scenarios/s.json::a"]["baseline"] is None and summary["baseline"] is None


def _bad_recording(sim: SimProject, fields: str = '"nodeid": 3') -> str:
    folder = sim.path / "main_recordings" / "scenarios" / "s.json"
    folder.mkdir(parents=True)
    if '"nodeid"' not in fields:
        fields = f'"nodeid": "scenarios/s.json::a", "scenario": "a", {fields}'
    (folder / "a.json").write_text(f'{{"llmsim_recording": 1, {fields}}}', encoding="utf-8")
    return "main_recordings"


@pytest.mark.parametrize(("make", "message"), [
    (lambda sim: "nowhere.json", "llmsim_baseline */nowhere.json does not exist; give a JSON export *"),
    (lambda sim: (sim.path / "x.json").write_text("{not json") and "x.json",
     "llmsim_baseline */x.json is not valid JSON (line 1, column 2: *"),
    (lambda sim: (sim.path / "x.json").write_text('{"summary": {}}') and "x.json",
     'llmsim_baseline */x.json is not a pytest-llmsim JSON export (no "results" list)*'),
    (lambda sim: (sim.path / "x.json").write_text('{"results": [{"nodeid": "a", "trial": "high"}]}') and "x.json",
     "llmsim_baseline */x.json: results[[]0] (a) cannot be read: invalid literal for int() *"),
    (lambda sim: (sim.path / "x.json").write_text('{"results": [{"nodeid": "a", "score": 99}]}') and "x.json",
     "llmsim_baseline */x.json: results[[]0] (a): field 'score' is 99, not a score from 1 to 3 or null; *"),
    (lambda sim: (sim.path / "x.json").write_text(
        '{"results": [{"nodeid": "a", "score": 2, "trial_results": [{"score": 2.5}, {"score": 0}]}]}') and "x.json",
     "llmsim_baseline */x.json: results[[]0] (a): field 'trial_results[[]1].score' is 0, not a score from 1 to 3*"),
    (lambda sim: (sim.path / "x.json").write_text(
        '{"results": [{"nodeid": "a", "usage": [{"role": "agent", "model": "m", "prompt_tokens": -5}]}]}')
     and "x.json",
     "llmsim_baseline */x.json: results[[]0] (a): field 'usage[[]0].prompt_tokens' is -5, not a non-negative integer*"),
    (lambda sim: (sim.path / "x.json").write_text('{"results": [{"nodeid": "a", "cost_usd": -5}]}') and "x.json",
     "llmsim_baseline */x.json: results[[]0] (a): field 'cost_usd' is -5, not a non-negative number of USD*"),
    (lambda sim: (sim.path / "x.json").write_text('{"results": [{"nodeid": "a", "saved_cost_usd": NaN}]}')
     and "x.json", "llmsim_baseline */x.json: results[[]0] (a): field 'saved_cost_usd' is nan, not a non-negative *"),
    (lambda sim: (sim.path / "x.json").write_text(
        json.dumps({"results": [{"nodeid": n, "scenario": n, "source": "s", "status": "passed", "score": score}
                                for n, score in (("a", 1), ("b", 3), ("a", 3))]})) and "x.json",
     "llmsim_baseline */x.json: results[[]2] (a): the node id is also results[[]0]'s; an export has one row per *"),
    (lambda sim: _bad_recording(sim, '"verdict": {"status": "passed", "score": 99}'),
     "llmsim_baseline */main_recordings: bad recording file: llmsim recording */a.json: verdict.score is 99, not a "
     "score from 1 to 3*"),
    (lambda sim: (sim.path / "empty").mkdir() or "empty", "llmsim_baseline */empty is a directory with no recording*"),
    (_bad_recording, "llmsim_baseline */main_recordings: bad recording file: llmsim recording */a.json: nodeid is "
                     "not a str*"),
], ids=["missing", "bad-json", "not-an-export", "bad-row", "score-99", "trial-score-0", "negative-tokens",
        "negative-cost", "nan-cost", "duplicate-nodeid", "recording-score-99", "empty-folder", "bad-recording"])
def test_a_bad_baseline_is_a_one_line_usage_error(sim: SimProject, make: Any, message: str) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run(f"--llmsim-baseline={make(sim)}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1, errors
    result.stderr.fnmatch_lines([f"ERROR: llmsim: {message}"])
    assert sim.server.stats()["requests"] == 0  # nothing ran


# -- the engine -----------------------------------------------------------------------------------------------
def _record(name: str, score: int | None, *, outcome: str | None = None, text: str = "ok", min_score: int = 2,
            tokens: int = 100) -> ScenarioRecord:
    status = Status.ERROR if score is None else Status.PASSED if score >= min_score else Status.FAILED
    usage = ModelUsage("agent", "gpt-4o-mini")
    usage.add(tokens, 10, cached=False)
    result = ScenarioResult(name, f"s.json::{name}", "s.json", status, min_score, score=score,
                            transcript=[{"role": "client", "text": "hi"}, {"role": "agent", "text": text}],
                            usage=[usage])
    return ScenarioRecord(result, Outcome(outcome or status.value), cost_usd=0.001)


def _baseline(*records: ScenarioRecord) -> Baseline:
    return Baseline(Path("base.json"), "export", {r.nodeid: r for r in records})


def test_compare_deltas_in_run_order_new_missing_and_mean() -> None:
    old = _baseline(_record("a", 3), _record("b", 2), _record("c", 1), _record("gone", 3), _record("e", 3))
    run = [_record("c", 3), _record("a", 1), _record("b", 2, text="changed", tokens=150), _record("new", 3),
           _record("e", None)]
    comparison = compare(run, old)
    assert [d.nodeid for d in comparison.deltas] == ["s.json::c", "s.json::a", "s.json::b", "s.json::new",
                                                     "s.json::e"]
    c, a, b, new, e = comparison.deltas
    assert (c.label, c.newly_passing, c.score_delta) == ("improved", True, 2)
    assert (a.label, a.newly_failing, a.score_delta) == ("regressed", True, -2)
    assert (b.label, b.transcript_changed, b.tokens_delta, b.turns_delta) == ("changed", True, 50, 0)
    assert (new.label, new.to_dict()) == ("new", None)
    assert (e.label, e.newly_failing, e.score_delta) == ("regressed", True, None)  # passed -> error
    assert comparison.new == ["s.json::new"] and comparison.missing == ["s.json::gone"]
    assert (comparison.old_mean_score, comparison.new_mean_score, comparison.mean_score_delta) == (2, 2, 0)
    assert comparison.counts() == {"regressed": 2, "improved": 1, "changed": 1, "unchanged": 0, "new": 1,
                                   "missing": 1}
    lines = regression_gates(comparison, fail_on_regression=True, max_score_drop=None)
    assert lines == ["2 scenarios regressed since the baseline: s.json::a (newly failing, score 3 -> 1), s.json::e "
                     "(newly failing with an error, score 3 -> -) (llmsim_fail_on_regression)"]
    assert regression_gates(comparison, fail_on_regression=False, max_score_drop=0) == []  # mean unchanged


def test_gates_name_at_most_ten_scenarios_and_an_unscored_run_misses_the_drop_gate() -> None:
    old = _baseline(*(_record(f"s{i}", 3) for i in range(12)))
    comparison = compare([_record(f"s{i}", None) for i in range(12)], old)
    assert comparison.mean_score_delta is None
    regressed, drop = regression_gates(comparison, fail_on_regression=True, max_score_drop=1)
    assert regressed.startswith("12 scenarios regressed since the baseline: s.json::s0 (newly failing with an ")
    assert regressed.endswith(", s.json::s9 (newly failing with an error, score 3 -> -) and 2 more "
                              "(llmsim_fail_on_regression)")
    assert drop.startswith("mean score: none of the 12 scenarios scored in the baseline was scored in this run")


def test_xfailed_and_skipped_never_regress() -> None:
    old = _baseline(_record("x", 3), _record("s", 3))
    skipped = ScenarioRecord(ScenarioResult("s", "s.json::s", "s.json", Status.SKIPPED, None), Outcome.SKIPPED)
    comparison = compare([_record("x", 1, outcome="xfailed"), skipped], old)
    x, s = comparison.deltas
    assert (x.regressed, x.newly_failing, x.score_delta, x.label) == (False, False, -2, "changed")
    assert (s.regressed, s.turns_delta, s.tokens_delta, s.label) == (False, None, None, "changed")
    assert comparison.mean_score_delta is None
    assert regression_gates(comparison, fail_on_regression=True, max_score_drop=0) == []


@pytest.mark.slow
def test_load_baseline_reads_exports_and_names_what_is_wrong(tmp_path: Path) -> None:
    rows = [_record("a", 3).to_dict(), _record("b", 1).to_dict()]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"results": rows, "complete": False, "summary": {"interrupted": True}}))
    baseline = load_baseline(path, PriceTable.default())
    assert list(baseline.records) == ["s.json::a", "s.json::b"] and baseline.partial
    ndjson = tmp_path / "run.ndjson"
    ndjson.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert list(load_baseline(ndjson, PriceTable.default()).records) == ["s.json::a", "s.json::b"]
    ndjson.write_text("{}\n")
    with pytest.raises(ConfigError, match=r"run\.ndjson: line 1 is not a scenario record \(no nodeid\)$"):
        load_baseline(ndjson, PriceTable.default())
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_baseline(path, PriceTable.default())


def _trials(name: str, scores: list[int], *, min_score: int = 2) -> ScenarioRecord:
    """A scenario run as trials that failed (its pass rate below its minimum), its trials scored ``scores``."""
    trials = [{"status": "passed" if s >= min_score else "failed", "score": s} for s in scores]
    result = ScenarioResult(name, f"s.json::{name}", "s.json", Status.FAILED, min_score, score=scores[0],
                            trials=trials)
    return ScenarioRecord(result, Outcome.FAILED)


def test_which_failures_are_known_failures_on_the_baseline() -> None:
    """--llmsim-gate=regressions: failed on the baseline too, no drop of a point or below the minimum (trial
    means with trials), the score kept; an error, a new scenario or one that passed or errored there: never."""
    from pytest_llmsim.reporting.baseline import known_failure_reason

    def known(new: ScenarioRecord, old: ScenarioRecord | None) -> str | None:
        return known_failure_reason(new.result, old, "base.json")

    assert known(_record("a", 1), _record("a", 1)) == \
        "known failure on the baseline (base.json): failed there too, score 1 -> 1"
    assert known(_record("a", 2, min_score=3), _record("a", 2, min_score=3)) is not None
    assert known(_record("a", 1, min_score=3), _record("a", 2, min_score=3)) is None  # dropped a point
    assert known(_record("a", 1), _record("a", 3)) is None  # passed there: newly failing
    assert known(_record("a", 1), None) is None  # not in the baseline
    assert known(_record("a", 1), _record("a", None)) is None  # errored there
    assert known(_record("a", None), _record("a", 1)) is None  # an error now: never hidden
    # Trials: the means of the trials' scores. 2.5 -> 2.0 is half a point and stays at the minimum 2: known;
    # 2.5 -> 1.75 crosses the minimum; 2.0 -> 1.0 drops a point.
    assert known(_trials("t", [3, 2, 2, 3]), _trials("t", [3, 2, 2, 3])) is not None
    assert known(_trials("t", [2, 2, 2, 2]), _trials("t", [3, 2, 2, 3])) == \
        "known failure on the baseline (base.json): failed there too, score 2.5 -> 2"
    assert known(_trials("t", [2, 2, 2, 1]), _trials("t", [3, 2, 2, 3])) is None
    assert known(_trials("t", [1, 1, 1, 1]), _trials("t", [2, 2, 2, 2])) is None
