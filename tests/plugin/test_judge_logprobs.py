"""The ``logprobs`` judge method (G-Eval style, issue 26 part 2): the score from the probabilities of "1", "2" and
"3" at the judge's score token, over real HTTP to the scripted server returning scripted logprobs; an endpoint
that sends none is a config error, never a guessed score; the probabilities are kept with the reply, so the disk
cache and the readable recordings replay the same verdict with zero calls."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProject, default_script, scenario
from pytest_llmsim.engine.judge import DIGIT_SCHEMA, LOGPROB_ALTERNATIVES

REC = Path("recordings/scenarios/s.json")


def _script(logprobs: Any, reply: str = "2") -> dict[str, Any]:
    """The judge answers ``reply`` with the scripted ``logprobs``; agent and customer as usual."""
    judge: dict[str, Any] = {"match": {"system_contains": "EVALUATOR"}, "reply": reply}
    if logprobs is not None:
        judge["logprobs"] = logprobs
    return {"rules": [judge, *default_script()["rules"]]}


def _record(sim: SimProject, name: str = "out.json") -> dict[str, Any]:
    (record,) = json.loads((sim.path / name).read_text())["results"]
    return dict(record)


def _judge_bodies(sim: SimProject) -> list[dict[str, Any]]:
    return [e["body"] for e in sim.server.requests_log() if "EVALUATOR" in json.dumps(e["body"]["messages"])]


# p(1) 0.1, p(2) 0.3, p(3) 0.4 of the whole distribution, 0.2 on other tokens: normalised 0.125, 0.375, 0.5;
# expected score 2.375 -> 2 (below 2.5). Among the alternatives " 3" (a blank before the digit) counts as 3.
PROBS = {"2": 0.3, " 3": 0.25, "3": 0.15, "1": 0.1, "The": 0.2}


def test_the_score_comes_from_the_token_probabilities(sim: SimProject) -> None:
    sim.server.set_script(_script(PROBS, reply="2"))
    sim.write_scenarios("s.json", [scenario("fine")])
    result = sim.run("--llmsim-judge-method=logprobs", "--llmsim-results=out.json")
    result.assert_outcomes(passed=1)
    record = _record(sim)
    assert record["score"] == 2
    assert record["comment"] == ("Score 2 from the judge's token probabilities: p(1)=0.125, p(2)=0.375, p(3)=0.500, "
                                 "expected score 2.375 (1 below 1.5, 3 from 2.5); judge method 'logprobs' asks for "
                                 "no reason.")
    (judge,) = [m for m in record["metrics"] if m["name"] == "judge"]
    assert judge["details"]["probabilities"] == {"p": {"1": 0.125, "2": 0.375, "3": 0.5}, "mass": 0.8,
                                                 "expected": 2.375, "token": "2"}
    (body,) = _judge_bodies(sim)
    assert (body["logprobs"], body["top_logprobs"]) == (True, LOGPROB_ALTERNATIVES)
    assert body["response_format"]["json_schema"]["schema"] == DIGIT_SCHEMA
    assert body["messages"][-1]["content"] == "Answer with the score alone: one digit, 1, 2 or 3."


@pytest.mark.parametrize(("probs", "score", "status"), [({"1": 0.9, "3": 0.1}, 1, "failed"),
                                                        ({"3": 0.7, "2": 0.3}, 3, "passed")])
def test_the_expected_score_decides_not_the_token_written(sim: SimProject, probs: dict[str, float], score: int,
                                                          status: str) -> None:
    """The reply's text says 2 both times; the probabilities say otherwise, and they decide."""
    sim.server.set_script(_script(probs, reply="2"))
    sim.write_scenarios("s.json", [scenario("fine")])
    sim.run("--llmsim-judge-method=logprobs", "--llmsim-results=out.json")
    record = _record(sim)
    assert (record["score"], record["status"]) == (score, status)


def test_an_endpoint_without_logprobs_is_a_config_error_naming_the_method_and_the_endpoint(sim: SimProject) -> None:
    sim.server.set_script(_script(None))
    sim.write_scenarios("s.json", [scenario("fine")])
    result = sim.run("--llmsim-judge-method=logprobs", "--llmsim-results=out.json")
    record = _record(sim)
    assert (record["status"], record["error_kind"], record["score"]) == ("error", "config_error", None)
    message = record["error_message"]
    assert "judge method 'logprobs' needs the tokens' log probabilities" in message
    assert f"{sim.server.base_url} sent none for the evaluator model" in message
    assert len(_judge_bodies(sim)) == 1  # not re-asked: another attempt would not bring them
    assert result.ret == 1


def test_a_reply_whose_tokens_hold_no_score_is_an_invalid_verdict(sim: SimProject) -> None:
    sim.server.set_script(_script({"The": 0.6, "I": 0.4}, reply="The"))
    sim.write_scenarios("s.json", [scenario("fine")])
    sim.run("--llmsim-judge-method=logprobs", "--llmsim-results=out.json")
    record = _record(sim)
    assert (record["status"], record["error_kind"]) == ("error", "invalid_verdict")
    assert "no generated token is a score 1, 2 or 3 (the reply's tokens: 'The')" in record["error_message"]
    assert len(_judge_bodies(sim)) == 3  # every attempt, then the error


