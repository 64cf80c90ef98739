"""The ``logprobs`` judge method's arithmetic (``judge.score_probabilities``, ``judge.logprob_score``), the
client's reading of OpenAI-shaped log probabilities (``client.read_logprobs``) and the cache key: a request that
asks for log probabilities has its own key, and every other request keeps the key it had."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pytest_llmsim.engine.judge import ScoreProbabilities, logprob_score, score_probabilities
from pytest_llmsim.llm.client import read_logprobs
from pytest_llmsim.replay.cache import describe_difference, request_key


def _token(token: str, p: float, top: dict[str, float]) -> dict[str, Any]:
    return {"token": token, "logprob": math.log(p),
            "top_logprobs": [{"token": t, "logprob": math.log(q)} for t, q in top.items()]}


def test_the_probabilities_are_read_at_the_first_score_token_and_normalised() -> None:
    tokens = [_token("{", 0.9, {"{": 0.9}), _token("3", 0.5, {"3": 0.5, " 3": 0.1, "2": 0.2, "1": 0.1, "x": 0.1}),
              _token("2", 0.9, {"2": 0.9})]
    found = score_probabilities(tokens)
    assert found.token == "3" and found.mass == pytest.approx(0.9)
    assert found.p == pytest.approx({1: 0.1 / 0.9, 2: 0.2 / 0.9, 3: 0.6 / 0.9})
    assert found.expected == pytest.approx((0.1 + 0.4 + 1.8) / 0.9)


def test_the_chosen_token_counts_when_the_alternatives_omit_it_and_once_when_they_list_it() -> None:
    assert score_probabilities([_token("2", 0.5, {"1": 0.5})]).p == pytest.approx({1: 0.5, 2: 0.5, 3: 0.0})
    assert score_probabilities([_token("2", 0.5, {"2": 0.5, "1": 0.5})]).p == pytest.approx({1: 0.5, 2: 0.5, 3: 0})


@pytest.mark.parametrize("tokens", [[], [_token("The", 0.5, {"The": 0.5, "3": 0.4})], [_token("4", 1.0, {"4": 1.0})]])
def test_no_score_token_is_an_error_never_a_guess(tokens: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="no generated token is a score 1, 2 or 3"):
        score_probabilities(tokens)


@pytest.mark.parametrize(("p", "score"), [({1: 1.0, 2: 0.0, 3: 0.0}, 1), ({1: 0.5, 2: 0.5, 3: 0.0}, 2),
                                          ({1: 0.6, 2: 0.0, 3: 0.4}, 2), ({1: 0.0, 2: 0.5, 3: 0.5}, 3),
                                          ({1: 0.51, 2: 0.49, 3: 0.0}, 1), ({1: 0.0, 2: 0.0, 3: 1.0}, 3)])
def test_the_expected_score_against_the_thresholds(p: dict[int, float], score: int) -> None:
    assert logprob_score(ScoreProbabilities(p, 1.0, "1")) == score


def test_logprob_score_with_other_thresholds() -> None:
    found = ScoreProbabilities({1: 0.2, 2: 0.3, 3: 0.5}, 1.0, "3")  # expected 2.3
    assert [logprob_score(found, t) for t in ((1.5, 2.5), (2.31, 2.4), (1.5, 2.3))] == [2, 1, 3]


def test_read_logprobs_keeps_tokens_and_alternatives_and_drops_the_rest() -> None:
    choice = {"message": {"content": "2"}, "logprobs": {"content": [
        {"id": 34, "token": "2", "bytes": [50], "logprob": -0.5,
         "top_logprobs": [{"id": 34, "token": "2", "bytes": [50], "logprob": -0.5}, {"token": "1"}, "junk"]},
        {"token": None, "logprob": -1.0}]}}
    assert read_logprobs(choice) == [{"token": "2", "logprob": -0.5,
                                      "top_logprobs": [{"token": "2", "logprob": -0.5}]}]
    assert read_logprobs({"message": {}, "logprobs": None}) is None
    assert read_logprobs({"message": {}}) is None
    assert read_logprobs({"logprobs": {"content": []}}) == []


def _descriptor(**extra: Any) -> dict[str, Any]:
    return {"endpoint": "e", "model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0,
            "seed": 1, "max_tokens": 5, "response_format": None, "tools": None, "attempt": 0, **extra}


def test_asking_for_logprobs_changes_the_key_and_nothing_else_does() -> None:
    plain = request_key(_descriptor())
    # The key of a request without logprobs, as computed before the field existed: existing caches and
    # recordings still answer.
    assert plain == request_key({**_descriptor(), "logprobs": None}) == \
        "7443fa800f55e2836b3d8dbf05d867fec59c7afb2ab56dfbe7b691d79456394d"
    assert request_key(_descriptor(logprobs=20)) not in (plain, request_key(_descriptor(logprobs=5)))
    assert describe_difference(_descriptor(logprobs=20), _descriptor()) == ["logprobs: wanted 20, recorded None"]


@pytest.mark.parametrize("engine", ["xllamacpp", "llama-cpp-python"])
def test_a_local_run_knows_its_engine_and_auto_follows_it(engine: str, tmp_path: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The local model's settings carry the server engine that will serve it, so ``auto`` asks for token
    probabilities only where the server sends them (llama.cpp's own server), and an endpoint run has none."""
    from pytest_llmsim.apps.batch import local_settings
    from pytest_llmsim.config.options import OPTIONS, build_settings, resolve_values
    from pytest_llmsim.engine.judge import resolve_method
    from pytest_llmsim.llm import local_model

    monkeypatch.setenv(local_model.ENGINE_ENV, engine)
    resolved = resolve_values(OPTIONS, cli={}, env={}, ini={}, invocation_dir=tmp_path, ini_dir=tmp_path,
                              local=lambda values: True)
    settings = local_settings(resolved, tmp_path, tmp_path / "state", 1, log=lambda line: None)
    assert settings.local_engine == local_model.server_engine()  # None where that engine is not installed
    expected = "logprobs" if settings.local_engine == "xllamacpp" else "criteria"
    assert resolve_method("auto", settings.evaluator.model, settings.local_engine) == expected
    endpoint = build_settings(resolve_values(OPTIONS, cli={"llmsim_base_url": "http://127.0.0.1:9/v1"}, env={},
                                             ini={}, invocation_dir=tmp_path, ini_dir=tmp_path))
    assert endpoint.local_engine is None


