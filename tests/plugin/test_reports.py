"""Reports, exports, gates and cost through real inner sessions, in one process and under ``-n 2``."""

from __future__ import annotations

import csv
import html
import html.parser
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from conftest import AGENT_REPLIES, SimProject, default_script, scenario, verdict

MODES = [pytest.param([], id="one-process"), pytest.param(["-n", "2"], id="xdist")]

# Large prices so every scenario's cost shows at the summary's 6 decimals (USD per 1M tokens).
PRICES = {"gpt-4o-mini": {"input": 1000, "output": 2000}}

# Scores 3, 3, 2, 1 and one invalid scenario (an error without a score). Default min_score 2.
KNOWN = [scenario("a"), scenario("b"), scenario("mid_c"), scenario("low_d"), scenario("broken", min_score=7)]
CALLS_PER_SCENARIO = 7  # 6 conversation turns + 1 verdict with the default script


@pytest.fixture(autouse=True, scope="module")
def _import_matplotlib_once() -> None:
    """Import matplotlib (and numpy) in this process before any inner session draws a histogram.

    An in-process inner session drops the modules it imported when it ends; numpy's C extension cannot be
    loaded a second time, so a later import would fail. Modules imported up front are kept.
    """
    try:
        import matplotlib.backends.backend_agg
        import matplotlib.figure  # noqa: F401
    except ImportError:
        pass


def _prices(sim: SimProject) -> str:
    path = sim.path / "prices.json"
    path.write_text(json.dumps(PRICES), encoding="utf-8")
    return f"--llmsim-prices={path}"


def _junit(path: Path) -> dict[str, dict[str, Any]]:
    """Each test case's scenario figures (``properties``: the test case's <properties> under junit_family=xunit1,
    else the ``[llmsim]`` block of its <system-out>), the rest of its <system-out>, and its verdict."""
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        figures: dict[str, str] = {}
        rest = []
        for node in case.findall("system-out"):
            text = node.text or ""
            if text.startswith("[llmsim]\n"):
                block, _, text = text.removeprefix("[llmsim]\n").partition("\n\n")
                figures = dict(line.split("=", 1) for line in block.splitlines())
            rest.append(text)
        cases[case.get("name")] = {
            "properties": {p.get("name"): p.get("value") for p in case.iter("property")} or figures,
            "system_out": "".join(rest),
            "failed": case.find("failure") is not None,
            "error": case.find("error") is not None,
        }
    return cases


def _load_export(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if path.suffix == ".json":
        document = json.loads(path.read_text(encoding="utf-8"))
        assert document["total_results"] == len(document["results"])
        return document["results"], document["summary"]
    summary = json.loads(path.with_name(f"{path.stem}.summary.json").read_text(encoding="utf-8"))
    if path.suffix == ".ndjson":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()], summary
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle)), summary


def _html_tests(path: Path) -> dict[str, list[dict[str, Any]]]:
    text = path.read_text(encoding="utf-8")
    blob = re.search(r'data-jsonblob="([^"]*)"', text)
    assert blob is not None
    return json.loads(html.unescape(blob.group(1)))["tests"]


def _terminal_totals(summary: dict[str, Any]) -> list[str]:
    """The totals lines the terminal must print for this export summary, character for character."""
    stats, dist = summary["score_statistics"], summary["score_distribution"]
    return [
        f"scenarios: {summary['total_scenarios']} ({summary['successful_scenarios']} passed, "
        f"{summary['failed_scenarios']} failed, {summary['errored_scenarios']} errored), pass rate "
        f"{summary['success_rate']:.1%}",
        f"scores: mean {stats['mean']:g}, median {stats['median']:g}, std {stats['std']:g}, min {stats['min']}, "
        f"max {stats['max']}; distribution 1: {dist['score_1']}, 2: {dist['score_2']}, 3: {dist['score_3']}",
        f"tokens: {summary['total_tokens']} live + {summary['replayed_tokens']} replayed "
        f"(prompt {summary['prompt_tokens']}, completion {summary['completion_tokens']})",
        f"LLM calls: {summary['total_requests']} live, {summary['replayed_requests']} replayed (recordings or cache)",
        f"cost: ${summary['total_cost_usd']:.6f} spent on live calls, ${summary['saved_cost_usd']:.6f} saved by "
        f"replays",
    ]


