"""Judged metrics of the evaluation module over real HTTP against the scripted server, with scripted judge
replies: ``facts`` (precision/recall/F1 of atomic facts against a reference). Every malformed judge reply is an
``invalid_verdict`` error carrying the raw reply, never a score."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import default_script, scenario

pytestmark = pytest.mark.slow

REFERENCE = "Two chicken fillets go to Moscow. Delivery takes 1-2 days. Payment is on delivery."
EXTRACT = {"reference_facts": ["Two chicken fillets are ordered", "The delivery is to Moscow",
                               "Payment is on delivery"],
           "answer_facts": ["Two chicken fillets go to Moscow", "The order ships today"]}
MATCH = {"reference_facts": [{"number": 1, "found": True}, {"number": 2, "found": True},
                             {"number": 3, "found": False}],
         "answer_facts": [{"number": 1, "supported": True}, {"number": 2, "supported": False}]}


def script(extract: Any = EXTRACT, match: Any = MATCH, *, first_extract: str | None = None) -> dict[str, Any]:
    """The default conversation; the facts judge answers ``extract`` then ``match`` (a dict is sent as JSON, a
    string as it is). ``first_extract``: the reply to the extraction's first attempt only (seed 100)."""
    rules: list[dict[str, Any]] = []
    if first_extract is not None:
        rules.append({"match": {"system_contains": "You extract atomic facts", "seed": 100}, "reply": first_extract})
    for marker, reply in (("You extract atomic facts", extract), ("You match facts", match)):
        rules.append({"match": {"system_contains": marker},
                      "reply": reply if isinstance(reply, str) else json.dumps(reply)})
    return {"rules": [*rules, *default_script()["rules"]]}


def run_facts(sim: Any, options: dict[str, Any], **script_args: Any) -> tuple[Any, dict[str, Any]]:
    sim.server.set_script(script(**script_args))
    sim.write_scenarios("s.yaml", [scenario("order", variables={"SEED": 100}, evaluate=[{"facts": options}])])
    result = sim.run("--llmsim-results=out.json", "--llmsim-metrics-summary=summary.json")
    (record,) = json.loads((sim.path / "out.json").read_text(encoding="utf-8"))["results"]
    return result, record


def test_facts_scores_precision_recall_and_f1_and_lists_every_fact(sim: Any) -> None:
    result, record = run_facts(sim, {"reference": REFERENCE, "threshold": 0.5})
    result.assert_outcomes(passed=1)
    (metric,) = record["metrics"]
    assert metric["name"] == "facts" and metric["passed"] is True and metric["score"] == 0.5714
    assert metric["reason"] == "Precision: 0.500, Recall: 0.667, F1: 0.571; f1 at least threshold 0.50"
    details = metric["details"]
    assert details["metrics"] == {"precision": 0.5, "recall": pytest.approx(2 / 3), "f1": pytest.approx(4 / 7),
                                  "precision_support": 2, "recall_support": 3}
    assert details["fact_evaluations"] == [
        {"fact": "Two chicken fillets are ordered", "source": "reference", "found": True},
        {"fact": "The delivery is to Moscow", "source": "reference", "found": True},
        {"fact": "Payment is on delivery", "source": "reference", "found": False},
        {"fact": "Two chicken fillets go to Moscow", "source": "answer", "supported": True},
        {"fact": "The order ships today", "source": "answer", "supported": False},
    ]
    assert details["reference"] == REFERENCE and "Your order is confirmed" in details["agent_response"]
    # What the judge was asked: the reference and the agent's whole answer, then the numbered facts.
    asked = [entry["body"]["messages"] for entry in sim.server.requests_log()
             if "You extract atomic facts" in entry["body"]["messages"][0]["content"]
             or "You match facts" in entry["body"]["messages"][0]["content"]]
    assert len(asked) == 2
    assert REFERENCE in asked[0][1]["content"] and "Shall I confirm?" in asked[0][1]["content"]
    assert "3. Payment is on delivery" in asked[1][1]["content"]
    assert "2. The order ships today" in asked[1][1]["content"]
    summary = json.loads((sim.path / "summary.json").read_text(encoding="utf-8"))["metrics"]["facts"]
    assert (summary["average_score"], summary["num_evaluations"], summary["num_errors"]) == (0.5714, 1, 0)
    assert summary["results"][0]["explanation"].startswith("Precision: 0.500")


def test_facts_below_the_threshold_fails_naming_the_missing_and_unsupported_facts(sim: Any) -> None:
    result, record = run_facts(sim, {"reference": REFERENCE, "threshold": 0.6, "score": "precision"})
    result.assert_outcomes(failed=1)
    (metric,) = record["metrics"]
    assert (metric["score"], metric["passed"]) == (0.5, False)
    assert metric["reason"] == ("Precision: 0.500, Recall: 0.667, F1: 0.571; precision below threshold 0.60; "
                                "missing: Payment is on delivery; unsupported: The order ships today")


