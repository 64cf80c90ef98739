"""--llmsim-history and the significance gate, through real inner sessions against the scripted server: a run is
appended once (xdist too), an interrupted one as interrupted; a store that cannot be used is one warning and the
verdicts and exit status stand; the gate fails only on significant drops; the markdown summary says so."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProject, default_script, scenario
from pytest_llmsim.history.store import HistoryStore

GATE = "llmsim gate missed: "
NAMES = [f"case_{n:02d}" for n in range(12)]


def _judge_all(score: int) -> dict[str, Any]:
    comment = "Polite and complete answer." if score == 3 else "The agent got the order wrong."
    blame = None if score >= 2 else "agent"
    import json

    reply = json.dumps({"score": score, "comment": comment, "blame": blame})
    return {"rules": [{"match": {"system_contains": "EVALUATOR"}, "reply": reply}, *default_script()["rules"]]}


def _judge_one_low(name: str) -> dict[str, Any]:
    import json

    low = json.dumps({"score": 1, "comment": "The agent got the order wrong.", "blame": "agent"})
    return {"rules": [{"match": {"system_contains": f"EVALUATOR for {name} in"}, "reply": low},
                      *default_script()["rules"]]}


@pytest.mark.slow
@pytest.mark.parametrize("mode", [pytest.param([], id="one-process"), pytest.param(["-n", "2"], id="xdist")])
def test_each_run_is_appended_once_with_its_records_and_settings(sim: SimProject, mode: list[str]) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    first = sim.run(*mode, "--llmsim-history=h.sqlite", "--llmsim-trials=2")
    first.assert_outcomes(passed=1, failed=1)
    first.stdout.fnmatch_lines(["llmsim: run * (2 records) appended to the history *h.sqlite"])
    sim.run(*mode, "--llmsim-history=h.sqlite", "--llmsim-trials=2").assert_outcomes(passed=1, failed=1)
    store = HistoryStore(sim.path / "h.sqlite")
    runs = store.runs()
    assert [(run.status, run.source, run.scenarios) for run in runs] == [("completed", "pytest", 2)] * 2
    assert runs[0].git_commit is None  # the pytester folder is no repository
    assert runs[0].settings is not None and runs[0].settings["llmsim_trials"] == 2
    assert runs[0].settings["models"]["evaluator"] == ["gpt-4o-mini"]
    assert runs[0].summary is not None and runs[0].summary["total_scenarios"] == 2
    records = {record.nodeid: record for record in store.records(runs[1].run_id)}
    low = records["scenarios/s.json::low_b"]
    assert low.result.transcript and low.result.comment == "The agent was rude."
    assert len(low.result.trials) == 2 and low.result.usage


def test_an_interrupted_run_is_stored_as_interrupted(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.pytester.makepyfile(test_zz_stop="def test_stop():\n    raise KeyboardInterrupt\n")
    result = sim.run("--llmsim-history=h.sqlite", subprocess=True)  # the Ctrl-C must not reach this session
    assert result.ret == pytest.ExitCode.INTERRUPTED
    [run] = HistoryStore(sim.path / "h.sqlite").runs()
    assert run.status == "interrupted" and run.scenarios == 1


@pytest.mark.parametrize("damage", ["corrupt", "newer", "unwritable"])
def test_a_store_that_cannot_be_used_is_one_warning_and_the_verdicts_stand(sim: SimProject, damage: str) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    target = "h.sqlite"
    if damage == "corrupt":
        (sim.path / target).write_bytes(b"garbage, not sqlite " * 200)
    elif damage == "newer":
        sim.run(f"--llmsim-history={target}").assert_outcomes(passed=2)
        with sqlite3.connect(sim.path / target) as db:
            db.execute("UPDATE schema_version SET version = 7")
    else:
        (sim.path / "blocker").write_text("a file, not a folder")
        target = "blocker/h.sqlite"
    result = sim.run(f"--llmsim-history={target}", "-q")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    warnings = [line for line in result.stdout.lines if line.startswith("llmsim: warning:")]
    assert len(warnings) == 1, result.stdout.str()
    expected = {"corrupt": "not a readable SQLite history", "newer": "schema version 7, newer than",
                "unwritable": "cannot write it"}[damage]
    assert expected in warnings[0] and warnings[0].endswith("(the run's verdicts stand)")


@pytest.mark.slow
def test_the_significance_gate_fails_only_on_significant_drops(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario(name) for name in NAMES])
    sim.run("--llmsim-results=base.json", "--llmsim-history=h.sqlite").assert_outcomes(passed=12)
    again = ["--llmsim-record=all", "--llmsim-baseline=base.json", "--llmsim-history=h.sqlite"]

    # One scenario of twelve fails: a regression for the strict gate, not a significant drop.
    sim.server.set_script(_judge_one_low("case_03"))
    one = sim.run(*again, "--llmsim-fail-on-significant-regression", "--llmsim-markdown=one.md")
    one.assert_outcomes(passed=11, failed=1)
    assert [line for line in one.stdout.lines if line.startswith(GATE)] == []
    one.stdout.fnmatch_lines(["llmsim: statistics: pass rate 1.00 -> 0.92 (-0.08, 95% interval *, p = 1); mean "
                              "score 3.00 -> 2.83 (-0.17, 95% interval *, p = 1); paired exact sign-flip permutation "
                              "test over 12 scenarios, alpha 0.05; per scenario (Fisher, Benjamini-Hochberg): 0 "
                              "significantly worse, 0 better"])
    strict = sim.run(*again, "--llmsim-fail-on-regression")
    assert [line for line in strict.stdout.lines if line.startswith(GATE)] != []

    # Every scenario fails: p = 2/4096 on the pass rate, a significant drop.
    sim.server.set_script(_judge_all(1))
    drop = sim.run(*again, "--llmsim-fail-on-significant-regression=0.01", "--llmsim-markdown=drop.md")
    drop.assert_outcomes(failed=12)
    gates = [line for line in drop.stdout.lines if line.startswith(GATE)]
    assert any(line.startswith(GATE + "pass rate 1.000 -> 0.000 (-1.000, 95% interval") and
               "exact sign-flip permutation test p = 0.0005" in line and
               line.endswith("(llmsim_fail_on_significant_regression)") for line in gates), gates
    markdown = (sim.path / "drop.md").read_text(encoding="utf-8")
    assert "Statistics: pass rate 1\\.00 \\-&gt; 0\\.00 \\(\\-1\\.00, 95% interval" in markdown
    assert "p = 0\\.0005, significant\\)" in markdown
    flaky = markdown.split("### Flaky scenarios \\(last 20 runs of the history\\)", 1)[1].split("###", 1)[0]
    assert "case\\_03\\: passed 1 of the last 4 runs \\(25%\\), 1 flip\\(s\\), failing since run" in flaky
    assert "case\\_00\\: passed 3 of the last 4 runs" in flaky
    runs = HistoryStore(sim.path / "h.sqlite").runs()
    assert len(runs) == 4 and runs[-1].summary is not None
    assert runs[-1].summary["baseline"]["statistics"]["suite"][0]["significant"] is True


def test_the_gate_without_a_baseline_is_a_note_and_a_bad_alpha_a_usage_error(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    unchecked = sim.run("--llmsim-fail-on-significant-regression")
    assert unchecked.ret == pytest.ExitCode.OK
    unchecked.stdout.fnmatch_lines(["*baseline gates (*llmsim_fail_on_significant_regression) not checked: no "
                                    "baseline given (--llmsim-baseline)"])
    bad = sim.run("--llmsim-fail-on-significant-regression=0.9")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*llmsim_fail_on_significant_regression (--llmsim-fail-on-significant-regression) "
                              "must be between 0.0001 and 0.5, got 0.9*"])


def test_history_path_is_a_path_option(tmp_path: Path) -> None:
    from pytest_llmsim.config.options import ROWS

    assert ROWS["llmsim_history"].kind == "path" and ROWS["llmsim_history"].flag == "--llmsim-history"
