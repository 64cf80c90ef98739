"""Who spoke, in every report: the judge's transcript, the terminal and JUnit text, the pytest-html chat, the
markdown diff, exports (JSON, NDJSON, CSV), chat files and recorded conversations read back (issue 28, part 1).

Pure functions over a ``ScenarioResult`` whose agent turns carry ``messages`` and ``handoffs``; HTML in an agent's
name is escaped everywhere.
"""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pytest_llmsim.engine.transcripts import load_transcript_file
from pytest_llmsim.llm.pricing import PriceTable, scenario_cost
from pytest_llmsim.model.results import ScenarioRecord, ScenarioResult, heard_text, turn_key
from pytest_llmsim.model.transcript import Transcript, Turn
from pytest_llmsim.reporting.chat_files import chat_document
from pytest_llmsim.reporting.exports import write_results
from pytest_llmsim.reporting.html import diff_turns, scenario_html
from pytest_llmsim.reporting.markdown import diff_lines
from pytest_llmsim.reporting.summary import make_record, summarize
from pytest_llmsim.reporting.terminal import record_text

HOSTILE = "<img src=x onerror=alert(1)>"
REFUND = {"name": "refund", "arguments": {"order": 7}, "result": {"ok": True}}
TEAM_TURN = {
    "role": "agent", "text": "Routing you.\n\nRefund issued.", "tool_calls": [REFUND],
    "messages": [{"agent": "Triage", "content": "Routing you."},
                 {"agent": "Billing", "content": "Refund issued.", "tool_calls": [REFUND]}],
    "handoffs": [{"from": "Triage", "to": "Billing", "reason": "refund request"}],
}
TRANSCRIPT = [{"role": "client", "text": "Refund order 7 please."}, TEAM_TURN,
              {"role": "client", "text": "Thanks."}, {"role": "agent", "text": "Bye."}]


def _record(transcript: list[dict[str, Any]] = TRANSCRIPT) -> ScenarioRecord:
    result = ScenarioResult("refund", "s.json::refund", "s.json", "failed", 2, score=1, comment="wrong",
                            transcript=[dict(t) for t in transcript], ended_by="client", end_reason="done")
    data = result.to_dict()
    return make_record(data, scenario_cost(data, PriceTable.default()), run_id="run-1", outcome="failed")


def test_the_judge_reads_one_line_per_speaker_then_the_handoffs() -> None:
    turns = [Turn("client", "Refund order 7 please."),
             Turn("agent", TEAM_TURN["text"], tool_calls=[REFUND], messages=TEAM_TURN["messages"],
                  handoffs=TEAM_TURN["handoffs"]),
             Turn("agent", "Bye.")]
    assert Transcript(turns).as_text().splitlines() == [
        "  1. Customer: Refund order 7 please.",
        "  2. Agent [Triage]: Routing you.",
        '  2. Agent [Billing]: [tool refund({"order": 7}) -> {"ok": true}] Refund issued.',
        "  2. Handoffs: Triage -> Billing (refund request)",
        "  3. Agent: Bye.",  # a single-speaker turn reads as it always did
    ]


def test_terminal_and_junit_text_name_each_speaker() -> None:
    lines = record_text(_record()).splitlines()
    assert "  2. Agent [Triage]: Routing you." in lines
    assert '  2. Agent [Billing]: [tool refund({"order": 7}) -> {"ok": true}] Refund issued.' in lines
    assert "  2. Handoffs: Triage -> Billing (refund request)" in lines
    assert "  4. Agent: Bye." in lines