# -- JUnit --------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_junit_properties_and_failing_transcripts(sim: SimProject, mode: list[str]) -> None:
    sim.write_scenarios("s.json", KNOWN)
    result = sim.run(*mode, _prices(sim), "--junitxml=junit.xml")
    result.assert_outcomes(passed=3, failed=1, errors=1)
    cases = _junit(sim.path / "junit.xml")
    assert set(cases) == {"a", "b", "mid_c", "low_d", "broken"}
    expected_scores = {"a": "3", "b": "3", "mid_c": "2", "low_d": "1"}
    for name, score in expected_scores.items():
        props = cases[name]["properties"]
        assert list(props) == ["score", "min_score", "comment", "turns", "ended_by", "prompt_tokens",
                               "completion_tokens", "cost_usd", "cached", "metric.judge.score",
                               "metric.judge.passed"]
        assert props["score"] == score and props["min_score"] == "2"
        assert props["turns"] == "6" and props["ended_by"] == "agent" and props["cached"] == "False"
        prompt, completion = int(props["prompt_tokens"]), int(props["completion_tokens"])
        assert prompt > 0 and completion > 0
        # Every call was live, so every token is priced: 1000 / 2000 USD per 1M tokens.
        assert float(props["cost_usd"]) == pytest.approx((prompt * 1000 + completion * 2000) / 1e6, abs=1e-8)
    assert cases["low_d"]["properties"]["comment"] == "The agent was rude."
    assert cases["low_d"]["failed"]
    out = cases["low_d"]["system_out"]
    assert "scenario 'low_d': failed, score 1 (min_score 2)" in out
    assert "1. Customer: Hi, I would like chicken fillet." in out
    assert f"6. Agent: {AGENT_REPLIES[2].replace(' [END_CALL]', '')}" in out
    assert "[call ended by agent: the agent ended the call]" in out
    for name in ("a", "b", "mid_c"):
        assert cases[name]["system_out"] == "" and not cases[name]["failed"]
    assert cases["broken"]["error"] and "min_score" in ET.tostring(ET.parse(sim.path / "junit.xml").getroot(),
                                                                    encoding="unicode")


