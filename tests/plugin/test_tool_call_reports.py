"""An agent's tool calls in every report: terminal, JUnit text, the pytest-html chat and the exports.

Pure functions over a ``ScenarioResult`` whose agent turns carry ``tool_calls`` (the shape the agents produce:
``{"name", "arguments", "result"}``, the result None when the agent does not report it); a record of an older
version, without the key, renders as before.
"""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_llmsim.llm.pricing import PriceTable, scenario_cost
from pytest_llmsim.model.results import ModelUsage, ScenarioRecord, ScenarioResult, tool_call_text
from pytest_llmsim.reporting.collector import RecordCollector
from pytest_llmsim.reporting.exports import write_results
from pytest_llmsim.reporting.html import scenario_html
from pytest_llmsim.reporting.summary import RECORD_FIELDS, make_record, summarize
from pytest_llmsim.reporting.terminal import record_text, result_transcript_text, transcript_lines

HOSTILE = "<script>alert('tool')</script>"
LOOKUP = {"name": "lookup_order", "arguments": {"order_id": 7}, "result": {"status": "lost", "note": HOSTILE}}
REFUND = {"name": "issue_refund", "arguments": {"order_id": 7, "reason": HOSTILE}, "result": {"ok": True}}
NOTIFY = {"name": "notify", "arguments": "plain text args", "result": None}  # no result reported

TRANSCRIPT = [
    {"role": "client", "text": "Where is my order 7?"},
    {"role": "agent", "text": "It was lost, so I refunded it.", "tool_calls": [LOOKUP, REFUND]},
    {"role": "client", "text": "Tell my wife."},
    {"role": "agent", "text": "", "tool_calls": [NOTIFY]},  # tool calls and no text
    {"role": "agent", "text": "Done. Anything else?", "tool_calls": []},  # empty: none
]
OLD_TRANSCRIPT = [{"role": "client", "text": "hi <b>"}, {"role": "agent", "text": "bye\nnow"}]
NAMES = ["lookup_order", "issue_refund", "notify"]


def _result(transcript: list[dict[str, Any]], *, status: str = "failed", score: int = 1) -> ScenarioResult:
    usage = ModelUsage("agent", "gpt-4o-mini")
    usage.add(100, 10, cached=False)
    return ScenarioResult("refund", "s.json::refund", "s.json", status, 2, score=score, comment="too slow",
                          transcript=[dict(t) for t in transcript], ended_by="client", end_reason="satisfied",
                          duration_seconds=1.0, usage=[usage])


def _record(transcript: list[dict[str, Any]] = TRANSCRIPT) -> ScenarioRecord:
    data = _result(transcript).to_dict()
    return make_record(data, scenario_cost(data, PriceTable.default()), run_id="run-1", outcome="failed")


# -- the record --------------------------------------------------------------------------------------------
def test_result_and_record_list_the_tools_called_in_order() -> None:
    result = _result(TRANSCRIPT)
    assert result.tool_calls == NAMES
    assert result.to_dict()["tool_calls"] == NAMES
    row = _record().to_dict()
    assert row["tool_calls"] == NAMES
    assert row["transcript"][1]["tool_calls"] == [LOOKUP, REFUND]  # the calls themselves, in the transcript
    # The row's flat fields come in RECORD_FIELDS order; tool_calls is among them, after the conversation's end.
    flat = [key for key in row if key in RECORD_FIELDS]
    assert flat == list(RECORD_FIELDS)
    assert RECORD_FIELDS.index("tool_calls") == RECORD_FIELDS.index("end_reason") + 1


def test_a_record_without_tool_calls_says_none_and_renders_as_before() -> None:
    assert _result(OLD_TRANSCRIPT).tool_calls == []
    assert ScenarioResult.from_dict({"status": "error", "scenario": "x", "nodeid": "x", "source": ""}).tool_calls == []
    record = _record(OLD_TRANSCRIPT)
    assert record.to_dict()["tool_calls"] == []
    assert record_text(record) == ("scenario 'refund': failed, score 1 (min_score 2)\njudge: too slow\n"
                                   "  1. Customer: hi <b>\n  2. Agent: bye\nnow\n"
                                   "     [call ended by client: satisfied]\n")
    fragment = scenario_html(record)
    assert "llmsim-tool" not in fragment and "tools called" not in fragment
    assert ('<div class="llmsim-bubble">hi &lt;b&gt;</div>' in fragment
            and '<div class="llmsim-bubble">bye\nnow</div>' in fragment)


