"""Every report shows a scenario's metrics (``ScenarioResult.metrics``): failure text, JUnit text and properties,
the pytest-html chips, the exports and the markdown summary. Pure functions, no inner pytest session."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_llmsim.model.results import ModelUsage, Outcome, ScenarioRecord, ScenarioResult
from pytest_llmsim.plugin import hooks as plugin
from pytest_llmsim.plugin.items import _failure_text
from pytest_llmsim.reporting.exports import render_csv, write_results
from pytest_llmsim.reporting.html import STYLE, metric_chip, scenario_html
from pytest_llmsim.reporting.markdown import record_block, render_markdown
from pytest_llmsim.reporting.summary import RECORD_FIELDS, Gates, summarize
from pytest_llmsim.reporting.terminal import (
    failure_headline,
    metric_line,
    metric_score_text,
    metrics_cell,
    progress_word,
    record_text,
    status_text,
)

HOSTILE = "<script>alert(\"x\")</script> & 'quotes'"
JUDGE_FAILED = {"name": "judge", "score": 1, "passed": False, "reason": "The agent was rude.",
                "details": {"min_score": 2, "attempts": 1}}
JUDGE_PASSED = {"name": "judge", "score": 3, "passed": True, "reason": "Great.", "details": {"min_score": 2}}
RULES_FAILED = {"name": "rules", "score": 0.5, "passed": False,
                "reason": "not_contains 'refund' found in agent turn 4", "details": {"rules": []}}
ROUGE_PASSED = {"name": "rouge", "score": 0.4123, "passed": True, "reason": "rougeL F1 0.41 >= 0.3", "details": {}}
CRITERIA_FAILED = {"name": "criteria", "score": 2 / 3, "passed": False,
                   "reason": "'confirms the delivery date' not met: no date given", "details": {}}
TONE_INFO = {"name": "tone", "score": 0.8, "passed": None, "reason": "friendly\nand calm", "details": {}}
TRANSCRIPT = [{"role": "client", "text": "Where is my order?"}, {"role": "agent", "text": "No refund for you."}]


def _result(metrics: list[dict[str, Any]], *, status: str = "failed", score: int | None = 1,
            comment: str = "The agent was rude.", min_score: int | None = 2) -> ScenarioResult:
    usage = ModelUsage("agent", "gpt-4o-mini")
    usage.add(100, 10, cached=False)
    return ScenarioResult("a", "s.json::a", "s.json", status, min_score, score=score, comment=comment,
                          transcript=[dict(t) for t in TRANSCRIPT], ended_by="client", end_reason="satisfied",
                          duration_seconds=1.0, usage=[usage], metrics=list(metrics))


def _record(metrics: list[dict[str, Any]], **kwargs: Any) -> ScenarioRecord:
    result = _result(metrics, **kwargs)
    return ScenarioRecord(result=result, outcome=Outcome(str(result.status)), run_id="run-1")


# -- formatting -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("score", "text"), [(3, "3"), (0, "0"), (0.5, "0.5"), (0.4123, "0.41"), (2 / 3, "0.67"),
                                             (1.0, "1"), (0.001, "0"), (-0.001, "0"), (None, "-")])
def test_scores_read_as_ints_or_up_to_two_decimals(score: Any, text: str) -> None:
    assert metric_score_text(score) == text


def test_metric_lines() -> None:
    assert metric_line(JUDGE_FAILED) == "metric judge: 1 (min 2) FAILED - The agent was rude."
    assert metric_line(JUDGE_PASSED) == "metric judge: 3 (min 2) passed"
    assert metric_line(RULES_FAILED) == "metric rules: 0.5 FAILED - not_contains 'refund' found in agent turn 4"
    assert metric_line(ROUGE_PASSED) == "metric rouge: 0.41 passed"
    assert metric_line(CRITERIA_FAILED) == ("metric criteria: 0.67 FAILED - 'confirms the delivery date' not met: "
                                            "no date given")
    assert metric_line(TONE_INFO) == "metric tone: 0.8 info - friendly and calm"  # one line
    assert metric_line({"name": "custom", "score": None, "passed": False, "reason": ""}) == "metric custom: FAILED"


# -- terminal: the failing item and the JUnit text ------------------------------------------------------------
def test_failure_text_with_only_the_judge_keeps_todays_first_line() -> None:
    lines = _failure_text(_result([JUDGE_FAILED])).splitlines()
    assert lines == [
        "scenario 'a' scored 1 (min_score 2)",
        "metric judge: 1 (min 2) FAILED - The agent was rude.",
        "judge: The agent was rude.",
        "turns: 2, ended by client (satisfied); the conversation is in the 'llmsim transcript' section",
    ]
    # A result without metrics (the fixture's, an older engine) reads exactly as before.
    assert _failure_text(_result([])).splitlines() == [lines[0], *lines[2:]]


def test_failure_text_names_the_failed_metrics() -> None:
    result = _result([JUDGE_FAILED, RULES_FAILED, ROUGE_PASSED, TONE_INFO])
    assert _failure_text(result).splitlines() == [
        "scenario 'a' failed metrics: judge (score 1, min 2), rules",
        "metric judge: 1 (min 2) FAILED - The agent was rude.",
        "metric rules: 0.5 FAILED - not_contains 'refund' found in agent turn 4",
        "metric rouge: 0.41 passed",
        "metric tone: 0.8 info - friendly and calm",
        "judge: The agent was rude.",
        "turns: 2, ended by client (satisfied); the conversation is in the 'llmsim transcript' section",
    ]
    # The judge passed, the rules did not; a judge failing alone among several metrics keeps today's line.
    assert failure_headline(_result([JUDGE_PASSED, RULES_FAILED], score=3)) == "scenario 'a' failed metrics: rules"
    assert failure_headline(_result([JUDGE_FAILED, ROUGE_PASSED])) == "scenario 'a' scored 1 (min_score 2)"


def test_failure_text_without_the_judge_has_no_empty_judge_line() -> None:
    result = _result([RULES_FAILED, CRITERIA_FAILED], score=None, comment="", min_score=None)
    assert _failure_text(result).splitlines() == [
        "scenario 'a' failed metrics: rules, criteria",
        "metric rules: 0.5 FAILED - not_contains 'refund' found in agent turn 4",
        "metric criteria: 0.67 FAILED - 'confirms the delivery date' not met: no date given",
        "turns: 2, ended by client (satisfied); the conversation is in the 'llmsim transcript' section",
    ]


def test_record_text_lists_the_metrics_after_the_verdict() -> None:
    text = record_text(_record([JUDGE_FAILED, RULES_FAILED, ROUGE_PASSED]))
    assert text.splitlines()[:5] == [
        "scenario 'a': failed, score 1 (min_score 2)",
        "metric judge: 1 (min 2) FAILED - The agent was rude.",
        "metric rules: 0.5 FAILED - not_contains 'refund' found in agent turn 4",
        "metric rouge: 0.41 passed",
        "judge: The agent was rude.",
    ]
    assert record_text(_record([])).splitlines()[:2] == ["scenario 'a': failed, score 1 (min_score 2)",
                                                         "judge: The agent was rude."]


def test_malformed_metrics_are_left_out() -> None:
    result = _result([JUDGE_FAILED, "junk", 3])  # type: ignore[list-item]
    assert _failure_text(result).splitlines()[:2] == ["scenario 'a' scored 1 (min_score 2)",
                                                      "metric judge: 1 (min 2) FAILED - The agent was rude."]
    assert metrics_cell("not a list") == ""


# -- JUnit properties -----------------------------------------------------------------------------------------
def test_junit_properties_per_metric() -> None:
    result = _result([JUDGE_FAILED, RULES_FAILED, TONE_INFO, {"name": "bare", "score": None, "passed": True}])
    figures = plugin.junit_properties(result, "0.00000100")
    properties = dict(figures)
    assert properties["score"] == 1 and properties["cost_usd"] == "0.00000100"
    metrics = [(name, value) for name, value in figures if name.startswith("metric.")]
    assert metrics == [
        ("metric.judge.score", 1), ("metric.judge.passed", "false"),
        ("metric.rules.score", 0.5), ("metric.rules.passed", "false"),
        ("metric.tone.score", 0.8), ("metric.tone.passed", ""),
        ("metric.bare.score", ""), ("metric.bare.passed", "true"),
    ]


# -- pytest-html ----------------------------------------------------------------------------------------------
def test_html_chips_above_the_chat() -> None:
    fragment = scenario_html(_record([JUDGE_FAILED, ROUGE_PASSED, TONE_INFO]))
    chips = fragment.index('<div class="llmsim-metrics">')
    assert fragment.index('<div class="llmsim-meta">') < chips < fragment.index('<div class="llmsim-chat">')
    assert ('<span class="llmsim-metric llmsim-metric-failed" title="The agent was rude.">'
            '<span class="llmsim-metric-name">judge</span> <span class="llmsim-metric-score">1</span> (min 2) '
            '<span class="llmsim-metric-verdict">failed</span>'
            '<span class="llmsim-metric-reason">: The agent was rude.</span></span>') in fragment
    # A passed or informational metric: the reason is the title only.
    assert ('<span class="llmsim-metric llmsim-metric-passed" title="rougeL F1 0.41 &gt;= 0.3">'
            '<span class="llmsim-metric-name">rouge</span> <span class="llmsim-metric-score">0.41</span> '
            '<span class="llmsim-metric-verdict">passed</span></span>') in fragment
    assert ('<span class="llmsim-metric llmsim-metric-info" title="friendly and calm">'
            '<span class="llmsim-metric-name">tone</span> <span class="llmsim-metric-score">0.8</span> '
            '<span class="llmsim-metric-verdict">info</span></span>') in fragment
    for name in ("llmsim-metrics", "llmsim-metric-passed", "llmsim-metric-failed", "llmsim-metric-info"):
        assert f".{name}" in STYLE
    assert "llmsim-metrics" not in scenario_html(_record([]))


def test_html_chips_escape_everything() -> None:
    chip = metric_chip({"name": HOSTILE, "score": HOSTILE, "passed": False, "reason": HOSTILE,
                        "details": {"min_score": HOSTILE}})
    assert "<script>" not in chip and "\"x\"" not in chip and "'quotes'" not in chip
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;quotes&#x27;"
    assert chip.count(escaped) == 5  # title, name, score, minimum, reason
    assert f'title="{escaped}"' in chip


# -- exports --------------------------------------------------------------------------------------------------
def test_record_rows_carry_the_metrics() -> None:
    metrics = [JUDGE_FAILED, RULES_FAILED, ROUGE_PASSED, TONE_INFO]
    row = _record(metrics).to_dict()
    assert row["metrics"] == metrics
    flat = [key for key in row if key in RECORD_FIELDS]
    assert flat == list(RECORD_FIELDS) and RECORD_FIELDS.index("metrics") == RECORD_FIELDS.index("comment") + 1
    back = ScenarioRecord.from_dict(json.loads(json.dumps(row)))
    assert back.result.metrics == metrics and back.to_dict() == row
    assert ScenarioRecord.from_dict({**row, "metrics": [JUDGE_FAILED, "junk"]}).result.metrics == [JUDGE_FAILED]
    assert ScenarioRecord.from_dict({**row, "metrics": None}).result.metrics == []


def test_csv_metrics_column() -> None:
    metrics = [{**JUDGE_PASSED, "score": 3}, RULES_FAILED, {**ROUGE_PASSED, "passed": None},
               {"name": "bare", "score": None, "passed": False, "reason": "", "details": {}}]
    assert metrics_cell(metrics) == "judge=3:passed;rules=0.5:failed;rouge=0.41:info;bare=:failed"
    text = render_csv([_record(metrics).to_dict(), _record([]).to_dict()])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(RECORD_FIELDS)
    assert rows[0]["metrics"] == "judge=3:passed;rules=0.5:failed;rouge=0.41:info;bare=:failed"
    assert rows[1]["metrics"] == ""
    # A CSV cell read back: names, scores and verdicts (no reasons or details).
    back = ScenarioRecord.from_dict(rows[0]).result.metrics
    assert [(m["name"], m["score"], m["passed"]) for m in back] == [
        ("judge", 3, True), ("rules", 0.5, False), ("rouge", 0.41, None), ("bare", None, False)]


@pytest.mark.parametrize("name", ["out.json", "out.ndjson", "out.csv"])
def test_exports_write_the_metrics(tmp_path: Path, name: str) -> None:
    metrics = [JUDGE_FAILED, RULES_FAILED, ROUGE_PASSED, TONE_INFO]
    records = [_record(metrics), _record([JUDGE_PASSED], status="passed", score=3)]
    path = tmp_path / name
    write_results(path, records, summarize(records).to_dict(), run_id="run-1", generated_at="t")
    text = path.read_text(encoding="utf-8")
    if name.endswith(".json"):
        rows = json.loads(text)["results"]
    elif name.endswith(".ndjson"):
        rows = [json.loads(line) for line in text.splitlines()]
    else:
        cells = [row["metrics"] for row in csv.DictReader(io.StringIO(text))]
        assert cells == ["judge=1:failed;rules=0.5:failed;rouge=0.41:passed;tone=0.8:info", "judge=3:passed"]
        return
    assert [row["metrics"] for row in rows] == [metrics, [JUDGE_PASSED]]


# -- markdown -------------------------------------------------------------------------------------------------
def test_markdown_block_has_the_metric_lines_and_names_the_failed_metrics() -> None:
    record = _record([JUDGE_PASSED, RULES_FAILED, {**TONE_INFO, "reason": HOSTILE}], score=3)
    block = record_block(record, None)
    assert "metric rules: 0.5 FAILED - not_contains 'refund' found in agent turn 4\n" in block
    assert "metric judge: 3 (min 2) passed\n" in block
    summary = block.split("</summary>")[0]
    assert summary.endswith("· 2 turns · failed metrics: rules")
    # Hostile text stays inside the fenced block (not in the summary line).
    assert f"metric tone: 0.8 info - {HOSTILE}" in block and "<script>" not in summary
    only_judge = record_block(_record([JUDGE_FAILED]), None)
    assert "failed metrics" not in only_judge.split("</summary>")[0]
    document = render_markdown(summarize([record]), Gates(), [], [record], None)
    assert "metric rules: 0.5 FAILED" in document


# -- what decided the verdict: the progress word, the status cell, the export fields ----------------------------
def test_progress_word_names_the_metric_that_decided_a_failure() -> None:
    def word(outcome: str, metrics: list[dict[str, Any]], **kwargs: Any) -> str:
        return progress_word(outcome, _result(metrics, **kwargs).to_dict())

    assert word("failed", [JUDGE_FAILED]) == "FAILED (score 1, min 2)"  # the judge alone: as before
    assert word("failed", []) == "FAILED (score 1, min 2)"  # a result without metrics
    assert word("failed", [JUDGE_PASSED, RULES_FAILED], score=3) == \
        "FAILED (rules: not_contains 'refund' found in agent turn 4)"
    assert word("failed", [JUDGE_FAILED, RULES_FAILED, CRITERIA_FAILED]) == (
        "FAILED (judge: score 1, min 2; rules: not_contains 'refund' found in agent turn 4; criteria: 'confirms "
        "the delivery date' not met: no date given)")
    assert word("passed", [JUDGE_PASSED, ROUGE_PASSED], status="passed", score=3) == "PASSED (score 3, min 2)"
    # pytest failed a strict XPASS whose conversation passed; a fixture test passed though its conversation failed.
    assert word("failed", [JUDGE_PASSED], status="passed", score=3) == \
        "FAILED (strict xfail passed; score 3, min 2)"
    assert word("passed", [JUDGE_PASSED, RULES_FAILED], score=3) == \
        "PASSED (conversation failed: rules: not_contains 'refund' found in agent turn 4)"
    # A reason with line breaks is one line; a long one is cut; a failed metric without a reason shows its score.
    long = {**RULES_FAILED, "reason": "x\n" * 200}
    assert "\n" not in word("failed", [long]) and len(word("failed", [long])) < 150
    assert word("failed", [{"name": "custom", "score": 0.25, "passed": False}]) == \
        "FAILED (custom: failed (score 0.25))"


def test_the_word_survives_the_trimmed_report_data() -> None:
    """The controller trims ``report.llmsim`` (no metrics) before pytest asks for the word: it keeps the
    scalar ``decided_by`` and ``failure_reason``."""
    from pytest_llmsim.reporting.collector import trimmed_report_data

    data = _result([JUDGE_PASSED, RULES_FAILED], score=3).to_dict()
    trimmed = trimmed_report_data(data)
    assert "metrics" not in trimmed
    assert progress_word("failed", trimmed) == progress_word("failed", data) == \
        "FAILED (rules: not_contains 'refund' found in agent turn 4)"


def test_status_cell_and_export_fields_name_the_deciding_metric() -> None:
    rules = _record([JUDGE_PASSED, RULES_FAILED], score=3)
    judge = _record([JUDGE_FAILED, ROUGE_PASSED])
    assert status_text(rules) == "FAILED (rules: not_contains 'refund' found in agent turn 4)"
    assert status_text(judge) == "FAILED"  # the score column shows the judge's
    assert (rules.to_dict()["decided_by"], rules.to_dict()["failure_reason"]) == \
        ("rules", "rules: not_contains 'refund' found in agent turn 4")
    assert (judge.to_dict()["decided_by"], judge.to_dict()["failure_reason"]) == ("judge", "judge: score 1, min 2")
    both = _record([JUDGE_FAILED, CRITERIA_FAILED]).to_dict()
    assert both["decided_by"] == "judge, criteria"
    passed = _record([JUDGE_PASSED], status="passed", score=3).to_dict()
    assert (passed["decided_by"], passed["failure_reason"]) == ("", "")
    rows = list(csv.DictReader(io.StringIO(render_csv([rules.to_dict()]))))
    assert rows[0]["decided_by"] == "rules" and rows[0]["failure_reason"].startswith("rules: not_contains")


def test_html_badge_is_the_outcome_never_green_on_a_failed_row() -> None:
    fragment = scenario_html(_record([JUDGE_PASSED, RULES_FAILED], score=3))
    assert ('<span class="llmsim-verdict llmsim-verdict-failed">FAILED (rules: not_contains &#x27;refund&#x27; '
            "found in agent turn 4)</span>") in fragment
    assert '<span class="llmsim-pill llmsim-score">score 3 / min 2</span>' in fragment
    assert "llmsim-score-3" not in fragment and "llmsim-verdict-passed" not in fragment
    assert ".llmsim-verdict-passed{background:#449d44}" in STYLE and ".llmsim-verdict-failed," in STYLE


def test_a_metric_that_raised_reads_as_an_error_everywhere() -> None:
    """A metric the runner kept with ``error`` (it raised; the scenario is an error) is never shown as info."""
    errored = {"name": "facts", "score": None, "passed": None, "reason": "the judge's reply is not valid",
               "details": {}, "error": "invalid_verdict"}
    assert metric_line(errored) == "metric facts: error - the judge's reply is not valid"
    assert metrics_cell([errored]) == "facts=:error"
    chip = metric_chip(errored)
    assert 'class="llmsim-metric llmsim-metric-error"' in chip and ">error<" in chip
    assert ".llmsim-metric-error{" in STYLE