@pytest.mark.parametrize(("sent", "kept"), [(float("inf"), 1e9), (float("-inf"), -1e9), (-0.5, -0.5)])
def test_infinite_log_probabilities_are_kept_finite_for_json(sent: float, kept: float) -> None:
    choice = {"logprobs": {"content": [{"token": "2", "logprob": sent, "top_logprobs": []}]}}
    assert read_logprobs(choice) == [{"token": "2", "logprob": kept, "top_logprobs": []}]


@pytest.mark.parametrize("logprob", [1e9, 0.5, float("nan")])
def test_a_log_probability_above_0_is_refused_never_scored(logprob: float) -> None:
    tokens = [{"token": "2", "logprob": logprob, "top_logprobs": [{"token": "3", "logprob": -0.1}]}]
    with pytest.raises(ValueError, match="a log probability is at most 0"):
        score_probabilities(tokens)


def test_a_probability_of_0_counts_as_0() -> None:
    tokens = [{"token": "2", "logprob": 0.0, "top_logprobs": [{"token": "3", "logprob": -1e9}]}]
    assert score_probabilities(tokens).p == pytest.approx({1: 0.0, 2: 1.0, 3: 0.0})


def test_a_yes_probability_from_a_log_probability_above_0_is_refused() -> None:
    from pytest_llmsim.engine.judge import yes_probability

    tokens = [{"token": "Yes", "logprob": 3.0, "top_logprobs": [{"token": "No", "logprob": -0.1}]}]
    with pytest.raises(ValueError, match="a log probability is at most 0"):
        yes_probability(tokens)
