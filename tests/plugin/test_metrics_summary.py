"""``--llmsim-metrics-summary``: the evaluation module's summary shape, over real HTTP, written once by the
controller under xdist; a metric that errors is counted in ``num_errors``, never scored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import default_script, scenario

pytestmark = pytest.mark.slow


def script_with_a_broken_verdict() -> dict[str, Any]:
    rules = default_script()["rules"]
    return {"rules": [{"match": {"system_contains": "EVALUATOR for broken"}, "reply": "I think it went fine."},
                      *rules]}


def write(sim: Any) -> None:
    evaluate = ["judge", {"rules": {"contains": "confirmed"}}, {"rouge": {"reference": "Your order is confirmed"}}]
    sim.write_scenarios("s.yaml", [scenario("good", evaluate=evaluate), scenario("mid_one", evaluate=evaluate),
                                   scenario("broken", evaluate=evaluate)])


def test_the_summary_has_each_metric_with_its_average_counts_and_results(sim: Any) -> None:
    sim.server.set_script(script_with_a_broken_verdict())
    write(sim)
    result = sim.run("--llmsim-metrics-summary=out/summary.json")
    result.assert_outcomes(passed=2, errors=1)
    data = json.loads((sim.path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert set(data) == {"timestamp", "run_id", "interrupted", "num_conversations", "unscored", "metrics"}
    assert data["timestamp"].endswith("+00:00") and data["num_conversations"] == 3 and data["unscored"] == []
    judge = data["metrics"]["judge"]
    assert (judge["num_evaluations"], judge["num_errors"], judge["average_score"]) == (2, 1, 2.5)
    by_id = {r["id"]: r for r in judge["results"]}
    assert by_id["scenarios/s.yaml::good"] == {
        "id": "scenarios/s.yaml::good", "scenario": "good", "score": 3, "passed": True,
        "explanation": "Polite and complete.", "details": {"min_score": 2, "attempts": 1, "judge_method": "verdict"}}
    broken = by_id["scenarios/s.yaml::broken"]
    assert broken["score"] is None and broken["error"] is True
    assert broken["details"] == {"error_kind": "invalid_verdict"}
    assert "not a valid verdict" in broken["explanation"]
    # The metrics after the one that errored never ran: they are not in the summary for that conversation.
    for name in ("rules", "rouge"):
        block = data["metrics"][name]
        assert block["num_evaluations"] == 2 and block["num_errors"] == 0
        assert [r["scenario"] for r in block["results"]] == ["good", "mid_one"]
    assert data["metrics"]["rules"]["average_score"] == 1.0
    rouge = data["metrics"]["rouge"]["results"][0]
    assert 0 < rouge["score"] <= 1 and rouge["explanation"] and "rougeL" in json.dumps(rouge["details"])
    assert "llmsim: metrics summary written to" in result.stdout.str()


def test_an_endpoint_error_before_the_metrics_is_listed_as_unscored(sim: Any) -> None:
    sim.write_scenarios("s.yaml", [scenario("good")])
    result = sim.run("--llmsim-metrics-summary=summary.json", base_url="http://127.0.0.1:9/v1")
    result.assert_outcomes(errors=1)
    data = json.loads((sim.path / "summary.json").read_text(encoding="utf-8"))
    assert data["unscored"] == ["scenarios/s.yaml::good"] and data["metrics"] == {}


def test_under_xdist_the_controller_writes_it_once_with_every_worker_s_conversations(sim: Any) -> None:
    sim.server.set_script(script_with_a_broken_verdict())
    write(sim)
    result = sim.run("-n", "2", "--llmsim-metrics-summary=summary.json", subprocess=True)
    result.assert_outcomes(passed=2, errors=1)
    data = json.loads((sim.path / "summary.json").read_text(encoding="utf-8"))
    assert sorted(r["scenario"] for r in data["metrics"]["judge"]["results"]) == ["broken", "good", "mid_one"]
    assert data["metrics"]["judge"]["num_errors"] == 1
    assert result.stdout.str().count("llmsim: metrics summary written to") == 1
    assert sorted(p.name for p in sim.path.iterdir() if "summary" in p.name) == ["summary.json"]