@pytest.mark.parametrize("bad", [float("inf"), 1e6, 2.0])
def test_a_lying_log_probability_is_an_invalid_verdict_never_a_score(sim: SimProject, bad: float) -> None:
    """A probability above 1 is a positive "log probability"; +inf once made every p NaN and the verdict a pass (2)."""
    sim.server.set_script(_script({"2": bad, "1": 0.1}, reply="2"))
    sim.write_scenarios("s.json", [scenario("fine")])
    sim.run("--llmsim-judge-method=logprobs", "--llmsim-results=out.json").assert_outcomes(errors=1)
    record = _record(sim)
    assert (record["status"], record["error_kind"], record["score"]) == ("error", "invalid_verdict", None)
    assert "a log probability is at most 0" in record["error_message"]


def test_a_replay_from_the_cache_makes_no_call_and_gives_the_same_verdict(sim: SimProject) -> None:
    sim.server.set_script(_script(PROBS))
    sim.write_scenarios("s.json", [scenario("fine")])
    sim.write_ini(llmsim_recordings="off")
    sim.run("--llmsim-judge-method=logprobs", "--llmsim-results=first.json").assert_outcomes(passed=1)
    requests = sim.server.stats()["requests"]
    sim.server.set_script(_script({"1": 1.0}, reply="1"))  # a live call now would score 1
    replay = sim.run("--llmsim-judge-method=logprobs", "--llmsim-record=none", "--llmsim-results=second.json")
    replay.assert_outcomes(passed=1)
    assert sim.server.stats()["requests"] == requests
    first, second = _record(sim, "first.json"), _record(sim, "second.json")
    assert (second["score"], second["comment"]) == (first["score"], first["comment"]) == (2, first["comment"])


def test_the_recording_keeps_the_logprobs_and_replays_the_verdict_alone(sim: SimProject) -> None:
    sim.server.set_script(_script(PROBS))
    sim.write_scenarios("s.json", [scenario("fine")])
    sim.run("--llmsim-judge-method=logprobs", "--llmsim-results=first.json").assert_outcomes(passed=1)
    data = json.loads((sim.path / REC / "fine.json").read_text(encoding="utf-8"))
    (call,) = [c for c in data["calls"] if c["role"] == "evaluator"]
    (token,) = call["logprobs"]
    assert token["token"] == "2" and [t["token"] for t in token["top_logprobs"]] == ["2", " 3", "The", "3", "1"]
    assert data["metrics"][0]["details"]["probabilities"]["p"] == {"1": 0.125, "2": 0.375, "3": 0.5}
    shutil.rmtree(sim.path / ".llmsim_cache")  # only the recording can answer now
    requests = sim.server.stats()["requests"]
    replay = sim.run("--llmsim-judge-method=logprobs", "--llmsim-record=none", "--llmsim-results=second.json")
    replay.assert_outcomes(passed=1)
    assert sim.server.stats()["requests"] == requests
    assert _record(sim, "second.json")["comment"] == _record(sim, "first.json")["comment"]


def test_another_method_asks_for_no_logprobs(sim: SimProject) -> None:
    sim.server.set_script(_script(PROBS, reply=json.dumps({"score": 3, "comment": "Polite and complete order."})))
    sim.write_scenarios("s.json", [scenario("fine")])
    sim.run("--llmsim-judge-method=verdict").assert_outcomes(passed=1)
    (body,) = _judge_bodies(sim)
    assert "logprobs" not in body and "top_logprobs" not in body


def test_an_endpoint_that_refuses_logprobs_is_a_config_error(sim: SimProject) -> None:
    """As llama-cpp-python's server started without --logits_all answers a request for them."""
    sim.server.set_script({"rules": [
        {"match": {"system_contains": "EVALUATOR"}, "status": 400,
         "error": {"message": "logprobs is not supported for models created with logits_all=False"}},
        *default_script()["rules"]]})
    sim.write_scenarios("s.json", [scenario("fine")])
    sim.run("--llmsim-judge-method=logprobs", "--llmsim-results=out.json")
    record = _record(sim)
    assert (record["status"], record["error_kind"]) == ("error", "config_error")
    assert ("judge method 'logprobs' needs the tokens' log probabilities, and the endpoint refused to send them"
            in record["error_message"])
    assert "logits_all=False" in record["error_message"]