class _Speakers(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[set[str]] = []
        self.labels: list[str] = []
        self.handoffs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = set((dict(attrs).get("class") or "").split())
        self.stack.append(classes)
        if "llmsim-speaker" in classes:
            self.labels.append("")
        if "llmsim-handoff" in classes:
            self.handoffs.append("")

    def handle_endtag(self, tag: str) -> None:
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        inside = set().union(*self.stack) if self.stack else set()
        if "llmsim-speaker" in inside:
            self.labels[-1] += data
        elif "llmsim-handoff" in inside:
            self.handoffs[-1] += data


def test_the_html_chat_labels_each_agent_and_escapes_its_name() -> None:
    hostile = json.loads(json.dumps(TRANSCRIPT).replace("Billing", HOSTILE.replace('"', "'")))
    fragment = scenario_html(_record(hostile))
    assert "<img" not in fragment and "&lt;img src=x onerror=alert(1)&gt;" in fragment
    parsed = _Speakers()
    parsed.feed(fragment)
    assert parsed.labels == ["Triage", HOSTILE]
    assert parsed.handoffs == [f"handoff Triage -> {HOSTILE} (refund request)"]


def test_markdown_diff_shows_a_changed_routing_per_speaker() -> None:
    rerouted = json.loads(json.dumps(TRANSCRIPT).replace("Billing", "Refunds"))
    assert turn_key(TEAM_TURN) != turn_key(rerouted[1])  # same text, other agent: a changed transcript
    lines = diff_lines(diff_turns(TRANSCRIPT, rerouted))
    assert "- 2. Agent [Billing]: [tool refund({\"order\": 7}) -> {\"ok\": true}] Refund issued." in lines
    assert "+ 2. Agent [Refunds]: [tool refund({\"order\": 7}) -> {\"ok\": true}] Refund issued." in lines
    assert "+ 2. Handoffs: Triage -> Refunds (refund request)" in lines


@pytest.mark.parametrize("name", ["out.json", "out.ndjson", "out.csv"])
def test_exports_keep_the_speakers(tmp_path: Path, name: str) -> None:
    records = [_record(), _record([{"role": "client", "text": "hi"}, {"role": "agent", "text": "yo"}]),
               _record(json.loads(json.dumps(TRANSCRIPT).replace("Triage", "=cmd|' /C calc'!A0")))]
    path = tmp_path / name
    write_results(path, records, summarize(records).to_dict(), run_id="run-1", generated_at="t")
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [row["agents"] for row in rows] == ["Triage;Billing", "", "'=cmd|' /C calc'!A0;Billing"]
        assert rows[0]["handoffs"] == "Triage -> Billing"
        return
    text = path.read_text(encoding="utf-8")
    rows = (json.loads(text)["results"] if path.suffix == ".json"
            else [json.loads(line) for line in text.splitlines()])
    assert rows[0]["agents"] == ["Triage", "Billing"] and rows[1]["agents"] == []
    assert rows[0]["transcript"][1]["messages"] == TEAM_TURN["messages"]
    assert "messages" not in rows[1]["transcript"][1]
    back = [ScenarioRecord.from_dict(row) for row in rows]
    assert [r.to_dict() for r in back] == [r.to_dict() for r in records]


def test_chat_files_keep_the_speakers_and_read_back_as_recorded_conversations(tmp_path: Path) -> None:
    document = chat_document(_record().result)
    assert document["turns"][1]["messages"] == TEAM_TURN["messages"]
    assert document["turns"][1]["handoffs"] == TEAM_TURN["handoffs"]
    assert "messages" not in document["turns"][3]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    ((transcript, problem),) = [(c.transcript, c.problem) for c in load_transcript_file(path)]
    assert problem is None and transcript is not None
    assert [m["agent"] for m in transcript.turns[1].messages] == ["Triage", "Billing"]
    assert transcript.turns[1].handoffs == TEAM_TURN["handoffs"]


def test_recorded_openai_conversations_keep_the_name_field_as_the_speaker(tmp_path: Path) -> None:
    path = tmp_path / "real.json"
    path.write_text(json.dumps([
        {"role": "user", "content": "Refund order 7."},
        {"role": "assistant", "name": "Triage", "content": "Routing you."},
        {"role": "assistant", "name": "Billing", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "refund", "arguments": "{\"order\": 7}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"ok\": true}"},
        {"role": "assistant", "name": "Billing", "content": "Refund issued."},
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": "Bye."},
    ]), encoding="utf-8")
    ((transcript, problem),) = [(c.transcript, c.problem) for c in load_transcript_file(path)]
    assert problem is None and transcript is not None
    team = transcript.turns[1]
    assert [m["agent"] for m in team.messages] == ["Triage", "Billing", "Billing"]
    assert team.messages[1]["tool_calls"] == [REFUND]  # the tool result found its call
    assert team.text == "Routing you.\n\nRefund issued."
    assert transcript.turns[3].messages == []  # no name: a single-speaker turn, as before
    assert "  2. Agent [Billing]: [tool refund" in transcript.as_text()


def test_a_bad_name_in_a_recorded_conversation_is_a_problem_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "real.json"
    path.write_text(json.dumps([{"role": "user", "content": "hi"},
                                {"role": "assistant", "name": 7, "content": "x"}]), encoding="utf-8")
    ((problem,),) = [(c.problem,) for c in load_transcript_file(path)]
    assert problem is not None and "[1].name must be an agent's name" in problem


def test_the_customer_hears_who_answered() -> None:
    assert heard_text(TEAM_TURN) == "Triage: Routing you.\n\nBilling: Refund issued."
    assert heard_text({"role": "agent", "text": "plain"}) == "plain"
