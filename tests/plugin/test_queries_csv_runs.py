"""A CSV of queries run end to end over real HTTP: the customer opens with the query and asks each follow-up
(scripted), or with ``customer: proceed`` answers "proceed" once they are asked; a bad row is one error item
naming file, line and column while the other rows run."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.slow

CSV = ("Patient ID,Initial Query,Possible Follow up\n"
       "patient_4,Prepare the tumor board,What are the pathology findings?\n"
       "patient_4,Prepare the tumor board,What is the stage?\n"
       "patient_5,,no query\n")


def customer_messages(sim: Any) -> list[list[str]]:
    """The customer's messages the agent saw, per agent request (the prompt agent's history)."""
    seen = []
    for entry in sim.server.requests_log():
        messages = entry["body"]["messages"]
        if "AGENT" in messages[0]["content"]:
            seen.append([m["content"] for m in messages[1:] if m["role"] == "user"])
    return seen


def write_suite(sim: Any, defaults: dict[str, Any]) -> None:
    (sim.path / "scenarios" / "q.csv").write_text(CSV, encoding="utf-8")
    sim.write_scenarios("queries.yaml", {
        "defaults": {"variables": {"LOCATIONS": "Moscow", "PERSONALITY": "calm"}, **defaults},
        "queries": {"csv": "q.csv", "id": "Patient ID", "query": "Initial Query",
                    "followups": "Possible Follow up"}})


def test_a_scripted_customer_asks_the_query_then_each_follow_up(sim: Any) -> None:
    write_suite(sim, {})
    result = sim.run("-v", "--llmsim-results=out.json")
    result.assert_outcomes(passed=1, errors=1)
    assert customer_messages(sim)[-1] == ["Prepare the tumor board", "What are the pathology findings?",
                                          "What is the stage?"]
    records = {r["scenario"]: r for r in json.loads((sim.path / "out.json").read_text())["results"]}
    done = records["patient_4"]
    assert [t["role"] for t in done["transcript"]] == ["client", "agent"] * 3
    assert done["ended_by"] == "agent"
    bad = records["q.csv:4"]
    assert bad["status"] == "error"
    assert f"{sim.path / 'scenarios' / 'q.csv'}:4: column 'Initial Query': the query is empty" in bad["error_message"]


def test_customer_proceed_says_proceed_after_the_follow_ups(sim: Any) -> None:
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "EVALUATOR"}, "reply": json.dumps({"score": 3, "comment": "Polite and "
                                                                                   "complete answers."})},
        {"match": {"system_contains": "AGENT"}, "replies": ["Planning.", "Pathology done.", "Stage two.",
                                                            "Board ready. [END_CALL]"]},
    ]})
    write_suite(sim, {"customer": "proceed", "max_turns": 20})
    result = sim.run("-v", "--llmsim-results=out.json")
    result.assert_outcomes(passed=1, errors=1)
    assert customer_messages(sim)[-1] == ["Prepare the tumor board", "What are the pathology findings?",
                                          "What is the stage?", "proceed"]
    records = {r["scenario"]: r for r in json.loads((sim.path / "out.json").read_text())["results"]}
    assert records["patient_4"]["ended_by"] == "agent"
    assert [t["text"] for t in records["patient_4"]["transcript"] if t["role"] == "client"][-1] == "proceed"


def test_customer_proceed_stops_at_max_turns(sim: Any) -> None:
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "EVALUATOR"}, "reply": json.dumps({"score": 3, "comment": "Polite and "
                                                                                   "complete answers."})},
        {"match": {"system_contains": "AGENT"}, "reply": "Working on it."},
    ]})
    write_suite(sim, {"customer": "proceed", "max_turns": 9})
    sim.run("--llmsim-results=out.json").assert_outcomes(passed=1, errors=1)
    records = {r["scenario"]: r for r in json.loads((sim.path / "out.json").read_text())["results"]}
    turns = records["patient_4"]["transcript"]
    assert len(turns) == 9 and records["patient_4"]["ended_by"] == "max_turns"
    assert [t["text"] for t in turns if t["role"] == "client"] == [
        "Prepare the tumor board", "What are the pathology findings?", "What is the stage?", "proceed", "proceed"]


def test_formula_cells_of_a_csv_of_queries_reach_the_csv_export_escaped(sim: Any) -> None:
    (sim.path / "scenarios" / "q.csv").write_text(
        "id,query\n\"=HYPERLINK(\"\"x\"\")\",\"=cmd|' /C calc'!A0\"\n+p2,@SUM(A1)\n", encoding="utf-8")
    sim.write_scenarios("queries.yaml", {"defaults": {"variables": {"LOCATIONS": "M", "PERSONALITY": "calm"}},
                                         "queries": "q.csv"})
    sim.run("--llmsim-results=out.csv").assert_outcomes(passed=2)
    text = (sim.path / "out.csv").read_text(encoding="utf-8")
    import csv
    import io

    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert not [cell for row in rows for cell in row if cell.startswith(("=", "+", "-", "@"))]
    assert {row[rows[0].index("scenario")] for row in rows[1:]} == {"'=HYPERLINK(\"x\")", "'+p2"}