@pytest.mark.slow
def test_replayed_run_costs_nothing_and_reports_the_saving(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    prices = _prices(sim)
    sim.run(prices, "--llmsim-results=first.json").assert_outcomes(passed=1, failed=1)
    result = sim.run(prices, "--junitxml=junit.xml", "--llmsim-results=second.json")
    result.assert_outcomes(passed=1, failed=1)
    _, first = _load_export(sim.path / "first.json")
    records, second = _load_export(sim.path / "second.json")
    assert first["total_requests"] == 2 * CALLS_PER_SCENARIO and first["replayed_requests"] == 0
    assert first["total_cost_usd"] > 0
    assert (second["total_requests"], second["replayed_requests"]) == (0, first["total_requests"])
    assert second["total_cost_usd"] == 0 and second["saved_cost_usd"] == first["total_cost_usd"]
    assert second["replayed_tokens"] == first["total_tokens"] and second["total_tokens"] == 0
    assert all(r["cached"] and r["cost_usd"] == 0 for r in records)
    props = _junit(sim.path / "junit.xml")["a"]["properties"]
    assert props["cached"] == "True" and props["cost_usd"] == "0.00000000"
    result.stdout.fnmatch_lines(["LLM calls: 0 live, 14 replayed (recordings or cache)",
                                 f"cost: $0.000000 spent on live calls, ${first['total_cost_usd']:.6f} saved by "
                                 f"replays"])


# -- exports and terminal totals ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["results.json", "results.ndjson", "results.csv"])
def test_export_fields_and_summary_match_the_terminal(sim: SimProject, mode: list[str], name: str) -> None:
    sim.write_scenarios("s.json", KNOWN)
    result = sim.run(*mode, _prices(sim), f"--llmsim-results=out/{name}")
    result.assert_outcomes(passed=3, failed=1, errors=1)
    records, summary = _load_export(sim.path / "out" / name)
    by_name = {r["scenario"]: r for r in records}
    assert len(records) == 5 and set(by_name) == {"a", "b", "mid_c", "low_d", "broken"}  # once each
    run_ids = {r["session_id"] for r in records}  # one run id for the whole session, the document's too
    assert len(run_ids) == 1 and len(run_id := run_ids.pop()) == 36
    side = sim.path / "out" / ("results.summary.json" if name != "results.json" else name)
    assert json.loads(side.read_text(encoding="utf-8"))["run_id"] == run_id
    for field in ("session_id", "scenario", "status", "score", "comment", "total_turns", "duration_seconds",
                  "prompt_tokens", "completion_tokens", "cost_usd", "nodeid", "ended_by", "cached"):
        assert all(field in r for r in records), field
    assert [by_name[n]["status"] for n in ("a", "b", "mid_c", "low_d", "broken")] == \
        ["passed", "passed", "passed", "failed", "error"]
    assert str(by_name["low_d"]["score"]) == "1" and by_name["low_d"]["comment"] == "The agent was rude."
    assert str(by_name["broken"]["score"]) in ("None", "")
    assert by_name["broken"]["error_kind"] == "scenario_error" and "min_score" in by_name["broken"]["error_message"]
    if name != "results.csv":
        transcript = by_name["a"]["transcript"]
        assert [t["role"] for t in transcript] == ["client", "agent"] * 3
        assert transcript[0]["text"] == "Hi, I would like chicken fillet."
        scored = [r for r in records if r["score"] is not None]
        for r in scored:  # per-record cost from its own usage and the price file
            assert {u["model"] for u in r["usage"]} == {"gpt-4o-mini"}
            expected = sum(u["prompt_tokens"] * 1000 + u["completion_tokens"] * 2000 for u in r["usage"]) / 1e6
            assert r["cost_usd"] == pytest.approx(expected, abs=1e-8)
        if mode:  # under xdist the controller saw both workers' data
            assert {r["worker"] for r in scored} <= {"gw0", "gw1"} and all(r["worker"] for r in scored)
    # The summary maths on the known scores 3, 3, 2, 1 (+ one error).
    assert (summary["total_scenarios"], summary["successful_scenarios"], summary["failed_scenarios"],
            summary["errored_scenarios"], summary["success_rate"]) == (5, 3, 1, 1, 0.6)
    assert summary["score_statistics"] == {"mean": 2.25, "median": 2.5, "std": 0.8292, "min": 1, "max": 3}
    assert summary["score_distribution"] == {"score_1": 1, "score_2": 1, "score_3": 2}
    assert summary["total_requests"] == 4 * CALLS_PER_SCENARIO and summary["replayed_requests"] == 0
    costs = [float(r["cost_usd"]) for r in records]
    assert summary["total_cost_usd"] == pytest.approx(sum(costs), abs=1e-6) and summary["total_cost_usd"] > 0
    assert summary["average_cost_per_request"] == round(summary["total_cost_usd"] / summary["total_requests"], 8)
    tokens = sum(int(r["prompt_tokens"]) + int(r["completion_tokens"]) for r in records)
    assert summary["total_tokens"] == tokens == summary["prompt_tokens"] + summary["completion_tokens"]
    result.stdout.fnmatch_lines(["*llmsim summary*", *_terminal_totals(summary)])


@pytest.mark.slow
def test_done_means_command_in_a_subprocess(sim: SimProject) -> None:
    """``pytest scenarios/ -n 2 --html --junitxml --llmsim-results=results.ndjson``, as a user runs it."""
    sim.write_scenarios("s.json", KNOWN)
    result = sim.run("scenarios/", "-n", "2", _prices(sim), "--html=report.html", "--junitxml=junit.xml",
                     "--llmsim-results=results.ndjson", subprocess=True)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    records, summary = _load_export(sim.path / "results.ndjson")
    result.stdout.fnmatch_lines(["*llmsim summary*", *_terminal_totals(summary)])
    assert len(records) == 5 and summary["total_requests"] == 4 * CALLS_PER_SCENARIO
    cases = _junit(sim.path / "junit.xml")
    assert {name: case["properties"].get("score") for name, case in cases.items()} == \
        {r["scenario"]: (None if r["score"] is None else str(r["score"])) for r in records}
    assert sum(float(c["properties"].get("cost_usd", 0)) for c in cases.values()) == \
        pytest.approx(summary["total_cost_usd"], abs=1e-6)
    tests = _html_tests(sim.path / "report.html")
    assert len(tests) == 5
    assert all("llmsim-chat" in "".join(e["content"] for e in entries[0]["extras"])
               for nodeid, entries in tests.items() if not nodeid.endswith("broken"))


@pytest.mark.slow
def test_one_process_and_xdist_agree(sim: SimProject) -> None:
    sim.write_scenarios("s.json", KNOWN)
    prices = _prices(sim)
    sim.run(prices, "--llmsim-record=all", "--llmsim-results=one.json")
    sim.run("-n", "2", prices, "--llmsim-record=all", "--llmsim-results=two.json")
    one_records, one = _load_export(sim.path / "one.json")
    two_records, two = _load_export(sim.path / "two.json")
    for summary in (one, two):  # wall-time figures differ between any two runs
        for key in ("total_duration_seconds", "limiter_wait_seconds", "effective_rpm", "effective_tpm",
                    "reserved_tpm"):
            summary.pop(key)
    assert one == two
    assert [r["nodeid"] for r in one_records] == [r["nodeid"] for r in two_records]  # collection order


RERUN_EVERY_ITEM = """
import pytest
from _pytest.runner import runtestprotocol


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    # Like pytest-rerunfailures: the item runs (and reports) twice under one node id.
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for _ in range(2):
        runtestprotocol(item, nextitem=nextitem, log=True)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
"""


@pytest.mark.slow
def test_a_rerun_replaces_the_earlier_record(sim: SimProject) -> None:
    sim.pytester.makeconftest(RERUN_EVERY_ITEM)
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    result = sim.run(_prices(sim), "--llmsim-results=r.json")
    result.assert_outcomes(passed=2, failed=2)  # pytest counts every attempt
    records, summary = _load_export(sim.path / "r.json")
    assert [r["scenario"] for r in records] == ["a", "low_b"]
    assert summary["total_scenarios"] == 2 and summary["failed_scenarios"] == 1
    # The second attempt replayed the first one's calls: the kept record is the later one.
    assert all(r["cached"] and r["cost_usd"] == 0 for r in records)
    assert (summary["total_requests"], summary["replayed_requests"]) == (0, 2 * CALLS_PER_SCENARIO)


@pytest.mark.slow
def test_collect_only_keeps_the_previous_export(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run("--llmsim-results=r.json").assert_outcomes(passed=1)
    before = (sim.path / "r.json").read_bytes()
    sim.run("--collect-only", "--llmsim-results=r.json")
    assert (sim.path / "r.json").read_bytes() == before


@pytest.mark.slow
def test_terminal_table_and_quiet_totals(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    result = sim.run(_prices(sim))
    result.stdout.re_match_lines([
        r"scenario\s+score\s+turns\s+cost\s+status$",
        r"scenarios/s\.json::a\s+3 \(min 2\)\s+6\s+\$\d+\.\d{6}\s+passed$",
        r"scenarios/s\.json::low_b\s+1 \(min 2\)\s+6\s+\$\d+\.\d{6}\s+FAILED$",
    ])
    quiet = sim.run("-q", _prices(sim))
    out = quiet.stdout.str()
    assert "llmsim summary" not in out and "scenario  " not in out and "LLM calls:" not in out
    totals = [line for line in quiet.stdout.lines if line.startswith("llmsim: ")]
    assert len(totals) == 1
    assert re.match(r"llmsim: 2 scenarios, 1 passed, 1 failed, 0 errored, pass rate 50\.0%, mean score 2, tokens "
                    r"0 live \+ \d+ replayed, calls 0 live / 14 replayed, cost \$0\.000000 \(saved \$\d+\.\d{6}\)$",
                    totals[0]), totals[0]


@pytest.mark.slow
def test_unpriced_model_is_flagged_once(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("b")])
    result = sim.run("--llmsim-model=mystery-model", "--llmsim-results=r.json")
    _, summary = _load_export(sim.path / "r.json")
    assert summary["unpriced_models"] == ["mystery-model"] and summary["total_cost_usd"] == 0
    lines = [line for line in result.stdout.lines if line.startswith("unpriced")]
    assert lines == ["unpriced models (counted at $0; add them to llmsim_prices): mystery-model"]


@pytest.mark.slow
def test_price_file_from_the_ini_with_an_alias(sim: SimProject) -> None:
    (sim.path / "prices.yaml").write_text("mystery-model: gpt-4o-mini\ngpt-4o-mini: {input: 1000, output: 2000}\n",
                                          encoding="utf-8")
    sim.write_ini(llmsim_prices="prices.yaml")
    sim.write_scenarios("s.json", [scenario("a")])
    sim.run("--llmsim-model=mystery-model-2025-01-01", "--llmsim-results=r.json").assert_outcomes(passed=1)
    records, summary = _load_export(sim.path / "r.json")
    assert summary["unpriced_models"] == []
    assert records[0]["cost_usd"] == pytest.approx(
        (records[0]["prompt_tokens"] * 1000 + records[0]["completion_tokens"] * 2000) / 1e6, abs=1e-8)


# -- HTML -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_html_report_shows_the_escaped_chat_and_the_summary(sim: SimProject, mode: list[str]) -> None:
    evil = "<script>alert('x')</script> & <b>bold</b>"
    rules = default_script()["rules"]
    rules[2] = {"match": {"system_contains": "EVALUATOR"}, "reply": verdict(3, "Nice <img src=x onerror=alert(1)>")}
    rules[3] = {"match": {"system_contains": "AGENT"}, "replies": [f"Hello {evil}", *AGENT_REPLIES[1:]]}
    sim.server.set_script({"rules": rules})
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    result = sim.run(*mode, _prices(sim), "--html=report.html")
    result.assert_outcomes(passed=1, failed=1)
    tests = _html_tests(sim.path / "report.html")
    rows = {nodeid.split("::")[-1]: entries for nodeid, entries in tests.items()}
    chat = "".join(extra["content"] for extra in rows["a"][0]["extras"] if extra["format_type"] == "html")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in chat
    assert "<script" not in chat and "<img" not in chat and "<b>bold" not in chat
    assert "Nice &lt;img src=x onerror=alert(1)&gt;" in chat
    assert 'class="llmsim-turn llmsim-client"' in chat and 'class="llmsim-turn llmsim-agent"' in chat
    assert "#1 Customer" in chat and "#6 Agent" in chat
    assert "Call ended by agent: the agent ended the call" in chat
    assert "score 3 / min 2" in chat and "6 turns" in chat and "cost $" in chat and " s</span>" in chat
    assert "live</span>" in chat  # not replayed
    failed_chat = "".join(e["content"] for e in rows["low_b"][0]["extras"] if e["format_type"] == "html")
    assert "score 1 / min 2" in failed_chat and "The agent was rude." in failed_chat
    assert any('class="col-score">3 (min 2)</td>' in cell for cell in rows["a"][0]["resultsTableRow"])
    page = (sim.path / "report.html").read_text(encoding="utf-8")
    assert "LLM scenarios (pytest-llmsim)" in page
    assert "2 (1 passed, 1 failed, 0 errored)" in page and "50.0%" in page
    assert "mean 2 · median 2 · std 1 · min 1 · max 3" in page
    assert re.search(r"\d+ live \+ 0 replayed", page) and "$0.000000 saved by replays" in page
    assert "alert('x')" not in page.split("data-jsonblob")[0]  # nothing unescaped outside the data blob

    replay = sim.run(*mode, _prices(sim), "--html=report.html")
    replay.assert_outcomes(passed=1, failed=1)
    rows = {k.split("::")[-1]: v for k, v in _html_tests(sim.path / "report.html").items()}
    assert "replayed (recordings or cache)" in "".join(e["content"] for e in rows["a"][0]["extras"])


# A scenario whose judge passes (score 3) but whose rules metric fails, beside one of every other outcome.
RULES = {"rules": {"tool_called": "lookup_order"}}
VERDICTS = [scenario("a"), scenario("rules_c", evaluate=["judge", RULES]), scenario("low_b"),
            scenario("broken", min_score=7), scenario("not_today", skip="later"),
            scenario("low_x", xfail="known bad"), scenario("a_xp", xfail=True),
            scenario("rules_x", evaluate=["judge", RULES], xfail="tools pending")]
RULES_REASON = "rules: tool 'lookup_order' never called"
LAST_AGENT_LINE = AGENT_REPLIES[2].replace(" [END_CALL]", "")


class _Badges(html.parser.HTMLParser):
    """The classes of the llmsim verdict badges and of every element of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__()
        self.badges: list[str] = []
        self.classes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        self.classes.extend(classes)
        if "llmsim-verdict" in classes:
            self.badges.extend(c for c in classes if c != "llmsim-verdict")


def _backgrounds(style: str) -> dict[str, str]:
    """``.class`` -> background colour of the pytest-html style block's rules (``.a,.b{background:#x}``)."""
    colours = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", style):
        found = re.search(r"background:(#[0-9a-f]{3,6})", body)
        for selector in selectors.split(","):
            if found and re.fullmatch(r"\s*\.[\w-]+\s*", selector):
                colours[selector.strip()[1:]] = found.group(1)
    return colours


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_a_failed_item_shows_its_outcome_and_the_metric_that_decided_it(sim: SimProject, mode: list[str]) -> None:
    """Issue 25 (5): a scenario failed by its rules metric (its judge passed with 3) was ``FAILED (score 3, min
    2)`` in the terminal, a green "score 3 / min 2" badge in pytest-html, and its transcript twice in the row."""
    sim.write_scenarios("s.json", VERDICTS)
    result = sim.run(*mode, "-v", "-rA", "--html=report.html", "--llmsim-results=r.json")
    result.assert_outcomes(passed=1, failed=2, errors=1, skipped=1, xfailed=2, xpassed=1)
    # Terminal: the progress line, the short summary and the table say what decided it.
    def progress(name: str, word: str) -> bool:  # -v: ``<nodeid> <word>``; under xdist ``[gw0] [ 50%] <word> <nodeid>``
        return any(f"s.json::{name}" in line and word in line and not line.startswith(word)
                   for line in result.outlines)

    assert progress("rules_c", f"FAILED ({RULES_REASON})") and progress("low_b", "FAILED (score 1, min 2)")
    result.stdout.fnmatch_lines([f"FAILED ({RULES_REASON}) scenarios/s.json::rules_c*"])
    result.stdout.re_match_lines([rf"scenarios/s\.json::rules_c\s+3 \(min 2\)\s+6\s+\$\d+\.\d{{6}}\s+"
                                  rf"FAILED \({re.escape(RULES_REASON)}\)$",
                                  r"scenarios/s\.json::low_b\s+1 \(min 2\)\s+6\s+\$\d+\.\d{6}\s+FAILED$",
                                  rf".*::rules_x .*  xfailed \({re.escape(RULES_REASON)}\)$"])
    assert not progress("rules_c", "FAILED (score")

    # pytest-html: one badge per row, of the row's outcome, green only for a pass; one transcript per row.
    from pytest_llmsim.reporting.html import STYLE

    colours = _backgrounds(STYLE)
    green = colours["llmsim-verdict-passed"]
    expected = {"a": "passed", "rules_c": "failed", "low_b": "failed", "low_x": "xfailed", "a_xp": "xpassed",
                "rules_x": "xfailed"}
    rows = {nodeid.split("::")[-1]: entries for nodeid, entries in _html_tests(sim.path / "report.html").items()}
    for name, outcome in expected.items():
        (row,) = rows[name]
        assert row["result"].lower() == outcome
        chat = "".join(e["content"] for e in row["extras"] if e["format_type"] == "html")
        parsed = _Badges()
        parsed.feed(chat)
        assert parsed.badges == [f"llmsim-verdict-{outcome}"], name
        assert (colours[parsed.badges[0]] == green) == (outcome == "passed"), name
        assert not any(c.startswith("llmsim-score-") for c in parsed.classes)  # no colour by score alone
        page = html.unescape(row["log"] + chat)
        assert page.count(LAST_AGENT_LINE) == 1, (name, row["log"])
    rules_chat = "".join(e["content"] for e in rows["rules_c"][0]["extras"])
    assert f">FAILED ({html.escape(RULES_REASON)})</span>" in rules_chat and "score 3 / min 2" in rules_chat
    assert "llmsim-metric-failed" in rules_chat  # the rules chip says failed
    assert "scenario 'rules_c' failed metrics: rules" in html.unescape(rows["rules_c"][0]["log"])  # the failure stays

    # Exports: which metric decided the failure, and why.
    records, _ = _load_export(sim.path / "r.json")
    decided = {r["scenario"]: (r["decided_by"], r["failure_reason"]) for r in records}
    assert decided == {"a": ("", ""), "rules_c": ("rules", RULES_REASON), "low_b": ("judge", "judge: score 1, min 2"),
                       "broken": ("", ""), "not_today": ("", ""), "low_x": ("judge", "judge: score 1, min 2"),
                       "a_xp": ("", ""), "rules_x": ("rules", RULES_REASON)}


def test_plugin_works_without_pytest_html_and_xdist(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    result = sim.run("-p", "no:html", "-p", "no:xdist", "--llmsim-results=r.ndjson", "--junitxml=junit.xml")
    result.assert_outcomes(passed=1, failed=1)
    records, summary = _load_export(sim.path / "r.ndjson")
    assert len(records) == 2 and summary["total_scenarios"] == 2
    assert _junit(sim.path / "junit.xml")["a"]["properties"]["score"] == "3"
    result.stdout.fnmatch_lines(["*llmsim summary*", "scenarios: 2 (1 passed, 1 failed, 0 errored), pass rate 50.0%"])


# -- gates ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("option", "missed"), [
    # Scores 3, 2, 1 count (mean 2); the xfailed scenario's 1 does not (with it the mean would be 1.75).
    ("--llmsim-min-mean-score=2.5", "mean score 2 is below the minimum 2.5 (llmsim_min_mean_score)"),
    ("--llmsim-max-cost-usd=0.01", "cost $* spent on live calls is above the maximum $0.01 (llmsim_max_cost_usd)"),
    # Every scenario that counts passed: an xfailed scenario is not a failure, so the pass rate is 100%.
    ("--llmsim-min-pass-rate=100%", None),
])
def test_missed_gate_fails_a_session_whose_items_all_passed(sim: SimProject, mode: list[str], option: str,
                                                            missed: str | None) -> None:
    # low_c passes with its own minimum 1; low_x is an expected failure: pytest itself is green.
    sim.write_scenarios("s.json", [scenario("a"), scenario("mid_b"), scenario("low_c", min_score=1),
                                   scenario("low_x", xfail="known bad")])
    prices = _prices(sim)
    green = sim.run(*mode, prices, "--llmsim-record=all")
    green.assert_outcomes(passed=3, xfailed=1)
    assert green.ret == pytest.ExitCode.OK
    result = sim.run(*mode, prices, "--llmsim-record=all", option)  # live calls again: the cost gate sees spend
    result.assert_outcomes(passed=3, xfailed=1)
    gate_lines = [line for line in result.stdout.lines if line.startswith("llmsim gate missed")]
    if missed is None:
        assert result.ret == pytest.ExitCode.OK and gate_lines == []
        result.stdout.fnmatch_lines(["llmsim: all suite gates met"])
        return
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"llmsim gate missed: {missed}"])
    assert len(gate_lines) == 1


