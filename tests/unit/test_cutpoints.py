"""Cut-points of the ``logprobs`` judge's expected score (issue 26): the fit on a calibration run's export
(``engine.cutpoints``, ``calibration/fit_cutpoints.py``), the option that sets them, and where they come from in a
run (the user's setting, else the ones recorded for the local model file, else the scale's 1.5 and 2.5). No model,
no HTTP."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_llmsim.config.options import OPTIONS, build_settings, parse_cuts, resolve_values
from pytest_llmsim.engine.cutpoints import (
    Case,
    apply_cutpoints,
    candidate_cuts,
    cases_from_export,
    fit_cutpoints,
    leave_one_out,
)
from pytest_llmsim.engine.judge import LOGPROB_THRESHOLDS, _logprob_verdict
from pytest_llmsim.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _cases(*pairs: tuple[float, int]) -> list[Case]:
    return [Case(expected, human) for expected, human in pairs]


# A narrow band, as SmolLM2's: the people's scores rise with the expected score but for one 1 among the 2s.
BAND = _cases((1.05, 1), (1.06, 1), (1.07, 1), (1.10, 1), (1.08, 2), (1.09, 2), (1.11, 2), (1.12, 2),
              (1.13, 3), (1.14, 3), (1.15, 3), (1.16, 3))


def test_apply_counts_matches_false_passes_error_and_confusion() -> None:
    fit = apply_cutpoints(BAND, (1.075, 1.125))
    assert (fit.matches, fit.total, fit.false_passes, fit.should_fail) == (11, 12, 1, 4)
    assert fit.confusion == {1: {1: 3, 2: 1, 3: 0}, 2: {1: 0, 2: 4, 3: 0}, 3: {1: 0, 2: 0, 3: 4}}
    assert fit.absolute_error == 1 and fit.mean_absolute_error == pytest.approx(1 / 12)
    # the scale's cuts score the whole band 1, as the bundled model's judge did
    assert apply_cutpoints(BAND, LOGPROB_THRESHOLDS).confusion == {h: {1: 4, 2: 0, 3: 0} for h in (1, 2, 3)}


def test_the_fit_maximises_agreement_within_the_false_pass_ceiling() -> None:
    free = fit_cutpoints(BAND, max_false_pass_rate=1.0)
    assert free.matches == 11 and free.false_passes == 1  # 1.10 passed: 1 of 4 bad ones
    strict = fit_cutpoints(BAND, max_false_pass_rate=0.1)  # 1 of 4 is 25%: not allowed
    assert strict.false_passes == 0 and strict.matches == 10
    assert strict.thresholds == pytest.approx((1.105, 1.125))  # the 1 at 1.10 is cut to 1, the 2 at 1.09 with it
    assert apply_cutpoints(BAND, strict.thresholds) == strict


def test_ties_go_to_the_stricter_cut_points() -> None:
    """Two humans of 1 and 2 at the same expected score: every cut gets one of them wrong; of the cuts that agree
    equally often, the one that passes fewer conversations wins."""
    cases = _cases((1.1, 1), (1.1, 2), (1.3, 3))
    fit = fit_cutpoints(cases, max_false_pass_rate=1.0)
    assert fit.matches == 2 and fit.false_passes == 0  # 1.1 scored 1 (not 2: a false pass at equal agreement)
    assert fit.thresholds == pytest.approx((1.2, 1.2))


def test_candidates_split_every_pair_of_neighbours_and_include_the_ends() -> None:
    assert candidate_cuts([1.2, 1.1, 1.2, 1.4]) == pytest.approx([1.0, 1.15, 1.3, 3.0])


def test_leave_one_out_scores_each_case_by_a_fit_without_it() -> None:
    """A case that only fits with itself in the fit is missed out of it: the estimate is below the fit's."""
    loo = leave_one_out(BAND)
    assert loo.total == 12 and loo.matches < fit_cutpoints(BAND).matches
    assert loo.thresholds == fit_cutpoints(BAND).thresholds


@pytest.mark.parametrize(("cases", "message"), [([], "no cases"), (_cases((1.1, 4)), "1, 2 or 3"),
                                                 (_cases((3.5, 2)), "from 1 to 3"),
                                                 (_cases((math.nan, 2)), "from 1 to 3")])