def test_malformed_or_customer_tool_calls_are_left_out() -> None:
    transcript = [
        {"role": "client", "text": "hi", "tool_calls": [REFUND]},  # customers call no tools
        {"role": "agent", "text": "a", "tool_calls": "issue_refund"},  # not a list
        {"role": "agent", "text": "b", "tool_calls": None},
        {"role": "agent", "text": "c", "tool_calls": ["junk", 3, NOTIFY]},  # entries that are not objects
    ]
    result = _result(transcript)
    assert result.tool_calls == ["notify"]
    assert transcript_lines(result.transcript, "", "") == [
        "  1. Customer: hi", "  2. Agent: a", "  3. Agent: b", "  4. Agent: [tool notify(plain text args)] c"]


def test_tool_calls_cross_the_xdist_wire_into_the_collector() -> None:
    """``report.llmsim`` is ``ScenarioResult.to_dict()``, serialised as JSON between processes."""
    wire = json.loads(json.dumps(_result(TRANSCRIPT).to_dict()))
    report = SimpleNamespace(nodeid="s.json::refund", when="call", outcome="failed", passed=False, skipped=False,
                             failed=True, keywords={"llmsim": 1}, llmsim=wire, worker_id="gw0")
    collector = RecordCollector(PriceTable.default(), run_id="run-1")
    record = collector.add_report(report)
    assert record is not None and record.result.tool_calls == NAMES
    assert record.result.transcript[1]["tool_calls"] == [LOOKUP, REFUND]


# -- terminal and JUnit -------------------------------------------------------------------------------------
def test_terminal_shows_each_call_before_the_agents_text() -> None:
    lines = transcript_lines(TRANSCRIPT, "client", "satisfied")
    assert lines == [
        "  1. Customer: Where is my order 7?",
        f"  2. Agent: [tool {tool_call_text(LOOKUP)}] [tool {tool_call_text(REFUND)}] It was lost, so I refunded it.",
        "  3. Customer: Tell my wife.",
        "  4. Agent: [tool notify(plain text args)]",
        "  5. Agent: Done. Anything else?",
        "     [call ended by client: satisfied]",
    ]
    assert lines[1] == ('  2. Agent: [tool lookup_order({"order_id": 7}) -> {"note": "' + HOSTILE
                        + '", "status": "lost"}] [tool issue_refund({"order_id": 7, "reason": "' + HOSTILE
                        + '"}) -> {"ok": true}] It was lost, so I refunded it.')
    # The failure output's last turns keep their numbers and their calls.
    assert transcript_lines(TRANSCRIPT, "", "", last=2) == lines[3:5]


def test_the_example_of_the_issue() -> None:
    call = {"name": "issue_refund", "arguments": {"order_id": 7}, "result": {"ok": True}}
    turns = [{"role": "client", "text": "a"}, {"role": "agent", "text": "b"}, {"role": "client", "text": "c"},
             {"role": "agent", "text": "Your refund is on its way.", "tool_calls": [call]}]
    assert transcript_lines(turns, "", "", last=1) == [
        '  4. Agent: [tool issue_refund({"order_id": 7}) -> {"ok": true}] Your refund is on its way.']


def test_junit_text_has_the_tools_and_the_calls() -> None:
    text = record_text(_record())
    lines = text.splitlines()
    assert lines[:3] == ["scenario 'refund': failed, score 1 (min_score 2)", "judge: too slow",
                         "tools called: lookup_order, issue_refund, notify"]
    assert lines[3:] == transcript_lines(TRANSCRIPT, "client", "satisfied")
    assert result_transcript_text(_result(TRANSCRIPT)).splitlines() == lines[3:]


