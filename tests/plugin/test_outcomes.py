"""The llmsim totals count what pytest counts: skipped, xfailed and xpassed scenarios are not failures.

Through real inner sessions (terminal, JSON export, pytest-html summary against ``assert_outcomes``) and, for
the collector and the terminal renderer, as plain functions over records (no pytest session).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import SimProject, scenario
from pytest_llmsim.errors import ErrorKind, LlmsimError
from pytest_llmsim.llm.pricing import PriceTable, ScenarioCost
from pytest_llmsim.model.results import ModelUsage, Outcome, ScenarioResult, Status
from pytest_llmsim.reporting.collector import RecordCollector, report_outcome
from pytest_llmsim.reporting.summary import Gates, make_record, missed_gates, summarize
from pytest_llmsim.reporting.terminal import summary_lines, totals_line

MODES = [pytest.param([], id="one-process"), pytest.param(["-n", "2"], id="xdist")]

# One of each pytest outcome: passed, failed, error (invalid scenario), skipped, xfailed (scores 1 under an
# xfail mark), xpassed (scores 3 under an xfail mark; a failure under xfail_strict).
MIX = [scenario("a"), scenario("low_b"), scenario("broken", min_score=7), scenario("not_today", skip="later"),
       scenario("low_x", xfail="known bad"), scenario("a_xp", xfail=True)]
SUMMARY_KEYS = {"passed": "successful_scenarios", "failed": "failed_scenarios", "errors": "errored_scenarios",
                "skipped": "skipped_scenarios", "xfailed": "xfailed_scenarios", "xpassed": "xpassed_scenarios"}
WORDS = {"passed": "passed", "failed": "failed", "errors": "errored", "skipped": "skipped", "xfailed": "xfailed",
         "xpassed": "xpassed"}


def _counts_text(outcomes: dict[str, int]) -> str:
    """The llmsim counts phrase for pytest's outcomes: passed/failed/errored always, the others when non-zero."""
    parts = [f"{outcomes.get(key, 0)} {WORDS[key]}" for key in ("passed", "failed", "errors")]
    parts += [f"{outcomes[key]} {WORDS[key]}" for key in ("skipped", "xfailed", "xpassed") if outcomes.get(key)]
    return ", ".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strict", [pytest.param([], id="xfail"), pytest.param(["-o", "xfail_strict=true"],
                                                                               id="xfail-strict")])
def test_llmsim_totals_agree_with_pytest_outcomes(sim: SimProject, mode: list[str], strict: list[str]) -> None:
    sim.write_scenarios("s.json", MIX)
    result = sim.run(*mode, *strict, "--llmsim-results=r.json", "--html=report.html")
    expected = {"passed": 1, "failed": 1, "errors": 1, "skipped": 1, "xfailed": 1, "xpassed": 1}
    if strict:  # pytest counts a strict XPASS as a failure
        expected.update(failed=2, xpassed=0)
    result.assert_outcomes(**expected)

    document = json.loads((sim.path / "r.json").read_text(encoding="utf-8"))
    summary = document["summary"]
    assert {key: summary[name] for key, name in SUMMARY_KEYS.items()} == expected
    assert summary["total_scenarios"] == 6 == document["total_results"]
    passing = expected["passed"] + expected["xpassed"]
    counted = passing + expected["failed"] + expected["errors"]
    assert summary["success_rate"] == round(passing / counted, 4)
    # Scores that count: a 3, low_b 1, a_xp 3; low_x's 1 is xfailed and does not move the mean.
    assert summary["score_statistics"]["mean"] == 2.3333
    assert summary["score_distribution"] == {"score_1": 1, "score_2": 0, "score_3": 2}
    assert document["interrupted"] is False and document["complete"] is True
    by_name = {r["scenario"]: r for r in document["results"]}
    assert {n: (r["status"], r["outcome"]) for n, r in by_name.items()} == {
        "a": ("passed", "passed"), "low_b": ("failed", "failed"), "broken": ("error", "error"),
        "not_today": ("skipped", "skipped"), "low_x": ("failed", "xfailed"),
        "a_xp": ("passed", "failed" if strict else "xpassed"),
    }
    assert by_name["not_today"]["comment"] == "later" and by_name["not_today"]["total_turns"] == 0

    counts = _counts_text(expected)
    rate = f"{passing / counted:.1%}"
    result.stdout.fnmatch_lines([f"scenarios: 6 ({counts}), pass rate {rate}"])
    page = (sim.path / "report.html").read_text(encoding="utf-8")
    assert f"6 ({counts})" in page and f"<td>{rate}</td>" in page

    quiet = sim.run(*mode, *strict, "-q")
    quiet.assert_outcomes(**expected)
    line = next(line for line in quiet.stdout.lines if line.startswith("llmsim: "))
    assert line.startswith(f"llmsim: 6 scenarios, {counts}, pass rate {rate}, mean score 2.3333,"), line


