"""The judge's agreement with itself (repeats, policy, unstable verdicts) and who is to blame for a failure."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from conftest import AGENT_REPLIES, SimProject, default_script, scenario
from pytest_llmsim.engine.judge import parse_blame, policy_score
from pytest_llmsim.model.results import blame_of
from pytest_llmsim.model.trials import derive_seed

SEED = 11
JUDGE_SEEDS = [SEED, derive_seed(SEED, 2, salt="judge"), derive_seed(SEED, 3, salt="judge")]


def _verdict(score: int, comment: str, blame: str | None = None) -> str:
    data: dict[str, Any] = {"score": score, "comment": comment}
    if blame is not None:
        data["blame"] = blame
    return json.dumps(data)


def _rows(sim: SimProject, name: str = "out.json") -> dict[str, dict[str, Any]]:
    return {row["scenario"]: row for row in json.loads((sim.path / name).read_text())["results"]}


def test_policies() -> None:
    assert policy_score([3, 1, 3], "majority") == 3
    assert policy_score([3, 1], "majority") == 1  # a tie goes to the lowest of the tied scores
    assert policy_score([3, 3, 2, 2, 1], "majority") == 2
    assert policy_score([3, 1, 3], "min") == 1
    assert policy_score([3, 1, 3], "mean") == pytest.approx(2.3333)


def test_blame_is_read_from_the_reply_never_guessed() -> None:
    assert parse_blame('{"score": 1, "comment": "x", "blame": "customer"}') == "customer"
    assert parse_blame("Score: 1\nComment: rude\nBlame: cut_short") == "cut_short"
    assert parse_blame('{"score": 1, "comment": "x", "blame": "the weather"}') is None
    assert parse_blame('{"score": 1, "comment": "x"}') is None


def test_blame_from_the_transcript_when_the_judge_says_nothing() -> None:
    asked = [{"role": "agent", "text": "Shall I confirm the order?"}, {"role": "client", "text": "Bye [END_CALL]"}]
    assert blame_of("failed", [], asked, "client") == ("customer", "rule")
    assert blame_of("failed", [], asked, "max_turns") == ("cut_short", "rule")
    assert blame_of("failed", [], [{"role": "agent", "text": "No."}], "agent") == ("unknown", "")
    judged = [{"name": "judge", "details": {"blame": "agent"}}]
    assert blame_of("failed", judged, asked, "client") == ("agent", "judge")
    assert blame_of("passed", judged, asked, "client") == ("", "")


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_repeated_verdicts_that_straddle_the_minimum_are_unstable(sim: SimProject, mode: list[str]) -> None:
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "EVALUATOR", "seed": JUDGE_SEEDS[1]},
         "reply": _verdict(1, "The agent was rude.", "agent")},
        *default_script()["rules"]]})
    sim.write_scenarios("s.json", [scenario("split", variables={"SEED": SEED}), scenario("calm")])
    result = sim.run(*mode, "--llmsim-judge-repeats=3", "--llmsim-results=out.json", "--junitxml=junit.xml", "-rA",
                     "-o", "junit_family=xunit1")  # per-testcase JUnit properties
    result.assert_outcomes(passed=2)  # majority: 3, 1, 3 -> 3
    result.stdout.fnmatch_lines([
        "*judge repeats: 1 of 2 conversations judged unanimously (50.0%); unstable (verdicts straddle the "
        "minimum): 1 (scenarios/s.json::split)*"])
    assert any("unstable" in line and "s.json::split" in line for line in result.outlines)
    rows = _rows(sim)
    split = rows["split"]
    assert (split["score"], split["judge_scores"], split["judge_unstable"]) == (3, [3, 1, 3], True)
    judge = next(m for m in split["metrics"] if m["name"] == "judge")
    assert judge["details"]["policy"] == "majority" and judge["details"]["spread"] == 2
    assert rows["calm"]["judge_scores"] == [3, 3, 3] and rows["calm"]["judge_unstable"] is False
    assert sim.server.stats()["requests"] == 2 * (6 + 3)
    properties = {p.get("name"): p.get("value") for p in ET.parse(sim.path / "junit.xml").iter("property")}
    assert properties["judge_scores"] in ("3;1;3", "3;3;3")
    # The same verdicts, replayed, under the other policies: min fails it, mean (2.33) passes min_score 2 only.
    before = sim.server.stats()["requests"]
    sim.run(*mode, "--llmsim-judge-repeats=3", "--llmsim-judge-policy=min").assert_outcomes(passed=1, failed=1)
    sim.run(*mode, "--llmsim-judge-repeats=3", "--llmsim-judge-policy=mean",
            "--llmsim-results=mean.json").assert_outcomes(passed=2)
    assert sim.server.stats()["requests"] == before
    mean = next(m for m in _rows(sim, "mean.json")["split"]["metrics"] if m["name"] == "judge")
    assert (mean["score"], mean["details"]["policy_score"]) == (2, 2.3333)
    sim.run("--llmsim-judge-repeats=3", "--llmsim-judge-policy=mean",
            "--llmsim-min-score=3").assert_outcomes(passed=1, failed=1)


def test_failures_are_counted_by_blame(sim: SimProject) -> None:
    hang_up = ["Hi, I would like chicken fillet.", "Two packs, delivered to Moscow please.", "No. [END_CALL]"]
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "EVALUATOR for judged_"}, "reply": _verdict(1, "Forgot the city.", "agent")},
        {"match": {"system_contains": "EVALUATOR for sim_"}, "reply": _verdict(1, "The customer was odd.", "customer")},
        {"match": {"system_contains": "EVALUATOR for"}, "reply": _verdict(1, "The call was unfinished.")},
        {"match": {"system_contains": "CLIENT for hangup"}, "replies": hang_up},
        {"match": {"system_contains": "AGENT"}, "replies": AGENT_REPLIES},
        {"match": {"system_contains": "CLIENT"}, "replies": [*hang_up[:2], "Yes, please confirm."]},
    ]})
    sim.write_scenarios("s.json", [scenario("judged_a"), scenario("sim_b"), scenario("cut", max_turns=2),
                                   scenario("hangup")])
    result = sim.run("--llmsim-results=out.json")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(["blame: cut_short (by the rule)", "blame: customer (by the rule)",
                                 "*failed conversations by blame: agent 1, customer 2, cut_short 1; 2 of 4 are "
                                 "the simulated customer's fault*"])
    rows = _rows(sim)
    assert {name: row["blame"] for name, row in rows.items()} == {"judged_a": "agent", "sim_b": "customer",
                                                                  "cut": "cut_short", "hangup": "customer"}
    summary = json.loads((sim.path / "out.json").read_text())["summary"]
    assert summary["failures_by_blame"] == {"agent": 1, "customer": 2, "cut_short": 1}
