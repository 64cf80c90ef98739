"""Judged multi-agent metrics over real HTTP with scripted judge replies: ``agent_selection_judge`` (per handoff,
the right agent?) and ``information_aggregation_judge`` (the final answer synthesised from the specialists?),
and ``facts`` with ``agent:``. A malformed judge reply is an ``invalid_verdict`` error, never a score; an
``agent`` that never spoke fails naming it (never an error, never a pass)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import SimProject, scenario, write_bot

pytestmark = pytest.mark.slow

# One agent turn: the orchestrator routes the payment lookup to Billing (right) and the refund to Shipping (wrong),
# then answers from what both said and ends the call.
TEAM_BOT = """
    def reply(messages, context):
        return {"messages": [
                    {"agent": "Orchestrator", "content": "Routing you."},
                    {"agent": "Billing", "content": "Order 7 was paid 10 EUR."},
                    {"agent": "Shipping", "content": "Parcel 7 was delivered on Monday."},
                    {"agent": "Orchestrator", "content": "Order 7 cost 10 EUR and arrived Monday. [END_CALL]"}],
                "handoffs": [{"from": "Orchestrator", "to": "Billing", "reason": "payment lookup"},
                             {"from": "Orchestrator", "to": "Shipping", "reason": "refund"}]}
"""
SELECTION = {"handoffs": [{"number": 1, "correct": True, "comment": "Billing holds the payment records."},
                          {"number": 2, "correct": False, "comment": "A refund belongs to Refunds, not Shipping."}]}
AGGREGATION = {"sources": [{"number": 1, "used": True, "comment": "The price comes from Billing."},
                           {"number": 2, "used": True, "comment": "The delivery day comes from Shipping."}],
               "synthesised": True, "comment": "It combines the price and the delivery day."}
ROSTER = {"Billing": "payments and invoices", "Shipping": "parcels", "Refunds": "refunds"}
SELECTION_MARK, AGGREGATION_MARK = "You check the routing", "FINAL ANSWER of a multi-agent"


def run(sim: SimProject, evaluate: list[Any], **replies: Any) -> tuple[Any, dict[str, Any]]:
    rules = [{"match": {"system_contains": mark}, "reply": r if isinstance(r, str) else json.dumps(r)}
             for mark, r in ((SELECTION_MARK, replies.get("selection", SELECTION)),
                             (AGGREGATION_MARK, replies.get("aggregation", AGGREGATION)),
                             ("You extract atomic facts", replies.get("extract", "{}")),
                             ("You match facts", replies.get("match", "{}")))]
    sim.server.set_script({"rules": rules})
    write_bot(sim, TEAM_BOT)
    sim.write_scenarios("s.yaml", [scenario("refund", agent={"python": "bots.shop:reply"},
                                            turns=["I want a refund for order 7"], evaluate=evaluate)])
    result = sim.run("--llmsim-results=out.json", "--llmsim-metrics-summary=summary.json")
    (record,) = json.loads((sim.path / "out.json").read_text(encoding="utf-8"))["results"]
    return result, record


def judge_prompts(sim: SimProject, mark: str) -> list[str]:
    return ["\n".join(m["content"] for m in entry["body"]["messages"]) for entry in sim.server.requests_log()
            if mark in entry["body"]["messages"][0]["content"]]


def test_agent_selection_judge_names_the_wrong_handoff_its_turn_and_the_judge_s_comment(sim: SimProject) -> None:
    result, record = run(sim, [{"agent_selection_judge": {"agents": ROSTER}}])
    result.assert_outcomes(failed=1)
    (metric,) = record["metrics"]
    assert (metric["score"], metric["passed"]) == (0.5, False)
    assert metric["reason"] == ("1 of 2 handoff(s) went to the right agent; handoff 2 at turn 2 (Orchestrator -> "
                                "Shipping) was wrong: A refund belongs to Refunds, not Shipping.")
    assert metric["details"]["handoffs"] == [
        {"number": 1, "turn": 2, "from": "Orchestrator", "to": "Billing", "reason": "payment lookup",
         "correct": True, "comment": "Billing holds the payment records."},
        {"number": 2, "turn": 2, "from": "Orchestrator", "to": "Shipping", "reason": "refund",
         "correct": False, "comment": "A refund belongs to Refunds, not Shipping."}]
    (prompt,) = judge_prompts(sim, SELECTION_MARK)
    for line in ("- Refunds: refunds", "  1. Customer: I want a refund for order 7", "  2. Billing: Order 7 was paid",
                 "  2. handoff: Orchestrator -> Shipping (reason given: refund)",
                 "2. turn 2: Orchestrator -> Shipping (reason given: refund)"):
        assert line in prompt, line
    assert "[END_CALL]" not in prompt
    assert "handoff 2 at turn 2 (Orchestrator -> Shipping) was wrong" in result.stdout.str()


def test_agent_selection_judge_passes_when_every_handoff_is_right(sim: SimProject) -> None:
    right = {"handoffs": [{**h, "correct": True, "comment": "This agent owns that request."}
                          for h in SELECTION["handoffs"]]}
    result, record = run(sim, [{"agent_selection_judge": {"agent": "Orchestrator"}}], selection=right)
    result.assert_outcomes(passed=1)
    assert record["metrics"][0]["score"] == 1.0
    assert record["metrics"][0]["reason"] == "2 of 2 handoff(s) went to the right agent"


@pytest.mark.parametrize(("agent", "reason"), [
    ("Billing", "agent 'Billing' made no handoff: nothing was routed to judge"),
    ("Nobody", "agent 'Nobody' never spoke (agents that spoke: Orchestrator, Billing, Shipping): nothing was routed "
               "to judge"),
])
def test_agent_selection_judge_without_a_handoff_of_the_agent_fails_naming_it_without_asking(
        sim: SimProject, agent: str, reason: str) -> None:
    result, record = run(sim, [{"agent_selection_judge": {"agent": agent}}])
    result.assert_outcomes(failed=1)
    assert record["status"] == "failed" and record["metrics"][0]["reason"] == reason
    assert judge_prompts(sim, SELECTION_MARK) == []


def test_information_aggregation_judge_reads_the_specialists_and_the_final_answer(sim: SimProject) -> None:
    result, record = run(sim, [{"information_aggregation_judge": {"agent": "Orchestrator"}}])
    result.assert_outcomes(passed=1)
    (metric,) = record["metrics"]
    assert (metric["score"], metric["passed"]) == (1.0, True)
    assert metric["reason"] == "synthesised; 2 of 2 specialist message(s) used: It combines the price and the " \
                               "delivery day."
    assert metric["details"]["final_answer"] == {"turn": 2, "agent": "Orchestrator",
                                                 "content": "Order 7 cost 10 EUR and arrived Monday."}
    assert [(s["agent"], s["used"]) for s in metric["details"]["sources"]] == [("Billing", True), ("Shipping", True)]
    (prompt,) = judge_prompts(sim, AGGREGATION_MARK)
    assert "1. turn 2, Billing: Order 7 was paid 10 EUR." in prompt
    assert "2. turn 2, Shipping: Parcel 7 was delivered on Monday." in prompt
    assert "Routing you." not in prompt.split("Specialist messages:")[1]  # the final speaker's own words


def test_information_aggregation_judge_fails_when_a_specialist_is_left_out(sim: SimProject) -> None:
    left_out = {"sources": [AGGREGATION["sources"][0],
                            {"number": 2, "used": False, "comment": "The delivery day is not mentioned."}],
                "synthesised": False, "comment": "It repeats the price and nothing else."}
    result, record = run(sim, [{"information_aggregation_judge": {}}], aggregation=left_out)
    result.assert_outcomes(failed=1)
    assert record["metrics"][0]["reason"] == (
        "not synthesised; 1 of 2 specialist message(s) used: It repeats the price and nothing else.; unused: "
        "turn 2 Shipping (The delivery day is not mentioned.)")


def test_information_aggregation_judge_with_an_agent_that_never_spoke_fails_naming_it(sim: SimProject) -> None:
    result, record = run(sim, [{"information_aggregation_judge": {"agent": "Summariser"}}])
    result.assert_outcomes(failed=1)
    assert record["metrics"][0]["reason"].startswith("agent 'Summariser' never spoke (agents that spoke: "
                                                     "Orchestrator, Billing, Shipping)")


MALFORMED_SELECTION = [
    "Handoff 2 was wrong.",
    json.dumps({"handoffs": SELECTION["handoffs"][:1]}),
    json.dumps({"handoffs": [{**SELECTION["handoffs"][0], "comment": "ok"}, SELECTION["handoffs"][1]]}),
    json.dumps({"handoffs": [{**SELECTION["handoffs"][0], "correct": "yes"}, SELECTION["handoffs"][1]]}),
    json.dumps({"handoffs": [SELECTION["handoffs"][0], SELECTION["handoffs"][0]]}),
    json.dumps({**SELECTION, "score": 3}),
]
MALFORMED_AGGREGATION = [
    json.dumps({**AGGREGATION, "synthesised": "mostly"}),
    json.dumps({**AGGREGATION, "comment": ""}),
    json.dumps({k: v for k, v in AGGREGATION.items() if k != "synthesised"}),
    "```json\n" + json.dumps(AGGREGATION) + "\n``` and that is my verdict",
]


@pytest.mark.parametrize("reply", MALFORMED_SELECTION)
def test_a_malformed_selection_reply_is_an_invalid_verdict(sim: SimProject, reply: str) -> None:
    result, record = run(sim, [{"agent_selection_judge": {}}], selection=reply)
    result.assert_outcomes(errors=1)
    assert record["error_kind"] == "invalid_verdict" and record["raw_verdict"] == reply
    assert "metric 'agent_selection_judge': the judge's reply to the handoffs is not valid after 3 attempt(s)" \
        in record["error_message"]
    assert record["metrics"][0]["error"] == "invalid_verdict" and record["metrics"][0]["score"] is None


@pytest.mark.parametrize("reply", MALFORMED_AGGREGATION)
def test_a_malformed_aggregation_reply_is_an_invalid_verdict(sim: SimProject, reply: str) -> None:
    result, record = run(sim, [{"information_aggregation_judge": {}}], aggregation=reply)
    result.assert_outcomes(errors=1)
    assert record["error_kind"] == "invalid_verdict" and record["raw_verdict"] == reply
    summary = json.loads((sim.path / "summary.json").read_text(encoding="utf-8"))
    block = summary["metrics"]["information_aggregation_judge"]
    assert (block["num_evaluations"], block["num_errors"], block["average_score"]) == (0, 1, None)


def test_facts_with_an_agent_judges_only_that_agent_s_messages(sim: SimProject) -> None:
    extract = {"reference_facts": ["Order 7 was paid 10 EUR"], "answer_facts": ["Order 7 was paid 10 EUR"]}
    match = {"reference_facts": [{"number": 1, "found": True}], "answer_facts": [{"number": 1, "supported": True}]}
    result, record = run(sim, [{"facts": {"reference": "Order 7 was paid 10 EUR.", "agent": "Billing",
                                          "threshold": 1}}], extract=extract, match=match)
    result.assert_outcomes(passed=1)
    assert record["metrics"][0]["details"]["agent_response"] == "Order 7 was paid 10 EUR."
    assert record["metrics"][0]["details"]["agent"] == "Billing"
    (prompt,) = judge_prompts(sim, "You extract atomic facts")
    assert "Parcel 7" not in prompt and "Routing you" not in prompt


def test_facts_with_an_agent_that_never_spoke_fails_naming_it(sim: SimProject) -> None:
    result, record = run(sim, [{"facts": {"reference": "x", "agent": "Refunds", "threshold": 0.5}}])
    result.assert_outcomes(failed=1)
    assert record["metrics"][0]["reason"] == ("agent 'Refunds' never spoke in this conversation (agents that spoke: "
                                              "Orchestrator, Billing, Shipping); the metric reads only its messages")
    assert judge_prompts(sim, "You extract atomic facts") == []


@pytest.mark.parametrize(("metric", "options", "problem"), [
    ("agent_selection_judge", {"agents": ["Billing"]}, "option 'agents' must map each agent's name"),
    ("agent_selection_judge", {"agent": 3}, "option 'agent' must be an agent's name"),
    ("information_aggregation_judge", {"threshold": -1}, "option 'threshold' must be a number from 0 to 1"),
    ("information_aggregation_judge", {"min": 1}, "unknown option(s) 'min'"),
])
def test_bad_options_are_an_error_before_any_call(sim: SimProject, metric: str, options: dict[str, Any],
                                                  problem: str) -> None:
    result, record = run(sim, [{metric: options}])
    result.assert_outcomes(errors=1)
    assert problem in record["error_message"] and sim.server.requests_log() == []