def test_the_cut_points_option_recuts_the_same_probabilities_without_a_call(sim: SimProject) -> None:
    """``--llmsim-logprob-thresholds`` moves the cuts; the probabilities are the cached reply's, so a replay with
    other cuts gives another score and makes no call."""
    sim.server.set_script(_script(PROBS))  # expected score 2.375
    sim.write_scenarios("s.json", [scenario("fine")])
    sim.write_ini(llmsim_recordings="off")
    sim.run("--llmsim-judge-method=logprobs", "--llmsim-results=first.json").assert_outcomes(passed=1)
    requests = sim.server.stats()["requests"]
    replay = sim.run("--llmsim-judge-method=logprobs", "--llmsim-record=none", "--llmsim-logprob-thresholds=2.4,2.45",
                     "--llmsim-results=second.json")
    replay.assert_outcomes(failed=1)
    assert sim.server.stats()["requests"] == requests
    record = _record(sim, "second.json")
    assert record["score"] == 1 and "expected score 2.375 (1 below 2.4, 3 from 2.45)" in record["comment"]
    bad = sim.run("--llmsim-judge-method=logprobs", "--llmsim-logprob-thresholds=2.5,1.5")
    assert bad.ret == 4
    bad.stderr.fnmatch_lines(["*llmsim_logprob_thresholds (--llmsim-logprob-thresholds) must satisfy 1 <= LOW <= "
                              "HIGH <= 3*"])


def test_a_calibration_export_holds_each_cases_probabilities_for_the_fit(sim: SimProject) -> None:
    from pytest_llmsim.engine.cutpoints import cases_from_export
    from tests.plugin.test_calibration import case, write_set

    sim.server.set_script(_script(PROBS))
    write_set(sim, [case("low_a", 1), case("good_b", 3)])
    sim.run("-k", "calibration_only", "--llmsim-calibrate=calibration", "--llmsim-judge-method=logprobs",
            "--llmsim-results=out.json")
    export = json.loads((sim.path / "out.json").read_text(encoding="utf-8"))
    assert [c["probabilities"]["expected"] for c in export["calibration"]["cases"]] == [2.375, 2.375]
    assert [(c.expected, c.human) for c in cases_from_export(export)] == [(2.375, 3), (2.375, 1)]  # good_b, low_a


CRITERIA = ["Greet the customer.", "Confirm the delivery city.", "Say goodbye."]


def _criteria_script(p_yes: dict[str, float]) -> dict[str, Any]:
    """Each criterion answered "Yes" in text, with p(yes) ``p_yes[criterion]`` (the rest on " No")."""
    rules = [{"match": {"last_user_contains": f"do this: {c}"}, "reply": "Yes",
              "logprobs": {"Yes": p, " No": round(1 - p, 6)}} for c, p in p_yes.items()]
    return {"rules": [*rules, *default_script()["rules"]]}


@pytest.mark.parametrize(("cuts", "score"), [("1.5,2.5", 2), ("2.25,2.3", 1), ("1.5,2.1", 3)])
def test_criteria_logprobs_scores_the_mean_probability_of_yes_not_the_words(sim: SimProject, cuts: str,
                                                                           score: int) -> None:
    """Every answer reads "Yes"; p(yes) 0.9, 0.2 and 0.7 give the expected score 1 + 2 * 0.6 = 2.2, cut at the
    run's thresholds."""
    sim.server.set_script(_criteria_script(dict(zip(CRITERIA, (0.9, 0.2, 0.7), strict=True))))
    sim.write_scenarios("s.json", [scenario("fine", criteria=CRITERIA)])
    sim.run("--llmsim-judge-method=criteria_logprobs", f"--llmsim-logprob-thresholds={cuts}",
            "--llmsim-results=out.json")
    record = _record(sim)
    assert record["score"] == score
    low, high = cuts.split(",")
    assert record["comment"] == (f"Score {score} from p(yes) per criterion (1. 0.90, 2. 0.20, 3. 0.70): expected "
                                 f"score 2.200 (1 below {float(low):g}, 3 from {float(high):g}); judge method "
                                 "'criteria_logprobs' asks for no reason.")
    (judge,) = [m for m in record["metrics"] if m["name"] == "judge"]
    assert judge["details"]["probabilities"] == {"p_yes": [0.9, 0.2, 0.7], "expected": 2.2, "criteria": 3}
    bodies = [e["body"] for e in sim.server.requests_log() if "Did the AGENT" in json.dumps(e["body"]["messages"])]
    assert len(bodies) == 3 and all(b["top_logprobs"] == LOGPROB_ALTERNATIVES for b in bodies)


def test_criteria_logprobs_without_logprobs_is_a_config_error(sim: SimProject) -> None:
    sim.server.set_script({"rules": [{"match": {"last_user_contains": "Did the AGENT"}, "reply": "Yes"},
                                     *default_script()["rules"]]})
    sim.write_scenarios("s.json", [scenario("fine", criteria=CRITERIA)])
    sim.run("--llmsim-judge-method=criteria_logprobs", "--llmsim-results=out.json")
    record = _record(sim)
    assert (record["status"], record["error_kind"]) == ("error", "config_error")
    assert "judge method 'criteria_logprobs' needs the tokens' log probabilities" in record["error_message"]