# -- the pytest-html chat -----------------------------------------------------------------------------------
class _Blocks(HTMLParser):
    """The text of every element with a given class, and the bubbles' texts in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[set[str]] = []
        self.tools: list[str] = []
        self.bubbles: list[list[str]] = []  # per bubble: ("tool:" + text) for each tool block, then its text
        self.pills: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
        classes = set((dict(attrs).get("class") or "").split())
        self.stack.append(classes)
        if "llmsim-bubble" in classes:
            self.bubbles.append([])
        if "llmsim-tool" in classes:
            self.tools.append("")
            self.bubbles[-1].append("tool:")
        if "llmsim-pill" in classes:
            self.pills.append("")

    def handle_endtag(self, tag: str) -> None:
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        inside = set().union(*self.stack) if self.stack else set()
        if "llmsim-tool" in inside:
            self.tools[-1] += data
            self.bubbles[-1][-1] += data
        elif "llmsim-bubble" in inside:
            self.bubbles[-1].append(data)
        if "llmsim-pill" in inside:
            self.pills[-1] += data


def test_html_chat_shows_each_call_as_a_block_in_the_agents_bubble() -> None:
    fragment = scenario_html(_record())
    assert "<script>" not in fragment and "&lt;script&gt;" in fragment  # hostile arguments and results escaped
    parsed = _Blocks()
    parsed.feed(fragment)
    assert parsed.scripts == 0
    # Each block reads as the terminal's call, the escaping undone by the parser only.
    assert parsed.tools == [f"tool {tool_call_text(call)}" for call in (LOOKUP, REFUND, NOTIFY)]
    assert parsed.bubbles == [
        ["Where is my order 7?"],
        [f"tool:tool {tool_call_text(LOOKUP)}", f"tool:tool {tool_call_text(REFUND)}",
         "It was lost, so I refunded it."],
        ["Tell my wife."],
        ["tool:tool notify(plain text args)"],
        ["Done. Anything else?"],
    ]
    assert "tools called: lookup_order, issue_refund, notify" in parsed.pills
    # Name, arguments and result are parts of their own.
    assert '<span class="llmsim-tool-name">issue_refund</span>' in fragment
    assert re.search(r'<span class="llmsim-tool-args">\{&quot;order_id&quot;: 7, &quot;reason&quot;: '
                     r'&quot;&lt;script&gt;', fragment)
    assert '<span class="llmsim-tool-result"> -&gt; {&quot;ok&quot;: true}</span>' in fragment


def test_hostile_tool_names_are_escaped_everywhere_in_html() -> None:
    call = {"name": '<img src=x onerror="alert(1)">', "arguments": {}, "result": "</div><b>x"}
    fragment = scenario_html(_record([{"role": "agent", "text": "ok", "tool_calls": [call]}]))
    assert "<img" not in fragment and "</div><b>" not in fragment
    parsed = _Blocks()
    parsed.feed(fragment)
    assert parsed.tools == [f"tool {tool_call_text(call)}"]
    assert f"tools called: {call['name']}" in parsed.pills


# -- exports ------------------------------------------------------------------------------------------------
def _records() -> list[ScenarioRecord]:
    return [_record(), _record(OLD_TRANSCRIPT)]


@pytest.mark.parametrize("name", ["out.json", "out.ndjson", "out.csv"])
def test_exports_round_trip_tool_calls(tmp_path: Path, name: str) -> None:
    records = _records()
    path = tmp_path / name
    write_results(path, records, summarize(records).to_dict(), run_id="run-1", generated_at="t")
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert list(rows[0]) == list(RECORD_FIELDS)
        assert [row["tool_calls"] for row in rows] == ["lookup_order;issue_refund;notify", ""]
        assert [[n for n in row["tool_calls"].split(";") if n] for row in rows] == [NAMES, []]
        return
    text = path.read_text(encoding="utf-8")
    rows = (json.loads(text)["results"] if path.suffix == ".json"
            else [json.loads(line) for line in text.splitlines()])
    assert [row["tool_calls"] for row in rows] == [NAMES, []]
    assert rows[0]["transcript"][1]["tool_calls"] == [LOOKUP, REFUND]
    assert "tool_calls" not in rows[1]["transcript"][1]
    # Read back, the records are the same, tool calls included.
    back = [ScenarioRecord.from_dict(row) for row in rows]
    assert [r.result.tool_calls for r in back] == [NAMES, []]
    assert [r.to_dict() for r in back] == [r.to_dict() for r in records]


# -- in a real browser --------------------------------------------------------------------------------------
BROWSER = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(BROWSER is None, reason="headless Chromium is not installed")
def test_hostile_tool_calls_stay_text_in_a_browser(tmp_path: Path) -> None:
    """pytest-html inserts an extra with ``innerHTML``: a payload in a tool call must not run."""
    assert BROWSER is not None
    payload = """<img src=x onerror="document.title+='PWNED'">"""
    call = {"name": payload, "arguments": {"q": payload}, "result": payload}
    fragment = scenario_html(_record([{"role": "agent", "text": "ok", "tool_calls": [call]}]))
    page = tmp_path / "page.html"
    page.write_text("<html><head><title>tools</title></head><body><div id=d></div><script>"
                    f"document.getElementById('d').innerHTML = {json.dumps(fragment)};"
                    "document.title += '-' + document.querySelectorAll('.llmsim-tool').length;"
                    "</script></body></html>", encoding="utf-8")
    completed = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180, check=False)
    assert completed.returncode == 0 and "</html>" in completed.stdout, completed.stderr[-2000:]
    title = re.search(r"<title[^>]*>(.*?)</title>", completed.stdout, re.S)
    assert title is not None and html.unescape(title.group(1)) == "tools-1"
    assert "<img" not in completed.stdout.split("<body>", 1)[1].split("<script>", 1)[0]


# -- end to end: a python agent's tool call in every report of a real run -------------------------------------------
def test_a_failing_scenarios_tool_call_reaches_stdout_junit_ndjson_and_html(sim: Any) -> None:
    """One scenario whose python agent calls ``issue_refund`` and whose judge (scripted: ``low_`` scores 1) fails
    it, run with ``--junitxml``, ``--llmsim-results`` and ``--html``: the call reads the same in each."""
    import xml.etree.ElementTree as ET

    from conftest import scenario

    bots = sim.path / "bots"
    bots.mkdir()
    (bots / "__init__.py").write_text("")
    (bots / "shop.py").write_text(
        "def reply(messages, context):\n"
        "    if len(messages) == 1:\n"
        "        return {'content': 'Your refund is on its way.', 'tool_calls': [\n"
        "            {'name': 'issue_refund', 'arguments': {'order_id': 7}, 'result': {'ok': True}}]}\n"
        "    return 'Anything else? [END_CALL]'\n")
    sim.write_scenarios("s.json", [scenario("low_refund", agent={"python": "bots.shop:reply"})])
    out = sim.run("--junitxml=junit.xml", "--llmsim-results=out.ndjson", "--html=report.html")
    out.assert_outcomes(failed=1)
    shown = 'Agent: [tool issue_refund({"order_id": 7}) -> {"ok": true}] Your refund is on its way.'
    assert shown in out.stdout.str()

    (case,) = ET.parse(sim.path / "junit.xml").getroot().iter("testcase")
    assert case.find("failure") is not None
    system_out = "".join(node.text or "" for node in case.iter("system-out"))
    assert shown in system_out and "tools called: issue_refund" in system_out

    (line,) = (sim.path / "out.ndjson").read_text(encoding="utf-8").splitlines()
    row = json.loads(line)
    assert row["status"] == "failed" and row["score"] == 1
    assert row["tool_calls"] == ["issue_refund"]
    agent_turns = [t for t in row["transcript"] if t["role"] == "agent"]
    assert agent_turns[0]["tool_calls"][0]["name"] == "issue_refund"
    assert agent_turns[0]["tool_calls"][0] == {"name": "issue_refund", "arguments": {"order_id": 7},
                                               "result": {"ok": True}}

    page = html.unescape((sim.path / "report.html").read_text(encoding="utf-8"))
    assert "llmsim-tool" in page and "tools called: issue_refund" in page