@pytest.mark.slow
def test_pass_rate_gate_counts_errors_but_not_skips(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b"), scenario("broken", min_score=7),
                                   scenario("skipped", skip=True), scenario("low_x", xfail=True)])
    result = sim.run("--llmsim-min-pass-rate=0.5", "--llmsim-results=r.json")
    result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1, xfailed=1)
    line = ("llmsim gate missed: pass rate 33.3% (1 of 3 scenarios; 2 skipped or xfailed not counted) is below "
            "the minimum 50.0% (llmsim_min_pass_rate)")
    result.stdout.fnmatch_lines([line])
    _, summary = _load_export(sim.path / "r.json")
    assert summary["success_rate"] == 0.3333 and summary["gates"]["checked"] is True


@pytest.mark.slow
def test_gates_from_the_ini_all_missed_and_all_met(sim: SimProject) -> None:
    sim.write_scenarios("s.json", [scenario("a"), scenario("mid_b")])
    sim.write_ini(llmsim_min_mean_score="3", llmsim_min_pass_rate="1.0", llmsim_max_cost_usd="0")
    prices = _prices(sim)
    result = sim.run(prices, "--llmsim-results=r.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    gate_lines = [line for line in result.stdout.lines if line.startswith("llmsim gate missed")]
    assert len(gate_lines) == 2  # mean 2.5 < 3 and cost > 0; pass rate 100% holds
    _, summary = _load_export(sim.path / "r.json")
    assert summary["gates"]["missed"] == [line.removeprefix("llmsim gate missed: ") for line in gate_lines]
    sim.write_ini(llmsim_min_mean_score="2.5", llmsim_min_pass_rate="100%", llmsim_max_cost_usd="1000")
    met = sim.run(prices)
    assert met.ret == pytest.ExitCode.OK
    met.stdout.fnmatch_lines(["llmsim: all suite gates met"])


@pytest.mark.parametrize(("args", "message"), [
    (["--llmsim-min-pass-rate=150"], "llmsim_min_pass_rate (--llmsim-min-pass-rate) must be a fraction between 0 and"),
    (["--llmsim-min-mean-score=4"], "llmsim_min_mean_score (--llmsim-min-mean-score) must be between 1 and 3"),
    (["--llmsim-max-cost-usd=cheap"], "llmsim_max_cost_usd (--llmsim-max-cost-usd) must be a number"),
    (["--llmsim-results=r.txt"], "unsupported results file extension '.txt'"),
    (["--llmsim-prices=nowhere.yaml"], "price file */nowhere.yaml: cannot read it"),
])
def test_bad_report_options_are_usage_errors(sim: SimProject, args: list[str], message: str) -> None:
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])
    assert sim.server.stats()["requests"] == 0