def test_bad_cases_are_refused(cases: list[Case], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_cutpoints(cases)


def _export(*cases: dict[str, Any]) -> dict[str, Any]:
    return {"calibration": {"cases": list(cases)}}


def _entry(file: str, human: int, expected: float | None) -> dict[str, Any]:
    probabilities = None if expected is None else {"p": {}, "mass": 1.0, "expected": expected, "token": "1"}
    return {"file": file, "human_score": human, "judge_score": 1, "probabilities": probabilities}


def test_cases_are_read_from_an_export_and_a_case_without_probabilities_is_named() -> None:
    assert cases_from_export(_export(_entry("a.json", 1, 1.07), _entry("b.json", 3, 1.2))) == \
        _cases((1.07, 1), (1.2, 3))
    with pytest.raises(ValueError, match=r"'b\.json' has no expected score"):
        cases_from_export(_export(_entry("a.json", 1, 1.07), _entry("b.json", 3, None)))
    with pytest.raises(ValueError, match="no 'calibration' object"):
        cases_from_export({"results": []})


def test_the_script_fits_and_applies(tmp_path: Path) -> None:
    export = tmp_path / "dev.json"
    export.write_text(json.dumps(_export(*(_entry(f"{i}.json", c.human, c.expected) for i, c in
                                           enumerate(BAND)))), encoding="utf-8")
    script = [sys.executable, str(REPO / "calibration" / "fit_cutpoints.py"), str(export)]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    fitted = json.loads(subprocess.run([*script, "--json"], capture_output=True, text=True, check=True,
                                       env=env).stdout)
    assert fitted["fit"]["thresholds"] == pytest.approx([1.105, 1.125]) and fitted["fit"]["false_passes"] == 0
    assert fitted["scale"]["matches"] == 4
    text = subprocess.run(script, capture_output=True, text=True, check=True, env=env).stdout
    assert "--llmsim-logprob-thresholds 1.10500,1.12500" in text and "leave-one-out" in text
    applied = json.loads(subprocess.run([*script, "--apply", "1.075,1.125", "--json"], capture_output=True,
                                        text=True, check=True, env=env).stdout)
    assert (applied["matches"], applied["false_passes"]) == (11, 1)
    bad = subprocess.run([*script, "--apply", "2,1"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "1 <= LOW <= HIGH <= 3" in bad.stderr


# -- the option and where a run's cut-points come from -------------------------------------------------------------
@pytest.mark.parametrize(("text", "cuts"), [("1.5,2.5", (1.5, 2.5)), (" 1.064 , 1.067 ", (1.064, 1.067)),
                                            ("2,2", (2.0, 2.0))])
def test_cut_points_parse(text: str, cuts: tuple[float, float]) -> None:
    assert parse_cuts("x", text) == cuts


@pytest.mark.parametrize("text", ["1.5", "1.5,2.5,2.7", "a,b", "2.5,1.5", "0.5,2", "1,3.5", "nan,2"])
def test_bad_cut_points_are_a_config_error_naming_the_option(text: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="llmsim_logprob_thresholds"):
        resolve_values(OPTIONS, cli={"llmsim_logprob_thresholds": text}, env={}, ini={}, invocation_dir=tmp_path,
                       ini_dir=tmp_path)


def _probabilities(p1: float, p2: float, p3: float) -> list[dict[str, Any]]:
    top = [{"token": t, "logprob": math.log(p)} for t, p in (("1", p1), ("2", p2), ("3", p3))]
    return [{"token": "1", "logprob": math.log(p1), "top_logprobs": top}]


def test_the_judge_cuts_at_the_thresholds_it_is_given() -> None:
    tokens = _probabilities(0.88, 0.08, 0.04)  # expected 1.16
    assert _logprob_verdict("1", tokens, False, 1, 1, 1).score == 1
    verdict = _logprob_verdict("1", tokens, False, 1, 1, 1, (1.1, 1.15))
    assert verdict.score == 3 and "(1 below 1.1, 3 from 1.15)" in verdict.comment
    assert _logprob_verdict("1", tokens, False, 1, 1, 1, (1.1, 1.2)).score == 2


def _local(tmp_path: Path, model: str, **cli: str) -> Any:
    from pytest_llmsim.apps.batch import local_settings

    resolved = resolve_values(OPTIONS, cli={"llmsim_local_model": str(tmp_path / model), **cli}, env={}, ini={},
                              invocation_dir=tmp_path, ini_dir=tmp_path, local=lambda values: True)
    return local_settings(resolved, tmp_path, tmp_path / "state", 1, log=lambda line: None)


def test_a_local_run_takes_the_cut_points_recorded_for_its_model_file_unless_the_user_sets_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_llmsim.llm import local_model

    recorded = local_model.JudgeCalibration(agreed=1, cases=3, mean_absolute_error=1.0, command="c",
                                            measured="2026-12-07", thresholds=(1.064, 1.067))
    monkeypatch.setitem(local_model.JUDGE_CALIBRATION, "m.gguf", recorded)
    assert _local(tmp_path, "m.gguf").logprob_thresholds == (1.064, 1.067)
    assert _local(tmp_path, "m.gguf", llmsim_logprob_thresholds="1.5,2.5").logprob_thresholds == (1.5, 2.5)
    assert _local(tmp_path, "other.gguf").logprob_thresholds is None  # nothing recorded: the judge's 1.5, 2.5
    assert recorded.to_dict()["thresholds"] == [1.064, 1.067]
    endpoint = build_settings(resolve_values(OPTIONS, cli={"llmsim_base_url": "http://127.0.0.1:9/v1"}, env={},
                                             ini={}, invocation_dir=tmp_path, ini_dir=tmp_path))
    assert endpoint.logprob_thresholds is None


def _answer(*tokens: tuple[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [{"token": token, "logprob": math.log(max(top.values())),
             "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top.items()]} for token, top in tokens]


def test_yes_probability_at_the_first_word_token() -> None:
    from pytest_llmsim.engine.judge import yes_probability

    # blanks and emphasis before the word are skipped; " yes" and "Yes" both count for yes, "N" (a start of no) for no
    tokens = _answer(("**", {"**": 0.9}), ("Yes", {"Yes": 0.5, " yes": 0.1, "N": 0.2, "The": 0.2}))
    assert yes_probability(tokens) == pytest.approx(0.6 / 0.8)
    assert yes_probability(_answer(("Нет", {"Нет": 0.6, "Да": 0.2}))) == pytest.approx(0.25)
    # another word written: the probabilities of yes and no at its place still answer
    assert yes_probability(_answer(("The", {"The": 0.7, "Yes": 0.1, "No": 0.3}))) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no probability on yes or no"):
        yes_probability(_answer(("The", {"The": 0.9, "It": 0.1})))
    with pytest.raises(ValueError, match="no generated token is a word"):
        yes_probability(_answer((".", {".": 1.0})))