@pytest.mark.slow
def test_xfailed_and_skipped_scenarios_are_not_failures_in_the_table(sim: SimProject) -> None:
    sim.write_scenarios("s.json", MIX)
    result = sim.run()
    result.stdout.re_match_lines([
        r"scenarios/s\.json::not_today\s+-\s+0\s+\$0\.000000\s+skipped$",
        r"scenarios/s\.json::low_x\s+1 \(min 2\)\s+6\s+\$\d+\.\d{6}\s+xfailed \(score below min\)$",
        r"scenarios/s\.json::a_xp\s+3 \(min 2\)\s+6\s+\$\d+\.\d{6}\s+xpassed$",
    ])


# -- the collector and the renderer, without a pytest session ---------------------------------------------------
def _report(nodeid: str, when: str, outcome: str, data: dict[str, Any] | None = None, **extra: Any) -> Any:
    fields = {"keywords": {"llmsim": 1}, "longreprtext": "boom", "longrepr": None, **extra}
    report = SimpleNamespace(nodeid=nodeid, when=when, outcome=outcome, passed=outcome == "passed",
                             failed=outcome == "failed", skipped=outcome == "skipped", **fields)
    if data is not None:
        report.llmsim = data
    return report


def _data(name: str, status: Status, score: int | None) -> dict[str, Any]:
    usage = ModelUsage("agent", "gpt-4o-mini")
    usage.add(100, 10, cached=False)
    return ScenarioResult(name, f"s.json::{name}", "s.json", status, 2, score=score, usage=[usage]).to_dict()


def test_collector_counts_each_report_as_pytest_does() -> None:
    collector = RecordCollector(PriceTable.default(), run_id="run-1")
    ids = [f"s.json::{n}" for n in ("a", "b", "c", "d", "e", "f", "g", "h")]
    collector.expect([*ids, "test_x.py::test_plain"], ids)
    reports = [
        _report(ids[0], "call", "passed", _data("a", Status.PASSED, 3)),
        _report(ids[1], "call", "failed", _data("b", Status.FAILED, 1)),
        _report(ids[2], "setup", "failed"),  # invalid scenario: no conversation
        _report(ids[3], "setup", "skipped", longrepr=("s.json", 0, "Skipped: later")),
        _report(ids[4], "call", "skipped", _data("e", Status.FAILED, 1), wasxfail="known bad"),
        _report(ids[5], "call", "passed", _data("f", Status.PASSED, 3), wasxfail=""),
        _report(ids[6], "setup", "skipped", wasxfail="[NOTRUN] not run"),  # xfail(run=False)
        _report("test_x.py::test_plain", "call", "failed", keywords={}),  # not a scenario: no record
    ]
    for report in reports:
        collector.add_report(report)
        collector.add_report(_report(report.nodeid, "teardown", "passed"))
    records = collector.ordered()
    assert [(r.scenario, r.status, r.outcome) for r in records] == [
        ("a", Status.PASSED, Outcome.PASSED), ("b", Status.FAILED, Outcome.FAILED),
        ("c", Status.ERROR, Outcome.ERROR), ("d", Status.SKIPPED, Outcome.SKIPPED),
        ("e", Status.FAILED, Outcome.XFAILED), ("f", Status.PASSED, Outcome.XPASSED),
        ("g", Status.SKIPPED, Outcome.XFAILED),
    ]
    assert records[2].error_kind == ErrorKind.SCENARIO and records[3].result.comment == "later"
    assert {r.run_id for r in records} == {"run-1"}
    assert collector.unfinished == 1  # h never reported
    summary = collector.summary(interrupted=True, final=True)
    assert (summary.total_scenarios, summary.successful_scenarios, summary.failed_scenarios,
            summary.errored_scenarios, summary.skipped_scenarios, summary.xfailed_scenarios,
            summary.xpassed_scenarios) == (7, 1, 1, 1, 1, 2, 1)
    assert summary.success_rate == 0.5 and summary.interrupted and summary.unfinished_scenarios == 1
    # A crashed xdist worker's report (phase "???") is a failure for pytest, and so here.
    assert report_outcome(_report("s.json::z", "???", "failed")) == Outcome.FAILED
    # pytest-rerunfailures' "rerun" is not final: no record until the attempt that counts.
    assert collector.add_report(_report(ids[7], "call", "rerun", _data("h", Status.FAILED, 1))) is None
    assert collector.unfinished == 1