# -- histogram ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_histogram_png(sim: SimProject) -> None:
    pytest.importorskip("matplotlib")
    sim.write_scenarios("s.json", [scenario("a"), scenario("mid_b"), scenario("low_c")])
    result = sim.run("--llmsim-histogram=charts/scores.png")
    assert (sim.path / "charts" / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result.stdout.fnmatch_lines(["llmsim: score histogram written to */charts/scores.png"])


@pytest.mark.slow
def test_histogram_without_matplotlib_is_a_message(sim: SimProject, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    sim.write_scenarios("s.json", [scenario("a")])
    result = sim.run("--llmsim-histogram=scores.png")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["llmsim: --llmsim-histogram: the score histogram needs matplotlib, which is not "
                                 "installed: pip install 'pytest-llmsim[histogram]'"])
    assert "Traceback" not in result.stdout.str() and not (sim.path / "scores.png").exists()


# -- backend missing, secrets ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_missing_backend_is_reported_once_with_usage_error_status(sim: SimProject, mode: list[str]) -> None:
    sim.pytester.makeconftest("import sys\nsys.modules['llama_cpp'] = sys.modules['xllamacpp'] = None\n")
    sim.write_scenarios("s.json", [scenario("a"), scenario("b"), scenario("c")])
    result = sim.pytester.runpytest("-p", "no:randomly", *mode, "--llmsim-results=r.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    # The llmsim summary section only: pytest's short summary after it repeats each item's error (in full
    # when the CI variable is set).
    summary_part = result.stdout.str().split("llmsim summary", 1)[1].split("short test summary info", 1)[0]
    assert summary_part.count("the local model backend is not installed") == 1
    assert "pytest-llmsim[local]" in summary_part
    records, _ = _load_export(sim.path / "r.json")
    assert {r["error_kind"] for r in records} == {"backend_missing"} and len(records) == 3


@pytest.mark.slow
def test_api_key_never_reaches_reports_or_exports(sim: SimProject, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-REPORTS-do-not-leak-456"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
    result = sim.run("--html=report.html", "--self-contained-html", "--junitxml=junit.xml",
                     "--llmsim-results=r.json", "--llmsim-histogram=h.png", "-rA")
    result.assert_outcomes(passed=1, failed=1)
    assert secret not in result.stdout.str()
    written = [sim.path / name for name in ("report.html", "junit.xml", "r.json", "h.png")]
    assert all(path.is_file() for path in written)
    for path in sim.path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"API key leaked into {path}"


# -- lines for the terminal (the local model's "loading ..." line) --------------------------------------------------
LOADING = "llmsim: loading local model fake.gguf (llama.cpp server on 127.0.0.1:1) ..."


def test_terminal_lines_start_on_a_line_of_their_own(pytester: pytest.Pytester) -> None:
    """``write_lines_apart`` through a real TerminalReporter: after progress dots (``-q``, xdist without ``-v``:
    no file name, so ``ensure_newline`` alone does nothing) the line starts a new one; at the start of a line and
    after a file name's progress it adds no blank line."""
    import io

    from _pytest.terminal import TerminalReporter

    from pytest_llmsim.plugin.session import write_lines_apart

    def written(before: str, fspath: bool = False) -> str:
        out = io.StringIO()
        reporter = TerminalReporter(pytester.parseconfig(), out)
        if fspath:
            reporter.write_fspath_result("test_x.py", before)
        else:
            reporter.write(before)
        write_lines_apart(reporter, [LOADING, "llmsim: local model ready in 1.0s"])
        return out.getvalue()

    assert written("...") == f"...\n{LOADING}\nllmsim: local model ready in 1.0s\n"
    assert written("") == f"{LOADING}\nllmsim: local model ready in 1.0s\n"
    assert written("..", fspath=True).endswith(f"test_x.py ..\n{LOADING}\nllmsim: local model ready in 1.0s\n")


@pytest.mark.slow
def test_a_workers_line_is_not_printed_inside_the_progress_line(pytester: pytest.Pytester) -> None:
    """Issue 25 (7): under xdist the line a worker queued (the local model's "loading ...", printed by the
    controller from the worker's report) landed at the end of the dots: ``....llmsim: loading ...``."""
    pytester.makeconftest(f"""
        def pytest_runtest_setup(item):
            if item.name == "test_5":  # the session's queue, which the local model's log callback feeds
                from pytest_llmsim.plugin.session import SESSION_KEY
                item.config.stash[SESSION_KEY]._say({LOADING!r})
    """)
    pytester.makepyfile("\n".join(f"def test_{n}(): pass" for n in range(1, 9)))
    result = pytester.runpytest_subprocess("-n", "1", "-p", "no:randomly")
    result.assert_outcomes(passed=8)
    assert LOADING in result.outlines, result.outlines
    assert result.outlines.count(LOADING) == 1