def test_facts_without_a_threshold_only_informs_and_the_scenario_errors_for_want_of_a_deciding_metric(
        sim: Any) -> None:
    result, record = run_facts(sim, {"reference": REFERENCE})
    result.assert_outcomes(errors=1)
    assert record["metrics"][0]["passed"] is None and "no metric decides" in record["error_message"]


def test_an_invalid_first_reply_is_asked_again(sim: Any) -> None:
    result, record = run_facts(sim, {"reference": REFERENCE, "threshold": 0.5}, first_extract="Facts: many.")
    result.assert_outcomes(passed=1)
    assert record["metrics"][0]["score"] == 0.5714


MALFORMED_EXTRACT = [
    "The reference states three facts.",
    "Here they are: " + json.dumps(EXTRACT),
    json.dumps({**EXTRACT, "reference_facts": []}),
    json.dumps({"reference_facts": ["a"]}),
    json.dumps({**EXTRACT, "comment": "extra key"}),
    json.dumps({**EXTRACT, "answer_facts": ["ok", 3]}),
    json.dumps({**EXTRACT, "answer_facts": ["ok", "  "]}),
    '{"reference_facts": ["a"], "reference_facts": ["b"], "answer_facts": []}',
    json.dumps(EXTRACT) + json.dumps(EXTRACT),
    json.dumps([EXTRACT]),
]
MALFORMED_MATCH = [
    json.dumps({**MATCH, "reference_facts": MATCH["reference_facts"][:2]}),
    json.dumps({**MATCH, "reference_facts": [*MATCH["reference_facts"], {"number": 3, "found": True}]}),
    json.dumps({**MATCH, "reference_facts": [{"number": 1, "found": "yes"}, *MATCH["reference_facts"][1:]]}),
    json.dumps({**MATCH, "reference_facts": [{"number": 4, "found": True}, *MATCH["reference_facts"][1:]]}),
    json.dumps({**MATCH, "reference_facts": [{"number": True, "found": True}, *MATCH["reference_facts"][1:]]}),
    json.dumps({**MATCH, "answer_facts": [{"number": 1, "supported": True, "why": "x"},
                                          {"number": 2, "supported": False}]}),
    json.dumps({**MATCH, "answer_facts": [{"number": 1, "found": True}, {"number": 2, "found": False}]}),
    '{"reference_facts": NaN, "answer_facts": []}',
]


@pytest.mark.parametrize("reply", MALFORMED_EXTRACT)
def test_a_malformed_extraction_reply_is_an_invalid_verdict_never_a_score(sim: Any, reply: str) -> None:
    result, record = run_facts(sim, {"reference": REFERENCE, "threshold": 0.5}, extract=reply)
    result.assert_outcomes(errors=1)
    assert record["error_kind"] == "invalid_verdict" and record["raw_verdict"] == reply
    assert "metric 'facts': the judge's reply to fact extraction is not valid after 3 attempt(s)" \
        in record["error_message"]
    assert record["metrics"] == [{"name": "facts", "score": None, "passed": None, "details": {},
                                  "reason": record["error_message"].split("\n")[0], "error": "invalid_verdict"}]
    summary = json.loads((sim.path / "summary.json").read_text(encoding="utf-8"))["metrics"]["facts"]
    assert (summary["average_score"], summary["num_evaluations"], summary["num_errors"]) == (None, 0, 1)


@pytest.mark.parametrize("reply", MALFORMED_MATCH)
def test_a_malformed_matching_reply_is_an_invalid_verdict_never_a_score(sim: Any, reply: str) -> None:
    result, record = run_facts(sim, {"reference": REFERENCE, "threshold": 0.5}, match=reply)
    result.assert_outcomes(errors=1)
    assert record["error_kind"] == "invalid_verdict" and record["raw_verdict"] == reply
    assert "the judge's reply to fact matching is not valid" in record["error_message"]


@pytest.mark.parametrize(("options", "problem"), [
    ({}, "needs exactly one of the options 'reference' (the text) and 'reference_file'"),
    ({"reference": "x", "reference_file": "y"}, "needs exactly one of the options"),
    ({"reference": "x", "threshold": 2}, "option 'threshold' must be a number from 0 to 1"),
    ({"reference": "x", "score": "accuracy"}, "option 'score' must be one of f1, precision, recall"),
    ({"reference": "x", "bogus": 1}, "unknown option(s) 'bogus'"),
    ({"reference_file": "missing.txt"}, "cannot be read"),
    ({"reference": "   "}, "option 'reference' must be a non-blank string"),
])
def test_bad_facts_options_are_an_error_before_any_call(sim: Any, options: dict[str, Any], problem: str) -> None:
    sim.write_scenarios("s.yaml", [scenario("order", evaluate=[{"facts": options}])])
    result = sim.run()
    result.assert_outcomes(errors=1)
    assert problem in result.stdout.str()
    assert sim.server.requests_log() == []