def _records(*specs: tuple[str, Status, int | None, Outcome]) -> list[Any]:
    return [make_record(ScenarioResult(n, f"s.json::{n}", "s.json", st, 2, score=sc), ScenarioCost(),
                        run_id="r", outcome=o) for n, st, sc, o in specs]


def test_renderer_lines_without_pytest() -> None:
    records = _records(("a", Status.PASSED, 3, Outcome.PASSED), ("x", Status.FAILED, 1, Outcome.XFAILED),
                       ("s", Status.SKIPPED, None, Outcome.SKIPPED))
    summary = summarize(records)
    gates = Gates(min_mean_score=2.5, min_pass_rate=1.0)
    lines = summary_lines(records, summary, gates=gates, missed=missed_gates(summary, gates), verbosity=0)
    texts = [line.text for line in lines]
    assert texts[0] == "llmsim summary" and lines[0].markup == {"separator": True}
    assert "scenarios: 3 (1 passed, 0 failed, 0 errored, 1 skipped, 1 xfailed), pass rate 100.0%" in texts
    assert "scores: mean 3, median 3, std 0, min 3, max 3; distribution 1: 0, 2: 0, 3: 1" in texts
    assert texts[-1] == "llmsim: all suite gates met"
    assert not any(line.markup.get("red") for line in lines)  # nothing failed
    quiet = summary_lines(records, summary, gates=gates, missed=[], verbosity=-1)
    assert [line.text for line in quiet] == [totals_line(summary)]


def test_partial_run_is_flagged_and_gates_are_not_checked() -> None:
    records = _records(("a", Status.PASSED, 3, Outcome.PASSED), ("b", Status.FAILED, 1, Outcome.FAILED))
    summary = summarize(records, interrupted=True, unfinished=48)
    assert not summary.complete and summary.to_dict()["interrupted"] is True
    assert missed_gates(summary, Gates(min_pass_rate=1.0)) == []
    texts = [line.text for line in summary_lines(records, summary, gates=Gates(min_pass_rate=1.0), missed=[],
                                                 verbosity=0)]
    assert ("llmsim: run interrupted: 48 of 50 scenarios did not finish; the totals cover the 2 that did "
            "(exports say so: interrupted=true, unfinished_scenarios=48)") in texts
    assert "llmsim: suite gates not checked: the run was interrupted" in texts
    assert totals_line(summary).endswith(", INTERRUPTED: 48 did not finish")


def test_every_engine_error_kind_is_an_error_kind() -> None:
    def kinds(cls: type[LlmsimError]) -> set[str]:
        return {cls.kind}.union(*(kinds(sub) for sub in cls.__subclasses__()))

    assert kinds(LlmsimError) <= {str(kind) for kind in ErrorKind}
    assert ErrorKind.parse("something_new") == ErrorKind.ERROR and ErrorKind.parse("") is None


def test_html_summary_counts_by_outcome(tmp_path: Path) -> None:
    from pytest_llmsim.reporting.html import summary_html

    records = _records(("a", Status.PASSED, 3, Outcome.PASSED), ("x", Status.FAILED, 1, Outcome.XFAILED))
    text = html.unescape(re.sub(r"<[^>]+>", " ", summary_html(summarize(records), Gates(), [])))
    assert "2 (1 passed, 0 failed, 0 errored, 1 xfailed)" in text and "100.0%" in text


def test_an_xfail_scenario_that_errors_is_an_error_not_an_expected_failure(sim: SimProject) -> None:
    """xfail expects a low score; a conversation that never happened (endpoint error) is still an error."""
    sim.server.set_script({"rules": [{"match": {"system_contains": "AGENT"}, "status": 401},
                                     *sim.server._script["rules"]]})
    sim.write_scenarios("s.json", [scenario("low_x", xfail="known bad"), scenario("low_y", xfail=True)])
    result = sim.run()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*HTTP 401*"])
